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

Frames: see :mod:`hoiguide.guidance.context` (the object is placed by
``object_similarity ∘ observations.gen_to_image``; the hand by its similarity about its box
centre). The parts, top-down: this module (the sampling loop) ->
:mod:`~hoiguide.guidance.inner` (one phase's inner iterations) ->
:mod:`~hoiguide.guidance.updates` (the update rules) and :mod:`~hoiguide.guidance.context`
(the run's shared state).

Failure handling: a non-finite loss term (or gradient, or decoded field) is reported with the
term, phase, step and inner iteration and then, per ``schedule.on_nonfinite``, raises
:class:`NonFiniteLossError`, skips the inner iteration (counted) or stops guidance (sampling
finishes unguided; counted; the result's status says so). An empty iso-surface skips the inner
iteration (counted) when the phase needs the object; otherwise the object is simply absent.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from hoiguide.backbones.base import check_backbone, check_latent
from hoiguide.geometry import (
    connected_components,
    extract_isosurface,
    remove_small_components,
)
from hoiguide.guidance.context import RunContext, StopGuidance
from hoiguide.guidance.flow import TimeConvention, predict_clean
from hoiguide.guidance.inner import InnerResult, optimise_phase
from hoiguide.guidance.records import GuidanceOptions, StepState
from hoiguide.guidance.sampler import decode_grid, initial_noise
from hoiguide.guidance.updates import flow_update
from hoiguide.phases import load_schedule
from hoiguide.result import Reconstruction
from hoiguide.types import Mesh, Observations

__all__ = ["GuidedSampler"]

log = logging.getLogger(__name__)


class GuidedSampler:
    """Guided rectified-flow sampling of one object, steered by observations.

    Args:
        backbone: any :class:`hoiguide.backbones.FlowBackbone`.
        schedule: a :class:`hoiguide.phases.PhaseSchedule`, a preset name or a YAML path.
        options: :class:`GuidanceOptions` (or a mapping of its fields).

    Use :meth:`run`; the sampler holds no per-run state between calls.
    """

    def __init__(self, backbone: Any, schedule: Any = "fast_posthoc_fit",
                 options: Union[GuidanceOptions, Mapping[str, Any], None] = None) -> None:
        check_backbone(backbone)
        self.backbone = backbone
        self.schedule = load_schedule(schedule)
        self.options = GuidanceOptions.coerce(options)
        self.convention = TimeConvention.parse(backbone.time_convention)
        self.num_steps = int(self.options.num_steps or self.schedule.num_steps)
        self.resolved = self.schedule.resolve(self.num_steps)
        self.dtype = torch.promote_types(backbone.dtype, torch.float32)
        self.device = torch.device(backbone.device)
        gr = self.options.grid_resolution
        if gr is None:
            gr = getattr(backbone, "guidance_resolution", None) or \
                min(int(backbone.default_resolution), 65)
        self.grid_resolution = int(gr)
        self.final_resolution = int(self.options.final_resolution or
                                    backbone.default_resolution)

    def run(self, observations: Observations, *, seed: int = 0, condition: Any = None,
            latents: Optional[torch.Tensor] = None, progress: bool = True,
            callbacks: Sequence[Callable[[StepState], Any]] = ()) -> Reconstruction:
        """Sample one object guided by ``observations``.

        Args:
            observations: targets in the image-aligned frame (:class:`hoiguide.Observations`).
            seed: seed of the initial noise (same seed, same machine -> same result).
            condition: a precomputed ``backbone.encode_condition(observations.object_image)``.
            latents: ``(1, *latent_shape)`` initial noise instead of drawing it from ``seed``.
            progress: tqdm bars over the flow steps and the current phase's inner iterations
                (when tqdm is installed); phase summaries are logged at INFO either way.
            callbacks: called with a :class:`StepState` before each flow update.

        Returns:
            :class:`hoiguide.Reconstruction` (meshes in the image-aligned frame, metres).

        Raises:
            NonFiniteLossError: a non-finite term with ``on_nonfinite: raise``.
        """
        if not isinstance(observations, Observations):
            raise TypeError(f"GuidedSampler.run: expected observations as hoiguide.Observations, "
                            f"got {type(observations).__name__}")
        _check_callbacks(callbacks)
        t_start = time.perf_counter()
        ctx = RunContext.create(self.backbone, self.schedule, self.options, self.convention,
                                self.grid_resolution, self.dtype, observations, seed, progress)
        cond = condition if condition is not None else \
            self.backbone.encode_condition(observations.object_image)
        x = self._initial_latent(latents, seed)
        x = self._sample(ctx, x, cond, callbacks)
        return self._finish(ctx, x, seed, t_start)

    # ---- parts of run(), in the order they happen -------------------------------------------
    def _sample(self, ctx: RunContext, x: torch.Tensor, cond: Any,
                callbacks: Sequence[Callable[[StepState], Any]]) -> torch.Tensor:
        """The sampling loop from the initial noise ``x`` (guided steps per the schedule,
        callbacks, flow updates), then the after-sampling phases: the final sample."""
        bb, sched, n = self.backbone, self.schedule, self.num_steps
        sig = bb.sigmas(n)
        if not isinstance(sig, torch.Tensor) or sig.ndim != 1 or sig.shape[0] != n + 1:
            raise ValueError(f"{type(bb).__name__}.sigmas({n}) must return a 1-d tensor of "
                             f"{n + 1} values, got {getattr(sig, 'shape', sig)!r}")
        log.debug("guided sampling with schedule %r:\n%s", sched.name, self.resolved.table())
        ctx.progress.start(n, sched.name)
        t_sampling = time.perf_counter()
        try:
            for i in range(n):
                s, s_next = float(sig[i]), float(sig[i + 1])
                phase = None if ctx.stopped else sched.phase_at(i, n)
                if phase is None and s_next == s:
                    ctx.progress.step_done()
                    continue  # zero-length step: nothing to do without guidance
                w = sched.guidance_scale_at(i, n)
                cond_i = self._condition_at(ctx, i, cond)
                with torch.no_grad():
                    v = bb.velocity(x, s, cond_i, w)
                inner, x_next = InnerResult(x, v, None, {}), None
                if phase is not None:
                    ctx.progress.phase(phase.name)
                    try:
                        inner, x_next = self._guided_step(ctx, phase, sched.terms_at(i, n), i,
                                                          x, v, s, s_next, cond_i, w)
                    except StopGuidance:
                        ctx.stopped = True
                x, v = inner.x, inner.v
                if callbacks:
                    state = self._state(ctx, i, n, s, s_next, w, phase, x, v, inner)
                    for cb in callbacks:
                        cb(state)
                x = x_next if x_next is not None else \
                    flow_update("euler", self.convention).step(x, v, s, s_next)
                ctx.progress.step_done()
        finally:
            ctx.progress.close()
        ctx.timings.phases["sampling"] = time.perf_counter() - t_sampling
        for phase in sched.post_phases:  # after-sampling phases on the final sample
            if ctx.stopped:
                break
            try:
                x = optimise_phase(ctx, phase, phase.terms(0, 1), None, x, None, None).x
            except StopGuidance:
                ctx.stopped = True
        return x

    def _condition_at(self, ctx: RunContext, step: int, cond: Any) -> Any:
        """The generator's condition at flow step ``step`` (here always ``cond``; the clip
        sampler may switch between frames)."""
        return cond

    def _initial_latent(self, latents: Optional[torch.Tensor], seed: int) -> torch.Tensor:
        bb = self.backbone
        if latents is None:
            return initial_noise(bb, 1, seed=seed)
        x = check_latent(bb, latents, "latents").to(bb.device, bb.dtype)
        if x.shape[0] != 1:
            raise ValueError(f"latents: expected a batch of 1, got {tuple(x.shape)}")
        return x

    def _guided_step(self, ctx: RunContext, phase: Any, terms: Sequence[Any], i: int,
                     x: torch.Tensor, v: torch.Tensor, s: float, s_next: float, cond: Any,
                     w: float) -> tuple[InnerResult, torch.Tensor]:
        """The phase's inner loop(s) at step ``i`` and its update rule: ``(inner result,
        the sample at s_next)``. ``repeats: r`` goes back from ``s_next`` to ``s`` with
        fresh seeded noise and calls the model again between repeats (time travel)."""
        update = flow_update(phase.update, self.convention)
        x_next = x
        for r in range(phase.repeats):
            if r > 0:
                gen = torch.Generator(device="cpu").manual_seed(
                    (ctx.seed * 1_000_003 + i * 101 + r) % (2**63))
                noise = torch.randn(x_next.shape, generator=gen, dtype=torch.float32)
                x = update.back(x_next, s_next, s, noise)
                with torch.no_grad():
                    v = self.backbone.velocity(x, s, cond, w)
            inner = optimise_phase(ctx, phase, terms, i, x, v, s)
            x_next = update.step(inner.x, inner.v, s, s_next, x_model=x, v_model=v)
            if not update.moves(s, s_next):
                break  # a zero-length step: repeating it changes nothing but the cost
        return inner, x_next

    def _state(self, ctx: RunContext, i: int, n: int, s: float, s_next: float, w: float,
               phase: Any, x: torch.Tensor, v: torch.Tensor, inner: InnerResult) -> StepState:
        dt = torch.promote_types(x.dtype, torch.float32)
        with torch.no_grad():
            return StepState(
                step=i, num_steps=n, sigma=s, sigma_next=s_next, guidance_scale=w,
                phase=None if phase is None else phase.name, latent=x.detach(),
                velocity=v.detach(),
                clean=predict_clean(x.to(dt), v.to(dt), s, self.convention),
                hand_similarity=ctx.hand.similarity().detach(),
                object_similarity=ctx.object.similarity().detach(),
                hand_mesh=ctx.hand_mesh().detach(), object_mesh=inner.object_mesh,
                losses=dict(inner.losses), history=ctx.history)

    def _finish(self, ctx: RunContext, x: torch.Tensor, seed: int,
                t_start: float) -> Reconstruction:
        """Final decode at ``final_resolution``, floaters removed, meshes placed."""
        t0 = time.perf_counter()
        mesh_gen = self.final_mesh(ctx, x)
        with torch.no_grad():
            obj, hand = ctx.place_object(mesh_gen).detach(), ctx.hand_mesh().detach()
            kp = ctx.hand_keypoints_placed()
        ctx.timings.phases["final_decode"] = time.perf_counter() - t0
        if mesh_gen.is_empty and ctx.status == "ok":
            ctx.status = "empty object mesh"
        ctx.timings.total = time.perf_counter() - t_start
        return Reconstruction(
            object_mesh=obj, hand_mesh=hand,
            object_similarity=ctx.object.similarity().detach(),
            hand_similarity=ctx.hand.similarity().detach(), gen_to_image=ctx.gen_to_image,
            latent=x.detach(), history=ctx.history, timings=ctx.timings.to_dict(),
            schedule=self.schedule_info(), seed=int(seed), status=ctx.status,
            counters=dict(ctx.counters),
            hand_keypoints_3d=None if kp is None else kp.detach(),
            object_mesh_generator=mesh_gen.detach())

    def final_mesh(self, ctx: RunContext, x: torch.Tensor) -> Mesh:
        """The final sample's object in the generator frame: decoded at
        ``final_resolution``, floaters removed (``counters["components_raw"]`` /
        ``["components"]``); empty with ``ctx.status`` set when the field is non-finite."""
        with torch.no_grad():
            grid = decode_grid(self.backbone, x, self.final_resolution,
                               sparse=self.options.sparse)[0]
            if not bool(torch.isfinite(grid).all()):
                mesh_gen = Mesh.empty(self.dtype, self.device)
                if ctx.status == "ok":
                    ctx.status = "non-finite final latent"
            else:
                mesh_gen = extract_isosurface(grid.to(self.dtype), self.backbone.bounds)
            raw = 0 if mesh_gen.is_empty else int(connected_components(mesh_gen).max()) + 1
            if raw and self.options.remove_floaters:
                mesh_gen = remove_small_components(mesh_gen, self.options.floater_fraction)
            ctx.counters["components_raw"] = raw
            ctx.counters["components"] = \
                0 if mesh_gen.is_empty else int(connected_components(mesh_gen).max()) + 1
        return mesh_gen.detach()

    def schedule_info(self) -> dict[str, Any]:
        """What a result records of the schedule: name, source, steps, the resolved table,
        per-phase steps / iterations / learning rates, and the full definition."""
        sched, resolved = self.schedule, self.resolved
        return {
            "name": sched.name, "source": sched.source, "num_steps": self.num_steps,
            "resolved": resolved.table(),
            "phases": [{"name": p.name, "steps": list(p.steps),
                        "after_sampling": p.after_sampling, "iterations": p.iterations,
                        "learning_rates": dict(p.learning_rates)} for p in resolved],
            "definition": sched.to_dict(),
        }


def _check_callbacks(callbacks: Sequence[Any]) -> None:
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks: expected callables, got {type(cb).__name__}")
