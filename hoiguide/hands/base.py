"""What every hand model shares: keypoint names, the output type and the module interface.

Two models implement :class:`HandModel`: :class:`~hoiguide.hands.ProceduralHand` (open, built
from primitives, ships with the library) and :class:`~hoiguide.hands.ManoLayer` (needs the
official MANO file, which the user supplies). Both are ``torch.nn.Module`` objects called
with MANO-style parameters and return a :class:`HandOutput`.

Parameters (both models, batch ``B``):

* ``global_orient`` ``(B, 3)``: axis-angle (radians) of the whole hand **about the wrist
  joint** (joint 0), in the model's canonical frame;
* ``hand_pose`` ``(B, 45)``: axis-angle (radians) of the 15 finger joints, 3 numbers each,
  in **MANO joint order** (:data:`MANO_JOINT_NAMES` without the wrist: index1-3, middle1-3,
  pinky1-3, ring1-3, thumb1-3). What the three numbers mean is model specific (MANO: a
  rotation in the canonical frame; the procedural hand: a rotation in the joint's own
  anatomical frame, see its docstring);
* ``betas`` ``(B, num_betas)``: shape coefficients;
* ``transl`` ``(B, 3)``: translation in metres, added after the rotation about the wrist.

Any may be ``None`` (zeros). The batch size is taken from the given ones (they must agree);
the computation runs in float64 if any given input is float64, else float32.

Outputs are in the *posed frame*: the canonical frame rotated by ``global_orient`` about
the wrist and shifted by ``transl``. Put ``transl = 0, global_orient = 0`` and you are in
the canonical frame with the wrist at the origin (procedural hand; MANO's wrist sits where
its template puts it).

Canonical frame of the **procedural** hand (metres, a right hand seen from a camera at the
origin looking down +z with the OpenCV axes of :mod:`hoiguide.types`): a right hand held
up with the **palm toward the camera**: fingers point along **-y** (up in the image), the
palm faces **-z** (toward the camera), the back of the hand faces +z, the **thumb is on the
+x side** (the viewer's right, as for a real right palm seen from the front) and the little
finger on the -x side. The wrist joint is at the origin; the middle fingertip is 18.4 cm
from it, the palm 8.2 cm wide. A left hand is the mirror image ``x -> -x`` (fingers still
up, palm still toward the camera, thumb on -x), with faces re-wound so the normals stay
outward. MANO's canonical frame is the one of its model file
(a different one).

Left and right parameters follow MANO's mirror rule: the left hand posed with
``(ax, -ay, -az)`` for every axis-angle triple (global and per joint), ``betas`` unchanged
and ``transl`` mirrored ``(-tx, ty, tz)`` is exactly the mirror image of the right hand posed
with ``(ax, ay, az)``.

The 21 keypoints are in OpenPose order (:data:`KEYPOINT_NAMES`): the wrist, then per
finger (thumb, index, middle, ring, pinky) its three joints from the palm outward and its
tip, where the tip is a **mesh vertex** at the end of the finger
(:attr:`HandModel.fingertip_vertex_ids`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from hoiguide.types import Mesh

__all__ = ["KEYPOINT_NAMES", "FINGERS", "MANO_JOINT_NAMES", "MANO_PARENTS", "HandOutput",
           "HandModel"]

log = logging.getLogger(__name__)

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")

#: The 21 keypoints, OpenPose order.
KEYPOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{f}{k}" for f in FINGERS for k in range(1, 5))

#: The 16 MANO joints in MANO order (joint ``j`` of ``hand_pose`` is ``MANO_JOINT_NAMES[j+1]``).
MANO_JOINT_NAMES: tuple[str, ...] = (
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3", "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3")

#: Parent of each MANO joint (-1 for the wrist).
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

#: MANO joint ids of each finger's three joints (palm outward), in :data:`FINGERS` order.
FINGER_JOINTS: tuple[tuple[int, int, int], ...] = (
    (13, 14, 15), (1, 2, 3), (4, 5, 6), (10, 11, 12), (7, 8, 9))


#: MANO joint id of each keypoint (``-1`` for the 5 tips).
KEYPOINT_JOINT: tuple[int, ...] = (0,) + tuple(
    j for ids in FINGER_JOINTS for j in (*ids, -1))
#: positions of the 5 tips in the 21 keypoints, thumb..pinky.
TIP_KEYPOINTS: tuple[int, ...] = (4, 8, 12, 16, 20)
_MIRROR = (-1.0, 1.0, 1.0)
_AA_MIRROR = (1.0, -1.0, -1.0)


@dataclass
class HandOutput:
    """A posed hand (batch ``B``), everything in the posed frame, metres.

    Attributes:
        vertices: ``(B, V, 3)`` mesh vertices.
        keypoints: ``(B, 21, 3)`` OpenPose-order keypoints (:data:`KEYPOINT_NAMES`); the
            five tips are mesh vertices at the finger ends.
        joints: ``(B, 16, 3)`` the 16 joints (MANO order) after posing.
        transforms: ``(B, 16, 4, 4)`` world transform of each joint: rotation ``G_j`` (the
            joint's accumulated rotation relative to the rest hand; identity in the rest
            pose) and translation ``joints[:, j]``. A point ``x`` of the rest (unposed,
            shaped) hand carried by joint ``j`` goes to ``G_j (x - rest_joints_j) +
            joints_j``.
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside (outward normals);
            watertight for the procedural hand, open at the wrist for MANO.
        betas: ``(B, num_betas)`` the shape used (zeros when none was given).
        rest_joints: ``(B, 16, 3)`` joints of the shaped hand before posing (canonical
            frame).
    """

    vertices: torch.Tensor
    keypoints: torch.Tensor
    joints: torch.Tensor
    transforms: torch.Tensor
    faces: torch.Tensor
    betas: torch.Tensor | None = None
    rest_joints: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.vertices.shape[0])

    def mesh(self, i: int = 0) -> Mesh:
        """Hand ``i`` of the batch as a :class:`~hoiguide.types.Mesh` (vertices keep their
        gradient; posed frame, metres)."""
        B = self.batch_size
        if not -B <= int(i) < B:
            raise IndexError(f"HandOutput.mesh: index {i} out of range for batch size {B}")
        return Mesh(self.vertices[int(i)], self.faces)

    def detach(self) -> "HandOutput":
        """A copy with every tensor detached."""
        return HandOutput(**{k: (None if v is None else v.detach())
                             for k, v in self.__dict__.items()})


# --------------------------------------------------------------------------------------
# shared math
# --------------------------------------------------------------------------------------


def mirror_axis_angle(aa: torch.Tensor) -> torch.Tensor:
    """MANO's left/right rule for axis-angle ``(..., 3k)``: ``(ax, ay, az) -> (ax, -ay, -az)``
    for every triple (conjugation by the mirror ``x -> -x``)."""
    if aa.shape[-1] % 3:
        raise ValueError(f"mirror_axis_angle: expected (..., 3k), got {tuple(aa.shape)}")
    s = torch.tensor(_AA_MIRROR, dtype=aa.dtype, device=aa.device)
    return (aa.reshape(aa.shape[:-1] + (-1, 3)) * s).reshape(aa.shape)


def mirror_points(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3) -> (..., 3)`` with ``x -> -x``."""
    return x * torch.tensor(_MIRROR, dtype=x.dtype, device=x.device)


def mirror_transforms(T: torch.Tensor) -> torch.Tensor:
    """Conjugate ``(..., 4, 4)`` rigid transforms by the mirror ``x -> -x`` (still
    rotations)."""
    m = torch.tensor(_MIRROR + (1.0,), dtype=T.dtype, device=T.device)
    return T * m[:, None] * m[None, :]


def kinematic_chain(local_rot: torch.Tensor, rest_joints: torch.Tensor,
                    parents: Sequence[int], transl: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics.

    Args:
        local_rot: ``(B, J, 3, 3)`` rotation of each joint relative to its parent, expressed
            in the canonical frame (joint 0: the global rotation about joint 0).
        rest_joints: ``(B, J, 3)`` joint positions of the unposed hand, metres.
        parents: parent of each joint (``-1`` for the root), parents before children.
        transl: ``(B, 3)`` added to everything, metres.

    Returns:
        ``(G, P)``: world rotations ``(B, J, 3, 3)`` and posed joint positions ``(B, J, 3)``.
    """
    G: list[torch.Tensor] = []
    P: list[torch.Tensor] = []
    for j, p in enumerate(parents):
        if p < 0:
            G.append(local_rot[:, j])
            P.append(rest_joints[:, j] + transl)
        else:
            G.append(G[p] @ local_rot[:, j])
            P.append(P[p] + (G[p] @ (rest_joints[:, j] - rest_joints[:, p])[..., None])[..., 0])
    return torch.stack(G, 1), torch.stack(P, 1)


def skin(points: torch.Tensor, weights: torch.Tensor, G: torch.Tensor, P: torch.Tensor,
         rest_joints: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning of rest points ``(B, V, 3)`` with weights ``(V, J)`` by the
    joint transforms ``x -> G_j (x - rest_joints_j) + P_j``; returns ``(B, V, 3)``."""
    t = P - (G @ rest_joints[..., None])[..., 0]                         # (B, J, 3)
    A = torch.cat([G, t[..., None]], -1)                                 # (B, J, 3, 4)
    Av = torch.einsum("vj,bjkl->bvkl", weights.to(A.dtype), A)           # (B, V, 3, 4)
    return (Av[..., :3] @ points[..., None])[..., 0] + Av[..., 3]


def transforms_matrix(G: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``(B, J, 3, 3)`` rotations and ``(B, J, 3)`` translations -> ``(B, J, 4, 4)``."""
    bottom = torch.zeros(G.shape[:-2] + (1, 4), dtype=G.dtype, device=G.device)
    bottom[..., 0, 3] = 1
    return torch.cat([torch.cat([G, P[..., None]], -1), bottom], -2)


def assemble_keypoints(joints: torch.Tensor, vertices: torch.Tensor,
                       tip_ids: Sequence[int]) -> torch.Tensor:
    """21 OpenPose keypoints ``(B, 21, 3)`` from the 16 MANO joints ``(B, 16, 3)`` and the
    posed vertices ``(B, V, 3)`` (tip vertex ids in thumb..pinky order)."""
    src = torch.cat([joints, vertices[:, list(tip_ids)]], 1)            # (B, 21, 3)
    return src[:, list(_KEYPOINT_INDEX)]


_KEYPOINT_INDEX = tuple(j if j >= 0 else 16 + TIP_KEYPOINTS.index(k)
                        for k, j in enumerate(KEYPOINT_JOINT))


# --------------------------------------------------------------------------------------
# the module interface
# --------------------------------------------------------------------------------------


class HandModel(torch.nn.Module):
    """Common base of the hand models (see the module docstring for parameters and frames).

    Attributes:
        side: ``"right"`` or ``"left"``.
        num_betas: length of ``betas``.
        faces: ``(F, 3)`` int64 buffer, CCW seen from outside.
        fingertip_vertex_ids: 5 vertex ids (thumb..pinky) used as the tip keypoints.
    """

    side: str
    num_betas: int
    faces: torch.Tensor
    fingertip_vertex_ids: tuple[int, ...]
    #: how many numbers ``hand_pose`` has (45, or the PCA size for a PCA MANO layer)
    pose_dim: int = 45

    def forward(self, global_orient: torch.Tensor | None = None,
                hand_pose: torch.Tensor | None = None, betas: torch.Tensor | None = None,
                transl: torch.Tensor | None = None) -> HandOutput:  # pragma: no cover
        raise NotImplementedError

    def rest_pose(self) -> HandOutput:
        """The hand with all parameters zero (batch 1, float32)."""
        return self()

    # helpers for subclasses -------------------------------------------------------------
    def _buffer_device(self) -> torch.device:
        return self.faces.device

    def _prepare(self, global_orient: Any, hand_pose: Any, betas: Any, transl: Any
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate the four inputs; return them as tensors of one dtype and batch size
        (missing ones as zeros)."""
        name = type(self).__name__
        dims = {"global_orient": 3, "hand_pose": self.pose_dim, "betas": self.num_betas,
                "transl": 3}
        given = {}
        for key, val in (("global_orient", global_orient), ("hand_pose", hand_pose),
                         ("betas", betas), ("transl", transl)):
            if val is None:
                continue
            t = val if isinstance(val, torch.Tensor) else torch.as_tensor(np.asarray(val))
            if not t.is_floating_point():
                raise TypeError(f"{name}: expected {key} to be a floating tensor, got {t.dtype}")
            if t.ndim != 2 or t.shape[1] != dims[key]:
                raise ValueError(f"{name}: expected {key} of shape (B, {dims[key]}), got "
                                 f"{tuple(t.shape)}")
            given[key] = t
        batch = {k: int(v.shape[0]) for k, v in given.items()}
        if len(set(batch.values())) > 1:
            raise ValueError(f"{name}: inputs disagree on the batch size: {batch}")
        B = next(iter(batch.values())) if batch else 1
        dtype = torch.float32
        for t in given.values():
            if t.dtype == torch.float64:
                dtype = torch.float64
        dev = self._buffer_device()
        out = []
        for key in ("global_orient", "hand_pose", "betas", "transl"):
            if key in given:
                t = given[key]
                if t.device != dev:
                    raise ValueError(f"{name}: {key} is on {t.device} but the model is on "
                                     f"{dev}; move one of them")
                out.append(t.to(dtype))
            else:
                out.append(torch.zeros(B, dims[key], dtype=dtype, device=dev))
        return out[0], out[1], out[2], out[3]

    def extra_repr(self) -> str:
        return f"side={self.side!r}, num_betas={self.num_betas}"
