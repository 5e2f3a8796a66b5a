"""The observations as the inner loop compares them: resampled to the render size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from hoiguide.render.portable import soft_mask
from hoiguide.types import Camera, Observations

__all__ = ["RenderTargets", "prepare_targets"]


@dataclass
class RenderTargets:
    """The observations at the render size, on the engine's device and dtype (image-aligned
    frame; the camera rescaled to the render size, 2D keypoints in its pixels)."""

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
    soft_masks: Optional[dict[str, torch.Tensor]] = None


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


def prepare_targets(obs: Observations, size: Any, dtype: torch.dtype,
                    device: torch.device, edge_sigma: float = 1.0) -> RenderTargets:
    """``obs``'s masks, maps and keypoints at the render ``size`` (``None``: the camera's;
    an int: square; or ``(H, W)``): masks resampled by area (soft at their edges), maps by
    nearest neighbour (normals renormalised), keypoints scaled to the new pixels.
    ``soft_masks`` holds each mask as the renderer would draw its outline with
    ``edge_sigma`` (:func:`hoiguide.render.soft_mask`; the silhouette terms'
    ``target: soft``)."""
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
    return RenderTargets(
        camera=cam,
        mask_hand=_resample(obs.mask_hand, hw, mask_mode, dtype, device),
        mask_object=_resample(obs.mask_object, hw, mask_mode, dtype, device),
        mask_union=_resample(obs.mask_union, hw, mask_mode, dtype, device),
        mask_object_amodal=_resample(obs.mask_object_amodal, hw, mask_mode, dtype, device),
        target_normals=normals,
        target_disparity=_resample(obs.target_disparity, hw, "nearest", dtype, device),
        target_valid=_resample(obs.target_valid, hw, "nearest", dtype, device),
        keypoints_2d=kp, keypoint_confidence=conf,
        soft_masks={name: soft_mask(m, hw, edge_sigma, unknown).to(device=device, dtype=dtype)
                    for name, m, unknown in (
                        ("mask_hand", obs.mask_hand, None),
                        # the hand hides part of the object: an occlusion boundary is not
                        # the object's outline (the term ignores the hand's pixels)
                        ("mask_object", obs.mask_object, obs.mask_hand),
                        ("mask_union", obs.mask_union, None),
                        ("mask_object_amodal", obs.mask_object_amodal, None))
                    if m is not None})
