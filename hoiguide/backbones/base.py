"""The FlowBackbone protocol: what the guidance engine needs from an image-to-3D flow model.

A backbone is any object with the attributes and methods below (structural typing: no base
class to inherit, although inheriting :class:`FlowBackbone` explicitly is allowed). Everything
else -- sampling loops, grids, iso-surfaces, rendering, losses -- belongs to the library.

Frames and units
    The backbone works in its own, image-independent **generator frame**: the normalised box in
    which it produces shapes (Hunyuan3D-2: about ``[-1, 1]^3``, axes as in its training meshes).
    ``bounds`` is the box the SDF is decoded in, in generator units. hoiguide places meshes from
    this frame into the image-aligned camera frame with a similarity (see ``hoiguide.types``).

Flow time
    ``time_convention`` says which end of ``sigma in [0, 1]`` holds data (see
    :mod:`hoiguide.guidance.flow`); ``sigmas(num_steps)`` is the sampling grid from noise to data;
    ``velocity`` is ``dx/dsigma`` in that convention.

SDF sign
    ``decode_sdf`` returns values that are **negative inside** the shape (it need not be a metric
    distance: Hunyuan3D-2's decoder gives a truncated, logit-like field that saturates near +-1).

Optional methods
    ``sdf_query(latent, **kwargs) -> query`` with ``query(points) -> (B, P)`` equal to
    ``decode_sdf(latent, points, **kwargs)``: the latent-side work (Hunyuan3D-2's VAE
    transformer) runs once in ``sdf_query`` and each ``query`` call only decodes points, so
    sparse decoding (:mod:`hoiguide.geometry.sparse`), which queries a grid level by level,
    does not repeat it. Backbones without it work unchanged:
    :func:`hoiguide.geometry.sparse.sdf_query` falls back to ``decode_sdf``.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any, Protocol, Sequence, Tuple, runtime_checkable

import torch

__all__ = ["FlowBackbone", "Bounds", "check_backbone", "check_latent", "normalize_bounds"]

log = logging.getLogger(__name__)

Bounds = Tuple[Tuple[float, float, float], Tuple[float, float, float]]
"""``((xmin, ymin, zmin), (xmax, ymax, zmax))`` in generator units."""


class TimeConvention(str, Enum):
    """Which end of the flow time axis holds the data (see :mod:`hoiguide.guidance.flow` for the arithmetic of each).

    Members compare equal to their string values, so ``"data_at_1"`` can be passed anywhere a
    ``TimeConvention`` is expected.
    """

    DATA_AT_1 = "data_at_1"
    DATA_AT_0 = "data_at_0"

    @property
    def data_sigma(self) -> float:
        """The sigma at which samples are data (end of sampling)."""
        return 1.0 if self is TimeConvention.DATA_AT_1 else 0.0

    @property
    def noise_sigma(self) -> float:
        """The sigma at which samples are pure noise (start of sampling)."""
        return 0.0 if self is TimeConvention.DATA_AT_1 else 1.0

    @classmethod
    def parse(cls, value: "TimeConvention | str") -> "TimeConvention":
        """Return the member for ``value`` or raise a ValueError that lists the valid names."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value))
        except ValueError:
            raise ValueError(f"unknown time convention {value!r}; expected one of "
                             f"{[m.value for m in cls]}") from None

    def __str__(self) -> str:  # "data_at_1" rather than "TimeConvention.DATA_AT_1"
        return self.value


@runtime_checkable
class FlowBackbone(Protocol):
    """Protocol for a rectified-flow image-to-3D generator (latent -> SDF).

    Attributes:
        latent_shape: shape of one latent sample without the batch dimension
            (Hunyuan3D-2: ``(3072, 64)``).
        dtype: floating dtype of latents and velocities the backbone computes in.
        device: device of its tensors.
        time_convention: ``"data_at_1"`` or ``"data_at_0"`` (:class:`TimeConvention`).
        bounds: the decode box ``((xmin, ymin, zmin), (xmax, ymax, zmax))`` in generator units.
        default_resolution: grid points per axis for a default dense decode (e.g. 385).
    """

    latent_shape: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    time_convention: TimeConvention
    bounds: Bounds
    default_resolution: int

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The sampling time grid, a 1-d float tensor of ``num_steps + 1`` values (CPU is fine).

        Step ``i`` evaluates the velocity at ``sigmas[i]`` and moves the sample to
        ``sigmas[i + 1]``. It starts at the noise end and is monotone towards the data end of the
        backbone's convention; consecutive equal values (a zero-length step, as hy3dgen's final
        step) are allowed.
        """
        ...

    def encode_condition(self, image: Any) -> Any:
        """Encode the conditioning image once; the result is passed back to :meth:`velocity`.

        Args:
            image: the object image with background removed: a ``PIL.Image`` (RGBA or RGB) or an
                ``(H, W, 3|4)`` uint8 array (alpha = object mask). A backbone may accept more.
        Returns:
            An opaque condition object (tensors on :attr:`device`), no gradients.
        """
        ...

    def velocity(self, latent: torch.Tensor, sigma: float | torch.Tensor, condition: Any,
                 guidance_scale: float | None = None) -> torch.Tensor:
        """Flow velocity ``dx/dsigma`` at ``(latent, sigma)``, with classifier-free guidance.

        Args:
            latent: ``(B, *latent_shape)`` sample at time ``sigma``.
            sigma: flow time, a float, 0-d tensor or ``(B,)`` tensor.
            condition: from :meth:`encode_condition` (batch 1 is broadcast to ``B``).
            guidance_scale: ``None`` for the conditional velocity alone; a float ``w`` for
                ``v_uncond + w * (v_cond - v_uncond)`` (``w = 1`` is the conditional velocity up
                to rounding, ``w = 0`` the unconditional one).
        Returns:
            ``(B, *latent_shape)`` tensor of :attr:`dtype`. Gradients flow to ``latent`` only if
            the caller enables them; parameters never require grad.
        """
        ...

    def decode_sdf(self, latent: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Signed field at query points, differentiable w.r.t. ``latent`` (and ``points``).

        Args:
            latent: ``(B, *latent_shape)`` clean latent (a data sample, e.g. a clean estimate).
            points: ``(P, 3)`` shared by the batch or ``(B, P, 3)``, generator frame and units.
        Returns:
            ``(B, P)`` values, **negative inside**, zero on the surface. Implementations chunk over
            points so memory stays bounded.
        """
        ...


_REQUIRED_ATTRS = ("latent_shape", "dtype", "device", "time_convention", "bounds",
                   "default_resolution")
_REQUIRED_METHODS = ("sigmas", "encode_condition", "velocity", "decode_sdf")


def normalize_bounds(bounds: float | Sequence[Any] | torch.Tensor) -> Bounds:
    """``b`` (the cube ``[-b, b]^3``), ``(lo, hi)`` scalars, or ``((x0, y0, z0), (x1, y1, z1))``
    -> ``((x0, y0, z0), (x1, y1, z1))`` as floats, checked ``lo < hi`` on every axis."""
    if isinstance(bounds, torch.Tensor):
        bounds = bounds.detach().cpu().tolist()
    if isinstance(bounds, (int, float)):
        b = float(bounds)
        lo, hi = (-b, -b, -b), (b, b, b)
    else:
        seq = list(bounds)
        if len(seq) != 2:
            raise ValueError(f"bounds: expected b, (lo, hi) or ((x0, y0, z0), (x1, y1, z1)), got "
                             f"{bounds!r}")
        a, c = seq
        if isinstance(a, (int, float)) and isinstance(c, (int, float)):
            lo, hi = (float(a),) * 3, (float(c),) * 3
        else:
            lo, hi = tuple(float(v) for v in a), tuple(float(v) for v in c)
    if len(lo) != 3 or len(hi) != 3:
        raise ValueError(f"bounds: expected 3 values per corner, got {lo} and {hi}")
    if not all(l < h for l, h in zip(lo, hi)):
        raise ValueError(f"bounds: min corner must be below max corner on every axis, got "
                         f"{lo} and {hi}")
    return (lo, hi)  # type: ignore[return-value]


def check_backbone(backbone: Any) -> None:
    """Raise a TypeError naming what is missing if ``backbone`` does not implement the protocol."""
    missing = [a for a in _REQUIRED_ATTRS if not hasattr(backbone, a)]
    missing += [m + "()" for m in _REQUIRED_METHODS if not callable(getattr(backbone, m, None))]
    if missing:
        raise TypeError(f"{type(backbone).__name__} is not a FlowBackbone: missing "
                        f"{', '.join(missing)} (see hoiguide.backbones.FlowBackbone)")
    TimeConvention.parse(backbone.time_convention)


def check_latent(backbone: Any, latent: torch.Tensor, name: str = "latent") -> torch.Tensor:
    """Check ``latent`` is ``(B, *backbone.latent_shape)``; return it unchanged."""
    shape = tuple(backbone.latent_shape)
    if not isinstance(latent, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, *{shape}), got "
                        f"{type(latent).__name__}")
    if latent.ndim != len(shape) + 1 or tuple(latent.shape[1:]) != shape:
        raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, shape))}), got "
                         f"{tuple(latent.shape)}")
    if not latent.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor, got {latent.dtype}")
    return latent
