"""What a loss term can read: the :class:`LossContext` the guidance engine fills per inner
iteration.

Frames and units: every 3D quantity is in the image-aligned frame (OpenCV camera frame of the
cropped image: +x right, +y down, +z forward, metres); every 2D quantity is in pixels of
``camera`` (pixel centres at ``+0.5``), images are ``(H, W)`` row-major.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from hoiguide.types import Camera, Mesh

__all__ = ["LossContext", "HAND", "OBJECT"]

#: index of the hand in ``render`` outputs (``silhouette[HAND]``, ``mesh_id == HAND``)
HAND = 0
#: index of the object in ``render`` outputs
OBJECT = 1


@dataclass
class LossContext:
    """Inputs of the registered loss terms for one inner iteration.

    Every field is optional: a phase may lack some of them (no keypoints detected, no
    monocular geometry, no render because only 3D terms are active). A term that needs a
    missing field raises a ``ValueError`` naming the field, the term, the phase and the step
    (see :meth:`hoiguide.losses.LossSpec.missing` to find such terms beforehand).

    Attributes:
        render: a :class:`hoiguide.render.RenderOutput` of ``[hand, object]`` (mesh 0 = hand,
            mesh 1 = object) with ``depth``, ``disparity``, ``normals`` (H, W, 3; unit,
            camera frame), ``mask`` (H, W bool), ``mesh_id`` / ``face_id`` (H, W int64,
            -1 where empty), ``silhouette`` (M, H, W soft visible coverage per mesh),
            ``coverage`` (H, W soft union) and ``amodal`` (M, H, W soft coverage of each mesh
            alone, or ``None`` when not rendered).
        hand_mesh, object_mesh: the meshes in the image frame (after their similarities).
        camera: the camera of the renders, masks and 2D keypoints.
        target_normals: ``(H, W, 3)`` target unit normals (camera frame, facing the camera
            means negative z).
        target_disparity: ``(H, W)`` target 1/depth in 1/metres.
        target_valid: ``(H, W)`` bool, where the monocular geometry is valid (all pixels when
            ``None``).
        mask_hand, mask_object: ``(H, W)`` bool or float in ``[0, 1]``; ``mask_object`` is
            the VISIBLE object.
        mask_object_amodal: optional ``(H, W)`` full object extent (hidden part included).
        mask_union: ``(H, W)`` hand | object, bool or float in ``[0, 1]``.
        hand_keypoints_3d: ``(21, 3)`` hand keypoints in the image frame (metres).
        keypoints_2d: ``(21, 2)`` detected keypoints in pixels; ``keypoint_confidence``
            optional ``(21,)`` in ``[0, 1]``.
        soft_masks: the masks above as the renderer would draw their outlines (``{field
            name: (H, W) float}``, :func:`hoiguide.render.soft_mask`): the targets of the
            silhouette terms with ``target: soft``.
        hand_translation, object_translation: ``(3,)`` translation parameters of the hand and
            object similarities (metres), for the translation regulariser.
        phase, step: where the engine is, used in error messages only.
    """

    render: Optional[Any] = None
    hand_mesh: Optional[Mesh] = None
    object_mesh: Optional[Mesh] = None
    camera: Optional[Camera] = None
    target_normals: Optional[torch.Tensor] = None
    target_disparity: Optional[torch.Tensor] = None
    target_valid: Optional[torch.Tensor] = None
    mask_hand: Optional[torch.Tensor] = None
    mask_object: Optional[torch.Tensor] = None
    mask_object_amodal: Optional[torch.Tensor] = None
    mask_union: Optional[torch.Tensor] = None
    hand_keypoints_3d: Optional[torch.Tensor] = None
    keypoints_2d: Optional[torch.Tensor] = None
    keypoint_confidence: Optional[torch.Tensor] = None
    soft_masks: Optional[dict[str, torch.Tensor]] = None
    hand_translation: Optional[torch.Tensor] = None
    object_translation: Optional[torch.Tensor] = None
    phase: Optional[str] = None
    step: Optional[int] = None

    def replace(self, **changes: Any) -> "LossContext":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def where(self) -> str:
        """``"phase 'joint', step 12"`` (or less) for error messages."""
        parts = []
        if self.phase is not None:
            parts.append(f"phase {self.phase!r}")
        if self.step is not None:
            parts.append(f"step {self.step}")
        return ", ".join(parts)

    def has(self, field_path: str) -> bool:
        """Whether a field (``"mask_hand"``) or a render field (``"render.amodal"``) is
        present (not ``None``)."""
        head, _, rest = field_path.partition(".")
        value = getattr(self, head, None)
        if value is None:
            return False
        if rest:
            return getattr(value, rest, None) is not None
        return True
