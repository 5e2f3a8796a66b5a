"""The one error the dataset loaders raise."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset file is missing or malformed, or a loader argument is wrong. The message is
    one line naming the file (or argument) and the layout the loader expects."""
