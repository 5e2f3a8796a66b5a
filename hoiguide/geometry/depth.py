"""Point maps (per-pixel 3D points of monocular geometry): depth edges and a grid mesh.

A point map is ``(H, W, 3)`` points in the OpenCV camera frame (metres), one per pixel, with
an ``(H, W)`` validity mask; MoGe returns exactly this and :func:`point_map_from_depth`
makes one from a z-depth map. The reference renders "the partial geometry as a mesh from
the point grid" to get its normal and disparity targets: :func:`mesh_from_point_map` is that
mesh (two triangles per 2x2 block of valid pixels, none across depth edges).
"""

from __future__ import annotations

import numpy as np
import torch

from hoiguide.types import Camera, Mesh

__all__ = ["point_map_from_depth", "depth_edges", "mesh_from_point_map", "point_map_targets"]


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def point_map_from_depth(depth, camera: Camera) -> np.ndarray:
    """Unproject a z-depth map to an ``(H, W, 3)`` float64 point map (camera frame, metres).

    ``depth`` is ``(H, W)`` z in metres (0 or non-finite where empty); empty pixels get NaN.
    """
    d = _np(depth).astype(np.float64)
    H, W = camera.height, camera.width
    if d.shape != (H, W):
        raise ValueError(f"point_map_from_depth: expected depth ({H}, {W}), got {d.shape}")
    u = (np.arange(W) + 0.5 - camera.cx) / camera.fx
    v = (np.arange(H) + 0.5 - camera.cy) / camera.fy
    pts = np.stack([u[None, :] * d, v[:, None] * d, d], axis=-1)
    pts[~(np.isfinite(d) & (d > 0))] = np.nan
    return pts


def depth_edges(depth, valid=None, *, rtol: float = 0.04, dilate: int = 1) -> np.ndarray:
    """Pixels at depth discontinuities: ``(H, W)`` bool.

    A pixel is an edge when its depth differs from a 4-neighbour's by more than ``rtol``
    times its own depth (a relative threshold, so it works at any scale), or when it borders
    an invalid pixel; the result is dilated by ``dilate`` pixels (square).
    """
    d = _np(depth).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth_edges: expected (H, W) depth, got {d.shape}")
    ok = np.isfinite(d) & (d > 0)
    if valid is not None:
        ok &= _np(valid).astype(bool)
    dd = np.where(ok, d, np.nan)
    edge = np.zeros(d.shape, bool)
    for axis in (0, 1):
        a = np.take(dd, range(0, d.shape[axis] - 1), axis=axis)
        b = np.take(dd, range(1, d.shape[axis]), axis=axis)
        with np.errstate(invalid="ignore"):
            jump = ~(np.abs(a - b) <= rtol * np.minimum(a, b))  # NaN (invalid) counts as a jump
        sl_a = [slice(None), slice(None)]
        sl_b = [slice(None), slice(None)]
        sl_a[axis] = slice(0, d.shape[axis] - 1)
        sl_b[axis] = slice(1, d.shape[axis])
        edge[tuple(sl_a)] |= jump
        edge[tuple(sl_b)] |= jump
    edge &= ok
    if dilate > 0:
        from scipy.ndimage import binary_dilation

        edge = binary_dilation(edge, iterations=int(dilate)) & ok
    return edge


def _grid_faces(P: np.ndarray, ok: np.ndarray, rtol: float) -> np.ndarray:
    """Faces over ALL pixels (index ``i * W + j``) joining valid pixels without bridging edges."""
    H, W = ok.shape
    idx = np.arange(H * W).reshape(H, W)
    zf = np.where(ok, P[..., 2], np.nan).reshape(-1)
    a, b = idx[:-1, :-1], idx[:-1, 1:]
    c, d = idx[1:, :-1], idx[1:, 1:]
    tris = []
    # image y grows downward: (a, c, b) is counter-clockwise seen from the camera
    for t in (np.stack([a, c, b], -1), np.stack([b, c, d], -1)):
        t = t.reshape(-1, 3)
        zt = zf[t]
        with np.errstate(invalid="ignore"):
            good = np.isfinite(zt).all(1) & ((zt.max(1) - zt.min(1)) <= rtol * zt.min(1))
        tris.append(t[good])
    return np.concatenate(tris, 0)


def _check_point_map(points, valid, fn: str) -> tuple[np.ndarray, np.ndarray]:
    P = _np(points).astype(np.float64)
    if P.ndim != 3 or P.shape[2] != 3:
        raise ValueError(f"{fn}: expected (H, W, 3) points, got {P.shape}")
    ok = _np(valid).astype(bool)
    if ok.shape != P.shape[:2]:
        raise ValueError(f"{fn}: expected valid {P.shape[:2]}, got {ok.shape}")
    with np.errstate(invalid="ignore"):
        ok = ok & np.isfinite(P).all(-1) & (P[..., 2] > 0)
    return P, ok


def mesh_from_point_map(points, valid, *, rtol: float = 0.04) -> Mesh:
    """A triangle mesh through the valid pixels of a point map (camera frame, metres).

    Each 2x2 block of pixels gives up to two triangles, kept when all three corners are
    valid and their depths agree within ``rtol`` (relative), so no triangle spans a depth
    edge. Triangles are wound to face the camera (outward normal toward -z for a surface
    seen from the front), matching the renderer's convention. Unused pixels are dropped.
    """
    P, ok = _check_point_map(points, valid, "mesh_from_point_map")
    faces = _grid_faces(P, ok, rtol)
    if len(faces) == 0:
        return Mesh.empty(dtype=torch.float64)
    used, inv = np.unique(faces.reshape(-1), return_inverse=True)
    verts = P.reshape(-1, 3)[used]
    return Mesh(torch.as_tensor(verts), torch.as_tensor(inv.reshape(-1, 3), dtype=torch.long))


def point_map_targets(points, valid, *, rtol: float = 0.04
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal and disparity targets of a point map: the grid mesh "rendered" at its pixels.

    The grid mesh of :func:`mesh_from_point_map` has one vertex per pixel centre, so
    rendering it with the same camera samples it exactly at its vertices: disparity is
    ``1 / z`` of the pixel's point and the (smooth-shaded) normal is the area-weighted vertex
    normal. This computes those values directly (exact, and without ray casts that graze
    vertices). A pixel is valid when it belongs to at least one triangle.

    Returns:
        ``normals (H, W, 3)`` float32 unit, camera frame, facing the camera (-z) for a
        front-facing surface; ``disparity (H, W)`` float32 in 1/metres; ``valid (H, W)``
        bool. Zeros where invalid.
    """
    P, ok = _check_point_map(points, valid, "point_map_targets")
    H, W = ok.shape
    faces = _grid_faces(P, ok, rtol)
    V = np.where(ok[..., None], P, 0.0).reshape(-1, 3)
    m = Mesh(torch.as_tensor(V), torch.as_tensor(faces.reshape(-1, 3), dtype=torch.long))
    used = np.zeros(H * W, bool)
    used[faces.reshape(-1)] = True
    n = m.vertex_normals().numpy().reshape(H, W, 3) if len(faces) else np.zeros((H, W, 3))
    used = used.reshape(H, W)
    disp = np.where(used, 1.0 / np.where(used, P[..., 2], 1.0), 0.0)
    n = np.where(used[..., None], n, 0.0)
    return (torch.as_tensor(n, dtype=torch.float32), torch.as_tensor(disp, dtype=torch.float32),
            torch.as_tensor(used))
