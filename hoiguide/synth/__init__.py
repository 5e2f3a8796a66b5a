"""Synthetic hand-object scenes with ground truth, and simulated foundation-model observers.

``pip install 'hoiguide[synth]'`` adds pybullet (for its bundled ``pybullet_data`` meshes) and
OpenCV (inpainting). See :mod:`hoiguide.synth.scene` for the on-disk format of scenes and
:mod:`hoiguide.synth.clip` for clips (one grasp over many frames).
"""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use)
_EXPORTS = {
    'Scene': 'scene',
    'SceneFormatError': 'scene',
    'list_scenes': 'scene',
    'read_manifest': 'scene',
    'write_manifest': 'scene',
    'contact_sheet': 'scene',
    'ObserverNoise': 'observers',
    'simulate_observations': 'observers',
    'ObjectSource': 'objects',
    'parse_object_spec': 'objects',
    'load_object': 'objects',
    'PROCEDURAL_KINDS': 'objects',
    'Material': 'appearance',
    'Lighting': 'appearance',
    'shade': 'appearance',
    'look_at': 'cameras',
    'place_camera': 'cameras',
    'synthesize_grasp': 'grasp',
    'Grasp': 'grasp',
    'make_scene': 'generate',
    'generate_scenes': 'generate',
    'Clip': 'clip',
    'make_clip': 'clip',
    'load_clip': 'clip',
    'generate_clips': 'clip',
    'simulate_clip_observations': 'clip',
    'list_clips': 'clip',
    'is_clips_set': 'clip',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
