"""Phase schedules: YAML-defined windows over the flow trajectory, what each phase optimises,
its optimiser, learning rates and loss weights; presets shipped in ``presets/``."""

from hoiguide._lazy import lazy_exports

DEFAULT_SCHEDULE = "fast_posthoc_fit"
"""The schedule every entry point uses when none is given (``guided_reconstruct``, the photo
chain, ``demo``, ``bench``, ``batch``, the app): on the bundled tiny generator it was the best
preset of the README's benchmark at the CPU budget (sample, then fit the final latent and
the transforms; ``fast`` is the same budget with guidance in the loop, ``followmyhold`` the
paper's full schedule)."""

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
