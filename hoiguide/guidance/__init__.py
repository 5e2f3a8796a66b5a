"""Guided and unguided rectified-flow sampling."""

from importlib import import_module
from typing import Any

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
