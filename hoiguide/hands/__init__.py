"""Hand models: the open procedural hand and a MANO layer for users with the official file."""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'KEYPOINT_NAMES': 'base',
    'FINGERS': 'base',
    'MANO_JOINT_NAMES': 'base',
    'HandOutput': 'base',
    'HandModel': 'base',
    'ProceduralHand': 'procedural',
    'ManoLayer': 'mano',
    'load_mano_file': 'mano',
    'MANO_TIP_IDS': 'mano',
    'MANO_TIP_IDS_SMPLX': 'mano',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
