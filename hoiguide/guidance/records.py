"""What a guided run reports and is configured by: engine options, the per-iteration loss
history, the state callbacks see at each flow step, wall-clock timings, and the error a
non-finite loss raises."""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch

from hoiguide.io import coerce_options
from hoiguide.types import Mesh, Similarity

__all__ = ["GuidanceOptions", "History", "HistoryRecord", "StepState", "Timings",
           "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A loss term (or gradient, or the decoded field) was NaN/inf and the schedule says
    ``on_nonfinite: raise``. ``term``, ``phase``, ``step`` and ``iteration`` say where."""

    def __init__(self, message: str, term: str, phase: str, step: Optional[int],
                 iteration: int) -> None:
        super().__init__(message)
        self.term, self.phase, self.step, self.iteration = term, phase, step, iteration


@dataclass(frozen=True)
class GuidanceOptions:
    """Engine settings that are not part of a phase schedule.

    Attributes:
        num_steps: flow steps (default: the schedule's ``num_steps``).
        grid_resolution: grid points per axis of the SDF decoded in the inner loop (default:
            ``backbone.guidance_resolution`` if the backbone has one, else
            ``min(backbone.default_resolution, 65)``; the reference decodes at 65).
        final_resolution: grid points per axis of the final decode (default
            ``backbone.default_resolution``).
        render_size: ``(H, W)`` or an int for the renders and the targets they are compared
            with (default: the camera's size). Targets are resampled (masks by area, maps by
            nearest neighbour) and 2D keypoints scaled, so the ``keypoints_2d`` loss is in
            pixels of the render.
        edge_sigma: soft-silhouette edge width in pixels (see :func:`hoiguide.render.render`).
        max_iterations: cap on every phase's inner iterations (for demos and tests).
        remove_floaters: drop final-mesh components smaller than ``floater_fraction`` of the
            largest (by surface area): the largest piece always stays, and so does any piece
            at least that big (a handle decoded apart from its mug survives, specks do not).
            The counts before / after are in ``counters["components_raw"]`` /
            ``counters["components"]``.
        floater_fraction: see ``remove_floaters``.
        rotation_repr: ``"quaternion"`` (the reference's) or ``"6d"`` for the similarities.
        profile: synchronise the device around each timed part (accurate GPU timings).
        sparse: narrow-band decoding of the SDF grids (inner loop and final mesh): ``True``
            (default: narrow band from 65^3 up, see
            ``hoiguide.guidance.sampler.SPARSE_MIN_RESOLUTION``), ``False`` (dense, every
            grid point) or a dict of
            :func:`hoiguide.geometry.sparse_grid` options (``band``, ``last_band``,
            ``coarse_resolution``). The mesh is the dense grid's wherever the band finds the
            surface (see :mod:`hoiguide.geometry.sparse` for the one case it cannot: a part
            thinner than a coarse cell that changes sign at no coarse point); gradients flow
            through the points that carry the surface.
    """

    num_steps: Optional[int] = None
    grid_resolution: Optional[int] = None
    final_resolution: Optional[int] = None
    render_size: Optional[Union[int, tuple[int, int]]] = None
    edge_sigma: float = 1.0
    max_iterations: Optional[int] = None
    remove_floaters: bool = True
    floater_fraction: float = 0.1
    rotation_repr: str = "quaternion"
    profile: bool = False
    sparse: Union[bool, Mapping[str, Any]] = True

    def __post_init__(self) -> None:
        for name in ("num_steps", "grid_resolution", "final_resolution", "max_iterations"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or int(v) != v or int(v) < 1):
                raise ValueError(f"GuidanceOptions.{name}: expected a positive integer or None, "
                                 f"got {v!r}")
        if not isinstance(self.edge_sigma, (int, float)) or isinstance(self.edge_sigma, bool):
            raise ValueError(f"GuidanceOptions.edge_sigma: expected > 0 pixels, got "
                             f"{self.edge_sigma!r}")
        rs = self.render_size
        if rs is not None and not (
                (isinstance(rs, int) and not isinstance(rs, bool) and rs >= 8) or
                (isinstance(rs, (tuple, list)) and len(rs) == 2 and
                 all(isinstance(x, int) and not isinstance(x, bool) and x >= 8 for x in rs))):
            raise ValueError(f"GuidanceOptions.render_size: expected an integer >= 8 or "
                             f"(H, W), got {rs!r}")
        for name in ("grid_resolution", "final_resolution"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ValueError(f"GuidanceOptions.{name}: expected >= 2 grid points, got {v}")
        if not (self.edge_sigma > 0 and math.isfinite(self.edge_sigma)):
            raise ValueError(f"GuidanceOptions.edge_sigma: expected > 0 pixels, got "
                             f"{self.edge_sigma!r}")
        if not isinstance(self.sparse, (bool, Mapping)):
            raise ValueError(f"GuidanceOptions.sparse: expected true, false or a mapping of "
                             f"sparse_grid options, got {self.sparse!r}")
        if self.rotation_repr not in ("quaternion", "6d"):
            raise ValueError(f"GuidanceOptions.rotation_repr: expected 'quaternion' or '6d', "
                             f"got {self.rotation_repr!r}")

    @classmethod
    def coerce(cls, options: Union["GuidanceOptions", Mapping[str, Any], None]) -> "GuidanceOptions":
        """``None`` -> defaults; a mapping -> validated options (unknown keys named)."""
        return coerce_options(cls, options)


@dataclass(frozen=True)
class HistoryRecord:
    """One inner iteration.

    Attributes:
        step: flow step index (``None`` for an after-sampling phase).
        phase: phase name.
        iteration: inner iteration index within the step.
        values: UNWEIGHTED value of every evaluated term, by label.
        total: the weighted sum that was minimised (NaN when skipped before evaluation).
        skipped: ``None``, or why the iteration was skipped (``"empty_surface"``,
            ``"nonfinite:<term>"``).
    """

    step: Optional[int]
    phase: str
    iteration: int
    values: dict[str, float]
    total: float
    skipped: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "phase": self.phase, "iteration": self.iteration,
                "values": dict(self.values), "total": self.total, "skipped": self.skipped}


class History:
    """Every loss term of every inner iteration, in order (see :class:`HistoryRecord`)."""

    def __init__(self, records: Iterable[HistoryRecord] = ()) -> None:
        self.records: list[HistoryRecord] = list(records)

    def add(self, record: HistoryRecord) -> None:
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, k: int) -> HistoryRecord:
        return self.records[k]

    @property
    def phases(self) -> list[str]:
        """Phase names in the order they first ran."""
        return list(dict.fromkeys(r.phase for r in self.records))

    def terms(self, phase: Optional[str] = None) -> list[str]:
        """Term labels seen (in one phase or all)."""
        out: dict[str, None] = {}
        for r in self.select(phase):
            out.update(dict.fromkeys(r.values))
        return list(out)

    def select(self, phase: Optional[str] = None, step: Optional[int] = None,
               include_skipped: bool = True) -> list[HistoryRecord]:
        return [r for r in self.records if (phase is None or r.phase == phase)
                and (step is None or r.step == step) and (include_skipped or r.skipped is None)]

    def series(self, term: str = "total", phase: Optional[str] = None) -> list[float]:
        """Values of one term (or ``"total"``) over the evaluated iterations, in order."""
        out = []
        for r in self.select(phase, include_skipped=False):
            if term == "total":
                out.append(r.total)
            elif term in r.values:
                out.append(r.values[term])
        return out

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]

    def __repr__(self) -> str:
        return f"History({len(self.records)} iterations, phases={self.phases})"


@dataclass(frozen=True)
class StepState:
    """What callbacks see at a flow step, just before its Euler step (all tensors detached).

    Attributes:
        step, num_steps: flow step index and count.
        sigma, sigma_next: flow times of this step.
        guidance_scale: the CFG weight used.
        phase: the active phase name (``None``: plain sampling step).
        latent: ``(1, *latent_shape)`` sample ``x_sigma`` (after any ``latent`` update).
        velocity: the velocity the Euler step will use (optimised if the phase did so).
        clean: the clean-sample estimate from ``latent`` and ``velocity``.
        hand_similarity, object_similarity: the current similarities (image frame; the
            object's acts after ``gen_to_image``).
        hand_mesh, object_mesh: the last meshes of this step in the image frame (the object
            ``None`` on steps that decoded nothing).
        losses: unweighted term values of the last evaluated inner iteration.
        history: the run's history so far.
    """

    step: int
    num_steps: int
    sigma: float
    sigma_next: float
    guidance_scale: float
    phase: Optional[str]
    latent: torch.Tensor
    velocity: torch.Tensor
    clean: torch.Tensor
    hand_similarity: Similarity
    object_similarity: Similarity
    hand_mesh: Mesh
    object_mesh: Optional[Mesh]
    losses: dict[str, float]
    history: History


class Timings:
    """Wall-clock seconds per phase and per part of the inner iteration."""

    def __init__(self, sync: Optional[Callable[[], None]] = None) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self.parts: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.total: float = 0.0
        self._sync = sync

    @contextlib.contextmanager
    def part(self, name: str):
        if self._sync is not None:
            self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.parts[name] += time.perf_counter() - t0
            self.counts[name] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "phases": dict(self.phases), "parts": dict(self.parts),
                "part_counts": dict(self.counts)}
