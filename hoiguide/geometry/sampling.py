"""Sampling points on mesh surfaces (one implementation, used by ICP and the metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hoiguide.types import Mesh

__all__ = ["sample_surface", "as_points"]


def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> np.ndarray:
    """Area-weighted uniform samples on a mesh surface (deterministic for a given seed).

    Faces are drawn with probability proportional to their area, then a point uniformly inside
    the face (square-root barycentric trick). Same mesh and seed give the same samples; a
    translated copy gives the translated samples.

    Args:
        mesh: a non-empty mesh, vertices in metres (any frame).
        n: number of samples (> 0).
        seed: seed of the numpy generator.

    Returns:
        ``(n, 3)`` float64 numpy array of points on the surface, in the mesh's frame (metres).
    """
    fn = "sample_surface"
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{fn}: expected a hoiguide Mesh, got {type(mesh).__name__}")
    mesh.require_nonempty(fn)
    if isinstance(n, bool) or int(n) != n or int(n) <= 0:
        raise ValueError(f"{fn}: expected n to be a positive integer, got {n!r}")
    n = int(n)
    V, F = mesh.numpy()
    tri = V[F]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = float(area.sum())
    if not total > 0:
        raise ValueError(f"{fn}: the mesh has zero surface area ({mesh.num_faces} faces, all "
                         "degenerate)")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(area)
    face = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    face = np.minimum(face, len(area) - 1)
    r1 = np.sqrt(rng.random(n))
    r2 = rng.random(n)
    w0, w1, w2 = 1.0 - r1, r1 * (1.0 - r2), r1 * r2
    t = tri[face]
    return w0[:, None] * t[:, 0] + w1[:, None] * t[:, 1] + w2[:, None] * t[:, 2]


def as_points(x: Any, name: str, fn: str) -> np.ndarray:
    """Validate numpy / torch / nested-sequence points as an ``(N, 3)`` float64 numpy copy
    (``N >= 1``, all finite), raising errors that name the caller ``fn`` and argument ``name``."""
    if isinstance(x, Mesh):
        raise TypeError(f"{fn}: expected {name} as an (N, 3) array of points, got a Mesh")
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().double().numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{fn}: expected {name} as an (N, 3) array of points, got "
                            f"{type(x).__name__}") from exc
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{fn}: expected {name} of shape (N, 3), got {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{fn}: {name} is empty (0 points)")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr).all(1)).sum())
        raise ValueError(f"{fn}: {name} has {bad} NaN or inf points (of {arr.shape[0]})")
    return arr
