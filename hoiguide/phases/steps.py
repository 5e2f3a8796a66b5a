"""Which flow steps each phase of a schedule covers at a given number of steps (windows as
fractions of the trajectory, explicit steps, pushing narrow windows along; see
:mod:`hoiguide.phases` for the rules)."""

from __future__ import annotations

from typing import Any

from hoiguide.phases.errors import ScheduleError

__all__ = ["assign_steps", "FLOOR_TOL"]

FLOOR_TOL = 1e-9
"""Tolerance of ``floor(fraction * N)`` against float error (0.45 * 20 = 8.999...)."""


def _phase_path(schedule: Any, phase: Any) -> str:
    return f"phases[{schedule.phases.index(phase)}]"


def assign_steps(schedule: Any, n: int
                 ) -> tuple[dict[int, tuple[Any, int, int]], dict[str, tuple[int, ...]]]:
    per_phase: dict[str, tuple[int, ...]] = {}
    owner: dict[int, Any] = {}
    explicit = [p for p in schedule.guided_phases if p.steps is not None]
    windowed = sorted((p for p in schedule.guided_phases if p.window is not None),
                      key=lambda p: p.window.start)
    for p in explicit:
        steps = []
        for k, s in enumerate(p.steps):
            i = s if s >= 0 else n + s
            if not 0 <= i < n:
                raise ScheduleError(f"step {s} is out of range for num_steps={n} (phase "
                                    f"{p.name!r})", f"{_phase_path(schedule, p)}.steps[{k}]",
                                    schedule.source)
            if i in owner:
                raise ScheduleError(f"step {i} is covered twice at num_steps={n} (phase "
                                    f"{owner[i].name!r} also covers it)",
                                    f"{_phase_path(schedule, p)}.steps[{k}]", schedule.source)
            owner[i] = p
            steps.append(i)
        per_phase[p.name] = tuple(sorted(steps))
    # forward pass: nominal bounds, each window at least one step, pushing later ones along
    spans = []
    prev_hi = 0
    for p in windowed:
        lo, hi = p.window.bounds(n)
        lo = max(lo, prev_hi)
        hi = min(max(hi, lo + 1), n)
        lo = min(lo, hi)
        spans.append([lo, hi])
        prev_hi = max(prev_hi, hi)
    # backward pass: windows pushed past the end take free steps before them instead
    next_lo = n
    for span in reversed(spans):
        lo, hi = span
        hi = min(hi, next_lo)
        lo = max(min(lo, hi - 1), 0)
        span[:] = [lo, max(hi, lo)]
        next_lo = lo
    for p, (lo, hi) in zip(windowed, spans):
        steps = tuple(range(lo, hi))
        for i in steps:
            if i in owner:
                raise ScheduleError(f"window covers step {i} at num_steps={n}, which phase "
                                    f"{owner[i].name!r} also covers",
                                    f"{_phase_path(schedule, p)}.window", schedule.source)
            owner[i] = p
        per_phase[p.name] = steps
    step_map = {}
    for name, steps in per_phase.items():
        phase = schedule.phase(name)
        for k, i in enumerate(steps):
            step_map[i] = (phase, k, len(steps))
    for p in schedule.post_phases:
        per_phase[p.name] = ()
    return step_map, per_phase
