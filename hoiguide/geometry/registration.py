"""Rigid-plus-scale alignment: closed-form similarity fitting and trimmed ICP.

All functions work in float64 numpy internally and return a :class:`~hoiguide.types.Similarity`
(float64 torch tensors on the CPU) that maps SOURCE coordinates onto TARGET coordinates,
``x_target = s R x_source + t``. Points are ``(N, 3)`` arrays or tensors in metres (or any one
consistent unit: nothing here assumes a unit except where a tolerance says so); meshes are
:class:`~hoiguide.types.Mesh` objects whose surface is sampled (see :func:`icp`).

This is step 7 of the reference pipeline (docs/method.md section 1): the coarse generated mesh is
aligned to the partial point cloud of the image, and the hand mesh to the coarse mesh. The
reference's choices are the defaults of :func:`icp`: a start that matches centroids and
bounding-box diagonals, point-to-point ICP with scale, 20 % of the correspondences trimmed per
iteration, the cumulative scale clamped to ``[0.7, 3.0]``, the lowest-cost iterate kept, a
coarse pass of 50 and a fine pass of 100 iterations.

Correspondence direction matters more than any of these: the reference (and open3d) match each
SOURCE point to its nearest target point, which is right when the source is part of the
target (hand mesh -> hand-object mesh, step 7b) but biased when the target is a one-sided
view of a complete source (generated mesh -> partial point cloud, step 7a: about 20 % scale
and 2-3 cm errors in our tests), because the unseen half of the source has no partner;
``"target_to_source"`` is right there (errors below 1 degree, 1.5 % and 1.5 mm in the same
tests). :func:`icp`'s default, ``correspondences="auto"``, runs both and keeps the one whose
matched side is covered by the other set (see :func:`icp`); the reference's behaviour is
``correspondences="source_to_target"``.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from hoiguide.geometry.sampling import as_points, sample_surface
from hoiguide.types import Mesh, Similarity

__all__ = ["fit_similarity", "initial_similarity", "icp", "IcpInfo",
           "trimmed_cost"]

log = logging.getLogger(__name__)

PointsLike = Union[np.ndarray, torch.Tensor, Sequence]
Geometry = Union[Mesh, np.ndarray, torch.Tensor, Sequence]

_BACKENDS = ("auto", "scipy", "open3d")
_CORRESPONDENCES = ("source_to_target", "target_to_source")
_ICP_CORRESPONDENCES = ("auto",) + _CORRESPONDENCES

AUTO_COVERAGE_MARGIN = 0.05
"""``correspondences="auto"`` picks ``"target_to_source"`` only when its matched side (the
target) is covered by more than this fraction more than the reference direction's matched side
(the source) is: ties, e.g. two complete shapes, keep the reference's direction."""

AUTO_COVERAGE_SPACINGS = 3.0
"""Coverage tolerance of ``correspondences="auto"``, in median nearest-neighbour spacings of
the target points: a point is covered when the other set has a point within it."""


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------


def _mesh_numpy(mesh: Mesh, name: str, fn: str) -> tuple[np.ndarray, np.ndarray]:
    if mesh.is_empty:
        raise ValueError(f"{fn}: {name} is an empty mesh ({mesh.num_vertices} vertices, "
                         f"{mesh.num_faces} faces)")
    v, f = mesh.numpy()
    return v, f


def _geometry_points(x: Geometry, name: str, fn: str, num_samples: int,
                     seed: int) -> np.ndarray:
    if isinstance(x, Mesh):
        return sample_surface(x, num_samples, seed)
    pts = as_points(x, name, fn)
    if len(pts) < 3:
        raise ValueError(f"{fn}: {name} needs at least 3 points, got {len(pts)}")
    return pts


def _centroid_and_diagonal(x: Geometry, name: str, fn: str) -> tuple[np.ndarray, float]:
    """Centroid (area-weighted surface centroid for meshes, point mean otherwise) and
    bounding-box diagonal (of the vertices used by faces, or of the points)."""
    if isinstance(x, Mesh):
        v, f = _mesh_numpy(x, name, fn)
        tri = v[f]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]),
                                    axis=1)
        if not area.sum() > 0:
            raise ValueError(f"{fn}: {name} has zero surface area")
        centroid = (area[:, None] * tri.mean(1)).sum(0) / area.sum()
        used = v[np.unique(f)]
    else:
        used = as_points(x, name, fn)
        if len(used) == 0:
            raise ValueError(f"{fn}: {name} has no points")
        centroid = used.mean(0)
    diag = float(np.linalg.norm(used.max(0) - used.min(0)))
    return centroid, diag


def _similarity(s: float, R: np.ndarray, t: np.ndarray) -> Similarity:
    return Similarity(torch.tensor(float(s), dtype=torch.float64),
                      torch.as_tensor(np.array(R, dtype=np.float64)),
                      torch.as_tensor(np.array(t, dtype=np.float64)))


def _sim_numpy(T: Similarity) -> tuple[float, np.ndarray, np.ndarray]:
    return (float(T.scale.detach()), T.rotation.detach().cpu().double().numpy(),
            T.translation.detach().cpu().double().numpy())


# --------------------------------------------------------------------------------------
# closed-form fit (Umeyama)
# --------------------------------------------------------------------------------------


def _umeyama_rank_check(X: np.ndarray, Y: np.ndarray, sqrt_w: np.ndarray | None = None,
                        rank_tol: float = 1e-9) -> None:
    """Raise ``ValueError`` if the (weighted) source or target points are collinear or
    coincident (then the rotation is not unique)."""
    for pts, nm in ((X, "source"), (Y, "target")):
        pts = pts - (pts.mean(0) if sqrt_w is None else
                     (sqrt_w ** 2 @ pts) / (sqrt_w ** 2).sum())
        if sqrt_w is not None:
            pts = pts * sqrt_w[:, None]
        sv = np.linalg.svd(pts, compute_uv=False)
        if not sv[0] > 0 or sv[1] <= rank_tol * sv[0]:
            what = "coincident" if not sv[0] > 0 else "collinear"
            raise ValueError(f"fit_similarity: degenerate input, the (weighted) {nm} points are "
                             f"{what} (singular values {sv.tolist()}); a similarity needs at "
                             "least 3 non-collinear points")


def _umeyama(src: np.ndarray, tgt: np.ndarray, w: np.ndarray | None,
             scale_bounds: tuple[float, float] | None = None,
             rank_tol: float = 1e-9) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity ``tgt ~ s R src + t`` (float64 numpy).

    With ``scale_bounds`` the scale is clamped to ``[lo, hi]``; since the optimal rotation
    does not depend on the scale and the optimal translation is ``mu_t - s R mu_s`` for any
    fixed ``s``, the clamped result is the exact constrained optimum.
    Raises ``ValueError`` for collinear / coincident source or target points.
    """
    if w is None:
        W = float(len(src))
        mu_s, mu_t = src.mean(0), tgt.mean(0)
        X, Y = src - mu_s, tgt - mu_t
        Xw = X
    else:
        W = float(w.sum())
        mu_s, mu_t = (w @ src) / W, (w @ tgt) / W
        X, Y = src - mu_s, tgt - mu_t
        Xw = X * w[:, None]
    _umeyama_rank_check(X, Y, None if w is None else np.sqrt(w), rank_tol)
    var_s = float((Xw * X).sum()) / W
    cov = (Y.T @ Xw) / W                                          # (3, 3) target x source
    U, D, Vt = np.linalg.svd(cov)
    S = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:                  # best fit is a reflection:
        S[2] = -1.0                                               # take the best rotation
    R = (U * S) @ Vt
    s = float((D * S).sum()) / var_s
    if scale_bounds is not None:
        s = min(max(s, scale_bounds[0]), scale_bounds[1])
    if not s > 0:
        raise ValueError("fit_similarity: degenerate input, the least-squares scale is "
                         f"{s:.3g} (no positive-scale similarity fits these points)")
    t = mu_t - s * (R @ mu_s)
    return s, R, t


def fit_similarity(source: PointsLike, target: PointsLike,
                   weights: PointsLike | None = None) -> Similarity:
    """Closed-form least-squares similarity between corresponding points (Umeyama 1991).

    Minimises ``sum_i w_i |target_i - (s R source_i + t)|^2`` over ``s > 0``, rotations ``R``
    (``det R = +1``: when the best orthogonal fit is a reflection, the best proper rotation is
    returned instead) and ``t``.

    Args:
        source: ``(N, 3)`` points (numpy or torch, any float dtype), any frame.
        target: ``(N, 3)`` corresponding points in the target frame (same units).
        weights: optional ``(N,)`` non-negative weights; at least 3 must be positive.

    Returns:
        The :class:`Similarity` (float64, CPU) mapping source onto target.

    Raises:
        ValueError: shape mismatch, fewer than 3 points, non-finite values, negative weights,
            or degenerate input (source or target points collinear or coincident).
    """
    fn = "fit_similarity"
    src = as_points(source, "source", fn)
    tgt = as_points(target, "target", fn)
    if src.shape != tgt.shape:
        raise ValueError(f"{fn}: expected source and target of the same shape (N, 3), got "
                         f"{src.shape} and {tgt.shape}")
    if len(src) < 3:
        raise ValueError(f"{fn}: expected at least 3 point pairs, got {len(src)}")
    w = None
    if weights is not None:
        w = (weights.detach().cpu().double().numpy() if isinstance(weights, torch.Tensor)
             else np.asarray(weights, dtype=np.float64))
        if w.shape != (len(src),):
            raise ValueError(f"{fn}: expected weights of shape ({len(src)},), got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{fn}: weights must be finite and non-negative")
        if int((w > 0).sum()) < 3:
            raise ValueError(f"{fn}: expected at least 3 positive weights, got "
                             f"{int((w > 0).sum())}")
    s, R, t = _umeyama(src, tgt, w)
    return _similarity(s, R, t)


def initial_similarity(source: Geometry, target: Geometry) -> Similarity:
    """The reference's ICP start: identity rotation, matching centroids and bounding-box
    diagonals.

    ``scale = diag(target) / diag(source)`` and ``t = c_target - scale * c_source``, so the
    source centroid lands on the target centroid. For a :class:`Mesh` the centroid is the
    area-weighted surface centroid and the box is that of the vertices used by faces; for
    ``(N, 3)`` points it is the mean and the points' box. Frames and units are the inputs'.

    Raises:
        ValueError: empty input, or a source whose bounding box is a single point.
    """
    fn = "initial_similarity"
    c_s, d_s = _centroid_and_diagonal(source, "source", fn)
    c_t, d_t = _centroid_and_diagonal(target, "target", fn)
    if not d_s > 0:
        raise ValueError(f"{fn}: the source's bounding box has zero diagonal (all points "
                         "coincide)")
    if not d_t > 0:
        raise ValueError(f"{fn}: the target's bounding box has zero diagonal (all points "
                         "coincide)")
    s = d_t / d_s
    return _similarity(s, np.eye(3), c_t - s * c_s)


# --------------------------------------------------------------------------------------
# ICP
# --------------------------------------------------------------------------------------


@dataclass
class IcpInfo:
    """Diagnostics of one :func:`icp` call.

    Attributes:
        cost: trimmed mean squared distance of the returned transform on the fine-pass
            points, in squared target units (m^2): the mean of the smallest
            ``(1 - trim)`` fraction of squared nearest-neighbour distances.
        iterations: ``(coarse, fine)`` number of transform updates actually run.
        coarse_costs, fine_costs: the cost of every iterate evaluated in each pass (the
            starting transform first, so each has ``iterations + 1`` entries). Coarse costs
            are measured on the subsampled points, so they are comparable only within the
            coarse pass.
        best_iteration: index into ``fine_costs`` of the returned transform.
        backend: ``"scipy"`` or ``"open3d"``.
        correspondences: the correspondence direction used (the chosen one for ``"auto"``).
        converged: ``(coarse, fine)``: whether each pass met its stopping test (unchanged
            correspondences or cost change below ``tol``) before its iteration limit; a
            skipped pass (0 iterations) reports True.
        clamped: whether the scale clamp was active in any update.
        num_source_points, num_target_points: point counts of the fine pass.
        init: the starting similarity.
        seconds: wall time of the call.
        coverage: for ``correspondences="auto"``, the coverage score of each direction's
            result (``{"source_to_target": ..., "target_to_source": ..., "tolerance": ...}``,
            tolerance in target units); ``None`` otherwise.
    """

    cost: float
    iterations: tuple[int, int]
    coarse_costs: list[float]
    fine_costs: list[float]
    best_iteration: int
    backend: str
    correspondences: str
    converged: tuple[bool, bool]
    clamped: bool
    num_source_points: int
    num_target_points: int
    init: Similarity
    seconds: float = 0.0
    coverage: dict[str, float] | None = None

    @property
    def rmse(self) -> float:
        """Square root of :attr:`cost` (target units, e.g. metres)."""
        return math.sqrt(self.cost)

    @property
    def costs(self) -> list[float]:
        """Coarse then fine per-iteration costs, concatenated."""
        return list(self.coarse_costs) + list(self.fine_costs)


def _n_keep(n: int, trim: float) -> int:
    return max(min(3, n), min(n, int(math.ceil((1.0 - trim) * n))))


def _trim_mask(d: np.ndarray, trim: float) -> np.ndarray:
    """Boolean mask of the ``ceil((1 - trim) n)`` smallest distances (ties broken by order)."""
    k = _n_keep(len(d), trim)
    mask = np.zeros(len(d), dtype=bool)
    if k >= len(d):
        mask[:] = True
    else:
        mask[np.argpartition(d, k - 1)[:k]] = True
    return mask


def trimmed_cost(transform: Similarity, source: PointsLike, target: PointsLike,
                 trim: float = 0.2, correspondences: str = "source_to_target") -> float:
    """The ICP objective for a given transform: mean of the smallest ``(1 - trim)`` fraction of
    squared nearest-neighbour distances, measured in the target frame (squared target units).

    Args:
        transform: similarity mapping source onto target.
        source, target: ``(N, 3)`` / ``(M, 3)`` points.
        trim: fraction in ``[0, 1)`` of the worst correspondences dropped.
        correspondences: ``"source_to_target"`` (each transformed source point to its nearest
            target point) or ``"target_to_source"`` (each target point to its nearest
            transformed source point).
    """
    from scipy.spatial import cKDTree

    fn = "trimmed_cost"
    src = as_points(source, "source", fn)
    tgt = as_points(target, "target", fn)
    if len(src) == 0 or len(tgt) == 0:
        raise ValueError(f"{fn}: expected non-empty point sets, got {len(src)} source and "
                         f"{len(tgt)} target points")
    if not 0.0 <= float(trim) < 1.0:
        raise ValueError(f"{fn}: trim must be in [0, 1), got {trim!r}")
    if correspondences not in _CORRESPONDENCES:
        raise ValueError(f"{fn}: correspondences must be one of {_CORRESPONDENCES}, got "
                         f"{correspondences!r}")
    moved = transform.apply(src)
    if correspondences == "source_to_target":
        d, _ = cKDTree(tgt).query(moved)
    else:
        d, _ = cKDTree(moved).query(tgt)
    d = np.asarray(d)
    return float(np.mean(d[_trim_mask(d, trim)] ** 2))


def _load_open3d():
    """Import open3d, preloading libusb from ``libusb_package`` when installed (open3d's
    wheels link against libusb, which is missing on many machines). Returns the module or
    raises ImportError."""
    try:
        import libusb_package  # type: ignore

        path = libusb_package.get_library_path()
        if path is not None:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except Exception:  # noqa: BLE001 - optional helper; open3d may still import without it
        pass
    import open3d  # type: ignore

    return open3d


def _open3d_or_none():
    try:
        return _load_open3d()
    except Exception as exc:  # noqa: BLE001 - ImportError or OSError from a broken install
        log.debug("open3d not usable: %s", exc)
        return None


class _Pass:
    """One ICP pass (a fixed point set per side); subclasses supply the correspondence search
    and the update."""

    def __init__(self, P: np.ndarray, Q: np.ndarray, direction: str, trim: float):
        self.P, self.Q, self.direction, self.trim = P, Q, direction, trim

    def distances(self, s: float, R: np.ndarray, t: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-neighbour distances (target units) and partner indices under ``s R x + t``.
        source_to_target: per source point; target_to_source: per target point."""
        raise NotImplementedError

    def update(self, s, R, t, d, idx, mask, bounds) -> tuple[float, np.ndarray, np.ndarray, bool]:
        raise NotImplementedError


class _ScipyPass(_Pass):
    def __init__(self, P, Q, direction, trim):
        super().__init__(P, Q, direction, trim)
        from scipy.spatial import cKDTree

        # the tree is built once on the untransformed side it indexes: nearest neighbours are
        # invariant to applying one similarity to both query and data sets
        self.tree = cKDTree(Q if direction == "source_to_target" else P)

    def distances(self, s, R, t):
        if self.direction == "source_to_target":
            d, idx = self.tree.query(s * self.P @ R.T + t, workers=1)
            return np.asarray(d), np.asarray(idx)
        # target -> source: query the target mapped back into the source frame, then scale
        # the distances into target units
        d, idx = self.tree.query(((self.Q - t) @ R) / s, workers=1)
        return np.asarray(d) * s, np.asarray(idx)

    def update(self, s, R, t, d, idx, mask, bounds):
        if self.direction == "source_to_target":
            a, b = self.P[mask], self.Q[idx[mask]]
        else:
            a, b = self.P[idx[mask]], self.Q[mask]
        s_free, R_n, t_n = _umeyama(a, b, None)
        if bounds is not None and not bounds[0] <= s_free <= bounds[1]:
            s_c = min(max(s_free, bounds[0]), bounds[1])
            return s_c, R_n, b.mean(0) - s_c * (R_n @ a.mean(0)), True
        return s_free, R_n, t_n, False


class _Open3dPass(_Pass):
    """open3d's point-to-point ICP driven one iteration at a time.

    ``registration_icp(max_iteration=1)`` is ``evaluate_registration`` (nearest neighbours
    within a distance) followed by ``TransformationEstimationPointToPoint(with_scaling=True)
    .compute_transformation`` on those pairs; we call these two building blocks directly so
    that the trimmed set (not a distance threshold) is fitted, the scale can be clamped with
    the exact constrained optimum, and target_to_source pairs are fitted in the target frame,
    exactly as in the scipy backend. Only the neighbour search (open3d's KDTreeFlann) and the
    3x3 estimation (Eigen's Umeyama) differ from the scipy backend's.
    """

    def __init__(self, P, Q, direction, trim, o3d):
        super().__init__(P, Q, direction, trim)
        self.o3d = o3d
        reg = o3d.pipelines.registration
        self.reg = reg
        self.est = reg.TransformationEstimationPointToPoint(with_scaling=True)
        V = o3d.utility.Vector3dVector
        self.pcd_P = o3d.geometry.PointCloud(V(np.ascontiguousarray(P)))
        self.pcd_Q = o3d.geometry.PointCloud(V(np.ascontiguousarray(Q)))

    def distances(self, s, R, t):
        M = np.eye(4)
        if self.direction == "source_to_target":
            # source points moved into the target frame, searched among target points
            M[:3, :3], M[:3, 3] = s * R, t
            query, data = s * self.P @ R.T + t, self.Q
            pcd_query, pcd_data, unit = self.pcd_P, self.pcd_Q, 1.0
        else:
            # target points mapped back into the source frame, searched among source points;
            # distances are scaled into target units
            M[:3, :3], M[:3, 3] = R.T / s, -(R.T @ t) / s
            query, data = ((self.Q - t) @ R) / s, self.P
            pcd_query, pcd_data, unit = self.pcd_Q, self.pcd_P, s
        lo = np.minimum(query.min(0), data.min(0))
        hi = np.maximum(query.max(0), data.max(0))
        radius = 2.0 * float(np.linalg.norm(hi - lo)) + 1e-12   # larger than any distance
        res = self.reg.evaluate_registration(pcd_query, pcd_data, radius, M)
        corr = np.asarray(res.correspondence_set)
        n = len(query)
        if len(corr) != n:
            raise RuntimeError(f"open3d returned {len(corr)} correspondences for {n} points")
        idx = np.empty(n, dtype=np.int64)
        idx[corr[:, 0]] = corr[:, 1]
        return np.linalg.norm(query - data[idx], axis=1) * unit, idx

    def update(self, s, R, t, d, idx, mask, bounds):
        rows = np.nonzero(mask)[0]
        if self.direction == "source_to_target":
            pairs = np.stack([rows, idx[rows]], 1)
        else:
            pairs = np.stack([idx[rows], rows], 1)
        a, b = self.P[pairs[:, 0]], self.Q[pairs[:, 1]]
        _umeyama_rank_check(a, b)
        M = np.asarray(self.est.compute_transformation(
            self.pcd_P, self.pcd_Q, self.o3d.utility.Vector2iVector(pairs.astype(np.int32))))
        s_n, R_n, t_n = _decompose(M)
        if bounds is not None and not bounds[0] <= s_n <= bounds[1]:
            # the least-squares optimum for a fixed scale keeps the rotation and puts the
            # source centroid where the free optimum puts it
            s_c = min(max(s_n, bounds[0]), bounds[1])
            return s_c, R_n, b.mean(0) - s_c * (R_n @ a.mean(0)), True
        return s_n, R_n, t_n, False


def _decompose(M: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    A = M[:3, :3]
    s = float(abs(np.linalg.det(A)) ** (1.0 / 3.0))
    R = A / s
    # re-orthonormalise (open3d returns s*R in float64; remove round-off)
    U, _, Vt = np.linalg.svd(R)
    R = U @ Vt
    return s, R, M[:3, 3].copy()


def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _rotmat(w: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(w).as_matrix()


def _extrapolate(x0: tuple[float, np.ndarray, np.ndarray],
                 x1: tuple[float, np.ndarray, np.ndarray], alpha: float, c: np.ndarray,
                 bounds: tuple[float, float] | None) -> tuple[float, np.ndarray, np.ndarray]:
    """``alpha`` times the step from ``x0`` to ``x1``, in the parameters (log scale, rotation
    vector of the relative rotation, image of the source centroid ``c``); the scale is kept in
    ``bounds`` (the centroid's image is kept when it is clamped)."""
    s0, R0, t0 = x0
    s1, R1, t1 = x1
    ls = math.log(s0) + alpha * (math.log(s1) - math.log(s0))
    s = math.exp(ls)
    if bounds is not None:
        s = min(max(s, bounds[0]), bounds[1])
    R = _rotmat(alpha * _rotvec(R1 @ R0.T)) @ R0
    m0, m1 = s0 * R0 @ c + t0, s1 * R1 @ c + t1
    m = m0 + alpha * (m1 - m0)
    return s, R, m - s * (R @ c)


def _run_pass(runner: _Pass, s: float, R: np.ndarray, t: np.ndarray, iterations: int,
              bounds: tuple[float, float] | None, tol: float, label: str,
              accelerate: bool = True, max_alpha: float = 8.0
              ) -> tuple[tuple[float, np.ndarray, np.ndarray], float, int, list[float], int,
                         bool, bool]:
    """Trimmed ICP from ``(s, R, t)``; returns the best iterate, its cost and index, the
    per-iterate costs, the number of updates, and the converged / clamped flags.

    Plain ICP steps never raise the trimmed cost (the fit minimises it for the current pairs,
    re-matching and re-trimming can only lower it; the clamp keeps the current scale
    admissible). With ``accelerate`` the step after a successful one is stretched by a factor
    ``alpha`` (doubling up to ``max_alpha``) along the last plain step; if the stretched iterate
    costs more than the one it started from, it is abandoned for the plain step and ``alpha``
    restarts at 1. Every evaluated iterate counts as an iteration and the best one is kept.
    """
    costs: list[float] = []
    best = (s, R, t)
    best_cost, best_k = math.inf, 0
    x = (s, R, t)
    c = runner.P.mean(0)
    prev_mask = prev_idx = None
    alpha = 1.0
    pending = None          # (cost at the start point, plain step) while an extrapolation runs
    converged = False
    clamped_any = False
    rejected = 0
    anchor_cost = None      # cost of the iterate the current one was stepped from
    for k in range(iterations + 1):
        d, idx = runner.distances(*x)
        mask = _trim_mask(d, runner.trim)
        cost = float(np.mean(d[mask] ** 2))
        costs.append(cost)
        if cost < best_cost:
            best, best_cost, best_k = x, cost, k
        if k == iterations:
            break
        if pending is not None:
            start_cost, plain = pending
            pending = None
            if cost > start_cost:
                # the stretched step overshot: take the plain step from the start point
                x, alpha, prev_mask, anchor_cost = plain, 1.0, None, start_cost
                rejected += 1
                continue
        if anchor_cost is not None:
            # a repeated trimmed correspondence set after a plain step is a fixed point
            same = (prev_mask is not None and np.array_equal(mask, prev_mask)
                    and np.array_equal(idx[mask], prev_idx[mask]))
            if same or abs(anchor_cost - cost) <= tol * anchor_cost:
                converged = True
                break
            if accelerate:
                alpha = min(2.0 * alpha, max_alpha)
        prev_mask, prev_idx = mask, idx
        try:
            s_n, R_n, t_n, clamped = runner.update(*x, d, idx, mask, bounds)
        except ValueError as exc:  # degenerate correspondence set: stop at the best so far
            log.debug("icp %s pass: stopping at iteration %d, %s", label, k, exc)
            break
        clamped_any |= clamped
        plain = (s_n, R_n, t_n)
        anchor_cost = cost
        if accelerate and alpha > 1.0:
            pending = (cost, plain)
            x = _extrapolate(x, plain, alpha, c, bounds)
            prev_mask = None
        else:
            x = plain
    updates = len(costs) - 1
    log.debug("icp %s pass: %d updates (%d stretched steps undone), cost %.4g -> best %.4g "
              "(iterate %d)%s%s", label, updates, rejected, costs[0], best_cost, best_k,
              ", converged" if converged else "", ", scale clamped" if clamped_any else "")
    return best, best_cost, best_k, costs, updates, converged, clamped_any


def _subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if n is None or len(x) <= n:
        return x
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return x[np.sort(idx)]


def icp(source: Geometry, target: Geometry, *, init: Similarity | None = None,
        backend: str = "auto", iterations: tuple[int, int] = (50, 100), trim: float = 0.2,
        scale_range: tuple[float, float] | None = (0.7, 3.0),
        correspondences: str = "auto", num_samples: int = 10000,
        coarse_points: int | None = 2000, tol: float = 1e-6, accelerate: bool = True,
        seed: int = 0, return_info: bool = False) -> Similarity | tuple[Similarity, IcpInfo]:
    """Trimmed point-to-point ICP with scale: the similarity mapping SOURCE onto TARGET.

    Algorithm (the reference's, docs/method.md section 1 step 7): start from ``init`` or
    :func:`initial_similarity` (centroids and bounding-box diagonals matched, no rotation).
    Each iteration finds nearest-neighbour correspondences under the current transform,
    drops the worst ``trim`` fraction, and re-fits the similarity in closed form
    (:func:`fit_similarity`) on the rest. The cost of an iterate is the trimmed mean squared
    distance (squared target units) and the lowest-cost iterate is returned. A coarse pass
    (``iterations[0]`` updates, the matched side subsampled to ``coarse_points``) is followed
    by a fine pass (``iterations[1]`` updates, all points) started from the coarse pass's best.
    A pass stops early when the trimmed correspondence set stops changing or the cost changes
    by less than ``tol`` (relative). Plain ICP creeps along sliding directions (scale on a
    partial view especially); with ``accelerate`` (default) a step after a successful one is
    stretched up to 8x along the last ICP step and undone whenever it raises the cost, which
    typically halves the iterations and reaches a lower cost within the same budget. Every
    evaluated iterate counts against ``iterations`` and competes for "lowest cost".

    Scale clamp: the scale RELATIVE TO THE START, ``s / s_init``, is kept in ``scale_range``
    at every update (the reference clamps the cumulative ICP scale, i.e. the product of the
    per-iteration scale updates, which is exactly ``s / s_init``; an absolute clamp would
    depend on the units of the two inputs). The clamped update is the exact least-squares
    optimum with the scale fixed at the bound. ``scale_range`` must contain 1 (so the start is
    admissible); ``None`` disables the clamp.

    Args:
        source: :class:`Mesh` or ``(N, 3)`` points (numpy / torch), source frame.
        target: :class:`Mesh` or ``(M, 3)`` points, target frame (metres).
            A mesh is replaced by ``num_samples`` area-weighted surface samples (seeded by
            ``seed``, so results are deterministic); point inputs are used as given.
        init: starting similarity (source -> target); default :func:`initial_similarity`.
        backend: ``"scipy"`` (cKDTree + numpy) or ``"open3d"``, or ``"auto"`` (open3d when
            importable, else scipy). ``registration_icp`` itself cannot trim by fraction,
            clamp the scale or keep the best iterate, so the open3d backend runs its two
            building blocks one iteration at a time: ``evaluate_registration`` (KDTreeFlann
            nearest neighbours) and ``TransformationEstimationPointToPoint(with_scaling=True)
            .compute_transformation`` on the trimmed pairs (one such step equals
            ``registration_icp(max_iteration=1)`` with the trim distance as threshold). Both
            backends therefore run the same algorithm and agree to round-off.
        iterations: ``(coarse, fine)`` maximum numbers of updates (each >= 0).
        trim: fraction in ``[0, 1)`` of the worst correspondences dropped each iteration.
        scale_range: ``(lo, hi)`` bounds of ``s / s_init``, or ``None``.
        correspondences: ``"source_to_target"`` (the reference's and open3d's: every source
            point is matched to its nearest target point; right when the source is a part of
            the target, e.g. hand mesh -> hand-object mesh), ``"target_to_source"`` (every
            target point is matched to its nearest transformed source point; right when the
            target is a partial view of the source, e.g. a complete generated mesh -> a
            one-sided point cloud, where source points on the unseen side have no partner), or
            ``"auto"`` (default): both are run from the same start, and each result's MATCHED
            side is scored by its coverage, the fraction of its points with a point of the
            other set within :data:`AUTO_COVERAGE_SPACINGS` median target spacings (the source
            for ``"source_to_target"``, the target for ``"target_to_source"``): a partial
            target lies entirely on a well-placed complete source while half of that source is
            unseen. ``"target_to_source"`` is kept when its coverage exceeds the other's by
            more than :data:`AUTO_COVERAGE_MARGIN`, else the reference's direction (two
            complete shapes, a part inside a whole). Costs two ICP runs;
            :attr:`IcpInfo.coverage` has both scores. Pass a direction when you know it.
        num_samples: surface samples per mesh input.
        coarse_points: size of the random subset of the matched side (source for
            source_to_target, target for target_to_source) used by the coarse pass;
            ``None`` for all.
        tol: relative cost change below which a pass stops.
        accelerate: stretch successful steps (see above); ``False`` gives plain ICP.
        seed: seed for mesh sampling and subsampling.
        return_info: also return an :class:`IcpInfo`.

    Returns:
        The :class:`Similarity` (float64, CPU), or ``(Similarity, IcpInfo)``.

    Raises:
        ValueError: bad shapes, empty meshes, fewer than 3 points, bad parameters.
        ImportError: ``backend="open3d"`` without open3d installed.
    """
    fn = "icp"
    t0 = time.perf_counter()
    if backend not in _BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {_BACKENDS}, got {backend!r}")
    if correspondences not in _ICP_CORRESPONDENCES:
        raise ValueError(f"{fn}: correspondences must be one of {_ICP_CORRESPONDENCES}, got "
                         f"{correspondences!r}")
    try:
        n_coarse, n_fine = (int(v) for v in iterations)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{fn}: iterations must be a pair (coarse, fine) of integers, got "
                         f"{iterations!r}") from exc
    if n_coarse < 0 or n_fine < 0:
        raise ValueError(f"{fn}: iterations must be non-negative, got {iterations!r}")
    if not 0.0 <= float(trim) < 1.0:
        raise ValueError(f"{fn}: trim must be in [0, 1), got {trim!r}")
    bounds = None
    if scale_range is not None:
        lo, hi = (float(v) for v in scale_range)
        if not (0 < lo <= 1.0 <= hi and math.isfinite(hi)):
            raise ValueError(f"{fn}: scale_range is relative to the initial scale and must "
                             f"satisfy 0 < lo <= 1 <= hi, got {scale_range!r}")
    if init is not None and not isinstance(init, Similarity):
        raise TypeError(f"{fn}: init must be a Similarity, got {type(init).__name__}")
    if coarse_points is not None and coarse_points < 3:
        raise ValueError(f"{fn}: coarse_points must be >= 3 or None, got {coarse_points!r}")

    o3d = None
    if backend == "auto":
        o3d = _open3d_or_none()
    elif backend == "open3d":
        try:
            o3d = _load_open3d()
        except Exception as exc:  # noqa: BLE001 - ImportError or OSError (missing libusb)
            raise ImportError('icp(backend="open3d") needs a working open3d: pip install '
                              '"hoiguide[open3d]" (open3d-cpu and libusb-package); import '
                              f"failed with: {exc}") from exc
    used_backend = "open3d" if o3d is not None else "scipy"

    P = _geometry_points(source, "source", fn, num_samples, seed)
    Q = _geometry_points(target, "target", fn, num_samples, seed + 1)
    T0 = init.detach() if init is not None else initial_similarity(source, target)
    s, R, t = _sim_numpy(T0)
    if scale_range is not None:
        bounds = (lo * s, hi * s)

    def make(Pp, Qq, direction):
        if used_backend == "open3d":
            return _Open3dPass(Pp, Qq, direction, float(trim), o3d)
        return _ScipyPass(Pp, Qq, direction, float(trim))

    def run(direction: str) -> tuple[Similarity, IcpInfo]:
        s, R, t = _sim_numpy(T0)
        log.debug("icp: backend %s, %s, %d source / %d target points, start scale %.4g",
                  used_backend, direction, len(P), len(Q), s)
        clamped = False
        coarse_costs: list[float] = []
        n_c = 0
        conv_c = True
        if n_coarse > 0:
            if direction == "source_to_target":
                Pc, Qc = _subsample(P, coarse_points, seed + 2), Q
            else:
                Pc, Qc = P, _subsample(Q, coarse_points, seed + 2)
            (s, R, t), _, _, coarse_costs, n_c, conv_c, cl = _run_pass(
                make(Pc, Qc, direction), s, R, t, n_coarse, bounds, tol, "coarse", accelerate)
            clamped |= cl
        (s, R, t), cost, best_k, fine_costs, n_f, conv_f, cl = _run_pass(
            make(P, Q, direction), s, R, t, n_fine, bounds, tol, "fine", accelerate)
        clamped |= cl
        info = IcpInfo(cost=cost, iterations=(n_c, n_f), coarse_costs=coarse_costs,
                       fine_costs=fine_costs, best_iteration=best_k, backend=used_backend,
                       correspondences=direction, converged=(conv_c, conv_f),
                       clamped=clamped, num_source_points=len(P), num_target_points=len(Q),
                       init=T0)
        return _similarity(s, R, t), info

    if correspondences == "auto":
        (T_st, info_st), (T_ts, info_ts) = run("source_to_target"), run("target_to_source")
        cov = _auto_coverage(P, Q, T_st, T_ts)
        pick_ts = cov["target_to_source"] > cov["source_to_target"] + AUTO_COVERAGE_MARGIN
        result, info = (T_ts, info_ts) if pick_ts else (T_st, info_st)
        info.coverage = cov
        log.debug("icp auto: coverage %.3f (source_to_target) vs %.3f (target_to_source), "
                  "tolerance %.3g: %s", cov["source_to_target"], cov["target_to_source"],
                  cov["tolerance"], info.correspondences)
    else:
        result, info = run(correspondences)
    info.seconds = time.perf_counter() - t0
    log.debug("icp: done in %.3f s, rmse %.4g, scale %.4g (x%.3f of start)", info.seconds,
              math.sqrt(info.cost), float(result.scale),
              float(result.scale) / float(T0.scale))
    if not return_info:
        return result
    return result, info


def _auto_coverage(P: np.ndarray, Q: np.ndarray, T_st: Similarity, T_ts: Similarity
                   ) -> dict[str, float]:
    """Coverage of each direction's matched side under its own result (see :func:`icp`)."""
    from scipy.spatial import cKDTree

    tree_q = cKDTree(Q)
    # median nearest-neighbour spacing of the target (k=2: the nearest point is itself)
    sub = Q if len(Q) <= 4000 else Q[np.random.default_rng(0).choice(len(Q), 4000,
                                                                      replace=False)]
    spacing = float(np.median(tree_q.query(sub, k=2)[0][:, 1]))
    if not spacing > 0:  # mostly duplicated points: fall back to 1/1000 of the target's box
        spacing = 1e-3 * float(np.linalg.norm(Q.max(0) - Q.min(0)))
    tau = AUTO_COVERAGE_SPACINGS * spacing
    d_st, _ = tree_q.query(T_st.apply(P))
    d_ts, _ = cKDTree(T_ts.apply(P)).query(Q)
    return {"source_to_target": float(np.mean(np.asarray(d_st) <= tau)),
            "target_to_source": float(np.mean(np.asarray(d_ts) <= tau)),
            "tolerance": tau}
