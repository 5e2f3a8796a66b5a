"""Metrics of the paper's protocol (Chamfer cm^2, F-score, intersection volume cm^3, reconstruction rate)
and the hand-aligned protocol. The benchmark runner is an application:
:mod:`hoiguide.apps.bench` (``hoiguide bench``)."""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'chamfer_distance': 'metrics',
    'fscore': 'metrics',
    'intersection_volume': 'metrics',
    'reconstruction_rate': 'metrics',
    'sample_surface': 'metrics',
    'hand_aligned_metrics': 'protocol',
    'hand_alignment': 'protocol',
    'hidden_surface_mask': 'protocol',
    'object_aligned_metrics': 'protocol',
    'clip_metrics': 'clip',
    'clip_hidden_mask': 'clip',
    'trajectory_jitter': 'clip',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
