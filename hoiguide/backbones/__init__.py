"""Flow backbones: the FlowBackbone protocol and its implementations."""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'FlowBackbone': 'base',
    'HunyuanBackbone': 'hunyuan',
    'CheckpointError': 'hunyuan',
    'HunyuanCondition': 'hunyuan',
    'CheckpointNotFoundError': 'hunyuan',
    'check_backbone': 'base',
    'tiny': 'bundled',
    'load_backbone': 'spec',
    'BackboneSpecError': 'spec',
    'TimeConvention': 'base',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
