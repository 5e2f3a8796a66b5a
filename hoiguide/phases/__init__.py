"""Phase schedules: YAML-defined windows over the flow trajectory, what each phase optimises,
its optimiser, learning rates and loss weights; presets shipped in ``presets/``."""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    'load_schedule': 'schema',
    'available_presets': 'schema',
    'PhaseSchedule': 'schema',
    'Phase': 'schema',
    'OptimizerSpec': 'schema',
    'LossWeight': 'schema',
    'Term': 'schema',
    'Window': 'schema',
    'GuidanceDecay': 'schema',
    'ResolvedPhase': 'schema',
    'ResolvedSchedule': 'schema',
    'ScheduleError': 'schema',
    'GROUPS': 'schema',
    'SIMILARITY_GROUPS': 'schema',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
