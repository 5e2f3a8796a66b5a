"""Losses: pure functions on tensors plus the name -> term registry used by YAML schedules.

A registered *term* is ``LOSSES[name](ctx: LossContext, **options) -> scalar Tensor``;
``register_loss`` adds your own. Built-in names: ``normal``, ``disparity``, ``silhouette``,
``keypoints_2d``, ``translation``, ``edge_length``, ``vertex_l2``, ``proximity``,
``intersection``, ``mask_ot``. The temporal terms of clip guidance
(:mod:`~hoiguide.losses.temporal`: ``trajectory_smoothness``, ``contact_consistency``) are
plain functions over frames, weighted by a schedule's ``clip:`` keys.
"""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'LossContext': 'context',
    'LOSSES': 'registry',
    'LossSpec': 'registry',
    'Option': 'registry',
    'register_loss': 'registry',
    'evaluate_terms': 'registry',
    'required_fields': 'registry',
    'describe': 'registry',
    'normal_loss': 'image',
    'disparity_loss': 'image',
    'normalize_disparity': 'image',
    'silhouette_loss': 'image',
    'keypoints_2d_loss': 'image',
    'mask_ot_loss': 'image',
    'sinkhorn_divergence_2d': 'image',
    'translation_loss': 'regularizers',
    'edge_length_loss': 'regularizers',
    'vertex_l2_loss': 'regularizers',
    'proximity_loss': 'contact',
    'intersection_loss': 'contact',
    'penetration_depth': 'contact',
    'trajectory_smoothness': 'temporal',
    'contact_consistency': 'temporal',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
