"""The guided rectified-flow sampler (FollowMyHold style): optimisation inside the sampling loop.

For each flow step ``i`` of ``backbone.sigmas(N)``:

1. ``v = backbone.velocity(x, sigma_i, condition, w_i)`` with the schedule's CFG weight
   ``w_i = schedule.guidance_scale_at(i, N)`` (no gradient through the model);
2. if a phase of the schedule covers step ``i``: ``K`` inner iterations, each
   ``x_hat = predict_clean(x, v, sigma_i)`` -> ``backbone.decode_sdf`` on a dense grid over
   ``backbone.bounds`` -> differentiable iso-surface -> object placed in the image frame ->
   ``render([hand, object])`` -> the phase's weighted losses -> backward -> optimiser step on
   the phase's parameter groups (``velocity``, ``latent``, ``hand.*``, ``object.*``), with a
   fresh optimiser per step and the phase's per-group learning rates;
3. callbacks receive a :class:`StepState`;
4. the phase's update rule moves the sample to ``sigma_{i+1}``:

   * ``update: euler`` (the reference): ``x <- x + (sigma_{i+1} - sigma_i) v`` with the
     optimised ``v`` (and the optimised ``x`` when the phase optimises ``latent``). The clean
     estimate of the next step moves by only ``(sigma_{i+1} - sigma_i) / (1 - sigma_i)``
     (data_at_1) of the optimised change.
   * ``update: renoise``: keep the optimised clean estimate ``x_hat'`` and re-noise it with
     the noise estimate ``eps_hat`` of the model's own velocity: ``x <- a(sigma_{i+1}) x_hat'
     + b(sigma_{i+1}) eps_hat`` with ``a = sigma, b = 1 - sigma`` (data_at_1) or ``a = 1 -
     sigma, b = sigma`` (data_at_0) (:func:`hoiguide.guidance.flow.add_noise`), i.e. the
     whole correction is carried to the next step.

   ``repeats: r`` (time travel) runs inner loop + update ``r`` times per step: between
   repeats the sample goes back from ``sigma_{i+1}`` to ``sigma_i`` with fresh seeded noise
   (:func:`hoiguide.guidance.flow.noise_back`) and the model is called again.

Phases with ``window: after_sampling`` run once after the last step on the final sample
(its clean estimate is the sample itself); that is how the ``no_guidance`` ablation is written.

Frames (see :mod:`hoiguide.types`): the backbone decodes in its generator frame; the object
mesh is placed in the image-aligned frame (OpenCV camera frame, metres) by
``object_similarity ∘ observations.gen_to_image``. The object similarity acts about
``c_o = gen_to_image(centre of backbone.bounds)``; the hand similarity about the centre of the
bounding box of ``observations.hand_mesh``, on the ORIGINAL hand mesh and keypoints
(``x' = s R (x - c) + c + t``; both start at the identity and persist across steps).

Failure handling: a non-finite loss term (or gradient, or decoded field) is reported with the
term, phase, step and inner iteration and then, per ``schedule.on_nonfinite``, raises
:class:`NonFiniteLossError`, skips the inner iteration (counted) or stops guidance (sampling
finishes unguided; counted; the result's status says so). An empty iso-surface skips the inner
iteration (counted) when the phase needs the object; otherwise the object is simply absent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from hoiguide.backbones.base import check_backbone
from hoiguide.guidance.flow import (TimeConvention, add_noise, euler_step, noise_back,
                                    predict_clean, predict_noise)
from hoiguide.guidance.sampler import decode_grid, initial_noise
from hoiguide.types import Camera, Mesh, Observations, Similarity, SimilarityParams

__all__ = ["GuidanceOptions", "GuidedSampler", "StepState", "History", "HistoryRecord",
           "GuidanceResult", "NonFiniteLossError", "Timings"]

log = logging.getLogger(__name__)

_PARTS = ("decode", "isosurface", "render", "losses", "backward", "step")


class NonFiniteLossError(FloatingPointError):
    """A loss term (or gradient, or the decoded field) was NaN/inf and the schedule says
    ``on_nonfinite: raise``. ``term``, ``phase``, ``step`` and ``iteration`` say where."""

    def __init__(self, message: str, term: str, phase: str, step: Optional[int],
                 iteration: int) -> None:
        super().__init__(message)
        self.term, self.phase, self.step, self.iteration = term, phase, step, iteration


# --------------------------------------------------------------------------------------
# options, state, history
# --------------------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        for name in ("num_steps", "grid_resolution", "final_resolution", "max_iterations"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or int(v) < 1):
                raise ValueError(f"GuidanceOptions.{name}: expected a positive integer or None, "
                                 f"got {v!r}")
        for name in ("grid_resolution", "final_resolution"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ValueError(f"GuidanceOptions.{name}: expected >= 2 grid points, got {v}")
        if not (self.edge_sigma > 0 and math.isfinite(self.edge_sigma)):
            raise ValueError(f"GuidanceOptions.edge_sigma: expected > 0 pixels, got "
                             f"{self.edge_sigma!r}")
        if self.rotation_repr not in ("quaternion", "6d"):
            raise ValueError(f"GuidanceOptions.rotation_repr: expected 'quaternion' or '6d', "
                             f"got {self.rotation_repr!r}")

    @classmethod
    def coerce(cls, options: Union["GuidanceOptions", Mapping[str, Any], None]
               ) -> "GuidanceOptions":
        """``None`` -> defaults; a mapping -> validated options (unknown keys named)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            bad = [k for k in options if k not in names]
            if bad:
                import difflib
                hint = difflib.get_close_matches(bad[0], sorted(names), n=1)
                raise ValueError(f"GuidanceOptions: unknown option {bad[0]!r}"
                                 f"{'; did you mean ' + hint[0] + '?' if hint else ''} "
                                 f"(options: {', '.join(sorted(names))})")
            return cls(**dict(options))
        raise TypeError(f"options: expected GuidanceOptions, a mapping or None, got "
                        f"{type(options).__name__}")


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


@dataclass(frozen=True)
class GuidanceResult:
    """Raw output of :meth:`GuidedSampler.run` (``hoiguide.guided_reconstruct`` wraps it in a
    :class:`hoiguide.Reconstruction`)."""

    latent: torch.Tensor
    object_mesh: Mesh
    object_mesh_generator: Mesh
    hand_mesh: Mesh
    hand_keypoints_3d: Optional[torch.Tensor]
    object_similarity: Similarity
    hand_similarity: Similarity
    gen_to_image: Similarity
    history: History
    timings: dict[str, Any]
    counters: dict[str, int]
    status: str
    num_steps: int


# --------------------------------------------------------------------------------------
# observations at the render size
# --------------------------------------------------------------------------------------


@dataclass
class _Targets:
    camera: Camera
    mask_hand: torch.Tensor
    mask_object: torch.Tensor
    mask_union: torch.Tensor
    mask_object_amodal: Optional[torch.Tensor]
    target_normals: Optional[torch.Tensor]
    target_disparity: Optional[torch.Tensor]
    target_valid: Optional[torch.Tensor]
    keypoints_2d: Optional[torch.Tensor]
    keypoint_confidence: Optional[torch.Tensor]


def _resample(x: Optional[torch.Tensor], hw: tuple[int, int], mode: str, dtype: torch.dtype,
              device: torch.device) -> Optional[torch.Tensor]:
    if x is None:
        return None
    t = x.to(device=device)
    if tuple(t.shape[:2]) == hw:
        return t if t.dtype == torch.bool else t.to(dtype)
    is_bool = t.dtype == torch.bool
    img = t.to(dtype)
    img = img[None, None] if img.ndim == 2 else img.permute(2, 0, 1)[None]
    out = F.interpolate(img, size=hw, mode=mode)[0]
    out = out[0] if t.ndim == 2 else out.permute(1, 2, 0)
    if is_bool and mode == "nearest":
        return out > 0.5
    return out


def _prepare_targets(obs: Observations, size: Any, dtype: torch.dtype,
                     device: torch.device) -> _Targets:
    cam = obs.camera
    if size is not None:
        H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if (H, W) != (cam.height, cam.width):
            cam = cam.resized(W, H)
    hw = (cam.height, cam.width)
    same = hw == (obs.camera.height, obs.camera.width)
    mask_mode = "nearest" if same else "area"
    normals = _resample(obs.target_normals, hw, "nearest", dtype, device)
    if normals is not None and not same:
        n = normals.norm(dim=-1, keepdim=True)
        normals = torch.where(n > 0, normals / n.clamp_min(1e-12), normals)
    kp = None if obs.keypoints_2d is None else obs.keypoints_2d.to(device=device, dtype=dtype)
    if kp is not None and not same:
        kp = kp * torch.tensor([cam.width / obs.camera.width, cam.height / obs.camera.height],
                               dtype=dtype, device=device)
    conf = None if obs.keypoint_confidence is None else \
        obs.keypoint_confidence.to(device=device, dtype=dtype)
    return _Targets(
        camera=cam,
        mask_hand=_resample(obs.mask_hand, hw, mask_mode, dtype, device),
        mask_object=_resample(obs.mask_object, hw, mask_mode, dtype, device),
        mask_union=_resample(obs.mask_union, hw, mask_mode, dtype, device),
        mask_object_amodal=_resample(obs.mask_object_amodal, hw, mask_mode, dtype, device),
        target_normals=normals,
        target_disparity=_resample(obs.target_disparity, hw, "nearest", dtype, device),
        target_valid=_resample(obs.target_valid, hw, "nearest", dtype, device),
        keypoints_2d=kp, keypoint_confidence=conf)


class _Sentinel:
    """Stands for engine-provided context fields when checking which terms can run."""

    amodal = True


# --------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


class GuidedSampler:
    """Guided rectified-flow sampling of one object, steered by observations.

    Args:
        backbone: any :class:`hoiguide.backbones.FlowBackbone`.
        schedule: a :class:`hoiguide.phases.PhaseSchedule`, a preset name or a YAML path.
        options: :class:`GuidanceOptions` (or a mapping of its fields).

    Use :meth:`run`; the sampler holds no per-run state between calls.
    """

    def __init__(self, backbone: Any, schedule: Any = "followmyhold",
                 options: Union[GuidanceOptions, Mapping[str, Any], None] = None) -> None:
        from hoiguide.phases import load_schedule

        check_backbone(backbone)
        self.backbone = backbone
        self.schedule = load_schedule(schedule)
        self.options = GuidanceOptions.coerce(options)
        self.convention = TimeConvention.parse(backbone.time_convention)
        self.num_steps = int(self.options.num_steps or self.schedule.num_steps)
        self.resolved = self.schedule.resolve(self.num_steps)
        bdt = backbone.dtype
        self.dtype = torch.promote_types(bdt, torch.float32)
        self.device = torch.device(backbone.device)
        gr = self.options.grid_resolution
        if gr is None:
            gr = getattr(backbone, "guidance_resolution", None) or \
                min(int(backbone.default_resolution), 65)
        self.grid_resolution = int(gr)
        self.final_resolution = int(self.options.final_resolution or
                                    backbone.default_resolution)

    # ---- public ---------------------------------------------------------------------
    def run(self, observations: Observations, *, seed: int = 0, condition: Any = None,
            latents: Optional[torch.Tensor] = None, progress: bool = True,
            callbacks: Sequence[Callable[[StepState], Any]] = ()) -> GuidanceResult:
        """Sample one object guided by ``observations``.

        Args:
            observations: targets in the image-aligned frame (:class:`hoiguide.Observations`).
            seed: seed of the initial noise (same seed, same machine -> same result).
            condition: a precomputed ``backbone.encode_condition(observations.object_image)``.
            latents: ``(1, *latent_shape)`` initial noise instead of drawing it from ``seed``.
            progress: a tqdm bar over the flow steps (when tqdm is installed); phase progress
                is logged at INFO either way.
            callbacks: called with a :class:`StepState` before each Euler step.

        Returns:
            :class:`GuidanceResult`.

        Raises:
            NonFiniteLossError: a non-finite term with ``on_nonfinite: raise``.
        """
        if not isinstance(observations, Observations):
            raise TypeError(f"GuidedSampler.run: expected observations as hoiguide.Observations, "
                            f"got {type(observations).__name__}")
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks: expected callables, got {type(cb).__name__}")
        return _Run(self, observations, seed, condition, latents, progress,
                    tuple(callbacks)).execute()


class _Run:
    """State of one guided sampling run (the sampler itself stays stateless)."""

    def __init__(self, sampler: GuidedSampler, obs: Observations, seed: int, condition: Any,
                 latents: Optional[torch.Tensor], progress: bool,
                 callbacks: tuple[Callable[[StepState], Any], ...]) -> None:
        self.s = sampler
        self.bb = sampler.backbone
        self.obs = obs
        self.seed = seed
        self.progress = progress
        self.callbacks = callbacks
        self.dtype, self.device = sampler.dtype, sampler.device
        opt = sampler.options
        sync = None
        if opt.profile and self.device.type == "cuda":
            sync = torch.cuda.synchronize
        self.timings = Timings(sync)
        self.history = History()
        self.counters = {"iterations": 0, "skipped_empty_surface": 0, "skipped_nonfinite": 0,
                         "guidance_stopped": 0}
        self.status = "ok"
        self.stopped = False
        self.targets = _prepare_targets(obs, opt.render_size, self.dtype, self.device)
        # hand (image frame) and its similarity about its bounding-box centre
        self.hand_vertices = obs.hand_mesh.vertices.detach().to(self.device, self.dtype)
        self.hand_faces = obs.hand_mesh.faces.to(self.device)
        self.hand_kp = None if obs.hand_keypoints_3d is None else \
            obs.hand_keypoints_3d.to(self.device, self.dtype)
        hc = 0.5 * (self.hand_vertices.min(0).values + self.hand_vertices.max(0).values)
        self.hand = SimilarityParams(hc, rotation_repr=opt.rotation_repr, dtype=self.dtype,
                                     device=self.device)
        # object: generator frame -> image frame by gen_to_image, then the object similarity
        # about the image of the decode box centre
        self.g2i = obs.gen_to_image.detach().to(self.dtype, self.device)
        lo, hi = (torch.tensor(b, dtype=self.dtype, device=self.device) for b in self.bb.bounds)
        oc = self.g2i.apply(0.5 * (lo + hi))
        self.object = SimilarityParams(oc, rotation_repr=opt.rotation_repr, dtype=self.dtype,
                                       device=self.device)
        for p in list(self.hand.parameters()) + list(self.object.parameters()):
            p.requires_grad_(False)
        self.condition = condition
        self.latents = latents
        self._warned: set[str] = set()

    # ---- helpers --------------------------------------------------------------------
    def _hand_mesh(self) -> Mesh:
        return Mesh(self.hand(self.hand_vertices), self.hand_faces)

    def _place_object(self, mesh_gen: Mesh) -> Mesh:
        v = self.g2i.apply(mesh_gen.vertices.to(self.dtype))
        return Mesh(self.object(v), mesh_gen.faces)

    def _decode(self, clean: torch.Tensor, what: str, phase: str, step: Optional[int],
                it: int) -> Optional[Mesh]:
        """Clean latent -> generator-frame mesh (``None``: non-finite field, handled)."""
        from hoiguide.geometry import extract_isosurface

        with self.timings.part("decode"):
            grid = decode_grid(self.bb, clean.to(self.bb.dtype), self.s.grid_resolution)[0]
        if not bool(torch.isfinite(grid.detach()).all()):
            self._nonfinite("decoded SDF", phase, step, it, what)
            return None
        with self.timings.part("isosurface"):
            mesh = extract_isosurface(grid.to(self.dtype), self.bb.bounds)
        return mesh

    def _nonfinite(self, term: str, phase: str, step: Optional[int], it: int,
                   value: Any = None) -> None:
        where = f"phase {phase!r}, " + ("after sampling" if step is None else f"step {step}") \
            + f", inner iteration {it}"
        msg = f"non-finite {term}{'' if value is None else ' (' + str(value) + ')'} in {where}"
        policy = self.s.schedule.on_nonfinite
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
        raise _Stop()

    def _active_terms(self, phase: Any, terms: Sequence[Any]) -> list[Any]:
        """Drop terms whose observation fields are missing (logged once per phase/term)."""
        from hoiguide.losses import LOSSES, LossContext

        t = self.targets
        probe = LossContext(
            render=_Sentinel(), hand_mesh=_Sentinel(), object_mesh=_Sentinel(), camera=t.camera,
            target_normals=t.target_normals, target_disparity=t.target_disparity,
            target_valid=t.target_valid, mask_hand=t.mask_hand, mask_object=t.mask_object,
            mask_object_amodal=t.mask_object_amodal, mask_union=t.mask_union,
            hand_keypoints_3d=self.hand_kp, keypoints_2d=t.keypoints_2d,
            keypoint_confidence=t.keypoint_confidence, hand_translation=_Sentinel(),
            object_translation=_Sentinel())
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

    def _phase_bar(self, name: str, step: Optional[int], total: int) -> Any:
        """A second tqdm bar over one phase's inner iterations (below the step bar)."""
        if not self.progress or total < 2:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        where = "after sampling" if step is None else f"step {step}"
        return tqdm(total=total, desc=f"  {name} ({where})", leave=False, position=1,
                    unit="it")

    # ---- one phase at one step ------------------------------------------------------------
    def _optimise(self, phase: Any, terms: Sequence[Any], step: Optional[int],
                  x: torch.Tensor, v: Optional[torch.Tensor], sigma: Optional[float]
                  ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[Mesh], dict]:
        """K inner iterations. Returns (x, v, last object mesh (image frame), last losses)."""
        from hoiguide.losses import LossContext, evaluate_terms, required_fields
        from hoiguide.render import render

        groups = phase.optimize
        iters = phase.iterations
        if self.s.options.max_iterations is not None:
            iters = min(iters, self.s.options.max_iterations)
        terms = self._active_terms(phase, terms)
        need = required_fields(terms)
        need_render = any(f == "render" or f.startswith("render.") for f in need)
        need_amodal = "render.amodal" in need
        need_object = any(g.startswith("object.") or g in ("velocity", "latent")
                          for g in groups) or "object_mesh" in need
        x_opt = x.detach().to(self.dtype)
        v_opt = None if v is None else v.detach().to(self.dtype)
        params: dict[str, Any] = {}
        if "velocity" in groups:
            v_opt = v_opt.clone().requires_grad_(True)
            params["velocity"] = v_opt
        if "latent" in groups:
            x_opt = x_opt.clone().requires_grad_(True)
            params["latent"] = x_opt
        for who, sim in (("hand", self.hand), ("object", self.object)):
            for gname, p in sim.param_groups().items():
                key = f"{who}.{gname}"
                p.requires_grad_(key in groups)
                if key in groups:
                    params[key] = p
        decode_each = "velocity" in params or "latent" in params
        optimizer = phase.make_optimizer(params)

        def clean_estimate() -> torch.Tensor:
            if v_opt is None:  # after sampling: the sample is data
                return x_opt
            return predict_clean(x_opt, v_opt, sigma, self.s.convention)

        mesh_gen: Optional[Mesh] = None
        if not decode_each:
            with torch.no_grad():
                mesh_gen = self._decode(clean_estimate(), "decoded SDF", phase.name, step, 0)
        last_obj: Optional[Mesh] = None
        last_vals: dict[str, float] = {}
        first_total = last_total = float("nan")
        t_phase = time.perf_counter()
        ibar = self._phase_bar(phase.name, step, iters)
        for it in range(iters):
            if ibar is not None:
                ibar.update(1)
                if it % 5 == 0 and math.isfinite(last_total):
                    ibar.set_postfix_str(f"loss {last_total:.4g}", refresh=False)
            optimizer.zero_grad(set_to_none=True)
            if decode_each:
                mesh_gen = self._decode(clean_estimate(), "decoded SDF", phase.name, step, it)
                if mesh_gen is None:  # non-finite field, skipped
                    self.history.add(HistoryRecord(step, phase.name, it, {}, float("nan"),
                                                   "nonfinite:decoded SDF"))
                    continue
            elif mesh_gen is None:
                # the single no-grad decode of this step was non-finite and skipped
                self.history.add(HistoryRecord(step, phase.name, it, {}, float("nan"),
                                               "nonfinite:decoded SDF"))
                continue
            if mesh_gen.is_empty and need_object:
                self.counters["skipped_empty_surface"] += 1
                if self.counters["skipped_empty_surface"] <= 3:
                    log.warning("phase %r, %s, inner iteration %d: empty iso-surface, iteration "
                                "skipped", phase.name,
                                "after sampling" if step is None else f"step {step}", it)
                self.history.add(HistoryRecord(step, phase.name, it, {}, float("nan"),
                                               "empty_surface"))
                continue
            obj = self._place_object(mesh_gen)
            hand = self._hand_mesh()
            kp = None if self.hand_kp is None else self.hand(self.hand_kp)
            rend = None
            if need_render:
                with self.timings.part("render"):
                    rend = render([hand, obj], self.targets.camera, backend="auto",
                                  edge_sigma=self.s.options.edge_sigma, amodal=need_amodal)
            t = self.targets
            ctx = LossContext(
                render=rend, hand_mesh=hand, object_mesh=None if obj.is_empty else obj,
                camera=t.camera, target_normals=t.target_normals,
                target_disparity=t.target_disparity, target_valid=t.target_valid,
                mask_hand=t.mask_hand, mask_object=t.mask_object,
                mask_object_amodal=t.mask_object_amodal, mask_union=t.mask_union,
                hand_keypoints_3d=kp, keypoints_2d=t.keypoints_2d,
                keypoint_confidence=t.keypoint_confidence,
                hand_translation=self.hand.translation,
                object_translation=self.object.translation, phase=phase.name, step=step)
            with self.timings.part("losses"):
                total, values = evaluate_terms(terms, ctx)
            vals = {k: float(val.detach()) for k, val in values.items()}
            bad = [k for k, val in vals.items() if not math.isfinite(val)]
            if bad or not math.isfinite(float(total.detach())):
                label = bad[0] if bad else "total"
                self.history.add(HistoryRecord(step, phase.name, it, vals, float("nan"),
                                               f"nonfinite:{label}"))
                self._nonfinite(f"loss term {label!r}", phase.name, step, it,
                                vals.get(label, float(total.detach())))
                continue
            if total.requires_grad:
                with self.timings.part("backward"):
                    total.backward()
                badg = [g["name"] for g in optimizer.param_groups
                        if any(p.grad is not None and not bool(torch.isfinite(p.grad).all())
                               for p in g["params"])]
                if badg:
                    self.history.add(HistoryRecord(step, phase.name, it, vals, float("nan"),
                                                   f"nonfinite:grad {badg[0]}"))
                    self._nonfinite(f"gradient of {badg[0]!r}", phase.name, step, it)
                    continue
                with self.timings.part("step"):
                    optimizer.step()
            tot = float(total.detach())
            if it == 0 or not math.isfinite(first_total):
                first_total = tot
            last_total = tot
            self.counters["iterations"] += 1
            self.history.add(HistoryRecord(step, phase.name, it, vals, tot))
            last_obj, last_vals = obj, vals
        if ibar is not None:
            ibar.close()
        for sim in (self.hand, self.object):
            for p in sim.parameters():
                p.requires_grad_(False)
                p.grad = None
        dt = time.perf_counter() - t_phase
        self.timings.phases[phase.name] += dt
        log.info("phase %r %s: %d iterations, loss %.4g -> %.4g, %.2f s", phase.name,
                 "after sampling" if step is None else f"step {step}", iters, first_total,
                 last_total, dt)
        x_out = x_opt.detach().to(x.dtype)
        v_out = None if v_opt is None else v_opt.detach()
        if last_obj is None and mesh_gen is not None and not mesh_gen.is_empty:
            with torch.no_grad():
                last_obj = self._place_object(mesh_gen)
        return x_out, v_out, None if last_obj is None else last_obj.detach(), last_vals

    # ---- one guided flow step -------------------------------------------------------------
    def _guided_step(self, phase: Any, terms: Sequence[Any], i: int, x: torch.Tensor,
                     v: torch.Tensor, s: float, s_next: float, cond: Any, w: float
                     ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor],
                                Optional[Mesh], dict]:
        """The phase's inner loop(s) at step ``i`` and its update rule. Returns ``(x, v,
        x_next, last object mesh, last losses)``: ``x, v`` as optimised (for callbacks),
        ``x_next`` the sample at ``s_next`` (``None``: the caller takes the Euler step)."""
        conv = self.s.convention
        x_next = None
        for r in range(phase.repeats):
            if r > 0:
                # time travel: back from s_next to s with fresh noise, a new model call
                gen = torch.Generator(device="cpu").manual_seed(
                    (self.seed * 1_000_003 + i * 101 + r) % (2**63))
                noise = torch.randn(x_next.shape, generator=gen, dtype=torch.float32)
                with torch.no_grad():
                    x = noise_back(x_next.float(), s_next, s, noise.to(x_next.device),
                                   conv).to(x_next.dtype)
                    v = self.bb.velocity(x, s, cond, w)
            x_in, v_in = x, v
            x, v, obj_mesh, losses = self._optimise(phase, terms, i, x, v, s)
            step_dtype = torch.promote_types(x.dtype, torch.float32)
            with torch.no_grad():
                if phase.update == "renoise":
                    # keep the optimised clean estimate, re-noised with the noise estimate of
                    # the model's own (unoptimised) velocity at the next sigma
                    clean = predict_clean(x.to(step_dtype), v.to(step_dtype), s, conv)
                    eps = predict_noise(x_in.to(step_dtype), v_in.to(step_dtype), s, conv)
                    x_next = add_noise(clean, eps, s_next, conv).to(x.dtype)
                else:
                    x_next = euler_step(x.to(step_dtype), v.to(step_dtype), s,
                                        s_next).to(x.dtype)
            if s_next == s and phase.update == "euler":
                break  # a zero-length step: repeating it changes nothing but the cost
        return x, v, x_next, obj_mesh, losses

    # ---- the loop -----------------------------------------------------------------------
    def execute(self) -> GuidanceResult:
        bb, sched, n = self.bb, self.s.schedule, self.s.num_steps
        t_start = time.perf_counter()
        sig = bb.sigmas(n)
        if not isinstance(sig, torch.Tensor) or sig.ndim != 1 or sig.shape[0] != n + 1:
            raise ValueError(f"{type(bb).__name__}.sigmas({n}) must return a 1-d tensor of "
                             f"{n + 1} values, got {getattr(sig, 'shape', sig)!r}")
        cond = self.condition if self.condition is not None else \
            bb.encode_condition(self.obs.object_image)
        if self.latents is None:
            x = initial_noise(bb, 1, seed=self.seed)
        else:
            from hoiguide.backbones.base import check_latent
            x = check_latent(bb, self.latents, "latents").to(bb.device, bb.dtype)
            if x.shape[0] != 1:
                raise ValueError(f"latents: expected a batch of 1, got {tuple(x.shape)}")
        log.debug("guided sampling with schedule %r:\n%s", sched.name, self.s.resolved.table())
        bar = None
        if self.progress:
            try:
                from tqdm.auto import tqdm
                bar = tqdm(total=n, desc=f"hoiguide[{sched.name}]", leave=False)
            except ImportError:
                bar = None
        t_sampling = time.perf_counter()
        try:
            for i in range(n):
                s, s_next = float(sig[i]), float(sig[i + 1])
                phase = None if self.stopped else sched.phase_at(i, n)
                if phase is None and s_next == s:
                    if bar is not None:
                        bar.update(1)
                    continue  # zero-length step: nothing to do without guidance
                w = sched.guidance_scale_at(i, n)
                with torch.no_grad():
                    v = bb.velocity(x, s, cond, w)
                obj_mesh, losses = None, {}
                x_next = None
                if phase is not None:
                    if bar is not None:
                        bar.set_postfix_str(phase.name)
                    try:
                        x, v, x_next, obj_mesh, losses = self._guided_step(
                            phase, sched.terms_at(i, n), i, x, v, s, s_next, cond, w)
                    except _Stop:
                        self.stopped = True
                step_dtype = torch.promote_types(x.dtype, torch.float32)
                if self.callbacks:
                    with torch.no_grad():
                        clean = predict_clean(x.to(step_dtype), v.to(step_dtype), s,
                                              self.s.convention)
                        state = StepState(
                            step=i, num_steps=n, sigma=s, sigma_next=s_next,
                            guidance_scale=w, phase=None if phase is None else phase.name,
                            latent=x.detach(), velocity=v.detach(), clean=clean,
                            hand_similarity=self.hand.similarity().detach(),
                            object_similarity=self.object.similarity().detach(),
                            hand_mesh=self._hand_mesh().detach(), object_mesh=obj_mesh,
                            losses=dict(losses), history=self.history)
                    for cb in self.callbacks:
                        cb(state)
                if x_next is not None:
                    x = x_next
                else:
                    with torch.no_grad():
                        x = euler_step(x.to(step_dtype), v.to(step_dtype), s, s_next).to(x.dtype)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self.timings.phases["sampling"] = time.perf_counter() - t_sampling
        # after-sampling phases on the final sample
        for phase in sched.post_phases:
            if self.stopped:
                break
            try:
                x, _, _, _ = self._optimise(phase, phase.terms(0, 1), None, x, None, None)
            except _Stop:
                self.stopped = True
        # final decode
        from hoiguide.geometry import (connected_components, extract_isosurface,
                                       remove_small_components)

        t0 = time.perf_counter()
        with torch.no_grad():
            grid = decode_grid(bb, x, self.s.final_resolution)[0]
            if not bool(torch.isfinite(grid).all()):
                mesh_gen = Mesh.empty(self.dtype, self.device)
                if self.status == "ok":
                    self.status = "non-finite final latent"
            else:
                mesh_gen = extract_isosurface(grid.to(self.dtype), bb.bounds)
            if not mesh_gen.is_empty:
                self.counters["components_raw"] = int(connected_components(mesh_gen).max()) + 1
                if self.s.options.remove_floaters:
                    mesh_gen = remove_small_components(mesh_gen,
                                                       self.s.options.floater_fraction)
                self.counters["components"] = int(connected_components(mesh_gen).max()) + 1
            else:
                self.counters["components_raw"] = self.counters["components"] = 0
            obj = self._place_object(mesh_gen).detach()
            hand = self._hand_mesh().detach()
            kp = None if self.hand_kp is None else self.hand(self.hand_kp).detach()
        self.timings.phases["final_decode"] = time.perf_counter() - t0
        if mesh_gen.is_empty and self.status == "ok":
            self.status = "empty object mesh"
        self.timings.total = time.perf_counter() - t_start
        return GuidanceResult(
            latent=x.detach(), object_mesh=obj, object_mesh_generator=mesh_gen.detach(),
            hand_mesh=hand, hand_keypoints_3d=kp,
            object_similarity=self.object.similarity().detach(),
            hand_similarity=self.hand.similarity().detach(), gen_to_image=self.g2i,
            history=self.history, timings=self.timings.to_dict(), counters=dict(self.counters),
            status=self.status, num_steps=n)
