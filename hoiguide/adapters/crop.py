"""The hand-object crop (docs/method.md section 1, step 1) and its camera.

Box rule (the reference's): the union of the hand and object boxes, padded by ``pad_px`` on
every side, made square around its centre (side = the longer side), enlarged ``x1.25``.
Clamping: along each image axis the square is shifted back inside the image when it fits;
when it is longer than the image along that axis it is centred on the image there. The union
of the (image-clipped) boxes therefore always stays inside the crop, and the crop leaves the
image only where the image is too small, where the crop is filled with ``fill`` (black, alpha
0). The square is then resampled to ``size x size`` pixels (antialiased bilinear, PIL).

Left hands: the crop is mirrored (``u -> size - u``) so everything downstream sees a right
hand; :meth:`Crop.to_full_points`, :meth:`Crop.to_full_mask` and :meth:`Crop.mirror_mesh`
undo it.

Frames: pixel coordinates are continuous with pixel centres at ``+0.5`` (see
:mod:`hoiguide.types`). The crop camera has the same optical centre and axes as the full
camera (a crop is only a change of intrinsics): a 3D point in the full camera frame is the
same 3D point in the crop camera frame, except that a mirrored crop sees the mirrored world
``x -> -x`` (its camera is the full camera's crop with ``cx -> size - cx``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from hoiguide.adapters._util import check_box
from hoiguide.types import Camera, Mesh

__all__ = ["Crop", "make_crop", "default_camera", "resample_box"]

log = logging.getLogger(__name__)


def default_camera(width: int, height: int, fov_deg: float = 55.0) -> Camera:
    """A camera for a photo whose intrinsics are unknown.

    Square pixels, principal point at the image centre and a field of view of ``fov_deg``
    degrees across the **longer** image side (so portrait and landscape photos of the same
    camera get the same focal length). 55 degrees is a middle value for phone and compact
    cameras (35 mm-equivalent focal length ~35 mm). When a monocular geometry model estimates
    the intrinsics (MoGe does), prefer its camera: see
    :class:`hoiguide.adapters.moge.MoGeEstimator`.
    """
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"default_camera: expected positive integer width and height, got "
                         f"{width!r} x {height!r}")
    if not 0 < float(fov_deg) < 180:
        raise ValueError(f"default_camera: expected fov_deg in (0, 180), got {fov_deg!r}")
    f = 0.5 * max(width, height) / math.tan(math.radians(float(fov_deg)) / 2)
    return Camera(f, f, width / 2, height / 2, int(width), int(height))


# --------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------


def resample_box(image: np.ndarray, box: Sequence[float], size: int, *, fill: float = 0,
                 mirror: bool = False, resample: str = "bilinear") -> np.ndarray:
    """The square (or any) box ``(x0, y0, x1, y1)`` of ``image`` (continuous pixels, may leave
    the image) resampled to ``size x size``, optionally mirrored left-right.

    ``image``: ``(H, W)`` or ``(H, W, C)`` uint8, bool or float32. Outside the image the
    result is ``fill`` (an alpha channel, when 4 channels are given, gets 0). Bool images are
    resampled bilinearly and thresholded at 0.5. Antialiased when shrinking (PIL's resize).
    """
    from PIL import Image

    arr = np.asarray(image)
    x0, y0, x1, y1 = (float(v) for v in box)
    H, W = arr.shape[:2]
    is_bool = arr.dtype == bool
    work = arr.astype(np.float32) if is_bool else arr
    ix0, iy0 = int(math.floor(x0)), int(math.floor(y0))
    ix1, iy1 = int(math.ceil(x1)), int(math.ceil(y1))
    ix1, iy1 = max(ix1, ix0 + 1), max(iy1, iy0 + 1)
    pads = [(max(0, -iy0), max(0, iy1 - H)), (max(0, -ix0), max(0, ix1 - W))]
    region = work[max(iy0, 0):min(iy1, H), max(ix0, 0):min(ix1, W)]
    if any(p for pair in pads for p in pair) or region.size == 0:
        shape = (iy1 - iy0, ix1 - ix0) + work.shape[2:]
        out = np.full(shape, fill, dtype=work.dtype)
        if work.ndim == 3 and work.shape[2] == 4:
            out[..., 3] = 0
        ry0, rx0 = max(iy0, 0) - iy0, max(ix0, 0) - ix0
        out[ry0:ry0 + region.shape[0], rx0:rx0 + region.shape[1]] = region
        region = out
    rbox = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    filt = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX}[resample]
    if region.dtype == np.uint8:
        if region.ndim == 2:
            res = np.asarray(Image.fromarray(region, "L").resize((size, size), filt, box=rbox))
        else:
            chans = [np.asarray(Image.fromarray(np.ascontiguousarray(region[..., c]), "L")
                                .resize((size, size), filt, box=rbox))
                     for c in range(region.shape[2])]
            res = np.stack(chans, -1)
    else:
        reg = region.astype(np.float32)
        if reg.ndim == 2:
            reg = reg[..., None]
        chans = [np.asarray(Image.fromarray(np.ascontiguousarray(reg[..., c]), "F")
                            .resize((size, size), filt, box=rbox)) for c in range(reg.shape[2])]
        res = np.stack(chans, -1)
        if region.ndim == 2:
            res = res[..., 0]
    if mirror:
        res = res[:, ::-1]
    res = np.ascontiguousarray(res)
    if is_bool:
        return res > 0.5
    return res.astype(arr.dtype, copy=False) if arr.dtype != np.float64 else res.astype(np.float64)


def _bilinear(arr: np.ndarray, u: np.ndarray, v: np.ndarray, fill: float) -> np.ndarray:
    """Sample ``arr`` ``(h, w[, C])`` at continuous pixel coordinates ``u, v`` (centres at
    +0.5); ``fill`` outside."""
    from scipy.ndimage import map_coordinates

    a = np.asarray(arr, dtype=np.float64)
    coords = np.stack([v - 0.5, u - 0.5])
    if a.ndim == 2:
        return map_coordinates(a, coords, order=1, mode="constant", cval=fill)
    return np.stack([map_coordinates(a[..., c], coords, order=1, mode="constant", cval=fill)
                     for c in range(a.shape[2])], -1)


# --------------------------------------------------------------------------------------
# the crop
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    """A square crop of a full image, resampled to ``size x size`` (see the module docstring).

    Attributes:
        box: ``(x0, y0, x1, y1)`` of the square in FULL-image pixels (may extend past the
            image where the image is too small).
        size: side of the crop in pixels.
        mirrored: True when the crop is mirrored left-right (left hands).
        camera: the crop's camera, derived from ``full_camera`` (with ``cx -> size - cx``
            when mirrored).
        image_size: ``(height, width)`` of the full image.
        full_camera: the full image's camera.
    """

    box: tuple[float, float, float, float]
    size: int
    mirrored: bool
    camera: Camera
    image_size: tuple[int, int] = (0, 0)
    full_camera: Camera | None = field(default=None, compare=False)

    # ---------------------------------------------------------------- derived numbers
    @property
    def side(self) -> float:
        """Side of the square in full-image pixels."""
        return self.box[2] - self.box[0]

    @property
    def scale(self) -> float:
        """Crop pixels per full-image pixel."""
        return self.size / self.side

    # ---------------------------------------------------------------- images
    def _check_full(self, image: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(image)
        H, W = self.image_size
        if (H, W) != (0, 0) and arr.shape[:2] != (H, W):
            raise ValueError(f"Crop.{what}: expected an image of size {H}x{W} (the full "
                             f"image's), got shape {arr.shape}")
        return arr

    def apply(self, image: np.ndarray, *, fill: float = 0) -> np.ndarray:
        """Full image ``(H, W[, C])`` (uint8, bool or float) -> crop ``(size, size[, C])``,
        mirrored for a left hand. Outside the full image: ``fill`` (alpha 0)."""
        arr = self._check_full(image, "apply")
        if arr.ndim not in (2, 3):
            raise ValueError(f"Crop.apply: expected (H, W) or (H, W, C), got shape {arr.shape}")
        return resample_box(arr, self.box, self.size, fill=fill, mirror=self.mirrored)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """Full-image ``(H, W)`` bool mask -> ``(size, size)`` bool crop mask."""
        m = self._check_full(np.asarray(mask).astype(bool), "apply_mask")
        return resample_box(m, self.box, self.size, mirror=self.mirrored)

    def to_full_image(self, crop_image: np.ndarray, *, fill: float = 0) -> np.ndarray:
        """Crop-space ``(size, size[, C])`` image -> full-image ``(H, W[, C])`` (bilinear;
        ``fill`` outside the crop; uint8 in, uint8 out; mirror undone)."""
        arr = np.asarray(crop_image)
        if arr.shape[:2] != (self.size, self.size):
            raise ValueError(f"Crop.to_full_image: expected ({self.size}, {self.size}[, C]), "
                             f"got {arr.shape}")
        H, W = self.image_size
        if (H, W) == (0, 0):
            raise ValueError("Crop.to_full_image: this Crop does not know the full image size")
        vv, uu = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
        cu, cv = self._full_to_crop(uu, vv)
        out = _bilinear(arr, cu, cv, fill)
        if arr.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(arr.dtype if arr.dtype != bool else np.float64)

    def to_full_mask(self, crop_mask: np.ndarray) -> np.ndarray:
        """Crop-space ``(size, size)`` bool mask -> full-image ``(H, W)`` bool (bilinear
        resampling thresholded at 0.5; False outside the crop; mirror undone)."""
        m = np.asarray(crop_mask)
        if m.shape != (self.size, self.size):
            raise ValueError(f"Crop.to_full_mask: expected a ({self.size}, {self.size}) mask, "
                             f"got {m.shape}")
        return self.to_full_image(m.astype(np.float64)) > 0.5

    # ---------------------------------------------------------------- points
    def _full_to_crop(self, u: Any, v: Any) -> tuple[Any, Any]:
        cu = (u - self.box[0]) * self.scale
        cv = (v - self.box[1]) * self.scale
        if self.mirrored:
            cu = self.size - cu
        return cu, cv

    def to_crop_points(self, points: Any) -> Any:
        """Full-image pixels ``(..., 2)`` -> crop pixels (mirrored for a left hand). numpy or
        torch, same type out."""
        p = _points2(points, "Crop.to_crop_points")
        cu, cv = self._full_to_crop(p[..., 0], p[..., 1])
        return _stack2(points, cu, cv)

    def to_full_points(self, points: Any) -> Any:
        """Crop pixels ``(..., 2)`` -> full-image pixels (mirror undone). numpy or torch."""
        p = _points2(points, "Crop.to_full_points")
        cu = p[..., 0]
        if self.mirrored:
            cu = self.size - cu
        u = cu / self.scale + self.box[0]
        v = p[..., 1] / self.scale + self.box[1]
        return _stack2(points, u, v)

    def to_full_points_3d(self, points: Any) -> Any:
        """Crop camera frame ``(..., 3)`` -> full camera frame: ``x -> -x`` when mirrored,
        unchanged otherwise (metres). numpy or torch."""
        if not self.mirrored:
            return points
        if isinstance(points, torch.Tensor):
            return points * torch.tensor([-1.0, 1.0, 1.0], dtype=points.dtype,
                                         device=points.device)
        return np.asarray(points) * np.array([-1.0, 1.0, 1.0])

    def mirror_mesh(self, mesh: Mesh) -> Mesh:
        """A mesh from the crop camera frame in the full camera frame: mirrored ``x -> -x``
        (faces re-wound so normals stay outward) when this crop is mirrored, returned as is
        otherwise. Mirroring twice gives the mesh back."""
        if not self.mirrored:
            return mesh
        if not isinstance(mesh, Mesh):
            raise TypeError(f"Crop.mirror_mesh: expected a Mesh, got {type(mesh).__name__}")
        v = mesh.vertices * torch.tensor([-1.0, 1.0, 1.0], dtype=mesh.dtype,
                                         device=mesh.device)
        return Mesh(v, mesh.faces[:, [0, 2, 1]], mesh.vertex_colors, dict(mesh.metadata))

    to_full_mesh = mirror_mesh

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "size": self.size, "mirrored": self.mirrored,
                "camera": self.camera.to_dict(), "image_size": list(self.image_size),
                "full_camera": None if self.full_camera is None else self.full_camera.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Crop":
        return cls(tuple(float(x) for x in d["box"]), int(d["size"]), bool(d["mirrored"]),
                   Camera.from_dict(d["camera"]), tuple(int(x) for x in d.get("image_size",
                                                                               (0, 0))),
                   None if d.get("full_camera") is None else Camera.from_dict(d["full_camera"]))


def _points2(points: Any, where: str) -> Any:
    p = points if isinstance(points, torch.Tensor) else np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 2:
        raise ValueError(f"{where}: expected points of shape (..., 2), got {tuple(p.shape)}")
    return p


def _stack2(like: Any, u: Any, v: Any) -> Any:
    if isinstance(like, torch.Tensor):
        return torch.stack([u, v], -1)
    return np.stack([u, v], -1)


def _image_hw(image_size: Sequence[int], camera: Camera) -> tuple[int, int]:
    """``(H, W)`` from ``image_size`` given as ``(H, W)`` (like ``image.shape[:2]`` and
    ``Camera.size``) or ``(W, H)``, whichever agrees with the camera."""
    try:
        a, b = (int(x) for x in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"make_crop: expected image_size (height, width), got "
                         f"{image_size!r}") from None
    if (a, b) == (camera.height, camera.width):
        return a, b
    if (b, a) == (camera.height, camera.width):
        return b, a
    raise ValueError(f"make_crop: image_size {tuple(image_size)} does not match the camera's "
                     f"image size (height {camera.height}, width {camera.width}); pass the "
                     f"full image's camera")


def _clip_box(box: Any, W: int, H: int, what: str) -> tuple[float, float, float, float] | None:
    if box is None:
        return None
    x0, y0, x1, y1 = check_box(box, f"make_crop: {what}")
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(W)), min(y1, float(H))
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"make_crop: {what} {(x0, y0, x1, y1)} lies outside the {W}x{H} image")
    return cx0, cy0, cx1, cy1


def _place(center: float, side: float, extent: int) -> float:
    """Start of a segment of length ``side`` centred at ``center``, shifted inside
    ``[0, extent]`` when it fits, centred on ``[0, extent]`` when it does not."""
    if side >= extent:
        return extent / 2 - side / 2
    start = center - side / 2
    return min(max(start, 0.0), extent - side)


def make_crop(hand_box: Any, object_box: Any, image_size: Sequence[int], camera: Camera, *,
              pad_px: float = 10, enlarge: float = 1.25, size: int = 512,
              left_hand: bool = False) -> Crop:
    """The reference's hand-object crop.

    Args:
        hand_box, object_box: ``(x0, y0, x1, y1)`` in full-image pixels (either may be None,
            not both); clipped to the image.
        image_size: ``(height, width)`` of the full image (``image.shape[:2]``; ``(width,
            height)`` is accepted when unambiguous from the camera).
        camera: the full image's camera (:func:`default_camera` when unknown).
        pad_px: padding added on every side of the union, full-image pixels.
        enlarge: factor applied to the square's side.
        size: output side in pixels.
        left_hand: mirror the crop so the hand looks like a right hand.

    Returns:
        :class:`Crop` with the square box, the crop camera and the mirror flag.
    """
    if not isinstance(camera, Camera):
        raise TypeError(f"make_crop: expected camera to be a Camera, got {type(camera).__name__}")
    H, W = _image_hw(image_size, camera)
    if int(size) != size or size < 1:
        raise ValueError(f"make_crop: expected a positive integer size, got {size!r}")
    if not (math.isfinite(pad_px) and pad_px >= 0):
        raise ValueError(f"make_crop: expected pad_px >= 0, got {pad_px!r}")
    if not (math.isfinite(enlarge) and enlarge > 0):
        raise ValueError(f"make_crop: expected enlarge > 0, got {enlarge!r}")
    boxes = [b for b in (_clip_box(hand_box, W, H, "hand_box"),
                         _clip_box(object_box, W, H, "object_box")) if b is not None]
    if not boxes:
        raise ValueError("make_crop: expected a hand box or an object box, got neither")
    x0 = min(b[0] for b in boxes) - pad_px
    y0 = min(b[1] for b in boxes) - pad_px
    x1 = max(b[2] for b in boxes) + pad_px
    y1 = max(b[3] for b in boxes) + pad_px
    side = max(x1 - x0, y1 - y0) * float(enlarge)
    sx = _place((x0 + x1) / 2, side, W)
    sy = _place((y0 + y1) / 2, side, H)
    box = (sx, sy, sx + side, sy + side)
    size = int(size)
    cam = camera.cropped(sx, sy, side, side, size, size)
    if left_hand:
        cam = Camera(cam.fx, cam.fy, size - cam.cx, cam.cy, size, size)
    log.debug("make_crop: box %s (side %.1f px) -> %d px, mirrored=%s", box, side, size,
              bool(left_hand))
    return Crop(box, size, bool(left_hand), cam, (H, W), camera)
