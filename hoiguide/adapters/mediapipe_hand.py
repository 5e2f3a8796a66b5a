"""MediaPipe Hands (offline, no download): 21 landmarks -> :func:`fit_hand_to_keypoints`.

MediaPipe Hands (models bundled in
  mediapipe 0.10.21) gives 21 landmarks (``x, y`` normalised by the image width/height, ``z``
  depth relative to the wrist in about the same units as ``x``) and a handedness that
  assumes a mirrored selfie image (swapped here). :func:`fit_hand_to_keypoints` then fits
  an open hand model (the procedural hand by default) to them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from hoiguide.adapters._util import (
    NoDetectionError,
    check_box,
    check_image,
    import_optional,
)
from hoiguide.adapters.hand import HandEstimate, box_iou, keypoint_box
from hoiguide.adapters.keypoint_fit import fit_hand_to_keypoints
from hoiguide.types import Camera

__all__ = ["MediaPipeHandEstimator", "mediapipe_to_keypoints"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# MediaPipe
# --------------------------------------------------------------------------------------


def mediapipe_to_keypoints(landmarks: Any, width: int, height: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's 21 normalised landmarks -> ``(keypoints_2d (21, 2) pixels, depth_px (21,))``.

    ``landmarks``: a ``NormalizedLandmarkList`` (``.landmark[i].x/.y/.z``), a sequence of
    objects with ``x, y, z``, or an ``(21, 3)`` array. ``x, y`` in ``[0, 1]`` of the image
    width / height become pixels ``(x W, y H)``; ``z`` (relative to the wrist, "about the
    same scale as x") becomes ``(z - z_wrist) W`` pixels, positive = farther.
    """
    items = getattr(landmarks, "landmark", landmarks)
    if isinstance(items, np.ndarray) or isinstance(items, torch.Tensor):
        arr = np.asarray(items, np.float64)
    else:
        try:
            arr = np.array([[float(p.x), float(p.y), float(p.z)] for p in items], np.float64)
        except (AttributeError, TypeError) as exc:
            raise ValueError(f"mediapipe_to_keypoints: expected 21 landmarks with x, y, z, got "
                             f"{type(landmarks).__name__}") from exc
    if arr.shape != (21, 3) or not np.isfinite(arr).all():
        raise ValueError(f"mediapipe_to_keypoints: expected 21 finite landmarks (x, y, z), got "
                         f"shape {arr.shape}")
    kp = arr[:, :2] * np.array([width, height], np.float64)
    depth = (arr[:, 2] - arr[0, 2]) * float(width)
    return kp, depth


class MediaPipeHandEstimator:
    """MediaPipe Hands keypoints + :func:`fit_hand_to_keypoints` with an open hand model.

    Args:
        hands: an object with ``process(rgb_uint8)`` returning MediaPipe's result
            (``multi_hand_landmarks``, ``multi_handedness``); default: a
            ``mediapipe.solutions.hands.Hands`` made on first use.
        hand_model: a hand model, or a callable ``side -> model``; default the procedural
            hand (``detail``) of the detected side.
        iterations, depth_weight: passed to the fit.
        use_depth_hint: use MediaPipe's relative ``z`` in the fit.
        min_detection_confidence, model_complexity, max_num_hands: MediaPipe settings.
        image_is_mirrored: True for selfie images (MediaPipe's handedness is then right as
            is); False (default: ordinary photos) swaps it.
    """

    native_frame = ("MediaPipe Hands: x, y normalised by image width / height, z relative to "
                    "the wrist in ~image-width units; handedness for a mirrored image")

    def __init__(self, hands: Any = None, *, hand_model: Any = None, detail: int = 1,
                 iterations: int = 200, depth_weight: float = 0.3, use_depth_hint: bool = True,
                 min_detection_confidence: float = 0.5, model_complexity: int = 1,
                 max_num_hands: int = 2, image_is_mirrored: bool = False) -> None:
        self._hands = hands
        self._hand_model = hand_model
        self.detail = int(detail)
        self.iterations = int(iterations)
        self.depth_weight = float(depth_weight)
        self.use_depth_hint = bool(use_depth_hint)
        self.min_detection_confidence = float(min_detection_confidence)
        self.model_complexity = int(model_complexity)
        self.max_num_hands = int(max_num_hands)
        self.image_is_mirrored = bool(image_is_mirrored)
        self._models: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"MediaPipeHandEstimator(iterations={self.iterations}, "
                f"depth_hint={self.use_depth_hint})")

    @property
    def hands(self) -> Any:
        if self._hands is None:
            mp = import_optional("mediapipe", "MediaPipeHandEstimator", "mediapipe==0.10.21",
                                 "mediapipe")
            solutions = getattr(mp, "solutions", None)
            if solutions is None or not hasattr(solutions, "hands"):
                raise ImportError(
                    "MediaPipeHandEstimator needs mediapipe's legacy `solutions.hands` with its "
                    "bundled hand models (mediapipe 0.10.21; newer wheels ship no hand "
                    "models). Install it with: pip install --no-deps mediapipe==0.10.21 "
                    "'hoiguide[mediapipe]' (what it imports; protobuf < 5)")
            self._hands = solutions.hands.Hands(
                static_image_mode=True, max_num_hands=self.max_num_hands,
                model_complexity=self.model_complexity,
                min_detection_confidence=self.min_detection_confidence)
        return self._hands

    def close(self) -> None:
        if self._hands is not None and hasattr(self._hands, "close"):
            self._hands.close()
        self._hands = None

    def model_for(self, side: str) -> Any:
        """The hand model used for ``side`` (built once)."""
        if side not in self._models:
            hm = self._hand_model
            if hm is None:
                from hoiguide.hands import ProceduralHand

                self._models[side] = ProceduralHand(side, detail=self.detail)
            elif isinstance(hm, torch.nn.Module):
                if getattr(hm, "side", side) != side:
                    raise ValueError(f"MediaPipeHandEstimator: the hand model is a "
                                     f"{hm.side} hand but a {side} hand was detected; pass a "
                                     f"callable side -> model")
                self._models[side] = hm
            else:
                self._models[side] = hm(side)
        return self._models[side]

    def detect(self, image: np.ndarray) -> list[dict[str, Any]]:
        """All hands MediaPipe finds: ``[{"keypoints_2d" (21, 2) px, "depth_px" (21,),
        "side", "score"}, ...]`` (side corrected for an unmirrored image)."""
        img = check_image(image, "MediaPipeHandEstimator")
        H, W = img.shape[:2]
        res = self.hands.process(img)
        lms = getattr(res, "multi_hand_landmarks", None) or []
        hd = getattr(res, "multi_handedness", None) or []
        out = []
        for i, lm in enumerate(lms):
            kp, depth = mediapipe_to_keypoints(lm, W, H)
            label, score = "Right", 1.0
            if i < len(hd):
                cls = hd[i].classification[0] if hasattr(hd[i], "classification") else hd[i]
                label, score = str(cls.label), float(cls.score)
            side = label.lower()
            if side not in ("left", "right"):
                raise ValueError(f"MediaPipe returned handedness {label!r}")
            if not self.image_is_mirrored:
                side = "left" if side == "right" else "right"
            out.append({"keypoints_2d": kp, "depth_px": depth, "side": side, "score": score})
        return out

    def __call__(self, image: np.ndarray, camera: Camera, *, side: str | None = None,
                 hand_box: Any | None = None) -> HandEstimate:
        """Detect and fit one hand.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (the crop).
            camera: its camera.
            side: the hand's side when known (the pipeline's crop mirrors left hands, so
                ``"right"``): detections of that side are preferred and the model of that side
                is fitted (MediaPipe's handedness is sometimes wrong: when no detection has
                the side, the best one is fitted anyway, with a warning); default: whatever
                MediaPipe says.
            hand_box: prefer the hand whose keypoints overlap this box most (pixels).

        Raises:
            NoDetectionError: MediaPipe found no hand.
        """
        img = check_image(image, "MediaPipeHandEstimator")
        if not isinstance(camera, Camera) or (camera.width, camera.height) != \
                (img.shape[1], img.shape[0]):
            raise ValueError(f"MediaPipeHandEstimator: expected the image's Camera "
                             f"({img.shape[1]}x{img.shape[0]}), got {camera!r}")
        if side is not None and side not in ("left", "right"):
            raise ValueError(f"MediaPipeHandEstimator: expected side 'left' or 'right', got "
                             f"{side!r}")
        dets = self.detect(img)
        if not dets:
            raise NoDetectionError("MediaPipe found no hand in the image")
        if side is not None:
            same = [d for d in dets if d["side"] == side]
            if not same:
                log.warning("MediaPipe's handedness says %s, the caller %s: fitting a %s hand "
                            "to the best detection", dets[0]["side"], side, side)
            dets = same or dets
        if hand_box is not None:
            box = check_box(hand_box, "MediaPipeHandEstimator: hand_box")
            det = max(dets, key=lambda d: (box_iou(keypoint_box(d["keypoints_2d"]), box), d["score"]))
        else:
            det = max(dets, key=lambda d: d["score"])
        model = self.model_for(side or det["side"])
        est = fit_hand_to_keypoints(
            model, det["keypoints_2d"], camera, iterations=self.iterations,
            depth_hint=det["depth_px"] if self.use_depth_hint else None,
            confidence=np.full(21, det["score"]), depth_weight=self.depth_weight)
        est.params["detector"] = "mediapipe"
        est.params["handedness_score"] = det["score"]
        return est
