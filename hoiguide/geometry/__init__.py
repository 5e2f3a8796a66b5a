"""Geometry: differentiable iso-surface, mesh distance queries, ICP, mesh utilities."""

from importlib import import_module
from typing import Any

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'extract_isosurface': 'isosurface',
    'grid_points': 'isosurface',
    'connected_components': 'isosurface',
    'remove_small_components': 'isosurface',
    'closest_points': 'mesh_query',
    'signed_distance': 'mesh_query',
    'inside': 'mesh_query',
    'winding_number': 'mesh_query',
    'sample_surface': 'sampling',
    'icp': 'registration',
    'fit_similarity': 'registration',
    'initial_similarity': 'registration',
    'IcpInfo': 'registration',
    'trimmed_cost': 'registration',
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
