"""Guided and unguided rectified-flow sampling.

Read top-down: :mod:`~hoiguide.guidance.engine` (``GuidedSampler``: the sampling loop) ->
:mod:`~hoiguide.guidance.inner` (one phase's inner optimisation) ->
:mod:`~hoiguide.guidance.updates` (how a step moves the sample: euler, renoise, back) and
:mod:`~hoiguide.guidance.flow` (the flow arithmetic of both time conventions);
:mod:`~hoiguide.guidance.context` holds a run's shared state,
:mod:`~hoiguide.guidance.records` the options, history and step state callbacks see,
:mod:`~hoiguide.guidance.sampler` unguided sampling and decoding;
:mod:`~hoiguide.guidance.clip` (``ClipGuidedSampler``) runs the same loop over the frames of
a clip (one object, per-frame poses and hands, temporal terms).
"""

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
    'GuidanceOptions': 'records',
    'StepState': 'records',
    'History': 'records',
    'HistoryRecord': 'records',
    'NonFiniteLossError': 'records',
    'Timings': 'records',
    'FlowUpdate': 'updates',
    'EulerUpdate': 'updates',
    'RenoiseUpdate': 'updates',
    'flow_update': 'updates',
    'optimise_phase': 'inner',
    'RunContext': 'context',
    'ClipGuidedSampler': 'clip',
    'ClipRunContext': 'clip',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
