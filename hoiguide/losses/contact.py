"""3D hand-object contact losses: proximity (attraction) and intersection (repulsion).

Pure functions plus their registered terms (``proximity``, ``intersection``). Everything is
in the image-aligned frame, metres. Distances come from
:func:`hoiguide.geometry.signed_distance` (negative inside, generalized winding number for the
sign, so the hand may be open at the wrist), which is differentiable w.r.t. the query points
AND the mesh vertices: both meshes receive gradients.

* ``proximity`` (paper Eq. 4): one-sided hand -> object. Every hand vertex farther than
  ``margin`` METRES outside the object is pulled towards it:
  ``mean_i relu(d_i - margin)^2`` with ``d_i = max(sdf_object(hand_i), 0)``. The margin is a
  distance in metres (the reference compares it with a SQUARED distance, so its 0.01 acts as
  a 10 cm margin).
* ``intersection`` (paper Eq. 3 is a volume; the reference counts voxels, which has no
  gradient): differentiable penetration depth,
  ``mean_i relu(-sdf_object(hand_i))^p + mean_j relu(-sdf_hand(object_j))^p``. Minimising it
  pushes every vertex of either mesh that lies inside the other one out of it, which reduces
  the intersection volume (see ``tests/test_losses.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from hoiguide.geometry import signed_distance
from hoiguide.geometry.indexing import take
from hoiguide.losses.context import LossContext
from hoiguide.losses.image import shape_text
from hoiguide.losses.registry import Option, register_loss
from hoiguide.types import Mesh

__all__ = ["proximity_loss", "intersection_loss", "penetration_depth"]

_SIGNS = ("winding", "normal")


def _check_mesh(mesh: Mesh, what: str, name: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{what}: expected {name} as a Mesh, got {type(mesh).__name__}")
    mesh.require_nonempty(f"{what} ({name})")


def _sdf(points: torch.Tensor, mesh: Mesh, sign: str) -> torch.Tensor:

    return signed_distance(points, mesh, sign=sign)


def proximity_loss(points: torch.Tensor, mesh: Mesh, margin: float = 0.01,
                   sign: str = "winding") -> torch.Tensor:
    """Mean of ``relu(d - margin)^2`` over the points, with ``d`` the distance of each point
    OUTSIDE the mesh (points inside count as touching, ``d = 0``).

    Args:
        points: ``(N, 3)`` hand vertices (or a subset, e.g. contact-zone vertices), metres.
        mesh: the object mesh (non-empty), same frame.
        margin: distance in metres within which a point counts as in contact (no pull).
        sign: ``"winding"`` (robust, default) or ``"normal"`` (faster, closed meshes only)
            for the inside test.

    Returns:
        Scalar in metres^2; differentiable w.r.t. the points and the mesh vertices.
    """
    what = "proximity_loss"
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[-1] != 3 \
            or points.shape[0] == 0:
        raise ValueError(f"{what}: expected points (N, 3) with N > 0, got {shape_text(points)}")
    _check_mesh(mesh, what, "mesh")
    if not margin >= 0:
        raise ValueError(f"{what}: expected margin >= 0 (metres), got {margin}")
    if sign not in _SIGNS:
        raise ValueError(f"{what}: expected sign in {_SIGNS}, got {sign!r}")
    d = _sdf(points, mesh, sign).clamp_min(0)
    return torch.relu(d - margin).pow(2).mean()


def penetration_depth(points: torch.Tensor, mesh: Mesh, sign: str = "winding"
                      ) -> torch.Tensor:
    """``(N,)`` depth of each point inside the mesh (``relu(-sdf)``, metres; 0 outside)."""
    return torch.relu(-_sdf(points, mesh, sign))


def _samples(mesh: Mesh, face_centroids: bool) -> torch.Tensor:
    v = mesh.vertices
    if not face_centroids:
        return v
    return torch.cat([v, take(v, mesh.faces).mean(1)])  # take: deterministic backward


def intersection_loss(mesh_a: Mesh, mesh_b: Mesh, *, power: int = 1, both_ways: bool = True,
                      face_centroids: bool = False, sign: str = "winding") -> torch.Tensor:
    """Differentiable interpenetration of two meshes.

    ``mean_i relu(-sdf_b(a_i))^power + mean_j relu(-sdf_a(b_j))^power`` over the vertices
    ``a_i`` of ``mesh_a`` and ``b_j`` of ``mesh_b`` (the second sum only when ``both_ways``).
    Each vertex of one mesh that lies inside the other is pushed out along the other's
    surface normal, so both the hand and the object get gradients.

    Only sample points are tested: a coarse mesh whose long faces cross the other mesh
    between vertices is not seen. Dense meshes (MANO, iso-surfaces) are fine;
    ``face_centroids=True`` adds the face centroids as samples for coarser ones.

    Args:
        mesh_a, mesh_b: non-empty meshes in the same frame (e.g. hand, object), metres.
        power: 1 (constant push, default) or 2 (push fading at contact).
        both_ways: also penalise ``mesh_b``'s vertices inside ``mesh_a``.
        face_centroids: also sample the face centroids (about 3x the points).
        sign: inside test, ``"winding"`` (works for the open hand) or ``"normal"``.

    Returns:
        Scalar in metres^power; 0 when the meshes do not interpenetrate (at the samples).
    """
    what = "intersection_loss"
    _check_mesh(mesh_a, what, "mesh_a")
    _check_mesh(mesh_b, what, "mesh_b")
    if power not in (1, 2):
        raise ValueError(f"{what}: expected power 1 or 2, got {power!r}")
    if sign not in _SIGNS:
        raise ValueError(f"{what}: expected sign in {_SIGNS}, got {sign!r}")
    loss = penetration_depth(_samples(mesh_a, face_centroids), mesh_b, sign).pow(power).mean()
    if both_ways:
        loss = loss + penetration_depth(_samples(mesh_b, face_centroids), mesh_a,
                                        sign).pow(power).mean()
    return loss


@register_loss("proximity", needs=("hand_mesh", "object_mesh"),
               options={"margin": Option(0.005, minimum=0.0,
                                         doc="contact margin in metres (no pull within it)"),
                        "vertex_ids": Option(None, kind=list,
                                             doc="hand vertex indices to attract (default "
                                                 "all)"),
                        "sign": Option("winding", choices=_SIGNS, doc="inside test")})
def _proximity_term(ctx: LossContext, margin: float, vertex_ids: Optional[Sequence[int]],
                    sign: str) -> torch.Tensor:
    """Pull hand vertices farther than `margin` metres from the object onto it (m^2)."""
    v = ctx.hand_mesh.vertices
    if vertex_ids is not None:
        idx = torch.as_tensor(list(vertex_ids), dtype=torch.long, device=v.device)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= v.shape[0]:
            raise ValueError(f"proximity: vertex_ids must be non-empty indices in "
                             f"[0, {v.shape[0]}), got {list(vertex_ids)[:8]}...")
        v = take(v, idx)
    return proximity_loss(v, ctx.object_mesh, margin, sign)


@register_loss("intersection", needs=("hand_mesh", "object_mesh"),
               options={"power": Option(1, choices=None, minimum=1, maximum=2,
                                        doc="1: depth, 2: squared depth"),
                        "both_ways": Option(True, doc="also object vertices inside the hand"),
                        "face_centroids": Option(False, doc="also sample face centroids "
                                                            "(coarse meshes)"),
                        "sign": Option("winding", choices=_SIGNS, doc="inside test")})
def _intersection_term(ctx: LossContext, power: int, both_ways: bool, face_centroids: bool,
                       sign: str) -> torch.Tensor:
    """Differentiable hand-object penetration depth (metres^power)."""
    return intersection_loss(ctx.hand_mesh, ctx.object_mesh, power=power,
                             both_ways=both_ways, face_centroids=face_centroids, sign=sign)
