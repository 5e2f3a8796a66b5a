"""Regularisers: translation norm, mean squared edge length, mean squared vertex position.

Pure functions plus their registered terms (``translation``, ``edge_length``,
``vertex_l2``). Units are metres (squared). ``edge_length`` and ``vertex_l2`` are the
reference's object regularisers; both pull the object towards a smaller (and, for
``vertex_l2``, nearer-to-the-camera) shape, so treat them as options, not trusted defaults.
"""

from __future__ import annotations

import torch

from hoiguide.geometry.indexing import take
from hoiguide.losses.context import LossContext
from hoiguide.losses.image import shape_text
from hoiguide.losses.registry import Option, register_loss
from hoiguide.types import Mesh

__all__ = ["translation_loss", "edge_length_loss", "vertex_l2_loss", "unique_edges"]


def translation_loss(translation: torch.Tensor) -> torch.Tensor:
    """``||t||^2`` of a ``(3,)`` translation (metres^2)."""
    if not isinstance(translation, torch.Tensor) or tuple(translation.shape) != (3,):
        raise ValueError(f"translation_loss: expected translation (3,), got "
                         f"{shape_text(translation)}")
    return (translation ** 2).sum()


def unique_edges(faces: torch.Tensor) -> torch.Tensor:
    """``(E, 2)`` int64 unique undirected edges ``(i < j)`` of ``(F, 3)`` triangles."""
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"unique_edges: expected faces (F, 3), got {tuple(faces.shape)}")
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).long()
    if e.numel() == 0:
        return e.reshape(0, 2)
    lo, hi = e.min(1).values, e.max(1).values
    n = int(hi.max()) + 1
    key = torch.unique(lo * n + hi)   # 1D unique is much faster than unique(dim=0)
    return torch.stack([key // n, key % n], 1)


def _check_mesh(mesh: Mesh, what: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{what}: expected a Mesh, got {type(mesh).__name__}")
    mesh.require_nonempty(what)


def edge_length_loss(mesh: Mesh) -> torch.Tensor:
    """Mean squared length of the mesh's unique edges (metres^2); shrinks the mesh."""
    _check_mesh(mesh, "edge_length_loss")
    e = unique_edges(mesh.faces)
    v = mesh.vertices
    return ((take(v, e[:, 0]) - take(v, e[:, 1])) ** 2).sum(-1).mean()


def vertex_l2_loss(vertices: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Mean squared vertex position ``mean_i ||v_i||^2`` (metres^2).

    Args:
        vertices: ``(V, 3)`` positions in the frame the caller chooses (the reference uses
            the camera frame, which also pulls the mesh towards the camera).
        center: subtract the vertex centroid first (then it only penalises spread, i.e.
            size).
    """
    if not isinstance(vertices, torch.Tensor) or vertices.ndim != 2 or \
            vertices.shape[-1] != 3 or vertices.shape[0] == 0:
        raise ValueError(f"vertex_l2_loss: expected vertices (V, 3) with V > 0, got "
                         f"{shape_text(vertices)}")
    v = vertices - vertices.mean(0) if center else vertices
    return (v ** 2).sum(-1).mean()


_WHICH_T = ("hand", "object", "both")


@register_loss("translation",
               needs=lambda o: {"hand": ("hand_translation",),
                                "object": ("object_translation",),
                                "both": ("hand_translation", "object_translation")}[o["which"]],
               options={"which": Option("object", choices=_WHICH_T,
                                        doc="whose similarity translation")})
def _translation_term(ctx: LossContext, which: str) -> torch.Tensor:
    """||t||^2 of the hand and/or object similarity translation (metres^2)."""
    if which == "hand":
        return translation_loss(ctx.hand_translation)
    if which == "object":
        return translation_loss(ctx.object_translation)
    return translation_loss(ctx.hand_translation) + translation_loss(ctx.object_translation)


_WHICH_M = ("hand", "object")


@register_loss("edge_length", needs=lambda o: (f"{o['which']}_mesh",),
               options={"which": Option("object", choices=_WHICH_M, doc="which mesh")})
def _edge_term(ctx: LossContext, which: str) -> torch.Tensor:
    """Mean squared edge length (metres^2) of a mesh; shrinks it (reference regulariser)."""
    return edge_length_loss(getattr(ctx, f"{which}_mesh"))


@register_loss("vertex_l2", needs=lambda o: (f"{o['which']}_mesh",),
               options={"which": Option("object", choices=_WHICH_M, doc="which mesh"),
                        "center": Option(False, doc="subtract the centroid (penalise size "
                                                    "only)")})
def _vertex_l2_term(ctx: LossContext, which: str, center: bool) -> torch.Tensor:
    """Mean squared camera-frame vertex position (metres^2); shrinks the mesh and pulls it
    towards the camera (reference regulariser)."""
    mesh = getattr(ctx, f"{which}_mesh")
    _check_mesh(mesh, f"vertex_l2(which={which})")
    return vertex_l2_loss(mesh.vertices, center)
