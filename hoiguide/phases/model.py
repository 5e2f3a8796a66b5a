"""The schedule's data model: frozen dataclasses (:class:`PhaseSchedule`, :class:`Phase`,
:class:`LossWeight`, ...), how phases are assigned to flow steps (:meth:`PhaseSchedule.resolve`)
and the torch optimiser a phase builds. The YAML format is described in :mod:`hoiguide.phases`;
this module also builds the model from data (:func:`parse_schedule`: validation with the YAML
path in every message); step assignment is :mod:`~hoiguide.phases.steps`, files and presets
:mod:`~hoiguide.phases.load`."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
import yaml

from hoiguide.io import did_you_mean
from hoiguide.losses import LOSSES
from hoiguide.phases.errors import ScheduleError
from hoiguide.phases.steps import FLOOR_TOL, assign_steps

__all__ = ["ScheduleError", "PhaseSchedule", "Phase", "OptimizerSpec", "LossWeight", "Term",
           "Window", "GuidanceDecay", "ClipSpec", "CLIP_CONDITIONS", "CLIP_INITIAL_POSES",
           "ResolvedPhase", "ResolvedSchedule", "GROUPS", "SIMILARITY_GROUPS", "UPDATES",
           "AFTER_SAMPLING", "parse_schedule"]

log = logging.getLogger(__name__)

#: every parameter group a phase may optimise
GROUPS = ("velocity", "latent", "hand.scale", "hand.rotation", "hand.translation",
          "object.scale", "object.rotation", "object.translation")
#: the groups that are similarity parameters (allowed after sampling)
SIMILARITY_GROUPS = GROUPS[2:]
AFTER_SAMPLING = "after_sampling"

#: how a guided flow step uses the optimised velocity / latent (see the module docstring)
UPDATES = ("euler", "renoise")



#: how the clip sampler picks the generator's condition image across flow steps
CLIP_CONDITIONS = ("reference", "cycle")
#: how the clip sampler starts the per-frame object poses
CLIP_INITIAL_POSES = ("robust", "icp")


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
class ClipSpec:
    """The ``clip:`` block of a schedule: how multi-frame (video) guidance uses the frames.

    Read only by :class:`hoiguide.guidance.clip.ClipGuidedSampler`; a single-image run
    ignores it. Weights multiply terms in metres^2 (see :mod:`hoiguide.losses.temporal`) and
    apply in every phase, next to the phase's own (per-frame image) terms.

    Attributes:
        frames_per_iteration: observed frames whose image terms each inner iteration
            evaluates (rotated so every observed frame is visited; their totals averaged).
        condition: ``"reference"`` (the reference frame's object image conditions every
            step) or ``"cycle"`` (flow step ``i`` uses observed frame ``i mod n``, starting
            at the reference frame).
        smoothness_weight: weight of :func:`~hoiguide.losses.temporal.trajectory_smoothness`
            of the object's box corners placed per frame (the object poses).
        hand_smoothness_weight: the same on the hand vertices of the observed frames.
        contact_weight: weight of :func:`~hoiguide.losses.temporal.contact_consistency`.
        contact_distance: metres; hand vertices of the reference frame within it of the
            object surface (at the start of each phase step) are the contact set.
        initial_poses: ``"robust"`` (a frame whose pose disagrees with both its neighbours
            and the hand's motion takes the grasp-propagated pose) or ``"icp"`` (each
            frame's ``gen_to_image`` as given).
        outlier_rotation_deg, outlier_translation: the disagreement (degrees; metres at
            the object's centre) beyond which ``robust`` distrusts a frame's pose.
    """

    frames_per_iteration: int = 2
    condition: str = "reference"
    smoothness_weight: float = 1.0e4
    hand_smoothness_weight: float = 1.0e3
    contact_weight: float = 1.0e4
    contact_distance: float = 0.005
    initial_poses: str = "robust"
    outlier_rotation_deg: float = 20.0
    outlier_translation: float = 0.02

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return " ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}"
                        for k, v in self.to_dict().items())


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
        return (math.floor(self.start * num_steps + FLOOR_TOL),
                math.floor(self.end * num_steps + FLOOR_TOL))


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
        return math.floor(float(self.start) * num_steps + FLOOR_TOL)

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
        keep_best: end the phase's inner loop at the iterate with the lowest total loss
            (parameters as they were when it was evaluated) instead of the last one (the
            reference keeps the last; Adam's first steps move every parameter by about its
            learning rate whatever the gradient, so the last iterate can be worse than the
            start).
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
    keep_best: bool = False

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
                       f"{did_you_mean(label, labels)} (terms: {', '.join(labels)})")

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
        if self.keep_best:
            d["keep_best"] = True
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
        self.clip = schedule.clip
        covered = {s for p in self for s in p.steps}
        self.unguided_steps = tuple(i for i in range(num_steps) if i not in covered)

    def by_name(self, name: str) -> ResolvedPhase:
        for p in self:
            if p.name == name:
                return p
        raise KeyError(f"no phase {name!r}{did_you_mean(name, [p.name for p in self])}")

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
        if self.clip is not None:
            lines.append(f"clip: {self.clip}")
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
        clip: the multi-frame settings (:class:`ClipSpec`, YAML ``clip:``) or ``None``
            (clip runs then use :class:`ClipSpec`'s defaults; single-image runs ignore it).
    """

    name: str
    phases: tuple[Phase, ...]
    num_steps: int = 20
    guidance_scale: float = 5.0
    guidance_decay: Optional[GuidanceDecay] = None
    on_nonfinite: str = "raise"
    description: str = ""
    source: Optional[str] = field(default=None, compare=False)
    clip: Optional[ClipSpec] = None

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
        raise KeyError(f"schedule {self.name!r} has no phase {name!r}{did_you_mean(name, names)} "
                       f"(phases: {', '.join(names)})")

    def _n(self, num_steps: Optional[int]) -> int:
        n = self.num_steps if num_steps is None else num_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"schedule {self.name!r}: expected num_steps a positive integer, "
                             f"got {n!r}")
        return n

    def _step_map(self, num_steps: int) -> dict[int, tuple[Phase, int, int]]:
        """step -> (phase, position in the phase, number of steps of the phase)."""
        return assign_steps(self, num_steps)[0]

    def steps_of(self, name: str, num_steps: Optional[int] = None) -> tuple[int, ...]:
        """The flow steps a phase covers (empty for after-sampling phases)."""
        n = self._n(num_steps)
        return assign_steps(self, n)[1][self.phase(name).name]

    # ---- queries used by the engine --------------------------------------------------
    def resolve(self, num_steps: Optional[int] = None) -> ResolvedSchedule:
        """Per phase: steps covered, inner iterations, optimiser, learning rates and the
        weight of every term at every covered step. ``str()`` of the result is a table.

        Raises:
            ScheduleError: explicit ``steps`` out of range or overlapping another phase at
                this ``num_steps`` (the message names the YAML path).
        """
        n = self._n(num_steps)
        per_phase = assign_steps(self, n)[1]
        out = []
        def order(p: Phase) -> tuple:
            st = per_phase[p.name]
            frac = p.window.start if p.window is not None else (st[0] / n if st else 1.0)
            return (st[0] if st else math.floor(frac * n + FLOOR_TOL), frac)

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
        d = {
            "name": self.name,
            "description": self.description,
            "num_steps": self.num_steps,
            "guidance_scale": self.guidance_scale,
            "guidance_decay": None if self.guidance_decay is None else
            self.guidance_decay.to_dict(),
            "on_nonfinite": self.on_nonfinite,
            "phases": [p.to_dict() for p in self.phases],
        }
        if self.clip is not None:
            d["clip"] = self.clip.to_dict()
        return d

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
        return parse_schedule(data, source)

    def replace(self, **changes: Any) -> "PhaseSchedule":
        """A validated copy with some fields changed (e.g. ``num_steps=8``)."""
        s = dataclasses.replace(self, **changes)
        return parse_schedule(s.to_dict(), self.source)

    def replace_phase(self, name: str, **changes: Any) -> "PhaseSchedule":
        """A validated copy with one phase's fields changed
        (``replace_phase("joint", iterations=10)``)."""
        target = self.phase(name)
        phases = tuple(dataclasses.replace(p, **changes) if p is target else p
                       for p in self.phases)
        return self.replace(phases=phases)

    def __str__(self) -> str:
        return self.resolve().table()


# ---- parsing and validation (how a schedule is built from data) ----------------


_POST_GROUPS = ("latent",) + SIMILARITY_GROUPS
_OPTIMIZERS = ("adam", "adamw")
_NONFINITE = ("raise", "skip", "stop")
_DECAY_KINDS = ("linear",)
TOP_KEYS = ("name", "description", "base", "num_steps", "guidance_scale", "guidance_decay",
             "on_nonfinite", "phases", "drop_losses", "clip")
_CLIP_KEYS = tuple(f.name for f in dataclasses.fields(ClipSpec))
_PHASE_KEYS = ("name", "description", "window", "steps", "iterations", "optimizer",
               "optimize", "weights", "update", "repeats", "keep_best")
_OPT_KEYS = ("type", "eps", "betas", "weight_decay")
_DECAY_KEYS = ("start", "start_step", "kind")
_WINDOW_KEYS = ("start", "end")
_WEIGHT_RESERVED = ("weight", "by_step")
_BY_STEP_KEYS = ("from", "weight")




def check_keys(d: Any, allowed: Sequence[str], path: str, source: Optional[str],
                what: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ScheduleError(f"expected a mapping ({what}), got {type(d).__name__}: {d!r}",
                            path, source)
    for k in d:
        if k not in allowed:
            raise ScheduleError(f"unknown key{did_you_mean(k, allowed)} (allowed: "
                                f"{', '.join(allowed)})", join_path(path, k), source)
    return d


def join_path(path: str, key: Any) -> str:
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
                            f"{did_you_mean(v, choices)}", path, source)
    return v


def _parse_optimizer(d: Any, path: str, source: Optional[str]) -> OptimizerSpec:
    if d is None:
        return OptimizerSpec()
    d = check_keys(d, _OPT_KEYS, path, source, "optimizer settings")
    kind = _string(d.get("type", "adam"), join_path(path, "type"), source, _OPTIMIZERS)
    eps = _number(d.get("eps", 1e-8), join_path(path, "eps"), source, positive=True, what="eps")
    wd_default = 0.01 if kind == "adamw" else 0.0
    wd = _number(d.get("weight_decay", wd_default), join_path(path, "weight_decay"), source,
                 nonneg=True, what="weight_decay")
    betas = d.get("betas", (0.9, 0.999))
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ScheduleError(f"expected two numbers [beta1, beta2], got {betas!r}",
                            join_path(path, "betas"), source)
    betas = tuple(_number(b, f"{path}.betas[{i}]", source, lo=0.0, what="a beta")
                  for i, b in enumerate(betas))
    for i, b in enumerate(betas):
        if not b < 1:
            raise ScheduleError(f"expected a beta < 1, got {b!r}", f"{path}.betas[{i}]",
                                source)
    return OptimizerSpec(kind, eps, betas, wd)


def _parse_weights(d: Any, path: str, source: Optional[str], phase: str
                   ) -> tuple[LossWeight, ...]:

    if not isinstance(d, Mapping) or not d:
        raise ScheduleError(f"expected a non-empty mapping of loss name -> weight, got {d!r}",
                            path, source)
    out = []
    for label, value in d.items():
        lpath = join_path(path, label)
        if not isinstance(label, str):
            raise ScheduleError(f"expected a loss name, got {label!r}", lpath, source)
        loss, at, suffix = label.partition("@")
        if loss not in LOSSES:
            raise ScheduleError(f"unknown loss{did_you_mean(loss, LOSSES)} (phase {phase!r}; "
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
            weight = _number(value["weight"], join_path(lpath, "weight"), source, nonneg=True,
                             what="a weight")
            raw_opts = {k: v for k, v in value.items() if k not in _WEIGHT_RESERVED}
            if value.get("by_step") is not None:
                by_step = _parse_by_step(value["by_step"], join_path(lpath, "by_step"), source)
        else:
            weight = _number(value, lpath, source, nonneg=True, what="a weight")
            raw_opts = {}
        options = {}
        for k, v in raw_opts.items():
            if k not in spec.options:
                allowed = list(spec.options) + list(_WEIGHT_RESERVED)
                raise ScheduleError(f"unknown option of loss {loss!r}{did_you_mean(k, allowed)} "
                                    f"(allowed: {', '.join(allowed)})", join_path(lpath, k),
                                    source)
            try:
                options[k] = spec.options[k].validate(v)
            except ValueError as e:
                raise ScheduleError(str(e), join_path(lpath, k), source) from None
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
        e = check_keys(e, _BY_STEP_KEYS, epath, source, "{from: index, weight: w}")
        for key in _BY_STEP_KEYS:
            if key not in e:
                raise ScheduleError(f"missing {key!r}", epath, source)
        out.append((_number(e["from"], join_path(epath, "from"), source, integer=True,
                            what="a step index into the phase"),
                    _number(e["weight"], join_path(epath, "weight"), source, nonneg=True,
                            what="a weight")))
    return tuple(out)


def _parse_clip(d: Any, source: Optional[str]) -> ClipSpec:
    d = check_keys(d, _CLIP_KEYS, "clip", source, "clip settings")
    dflt = ClipSpec()
    p = lambda k: join_path("clip", k)  # noqa: E731
    fpi = _number(d.get("frames_per_iteration", dflt.frames_per_iteration),
                  p("frames_per_iteration"), source, integer=True, positive=True,
                  what="frames_per_iteration")
    cond = _string(d.get("condition", dflt.condition), p("condition"), source, CLIP_CONDITIONS)
    init = _string(d.get("initial_poses", dflt.initial_poses), p("initial_poses"), source,
                   CLIP_INITIAL_POSES)
    num = {k: _number(d.get(k, getattr(dflt, k)), p(k), source, nonneg=True, what=k)
           for k in ("smoothness_weight", "hand_smoothness_weight", "contact_weight",
                     "contact_distance")}
    for k in ("outlier_rotation_deg", "outlier_translation"):
        num[k] = _number(d.get(k, getattr(dflt, k)), p(k), source, positive=True, what=k)
    return ClipSpec(frames_per_iteration=int(fpi), condition=cond, initial_poses=init, **num)


def _parse_phase(d: Any, path: str, source: Optional[str]) -> Phase:
    d = check_keys(d, _PHASE_KEYS, path, source, "a phase")
    for key in ("name", "iterations", "optimize", "weights"):
        if key not in d:
            raise ScheduleError(f"missing {key!r}", path, source)
    name = _string(d["name"], join_path(path, "name"), source)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ScheduleError(f"expected a phase name of letters, digits, '_' and '-', got "
                            f"{name!r}", join_path(path, "name"), source)
    desc = d.get("description") or ""
    if not isinstance(desc, str):
        raise ScheduleError("expected a string", join_path(path, "description"), source)
    window, steps, after = None, None, False
    w = d.get("window")
    s = d.get("steps")
    if w is not None and s is not None:
        raise ScheduleError("give either 'window' or 'steps', not both", path, source)
    if w is None and s is None:
        raise ScheduleError("missing 'window' ({start, end} fractions, or after_sampling) or "
                            "'steps' (explicit indices)", path, source)
    if isinstance(w, str):
        _string(w, join_path(path, "window"), source, (AFTER_SAMPLING,))
        after = True
    elif w is not None:
        wpath = join_path(path, "window")
        check_keys(w, _WINDOW_KEYS, wpath, source,
                    "{start, end} fractions of the trajectory, or after_sampling")
        for key in _WINDOW_KEYS:
            if key not in w:
                raise ScheduleError(f"missing {key!r}", wpath, source)
        a = _number(w["start"], join_path(wpath, "start"), source, lo=0.0, hi=1.0,
                    what="a fraction")
        b = _number(w["end"], join_path(wpath, "end"), source, lo=0.0, hi=1.0, what="a fraction")
        if not a < b:
            raise ScheduleError(f"expected start < end, got [{a}, {b}]", wpath, source)
        window = Window(a, b)
    if s is not None:
        spath = join_path(path, "steps")
        if not isinstance(s, list) or not s:
            raise ScheduleError(f"expected a non-empty list of step indices, got {s!r}", spath,
                                source)
        steps = tuple(_number(x, f"{spath}[{k}]", source, integer=True, what="a step index")
                      for k, x in enumerate(s))
        if len(set(steps)) != len(steps):
            raise ScheduleError(f"repeated step index in {list(steps)}", spath, source)
    iterations = _number(d["iterations"], join_path(path, "iterations"), source, integer=True,
                         positive=True, what="iterations")
    optimizer = _parse_optimizer(d.get("optimizer"), join_path(path, "optimizer"), source)
    opath = join_path(path, "optimize")
    opt = d["optimize"]
    if not isinstance(opt, Mapping) or not opt:
        raise ScheduleError(f"expected a non-empty mapping of parameter group -> learning "
                            f"rate, got {opt!r} (groups: {', '.join(GROUPS)})", opath, source)
    optimize = {}
    for g, lr in opt.items():
        if g not in GROUPS:
            raise ScheduleError(f"unknown parameter group{did_you_mean(g, GROUPS)} (groups: "
                                f"{', '.join(GROUPS)})", join_path(opath, g), source)
        if after and g not in _POST_GROUPS:
            raise ScheduleError(f"{g!r} cannot be optimised after sampling (there is no flow "
                                f"step left); allowed: {', '.join(_POST_GROUPS)}",
                                join_path(opath, g), source)
        optimize[g] = _number(lr, join_path(opath, g), source, positive=True,
                              what="a learning rate")
    weights = _parse_weights(d["weights"], join_path(path, "weights"), source, name)
    update = _string(d.get("update", "euler"), join_path(path, "update"), source, UPDATES)
    repeats = _number(d.get("repeats", 1), join_path(path, "repeats"), source, integer=True,
                      positive=True, what="repeats")
    if after and (update != "euler" or repeats != 1):
        raise ScheduleError("'update' and 'repeats' act on flow steps; an after_sampling "
                            "phase has none (leave them out)", path, source)
    keep_best = d.get("keep_best", False)
    if not isinstance(keep_best, bool):
        raise ScheduleError(f"expected true or false, got {keep_best!r}",
                            join_path(path, "keep_best"), source)
    return Phase(name, optimize, iterations, weights, optimizer, window, steps, after, desc,
                 update, int(repeats), keep_best)


def parse_schedule(data: Any, source: Optional[str]) -> PhaseSchedule:
    d = check_keys(data, TOP_KEYS, "", source, "a schedule")
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
        dd = check_keys(d["guidance_decay"], _DECAY_KEYS, "guidance_decay", source,
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
    clip = None if d.get("clip") is None else _parse_clip(d["clip"], source)
    sched = PhaseSchedule(name, phases, num_steps, gscale, decay, on_nonfinite, desc, source,
                          clip)
    sched.resolve(num_steps)  # explicit steps: range and overlap at the default num_steps
    return sched
