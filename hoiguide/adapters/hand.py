"""Hand estimation (docs/method.md section 1, step 5) into the crop camera frame.

One result type, :class:`HandEstimate` (mesh, 21 OpenPose-order keypoints in 3D and in pixels,
in the camera frame of the image it was given, metres), made by one of:

* :class:`hoiguide.adapters.hamer.HaMeREstimator` (the reference's: HaMeR's MANO regression);
* :class:`hoiguide.adapters.mediapipe_hand.MediaPipeHandEstimator` (offline: MediaPipe Hands
  keypoints) with :func:`hoiguide.adapters.keypoint_fit.fit_hand_to_keypoints` (an open hand
  model fitted to 2D keypoints).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from hoiguide.hands import ManoLayer
from hoiguide.types import Camera, Mesh

__all__ = ["HandEstimate", "as_tensor", "model_kind", "keypoint_box", "box_iou"]

log = logging.getLogger(__name__)


def as_tensor(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype=dtype, device="cpu")
    return torch.as_tensor(np.asarray(x), dtype=dtype)


# --------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------


@dataclass
class HandEstimate:
    """One hand in the camera frame of the image it was estimated on (the crop).

    Attributes:
        vertices: ``(V, 3)`` float32, metres, OpenCV camera frame.
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside.
        keypoints_3d: ``(21, 3)`` float32, same frame, OpenPose order.
        keypoints_2d: ``(21, 2)`` float32, pixels of the image (the detector's keypoints).
        keypoint_confidence: ``(21,)`` float32 in ``[0, 1]``.
        side: ``"right"`` or ``"left"``.
        model: ``"mano"`` or ``"procedural"``.
        params: the model parameters that reproduce ``vertices`` (``global_orient`` (3,),
            ``hand_pose`` (45,), ``betas``, ``transl`` (3,): ``model(**params)``, for
            HaMeR the right MANO hand, mirrored for a left one) and diagnostics.
        camera: the camera of the image (pixels), when known.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    keypoints_3d: torch.Tensor
    keypoints_2d: torch.Tensor
    keypoint_confidence: torch.Tensor
    side: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    camera: Camera | None = None

    def __post_init__(self) -> None:
        self.vertices = as_tensor(self.vertices)
        self.faces = as_tensor(self.faces, torch.long)
        self.keypoints_3d = as_tensor(self.keypoints_3d)
        self.keypoints_2d = as_tensor(self.keypoints_2d)
        self.keypoint_confidence = as_tensor(self.keypoint_confidence)
        for name, t, shape in (("vertices", self.vertices, (None, 3)),
                               ("faces", self.faces, (None, 3)),
                               ("keypoints_3d", self.keypoints_3d, (21, 3)),
                               ("keypoints_2d", self.keypoints_2d, (21, 2)),
                               ("keypoint_confidence", self.keypoint_confidence, (21,))):
            if t.ndim != len(shape) or any(s is not None and s != d
                                           for s, d in zip(shape, t.shape)):
                want = tuple("N" if s is None else s for s in shape)
                raise ValueError(f"HandEstimate.{name}: expected shape {want}, got "
                                 f"{tuple(t.shape)}")
        if self.side not in ("right", "left"):
            raise ValueError(f"HandEstimate.side: expected 'right' or 'left', got {self.side!r}")

    def mesh(self) -> Mesh:
        """The hand as a :class:`~hoiguide.types.Mesh` (camera frame, metres)."""
        return Mesh(self.vertices, self.faces)

    def reprojection_error(self, camera: Camera | None = None) -> float:
        """Mean distance in pixels between the projected 3D keypoints and ``keypoints_2d``
        (weighted by the confidences)."""
        cam = camera or self.camera
        if cam is None:
            raise ValueError("HandEstimate.reprojection_error: no camera")
        uv = cam.project(self.keypoints_3d.double())
        d = (uv - self.keypoints_2d.double()).norm(dim=-1)
        w = self.keypoint_confidence.double()
        return float((d * w).sum() / w.sum().clamp_min(1e-12))


def model_kind(model: Any) -> str:

    return "mano" if isinstance(model, ManoLayer) else "procedural"


def keypoint_box(kp: np.ndarray) -> tuple[float, float, float, float]:
    return float(kp[:, 0].min()), float(kp[:, 1].min()), float(kp[:, 0].max()), \
        float(kp[:, 1].max())


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
