"""Geometry: differentiable iso-surface, mesh distance queries, ICP, mesh utilities."""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'extract_isosurface': 'isosurface',
    'grid_points': 'isosurface',
    'connected_components': 'isosurface',
    'remove_small_components': 'isosurface',
    'sparse_grid': 'sparse',
    'sparse_isosurface': 'sparse',
    'SparseGrid': 'sparse',
    'sdf_query': 'sparse',
    'plan_levels': 'sparse',
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
    'point_map_from_depth': 'depth',
    'depth_edges': 'depth',
    'mesh_from_point_map': 'depth',
    'point_map_targets': 'depth',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
