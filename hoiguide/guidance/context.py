"""The state of one guided run that the sampling loop and the inner optimisation share.

:class:`RunContext` holds what stays fixed during a run (backbone, schedule, options, targets
at the render size, the observed hand) and what the phases optimise (the hand and object
similarities), and provides the few operations both loops need: decode a clean latent to a
mesh, place the object / hand in the image-aligned frame, drop terms whose observations are
missing, report a non-finite value, and report progress.

Frames: the backbone decodes in its generator frame; the object mesh is placed in the
image-aligned frame (OpenCV camera frame, metres) by ``object_similarity ∘
observations.gen_to_image``. The object similarity acts about ``c_o = gen_to_image(centre of
backbone.bounds)``; the hand similarity about the centre of the bounding box of
``observations.hand_mesh``, on the ORIGINAL hand mesh and keypoints
(``x' = s R (x - c) + c + t``; both start at the identity and persist across steps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from hoiguide.geometry import extract_isosurface
from hoiguide.guidance.records import (
    GuidanceOptions,
    History,
    HistoryRecord,
    NonFiniteLossError,
    Timings,
)
from hoiguide.guidance.sampler import decode_grid
from hoiguide.guidance.targets import RenderTargets, prepare_targets
from hoiguide.losses import LOSSES, LossContext, evaluate_terms
from hoiguide.phases import PhaseSchedule
from hoiguide.render import render
from hoiguide.types import Mesh, Observations, SimilarityParams

__all__ = ["RunContext", "StopGuidance", "ProgressBars"]

log = logging.getLogger(__name__)


class StopGuidance(Exception):
    """Raised inside a run when a non-finite value stops guidance (``on_nonfinite: stop``);
    the loop then finishes sampling unguided."""


class _Present:
    """Stands for engine-provided context fields when checking which terms can run."""

    amodal = True


class ProgressBars:
    """tqdm bars (when tqdm is installed and ``enabled``): one over the flow steps and, below
    it, one over the inner iterations of the current phase."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._steps: Any = None
        self._inner: Any = None

    def _tqdm(self) -> Any:
        if not self.enabled:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm

    def start(self, total: int, name: str) -> None:
        tqdm = self._tqdm()
        self._steps = None if tqdm is None else tqdm(total=total, desc=f"hoiguide[{name}]",
                                                     leave=False)

    def step_done(self) -> None:
        if self._steps is not None:
            self._steps.update(1)

    def phase(self, name: str) -> None:
        if self._steps is not None:
            self._steps.set_postfix_str(name)

    def inner_start(self, name: str, step: Optional[int], total: int) -> None:
        tqdm = self._tqdm()
        if tqdm is None or total < 2:
            self._inner = None
            return
        where = "after sampling" if step is None else f"step {step}"
        self._inner = tqdm(total=total, desc=f"  {name} ({where})", leave=False, position=1,
                           unit="it")

    def inner_update(self, it: int, loss: float) -> None:
        if self._inner is not None:
            self._inner.update(1)
            if it % 5 == 0 and loss == loss:
                self._inner.set_postfix_str(f"loss {loss:.4g}", refresh=False)

    def inner_end(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def close(self) -> None:
        self.inner_end()
        if self._steps is not None:
            self._steps.close()
            self._steps = None


@dataclass
class RunContext:
    """Everything one guided run reads and updates (see the module docstring for frames).

    Build it with :meth:`create`; the sampler holds no per-run state itself."""

    backbone: Any
    schedule: PhaseSchedule
    options: GuidanceOptions
    convention: Any
    grid_resolution: int
    dtype: torch.dtype
    device: torch.device
    observations: Observations
    targets: RenderTargets
    hand_vertices: torch.Tensor
    hand_faces: torch.Tensor
    hand_keypoints: Optional[torch.Tensor]
    hand: SimilarityParams
    gen_to_image: Any
    object: SimilarityParams
    seed: int
    progress: ProgressBars
    history: History = field(default_factory=History)
    timings: Timings = field(default_factory=Timings)
    counters: dict[str, int] = field(default_factory=lambda: {
        "iterations": 0, "skipped_empty_surface": 0, "skipped_nonfinite": 0,
        "guidance_stopped": 0})
    status: str = "ok"
    stopped: bool = False
    _warned: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, backbone: Any, schedule: PhaseSchedule, options: GuidanceOptions,
               convention: Any, grid_resolution: int, dtype: torch.dtype,
               obs: Observations, seed: int, progress: bool) -> "RunContext":
        """The context of a run on ``obs``: targets at ``options.render_size``, the hand at
        its observed pose, both similarities at the identity (not yet optimised)."""
        device = torch.device(backbone.device)
        sync = torch.cuda.synchronize if options.profile and device.type == "cuda" else None
        hand_v = obs.hand_mesh.vertices.detach().to(device, dtype)
        hc = 0.5 * (hand_v.min(0).values + hand_v.max(0).values)
        hand = SimilarityParams(hc, rotation_repr=options.rotation_repr, dtype=dtype,
                                device=device)
        g2i = obs.gen_to_image.detach().to(dtype, device)
        lo, hi = (torch.tensor(b, dtype=dtype, device=device) for b in backbone.bounds)
        obj = SimilarityParams(g2i.apply(0.5 * (lo + hi)), rotation_repr=options.rotation_repr,
                               dtype=dtype, device=device)
        for p in list(hand.parameters()) + list(obj.parameters()):
            p.requires_grad_(False)
        return cls(
            backbone=backbone, schedule=schedule, options=options, convention=convention,
            grid_resolution=grid_resolution, dtype=dtype, device=device, observations=obs,
            targets=prepare_targets(obs, options.render_size, dtype, device,
                                    options.edge_sigma),
            hand_vertices=hand_v, hand_faces=obs.hand_mesh.faces.to(device),
            hand_keypoints=None if obs.hand_keypoints_3d is None
            else obs.hand_keypoints_3d.to(device, dtype),
            hand=hand, gen_to_image=g2i, object=obj, seed=seed,
            progress=ProgressBars(progress), timings=Timings(sync))

    # ---- placing meshes ------------------------------------------------------------------
    def hand_mesh(self) -> Mesh:
        """The hand in the image frame after its current similarity."""
        return Mesh(self.hand(self.hand_vertices), self.hand_faces)

    def hand_keypoints_placed(self) -> Optional[torch.Tensor]:
        """The observed 3D hand keypoints after the hand similarity (or ``None``)."""
        return None if self.hand_keypoints is None else self.hand(self.hand_keypoints)

    def place_object(self, mesh_gen: Mesh) -> Mesh:
        """A generator-frame mesh in the image frame: ``object ∘ gen_to_image``."""
        v = self.gen_to_image.apply(mesh_gen.vertices.to(self.dtype))
        return Mesh(self.object(v), mesh_gen.faces)

    def decode(self, clean: torch.Tensor, phase: str, step: Optional[int],
               it: int) -> Optional[Mesh]:
        """Clean latent -> generator-frame mesh at the inner-loop grid (``None``: the field
        was non-finite and that was handled per ``schedule.on_nonfinite``)."""
        with self.timings.part("decode"):
            grid = decode_grid(self.backbone, clean.to(self.backbone.dtype),
                               self.grid_resolution, sparse=self.options.sparse)[0]
        if not bool(torch.isfinite(grid.detach()).all()):
            self.nonfinite("decoded SDF", phase, step, it)
            return None
        with self.timings.part("isosurface"):
            return extract_isosurface(grid.to(self.dtype), self.backbone.bounds)

    # ---- what the inner loop optimises and evaluates (hooks a clip context overrides) -------
    def similarity_groups(self) -> dict[str, Any]:
        """The similarity parameter groups by schedule name (``"hand.scale"``, ...,
        ``"object.translation"``): one tensor per group here; a multi-frame context
        (:mod:`hoiguide.guidance.clip`) gives a list of tensors per group."""
        out: dict[str, Any] = {}
        for who, sim in (("hand", self.hand), ("object", self.object)):
            for gname, p in sim.param_groups().items():
                out[f"{who}.{gname}"] = p
        return out

    def evaluate(self, terms: Sequence[Any], mesh_gen: Mesh, phase: str, step: Optional[int],
                 it: int, need_render: bool, need_amodal: bool
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Mesh]:
        """One inner iteration's losses: the object (``mesh_gen`` placed) and the hand
        rendered together when a term needs a render, then the weighted ``terms``. Returns
        ``(total, values by label, the placed object mesh)``."""
        obj = self.place_object(mesh_gen)
        hand = self.hand_mesh()
        rend = None
        if need_render:
            with self.timings.part("render"):
                rend = render([hand, obj], self.targets.camera, backend="auto",
                              edge_sigma=self.options.edge_sigma, amodal=need_amodal)
        loss_ctx = self.loss_context(rend, hand, None if obj.is_empty else obj,
                                     keypoints=self.hand_keypoints_placed(), phase=phase,
                                     step=step)
        with self.timings.part("losses"):
            total, values = evaluate_terms(terms, loss_ctx)
        return total, values, obj

    def keep_best_score(self, total: float) -> Optional[float]:
        """What ``keep_best`` compares for an evaluated inner iteration with this ``total``
        (here the total itself; ``None``: this iterate cannot be kept)."""
        return total

    # ---- losses --------------------------------------------------------------------------
    def loss_context(self, render: Any, hand: Any, obj: Any, *, keypoints: Any,
                     phase: Optional[str] = None, step: Optional[int] = None,
                     translations: Any = None) -> LossContext:
        """The loss inputs: this render and these meshes against the targets
        (``translations``: ``(hand, object)``, default the similarities' translations)."""
        t = self.targets
        ht, ot = translations or (self.hand.translation, self.object.translation)
        return LossContext(
            render=render, hand_mesh=hand, object_mesh=obj, camera=t.camera,
            target_normals=t.target_normals, target_disparity=t.target_disparity,
            target_valid=t.target_valid, mask_hand=t.mask_hand, mask_object=t.mask_object,
            mask_object_amodal=t.mask_object_amodal, mask_union=t.mask_union,
            hand_keypoints_3d=keypoints, keypoints_2d=t.keypoints_2d,
            keypoint_confidence=t.keypoint_confidence, soft_masks=t.soft_masks,
            hand_translation=ht,
            object_translation=ot, phase=phase, step=step)

    def active_terms(self, phase: Any, terms: Sequence[Any]) -> list[Any]:
        """``terms`` without those of weight 0 and those whose observation fields are
        missing (logged once per phase and term)."""
        probe = self.loss_context(_Present(), _Present(), _Present(),
                                  keypoints=self.hand_keypoints,
                                  translations=(_Present(), _Present()))
        out = []
        for term in terms:
            if term.weight == 0:
                continue
            missing = LOSSES[term.loss].missing(probe, term.options)
            if missing:
                key = f"{phase.name}/{term.label}"
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("phase %r: term %r disabled: the observations lack %s",
                                phase.name, term.label, ", ".join(missing))
                continue
            out.append(term)
        return out

    # ---- failures ------------------------------------------------------------------------
    def nonfinite(self, term: str, phase: str, step: Optional[int], it: int,
                  value: Any = None) -> None:
        """Handle a non-finite ``term`` per ``schedule.on_nonfinite``: raise
        :class:`NonFiniteLossError`, count a skipped iteration, or stop guidance
        (:class:`StopGuidance`)."""
        where = f"phase {phase!r}, " + ("after sampling" if step is None else f"step {step}") \
            + f", inner iteration {it}"
        msg = f"non-finite {term}{'' if value is None else ' (' + str(value) + ')'} in {where}"
        policy = self.schedule.on_nonfinite
        if policy == "raise":
            raise NonFiniteLossError(msg + " (schedule on_nonfinite: raise)", term, phase, step,
                                     it)
        if policy == "skip":
            self.counters["skipped_nonfinite"] += 1
            log.warning("%s: inner iteration skipped (on_nonfinite: skip)", msg)
            return
        self.counters["guidance_stopped"] += 1
        self.status = f"guidance stopped: {msg}"
        log.warning("%s: guidance stopped, sampling finishes unguided (on_nonfinite: stop)",
                    msg)
        raise StopGuidance()

    def skipped(self, step: Optional[int], phase: str, it: int, why: str,
                values: Optional[dict[str, float]] = None) -> None:
        """Record an inner iteration that was skipped (``why``: ``"empty_surface"`` or
        ``"nonfinite:<term>"``)."""
        self.history.add(HistoryRecord(step, phase, it, dict(values or {}), float("nan"), why))
