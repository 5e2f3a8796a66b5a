"""hoiguide: hand-held object reconstruction by geometrically guided rectified-flow sampling.

The public API is flat; see the README for a tour. Heavy optional parts import lazily.
"""

from importlib import import_module
from typing import Any

from hoiguide.types import (
    Camera,
    ClipObservations,
    Mesh,
    Observations,
    Similarity,
    SimilarityParams,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "guided_reconstruct": "hoiguide.api",
    "guided_reconstruct_video": "hoiguide.api",
    "Reconstruction": "hoiguide.result",
    "ClipReconstruction": "hoiguide.result",
    "load_schedule": "hoiguide.phases.load",
    "ScheduleError": "hoiguide.phases.errors",
    "FlowBackbone": "hoiguide.backbones.base",
    "GuidanceOptions": "hoiguide.guidance.records",
}

__all__ = sorted(["Camera", "ClipObservations", "Mesh", "Observations", "Similarity", "SimilarityParams",
                  "__version__", *_LAZY])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
