"""Image-space losses: normals, disparity, silhouettes, 2D keypoints, optimal-transport masks.

Pure functions on tensors plus their registered terms (names ``normal``, ``disparity``,
``silhouette``, ``keypoints_2d``, ``mask_ot``). Images are ``(H, W[, C])`` row-major in pixels
of the camera; 3D points and normals are in the image-aligned frame (OpenCV camera frame,
+x right, +y down, +z forward, metres). Masks/weights are ``(H, W)`` bool or float ``>= 0``.

Which pixels and which mask each term uses (the reference's choices and our fixes):

* ``normal`` / ``disparity`` compare, on the pixels of the chosen mask where the monocular
  target is valid (``target_valid``, and a non-zero target normal / disparity), the rendered
  surface of the matching mesh: ``mask: hand`` uses pixels where
  the visible rendered surface is the hand (``mesh_id == 0``), ``mask: object`` the object,
  ``mask: union`` any rendered surface. Pixels where nothing (or the other mesh) is rendered
  carry no geometry to compare; the silhouette terms are the ones that grow the shape there.
* ``silhouette`` with ``which: object`` compares the object rendered ALONE (amodal) with the
  visible object mask while IGNORING the hand-mask pixels, so the part of the object hidden by
  the hand is never penalised (the reference's defect). ``which: object_amodal`` compares it
  with a full (amodal / inpainted) object mask instead.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from hoiguide.losses.context import HAND, OBJECT, LossContext
from hoiguide.losses.registry import Option, register_loss
from hoiguide.types import Camera

__all__ = ["normal_loss", "disparity_loss", "normalize_disparity", "silhouette_loss",
           "keypoints_2d_loss", "mask_ot_loss", "sinkhorn_divergence_2d"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def shape_text(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_image(x: Any, what: str, name: str, channels: Optional[int] = None,
                 hw: Optional[tuple[int, int]] = None) -> torch.Tensor:
    rows, cols = ("H", "W") if hw is None else hw
    want = f"({rows}, {cols}{'' if channels is None else ', ' + str(channels)})"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected {name} as a torch.Tensor {want}, got "
                        f"{type(x).__name__}")
    ok = x.ndim == 2 if channels is None else (x.ndim == 3 and x.shape[-1] == channels)
    if ok and hw is not None and tuple(x.shape[:2]) != tuple(hw):
        ok = False
    if not ok:
        raise ValueError(f"{what}: expected {name} {want}, got {tuple(x.shape)}")
    return x


def _weight_map(w: Any, what: str, name: str, hw: tuple[int, int],
                like: torch.Tensor) -> torch.Tensor:
    """A bool/float (H, W) mask as float weights in ``like``'s dtype/device."""
    if w is None:
        return torch.ones(hw, dtype=like.dtype, device=like.device)
    w = _check_image(w, what, name, hw=hw)
    return w.to(device=like.device, dtype=like.dtype)


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that keeps ``like`` in the autograd graph (so ``backward`` still works)."""
    return (like * 0).sum()


# --------------------------------------------------------------------------------------
# normal
# --------------------------------------------------------------------------------------


_COS_EPS = 1e-12  # |pred| |target| below this: no direction to compare (cos = 0)


def normal_loss(pred: torch.Tensor, target: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over mask pixels of ``1 - cos(pred, target)``.

    Args:
        pred: ``(H, W, 3)`` rendered normals, camera frame (need not be unit; zero vectors
            give ``cos = 0`` with zero gradient, as does ``|pred| |target| <= 1e-12``).
        target: ``(H, W, 3)`` target normals, same frame.
        mask: ``(H, W)`` bool or float weights ``>= 0`` (all pixels when ``None``).

    Returns:
        Scalar in ``[0, 2]`` (weighted mean); ``0`` (still in the graph) when the mask is
        empty.
    """
    what = "normal_loss"
    _check_image(pred, what, "pred", 3)
    _check_image(target, what, "target", 3, hw=pred.shape[:2])
    w = _weight_map(mask, what, "mask", tuple(pred.shape[:2]), pred)
    t = target.to(pred)
    # cos = 0 with zero gradient where either vector is (nearly) zero: the double where keeps
    # the unused branch finite, so no 0 * inf reaches the backward pass
    denom = pred.norm(dim=-1) * t.norm(dim=-1)
    ok = denom.detach() > _COS_EPS
    cos = (pred * t).sum(-1) / torch.where(ok, denom, torch.ones_like(denom))
    cos = torch.where(ok, cos, torch.zeros_like(cos))
    wsum = w.sum()
    if float(wsum.detach()) <= 0:
        return _zero(pred)
    return (w * (1 - cos)).sum() / wsum


# --------------------------------------------------------------------------------------
# disparity
# --------------------------------------------------------------------------------------

_DISPARITY_NORMS = ("median", "median_mad", "minmax", "image_minmax", "none")


def normalize_disparity(d: torch.Tensor, valid: torch.Tensor,
                        method: str = "median") -> torch.Tensor:
    """Normalise a disparity map with statistics of its ``valid`` pixels.

    Methods:
        * ``"median"`` (default): ``d / median`` over the valid pixels: scale-invariant
          (the monocular target's metric scale need not match), robust to a few outliers,
          independent of the background. This is what the reference's min-max over the
          WHOLE image effectively does (the empty background's disparity 0 is the minimum, so
          it computes ``d / max d``) minus its sensitivity to the single nearest pixel, so the
          reference's weights keep their meaning.
        * ``"median_mad"``: ``(d - median) / mean|d - median|`` (MiDaS' scale- and
          shift-invariant normalisation), for targets that are only affine-correct. It
          magnifies differences by about ``1 / (relative depth spread)`` (x30-100 for a hand
          and object at arm's length): lower the weight accordingly.
        * ``"minmax"``: ``(d - min) / (max - min)`` over the valid pixels (shift and scale;
          one outlier rescales everything).
        * ``"image_minmax"``: the reference's choice, min and max over ALL pixels (including
          the background).
        * ``"none"``: unchanged (absolute disparities in 1/metres).

    Args:
        d: ``(H, W)`` disparity (1/metres).
        valid: ``(H, W)`` bool; the statistics use these pixels.
        method: one of the above.

    Returns:
        ``(H, W)`` normalised map (values outside ``valid`` are normalised too but are
        meaningless). Scales are clamped below at ``1e-3 * |median| + 1e-12`` so a flat map
        does not divide by zero.
    """
    if method not in _DISPARITY_NORMS:
        raise ValueError(f"normalize_disparity: expected method in {_DISPARITY_NORMS}, got "
                         f"{method!r}")
    if method == "none":
        return d
    vals = d.reshape(-1) if method == "image_minmax" else d[valid]
    if vals.numel() == 0:
        return d
    if method == "median":
        shift = torch.zeros((), dtype=d.dtype, device=d.device)
        scale = vals.median()
    elif method == "median_mad":
        shift = vals.median()
        scale = (vals - shift).abs().mean()
    else:
        shift = vals.min()
        scale = vals.max() - shift
    floor = 1e-3 * vals.detach().abs().median() + 1e-12
    return (d - shift) / torch.maximum(scale.abs() if method == "median" else scale, floor)


def disparity_loss(pred: torch.Tensor, target: torch.Tensor,
                   mask: Optional[torch.Tensor] = None,
                   normalization: str = "median") -> torch.Tensor:
    """L1 between normalised rendered and target disparities over the mask.

    Both maps are normalised independently with :func:`normalize_disparity` using the
    statistics of the pixels where the mask is positive (all pixels for
    ``"image_minmax"``), then the weighted mean absolute difference over the mask pixels is
    returned. The default ``"median"`` (``d / median d``) is scale-invariant, robust, and keeps
    the reference's weights meaningful (see :func:`normalize_disparity`).

    Args:
        pred: ``(H, W)`` rendered disparity (1/metres, 0 where empty).
        target: ``(H, W)`` target disparity.
        mask: ``(H, W)`` bool or float weights; pixels with weight 0 are ignored. Fewer than
            2 pixels give 0 (still in the graph).
        normalization: ``"median"``, ``"median_mad"``, ``"minmax"``, ``"image_minmax"`` or
            ``"none"``.

    Returns:
        Scalar, dimensionless for the normalised methods (1/metres for ``"none"``).
    """
    what = "disparity_loss"
    _check_image(pred, what, "pred")
    _check_image(target, what, "target", hw=tuple(pred.shape))
    if normalization not in _DISPARITY_NORMS:
        raise ValueError(f"{what}: expected normalization in {_DISPARITY_NORMS}, got "
                         f"{normalization!r}")
    w = _weight_map(mask, what, "mask", tuple(pred.shape), pred)
    valid = w > 0
    if int(valid.sum()) < 2:
        return _zero(pred)
    t = target.to(pred)
    p_n = normalize_disparity(pred, valid, normalization)
    t_n = normalize_disparity(t, valid, normalization)
    diff = (p_n - t_n).abs()
    diff = torch.where(valid, diff, torch.zeros_like(diff))
    return (w * diff).sum() / w.sum()


# --------------------------------------------------------------------------------------
# silhouette
# --------------------------------------------------------------------------------------


def silhouette_loss(pred: torch.Tensor, target: torch.Tensor,
                    weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Binary cross-entropy between a soft silhouette and a target mask, averaged over the
    image (weighted).

    Args:
        pred: ``(H, W)`` soft coverage in ``[0, 1]`` (values outside are clamped).
        target: ``(H, W)`` bool or float mask in ``[0, 1]``.
        weight: optional ``(H, W)`` per-pixel weights ``>= 0`` (0 = ignore the pixel).

    Returns:
        Scalar ``sum(weight * bce) / sum(weight)`` (``log`` clamped at ``-100`` as in torch);
        ``0`` when every weight is 0.
    """
    what = "silhouette_loss"
    _check_image(pred, what, "pred")
    _check_image(target, what, "target", hw=tuple(pred.shape))
    w = _weight_map(weight, what, "weight", tuple(pred.shape), pred)
    t = target.to(pred)
    if float(t.detach().min()) < 0 or float(t.detach().max()) > 1:
        raise ValueError(f"{what}: expected target in [0, 1], got range "
                         f"[{float(t.min())}, {float(t.max())}]")
    bce = F.binary_cross_entropy(pred.clamp(0, 1), t, reduction="none")
    wsum = w.sum()
    if float(wsum.detach()) <= 0:
        return _zero(pred)
    return (w * bce).sum() / wsum


# --------------------------------------------------------------------------------------
# 2D keypoints
# --------------------------------------------------------------------------------------


def keypoints_2d_loss(points_3d: torch.Tensor, keypoints_2d: torch.Tensor, camera: Camera,
                      confidence: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared pixel error between projected 3D keypoints and detected 2D keypoints.

    ``sum_k c_k ((u_k - u*_k)^2 + (v_k - v*_k)^2) / (2 sum_k c_k)``: the mean over both
    coordinates, i.e. ``torch.nn.functional.mse_loss`` when the confidences are equal (the
    reference's convention, so its weight ``1e-2`` keeps its meaning).

    Args:
        points_3d: ``(K, 3)`` keypoints in the camera frame, metres.
        keypoints_2d: ``(K, 2)`` detections in pixels of ``camera``.
        camera: the pinhole camera.
        confidence: optional ``(K,)`` weights ``>= 0``.

    Returns:
        Scalar in px^2. A keypoint behind the camera (``z <= 0``) projects to NaN and makes
        the loss NaN on purpose (the engine reports non-finite terms by name).
    """
    what = "keypoints_2d_loss"
    if not isinstance(points_3d, torch.Tensor) or points_3d.ndim != 2 or \
            points_3d.shape[-1] != 3:
        raise ValueError(f"{what}: expected points_3d (K, 3), got {shape_text(points_3d)}")
    k = points_3d.shape[0]
    if not isinstance(keypoints_2d, torch.Tensor) or tuple(keypoints_2d.shape) != (k, 2):
        raise ValueError(f"{what}: expected keypoints_2d ({k}, 2), got {shape_text(keypoints_2d)}")
    if not isinstance(camera, Camera):
        raise TypeError(f"{what}: expected camera as Camera, got {type(camera).__name__}")
    uv = camera.project(points_3d)
    sq = ((uv - keypoints_2d.to(uv)) ** 2).sum(-1)
    if confidence is None:
        return sq.mean() / 2
    if not isinstance(confidence, torch.Tensor) or tuple(confidence.shape) != (k,):
        raise ValueError(f"{what}: expected confidence ({k},), got {shape_text(confidence)}")
    c = confidence.to(uv)
    csum = c.sum()
    if float(csum.detach()) <= 0:
        return _zero(points_3d)
    return (c * sq).sum() / (2 * csum)


# --------------------------------------------------------------------------------------
# optimal-transport mask distance (EasyHOI's fix for masks that do not overlap)
# --------------------------------------------------------------------------------------


def _shifted_log_matmul(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``log(exp(z) @ kernel)`` row-stabilised: ``m + log(exp(z - m) @ kernel)`` with ``m`` the
    row maximum of ``z``. Every entry of ``kernel`` must be > 0 (no underflow), then each sum
    is at least its largest term and never underflows to 0."""
    m = z.max(dim=1, keepdim=True).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m + torch.log(torch.exp(z - m) @ kernel)


class _GridCost:
    """Separable squared-Euclidean cost ``C((i,j),(k,l)) = cy[i,k] + cx[j,l]`` on an (h, w)
    grid, with the 1D Gibbs kernels of one epsilon cached."""

    def __init__(self, cy: torch.Tensor, cx: torch.Tensor) -> None:
        self.cy, self.cx = cy, cx
        self.cmax = float(torch.maximum(cx.max(), cy.max()))
        self._eps: Optional[float] = None

    def kernels(self, eps: float) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """``(exp(-cy / eps), exp(-cx / eps))``, or ``None`` when they would underflow."""
        if self.cmax / eps >= 600.0:
            return None
        if eps != self._eps:
            self._k = (torch.exp(-self.cy / eps), torch.exp(-self.cx / eps))
            self._eps = eps
        return self._k

    def softmin(self, log_w: torch.Tensor, pot: torch.Tensor, eps: float) -> torch.Tensor:
        """``-eps log sum_{k,l} w_kl exp((pot_kl - C((i,j),(k,l))) / eps)`` in
        O(h w (h + w)): two stabilised matrix products while the 1D Gibbs kernels are
        representable, else exact log-sum-exp with broadcasting (slower)."""
        z = log_w + pot / eps                                          # (k, l)
        k = self.kernels(eps)
        if k is not None:
            ky, kx = k
            inner = _shifted_log_matmul(z, kx)                         # (k, j)
            outer = _shifted_log_matmul(inner.transpose(0, 1), ky).transpose(0, 1)  # (i, j)
            return -eps * outer
        inner = torch.logsumexp(z[:, None, :] - self.cx[None, :, :] / eps, dim=-1)   # (k, j)
        outer = torch.logsumexp(inner[None, :, :] - self.cy[:, :, None] / eps, dim=1)
        return -eps * outer


def _eps_schedule(diameter: float, blur: float, scaling: float, extra: int) -> list[float]:
    """Epsilon annealing (as in GeomLoss): from diameter^2 down to blur^2 geometrically in
    blur (factor ``scaling`` per iteration), then ``extra`` iterations at blur^2."""
    out = []
    b = diameter
    while b > blur:
        out.append(b * b)
        b *= scaling
    return out + [blur * blur] * max(1, extra)


def _sinkhorn_potentials(log_a: torch.Tensor, log_b: torch.Tensor, cost: _GridCost,
                         eps_list: list[float]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dual potentials of OT(a, b), OT(a, a), OT(b, b) (log domain, annealed)."""
    f = g = faa = gbb = None
    for eps in eps_list:
        if f is None:
            z = torch.zeros_like(log_a)
            f, g = cost.softmin(log_b, z, eps), cost.softmin(log_a, z, eps)
            faa, gbb = cost.softmin(log_a, z, eps), cost.softmin(log_b, z, eps)
            continue
        # symmetric (averaged) updates, stable under annealing
        f, g = 0.5 * (f + cost.softmin(log_b, g, eps)), 0.5 * (g + cost.softmin(log_a, f, eps))
        faa = 0.5 * (faa + cost.softmin(log_a, faa, eps))
        gbb = 0.5 * (gbb + cost.softmin(log_b, gbb, eps))
    eps = eps_list[-1]
    # final extrapolation: one exact alternate update at the target epsilon
    f, g = cost.softmin(log_b, g, eps), cost.softmin(log_a, f, eps)
    faa = cost.softmin(log_a, faa, eps)
    gbb = cost.softmin(log_b, gbb, eps)
    return f, g, faa, gbb


def sinkhorn_divergence_2d(a: torch.Tensor, b: torch.Tensor, *, blur: float = 0.05,
                           scaling: float = 0.5, iterations: int = 10) -> torch.Tensor:
    """Debiased entropic optimal-transport (Sinkhorn) divergence between two non-negative
    ``(h, w)`` images seen as distributions on the pixel grid.

    ``S(a, b) = OT_e(a, b) - OT_e(a, a) / 2 - OT_e(b, b) / 2`` with ``e = blur^2`` and the
    squared Euclidean cost between pixel centres in units of the image's longer side (the
    image spans ``[0, w / max(h, w)] x [0, h / max(h, w)]``). Both images are normalised to
    unit mass. ``S >= 0`` and ``S = 0`` iff ``a = b``; it behaves like half the squared
    distance the mass has to travel, and keeps a gradient when the supports do not overlap.

    The gradient is the one of the converged dual problem (envelope theorem: the dual
    potentials are computed without autograd and the divergence is recomputed as
    ``<f_ab - f_aa, a> + <g_ab - g_bb, b>``), so memory does not grow with the iterations.

    Args:
        a, b: ``(h, w)`` non-negative masses (soft masks); each must have positive mass.
        blur: entropic blur in units of the longer side (``eps = blur^2``).
        scaling: annealing factor of the blur per iteration, in ``(0, 1)``.
        iterations: extra iterations at the final blur.

    Returns:
        Scalar divergence (units: squared fraction of the longer image side).
    """
    what = "sinkhorn_divergence_2d"
    _check_image(a, what, "a")
    _check_image(b, what, "b", hw=tuple(a.shape))
    if not 0 < scaling < 1:
        raise ValueError(f"{what}: expected scaling in (0, 1), got {scaling}")
    if not blur > 0:
        raise ValueError(f"{what}: expected blur > 0, got {blur}")
    b = b.to(a)
    ma, mb = a.sum(), b.sum()
    if not (float(ma.detach()) > 0 and float(mb.detach()) > 0):
        raise ValueError(f"{what}: both images need positive mass, got "
                         f"{float(ma.detach())} and {float(mb.detach())}")
    if float(a.detach().min()) < 0 or float(b.detach().min()) < 0:
        raise ValueError(f"{what}: expected non-negative images")
    pa, pb = a / ma, b / mb
    h, w = a.shape
    side = float(max(h, w))
    ys = (torch.arange(h, dtype=a.dtype, device=a.device) + 0.5) / side
    xs = (torch.arange(w, dtype=a.dtype, device=a.device) + 0.5) / side
    cy = (ys[:, None] - ys[None, :]) ** 2 / 2
    cx = (xs[:, None] - xs[None, :]) ** 2 / 2
    diameter = math.hypot(h, w) / side
    eps_list = _eps_schedule(diameter, blur, scaling, iterations)
    with torch.no_grad():  # potentials in float64: the grid is small, precision matters
        d64 = torch.float64
        f, g, faa, gbb = (x.to(a.dtype) for x in _sinkhorn_potentials(
            pa.detach().to(d64).log(), pb.detach().to(d64).log(),
            _GridCost(cy.to(d64), cx.to(d64)), eps_list))
    return ((f - faa) * pa).sum() + ((g - gbb) * pb).sum()


def mask_ot_loss(pred: torch.Tensor, target: torch.Tensor, *, size: int = 64,
                 blur: float = 0.05, scaling: float = 0.5,
                 iterations: int = 10) -> torch.Tensor:
    """Sinkhorn optimal-transport distance between a rendered soft mask and a target mask.

    Both masks are area-averaged down to at most ``size`` pixels on the longer side (for
    cost: the solver is ``O(h w (h + w))`` per iteration), normalised to unit mass and
    compared with :func:`sinkhorn_divergence_2d`. Unlike IoU or BCE this gives a gradient
    that moves the rendered mask TOWARDS the target when the two do not overlap (EasyHOI's
    fix for zero-gradient IoU). It compares shape and position, not size in pixels: pair it
    with ``silhouette``.

    Args:
        pred: ``(H, W)`` soft coverage ``>= 0``.
        target: ``(H, W)`` bool or float target mask.
        size: longer side after downsampling (pixels).
        blur, scaling, iterations: see :func:`sinkhorn_divergence_2d`; ``blur`` is a
            fraction of the longer image side.

    Returns:
        Scalar ``>= 0`` (squared fraction of the longer side). ``0`` (still in the graph,
        no gradient) when the rendered mask is empty: nothing can be transported.

    Raises:
        ValueError: the target mask is empty.
    """
    what = "mask_ot_loss"
    _check_image(pred, what, "pred")
    _check_image(target, what, "target", hw=tuple(pred.shape))
    if int(size) != size or size < 2:
        raise ValueError(f"{what}: expected size an integer >= 2, got {size!r}")
    t = target.to(pred)
    if not float(t.detach().sum()) > 0:
        raise ValueError(f"{what}: the target mask is empty")
    H, W = pred.shape
    f = min(1.0, size / max(H, W))
    h, w = max(1, round(H * f)), max(1, round(W * f))
    p = pred.clamp_min(0)
    if (h, w) != (H, W):
        p = F.adaptive_avg_pool2d(p[None, None], (h, w))[0, 0]
        t = F.adaptive_avg_pool2d(t[None, None], (h, w))[0, 0]
    if not float(p.detach().sum()) > 0:
        log.debug("mask_ot_loss: the rendered mask is empty; returning 0")
        return _zero(pred)
    return sinkhorn_divergence_2d(p, t, blur=blur, scaling=scaling, iterations=iterations)


# --------------------------------------------------------------------------------------
# registered terms
# --------------------------------------------------------------------------------------

_MASKS = ("hand", "object", "union")
_WHICH = ("hand", "object", "object_amodal", "union")


def _mask_field(which: str) -> str:
    return {"hand": "mask_hand", "object": "mask_object", "union": "mask_union",
            "object_amodal": "mask_object_amodal"}[which]


def _check_two_meshes(ctx: LossContext, what: str) -> None:
    m = ctx.render.silhouette.shape[0]
    if m < 2:
        raise ValueError(f"{what}: expected a render of [hand, object] (mesh 0 = hand, 1 = "
                         f"object), got {m} mesh(es)")


def _check_render_size(ctx: LossContext, what: str, image: torch.Tensor, name: str) -> None:
    hw = tuple(ctx.render.mask.shape)
    if tuple(image.shape[:2]) != hw:
        raise ValueError(f"{what}: expected ctx.{name} of size {hw} (the render's), got "
                         f"{tuple(image.shape)}")


def _surface_pixels(ctx: LossContext, mask: str, what: str) -> torch.Tensor:
    """Float weights: chosen mask x target validity x rendered surface of the matching
    mesh."""
    r = ctx.render
    m = getattr(ctx, _mask_field(mask))
    _check_render_size(ctx, what, m, _mask_field(mask))
    if mask == "hand":
        _check_two_meshes(ctx, what)
        hit = r.mesh_id == HAND
    elif mask == "object":
        _check_two_meshes(ctx, what)
        hit = r.mesh_id == OBJECT
    else:
        hit = r.mask
    w = m.to(torch.float32 if not m.is_floating_point() else m.dtype) * hit.to(m.device)
    if ctx.target_valid is not None:
        _check_render_size(ctx, what, ctx.target_valid, "target_valid")
        w = w * ctx.target_valid.to(w)
    return w


def _image_needs(extra: str) -> Any:
    return lambda o: ("render", _mask_field(o["mask"]), extra)


@register_loss("normal", needs=_image_needs("target_normals"),
               options={"mask": Option("union", choices=_MASKS,
                                       doc="pixels compared: hand, object or union mask")})
def _normal_term(ctx: LossContext, mask: str) -> torch.Tensor:
    """Mean 1 - cos(rendered, target normal) on mask pixels covered by the matching mesh."""
    what = f"normal(mask={mask})"
    _check_render_size(ctx, what, ctx.target_normals, "target_normals")
    w = _surface_pixels(ctx, mask, what)
    n = ctx.render.normals
    tn = ctx.target_normals.to(n)
    w = w.to(n) * (tn.norm(dim=-1) > 0).to(n)   # a zero target normal means "no measurement"
    return normal_loss(n, tn, w)


@register_loss("disparity", needs=_image_needs("target_disparity"),
               options={"mask": Option("union", choices=_MASKS,
                                       doc="pixels compared: hand, object or union mask"),
                        "normalization": Option("median", choices=_DISPARITY_NORMS,
                                                doc="per-map normalisation over the mask")})
def _disparity_term(ctx: LossContext, mask: str, normalization: str) -> torch.Tensor:
    """L1 of normalised rendered vs target disparity on mask pixels covered by the mesh."""
    what = f"disparity(mask={mask})"
    _check_render_size(ctx, what, ctx.target_disparity, "target_disparity")
    w = _surface_pixels(ctx, mask, what)
    d = ctx.render.disparity
    td = ctx.target_disparity.to(d)
    w = w.to(d) * (td > 0).to(d)   # a zero target disparity means "no measurement"
    return disparity_loss(d, td, w, normalization)


def _silhouette_inputs(ctx: LossContext, which: str, ignore_hand: bool, what: str,
                       soft: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    r = ctx.render
    target = getattr(ctx, _mask_field(which))
    if soft:
        target = (ctx.soft_masks or {}).get(_mask_field(which))
        if target is None:
            raise ValueError(f"{what}: target: soft needs the soft masks of the observations "
                             f"(LossContext.soft_masks[{_mask_field(which)!r}]; the guidance "
                             "engine provides them)")
    _check_render_size(ctx, what, target, _mask_field(which))
    if which == "union":
        return r.coverage, target, None
    _check_two_meshes(ctx, what)
    if which == "hand":
        return r.silhouette[HAND], target, None
    if r.amodal is None or r.amodal.shape[0] <= OBJECT:
        raise ValueError(f"{what}: needs the object rendered alone (render(..., amodal=True) "
                         "of [hand, object])")
    pred = r.amodal[OBJECT]
    weight = None
    if which == "object" and ignore_hand:
        _check_render_size(ctx, what, ctx.mask_hand, "mask_hand")
        hand = ctx.mask_hand.to(pred)
        weight = 1 - hand.clamp(0, 1)
    return pred, target, weight


def _silhouette_needs(o: dict) -> tuple[str, ...]:
    need = ["render", _mask_field(o["which"])]
    if o["which"] in ("object", "object_amodal"):
        need.append("render.amodal")
        if o["which"] == "object" and o["ignore_hand"]:
            need.append("mask_hand")
    return tuple(need)


_SIL_OPTIONS = {
    "which": Option("union", choices=_WHICH,
                    doc="hand: visible hand vs hand mask; object: object alone vs visible "
                        "object mask, hand pixels ignored; object_amodal: object alone vs "
                        "amodal mask; union: coverage vs union mask"),
    "ignore_hand": Option(True, doc="which=object: ignore hand-mask pixels (false reproduces "
                                    "the reference's defect)"),
    "target": Option("hard", choices=("hard", "soft"),
                     doc="hard: the mask (the reference); soft: the mask's outline drawn with "
                         "the renderer's soft edge, so the loss is stationary at a perfect fit"),
}


@register_loss("silhouette", needs=_silhouette_needs, options=_SIL_OPTIONS)
def _silhouette_term(ctx: LossContext, which: str, ignore_hand: bool,
                     target: str) -> torch.Tensor:
    """BCE of the rendered soft silhouette against a mask (see module docstring)."""
    what = f"silhouette(which={which})"
    pred, target, weight = _silhouette_inputs(ctx, which, ignore_hand, what,
                                              soft=target == "soft")
    return silhouette_loss(pred, target.to(pred), weight)


@register_loss("keypoints_2d", needs=("hand_keypoints_3d", "keypoints_2d", "camera"),
               options={"use_confidence": Option(True, doc="weight by keypoint_confidence "
                                                           "when given")})
def _keypoints_term(ctx: LossContext, use_confidence: bool) -> torch.Tensor:
    """MSE (px^2) between projected 3D hand keypoints and detected 2D keypoints."""
    conf = ctx.keypoint_confidence if use_confidence else None
    return keypoints_2d_loss(ctx.hand_keypoints_3d, ctx.keypoints_2d, ctx.camera, conf)


@register_loss("mask_ot", needs=lambda o: _silhouette_needs({**o, "ignore_hand": True}),
               options={"which": Option("object", choices=_WHICH,
                                        doc="as for silhouette (hand pixels are removed from "
                                            "both masks for which=object)"),
                        "size": Option(64, minimum=2, doc="longer side after downsampling"),
                        "blur": Option(0.05, minimum=1e-4,
                                       doc="entropic blur, fraction of the longer side"),
                        "scaling": Option(0.5, minimum=0.05, maximum=0.95,
                                          doc="blur annealing factor"),
                        "iterations": Option(10, minimum=1,
                                             doc="iterations at the final blur")})
def _mask_ot_term(ctx: LossContext, which: str, size: int, blur: float, scaling: float,
                  iterations: int) -> torch.Tensor:
    """Sinkhorn OT distance between the rendered soft mask and the target mask."""
    what = f"mask_ot(which={which})"
    pred, target, weight = _silhouette_inputs(ctx, which, True, what)
    target = target.to(pred)
    if weight is not None:
        pred, target = pred * weight, target * weight
    return mask_ot_loss(pred, target, size=size, blur=blur, scaling=scaling,
                        iterations=iterations)
