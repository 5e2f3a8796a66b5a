"""Metrics of the paper's evaluation protocol (docs/method.md section 4).

Inputs are :class:`~hoiguide.types.Mesh` objects or ``(N, 3)`` point arrays / tensors, all in
**metres** and in one common frame. Outputs are in the paper's units:

* :func:`chamfer_distance`: **cm^2** (sum of the two mean squared nearest-neighbour distances);
* :func:`fscore`: dimensionless in ``[0, 1]`` (threshold given in metres);
* :func:`intersection_volume`: **cm^3**;
* :func:`reconstruction_rate`: fraction in ``[0, 1]``.

Meshes are turned into point sets by deterministic, area-weighted uniform surface sampling
(:func:`sample_surface`); the same ``seed`` gives the same samples, so a mesh compared with
itself scores exactly 0 Chamfer distance.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch

from hoiguide.geometry.mesh_query import inside
from hoiguide.geometry.sampling import as_points, sample_surface
from hoiguide.types import Mesh

__all__ = ["sample_surface", "chamfer_distance", "fscore", "intersection_volume",
           "reconstruction_rate"]

log = logging.getLogger(__name__)

Geometry = Union[Mesh, np.ndarray, torch.Tensor, Sequence]

M2_TO_CM2 = 1.0e4
M3_TO_CM3 = 1.0e6
_MAX_GRID_POINTS = 20_000_000  # intersection_volume refuses finer grids (memory / time)
_CHUNK = 1_000_000


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def check_count(n: Any, name: str, fn: str) -> int:
    """``n`` as a positive int, or a ``ValueError`` naming ``fn`` and the argument ``name``."""
    if isinstance(n, bool) or int(n) != n or int(n) <= 0:
        raise ValueError(f"{fn}: expected {name} to be a positive integer, got {n!r}")
    return int(n)


def geometry_points(x: Geometry, name: str, fn: str, num_samples: int, seed: int) -> np.ndarray:
    """A geometry as ``(N, 3)`` float64 points: meshes sampled, points checked."""
    if isinstance(x, Mesh):
        if x.is_empty:
            raise ValueError(f"{fn}: {name} needs a non-empty mesh, got one with "
                             f"{x.num_vertices} vertices and {x.num_faces} faces")
        if not bool(torch.isfinite(x.vertices.detach()).all()):
            raise ValueError(f"{fn}: {name} has NaN or inf vertices")
        return sample_surface(x, num_samples, seed)
    return as_points(x, name, fn)


def nn_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances ``a -> b`` (len(a),) and ``b -> a`` (len(b),)."""
    from scipy.spatial import cKDTree

    d_ab = cKDTree(b).query(a, k=1)[0]
    d_ba = cKDTree(a).query(b, k=1)[0]
    return d_ab, d_ba


def _check_threshold(threshold: Any, fn: str) -> float:
    t = float(threshold)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{fn}: expected a positive threshold in metres, got {threshold!r}")
    if t > 1.0:
        log.warning("%s: threshold %.3g m is larger than 1 m; thresholds are in metres "
                    "(0.005 for F@5mm)", fn, t)
    return t


def chamfer_from(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
    """Chamfer distance in cm^2 from nearest-neighbour distances in metres, both ways."""
    return float((np.mean(d_ab ** 2) + np.mean(d_ba ** 2)) * M2_TO_CM2)


def fscore_from(d_ab: np.ndarray, d_ba: np.ndarray, t: float) -> float:
    """F-score at threshold ``t`` (metres) from nearest-neighbour distances both ways."""
    precision = float(np.mean(d_ab < t))
    recall = float(np.mean(d_ba < t))
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


def chamfer_distance(a: Geometry, b: Geometry, *, num_samples: int = 10000,
                     seed: int = 0) -> float:
    """Chamfer distance in **cm^2**, the paper's convention.

    ``CD = mean_{x in A} min_{y in B} |x - y|^2 + mean_{y in B} min_{x in A} |x - y|^2``: the
    SUM (not the average) of the two one-sided mean squared nearest-neighbour distances,
    converted from m^2 to cm^2.

    Args:
        a, b: :class:`Mesh` (sampled with ``num_samples`` area-weighted surface points, seeded
            by ``seed``) or ``(N, 3)`` points used as given; metres, one common frame.
        num_samples: samples per mesh.
        seed: sampling seed (the same for both inputs).

    Returns:
        The Chamfer distance in cm^2 (``>= 0``; 0 for identical point sets).
    """
    fn = "chamfer_distance"
    num_samples = check_count(num_samples, "num_samples", fn)
    pa = geometry_points(a, "a", fn, num_samples, seed)
    pb = geometry_points(b, "b", fn, num_samples, seed)
    return chamfer_from(*nn_distances(pa, pb))


def fscore(a: Geometry, b: Geometry, threshold: float, *, num_samples: int = 10000,
           seed: int = 0) -> float:
    """F-score at a distance threshold (Tatarchenko et al. 2019).

    Precision is the fraction of points of ``a`` whose nearest point of ``b`` is closer than
    ``threshold`` (strictly), recall the fraction of ``b`` within ``threshold`` of ``a``; the
    F-score is their harmonic mean (0 when both are 0). ``a`` is the prediction and ``b`` the
    ground truth by convention (the score is symmetric).

    Args:
        a, b: :class:`Mesh` (sampled, ``num_samples`` points, seed ``seed``) or ``(N, 3)``
            points; metres, one common frame.
        threshold: distance threshold in **metres** (the paper: 0.005 and 0.01).
        num_samples: samples per mesh.
        seed: sampling seed.

    Returns:
        The F-score in ``[0, 1]``.
    """
    fn = "fscore"
    t = _check_threshold(threshold, fn)
    num_samples = check_count(num_samples, "num_samples", fn)
    pa = geometry_points(a, "a", fn, num_samples, seed)
    pb = geometry_points(b, "b", fn, num_samples, seed)
    return fscore_from(*nn_distances(pa, pb), t)


def _voxel_centres(lo: np.ndarray, hi: np.ndarray, voxel: float) -> tuple[np.ndarray, ...]:
    """Per-axis voxel-centre coordinates of a grid of spacing ``voxel`` (metres) covering the
    box ``[lo, hi]``: ``ceil(extent / voxel)`` cells per axis (at least 1), the grid centred
    on the box."""
    axes = []
    for k in range(3):
        extent = float(hi[k] - lo[k])
        n = max(1, int(math.ceil(extent / voxel - 1e-9)))
        c = 0.5 * float(lo[k] + hi[k])
        axes.append(c + (np.arange(n) - 0.5 * (n - 1)) * voxel)
    return tuple(axes)


def intersection_volume(mesh_a: Mesh, mesh_b: Mesh, voxel: float = 0.005) -> float:
    """Volume inside both meshes in **cm^3**, counted on a voxel-centre grid.

    A grid of voxel centres with spacing ``voxel`` is laid over the overlap of the two meshes'
    bounding boxes (``ceil(extent / voxel)`` cells per axis, centred on the overlap box); each
    centre inside BOTH meshes counts ``voxel^3``. Inside-ness is the generalized winding number
    (:func:`hoiguide.geometry.inside`), so an open hand mesh (MANO's hole at the wrist) is
    handled. The paper uses ``voxel = 0.005`` (0.5 cm); the count is a coarse estimate at that
    size (two 4 cm spheres 5 cm apart: exact lens 49.5 cm^3; see the tests for our values).

    Args:
        mesh_a, mesh_b: non-empty meshes, metres, one common frame (CCW outward winding).
        voxel: grid spacing in metres (> 0).

    Returns:
        The intersection volume in cm^3 (0.0 when the bounding boxes do not overlap).
    """

    fn = "intersection_volume"
    for name, m in (("mesh_a", mesh_a), ("mesh_b", mesh_b)):
        if not isinstance(m, Mesh):
            raise TypeError(f"{fn}: expected {name} to be a hoiguide Mesh, got "
                            f"{type(m).__name__}")
        if m.is_empty:
            raise ValueError(f"{fn}: {name} needs a non-empty mesh, got one with "
                             f"{m.num_vertices} vertices and {m.num_faces} faces")
    v = float(voxel)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{fn}: expected a positive voxel size in metres, got {voxel!r}")
    ba = mesh_a.bounds().detach().cpu().double().numpy()
    bb = mesh_b.bounds().detach().cpu().double().numpy()
    lo = np.maximum(ba[0], bb[0])
    hi = np.minimum(ba[1], bb[1])
    if np.any(hi <= lo):
        return 0.0
    xs, ys, zs = _voxel_centres(lo, hi, v)
    total = len(xs) * len(ys) * len(zs)
    if total > _MAX_GRID_POINTS:
        raise ValueError(f"{fn}: voxel {v} m gives {total} grid points over the overlap box "
                         f"{(hi - lo).tolist()} m (limit {_MAX_GRID_POINTS}); use a larger "
                         "voxel")
    # iterate over x-slabs so at most ~_CHUNK points are held at once
    ny, nz = len(ys), len(zs)
    yz = np.stack(np.meshgrid(ys, zs, indexing="ij"), -1).reshape(-1, 2)
    per = max(1, _CHUNK // (ny * nz))
    count = 0
    for i0 in range(0, len(xs), per):
        x = xs[i0:i0 + per]
        pts = np.concatenate([np.repeat(x, ny * nz)[:, None], np.tile(yz, (len(x), 1))], 1)
        pa = torch.as_tensor(pts, dtype=torch.float64, device=mesh_a.device)
        ins = inside(pa, mesh_a)
        if not bool(ins.any()):
            continue
        pb = pa[ins].to(mesh_b.device)
        count += int(inside(pb, mesh_b).sum())
    log.debug("%s: %d of %d voxel centres inside both meshes (voxel %.4g m)", fn, count, total,
              v)
    return float(count * v ** 3 * M3_TO_CM3)


def _is_success(item: Any) -> bool:
    if item is None or isinstance(item, BaseException):
        return False
    if isinstance(item, (bool, np.bool_)):
        return bool(item)
    if isinstance(item, enum.Enum):
        return _is_success(item.value if isinstance(item.value, (str, bool)) else item.name)
    if isinstance(item, str):
        return item.strip().lower() == "ok"
    if isinstance(item, Mesh):
        return not item.is_empty
    if isinstance(item, dict):
        if "status" in item:
            return _is_success(item["status"])
        if "ok" in item:
            return bool(item["ok"])
    else:
        if hasattr(item, "status"):
            return _is_success(getattr(item, "status"))
        if hasattr(item, "ok"):
            return bool(getattr(item, "ok"))
    raise TypeError(f"reconstruction_rate: cannot tell whether {type(item).__name__} "
                    f"{item!r:.80} is a success; expected a status string ('ok' = success), a "
                    "bool, None (failure), an exception (failure), a Mesh (non-empty = "
                    "success), or an object / dict with a 'status' or 'ok' field")


def reconstruction_rate(results: Iterable[Any]) -> float:
    """Fraction of inputs that produced an output; failures count (the paper's RR).

    Args:
        results: one entry per input image. An entry is a success when it is the status
            string ``"ok"`` (case-insensitive; any other string is a failure), ``True``, a
            non-empty :class:`Mesh`, an enum whose value or name is one of those, or an object /
            dict whose ``status`` (or else ``ok``) field is. ``None``, ``False``, exceptions and
            empty meshes are failures.

    Returns:
        ``successes / len(results)`` in ``[0, 1]``.
    """
    items = list(results)
    if not items:
        raise ValueError("reconstruction_rate: expected at least one result, got none")
    ok = sum(_is_success(x) for x in items)
    return ok / len(items)
