"""``hoiguide schedule``: which flow steps each phase of a schedule covers."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from hoiguide.cli.common import Formatter, UsageError, first_line
from hoiguide.phases import ScheduleError, load_schedule

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide schedule followmyhold
  hoiguide schedule fast --steps 8
  hoiguide schedule demos/custom_schedule.yaml --steps 20
"""


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hoiguide schedule`` to ``subparsers`` (``parents``: the shared -q/-v flags)."""
    s = subparsers.add_parser(
        "schedule", parents=parents, epilog=EXAMPLES, formatter_class=Formatter, help="show which steps each phase of a schedule covers")
    s.add_argument("schedule", help="preset name (e.g. followmyhold) or path to a YAML file")
    s.add_argument("--steps", type=int, default=None, help="number of flow steps")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Print the resolved schedule; a bad schedule or step count is exit code 2."""

    try:
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps: expected a positive integer, got {args.steps}")
        sched = load_schedule(args.schedule)
        table = sched.resolve(args.steps)
    except (UsageError, ScheduleError, FileNotFoundError) as exc:
        log.error("%s", first_line(exc))
        return 2
    print(table)
    return 0
