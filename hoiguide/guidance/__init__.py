"""Guided and unguided rectified-flow sampling."""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'euler_step': 'flow',
    'predict_clean': 'flow',
    'velocity_from_clean': 'flow',
    'TimeConvention': 'flow',
    'predict_clean_derivative': 'flow',
    'predict_noise': 'flow',
    'add_noise': 'flow',
    'sample': 'sampler',
    'latent_to_mesh': 'sampler',
    'decode_grid': 'sampler',
    'initial_noise': 'sampler',
    'GuidedSampler': 'engine',
    'GuidanceOptions': 'engine',
    'GuidanceResult': 'engine',
    'StepState': 'engine',
    'History': 'engine',
    'HistoryRecord': 'engine',
    'NonFiniteLossError': 'engine',
    'Timings': 'engine',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
