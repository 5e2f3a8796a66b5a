"""The inner optimisation: ``K`` iterations of one phase at one flow step.

Each iteration: clean estimate ``x_hat = predict_clean(x, v, sigma)`` (or the sample itself
after sampling) -> decoded SDF on the inner-loop grid -> differentiable iso-surface -> object
placed in the image frame -> ``render([hand, object])`` -> the phase's weighted loss terms ->
backward -> one step of the phase's optimiser over its parameter groups (``velocity``,
``latent``, ``hand.*``, ``object.*``). A fresh optimiser is built per call (the reference's
"fresh optimiser each diffusion step"); the similarities persist in the :class:`RunContext`.
What is placed, rendered and scored, which tensors each group holds and what ``keep_best``
compares are the context's (``evaluate``, ``similarity_groups``, ``keep_best_score``): the
multi-frame context of :mod:`hoiguide.guidance.clip` overrides them to score several frames.

Skipped iterations are recorded in the history with the reason: an empty iso-surface when the
phase needs the object, or a non-finite field / term / gradient (then handled per the
schedule's ``on_nonfinite``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from hoiguide.guidance.context import RunContext
from hoiguide.guidance.flow import predict_clean
from hoiguide.guidance.records import HistoryRecord
from hoiguide.losses import required_fields
from hoiguide.types import Mesh

__all__ = ["InnerResult", "optimise_phase"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InnerResult:
    """What a phase's inner loop leaves: the (optimised) sample and velocity, the last object
    mesh in the image frame (``None`` if none was decoded) and the last evaluated loss terms
    (unweighted)."""

    x: torch.Tensor
    v: Optional[torch.Tensor]
    object_mesh: Optional[Mesh]
    losses: dict[str, float]


def _parameters(ctx: RunContext, groups: Sequence[str], x: torch.Tensor,
                v: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor],
                                                    dict[str, Any]]:
    """Detached copies of ``x`` / ``v`` (leaves when optimised) and the phase's parameter
    groups by name; the similarities' parameters get ``requires_grad`` as the groups say."""
    x_opt = x.detach().to(ctx.dtype)
    v_opt = None if v is None else v.detach().to(ctx.dtype)
    params: dict[str, Any] = {}
    if "velocity" in groups:
        v_opt = v_opt.clone().requires_grad_(True)
        params["velocity"] = v_opt
    if "latent" in groups:
        x_opt = x_opt.clone().requires_grad_(True)
        params["latent"] = x_opt
    for key, p in ctx.similarity_groups().items():
        for tensor in _tensors(p):
            tensor.requires_grad_(key in groups)
        if key in groups:
            params[key] = p
    return x_opt, v_opt, params


def _tensors(p: Any) -> list[torch.Tensor]:
    """The tensors of a parameter group (one tensor, or a list of them per frame)."""
    return [p] if isinstance(p, torch.Tensor) else list(p)


def _freeze(ctx: RunContext) -> None:
    for p in ctx.similarity_groups().values():
        for tensor in _tensors(p):
            tensor.requires_grad_(False)
            tensor.grad = None


def optimise_phase(ctx: RunContext, phase: Any, terms: Sequence[Any], step: Optional[int],
                   x: torch.Tensor, v: Optional[torch.Tensor],
                   sigma: Optional[float]) -> InnerResult:
    """Run ``phase``'s inner iterations at flow step ``step`` (``None``: after sampling, when
    ``v`` and ``sigma`` are ``None`` and ``x`` is the final sample).

    Args:
        ctx: the run (targets, similarities, history, counters).
        phase: the :class:`hoiguide.phases.Phase`; ``terms`` its weighted terms at this step.
        x, v: the sample ``(1, *latent_shape)`` and the CFG velocity at ``sigma``.
    Returns:
        :class:`InnerResult`; the similarities in ``ctx`` are updated in place.
    Raises:
        NonFiniteLossError / StopGuidance: per the schedule's ``on_nonfinite``.
    """
    iters = phase.iterations
    if ctx.options.max_iterations is not None:
        iters = min(iters, ctx.options.max_iterations)
    terms = ctx.active_terms(phase, terms)
    need = required_fields(terms)
    need_render = any(f == "render" or f.startswith("render.") for f in need)
    need_amodal = "render.amodal" in need
    need_object = any(g.startswith("object.") or g in ("velocity", "latent")
                      for g in phase.optimize) or "object_mesh" in need
    x_opt, v_opt, params = _parameters(ctx, phase.optimize, x, v)
    decode_each = "velocity" in params or "latent" in params
    optimizer = phase.make_optimizer(params)

    def clean_estimate() -> torch.Tensor:
        if v_opt is None:  # after sampling: the sample is data
            return x_opt
        return predict_clean(x_opt, v_opt, sigma, ctx.convention)

    mesh_gen: Optional[Mesh] = None
    if not decode_each:  # only the similarities move: one decode serves every iteration
        with torch.no_grad():
            mesh_gen = ctx.decode(clean_estimate(), phase.name, step, 0)
    last_obj: Optional[Mesh] = None
    last_vals: dict[str, float] = {}
    first_total = last_total = float("nan")
    best: Optional[tuple[float, dict[str, torch.Tensor], Optional[Mesh], dict]] = None
    t_phase = time.perf_counter()
    ctx.progress.inner_start(phase.name, step, iters)
    for it in range(iters):
        ctx.progress.inner_update(it, last_total)
        optimizer.zero_grad(set_to_none=True)
        if decode_each:
            mesh_gen = ctx.decode(clean_estimate(), phase.name, step, it)
        if mesh_gen is None:  # a non-finite field, handled by ctx.decode
            ctx.skipped(step, phase.name, it, "nonfinite:decoded SDF")
            continue
        if mesh_gen.is_empty and need_object:
            ctx.counters["skipped_empty_surface"] += 1
            if ctx.counters["skipped_empty_surface"] <= 3:
                log.warning("phase %r, %s, inner iteration %d: empty iso-surface, iteration "
                            "skipped", phase.name,
                            "after sampling" if step is None else f"step {step}", it)
            ctx.skipped(step, phase.name, it, "empty_surface")
            continue
        total, values, obj = ctx.evaluate(terms, mesh_gen, phase.name, step, it, need_render,
                                          need_amodal)
        vals = {k: float(val.detach()) for k, val in values.items()}
        bad = [k for k, val in vals.items() if not math.isfinite(val)]
        if bad or not math.isfinite(float(total.detach())):
            label = bad[0] if bad else "total"
            ctx.skipped(step, phase.name, it, f"nonfinite:{label}", vals)
            ctx.nonfinite(f"loss term {label!r}", phase.name, step, it,
                          vals.get(label, float(total.detach())))
            continue
        tot = float(total.detach())
        score = ctx.keep_best_score(tot) if phase.keep_best else None
        if score is not None and (best is None or score < best[0]):
            best = (score, {k: [t.clone() for t in _tensors(p)] for k, p in params.items()},
                    obj, vals)
        if total.requires_grad:
            with ctx.timings.part("backward"):
                total.backward()
            badg = [g["name"] for g in optimizer.param_groups
                    if any(p.grad is not None and not bool(torch.isfinite(p.grad).all())
                           for p in g["params"])]
            if badg:
                ctx.skipped(step, phase.name, it, f"nonfinite:grad {badg[0]}", vals)
                ctx.nonfinite(f"gradient of {badg[0]!r}", phase.name, step, it)
                continue
            with ctx.timings.part("step"):
                optimizer.step()
        if it == 0 or not math.isfinite(first_total):
            first_total = tot
        last_total = tot
        ctx.counters["iterations"] += 1
        ctx.history.add(HistoryRecord(step, phase.name, it, vals, tot))
        last_obj, last_vals = obj, vals
    ctx.progress.inner_end()
    if best is not None:  # the best evaluated iterate (the last step's result is unevaluated)
        with torch.no_grad():
            for k, p in params.items():
                for tensor, value in zip(_tensors(p), best[1][k]):
                    tensor.copy_(value)
        last_obj, last_vals = best[2], best[3]
        ctx.counters["kept_best"] = ctx.counters.get("kept_best", 0) + 1
        log.debug("phase %r: kept the best iterate (loss %.4g; last evaluated %.4g)",
                  phase.name, best[0], last_total)
        last_total = best[0]
    _freeze(ctx)
    dt = time.perf_counter() - t_phase
    ctx.timings.phases[phase.name] += dt
    log.info("phase %r %s: %d iterations, loss %.4g -> %.4g, %.2f s", phase.name,
             "after sampling" if step is None else f"step {step}", iters, first_total,
             last_total, dt)
    if last_obj is None and mesh_gen is not None and not mesh_gen.is_empty:
        with torch.no_grad():
            last_obj = ctx.place_object(mesh_gen)
    return InnerResult(x=x_opt.detach().to(x.dtype), v=None if v_opt is None else v_opt.detach(),
                       object_mesh=None if last_obj is None else last_obj.detach(),
                       losses=last_vals)
