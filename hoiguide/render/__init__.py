"""Differentiable rendering of meshes into normals, depth, disparity and soft silhouettes."""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'render': 'renderer',
    'RenderOutput': 'renderer',
    'available_backends': 'renderer',
    'soft_mask': 'portable',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
