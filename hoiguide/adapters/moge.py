"""Monocular geometry (docs/method.md section 1, step 4): MoGe / MoGe-2 point maps.

MoGe is not on PyPI: ``pip install git+https://github.com/microsoft/MoGe.git``. Models:
``Ruicheng/moge-2-vitl-normal`` (default: metric points + normals), ``Ruicheng/moge-2-vitl``,
``Ruicheng/moge-vitl`` (MoGe-1: points up to an unknown scale).

Native frame (``MoGeModel.infer``'s documented output): ``points`` ``(H, W, 3)`` in the OpenCV
camera frame (metres for MoGe-2), ``depth`` ``(H, W)``, ``mask`` ``(H, W)`` bool, ``normal``
``(H, W, 3)`` OpenCV camera frame (normal models), ``intrinsics`` ``(3, 3)`` **normalised**:
row 0 divided by the image width and row 1 by the height (principal point 0.5, 0.5; pixel
centres at ``(i + 0.5) / W``, our continuous convention); invalid pixels hold **inf**.
:func:`moge_to_point_map` converts this into a :class:`PointMap`: intrinsics in pixels
(row 0 times W, row 1 times H), invalid points NaN with ``valid`` False.

When the photo's camera is known (``camera=``), MoGe is given its horizontal field of view
and the points are rebuilt from MoGe's depth with that camera (``unproject`` at the pixel
centres), so they reproject exactly onto their pixels with it, including an off-centre
principal point (a crop's), which MoGe cannot represent.

Depth edges: :meth:`PointMap.partial_points` and :meth:`PointMap.targets` drop pixels at depth
discontinuities (flying pixels between hand, object and background) with the same rule as
:func:`hoiguide.alignment.build_observations` (relative jump ``edge_rtol``, dilated).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from hoiguide.adapters._util import (
    WeightsNotFoundError,
    check_image,
    check_mask,
    default_device,
    import_optional,
    is_offline,
    looks_like_path,
)
from hoiguide.alignment import partial_points
from hoiguide.geometry import point_map_targets
from hoiguide.types import Camera

__all__ = ["PointMap", "MoGeEstimator", "moge_to_point_map", "DEFAULT_MOGE"]

log = logging.getLogger(__name__)

DEFAULT_MOGE = "Ruicheng/moge-2-vitl-normal"


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


@dataclass
class PointMap:
    """A per-pixel point map of one image.

    Attributes:
        points: ``(H, W, 3)`` float32, camera frame of ``camera`` (OpenCV, metres for
            metric models), NaN where invalid.
        valid: ``(H, W)`` bool.
        camera: intrinsics in pixels of THIS image.
        normals: optional ``(H, W, 3)`` float32 unit normals, same frame (a surface facing
            the camera has negative z), zero where invalid.
        metric: False when the scale is unknown (MoGe-1).
    """

    points: np.ndarray
    valid: np.ndarray
    camera: Camera
    normals: np.ndarray | None = None
    metric: bool = True

    def __post_init__(self) -> None:
        P = np.asarray(self.points, np.float32)
        H, W = self.camera.height, self.camera.width
        if P.shape != (H, W, 3):
            raise ValueError(f"PointMap: expected points of shape ({H}, {W}, 3) (the camera's "
                             f"image size), got {P.shape}")
        v = check_mask(self.valid, (H, W), "PointMap.valid")
        v = v & np.isfinite(P).all(-1) & (np.nan_to_num(P[..., 2], nan=0.0) > 0)
        self.points = np.where(v[..., None], P, np.nan).astype(np.float32)
        self.valid = v
        if self.normals is not None:
            N = np.asarray(self.normals, np.float32)
            if N.shape != (H, W, 3):
                raise ValueError(f"PointMap: expected normals of shape ({H}, {W}, 3), got "
                                 f"{N.shape}")
            self.normals = np.where(v[..., None] & np.isfinite(N), N, 0.0).astype(np.float32)

    @property
    def depth(self) -> np.ndarray:
        """``(H, W)`` z in metres (NaN where invalid)."""
        return self.points[..., 2]

    def partial_points(self, mask: Any | None = None, *, edge_rtol: float = 0.04,
                       edge_dilate: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The partial point cloud: valid pixels inside ``mask`` (default all), away from
        depth edges. Returns ``(points (N, 3) float64, keep (H, W) bool)``."""

        m = np.ones(self.valid.shape, bool) if mask is None else \
            check_mask(mask, self.valid.shape, "PointMap.partial_points: mask")
        return partial_points(self.points, self.valid, m, edge_rtol=edge_rtol,
                              edge_dilate=edge_dilate)

    def targets(self, mask: Any | None = None, *, edge_rtol: float = 0.04, edge_dilate: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normal and disparity target maps of the partial geometry (as
        :func:`hoiguide.alignment.build_observations` makes them): ``normals (H, W, 3)``,
        ``disparity (H, W)`` in 1/metres, ``valid (H, W)`` (zeros where invalid)."""

        _, keep = self.partial_points(mask, edge_rtol=edge_rtol, edge_dilate=edge_dilate)
        P = np.where(keep[..., None], self.points.astype(np.float64), np.nan)
        return point_map_targets(P, keep, rtol=edge_rtol)


def moge_to_point_map(output: Mapping[str, Any], width: int, height: int, *,
                      camera: Camera | None = None, metric: bool = True) -> PointMap:
    """MoGe's ``infer`` output (one image) -> :class:`PointMap`.

    Args:
        output: dict with ``points`` ``(H, W, 3)``, ``intrinsics`` ``(3, 3)`` normalised,
            optional ``mask``, ``depth``, ``normal``; numpy or torch; inf where invalid.
        width, height: the image size in pixels.
        camera: if given, points are rebuilt from the depth with this camera (see the module
            docstring); otherwise the camera is MoGe's intrinsics converted to pixels.
        metric: False for MoGe-1 (scale unknown).
    """
    for key in ("points", "intrinsics"):
        if key not in output:
            raise ValueError(f"moge_to_point_map: expected MoGe's output dict with 'points' "
                             f"and 'intrinsics', got keys {sorted(output)}")
    H, W = int(height), int(width)
    P = _np(output["points"]).astype(np.float64)
    if P.ndim == 4 and P.shape[0] == 1:
        P = P[0]
    if P.shape != (H, W, 3):
        raise ValueError(f"moge_to_point_map: expected points of shape ({H}, {W}, 3), got "
                         f"{P.shape}")
    Kn = _np(output["intrinsics"]).astype(np.float64).reshape(-1, 3, 3)[0]
    valid = np.isfinite(P).all(-1)
    if output.get("mask") is not None:
        valid &= _np(output["mask"]).reshape(H, W).astype(bool)
    K = Kn.copy()
    K[0] *= W
    K[1] *= H
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"moge_to_point_map: invalid intrinsics {Kn.tolist()}")
    moge_cam = Camera.from_K(K, W, H)
    if camera is not None:
        if (camera.width, camera.height) != (W, H):
            raise ValueError(f"moge_to_point_map: the camera is {camera.width}x{camera.height},"
                             f" the point map {W}x{H}")
        depth = _np(output["depth"]).reshape(H, W).astype(np.float64) \
            if output.get("depth") is not None else P[..., 2]
        vv, uu = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
        with np.errstate(invalid="ignore"):
            P = camera.unproject(np.stack([uu, vv], -1), np.where(valid, depth, np.nan))
        valid &= np.isfinite(depth)
        cam = camera
    else:
        cam = moge_cam
    N = output.get("normal")
    normals = None if N is None else _np(N).reshape(H, W, 3)
    with np.errstate(invalid="ignore"):
        pm = PointMap(np.where(valid[..., None], P, np.nan), valid, cam, normals, metric)
    return pm


class MoGeEstimator:
    """MoGe / MoGe-2 on one image -> :class:`PointMap`.

    Args:
        model: a ``moge.model.v1/v2.MoGeModel`` (or anything with MoGe's ``infer``).
        device: where it runs.
        resolution_level: MoGe's speed/detail trade-off (0-9, default 9 as MoGe).
        use_fp16: MoGe's mixed precision (default: on CUDA only).
        metric: whether the model is metric (MoGe-2) or not (MoGe-1).
    """

    native_frame = ("MoGe: OpenCV camera frame (x right, y down, z forward), metres for "
                    "MoGe-2; intrinsics normalised by image width/height; inf = invalid")

    def __init__(self, model: Any, *, device: torch.device | str | None = None,
                 resolution_level: int = 9, use_fp16: bool | None = None,
                 metric: bool = True) -> None:
        if not hasattr(model, "infer"):
            raise TypeError(f"MoGeEstimator: expected a MoGe model with .infer(), got "
                            f"{type(model).__name__}")
        self.device = default_device(device)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        self.resolution_level = int(resolution_level)
        self.use_fp16 = (self.device.type == "cuda") if use_fp16 is None else bool(use_fp16)
        self.metric = bool(metric)

    def __repr__(self) -> str:
        return (f"MoGeEstimator(device={self.device}, resolution_level={self.resolution_level},"
                f" metric={self.metric})")

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike = DEFAULT_MOGE, device:
                        torch.device | str | None = None, *, local_files_only: bool | None = None,
                        version: str | None = None, **kwargs: Any) -> "MoGeEstimator":
        """Load a MoGe model (hub id, a ``model.pt`` file or a folder holding one).

        Args:
            version: ``"v1"`` or ``"v2"``; by default ``"v2"`` unless the name looks like a
                MoGe-1 model (``moge-vit*`` without ``-2``).
            local_files_only: only the local Hugging Face cache (also ``HF_HUB_OFFLINE=1``).

        Raises:
            ImportError: MoGe not installed (it is not on PyPI; the message has the command).
            WeightsNotFoundError: the checkpoint was not found (lists where we looked).
        """
        name = os.fspath(name)
        if version is None:
            low = Path(name).name.lower() if looks_like_path(name) else name.lower()
            version = "v1" if ("moge-vit" in low and "moge-2" not in low) else "v2"
        if version not in ("v1", "v2"):
            raise ValueError(f"MoGeEstimator: expected version 'v1' or 'v2', got {version!r}")
        local = looks_like_path(name)
        target = name
        if local:
            p = Path(name).expanduser()
            if p.is_dir():
                p = p / "model.pt"
            if not p.is_file():
                raise WeightsNotFoundError(
                    f"MoGe: no checkpoint at {p} (a model.pt file, or a folder holding one). "
                    f"To fix: `hf download {DEFAULT_MOGE} model.pt --local-dir "
                    f"DIR` and pass DIR, or pass a hub id.")
            target = str(p)
        mod = import_optional(f"moge.model.{version}", "MoGeEstimator", "moge", "moge")
        offline = is_offline(local_files_only)
        kw: dict[str, Any] = {} if local else {"local_files_only": offline}
        try:
            model = mod.MoGeModel.from_pretrained(target, **kw)
        except OSError as exc:
            where = (f"local file {target}" if local else
                     f"the Hugging Face {'cache (offline mode)' if offline else 'cache and hub'}"
                     f" for {name!r}")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise WeightsNotFoundError(
                f"MoGe: could not load {name!r}. Looked in: {where}: {type(exc).__name__}: "
                f"{first}\nTo fix: `hf download {DEFAULT_MOGE if local else name} "
                f"model.pt`, or MoGeEstimator.from_pretrained('/path/to/model.pt').") from exc
        return cls(model, device=device, metric=(version == "v2"), **kwargs)

    def __call__(self, image: np.ndarray, *, mask: Any | None = None,
                 camera: Camera | None = None) -> PointMap:
        """Point map of ``image``.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (e.g. the crop).
            mask: optional ``(H, W)`` bool; pixels outside are whitened first (the
                reference runs MoGe on the union-masked crop).
            camera: the image's camera when known (see the module docstring); else MoGe's
                estimate is used.

        Returns:
            :class:`PointMap` (camera frame of ``camera`` or of MoGe's estimate).
        """
        img = check_image(image, "MoGeEstimator")
        H, W = img.shape[:2]
        if mask is not None:
            m = check_mask(mask, (H, W), "MoGeEstimator: mask")
            img = np.where(m[..., None], img, 255).astype(np.uint8)
        if camera is not None and (camera.width, camera.height) != (W, H):
            raise ValueError(f"MoGeEstimator: the camera is {camera.width}x{camera.height}, the "
                             f"image {W}x{H}")
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0).to(self.device)
        kw: dict[str, Any] = {"resolution_level": self.resolution_level,
                              "use_fp16": self.use_fp16}
        if camera is not None:
            kw["fov_x"] = math.degrees(2 * math.atan(W / (2 * camera.fx)))
        with torch.inference_mode():
            out = self.model.infer(x, **kw)
        if not isinstance(out, Mapping):
            raise TypeError(f"MoGeEstimator: expected infer() to return a dict, got "
                            f"{type(out).__name__}")
        pm = moge_to_point_map(out, W, H, camera=camera, metric=self.metric)
        log.debug("MoGe: %d valid pixels of %d, median depth %.3f", int(pm.valid.sum()),
                  H * W, float(np.nanmedian(pm.depth)) if pm.valid.any() else float("nan"))
        return pm
