"""Rectified-flow arithmetic for both time conventions: Euler step, clean/noise estimates.

A rectified flow interpolates on a straight line between a data sample ``x_data`` and Gaussian
noise ``eps``; a backbone declares which end of its time axis ``sigma in [0, 1]`` holds the data:

* ``"data_at_1"`` (Hunyuan3D-2, verified in ``hy3dgen.shapegen.pipelines`` /
  ``schedulers``): ``x_sigma = sigma * x_data + (1 - sigma) * eps``, the model predicts
  ``v = dx/dsigma = x_data - eps``, and sampling runs sigma from 0 (noise) up to 1 (data).
* ``"data_at_0"`` (diffusers' ``FlowMatchEulerDiscreteScheduler`` default, SD3/Flux):
  ``x_sigma = (1 - sigma) * x_data + sigma * eps``, ``v = dx/dsigma = eps - x_data``, and
  sampling runs sigma from 1 (noise) down to 0 (data).

In both conventions ``v`` is the derivative of ``x`` with respect to ``sigma``, so the Euler step
is the same formula ``x_next = x + (sigma_next - sigma) * v``; only the clean-sample and noise
estimates differ:

======================  ==============================  ==============================
quantity                data_at_1                       data_at_0
======================  ==============================  ==============================
clean estimate x_hat     x + (1 - sigma) * v              x - sigma * v
d x_hat / d v            1 - sigma                        -sigma
noise estimate           x - sigma * v                    x + (1 - sigma) * v
v from a clean target    (x_hat - x) / (1 - sigma)        (x - x_hat) / sigma
data / noise weights     a = sigma, b = 1 - sigma         a = 1 - sigma, b = sigma
======================  ==============================  ==============================

(``x_sigma = a(sigma) x_data + b(sigma) eps``; :func:`noise_back` uses ``a`` and ``b``.)

All functions are pure, differentiable and work on any tensor shape. ``sigma`` may be a Python
float, a 0-d tensor, or a 1-d tensor with one value per batch element (dimension 0), which is
broadcast over the remaining dimensions. No scheduler object is involved.
"""

from __future__ import annotations

from typing import Union

import torch

from hoiguide.backbones.base import TimeConvention

__all__ = [
    "TimeConvention",
    "euler_step",
    "predict_clean",
    "predict_clean_derivative",
    "predict_noise",
    "velocity_from_clean",
    "add_noise",
    "noise_back",
]

SigmaLike = Union[float, torch.Tensor]


def _sigma_like(sigma: SigmaLike, x: torch.Tensor, name: str = "sigma") -> SigmaLike:
    """Make ``sigma`` broadcast against ``x``: a (B,) tensor becomes (B, 1, ..., 1)."""
    if not isinstance(sigma, torch.Tensor):
        return float(sigma)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim == 1 and x.ndim >= 1 and sigma.shape[0] == x.shape[0]:
        return sigma.reshape(-1, *([1] * (x.ndim - 1)))
    if sigma.ndim == 1 and sigma.shape[0] == 1:
        return sigma.reshape(())
    b = x.shape[0] if x.ndim else 1
    raise ValueError(f"{name}: expected a float, a 0-d tensor or a ({b},) tensor (one per batch "
                     f"element), got shape {tuple(sigma.shape)} for a sample of shape "
                     f"{tuple(x.shape)}")


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, an: str, bn: str) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"expected tensors for {an} and {bn}, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{an} and {bn} must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: SigmaLike,
               sigma_next: SigmaLike) -> torch.Tensor:
    """One Euler step of the flow ODE: ``x + (sigma_next - sigma) * v``.

    Valid for both time conventions (``v`` is ``dx/dsigma`` in both). The result has the dtype
    that torch's type promotion gives (pass ``x`` in float32 or wider to step in full precision;
    a 0-d float32 sigma does not promote a half-precision ``v``, which is what hy3dgen's
    scheduler does too).

    Args:
        x: current sample ``x_sigma``, any shape, in the backbone's latent space.
        v: velocity at ``(x, sigma)``, same shape as ``x``.
        sigma, sigma_next: current and next flow time (float, 0-d or per-batch ``(B,)``).
    """
    _check_same_shape(x, v, "x", "v")
    s = _sigma_like(sigma, x)
    sn = _sigma_like(sigma_next, x, "sigma_next")
    return x + (sn - s) * v


def predict_clean(x: torch.Tensor, v: torch.Tensor, sigma: SigmaLike,
                  convention: TimeConvention | str) -> torch.Tensor:
    """Clean-sample (data) estimate from ``(x_sigma, sigma, v)``.

    ``data_at_1``: ``x + (1 - sigma) * v``; ``data_at_0``: ``x - sigma * v``. Exact when ``v`` is
    the straight-line velocity of the pair ``(x_data, eps)`` that produced ``x``. Differentiable in
    ``x`` and ``v``; ``d x_hat / d v`` is :func:`predict_clean_derivative`.
    """
    _check_same_shape(x, v, "x", "v")
    c = TimeConvention.parse(convention)
    s = _sigma_like(sigma, x)
    if c is TimeConvention.DATA_AT_1:
        return x + (1.0 - s) * v
    return x - s * v


def predict_clean_derivative(sigma: SigmaLike, convention: TimeConvention | str) -> SigmaLike:
    """``d predict_clean / d v`` (a scalar per sigma): ``1 - sigma`` (data_at_1) or ``-sigma``."""
    c = TimeConvention.parse(convention)
    return (1.0 - sigma) if c is TimeConvention.DATA_AT_1 else -sigma


def predict_noise(x: torch.Tensor, v: torch.Tensor, sigma: SigmaLike,
                  convention: TimeConvention | str) -> torch.Tensor:
    """Noise estimate from ``(x_sigma, sigma, v)``.

    ``data_at_1``: ``x - sigma * v``; ``data_at_0``: ``x + (1 - sigma) * v``.
    """
    _check_same_shape(x, v, "x", "v")
    c = TimeConvention.parse(convention)
    s = _sigma_like(sigma, x)
    if c is TimeConvention.DATA_AT_1:
        return x - s * v
    return x + (1.0 - s) * v


def velocity_from_clean(x: torch.Tensor, x_clean: torch.Tensor, sigma: SigmaLike,
                        convention: TimeConvention | str) -> torch.Tensor:
    """The velocity whose clean estimate at ``(x, sigma)`` is ``x_clean`` (inverse of
    :func:`predict_clean`).

    ``data_at_1``: ``(x_clean - x) / (1 - sigma)``; ``data_at_0``: ``(x - x_clean) / sigma``.
    Undefined at the data end of the time axis (sigma = 1, resp. 0), where the clean estimate no
    longer depends on ``v``: a float sigma there raises ValueError, a tensor gives inf/nan.
    """
    _check_same_shape(x, x_clean, "x", "x_clean")
    c = TimeConvention.parse(convention)
    s = _sigma_like(sigma, x)
    if not isinstance(s, torch.Tensor) and s == c.data_sigma:
        raise ValueError(f"velocity_from_clean: sigma={s} is the data end of the "
                         f"{c.value} convention, where the velocity is not determined")
    if c is TimeConvention.DATA_AT_1:
        return (x_clean - x) / (1.0 - s)
    return (x - x_clean) / s


def add_noise(x_clean: torch.Tensor, noise: torch.Tensor, sigma: SigmaLike,
              convention: TimeConvention | str) -> torch.Tensor:
    """The point at time ``sigma`` on the straight line between ``x_clean`` and ``noise``.

    ``data_at_1``: ``sigma * x_clean + (1 - sigma) * noise``; ``data_at_0``:
    ``(1 - sigma) * x_clean + sigma * noise``. (hy3dgen's ``scheduler.scale_noise`` uses the
    data_at_0 formula although its sampler is data_at_1; use this function instead.)
    """
    _check_same_shape(x_clean, noise, "x_clean", "noise")
    c = TimeConvention.parse(convention)
    s = _sigma_like(sigma, x_clean)
    if c is TimeConvention.DATA_AT_1:
        return s * x_clean + (1.0 - s) * noise
    return (1.0 - s) * x_clean + s * noise


def _weights(sigma: SigmaLike, c: TimeConvention) -> tuple[SigmaLike, SigmaLike]:
    """``(a, b)`` with ``x_sigma = a x_data + b eps`` (see the module table)."""
    if c is TimeConvention.DATA_AT_1:
        return sigma, 1.0 - sigma
    return 1.0 - sigma, sigma


def noise_back(x: torch.Tensor, sigma_from: float, sigma_to: float, noise: torch.Tensor,
               convention: TimeConvention | str) -> torch.Tensor:
    """Move a sample BACK along the flow, from ``sigma_from`` to the noisier ``sigma_to``,
    with fresh Gaussian noise (the forward noising kernel of the straight-line interpolant;
    used by "time travel" guidance).

    With ``x_sigma = a(sigma) x_data + b(sigma) eps``:
    ``x_to = (a_to / a_from) x_from + sqrt(b_to^2 - (a_to / a_from)^2 b_from^2) * noise``,
    which keeps the data weight ``a_to`` and a total noise standard deviation ``b_to``:
    ``data_at_1``: ``a = sigma``, ``b = 1 - sigma``; ``data_at_0``: ``a = 1 - sigma``,
    ``b = sigma``.

    Args:
        x: the sample at ``sigma_from`` (any shape).
        sigma_from, sigma_to: floats; ``sigma_to`` must be at least as noisy as
            ``sigma_from`` and ``sigma_from`` must not be pure noise.
        noise: standard Gaussian noise, the shape of ``x``.
    """
    _check_same_shape(x, noise, "x", "noise")
    c = TimeConvention.parse(convention)
    a_f, b_f = _weights(float(sigma_from), c)
    a_t, b_t = _weights(float(sigma_to), c)
    if a_f <= 0:
        raise ValueError(f"noise_back: sigma_from={sigma_from} is pure noise in the "
                         f"{c.value} convention")
    k = a_t / a_f
    var = b_t * b_t - (k * b_f) ** 2
    if var < -1e-12 or k > 1 + 1e-12:
        raise ValueError(f"noise_back: sigma_to={sigma_to} is not noisier than "
                         f"sigma_from={sigma_from} in the {c.value} convention")
    return k * x + (max(var, 0.0) ** 0.5) * noise
