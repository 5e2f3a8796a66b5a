"""Multi-frame (video) guided sampling: one object from the ``T`` frames of a clip.

:class:`ClipGuidedSampler` runs the single-image engine's sampling loop
(:class:`~hoiguide.guidance.engine.GuidedSampler`: flow steps, phases, update rules, time
travel, after-sampling phases, final decode) with a multi-frame run context in place of the
single-frame one. What changes:

**Frames.** Every frame ``t`` of a :class:`hoiguide.ClipObservations` has its own
image-aligned frame (the OpenCV camera frame of that frame's crop: +x right, +y down, +z
forward, metres; with a static camera these coincide up to the crop). A frame that is
``None`` has no observations: its poses are interpolated from its neighbours and it takes no
part in the image terms.

**Parameters.**

* ONE latent / velocity for the object (one decode per inner iteration, at the inner-loop
  grid), so every frame shapes the same object;
* per frame ``t``, the object is placed by ``object_t ∘ B_t``: ``B_t`` is the frame's
  ``gen_to_image`` with its scale replaced by the REFERENCE frame's (the frame with the most
  visible object, whose alignment is the most reliable), and ``object_t`` a
  :class:`hoiguide.SimilarityParams` about ``B_t(centre of the decode box)`` whose
  ``log_scale`` is ONE parameter shared by every frame: one object, one size; rotation and
  translation are per frame (schedule groups ``object.scale`` / ``object.rotation`` /
  ``object.translation`` hold the shared scale and the per-frame tensors);
* per observed frame, a hand similarity about its hand's box centre (groups ``hand.*``).

**Initial poses** (``clip.initial_poses``): ``icp`` takes each observed frame's
``gen_to_image`` as it is (shared scale applied); ``robust`` (default) also computes the
grasp-propagated pose ``M_t ∘ B_ref`` (``M_t``: the hand's rigid motion from the reference
frame to frame ``t``, fitted to the observed hand vertices; while the grip holds the object
moves with the hand) and the pose interpolated from the frame's observed neighbours; a frame
whose pose disagrees with BOTH (rotation beyond ``clip.outlier_rotation_deg`` or the object's
centre beyond ``clip.outlier_translation`` metres) takes the grasp-propagated pose
(``counters["poses_from_grasp"]``). Unobserved frames are then interpolated in time (slerp of
the rotation, lerp of the object's centre; the nearest observed pose beyond the ends).

**Each inner iteration** (one phase, one flow step):

1. decode the clean estimate once (when the phase moves the latent or velocity);
2. the phase's image terms (the same registered terms and weights as a single-image run) on
   ``clip.frames_per_iteration`` observed frames, taken in turn from a seeded permutation of
   the observed frames so every frame is visited (``counters["frame_visits"]``): each frame
   renders its hand and the object placed in it against its own targets; the per-frame
   weighted totals are averaged (history: each term's mean over the visited frames under its
   label, and ``frame<t>`` = that frame's weighted total);
3. the temporal terms over ALL frames (:mod:`hoiguide.losses.temporal`, weights from the
   schedule's ``clip:`` block, history labels ``object_smoothness``, ``hand_smoothness``,
   ``contact_consistency``): smoothness of the object's pose (the 8 corners and the centre of
   the decode box placed per frame), smoothness of the observed hands' vertices (their
   frame times used, so a gap of unobserved frames counts at its length), and contact
   consistency: the hand vertices of the reference frame within ``clip.contact_distance`` of
   the object surface at the start of the phase's step are the contact set; expressed in the
   object's frame, each keeps its mean position over the frames where it is visible (it
   projects into that frame's hand mask and faces the camera);
4. backward and one optimiser step, as the single-image engine does (non-finite handling and
   skipped iterations unchanged). ``keep_best`` compares a clip-wide estimate instead of the
   subset's total: the mean of every observed frame's latest image total in this phase step
   plus the temporal terms; an iterate can be kept only once every observed frame has been
   evaluated in the step (a step with fewer inner iterations than that keeps its last
   iterate, the reference's behaviour).

**Conditioning** (``clip.condition``): ``reference`` conditions every flow step on the
reference frame's object image; ``cycle`` switches the condition between the observed frames
across flow steps (step ``i`` uses the ``i mod n``-th of the reference followed by the other
observed frames in order).

**Result**: :class:`hoiguide.ClipReconstruction`: the final decode as the single-image engine
(floaters removed), per-frame generator -> image similarities (``object_t ∘ B_t``), per-frame
hands (an unobserved frame's hand interpolated vertex-wise from its observed neighbours, its
similarity the identity). Callbacks see the reference frame's similarities and meshes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from hoiguide.geometry import fit_similarity, signed_distance
from hoiguide.guidance.context import RunContext
from hoiguide.guidance.engine import GuidedSampler, _check_callbacks
from hoiguide.guidance.records import GuidanceOptions, StepState
from hoiguide.losses.temporal import contact_consistency, trajectory_smoothness
from hoiguide.phases.model import ClipSpec
from hoiguide.result import ClipReconstruction
from hoiguide.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    rotation_angle,
)
from hoiguide.types import ClipObservations, Mesh, Similarity, SimilarityParams

__all__ = ["ClipGuidedSampler", "ClipRunContext", "initial_clip_poses"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# poses over frames
# --------------------------------------------------------------------------------------


def _box_centre(backbone: Any) -> torch.Tensor:
    lo, hi = (torch.tensor(b, dtype=torch.float64) for b in backbone.bounds)
    return 0.5 * (lo + hi)


def _box_points(backbone: Any) -> torch.Tensor:
    """``(9, 3)`` the decode box's corners and centre (generator frame)."""
    lo, hi = (torch.tensor(b, dtype=torch.float64) for b in backbone.bounds)
    corners = [torch.stack([(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]])
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    return torch.stack(corners + [0.5 * (lo + hi)])


def _with_scale(g2i: Similarity, scale: torch.Tensor, centre: torch.Tensor) -> Similarity:
    """``g2i`` with its scale replaced by ``scale``, keeping the image of ``centre``."""
    g = g2i.detach().to(torch.float64)
    R = g.rotation
    return Similarity(scale, R, g.apply(centre) - scale * (R @ centre))


def _interpolate(a: Similarity, b: Similarity, alpha: float,
                 centre: torch.Tensor) -> Similarity:
    """Between ``a`` (alpha 0) and ``b`` (alpha 1): slerp of the rotation, lerp of the image
    of ``centre``; ``a``'s scale (the clip's poses share one)."""
    Ra, Rb = a.rotation.double(), b.rotation.double()
    R = Ra @ axis_angle_to_matrix(alpha * matrix_to_axis_angle(Ra.T @ Rb))
    p = (1 - alpha) * a.apply(centre) + alpha * b.apply(centre)
    s = a.scale.double()
    return Similarity(s, R, p - s * (R @ centre))


def _disagree(a: Similarity, b: Similarity, centre: torch.Tensor, deg: float,
              metres: float) -> bool:
    ang = math.degrees(float(rotation_angle(a.rotation.double().T @ b.rotation.double())))
    dist = float((a.apply(centre) - b.apply(centre)).norm())
    return ang > deg or dist > metres


def _rigid_motion(src: torch.Tensor, tgt: torch.Tensor) -> Similarity:
    """The rigid motion (scale 1) best mapping ``src`` onto ``tgt`` (``(N, 3)`` each)."""
    fit = fit_similarity(src, tgt)
    s64, t64 = src.detach().double().cpu(), tgt.detach().double().cpu()
    R = fit.rotation
    return Similarity(torch.ones((), dtype=torch.float64), R,
                      t64.mean(0) - R @ s64.mean(0))


def _neighbours(times: torch.Tensor, known: Sequence[int], t: int
                ) -> tuple[Optional[int], Optional[int], float]:
    """The nearest known frames before and after ``t`` and ``t``'s fraction between them."""
    before = [k for k in known if k < t]
    after = [k for k in known if k > t]
    a = before[-1] if before else None
    b = after[0] if after else None
    if a is None or b is None:
        return a, b, 0.0
    return a, b, float((times[t] - times[a]) / (times[b] - times[a]))


def _interpolated(poses: Mapping[int, Similarity], times: torch.Tensor, t: int,
                  centre: torch.Tensor) -> Optional[Similarity]:
    a, b, alpha = _neighbours(times, sorted(poses), t)
    if a is None and b is None:
        return None
    if a is None or b is None:
        return poses[a if b is None else b]
    return _interpolate(poses[a], poses[b], alpha, centre)


def initial_clip_poses(clip: ClipObservations, centre: torch.Tensor,
                       spec: Optional[ClipSpec] = None
                       ) -> tuple[list[Similarity], list[str]]:
    """The starting generator -> image similarity of the object in every frame.

    Args:
        clip: the clip (each observed frame's ``gen_to_image`` and ``hand_mesh`` are read).
        centre: ``(3,)`` the decode box's centre (generator frame); rotations and
            interpolations act about its image.
        spec: the clip settings (``initial_poses``, ``outlier_rotation_deg``,
            ``outlier_translation``); default :class:`ClipSpec`.

    Returns:
        ``(poses, sources)``: ``T`` float64 similarities sharing the reference frame's scale
        (frame ``t``'s image-aligned frame, metres), and per frame how its pose was made:
        ``"icp"`` (its ``gen_to_image``), ``"grasp"`` (carried with the hand from the
        reference frame) or ``"interpolated"`` (an unobserved frame).
    """
    spec = spec or ClipSpec()
    centre = centre.double()
    ref = clip.reference
    frames = clip.frames
    s_ref = frames[ref].gen_to_image.scale.detach().double().cpu()
    icp = {t: _with_scale(f.gen_to_image, s_ref, centre) for t, f in enumerate(frames)
           if f is not None}
    poses = dict(icp)
    sources = {t: "icp" for t in icp}
    if spec.initial_poses == "robust" and len(icp) >= 3:
        h_ref = frames[ref].hand_mesh.vertices
        for t in icp:
            h_t = frames[t].hand_mesh.vertices
            if t == ref or h_t.shape != h_ref.shape:
                continue
            try:
                grasp = _rigid_motion(h_ref, h_t).compose(icp[ref])
            except ValueError:  # degenerate hand: no motion to carry the object with
                continue
            others = {k: p for k, p in icp.items() if k != t}
            nb = _interpolated(others, clip.times, t, centre)
            deg, m = spec.outlier_rotation_deg, spec.outlier_translation
            if nb is not None and _disagree(icp[t], nb, centre, deg, m) and \
                    _disagree(icp[t], grasp, centre, deg, m):
                log.info("clip frame %d: its pose disagrees with its neighbours and with the "
                         "hand's motion; the grasp-propagated pose replaces it", t)
                poses[t] = Similarity(s_ref, grasp.rotation, grasp.translation)
                sources[t] = "grasp"
    observed = dict(poses)
    out = []
    for t in range(clip.num_frames):
        if t in observed:
            out.append(observed[t])
        else:
            out.append(_interpolated(observed, clip.times, t, centre))
            sources[t] = "interpolated"
    return out, [sources[t] for t in range(clip.num_frames)]


# --------------------------------------------------------------------------------------
# the run context of a clip
# --------------------------------------------------------------------------------------


@dataclass
class ClipRunContext(RunContext):
    """A :class:`RunContext` for the reference frame that also holds every other frame's
    context and the clip's parameters, and evaluates an inner iteration over frames (see
    the module docstring). Build with :meth:`RunContext.create` on the reference
    observations, then :meth:`setup`."""

    clip: Optional[ClipObservations] = None
    spec: ClipSpec = field(default_factory=ClipSpec)
    frames: list = field(default_factory=list)        # per frame: its RunContext or None
    poses: list = field(default_factory=list)         # per frame: object SimilarityParams
    bases: list = field(default_factory=list)         # per frame: B_t (Similarity)
    pose_sources: list = field(default_factory=list)
    shared_scale: Optional[torch.nn.Parameter] = None
    box_points: Optional[torch.Tensor] = None
    order: list = field(default_factory=list)         # visiting order of observed frames
    cursor: int = 0
    contact: Optional[torch.Tensor] = None            # (Nh,) bool, reference frame
    visible: Optional[torch.Tensor] = None            # (T_obs, Nh) bool
    contact_key: Any = None
    conditions: dict = field(default_factory=dict)    # frame -> encoded condition
    same_hand_topology: bool = True
    latest: dict = field(default_factory=dict)        # frame -> its latest image total
    latest_temporal: float = 0.0
    last_iteration: int = -1

    @property
    def observed(self) -> list[int]:
        return self.clip.observed

    def setup(self, clip: ClipObservations, spec: ClipSpec, seed: int) -> None:
        """Per-frame contexts, initial poses (shared scale), visiting order."""
        self.clip, self.spec = clip, spec
        bb, dt, dev = self.backbone, self.dtype, self.device
        centre = _box_centre(bb)
        bases, sources = initial_clip_poses(clip, centre, spec)
        self.pose_sources = sources
        self.bases = [b.to(dt, dev) for b in bases]
        self.box_points = _box_points(bb).to(dev, dt)
        self.shared_scale = torch.nn.Parameter(torch.zeros((), dtype=dt, device=dev),
                                               requires_grad=False)
        for t, base in enumerate(self.bases):
            sim = SimilarityParams(base.apply(centre.to(dev, dt)),
                                   rotation_repr=self.options.rotation_repr, dtype=dt,
                                   device=dev)
            sim.log_scale = self.shared_scale    # one size for the whole clip
            for p in sim.parameters():
                p.requires_grad_(False)
            self.poses.append(sim)
        for t, obs in enumerate(clip.frames):
            if obs is None:
                self.frames.append(None)
                continue
            fctx = self if t == clip.reference else RunContext.create(
                bb, self.schedule, self.options, self.convention, self.grid_resolution, dt,
                obs, seed, False)
            fctx.object, fctx.gen_to_image = self.poses[t], self.bases[t]
            if fctx is not self:
                fctx.timings, fctx.history, fctx.counters = \
                    self.timings, self.history, self.counters
            self.frames.append(fctx)
        shapes = {self.frames[t].hand_vertices.shape for t in self.observed}
        self.same_hand_topology = len(shapes) == 1
        if not self.same_hand_topology and (spec.hand_smoothness_weight or
                                            spec.contact_weight):
            log.warning("clip: the observed hands have different vertex counts %s; hand "
                        "smoothness and contact consistency are disabled", sorted(shapes))
        gen = torch.Generator(device="cpu").manual_seed((int(seed) * 7919 + 17) % (2**63))
        obs_idx = self.observed
        self.order = [obs_idx[int(k)] for k in torch.randperm(len(obs_idx), generator=gen)]
        self.counters["frame_visits"] = [0] * clip.num_frames
        self.counters["poses_from_grasp"] = sources.count("grasp")
        self.counters["poses_interpolated"] = sources.count("interpolated")

    # ---- parameters ------------------------------------------------------------------
    def similarity_groups(self) -> dict[str, Any]:
        """Per group, the per-frame tensors (the object's scale: the one shared tensor)."""
        hands = [self.frames[t].hand.param_groups() for t in self.observed]
        out: dict[str, Any] = {f"hand.{g}": [h[g] for h in hands]
                               for g in ("scale", "rotation", "translation")}
        out["object.scale"] = [self.shared_scale]
        out["object.rotation"] = [p.rotation for p in self.poses]
        out["object.translation"] = [p.translation for p in self.poses]
        return out

    def placement(self, t: int) -> Similarity:
        """Frame ``t``'s generator -> image similarity ``object_t ∘ B_t`` (differentiable)."""
        return self.poses[t].similarity().compose(self.bases[t])

    # ---- one inner iteration -----------------------------------------------------------
    def next_frames(self) -> list[int]:
        """The observed frames this inner iteration evaluates (in turn, all visited)."""
        k = min(self.spec.frames_per_iteration, len(self.order))
        out = [self.order[(self.cursor + j) % len(self.order)] for j in range(k)]
        self.cursor = (self.cursor + k) % len(self.order)
        return out

    def evaluate(self, terms: Sequence[Any], mesh_gen: Mesh, phase: str, step: Optional[int],
                 it: int, need_render: bool, need_amodal: bool
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Mesh]:
        """Image terms on a subset of frames (averaged) plus the temporal terms."""
        if self.contact_key != (phase, step):
            self.contact_key = (phase, step)
            self._update_contact(mesh_gen)
            self.latest = {}
        elif it <= self.last_iteration:   # the same phase step again (repeats)
            self.latest = {}
        self.last_iteration = it
        phase_obj = self.schedule.phase(phase)
        totals, sums, counts = [], {}, {}
        values: dict[str, torch.Tensor] = {}
        obj_ref = None
        for t in self.next_frames():
            fctx = self.frames[t]
            if fctx is self:
                total_t, vals_t, obj_t = RunContext.evaluate(
                    self, terms, mesh_gen, phase, step, it, need_render, need_amodal)
                obj_ref = obj_t
            else:
                fterms = fctx.active_terms(phase_obj, terms)
                total_t, vals_t, _ = fctx.evaluate(fterms, mesh_gen, phase, step, it,
                                                   need_render, need_amodal)
            self.counters["frame_visits"][t] += 1
            self.latest[t] = float(total_t.detach())
            totals.append(total_t)
            values[f"frame{t}"] = total_t
            for k, v in vals_t.items():
                sums[k] = v if k not in sums else sums[k] + v
                counts[k] = counts.get(k, 0) + 1
        total = torch.stack([x.reshape(()).to(self.dtype) for x in totals]).mean()
        for k, v in sums.items():
            values[k] = v / counts[k]
        temporal = 0.0
        with self.timings.part("temporal"):
            for label, weight, value in self._temporal_terms():
                values[label] = value
                total = total + weight * value
                temporal += weight * float(value.detach())
        self.latest_temporal = temporal
        if obj_ref is None:
            obj_ref = self.place_object(mesh_gen)
        return total, values, obj_ref

    def keep_best_score(self, total: float) -> Optional[float]:
        """``keep_best`` compares a clip-wide estimate, not the subset's total (subsets
        differ between iterations): the mean of every observed frame's latest image total
        in this phase step plus this iteration's temporal terms; ``None`` (not keepable)
        until every observed frame has been evaluated in the step."""
        if len(self.latest) < len(self.order):
            return None
        return sum(self.latest.values()) / len(self.latest) + self.latest_temporal

    def _temporal_terms(self) -> list[tuple[str, float, torch.Tensor]]:
        spec, out = self.spec, []
        T = self.clip.num_frames
        if spec.smoothness_weight > 0 and T >= 3:
            pts = torch.stack([self.placement(t).apply(self.box_points) for t in range(T)])
            out.append(("object_smoothness", spec.smoothness_weight,
                        trajectory_smoothness(pts, times=self.clip.times)))
        obs = self.observed
        if not self.same_hand_topology:
            return out
        if spec.hand_smoothness_weight > 0 and len(obs) >= 3:
            hands = torch.stack([self.frames[t].hand(self.frames[t].hand_vertices)
                                 for t in obs])
            out.append(("hand_smoothness", spec.hand_smoothness_weight,
                        trajectory_smoothness(hands, times=self.clip.times[obs])))
        if spec.contact_weight > 0 and len(obs) >= 2 and self.contact is not None:
            rows = []
            for t in obs:
                P = self.placement(t)
                h = self.frames[t].hand(self.frames[t].hand_vertices)
                rows.append((h - P.translation) @ P.rotation)   # R^T (h - tau), metres
            out.append(("contact_consistency", spec.contact_weight,
                        contact_consistency(torch.stack(rows), self.contact, self.visible)))
        return out

    def _update_contact(self, mesh_gen: Mesh) -> None:
        """The contact set (reference frame, hand vertices near the object surface) and
        where each observed hand vertex is visible, at the start of a phase step."""
        self.contact = self.visible = None
        if not self.same_hand_topology or self.spec.contact_weight == 0 or mesh_gen.is_empty:
            return
        with torch.no_grad():
            obj = self.place_object(mesh_gen.detach())
            d = signed_distance(self.hand_mesh().vertices, obj).abs()
            contact = d < self.spec.contact_distance
            vis = []
            for t in self.observed:
                fctx = self.frames[t]
                hm = fctx.hand_mesh()
                v = hm.vertices
                facing = (hm.vertex_normals() * v).sum(-1) < 0
                cam = fctx.observations.camera
                mask = fctx.observations.mask_hand.to(v.device)
                uv = cam.project(v)
                ok = torch.isfinite(uv).all(-1)
                u = torch.nan_to_num(uv[:, 0], nan=-1.0).floor().long()
                r = torch.nan_to_num(uv[:, 1], nan=-1.0).floor().long()
                ok &= (u >= 0) & (u < cam.width) & (r >= 0) & (r < cam.height)
                inside = torch.zeros_like(ok)
                inside[ok] = mask[r[ok], u[ok]]
                vis.append(ok & inside & facing)
        self.contact, self.visible = contact, torch.stack(vis)
        self.counters["contact_vertices"] = int(contact.sum())


# --------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------


class ClipGuidedSampler(GuidedSampler):
    """Guided rectified-flow sampling of one object from a clip (see the module docstring).

    Args:
        backbone: any :class:`hoiguide.backbones.FlowBackbone`.
        schedule: a preset name (``"video_fast"``, ``"video"``), a YAML path, a mapping or a
            :class:`hoiguide.phases.PhaseSchedule`; its ``clip:`` block configures the
            frames (a schedule without one uses :class:`hoiguide.phases.model.ClipSpec`'s
            defaults, so ``"fast"`` runs too).
        options: :class:`GuidanceOptions` (or a mapping of its fields), as for the
            single-image sampler.
    """

    def __init__(self, backbone: Any, schedule: Any = "video_fast",
                 options: Union[GuidanceOptions, Mapping[str, Any], None] = None) -> None:
        super().__init__(backbone, schedule, options)
        self.clip_spec = self.schedule.clip or ClipSpec()

    def run(self, clip: ClipObservations, *, seed: int = 0, condition: Any = None,
            latents: Optional[torch.Tensor] = None, progress: bool = True,
            callbacks: Sequence[Callable[[StepState], Any]] = ()) -> ClipReconstruction:
        """Sample one object guided by every frame of ``clip``.

        Args:
            clip: :class:`hoiguide.ClipObservations` (per-frame observations in each frame's
                image-aligned frame, metres; ``None`` frames interpolated).
            seed: seed of the initial noise and of the frame visiting order.
            condition: a precomputed ``backbone.encode_condition`` of the reference frame's
                object image.
            latents: ``(1, *latent_shape)`` initial noise instead of drawing it from ``seed``.
            progress: tqdm bars over flow steps and inner iterations.
            callbacks: called with a :class:`StepState` (reference frame) before each flow
                update.

        Returns:
            :class:`hoiguide.ClipReconstruction`.

        Raises:
            NonFiniteLossError: a non-finite term with ``on_nonfinite: raise``.
        """
        if not isinstance(clip, ClipObservations):
            raise TypeError(f"ClipGuidedSampler.run: expected clip as hoiguide.ClipObservations, "
                            f"got {type(clip).__name__}")
        _check_callbacks(callbacks)
        t_start = time.perf_counter()
        ctx = ClipRunContext.create(self.backbone, self.schedule, self.options, self.convention,
                                    self.grid_resolution, self.dtype,
                                    clip.reference_observations, seed, progress)
        ctx.setup(clip, self.clip_spec, seed)
        cond = condition if condition is not None else \
            self.backbone.encode_condition(clip.reference_observations.object_image)
        ctx.conditions[clip.reference] = cond
        x = self._initial_latent(latents, seed)
        x = self._sample(ctx, x, cond, callbacks)
        return self._finish_clip(ctx, x, seed, t_start)

    def _condition_at(self, ctx: RunContext, step: int, cond: Any) -> Any:
        if self.clip_spec.condition == "reference" or not isinstance(ctx, ClipRunContext):
            return cond
        ref = ctx.clip.reference
        order = [ref] + [t for t in ctx.observed if t != ref]
        t = order[step % len(order)]
        if t not in ctx.conditions:
            ctx.conditions[t] = self.backbone.encode_condition(ctx.clip.frames[t].object_image)
        return ctx.conditions[t]

    def _finish_clip(self, ctx: ClipRunContext, x: torch.Tensor, seed: int,
                     t_start: float) -> ClipReconstruction:
        t0 = time.perf_counter()
        mesh_gen = self.final_mesh(ctx, x)
        clip = ctx.clip
        T = clip.num_frames
        with torch.no_grad():
            transforms = [ctx.placement(t).detach() for t in range(T)]
            hands: dict[int, Mesh] = {t: ctx.frames[t].hand_mesh().detach()
                                      for t in ctx.observed}
            sims = {t: ctx.frames[t].hand.similarity().detach() for t in ctx.observed}
            hand_meshes, hand_sims = [], []
            for t in range(T):
                if t in hands:
                    hand_meshes.append(hands[t])
                    hand_sims.append(sims[t])
                    continue
                a, b, alpha = _neighbours(clip.times, ctx.observed, t)
                near = a if b is None else b if a is None else (a if alpha <= 0.5 else b)
                if a is not None and b is not None and \
                        hands[a].vertices.shape == hands[b].vertices.shape:
                    v = (1 - alpha) * hands[a].vertices + alpha * hands[b].vertices
                    hand_meshes.append(Mesh(v, hands[a].faces))
                else:
                    hand_meshes.append(hands[near])
                hand_sims.append(Similarity.identity(self.dtype).to(device=self.device))
        ctx.timings.phases["final_decode"] = time.perf_counter() - t0
        if mesh_gen.is_empty and ctx.status == "ok":
            ctx.status = "empty object mesh"
        ctx.timings.total = time.perf_counter() - t_start
        counters = dict(ctx.counters)
        counters["frame_visits"] = list(ctx.counters["frame_visits"])
        info = self.schedule_info()
        info["clip"] = self.clip_spec.to_dict()
        info["pose_sources"] = list(ctx.pose_sources)
        return ClipReconstruction(
            object_mesh_generator=mesh_gen, object_transforms=transforms,
            hand_meshes=hand_meshes, hand_similarities=hand_sims, times=clip.times.clone(),
            reference=clip.reference, observed=[f is not None for f in clip.frames],
            latent=x.detach(), history=ctx.history, timings=ctx.timings.to_dict(),
            schedule=info, seed=int(seed), status=ctx.status, counters=counters)
