"""Phase schedules: what the guided sampler optimises, when, how and against which losses.

One YAML file describes one schedule::

    name: my_schedule
    description: free text
    num_steps: 20                 # default number of flow steps (the caller may override)
    guidance_scale: 5.0           # classifier-free guidance weight
    guidance_decay:               # optional; null = constant CFG weight
      start: 0.55                 # fraction of the trajectory (or start_step: 11)
      kind: linear                # w_i = guidance_scale * (1 - i / num_steps) from there on
    on_nonfinite: skip            # raise | skip | stop  (a NaN/inf loss term)
    phases:
      - name: hand
        window: {start: 0.45, end: 0.5}   # fractions of the trajectory (or steps: [9])
        iterations: 200                   # inner iterations per covered step
        optimizer: {type: adam, eps: 1.0e-4}
        optimize:                         # parameter group -> learning rate
          hand.scale: 1.0e-2
          hand.translation: 1.0e-2
          hand.rotation: 0.5
        weights:                          # registered loss name -> weight (or mapping)
          keypoints_2d: 1.0e-2
          normal: {weight: 1.0, mask: hand}
          normal@late: {weight: 1.0e-3, mask: hand}   # label@suffix: a 2nd term of one loss
          intersection:
            weight: 1.0e-9
            by_step: [{from: -3, weight: 1.0e-5}]     # from the phase's 3rd-to-last step on

**Windows.** ``window: {start, end}`` covers the steps ``i`` with
``floor(start * N) <= i < floor(end * N)`` (``N`` = number of steps), so windows keep their
meaning when ``N`` changes; with ``N = 20`` the window ``[0.45, 0.5)`` is step 9. Phases are
resolved in trajectory order and every windowed phase gets at least one step while there are
as many steps as windows: a window too narrow for ``N`` takes the next free step and pushes
the following windows along (``N = 10``: ``[0.45, 0.5) -> [4]``, ``[0.5, 0.55) -> [5]``,
``[0.55, 1] -> [6..9]``); windows pushed past the end take free steps before them instead
(``N = 3``: ``[0]``, ``[1]``, ``[2]``). With fewer steps than windows the EARLIEST phases are
left without a step: :meth:`resolve` reports them empty (and the engine skips them).
``steps: [9, 10]`` gives explicit step indices (negative ones count from the end).
``window: after_sampling`` makes a phase run once AFTER the last flow step on the final
sample: it may only optimise similarity groups (and ``latent``), never ``velocity``; such
phases run in list order (the ``no_guidance`` ablation: generate, then fit the transforms).

**Update rules** (per in-loop phase): ``update: euler`` (default, the reference: the flow step
uses the optimised velocity) or ``update: renoise`` (the optimised clean estimate is re-noised
to the next sigma with the model's own noise estimate, so the whole correction is kept);
``repeats: r`` runs the inner loop and the update ``r`` times per step, going back to the
step's sigma with fresh noise in between ("time travel"). Formulas for both time conventions:
:mod:`hoiguide.guidance.engine`.

**Parameter groups** (``optimize``): ``velocity``, ``latent``, ``hand.scale``,
``hand.rotation``, ``hand.translation``, ``object.scale``, ``object.rotation``,
``object.translation``. A fresh optimiser is built for each step a phase covers
(:meth:`Phase.make_optimizer`).

**Weights** name losses registered in :data:`hoiguide.losses.LOSSES`; a value is a number or a
mapping with ``weight`` plus the loss's options (and optionally ``by_step``: a list of
``{from: k, weight: w}``, ``k`` an index into the phase's steps, negative from the end; later
entries win). A key ``loss@label`` adds a second term of the same loss with its own options
and weight.

**Deriving a schedule** from another one (``base:``): the file is deep-merged onto the base
(a preset name or a path relative to the file). Mappings merge key by key, ``null`` deletes a
key, scalars and lists replace. ``phases`` may be a LIST (replaces the base's phases) or a
MAPPING ``phase name -> changes``: changes deep-merge into that phase, ``null`` removes it, an
unknown name adds a new (complete) phase. ``drop_losses: [normal]`` then removes every term of
those losses (labelled variants included) from every phase. ``name`` defaults to the file's
stem.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
import yaml

from hoiguide.io import did_you_mean, load_yaml

__all__ = [
    "ScheduleError", "PhaseSchedule", "Phase", "OptimizerSpec", "LossWeight", "Term", "Window",
    "GuidanceDecay", "ResolvedPhase", "ResolvedSchedule", "load_schedule",
    "available_presets", "GROUPS", "SIMILARITY_GROUPS",
]

log = logging.getLogger(__name__)

#: every parameter group a phase may optimise
GROUPS = ("velocity", "latent", "hand.scale", "hand.rotation", "hand.translation",
          "object.scale", "object.rotation", "object.translation")
#: the groups that are similarity parameters (allowed after sampling)
SIMILARITY_GROUPS = GROUPS[2:]
_POST_GROUPS = ("latent",) + SIMILARITY_GROUPS
_OPTIMIZERS = ("adam", "adamw")
_NONFINITE = ("raise", "skip", "stop")
_DECAY_KINDS = ("linear",)
AFTER_SAMPLING = "after_sampling"

_TOP_KEYS = ("name", "description", "base", "num_steps", "guidance_scale", "guidance_decay",
             "on_nonfinite", "phases", "drop_losses")
_PHASE_KEYS = ("name", "description", "window", "steps", "iterations", "optimizer",
               "optimize", "weights", "update", "repeats")
#: how a guided flow step uses the optimised velocity / latent (see the module docstring)
UPDATES = ("euler", "renoise")
_OPT_KEYS = ("type", "eps", "betas", "weight_decay")
_DECAY_KEYS = ("start", "start_step", "kind")
_WINDOW_KEYS = ("start", "end")
_WEIGHT_RESERVED = ("weight", "by_step")
_BY_STEP_KEYS = ("from", "weight")
_FLOOR_TOL = 1e-9


class ScheduleError(ValueError):
    """An invalid schedule. ``path`` is the offending YAML path (``phases[2].weights.x``),
    ``source`` the file or preset; both appear in the message."""

    def __init__(self, message: str, path: str = "", source: Optional[str] = None) -> None:
        self.path = path
        self.source = source
        self.detail = message
        prefix = "".join(p + ": " for p in (source, path) if p)
        super().__init__(prefix + message)


_suggest = did_you_mean


# --------------------------------------------------------------------------------------
# YAML loading (safe; also reads 1e-2 as a float, which PyYAML's YAML 1.1 rules do not)
# --------------------------------------------------------------------------------------


def _read_yaml(text: str, source: str) -> Any:
    try:
        return load_yaml(source, text=text)
    except ValueError as e:
        raise ScheduleError(str(e).removeprefix(f"{source}: "), source=source) from None


# --------------------------------------------------------------------------------------
# dataclasses
# --------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimiser of a phase (learning rates are per group, in :attr:`Phase.optimize`).

    Attributes:
        type: ``"adam"`` or ``"adamw"``.
        eps: Adam's epsilon.
        betas: Adam's ``(beta1, beta2)``.
        weight_decay: L2 penalty (adam) or decoupled decay (adamw).
    """

    type: str = "adam"
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def build(self, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """A torch optimiser over ``[{"params": [...], "lr": lr, "name": group}, ...]``."""
        cls = torch.optim.Adam if self.type == "adam" else torch.optim.AdamW
        return cls(param_groups, eps=self.eps, betas=tuple(self.betas),
                   weight_decay=self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "eps": self.eps, "betas": list(self.betas),
                "weight_decay": self.weight_decay}

    def __str__(self) -> str:
        s = f"{self.type}(eps={_fmt(self.eps)}"
        if self.weight_decay:
            s += f", wd={_fmt(self.weight_decay)}"
        if tuple(self.betas) != (0.9, 0.999):
            s += f", betas=({_fmt(self.betas[0])}, {_fmt(self.betas[1])})"
        return s + ")"


@dataclass(frozen=True)
class Term:
    """One weighted loss term at one step: ``weight * LOSSES[loss](ctx, **options)``.

    ``label`` names it in histories (``"normal"``, ``"normal@hand"``)."""

    label: str
    loss: str
    weight: float
    options: dict[str, Any]


@dataclass(frozen=True)
class LossWeight:
    """A loss term of a phase, with a weight that may change over the phase's steps.

    Attributes:
        label: YAML key (``"silhouette"`` or ``"silhouette@hand"``).
        loss: registered loss name (the label before ``@``).
        weight: weight from the phase's first step on.
        options: the loss's options, defaults filled in.
        by_step: ``((from_index, weight), ...)``: from that index into the phase's steps
            (negative counts from the end) the weight changes; later entries win.
    """

    label: str
    loss: str
    weight: float
    options: dict[str, Any] = field(default_factory=dict)
    by_step: tuple[tuple[int, float], ...] = ()

    def weight_at(self, position: int, count: int) -> float:
        """The weight at the ``position``-th of ``count`` steps of the phase."""
        w = self.weight
        for start, value in self.by_step:
            s = start if start >= 0 else max(count + start, 0)
            if position >= s:
                w = value
        return w

    def term(self, position: int = 0, count: int = 1) -> Term:
        return Term(self.label, self.loss, self.weight_at(position, count), dict(self.options))

    def to_yaml_value(self) -> Any:
        d: dict[str, Any] = {"weight": self.weight}
        d.update(self.options)
        if self.by_step:
            d["by_step"] = [{"from": s, "weight": w} for s, w in self.by_step]
        return d


@dataclass(frozen=True)
class Window:
    """Fractions of the trajectory, ``0 <= start < end <= 1`` (end exclusive)."""

    start: float
    end: float

    def bounds(self, num_steps: int) -> tuple[int, int]:
        """Nominal ``[lo, hi)`` step range before the "at least one step" rule."""
        return (math.floor(self.start * num_steps + _FLOOR_TOL),
                math.floor(self.end * num_steps + _FLOOR_TOL))


@dataclass(frozen=True)
class GuidanceDecay:
    """CFG decay: from the first decayed step ``k`` on, ``w_i = w * (1 - i / num_steps)``.

    ``k = floor(start * num_steps)`` for a fraction ``start``, or ``start_step`` (negative
    counts from the end)."""

    start: Optional[float] = None
    start_step: Optional[int] = None
    kind: str = "linear"

    def first_step(self, num_steps: int) -> int:
        if self.start_step is not None:
            return self.start_step if self.start_step >= 0 else num_steps + self.start_step
        return math.floor(float(self.start) * num_steps + _FLOOR_TOL)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.start is not None:
            d["start"] = self.start
        if self.start_step is not None:
            d["start_step"] = self.start_step
        d["kind"] = self.kind
        return d


@dataclass(frozen=True)
class Phase:
    """One phase of a schedule.

    Attributes:
        name: unique within the schedule.
        optimize: parameter group -> learning rate (see :data:`GROUPS`).
        iterations: inner iterations per covered step (``>= 1``).
        weights: the loss terms.
        optimizer: optimiser settings (a fresh optimiser per step).
        window: trajectory fractions covered (or ``None``).
        steps: explicit step indices (or ``None``); negative ones count from the end.
        after_sampling: runs once after the last flow step (``window: after_sampling``).
        description: free text.
        update: how the step uses the optimised velocity / latent: ``"euler"`` (the
            reference) or ``"renoise"`` (see the module docstring).
        repeats: inner loop + update this many times per covered step ("time travel"; 1 =
            the reference).
    """

    name: str
    optimize: dict[str, float]
    iterations: int
    weights: tuple[LossWeight, ...]
    optimizer: OptimizerSpec = OptimizerSpec()
    window: Optional[Window] = None
    steps: Optional[tuple[int, ...]] = None
    after_sampling: bool = False
    description: str = ""
    update: str = "euler"
    repeats: int = 1

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.optimize)

    def weight(self, label: str) -> LossWeight:
        """The :class:`LossWeight` with this label (``KeyError`` with a suggestion)."""
        for w in self.weights:
            if w.label == label:
                return w
        labels = [w.label for w in self.weights]
        raise KeyError(f"phase {self.name!r} has no loss term {label!r}"
                       f"{_suggest(label, labels)} (terms: {', '.join(labels)})")

    def terms(self, position: int = 0, count: int = 1) -> tuple[Term, ...]:
        """The weighted terms at the ``position``-th of the ``count`` steps this phase
        covers (``0, 1`` for an after-sampling phase)."""
        return tuple(w.term(position, count) for w in self.weights)

    def make_optimizer(self, params: Mapping[str, Union[torch.Tensor, Sequence[torch.Tensor]]]
                       ) -> torch.optim.Optimizer:
        """A fresh optimiser over this phase's groups with their learning rates.

        Args:
            params: group name -> tensor(s) to optimise (leaf tensors requiring grad). Must
                contain every group in :attr:`optimize`; other groups are ignored (the caller
                should keep them frozen).
        """
        missing = [g for g in self.optimize if g not in params]
        if missing:
            raise ValueError(f"phase {self.name!r}: make_optimizer needs tensors for "
                             f"{missing}, got groups {sorted(params)}")
        groups = []
        for g, lr in self.optimize.items():
            ps = params[g]
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            if not ps:
                raise ValueError(f"phase {self.name!r}: group {g!r} has no tensors")
            groups.append({"params": ps, "lr": lr, "name": g})
        return self.optimizer.build(groups)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        if self.after_sampling:
            d["window"] = AFTER_SAMPLING
        elif self.window is not None:
            d["window"] = {"start": self.window.start, "end": self.window.end}
        if self.steps is not None:
            d["steps"] = list(self.steps)
        d["iterations"] = self.iterations
        if self.update != "euler":
            d["update"] = self.update
        if self.repeats != 1:
            d["repeats"] = self.repeats
        d["optimizer"] = self.optimizer.to_dict()
        d["optimize"] = dict(self.optimize)
        d["weights"] = {w.label: w.to_yaml_value() for w in self.weights}
        return d

    def replace(self, **changes: Any) -> "Phase":
        """A validated copy with some fields changed."""
        p = dataclasses.replace(self, **changes)
        return _parse_phase(p.to_dict(), "phase", None)


@dataclass(frozen=True)
class ResolvedPhase:
    """What a phase does at a given number of steps.

    Attributes:
        name: the phase.
        steps: the flow steps it covers (empty for after-sampling or squeezed-out phases).
        after_sampling: runs once after the last flow step.
        iterations: inner iterations per step.
        optimizer: the optimiser settings.
        learning_rates: group -> learning rate.
        weights: label -> weight at each covered step (one value for after-sampling phases).
    """

    name: str
    steps: tuple[int, ...]
    after_sampling: bool
    iterations: int
    optimizer: OptimizerSpec
    learning_rates: dict[str, float]
    weights: dict[str, tuple[float, ...]]

    @property
    def empty(self) -> bool:
        return not self.steps and not self.after_sampling

    @property
    def total_iterations(self) -> int:
        return self.iterations * (1 if self.after_sampling else len(self.steps))


def _ranges(steps: Sequence[int]) -> str:
    """``[9, 11, 12, 13] -> "9, 11-13"``."""
    if not steps:
        return "-"
    out, start, prev = [], steps[0], steps[0]
    for s in list(steps[1:]) + [None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(out)


class ResolvedSchedule(list):
    """A list of :class:`ResolvedPhase` (trajectory order, then after-sampling phases) whose
    ``str()`` is a readable table. Also carries ``num_steps``, ``guidance_scales`` (one per
    step) and ``unguided_steps``."""

    def __init__(self, schedule: "PhaseSchedule", num_steps: int,
                 phases: Iterable[ResolvedPhase]) -> None:
        super().__init__(phases)
        self.name = schedule.name
        self.num_steps = num_steps
        self.guidance_scales = tuple(schedule.guidance_scale_at(i, num_steps)
                                     for i in range(num_steps))
        covered = {s for p in self for s in p.steps}
        self.unguided_steps = tuple(i for i in range(num_steps) if i not in covered)

    def by_name(self, name: str) -> ResolvedPhase:
        for p in self:
            if p.name == name:
                return p
        raise KeyError(f"no phase {name!r}{_suggest(name, [p.name for p in self])}")

    def table(self) -> str:
        rows = [("phase", "steps", "iters", "optimizer", "learning rates")]
        for p in self:
            where = "after sampling" if p.after_sampling else _ranges(p.steps)
            if p.empty:
                where = "(none: too few steps)"
            lrs = " ".join(f"{g}={_fmt(lr)}" for g, lr in p.learning_rates.items())
            rows.append((p.name, where, str(p.iterations), str(p.optimizer), lrs))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"schedule {self.name!r} at num_steps={self.num_steps}"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        lines.append(f"unguided steps: {_ranges(self.unguided_steps)}")
        scales = self.guidance_scales
        lines.append("cfg: " + ", ".join(f"{i}:{_fmt(round(w, 4))}" for i, w in
                                         enumerate(scales)))
        for p in self:
            parts = []
            for label, ws in p.weights.items():
                if len(set(ws)) <= 1:
                    parts.append(f"{label}={_fmt(ws[0]) if ws else '-'}")
                else:  # show where it changes
                    chunks, cur, first = [], ws[0], 0
                    for k in range(1, len(ws) + 1):
                        if k == len(ws) or ws[k] != cur:
                            chunks.append(f"{_fmt(cur)}@{_ranges(p.steps[first:k])}")
                            if k < len(ws):
                                cur, first = ws[k], k
                    parts.append(f"{label}=[{'; '.join(chunks)}]")
            lines.append(f"weights {p.name}: " + " ".join(parts))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class PhaseSchedule:
    """A complete phase schedule (see the module docstring for the YAML form).

    Attributes:
        name: schedule name.
        phases: the phases (as written; see :meth:`resolve` for the order they run in).
        num_steps: default number of flow steps.
        guidance_scale: classifier-free guidance weight.
        guidance_decay: optional CFG decay.
        on_nonfinite: what the engine does when a loss term is NaN/inf: ``"raise"``,
            ``"skip"`` (skip that inner iteration, counted) or ``"stop"`` (stop guidance and
            finish sampling unguided).
        description: free text.
        source: the preset name or file it was loaded from (not compared).
    """

    name: str
    phases: tuple[Phase, ...]
    num_steps: int = 20
    guidance_scale: float = 5.0
    guidance_decay: Optional[GuidanceDecay] = None
    on_nonfinite: str = "raise"
    description: str = ""
    source: Optional[str] = field(default=None, compare=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- structure -------------------------------------------------------------------
    @property
    def guided_phases(self) -> tuple[Phase, ...]:
        """Phases that run during sampling."""
        return tuple(p for p in self.phases if not p.after_sampling)

    @property
    def post_phases(self) -> tuple[Phase, ...]:
        """Phases that run after sampling, in the order they run."""
        return tuple(p for p in self.phases if p.after_sampling)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        names = [p.name for p in self.phases]
        raise KeyError(f"schedule {self.name!r} has no phase {name!r}{_suggest(name, names)} "
                       f"(phases: {', '.join(names)})")

    def _n(self, num_steps: Optional[int]) -> int:
        n = self.num_steps if num_steps is None else num_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"schedule {self.name!r}: expected num_steps a positive integer, "
                             f"got {n!r}")
        return n

    def _step_map(self, num_steps: int) -> dict[int, tuple[Phase, int, int]]:
        """step -> (phase, position in the phase, number of steps of the phase)."""
        hit = self._cache.get(num_steps)
        if hit is None:
            hit = _assign_steps(self, num_steps)
            self._cache[num_steps] = hit
        return hit[0]

    def steps_of(self, name: str, num_steps: Optional[int] = None) -> tuple[int, ...]:
        """The flow steps a phase covers (empty for after-sampling phases)."""
        n = self._n(num_steps)
        self._step_map(n)
        return self._cache[n][1][self.phase(name).name]

    # ---- queries used by the engine --------------------------------------------------
    def resolve(self, num_steps: Optional[int] = None) -> ResolvedSchedule:
        """Per phase: steps covered, inner iterations, optimiser, learning rates and the
        weight of every term at every covered step. ``str()`` of the result is a table.

        Raises:
            ScheduleError: explicit ``steps`` out of range or overlapping another phase at
                this ``num_steps`` (the message names the YAML path).
        """
        n = self._n(num_steps)
        self._step_map(n)
        per_phase = self._cache[n][1]
        out = []
        def order(p: Phase) -> tuple:
            st = per_phase[p.name]
            frac = p.window.start if p.window is not None else (st[0] / n if st else 1.0)
            return (st[0] if st else math.floor(frac * n + _FLOOR_TOL), frac)

        for p in sorted(self.guided_phases, key=order):
            steps = per_phase[p.name]
            if not steps:
                log.warning("schedule %r: phase %r covers no step at num_steps=%d (too few "
                            "steps for its window); it is skipped", self.name, p.name, n)
            weights = {w.label: tuple(w.weight_at(k, len(steps)) for k in range(len(steps)))
                       for w in p.weights}
            out.append(ResolvedPhase(p.name, steps, False, p.iterations, p.optimizer,
                                     dict(p.optimize), weights))
        for p in self.post_phases:
            weights = {w.label: (w.weight_at(0, 1),) for w in p.weights}
            out.append(ResolvedPhase(p.name, (), True, p.iterations, p.optimizer,
                                     dict(p.optimize), weights))
        return ResolvedSchedule(self, n, out)

    def phase_at(self, step: int, num_steps: Optional[int] = None) -> Optional[Phase]:
        """The phase active at flow step ``step`` (``None``: plain sampling)."""
        hit = self._step_map(self._n(num_steps)).get(step)
        return None if hit is None else hit[0]

    def terms_at(self, step: int, num_steps: Optional[int] = None) -> tuple[Term, ...]:
        """The weighted loss terms at flow step ``step`` (empty when no phase is active)."""
        hit = self._step_map(self._n(num_steps)).get(step)
        if hit is None:
            return ()
        phase, pos, count = hit
        return phase.terms(pos, count)

    def guidance_scale_at(self, step: int, num_steps: Optional[int] = None) -> float:
        """CFG weight at flow step ``step``: ``guidance_scale``, times ``(1 - step / N)``
        from the decay's first step on."""
        n = self._n(num_steps)
        d = self.guidance_decay
        if d is None or step < d.first_step(n):
            return float(self.guidance_scale)
        return float(self.guidance_scale) * (1.0 - step / n)

    # ---- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The full schedule as plain data (no ``base``); ``load_schedule`` reads it back."""
        return {
            "name": self.name,
            "description": self.description,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "guidance_decay": None if self.guidance_decay is None else
            self.guidance_decay.to_dict(),
            "on_nonfinite": self.on_nonfinite,
            "phases": [p.to_dict() for p in self.phases],
        }

    def to_yaml(self, path: Union[str, Path, None] = None) -> str:
        """The full schedule as YAML text (written to ``path`` when given)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None,
                              width=100)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[str] = None
                  ) -> "PhaseSchedule":
        """Validate plain data (one YAML document, ``base`` not allowed here)."""
        return _parse_schedule(data, source)

    def replace(self, **changes: Any) -> "PhaseSchedule":
        """A validated copy with some fields changed (e.g. ``num_steps=8``)."""
        s = dataclasses.replace(self, **changes)
        return _parse_schedule(s.to_dict(), self.source)

    def replace_phase(self, name: str, **changes: Any) -> "PhaseSchedule":
        """A validated copy with one phase's fields changed
        (``replace_phase("joint", iterations=10)``)."""
        target = self.phase(name)
        phases = tuple(dataclasses.replace(p, **changes) if p is target else p
                       for p in self.phases)
        return self.replace(phases=phases)

    def __str__(self) -> str:
        return self.resolve().table()


# --------------------------------------------------------------------------------------
# step assignment
# --------------------------------------------------------------------------------------


def _phase_path(schedule: PhaseSchedule, phase: Phase) -> str:
    return f"phases[{schedule.phases.index(phase)}]"


def _assign_steps(schedule: PhaseSchedule, n: int
                  ) -> tuple[dict[int, tuple[Phase, int, int]], dict[str, tuple[int, ...]]]:
    per_phase: dict[str, tuple[int, ...]] = {}
    owner: dict[int, Phase] = {}
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


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _check_keys(d: Any, allowed: Sequence[str], path: str, source: Optional[str],
                what: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ScheduleError(f"expected a mapping ({what}), got {type(d).__name__}: {d!r}",
                            path, source)
    for k in d:
        if k not in allowed:
            raise ScheduleError(f"unknown key{_suggest(k, allowed)} (allowed: "
                                f"{', '.join(allowed)})", _join(path, k), source)
    return d


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _number(v: Any, path: str, source: Optional[str], *, positive: bool = False,
            nonneg: bool = False, integer: bool = False, lo: Optional[float] = None,
            hi: Optional[float] = None, what: str = "a number") -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ScheduleError(f"expected {what}, got {v!r}", path, source)
    if integer:
        if int(v) != v:
            raise ScheduleError(f"expected {what} (an integer), got {v!r}", path, source)
        v = int(v)
    else:
        v = float(v)
    if not math.isfinite(v):
        raise ScheduleError(f"expected a finite number, got {v!r}", path, source)
    if positive and not v > 0:
        raise ScheduleError(f"expected {what} > 0, got {v!r}", path, source)
    if nonneg and v < 0:
        raise ScheduleError(f"expected {what} >= 0, got {v!r}", path, source)
    if lo is not None and v < lo:
        raise ScheduleError(f"expected {what} >= {lo}, got {v!r}", path, source)
    if hi is not None and v > hi:
        raise ScheduleError(f"expected {what} <= {hi}, got {v!r}", path, source)
    return v


def _string(v: Any, path: str, source: Optional[str], choices: Optional[Sequence[str]] = None
            ) -> str:
    if not isinstance(v, str):
        raise ScheduleError(f"expected a string, got {v!r}", path, source)
    if choices is not None and v not in choices:
        raise ScheduleError(f"expected one of {', '.join(choices)}, got {v!r}"
                            f"{_suggest(v, choices)}", path, source)
    return v


def _parse_optimizer(d: Any, path: str, source: Optional[str]) -> OptimizerSpec:
    if d is None:
        return OptimizerSpec()
    d = _check_keys(d, _OPT_KEYS, path, source, "optimizer settings")
    kind = _string(d.get("type", "adam"), _join(path, "type"), source, _OPTIMIZERS)
    eps = _number(d.get("eps", 1e-8), _join(path, "eps"), source, positive=True, what="eps")
    wd_default = 0.01 if kind == "adamw" else 0.0
    wd = _number(d.get("weight_decay", wd_default), _join(path, "weight_decay"), source,
                 nonneg=True, what="weight_decay")
    betas = d.get("betas", (0.9, 0.999))
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ScheduleError(f"expected two numbers [beta1, beta2], got {betas!r}",
                            _join(path, "betas"), source)
    betas = tuple(_number(b, f"{path}.betas[{i}]", source, lo=0.0, what="a beta")
                  for i, b in enumerate(betas))
    for i, b in enumerate(betas):
        if not b < 1:
            raise ScheduleError(f"expected a beta < 1, got {b!r}", f"{path}.betas[{i}]",
                                source)
    return OptimizerSpec(kind, eps, betas, wd)


def _parse_weights(d: Any, path: str, source: Optional[str], phase: str
                   ) -> tuple[LossWeight, ...]:
    from hoiguide.losses import LOSSES

    if not isinstance(d, Mapping) or not d:
        raise ScheduleError(f"expected a non-empty mapping of loss name -> weight, got {d!r}",
                            path, source)
    out = []
    for label, value in d.items():
        lpath = _join(path, label)
        if not isinstance(label, str):
            raise ScheduleError(f"expected a loss name, got {label!r}", lpath, source)
        loss, at, suffix = label.partition("@")
        if loss not in LOSSES:
            raise ScheduleError(f"unknown loss{_suggest(loss, LOSSES)} (phase {phase!r}; "
                                f"registered: {', '.join(sorted(LOSSES))})", lpath, source)
        if at and not re.fullmatch(r"[A-Za-z0-9_]+", suffix):
            raise ScheduleError("expected loss@label with a label of letters, digits and '_'",
                                lpath, source)
        spec = LOSSES[loss]
        by_step: tuple[tuple[int, float], ...] = ()
        if isinstance(value, Mapping):
            if "weight" not in value:
                raise ScheduleError("a mapping needs 'weight' (plus the loss's options)",
                                    lpath, source)
            weight = _number(value["weight"], _join(lpath, "weight"), source, nonneg=True,
                             what="a weight")
            raw_opts = {k: v for k, v in value.items() if k not in _WEIGHT_RESERVED}
            if value.get("by_step") is not None:
                by_step = _parse_by_step(value["by_step"], _join(lpath, "by_step"), source)
        else:
            weight = _number(value, lpath, source, nonneg=True, what="a weight")
            raw_opts = {}
        options = {}
        for k, v in raw_opts.items():
            if k not in spec.options:
                allowed = list(spec.options) + list(_WEIGHT_RESERVED)
                raise ScheduleError(f"unknown option of loss {loss!r}{_suggest(k, allowed)} "
                                    f"(allowed: {', '.join(allowed)})", _join(lpath, k),
                                    source)
            try:
                options[k] = spec.options[k].validate(v)
            except ValueError as e:
                raise ScheduleError(str(e), _join(lpath, k), source) from None
        for k, opt in spec.options.items():
            options.setdefault(k, opt.default)
        out.append(LossWeight(label, loss, weight, options, by_step))
    return tuple(out)


def _parse_by_step(v: Any, path: str, source: Optional[str]) -> tuple[tuple[int, float], ...]:
    if not isinstance(v, list) or not v:
        raise ScheduleError(f"expected a list of {{from: index, weight: w}}, got {v!r}", path,
                            source)
    out = []
    for k, e in enumerate(v):
        epath = f"{path}[{k}]"
        e = _check_keys(e, _BY_STEP_KEYS, epath, source, "{from: index, weight: w}")
        for key in _BY_STEP_KEYS:
            if key not in e:
                raise ScheduleError(f"missing {key!r}", epath, source)
        out.append((_number(e["from"], _join(epath, "from"), source, integer=True,
                            what="a step index into the phase"),
                    _number(e["weight"], _join(epath, "weight"), source, nonneg=True,
                            what="a weight")))
    return tuple(out)


def _parse_phase(d: Any, path: str, source: Optional[str]) -> Phase:
    d = _check_keys(d, _PHASE_KEYS, path, source, "a phase")
    for key in ("name", "iterations", "optimize", "weights"):
        if key not in d:
            raise ScheduleError(f"missing {key!r}", path, source)
    name = _string(d["name"], _join(path, "name"), source)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ScheduleError(f"expected a phase name of letters, digits, '_' and '-', got "
                            f"{name!r}", _join(path, "name"), source)
    desc = d.get("description") or ""
    if not isinstance(desc, str):
        raise ScheduleError("expected a string", _join(path, "description"), source)
    window, steps, after = None, None, False
    w = d.get("window")
    s = d.get("steps")
    if w is not None and s is not None:
        raise ScheduleError("give either 'window' or 'steps', not both", path, source)
    if w is None and s is None:
        raise ScheduleError("missing 'window' ({start, end} fractions, or after_sampling) or "
                            "'steps' (explicit indices)", path, source)
    if isinstance(w, str):
        _string(w, _join(path, "window"), source, (AFTER_SAMPLING,))
        after = True
    elif w is not None:
        wpath = _join(path, "window")
        _check_keys(w, _WINDOW_KEYS, wpath, source,
                    "{start, end} fractions of the trajectory, or after_sampling")
        for key in _WINDOW_KEYS:
            if key not in w:
                raise ScheduleError(f"missing {key!r}", wpath, source)
        a = _number(w["start"], _join(wpath, "start"), source, lo=0.0, hi=1.0,
                    what="a fraction")
        b = _number(w["end"], _join(wpath, "end"), source, lo=0.0, hi=1.0, what="a fraction")
        if not a < b:
            raise ScheduleError(f"expected start < end, got [{a}, {b}]", wpath, source)
        window = Window(a, b)
    if s is not None:
        spath = _join(path, "steps")
        if not isinstance(s, list) or not s:
            raise ScheduleError(f"expected a non-empty list of step indices, got {s!r}", spath,
                                source)
        steps = tuple(_number(x, f"{spath}[{k}]", source, integer=True, what="a step index")
                      for k, x in enumerate(s))
        if len(set(steps)) != len(steps):
            raise ScheduleError(f"repeated step index in {list(steps)}", spath, source)
    iterations = _number(d["iterations"], _join(path, "iterations"), source, integer=True,
                         positive=True, what="iterations")
    optimizer = _parse_optimizer(d.get("optimizer"), _join(path, "optimizer"), source)
    opath = _join(path, "optimize")
    opt = d["optimize"]
    if not isinstance(opt, Mapping) or not opt:
        raise ScheduleError(f"expected a non-empty mapping of parameter group -> learning "
                            f"rate, got {opt!r} (groups: {', '.join(GROUPS)})", opath, source)
    optimize = {}
    for g, lr in opt.items():
        if g not in GROUPS:
            raise ScheduleError(f"unknown parameter group{_suggest(g, GROUPS)} (groups: "
                                f"{', '.join(GROUPS)})", _join(opath, g), source)
        if after and g not in _POST_GROUPS:
            raise ScheduleError(f"{g!r} cannot be optimised after sampling (there is no flow "
                                f"step left); allowed: {', '.join(_POST_GROUPS)}",
                                _join(opath, g), source)
        optimize[g] = _number(lr, _join(opath, g), source, positive=True,
                              what="a learning rate")
    weights = _parse_weights(d["weights"], _join(path, "weights"), source, name)
    update = _string(d.get("update", "euler"), _join(path, "update"), source, UPDATES)
    repeats = _number(d.get("repeats", 1), _join(path, "repeats"), source, integer=True,
                      positive=True, what="repeats")
    if after and (update != "euler" or repeats != 1):
        raise ScheduleError("'update' and 'repeats' act on flow steps; an after_sampling "
                            "phase has none (leave them out)", path, source)
    return Phase(name, optimize, iterations, weights, optimizer, window, steps, after, desc,
                 update, int(repeats))


def _parse_schedule(data: Any, source: Optional[str]) -> PhaseSchedule:
    d = _check_keys(data, _TOP_KEYS, "", source, "a schedule")
    if "base" in d:
        raise ScheduleError("'base' is only allowed in files (use load_schedule)", "base",
                            source)
    if "drop_losses" in d:
        raise ScheduleError("'drop_losses' is only allowed in files deriving from a base",
                            "drop_losses", source)
    if "name" not in d:
        raise ScheduleError("missing 'name'", "", source)
    name = _string(d["name"], "name", source)
    desc = d.get("description") or ""
    if not isinstance(desc, str):
        raise ScheduleError("expected a string", "description", source)
    num_steps = _number(d.get("num_steps", 20), "num_steps", source, integer=True, lo=1,
                        what="num_steps")
    gscale = _number(d.get("guidance_scale", 5.0), "guidance_scale", source, nonneg=True,
                     what="guidance_scale")
    decay = None
    if d.get("guidance_decay") is not None:
        dd = _check_keys(d["guidance_decay"], _DECAY_KEYS, "guidance_decay", source,
                         "{start: fraction | start_step: index, kind: linear}")
        if ("start" in dd) == ("start_step" in dd):
            raise ScheduleError("give exactly one of 'start' (fraction) or 'start_step' "
                                "(index)", "guidance_decay", source)
        start = None if "start" not in dd else _number(
            dd["start"], "guidance_decay.start", source, lo=0.0, hi=1.0, what="a fraction")
        start_step = None if "start_step" not in dd else _number(
            dd["start_step"], "guidance_decay.start_step", source, integer=True,
            what="a step index")
        kind = _string(dd.get("kind", "linear"), "guidance_decay.kind", source, _DECAY_KINDS)
        decay = GuidanceDecay(start, start_step, kind)
    on_nonfinite = _string(d.get("on_nonfinite", "raise"), "on_nonfinite", source, _NONFINITE)
    raw_phases = d.get("phases")
    if not isinstance(raw_phases, list):
        raise ScheduleError(f"expected a list of phases, got {raw_phases!r}", "phases",
                            source)
    phases = tuple(_parse_phase(p, f"phases[{i}]", source) for i, p in enumerate(raw_phases))
    seen: dict[str, int] = {}
    for i, p in enumerate(phases):
        if p.name in seen:
            raise ScheduleError(f"duplicate phase name {p.name!r} (also phases[{seen[p.name]}])",
                                f"phases[{i}].name", source)
        seen[p.name] = i
    # windows must not overlap (as fractions; explicit steps are checked by resolve)
    windowed = sorted(((p.window.start, p.window.end, i) for i, p in enumerate(phases)
                       if p.window is not None))
    for (a0, b0, i0), (a1, b1, i1) in zip(windowed, windowed[1:]):
        if a1 < b0:
            raise ScheduleError(f"window [{a1:g}, {b1:g}) overlaps phases[{i0}] "
                                f"({phases[i0].name!r}, [{a0:g}, {b0:g}))",
                                f"phases[{i1}].window", source)
    sched = PhaseSchedule(name, phases, num_steps, gscale, decay, on_nonfinite, desc, source)
    sched.resolve(num_steps)  # explicit steps: range and overlap at the default num_steps
    return sched


# --------------------------------------------------------------------------------------
# files, presets, bases
# --------------------------------------------------------------------------------------


def _preset_dir() -> Any:
    return resources.files("hoiguide.phases") / "presets"


def available_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def _deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key (``None`` deletes), anything else replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _deep_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _merge_phases(base: Any, over: Any, source: str, base_name: str) -> Any:
    if isinstance(over, list):
        return copy.deepcopy(over)
    if not isinstance(over, Mapping):
        raise ScheduleError(f"expected a list of phases (replacing the base's) or a mapping "
                            f"phase name -> changes, got {over!r}", "phases", source)
    if not isinstance(base, list):
        raise ScheduleError(f"base {base_name!r} has no list of phases to patch", "phases",
                            source)
    names = [p.get("name") if isinstance(p, Mapping) else None for p in base]
    out = [copy.deepcopy(p) for p in base]
    for pname, change in over.items():
        path = f"phases.{pname}"
        if pname in names:
            k = names.index(pname)
            if change is None:
                out[k] = None
            else:
                if not isinstance(change, Mapping):
                    raise ScheduleError(f"expected a mapping of changes or null (remove), got "
                                        f"{change!r}", path, source)
                if "name" in change and change["name"] != pname:
                    raise ScheduleError("renaming a phase through a patch is not supported",
                                        _join(path, "name"), source)
                out[k] = _deep_merge(out[k], change)
        else:
            if change is None:
                known = [n for n in names if n]
                raise ScheduleError(f"base {base_name!r} has no phase {pname!r} to remove"
                                    f"{_suggest(pname, known)} (phases: {', '.join(known)})",
                                    path, source)
            if not isinstance(change, Mapping):
                raise ScheduleError(f"expected a complete phase for new phase {pname!r}, got "
                                    f"{change!r}", path, source)
            out.append({"name": pname, **change})
    return [p for p in out if p is not None]


def _drop_losses(d: dict, drop: Any, source: str) -> None:
    from hoiguide.losses import LOSSES

    if not isinstance(drop, list) or not all(isinstance(x, str) for x in drop):
        raise ScheduleError(f"expected a list of loss names, got {drop!r}", "drop_losses",
                            source)
    for k, loss in enumerate(drop):
        if loss not in LOSSES:
            raise ScheduleError(f"unknown loss{_suggest(loss, LOSSES)}", f"drop_losses[{k}]",
                                source)
        hits = 0
        for p in d.get("phases") or []:
            w = p.get("weights") if isinstance(p, Mapping) else None
            if isinstance(w, Mapping):
                keep = {lab: v for lab, v in w.items()
                        if not (isinstance(lab, str) and lab.partition("@")[0] == loss)}
                hits += len(w) - len(keep)
                p["weights"] = keep
        if hits == 0:
            raise ScheduleError(f"no phase uses loss {loss!r}", f"drop_losses[{k}]", source)


def _load_raw(text: str, source: str, directory: Optional[Path], stack: tuple[str, ...],
              default_name: str) -> dict:
    """Parse one file and resolve its ``base`` chain into one plain mapping."""
    data = _read_yaml(text, source)
    if data is None:
        raise ScheduleError("the file is empty", source=source)
    if not isinstance(data, Mapping):
        raise ScheduleError(f"expected a mapping at the top level, got {type(data).__name__}",
                            source=source)
    _check_keys(data, _TOP_KEYS, "", source, "a schedule")
    data = dict(data)
    base_ref = data.pop("base", None)
    drop = data.pop("drop_losses", None)
    if base_ref is None:
        if drop is not None:
            raise ScheduleError("'drop_losses' needs a 'base' to drop from", "drop_losses",
                                source)
        data.setdefault("name", default_name)
        return data
    if not isinstance(base_ref, str):
        raise ScheduleError(f"expected a preset name or a path, got {base_ref!r}", "base",
                            source)
    btext, bsource, bdir, bname = _locate(base_ref, directory, source, "base")
    if bsource in stack:
        raise ScheduleError(f"circular base chain: {' -> '.join(stack + (bsource,))}", "base",
                            source)
    base = _load_raw(btext, bsource, bdir, stack + (bsource,), bname)
    phases_over = data.pop("phases", None)
    merged = _deep_merge(base, data)
    if phases_over is not None:
        merged["phases"] = _merge_phases(base.get("phases"), phases_over, source, base_ref)
    if drop is not None:
        _drop_losses(merged, drop, source)
    if "name" not in data:
        merged["name"] = default_name
    return merged


def _locate(ref: str, directory: Optional[Path], source: Optional[str], path: str
            ) -> tuple[str, str, Optional[Path], str]:
    """(text, source label, directory, default name) of a preset name or a file path."""
    looks_like_path = ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref
    if looks_like_path:
        p = Path(ref).expanduser()
        if not p.is_absolute() and directory is not None:
            p = directory / p
        if not p.is_file():
            raise ScheduleError(f"no such schedule file: {p}", path, source)
        return p.read_text(), str(p), p.parent, p.stem
    presets = available_presets()
    if ref not in presets:
        raise ScheduleError(f"unknown preset {ref!r}{_suggest(ref, presets)} (presets: "
                            f"{', '.join(presets)}; or give a path to a .yaml file)", path,
                            source)
    res = _preset_dir() / f"{ref}.yaml"
    return res.read_text(), ref, None, ref


def load_schedule(name_or_path: Union[str, Path, Mapping[str, Any], PhaseSchedule]
                  ) -> PhaseSchedule:
    """Load and validate a phase schedule.

    Args:
        name_or_path: a preset name (``"followmyhold"``, see :func:`available_presets`), a
            path to a YAML file (``.yaml`` / ``.yml``; may derive from a preset with
            ``base:``), an already-parsed mapping, or a :class:`PhaseSchedule` (returned
            as is).

    Returns:
        The validated :class:`PhaseSchedule`.

    Raises:
        ScheduleError: (a ``ValueError``) naming the file and the YAML path of the problem,
            with the nearest valid name for misspellings
            (``phases[2].weights.silhuette: unknown loss; did you mean silhouette?``).
    """
    if isinstance(name_or_path, PhaseSchedule):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        if "base" in name_or_path or "drop_losses" in name_or_path:
            text = yaml.safe_dump(dict(name_or_path))
            raw = _load_raw(text, "<mapping>", Path.cwd(), ("<mapping>",), "schedule")
            return _parse_schedule(raw, "<mapping>")
        return _parse_schedule(name_or_path, None)
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"load_schedule: expected a preset name, a path, a mapping or a "
                        f"PhaseSchedule, got {type(name_or_path).__name__}")
    ref = str(name_or_path)
    if isinstance(name_or_path, Path) or Path(ref).expanduser().is_file():
        p = Path(ref).expanduser()
        if not p.is_file():
            raise ScheduleError(f"no such schedule file: {p}")
        text, source, directory, stem = p.read_text(), str(p), p.parent, p.stem
    else:
        text, source, directory, stem = _locate(ref, None, None, "")
    raw = _load_raw(text, source, directory, (source,), stem)
    return _parse_schedule(raw, source)
