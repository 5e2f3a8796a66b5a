"""The error every schedule problem raises."""

from __future__ import annotations

from typing import Optional

__all__ = ["ScheduleError"]


class ScheduleError(ValueError):
    """An invalid schedule. ``path`` is the offending YAML path (``phases[2].weights.x``),
    ``source`` the file or preset; both appear in the message."""

    def __init__(self, message: str, path: str = "", source: Optional[str] = None) -> None:
        self.path = path
        self.source = source
        self.detail = message
        prefix = "".join(p + ": " for p in (source, path) if p)
        super().__init__(prefix + message)
