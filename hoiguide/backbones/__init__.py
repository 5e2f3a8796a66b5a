"""Flow backbones: the FlowBackbone protocol and its implementations."""

from importlib import import_module
from typing import Any

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'FlowBackbone': 'base',
    'HunyuanBackbone': 'hunyuan',
    'HunyuanCondition': 'hunyuan',
    'CheckpointNotFoundError': 'hunyuan',
    'check_backbone': 'base',
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
