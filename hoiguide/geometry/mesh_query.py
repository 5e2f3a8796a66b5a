"""Distance, sign and inside/outside queries of points against a triangle mesh.

All coordinates are in the frame of the mesh (whatever frame its vertices are expressed in;
in hoiguide usually the image-aligned OpenCV camera frame), in metres. Signed distances
follow the library's convention: **negative inside**.

How it works: a `warp <https://github.com/NVIDIA/warp>`_ BVH (built once per mesh geometry
and cached) finds, for every query point, the closest triangle and whether the point is
inside; no gradient flows through that search. The distance is then recomputed in torch from
the chosen triangle's vertices (exact point-to-triangle projection), so autograd gives exact
gradients with respect to both the query points and ``mesh.vertices`` (the barycentric
coordinates of the closest point are held fixed, which is exact to first order because the
closest point minimises the distance over the triangle).

Inside/outside uses the generalized winding number (Jacobson et al. 2013): a point is inside
when the winding number is ``>= 0.5``. It is robust for open meshes, e.g. a MANO hand with its
hole at the wrist. ``sign="normal"`` (angle-weighted pseudo-normal of the closest feature) is
faster but only correct for closed, well-formed meshes.

Works on CPU and CUDA tensors (warp runs on the tensors' device; CPU kernels are
single-threaded). The first call compiles the warp kernels (a few seconds, cached on disk
afterwards).
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hoiguide.geometry.indexing import take
from hoiguide.types import ArrayLike, Mesh

__all__ = ["closest_points", "signed_distance", "inside", "winding_number"]

log = logging.getLogger(__name__)

_MAX_DIST = 1.0e10  # "unbounded" search radius for the warp queries (metres)
_SIGNS = ("winding", "normal", "none")


# --------------------------------------------------------------------------------------
# warp set-up (lazy)
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _warp() -> Any:
    """Import and initialise warp once, quietly."""
    try:
        import warp as wp
    except ImportError as e:  # pragma: no cover - warp is a core dependency
        raise ImportError("hoiguide.geometry.mesh_query needs warp: pip install warp-lang") from e
    wp.config.quiet = True  # older warp releases
    if hasattr(wp, "LOG_WARNING") and hasattr(wp.config, "log_level"):
        wp.config.log_level = max(wp.config.log_level, wp.LOG_WARNING)  # warp >= 1.19
    wp.init()
    return wp


@functools.lru_cache(maxsize=None)
def _kernels() -> dict[str, Any]:
    """Define the warp kernels once (compiled by warp on first launch, cached on disk)."""
    wp = _warp()

    @wp.kernel(enable_backward=False)
    def closest_kernel(mesh: wp.uint64, pts: wp.array(dtype=wp.vec3), max_dist: float,
                       face: wp.array(dtype=wp.int32)):
        i = wp.tid()
        q = wp.mesh_query_point_no_sign(mesh, pts[i], max_dist)
        if q.result:
            face[i] = q.face
        else:
            face[i] = -1

    @wp.kernel(enable_backward=False)
    def closest_winding_kernel(mesh: wp.uint64, pts: wp.array(dtype=wp.vec3), max_dist: float,
                               accuracy: float, threshold: float,
                               face: wp.array(dtype=wp.int32), sign: wp.array(dtype=wp.float32)):
        i = wp.tid()
        q = wp.mesh_query_point_sign_winding_number(mesh, pts[i], max_dist, accuracy, threshold)
        if q.result:
            face[i] = q.face
            sign[i] = q.sign
        else:
            face[i] = -1
            sign[i] = 1.0

    @wp.kernel(enable_backward=False)
    def closest_normal_kernel(mesh: wp.uint64, pts: wp.array(dtype=wp.vec3), max_dist: float,
                              face: wp.array(dtype=wp.int32), sign: wp.array(dtype=wp.float32)):
        i = wp.tid()
        q = wp.mesh_query_point_sign_normal(mesh, pts[i], max_dist)
        if q.result:
            face[i] = q.face
            sign[i] = q.sign
        else:
            face[i] = -1
            sign[i] = 1.0

    @wp.kernel(enable_backward=False)
    def winding_exact_kernel(pts: wp.array(dtype=wp.vec3d), verts: wp.array(dtype=wp.vec3d),
                             tris: wp.array(dtype=wp.int32), num_faces: int,
                             inv_4pi: wp.float64, out: wp.array(dtype=wp.float64)):
        # exact generalized winding number: sum of signed solid angles (Van Oosterom and
        # Strackee 1983) of all triangles seen from the point, divided by 4 pi
        i = wp.tid()
        p = pts[i]
        total = wp.float64(0.0)
        for f in range(num_faces):
            a = verts[tris[3 * f + 0]] - p
            b = verts[tris[3 * f + 1]] - p
            c = verts[tris[3 * f + 2]] - p
            la = wp.length(a)
            lb = wp.length(b)
            lc = wp.length(c)
            num = wp.dot(a, wp.cross(b, c))
            den = la * lb * lc + wp.dot(a, b) * lc + wp.dot(b, c) * la + wp.dot(c, a) * lb
            total = total + wp.float64(2.0) * wp.atan2(num, den)
        out[i] = total * inv_4pi  # (a Python literal would be float32 here)

    return {"closest": closest_kernel, "winding": closest_winding_kernel,
            "normal": closest_normal_kernel, "winding_exact": winding_exact_kernel}


def _wp_device(device: torch.device) -> Any:
    return _warp().device_from_torch(device)


# --------------------------------------------------------------------------------------
# BVH cache (one per mesh geometry)
# --------------------------------------------------------------------------------------


@dataclass
class _BvhEntry:
    key: tuple
    wp_mesh: Any
    points32: torch.Tensor  # kept alive: the warp mesh reads this memory (zero-copy)
    indices32: torch.Tensor


_BVH_CACHE: dict[int, _BvhEntry] = {}


def _geometry_key(mesh: Mesh) -> tuple:
    v, f = mesh.vertices, mesh.faces
    return (v.data_ptr(), v._version, tuple(v.shape), str(v.device),
            f.data_ptr(), f._version, tuple(f.shape))


def _bvh(mesh: Mesh) -> Any:
    """The warp mesh (BVH with winding-number data) for ``mesh``, cached while ``mesh`` lives
    and its vertex/face tensors are not modified in place."""
    wp = _warp()
    key = _geometry_key(mesh)
    entry = _BVH_CACHE.get(id(mesh))
    if entry is not None and entry.key == key:
        return entry.wp_mesh
    dev = mesh.vertices.device
    pts = mesh.vertices.detach().to(torch.float32).contiguous()
    if pts.data_ptr() == mesh.vertices.data_ptr():
        pts = pts.clone()  # never alias the caller's tensor
    idx = mesh.faces.detach().to(device=dev, dtype=torch.int32).reshape(-1).contiguous()
    wp_mesh = wp.Mesh(points=wp.from_torch(pts, dtype=wp.vec3),
                      indices=wp.from_torch(idx, dtype=wp.int32),
                      support_winding_number=True)
    if id(mesh) not in _BVH_CACHE:
        weakref.finalize(mesh, _BVH_CACHE.pop, id(mesh), None)
    _BVH_CACHE[id(mesh)] = _BvhEntry(key, wp_mesh, pts, idx)
    log.debug("built warp BVH for %r", mesh)
    return wp_mesh


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def _check_mesh(mesh: Mesh, what: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{what}: expected a hoiguide Mesh, got {type(mesh).__name__}")
    mesh.require_nonempty(what)


def _check_points(points: ArrayLike, mesh: Mesh, what: str) -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        arr = np.asarray(points)
        if not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{what}: expected numeric points, got dtype {arr.dtype}")
        points = torch.as_tensor(arr, device=mesh.device)
        if not points.is_floating_point():
            points = points.to(mesh.dtype)
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"{what}: expected points of shape (N, 3), got {tuple(points.shape)}")
    if not points.is_floating_point():
        points = points.to(mesh.dtype)
    if points.device != mesh.device:
        raise ValueError(f"{what}: points are on {points.device} but the mesh is on "
                         f"{mesh.device}; move one of them")
    if points.numel() and not bool(torch.isfinite(points.detach()).all()):
        bad = int((~torch.isfinite(points.detach()).all(-1)).sum())
        raise ValueError(f"{what}: {bad} of {points.shape[0]} points are NaN or inf")
    return points


# --------------------------------------------------------------------------------------
# exact point-to-triangle projection (torch)
# --------------------------------------------------------------------------------------


def _closest_barycentric(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                         c: torch.Tensor) -> torch.Tensor:
    """Barycentric weights ``(N, 3)`` of the closest point of triangle ``(a, b, c)`` to ``p``
    (Voronoi-region test of Ericson, Real-Time Collision Detection, 5.1.5). No gradient."""
    def dot(x, y):
        return (x * y).sum(-1)

    def sdiv(n, d):
        return n / torch.where(d.abs() > 0, d, torch.ones_like(d))

    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp = p - b
    d3, d4 = dot(ab, bp), dot(ac, bp)
    cp = p - c
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    one, zero = torch.ones_like(d1), torch.zeros_like(d1)

    # interior
    den = va + vb + vc
    v = sdiv(vb, den)
    w = sdiv(vc, den)
    out = torch.stack([1 - v - w, v, w], -1)

    def put(mask, bary):
        return torch.where(mask[:, None], torch.stack(bary, -1), out)

    # edges and vertices, from lowest to highest priority
    e43, e56 = d4 - d3, d5 - d6
    t = sdiv(e43, e43 + e56)
    out = put((va <= 0) & (e43 >= 0) & (e56 >= 0), [zero, 1 - t, t])       # edge BC
    t = sdiv(d2, d2 - d6)
    out = put((vb <= 0) & (d2 >= 0) & (d6 <= 0), [1 - t, zero, t])         # edge AC
    out = put((d6 >= 0) & (d5 <= d6), [zero, zero, one])                   # vertex C
    t = sdiv(d1, d1 - d3)
    out = put((vc <= 0) & (d1 >= 0) & (d3 <= 0), [1 - t, t, zero])         # edge AB
    out = put((d3 >= 0) & (d4 <= d3), [zero, one, zero])                   # vertex B
    out = put((d1 <= 0) & (d2 <= 0), [one, zero, zero])                    # vertex A
    return out


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis whose gradient is 0 (not NaN) at 0."""
    sq = (x * x).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def _query(points: torch.Tensor, mesh: Mesh, mode: str, what: str
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closest face index (N,) long and, for a signed mode, the sign (N,) (-1 inside, +1
    outside) from warp, without gradient."""
    wp = _warp()
    k = _kernels()
    n = points.shape[0]
    dev = points.device
    face = torch.empty(n, dtype=torch.int32, device=dev)
    sign = torch.empty(n, dtype=torch.float32, device=dev) if mode != "none" else None
    if n == 0:
        return face.long(), sign
    wmesh = _bvh(mesh)
    pts = points.detach().to(torch.float32).contiguous()
    wdev = _wp_device(dev)
    wpts = wp.from_torch(pts, dtype=wp.vec3)
    wface = wp.from_torch(face, dtype=wp.int32)
    if mode == "none":
        wp.launch(k["closest"], dim=n, inputs=[wmesh.id, wpts, _MAX_DIST, wface], device=wdev)
    elif mode == "winding":
        wp.launch(k["winding"], dim=n, inputs=[wmesh.id, wpts, _MAX_DIST, 2.0, 0.5, wface,
                                               wp.from_torch(sign, dtype=wp.float32)],
                  device=wdev)
    else:
        wp.launch(k["normal"], dim=n, inputs=[wmesh.id, wpts, _MAX_DIST, wface,
                                              wp.from_torch(sign, dtype=wp.float32)],
                  device=wdev)
    if dev.type == "cuda":
        wp.synchronize_device(wdev)
    face = face.long()
    if bool((face < 0).any()):
        raise ValueError(f"{what}: the mesh has no usable (non-degenerate) triangle; warp "
                         f"found no closest face for {int((face < 0).sum())} points")
    if sign is not None:
        sign = torch.where(sign < 0, -1.0, 1.0).to(torch.float32)
    return face, sign


def _project(points: torch.Tensor, mesh: Mesh, face: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (N,) and closest point (N, 3) on the given faces, differentiable w.r.t.
    ``points`` and ``mesh.vertices``, in the promoted dtype of the two."""
    dt = torch.promote_types(points.dtype, mesh.vertices.dtype)
    p = points.to(dt)
    tri = take(mesh.vertices.to(dt), take(mesh.faces, face))  # (N, 3, 3)
    with torch.no_grad():
        bary = _closest_barycentric(p.detach(), tri[:, 0].detach(), tri[:, 1].detach(),
                                    tri[:, 2].detach())
    closest = (bary[:, :, None] * tri).sum(1)
    return _safe_norm(p - closest), closest


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def closest_points(points: ArrayLike, mesh: Mesh
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closest point on the mesh surface to each query point.

    Args:
        points: ``(N, 3)`` query points in the mesh's frame, metres (tensor on the mesh's
            device, or numpy / nested sequence).
        mesh: a non-empty triangle mesh.

    Returns:
        ``(distance (N,), closest (N, 3), face_index (N,) long)``: unsigned Euclidean distance
        in metres, the closest surface point (mesh frame, metres) and the index of the face it
        lies on. ``distance`` and ``closest`` are differentiable w.r.t. ``points`` and
        ``mesh.vertices`` and use the promoted dtype of the two (float64 in, float64 out).
    """
    what = "closest_points"
    _check_mesh(mesh, what)
    points = _check_points(points, mesh, what)
    face, _ = _query(points, mesh, "none", what)
    dist, closest = _project(points, mesh, face)
    return dist, closest, face


def signed_distance(points: ArrayLike, mesh: Mesh, *, sign: str = "winding") -> torch.Tensor:
    """Signed distance from each point to the mesh surface, **negative inside**, metres.

    Args:
        points: ``(N, 3)`` query points in the mesh's frame, metres.
        mesh: a non-empty triangle mesh (CCW outward winding).
        sign: how inside is decided:

            * ``"winding"`` (default): generalized winding number ``>= 0.5``; correct for open
              meshes (a hand open at the wrist) and for meshes with small defects;
            * ``"normal"``: angle-weighted pseudo-normal of the closest feature; faster but
              only correct for closed, non-self-intersecting meshes;
            * ``"none"``: unsigned distance.

    Returns:
        ``(N,)`` signed distance, differentiable w.r.t. ``points`` and ``mesh.vertices``
        (gradient of the magnitude is exact; the sign is piecewise constant). Points exactly on
        the surface get distance 0 with zero gradient.
    """
    what = "signed_distance"
    if sign not in _SIGNS:
        raise ValueError(f"{what}: expected sign in {_SIGNS}, got {sign!r}")
    _check_mesh(mesh, what)
    points = _check_points(points, mesh, what)
    face, s = _query(points, mesh, sign, what)
    dist, _ = _project(points, mesh, face)
    if s is None:
        return dist
    return dist * s.to(dist.dtype)


def inside(points: ArrayLike, mesh: Mesh) -> torch.Tensor:
    """Whether each point is inside the mesh: generalized winding number ``>= 0.5``.

    Uses warp's hierarchical (fast) winding number, so it scales to large point sets; correct
    for open meshes such as a hand open at the wrist.

    Args:
        points: ``(N, 3)`` points in the mesh's frame, metres.
        mesh: a non-empty triangle mesh (CCW outward winding).

    Returns:
        ``(N,)`` bool tensor on the points' device.
    """
    what = "inside"
    _check_mesh(mesh, what)
    points = _check_points(points, mesh, what)
    _, s = _query(points, mesh, "winding", what)
    return s < 0


def winding_number(points: ArrayLike, mesh: Mesh) -> torch.Tensor:
    """Exact generalized winding number of the mesh around each point (float64, no gradient).

    ``1`` inside a closed outward-wound mesh, ``0`` outside, fractional near holes of open
    meshes (a point is "inside" when it is ``>= 0.5``). Computed exactly as the sum of the
    signed solid angles of all faces divided by ``4 pi``: cost ``O(N * F)``; for large point
    sets prefer :func:`inside` (hierarchical approximation).

    Args:
        points: ``(N, 3)`` points in the mesh's frame, metres.
        mesh: a non-empty triangle mesh.

    Returns:
        ``(N,)`` float64 tensor on the points' device.
    """
    what = "winding_number"
    _check_mesh(mesh, what)
    points = _check_points(points, mesh, what)
    wp = _warp()
    n = points.shape[0]
    dev = points.device
    out = torch.zeros(n, dtype=torch.float64, device=dev)
    if n == 0:
        return out
    pts = points.detach().to(torch.float64).contiguous()
    verts = mesh.vertices.detach().to(torch.float64).contiguous()
    tris = mesh.faces.to(device=dev, dtype=torch.int32).reshape(-1).contiguous()
    wdev = _wp_device(dev)
    wp.launch(_kernels()["winding_exact"], dim=n,
              inputs=[wp.from_torch(pts, dtype=wp.vec3d), wp.from_torch(verts, dtype=wp.vec3d),
                      wp.from_torch(tris, dtype=wp.int32), mesh.num_faces,
                      1.0 / (4.0 * math.pi), wp.from_torch(out, dtype=wp.float64)], device=wdev)
    if dev.type == "cuda":
        wp.synchronize_device(wdev)
    return out
