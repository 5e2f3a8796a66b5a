"""Flow updates: how a guided step moves the sample from ``sigma`` to ``sigma_next``, and back.

The sampling loop asks one small object (diffusers' scheduler contract, without the state):

* ``step(x, v, sigma, sigma_next, x_model=..., v_model=...)`` returns the sample at
  ``sigma_next`` from the (possibly optimised) sample ``x`` and velocity ``v``; ``x_model`` /
  ``v_model`` are the sample and the model's own velocity before optimisation;
* ``back(x_next, sigma_next, sigma, noise)`` returns a sample at the noisier ``sigma`` (time
  travel: a phase with ``repeats: r`` runs its inner loop and update ``r`` times per step,
  going back between repeats with fresh seeded noise).

Two rules, named by a phase's ``update:`` key:

``euler`` (the reference's)
    ``x_next = x + (sigma_next - sigma) v``. The clean estimate of the next step moves by only
    ``(sigma_next - sigma) / (1 - sigma)`` (data_at_1) of the optimised change.
``renoise``
    Keep the optimised clean estimate ``x_hat = predict_clean(x, v, sigma)`` and re-noise it
    with the noise estimate of the model's own velocity,
    ``eps_hat = predict_noise(x_model, v_model, sigma)``: ``x_next = a(sigma_next) x_hat +
    b(sigma_next) eps_hat`` (``a = sigma, b = 1 - sigma`` for data_at_1), so the whole
    correction is carried to the next step.

Both use the same ``back``: :func:`hoiguide.guidance.flow.noise_back`. All arithmetic is in at
least float32; the result has ``x``'s dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from hoiguide.guidance.flow import (
    TimeConvention,
    add_noise,
    euler_step,
    noise_back,
    predict_clean,
    predict_noise,
)

__all__ = ["FlowUpdate", "EulerUpdate", "RenoiseUpdate", "flow_update", "UPDATE_RULES"]


@dataclass(frozen=True)
class FlowUpdate:
    """Base of the update rules (see the module docstring); ``convention`` is the backbone's
    time convention."""

    convention: TimeConvention
    name = "base"

    def step(self, x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float, *,
             x_model: Optional[torch.Tensor] = None,
             v_model: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def back(self, x_next: torch.Tensor, sigma_next: float, sigma: float,
             noise: torch.Tensor) -> torch.Tensor:
        """From ``sigma_next`` back to the noisier ``sigma`` with ``noise`` (standard normal,
        ``x_next``'s shape): keeps the data weight at ``sigma`` and a total noise standard
        deviation ``b(sigma)``."""
        dt = torch.promote_types(x_next.dtype, torch.float32)
        with torch.no_grad():
            return noise_back(x_next.to(dt), sigma_next, sigma, noise.to(x_next.device, dt),
                              self.convention).to(x_next.dtype)

    def moves(self, sigma: float, sigma_next: float) -> bool:
        """Whether a step from ``sigma`` to ``sigma_next`` changes the sample at all."""
        return sigma_next != sigma


@dataclass(frozen=True)
class EulerUpdate(FlowUpdate):
    """``x_next = x + (sigma_next - sigma) v`` (the reference's rule)."""

    name = "euler"

    def step(self, x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float, *,
             x_model: Optional[torch.Tensor] = None,
             v_model: Optional[torch.Tensor] = None) -> torch.Tensor:
        dt = torch.promote_types(x.dtype, torch.float32)
        with torch.no_grad():
            return euler_step(x.to(dt), v.to(dt), sigma, sigma_next).to(x.dtype)


@dataclass(frozen=True)
class RenoiseUpdate(FlowUpdate):
    """``x_next = add_noise(predict_clean(x, v), predict_noise(x_model, v_model), sigma_next)``:
    the optimised clean estimate, re-noised with the model's own noise estimate."""

    name = "renoise"

    def step(self, x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float, *,
             x_model: Optional[torch.Tensor] = None,
             v_model: Optional[torch.Tensor] = None) -> torch.Tensor:
        x_model = x if x_model is None else x_model
        v_model = v if v_model is None else v_model
        dt = torch.promote_types(x.dtype, torch.float32)
        with torch.no_grad():
            clean = predict_clean(x.to(dt), v.to(dt), sigma, self.convention)
            eps = predict_noise(x_model.to(dt), v_model.to(dt), sigma, self.convention)
            return add_noise(clean, eps, sigma_next, self.convention).to(x.dtype)

    def moves(self, sigma: float, sigma_next: float) -> bool:
        return True  # even a zero-length step replaces the noise estimate


UPDATE_RULES = {"euler": EulerUpdate, "renoise": RenoiseUpdate}
"""The names a phase's ``update:`` key accepts."""


def flow_update(name: str, convention: "TimeConvention | str") -> FlowUpdate:
    """The update rule called ``name`` (``"euler"`` or ``"renoise"``) for a backbone's time
    convention."""
    if name not in UPDATE_RULES:
        raise ValueError(f"update: expected one of {', '.join(UPDATE_RULES)}, got {name!r}")
    return UPDATE_RULES[name](TimeConvention.parse(convention))
