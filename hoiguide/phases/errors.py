"""The error every schedule problem raises."""

from __future__ import annotations

from hoiguide.io import ConfigError

__all__ = ["ScheduleError"]


class ScheduleError(ConfigError):
    """An invalid schedule. ``path`` is the offending YAML path (``phases[2].weights.x``),
    ``source`` the file or preset; both appear in the message."""
