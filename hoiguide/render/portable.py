"""Portable rendering backend: warp kernels (CPU, or CUDA when the meshes are there).

What it computes (the public entry point is :func:`hoiguide.render.render`):

* **Visibility** (no gradient): which triangle is nearest at every pixel centre. By default
  a warp z-buffer kernel (one thread per face; the part of each face in front of
  ``z = NEAR_Z`` is tested against the pixel centres in float64, inclusive edges so that
  no pixel falls between neighbours; per-mesh buffers for the amodal masks). It gives the
  same answer as a BVH ray cast per pixel centre (``visibility="ray"``, kept as the
  reference) at ~1/8 of the CPU time for a 20k-face mesh at 256x256.
* **BVH** (no gradient): one warp BVH over all meshes concatenated, each mesh a BVH
  *group* so that a ray can be confined to one mesh. Cached per faces tensor: when the same
  topology comes again with new vertex positions it is refit, not rebuilt.
* **Outline** (no gradient): the silhouette-forming edges of every mesh (an edge between a
  front- and a back-facing face, plus open-boundary and non-manifold edges), projected to
  the image and cut into sub-segments of at most :data:`SUBSEGMENT_PX` pixels. Two BVH probe
  rays per sub-segment decide whether it is visible (nothing nearer along the ray through
  its midpoint) and what lies just outside it (background, another mesh, or the same mesh
  folded over). From that each sub-segment is assigned to the outlines it belongs to: the
  union's, each mesh's visible region's (its own edges and the edges of meshes that occlude
  it) and each mesh's amodal outline's.
* **Nearest outline edge** (no gradient): a uniform grid over the sub-segment midpoints and
  one warp kernel give, for every pixel and every outline, the nearest edge within
  ``band = BAND_SIGMAS * edge_sigma`` pixels.
* **Soft coverage** (differentiable, in torch): ``g(+-d / edge_sigma)`` with ``d`` the
  distance from the pixel centre to that edge recomputed from the projected vertices, the
  sign from the hard mask (``+`` inside), and ``g`` a logistic rescaled to reach exactly 0
  and 1 at ``+-band`` (so the soft map equals the hard mask outside the band, is 0.5 on the
  outline and is continuous). Edges with a vertex at ``z <= NEAR_Z`` are ignored.
"""

import functools
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from hoiguide.geometry.indexing import take
from hoiguide.types import Camera

log = logging.getLogger(__name__)

__all__ = ["NEAR_Z", "BAND_SIGMAS", "SUBSEGMENT_PX", "soft_edge", "soft_mask", "render_portable"]

NEAR_Z = 1.0e-4
"""Near plane in metres. Faces are seen only where ``z > NEAR_Z`` (a face crossing
``z = 0`` is clipped there, its part in front is rendered correctly), and outline edges with
a vertex (or the opposite vertex of their face) at ``z <= NEAR_Z`` are ignored for the soft
silhouette: their projection is meaningless."""

BAND_SIGMAS = 4.0
"""Half-width of the soft silhouette transition band, in units of ``edge_sigma``."""

SUBSEGMENT_PX = 2.0
"""Outline edges are cut into sub-segments no longer than this (pixels) for visibility."""

_PROBE_OFFSET_PX = 0.1  # how far outside an outline edge the "what is behind" probe looks
_VIS_REL_TOL = 1.0e-4  # a probe hit this much (relative depth) nearer than the edge occludes it
_MAX_SETS = 62  # outlines per call (bits of an int64 mask)
_MAX_SUBSEGMENTS = 4_000_000


# --------------------------------------------------------------------------------------
# warp set-up (lazy)
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _warp() -> Any:
    """Import and initialise warp once, quietly."""
    try:
        import warp as wp
    except ImportError as e:  # pragma: no cover - warp is a core dependency
        raise ImportError("hoiguide.render's portable backend needs warp: "
                          "pip install warp-lang") from e
    wp.config.quiet = True
    if hasattr(wp, "LOG_WARNING") and hasattr(wp.config, "log_level"):
        wp.config.log_level = max(wp.config.log_level, wp.LOG_WARNING)
    wp.init()
    return wp


@functools.lru_cache(maxsize=None)
def _kernels() -> dict[str, Any]:
    """Define the warp kernels once (compiled on first launch, cached on disk by warp)."""
    wp = _warp()

    f64 = wp.float64

    @wp.func
    def raster_tri(p0: wp.vec3d, p1: wp.vec3d, p2: wp.vec3d, key_lo: wp.int64, slot: int,
                   slot2: int, fx: wp.float64, fy: wp.float64, cx: wp.float64,
                   cy: wp.float64, width: int, height: int, zscale: wp.float64,
                   zbuf: wp.array2d(dtype=wp.int64)):
        # z-buffer one triangle (all corners in front of the near plane): every pixel centre
        # inside or on its projection (inclusive test: no cracks between neighbours) gets
        # atomic_min(quantised depth << 32 | face)
        x0 = fx * p0[0] / p0[2] + cx
        y0 = fy * p0[1] / p0[2] + cy
        x1 = fx * p1[0] / p1[2] + cx
        y1 = fy * p1[1] / p1[2] + cy
        x2 = fx * p2[0] / p2[2] + cx
        y2 = fy * p2[1] / p2[2] + cy
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area != f64(0.0):
            c0 = int(wp.ceil(wp.max(wp.min(wp.min(x0, x1), x2) - f64(0.5), f64(-1.0))))
            c1 = int(wp.floor(wp.min(wp.max(wp.max(x0, x1), x2) - f64(0.5), f64(width))))
            r0 = int(wp.ceil(wp.max(wp.min(wp.min(y0, y1), y2) - f64(0.5), f64(-1.0))))
            r1 = int(wp.floor(wp.min(wp.max(wp.max(y0, y1), y2) - f64(0.5), f64(height))))
            c0 = wp.max(c0, 0)
            r0 = wp.max(r0, 0)
            c1 = wp.min(c1, width - 1)
            r1 = wp.min(r1, height - 1)
            inv = f64(1.0) / area
            iz0 = f64(1.0) / p0[2]
            iz1 = f64(1.0) / p1[2]
            iz2 = f64(1.0) / p2[2]
            for r in range(r0, r1 + 1):
                py = f64(r) + f64(0.5)
                for c in range(c0, c1 + 1):
                    px = f64(c) + f64(0.5)
                    w0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) * inv
                    w1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) * inv
                    w2 = f64(1.0) - w0 - w1
                    if w0 >= f64(0.0) and w1 >= f64(0.0) and w2 >= f64(0.0):
                        z = f64(1.0) / (w0 * iz0 + w1 * iz1 + w2 * iz2)
                        key = (wp.int64(z * zscale) << wp.int64(32)) | key_lo
                        wp.atomic_min(zbuf, slot, r * width + c, key)
                        if slot2 >= 0:
                            wp.atomic_min(zbuf, slot2, r * width + c, key)

    @wp.func
    def clip_edge(a: wp.vec3d, b: wp.vec3d, near: wp.float64):
        # the point of segment a-b at z = near (a and b on opposite sides)
        return a + (b - a) * ((near - a[2]) / (b[2] - a[2]))

    @wp.kernel(enable_backward=False)
    def raster(points: wp.array(dtype=wp.vec3), indices: wp.array(dtype=wp.int32),
               groups: wp.array(dtype=wp.int32), per_group: int, fx: wp.float64,
               fy: wp.float64, cx: wp.float64, cy: wp.float64, width: int, height: int,
               near: wp.float64, zscale: wp.float64, zbuf: wp.array2d(dtype=wp.int64)):
        # one thread per face; the part of the face in front of z = near is rasterised
        # (split into one or two triangles when the face crosses the near plane)
        f = wp.tid()
        a = wp.vec3d(points[indices[3 * f]])
        b = wp.vec3d(points[indices[3 * f + 1]])
        c = wp.vec3d(points[indices[3 * f + 2]])
        slot2 = int(-1)
        if per_group != 0:
            slot2 = 1 + groups[f]
        lo = wp.int64(f)
        ia = a[2] > near
        ib = b[2] > near
        ic = c[2] > near
        n_in = int(ia) + int(ib) + int(ic)
        if n_in == 3:
            raster_tri(a, b, c, lo, 0, slot2, fx, fy, cx, cy, width, height, zscale, zbuf)
        elif n_in == 1:
            # rotate so that p is the corner in front
            p = a
            q = b
            r = c
            if ib:
                p = b
                q = c
                r = a
            elif ic:
                p = c
                q = a
                r = b
            raster_tri(p, clip_edge(p, q, near), clip_edge(p, r, near), lo, 0, slot2, fx, fy,
                       cx, cy, width, height, zscale, zbuf)
        elif n_in == 2:
            # rotate so that r is the corner behind
            p = a
            q = b
            r = c
            if not ia:
                p = b
                q = c
                r = a
            elif not ib:
                p = c
                q = a
                r = b
            qr = clip_edge(q, r, near)
            rp = clip_edge(r, p, near)
            raster_tri(p, q, qr, lo, 0, slot2, fx, fy, cx, cy, width, height, zscale, zbuf)
            raster_tri(p, qr, rp, lo, 0, slot2, fx, fy, cx, cy, width, height, zscale, zbuf)

    @wp.kernel(enable_backward=False)
    def cast_image(mesh: wp.uint64, groups: wp.array(dtype=wp.int32), fx: float, fy: float,
                   cx: float, cy: float, width: int, face: wp.array2d(dtype=wp.int32)):
        # one ray per (group, pixel centre); group -1 = all meshes
        g, tid = wp.tid()
        row = tid // width
        col = tid - row * width
        d = wp.vec3((float(col) + 0.5 - cx) / fx, (float(row) + 0.5 - cy) / fy, 1.0)
        root = int(-1)
        if groups[g] >= 0:
            root = wp.mesh_get_group_root(mesh, groups[g])
        q = wp.mesh_query_ray(mesh, wp.vec3(0.0, 0.0, 0.0), d, 1.0e10, root)
        if q.result:
            face[g, tid] = q.face
        else:
            face[g, tid] = -1

    @wp.kernel(enable_backward=False)
    def cast_points(mesh: wp.uint64, uv: wp.array(dtype=wp.vec2),
                    groups: wp.array(dtype=wp.int32), fx: float, fy: float, cx: float,
                    cy: float, face: wp.array(dtype=wp.int32), t: wp.array(dtype=wp.float32)):
        # one ray per probe through pixel position uv (continuous pixel coordinates)
        i = wp.tid()
        p = uv[i]
        d = wp.vec3((p[0] - cx) / fx, (p[1] - cy) / fy, 1.0)
        root = int(-1)
        if groups[i] >= 0:
            root = wp.mesh_get_group_root(mesh, groups[i])
        q = wp.mesh_query_ray(mesh, wp.vec3(0.0, 0.0, 0.0), d, 1.0e10, root)
        if q.result:
            face[i] = q.face
            t[i] = q.t
        else:
            face[i] = -1
            t[i] = 0.0

    @wp.kernel(enable_backward=False)
    def nearest_outline(a: wp.array(dtype=wp.vec2), b: wp.array(dtype=wp.vec2),
                        sets: wp.array(dtype=wp.int64), edge: wp.array(dtype=wp.int32),
                        cell_start: wp.array(dtype=wp.int32),
                        cell_items: wp.array(dtype=wp.int32), ncx: int, ncy: int,
                        origin: float, cell: float, width: int, height: int, radius: float,
                        out_edge: wp.array2d(dtype=wp.int32),
                        out_dist: wp.array2d(dtype=wp.float32)):
        # one thread per (outline s, grid cell): for each pixel centre in the cell, the
        # nearest sub-segment of outline s (bit s of sets) within radius, searched in the
        # 3x3 cells around (cells are at least radius + half a sub-segment wide)
        s, cid = wp.tid()
        gy = cid // ncx
        gx = cid - gy * ncx
        y0 = wp.max(gy - 1, 0)
        y1 = wp.min(gy + 1, ncy - 1)
        x0 = wp.max(gx - 1, 0)
        x1 = wp.min(gx + 1, ncx - 1)
        n = int(0)
        for y in range(y0, y1 + 1):
            n += cell_start[y * ncx + x1 + 1] - cell_start[y * ncx + x0]
        if n == 0:
            return
        col0 = wp.max(int(wp.ceil(origin + float(gx) * cell - 0.5)), 0)
        col1 = wp.min(int(wp.ceil(origin + float(gx + 1) * cell - 0.5)), width)
        row0 = wp.max(int(wp.ceil(origin + float(gy) * cell - 0.5)), 0)
        row1 = wp.min(int(wp.ceil(origin + float(gy + 1) * cell - 0.5)), height)
        bit = wp.int64(1) << wp.int64(s)
        for row in range(row0, row1):
            for col in range(col0, col1):
                p = wp.vec2(float(col) + 0.5, float(row) + 0.5)
                best = radius
                best_e = int(-1)
                for y in range(y0, y1 + 1):
                    # cells x0..x1 of one row are contiguous in cell_items
                    for k in range(cell_start[y * ncx + x0], cell_start[y * ncx + x1 + 1]):
                        j = cell_items[k]
                        if (sets[j] & bit) != wp.int64(0):
                            pa = a[j]
                            ab = b[j] - pa
                            l2 = wp.dot(ab, ab)
                            h = float(0.0)
                            if l2 > 0.0:
                                h = wp.clamp(wp.dot(p - pa, ab) / l2, 0.0, 1.0)
                            dist = wp.length(p - (pa + h * ab))
                            if dist < best:
                                best = dist
                                best_e = edge[j]
                tid = row * width + col
                out_edge[s, tid] = best_e
                out_dist[s, tid] = best

    return {"raster": raster, "cast_image": cast_image, "cast_points": cast_points,
            "nearest_outline": nearest_outline}


def _wp_device(device: torch.device) -> Any:
    return _warp().device_from_torch(device)


def _launch(kernel: Any, dim: Any, inputs: list, device: torch.device) -> None:
    wp = _warp()
    wdev = _wp_device(device)
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        with wp.ScopedStream(wp.stream_from_torch(device)):
            wp.launch(kernel, dim=dim, inputs=inputs, device=wdev)
    else:
        wp.launch(kernel, dim=dim, inputs=inputs, device=wdev)


def _wp(t: torch.Tensor, dtype: Any = None) -> Any:
    return _warp().from_torch(t.contiguous(), dtype=dtype)


# --------------------------------------------------------------------------------------
# BVH + topology cache (one entry per tuple of face tensors)
# --------------------------------------------------------------------------------------


@dataclass
class _BvhEntry:
    points: torch.Tensor  # (V, 3) float32, owned here; the warp mesh reads it
    indices: torch.Tensor  # (3F,) int32
    groups: torch.Tensor  # (F,) int32
    mesh: Any  # wp.Mesh
    pair_he: torch.Tensor  # (P, 2) int64 half-edges paired across manifold edges
    lone_he: torch.Tensor  # (L,) int64 boundary / non-manifold half-edges


_CACHE: "OrderedDict[tuple, _BvhEntry]" = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def _half_edge_topology(faces: torch.Tensor, num_vertices: int) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Pair the half-edges ``he = 3 f + k`` (from ``faces[f, k]`` to ``faces[f, (k+1)%3]``).

    Returns ``(pairs (P, 2), lone (L,))``: half-edges of edges shared by exactly two faces,
    and those of open-boundary or non-manifold edges. Zero-length edges are dropped.
    """
    a = faces.reshape(-1)
    b = faces[:, [1, 2, 0]].reshape(-1)
    he = torch.arange(a.numel(), device=faces.device)
    keep = a != b
    a, b, he = a[keep], b[keep], he[keep]
    key = torch.minimum(a, b) * num_vertices + torch.maximum(a, b)
    ks, order = torch.sort(key, stable=True)
    he = he[order]
    n = ks.numel()
    if n == 0:
        z = torch.zeros(0, dtype=torch.long, device=faces.device)
        return z.reshape(0, 2), z
    new = torch.ones(n, dtype=torch.bool, device=faces.device)
    new[1:] = ks[1:] != ks[:-1]
    run = torch.cumsum(new.long(), 0) - 1
    counts = torch.bincount(run)
    starts = torch.cumsum(counts, 0) - counts
    cnt = counts[run]
    pos = torch.arange(n, device=faces.device) - starts[run]
    pair = cnt == 2
    first = he[pair & (pos == 0)]
    second = he[pair & (pos == 1)]
    return torch.stack([first, second], 1), he[~pair]


def _get_bvh(verts32: torch.Tensor, faces: torch.Tensor, groups: torch.Tensor,
             face_tensors: tuple[torch.Tensor, ...]) -> _BvhEntry:
    """A BVH over ``verts32``/``faces`` (grouped by mesh). When the same faces come again
    (checked by content) with new vertex positions, the cached BVH is refit instead of
    rebuilt (refitting keeps the tree correct; only its balance may degrade)."""
    wp = _warp()
    indices = faces.reshape(-1).to(torch.int32).contiguous()
    groups = groups.to(torch.int32).contiguous()
    key = (str(verts32.device), verts32.shape[0], indices.shape[0],
           tuple(id(f) for f in face_tensors))
    entry = _CACHE.get(key)
    if entry is not None and torch.equal(entry.indices, indices) and \
            torch.equal(entry.groups, groups):
        _CACHE.move_to_end(key)
        entry.points.copy_(verts32)
        entry.mesh.refit()
        return entry
    points = verts32.contiguous().clone()
    mesh = wp.Mesh(points=wp.from_torch(points, dtype=wp.vec3),
                   indices=wp.from_torch(indices, dtype=wp.int32),
                   groups=wp.from_torch(groups, dtype=wp.int32))
    pair_he, lone_he = _half_edge_topology(faces, verts32.shape[0])
    entry = _BvhEntry(points, indices, groups, mesh, pair_he, lone_he)
    _CACHE[key] = entry
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry


def clear_cache() -> None:
    """Drop the cached BVHs (they are rebuilt on demand)."""
    with _LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------
# soft edge profile
# --------------------------------------------------------------------------------------


def soft_edge(signed_dist: torch.Tensor, sigma: float) -> torch.Tensor:
    """Coverage from a signed distance (pixels, positive inside) to the outline.

    A logistic ``sigmoid(d / sigma)`` rescaled so that it is exactly 0.5 at ``d = 0`` and
    reaches 0 and 1 at ``d = -+BAND_SIGMAS * sigma`` (clamped beyond): continuous with the
    hard mask outside the band.
    """
    a = 1.0 / (1.0 + math.exp(BAND_SIGMAS))  # sigmoid(-BAND_SIGMAS)
    return ((torch.sigmoid(signed_dist / sigma) - a) / (1.0 - 2.0 * a)).clamp(0.0, 1.0)


def soft_mask(mask: torch.Tensor, size: tuple[int, int], sigma: float,
              unknown: torch.Tensor | None = None) -> torch.Tensor:
    """The soft silhouette this renderer draws for a shape whose hard silhouette is ``mask``.

    The signed distance of every pixel centre to the mask's outline (positive inside; the
    outline runs half-way between an inside and an outside pixel centre) is measured on
    ``mask``'s own pixel grid, scaled to the pixels of an ``(H, W) = size`` image of the same
    view, sampled at that image's pixel centres (bilinear) and passed through
    :func:`soft_edge`. A silhouette loss against this target is stationary when the render
    matches the shape (a BCE against the hard mask is not: it pulls on every outline pixel).

    Args:
        mask: ``(H0, W0)`` bool, or float thresholded at 0.5.
        size: ``(H, W)`` of the rendered images (the same view, resized).
        sigma: the renderer's ``edge_sigma`` in pixels of ``size``.
        unknown: optional ``(H0, W0)`` bool pixels where the shape may or may not be (e.g.
            the hand in front of the object): they do not end the shape, so an occlusion
            boundary is not an outline (inside distances run through them).

    Returns:
        ``(H, W)`` float in ``[0, 1]`` (``mask``'s float dtype, float32 for bool).
    """
    from scipy.ndimage import distance_transform_edt

    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        raise ValueError(f"soft_mask: expected an (H, W) tensor, got "
                         f"{tuple(getattr(mask, 'shape', ())) or type(mask).__name__}")
    dtype = mask.dtype if mask.is_floating_point() else torch.float32
    hard = (mask > 0.5 if mask.is_floating_point() else mask.bool()).cpu().numpy()
    H, W = int(size[0]), int(size[1])
    H0, W0 = hard.shape
    if hard.all() or not hard.any():   # no outline: the hard mask is its own soft mask
        full = torch.full((H0, W0), float(hard.all()), dtype=dtype)
        out = full if (H, W) == (H0, W0) else torch.full((H, W), float(hard.all()), dtype=dtype)
        return out.to(mask.device)
    through = hard
    if unknown is not None:
        if tuple(unknown.shape) != (H0, W0):
            raise ValueError(f"soft_mask: unknown must have the mask's shape {(H0, W0)}, got "
                             f"{tuple(unknown.shape)}")
        unk = (unknown > 0.5 if unknown.is_floating_point() else unknown.bool()).cpu().numpy()
        through = hard | unk
        if through.all():
            through = hard
    inside = distance_transform_edt(through) - 0.5
    outside = distance_transform_edt(~hard) - 0.5
    sd = torch.from_numpy(inside - outside).to(torch.float64)   # pixels of the mask's grid
    if (H, W) != (H0, W0):
        scale = 0.5 * (H / H0 + W / W0)
        sd = torch.nn.functional.interpolate(sd[None, None], size=(H, W), mode="bilinear",
                                             align_corners=False)[0, 0] * scale
    return soft_edge(sd, float(sigma)).to(device=mask.device, dtype=dtype)


# --------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------


def _project(p: torch.Tensor, cam: Camera) -> torch.Tensor:
    return torch.stack([cam.fx * p[..., 0] / p[..., 2] + cam.cx,
                        cam.fy * p[..., 1] / p[..., 2] + cam.cy], -1)


def _outline_segments(verts: torch.Tensor, faces: torch.Tensor, entry: _BvhEntry,
                      group_of_face: torch.Tensor, num_groups: int, cam: Camera,
                      amodal: bool, band_px: float, tri: torch.Tensor,
                      fn: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Candidate outline sub-segments with their outline-membership bits (no gradient).

    Outline (bit) numbering: 0 = union of all meshes; with more than one mesh, 1 + k =
    visible region of group k, and (when amodal) 1 + K + k = group k alone.
    """
    dev = verts.device
    v = verts.detach()
    front = (fn * tri[:, 0]).sum(-1) < 0  # facing the camera at the origin
    pair, lone = entry.pair_he, entry.lone_he
    f0, f1 = pair[:, 0] // 3, pair[:, 1] // 3
    contour = front[f0] != front[f1]
    chosen = torch.where(front[f0], pair[:, 0], pair[:, 1])[contour]
    he = torch.cat([chosen, lone])
    if he.numel() == 0:
        return None
    face = he // 3
    k = he % 3
    ia = faces[face, k]
    ib = faces[face, (k + 1) % 3]
    ic = faces[face, (k + 2) % 3]
    za, zb, zc = v[ia, 2], v[ib, 2], v[ic, 2]
    ok = (za > NEAR_Z) & (zb > NEAR_Z) & (zc > NEAR_Z)
    face, ia, ib, ic, za, zb = face[ok], ia[ok], ib[ok], ic[ok], za[ok], zb[ok]
    if face.numel() == 0:
        return None
    pa, pb, pc = _project(v[ia], cam), _project(v[ib], cam), _project(v[ic], cam)
    ab = pb - pa
    # outward 2D normal: away from the face's third vertex
    nrm = torch.stack([ab[:, 1], -ab[:, 0]], -1)
    flip = ((pc - pa) * nrm).sum(-1) > 0
    nrm = torch.where(flip[:, None], -nrm, nrm)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # clip to the image grown by a margin (Liang-Barsky), parameter s along pa -> pb
    margin = band_px + SUBSEGMENT_PX + 1.0
    lo = torch.tensor([-margin, -margin], dtype=v.dtype, device=dev)
    hi = torch.tensor([cam.width + margin, cam.height + margin], dtype=v.dtype, device=dev)
    s_lo = torch.zeros_like(za)
    s_hi = torch.ones_like(za)
    for ax in range(2):
        d = ab[:, ax]
        safe = torch.where(d.abs() > 1e-12, d, torch.ones_like(d))
        t0 = (lo[ax] - pa[:, ax]) / safe
        t1 = (hi[ax] - pa[:, ax]) / safe
        tmin, tmax = torch.minimum(t0, t1), torch.maximum(t0, t1)
        par = d.abs() <= 1e-12
        inside = (pa[:, ax] >= lo[ax]) & (pa[:, ax] <= hi[ax])
        tmin = torch.where(par, torch.where(inside, -math.inf, math.inf), tmin)
        tmax = torch.where(par, torch.where(inside, math.inf, -math.inf), tmax)
        s_lo = torch.maximum(s_lo, tmin)
        s_hi = torch.minimum(s_hi, tmax)
    ok = s_hi > s_lo
    if not bool(ok.any()):
        return None
    edge_idx = torch.nonzero(ok).squeeze(1)
    length = ab[edge_idx].norm(dim=-1) * (s_hi - s_lo)[edge_idx]
    step = SUBSEGMENT_PX
    nsub = torch.ceil(length / step).clamp_min(1).long()
    total = int(nsub.sum())
    if total > _MAX_SUBSEGMENTS:
        step = step * total / _MAX_SUBSEGMENTS
        nsub = torch.ceil(length / step).clamp_min(1).long()
        log.warning("render: %d outline sub-segments; coarsened to %.3g px each", total, step)
    parent = torch.repeat_interleave(edge_idx, nsub)
    offs = torch.cumsum(nsub, 0) - nsub
    j = torch.arange(parent.numel(), device=dev) - torch.repeat_interleave(offs, nsub)
    ns = torch.repeat_interleave(nsub, nsub).to(v.dtype)
    s0 = s_lo[parent] + (s_hi - s_lo)[parent] * j.to(v.dtype) / ns
    s1 = s_lo[parent] + (s_hi - s_lo)[parent] * (j + 1).to(v.dtype) / ns
    q0 = pa[parent] + s0[:, None] * ab[parent]
    q1 = pa[parent] + s1[:, None] * ab[parent]
    sm = 0.5 * (s0 + s1)
    qm = 0.5 * (q0 + q1)
    zm = 1.0 / ((1.0 - sm) / za[parent] + sm / zb[parent])  # perspective-correct depth
    owner = group_of_face[face[parent]]

    # probes: visibility at the midpoint and "what is just outside", all meshes together
    probe_uv = [qm, qm + _PROBE_OFFSET_PX * nrm[parent]]
    nseg = parent.numel()
    probe_group = [torch.full((2 * nseg,), -1, dtype=torch.int32, device=dev)]
    amodal_sets = amodal and num_groups > 1
    if amodal_sets:  # the same two probes against the segment's own mesh alone
        probe_uv += probe_uv
        probe_group.append(owner.to(torch.int32).repeat(2))
    uv = torch.cat(probe_uv).float().contiguous()
    grp = torch.cat(probe_group).contiguous()
    pf = torch.empty(uv.shape[0], dtype=torch.int32, device=dev)
    pt = torch.empty(uv.shape[0], dtype=torch.float32, device=dev)
    kern = _kernels()
    wp = _warp()
    _launch(kern["cast_points"], uv.shape[0],
            [entry.mesh.id, _wp(uv, wp.vec2), _wp(grp), cam.fx, cam.fy, cam.cx, cam.cy,
             _wp(pf), _wp(pt)], dev)
    pf = pf.long()
    zm32 = zm.float()
    tol = _VIS_REL_TOL * zm32 + 1e-7

    def classify(off: int) -> tuple[torch.Tensor, torch.Tensor]:
        hit_f, hit_t = pf[off:off + nseg], pt[off:off + nseg]
        visible = (hit_f < 0) | (hit_t >= zm32 - tol)
        bf = pf[off + nseg:off + 2 * nseg]
        behind = torch.where(bf >= 0, group_of_face[bf.clamp_min(0)], torch.full_like(bf, -1))
        return visible, behind

    visible, behind = classify(0)
    one = torch.ones((), dtype=torch.int64, device=dev)
    sets = torch.where(visible & (behind < 0), one, 0 * one)  # bit 0: union outline
    if num_groups > 1:
        differ = visible & (behind != owner)
        sets = sets | torch.where(differ, one << (1 + owner), 0 * one)
        sets = sets | torch.where(differ & (behind >= 0), one << (1 + behind.clamp_min(0)),
                                  0 * one)
        if amodal_sets:
            vis_alone, behind_alone = classify(2 * nseg)
            sets = sets | torch.where(vis_alone & (behind_alone < 0),
                                      one << (1 + num_groups + owner), 0 * one)
    keep = sets != 0
    if not bool(keep.any()):
        return None
    return {"a": q0[keep].float(), "b": q1[keep].float(), "mid": qm[keep].float(),
            "sets": sets[keep], "parent": parent[keep].to(torch.int32),
            "ia": ia, "ib": ib}


def _nearest_edges(seg: dict[str, torch.Tensor], num_sets: int, cam: Camera,
                   band_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For every outline and pixel: the parent edge of the nearest sub-segment within the
    band (``-1`` if none). Returns ``edge (S, H*W) int64`` and ``dist (S, H*W) float32``."""
    dev = seg["a"].device
    H, W = cam.height, cam.width
    cell = band_px + 0.5 * SUBSEGMENT_PX + 1e-3
    origin = -(band_px + SUBSEGMENT_PX + 1.0) - cell
    ncx = int(math.ceil((W - 2 * origin) / cell)) + 1
    ncy = int(math.ceil((H - 2 * origin) / cell)) + 1
    g = torch.floor((seg["mid"] - origin) / cell).long()
    gx = g[:, 0].clamp(0, ncx - 1)
    gy = g[:, 1].clamp(0, ncy - 1)
    cid = gy * ncx + gx
    order = torch.argsort(cid)
    counts = torch.bincount(cid, minlength=ncx * ncy)
    cell_start = torch.zeros(ncx * ncy + 1, dtype=torch.int32, device=dev)
    cell_start[1:] = torch.cumsum(counts, 0).to(torch.int32)
    out_edge = torch.full((num_sets, H * W), -1, dtype=torch.int32, device=dev)
    out_dist = torch.full((num_sets, H * W), float(band_px), dtype=torch.float32, device=dev)
    wp = _warp()
    _launch(_kernels()["nearest_outline"], (num_sets, ncx * ncy),
            [_wp(seg["a"], wp.vec2), _wp(seg["b"], wp.vec2), _wp(seg["sets"]),
             _wp(seg["parent"]), _wp(cell_start), _wp(order.to(torch.int32)), ncx, ncy,
             float(origin), float(cell), W, H, float(band_px), _wp(out_edge),
             _wp(out_dist)], dev)
    return out_edge.long(), out_dist


_EMPTY_KEY = 2 ** 63 - 1  # keys stay below 2 ** 62: quantised depth < 2 ** 30


def _raster(entry: _BvhEntry, cam: Camera, per_group: bool, num_groups: int) -> torch.Tensor:
    """Global visible face per pixel (``(1 + K*per_group, H*W)`` int64, -1 empty): row 0
    all meshes, rows ``1 + k`` group ``k`` alone."""
    dev = entry.points.device
    H, W = cam.height, cam.width
    n_img = 1 + (num_groups if per_group else 0)
    zbuf = torch.full((n_img, H * W), _EMPTY_KEY, dtype=torch.int64, device=dev)
    zmax = float(entry.points[:, 2].max()) if entry.points.numel() else 0.0
    if zmax <= NEAR_Z:
        return torch.full((n_img, H * W), -1, dtype=torch.long, device=dev)
    zscale = (2.0 ** 30 - 2.0) / (zmax * (1.0 + 1e-6))
    _launch(_kernels()["raster"], entry.groups.shape[0],
            [_wp(entry.points, _warp().vec3), _wp(entry.indices), _wp(entry.groups),
             int(per_group), cam.fx, cam.fy, cam.cx, cam.cy, W, H, NEAR_Z, zscale,
             _wp(zbuf)], dev)
    return torch.where(zbuf < _EMPTY_KEY, zbuf & 0xFFFFFFFF, -1)


def render_portable(verts: torch.Tensor, faces: torch.Tensor, face_offsets: torch.Tensor,
                    face_tensors: tuple[torch.Tensor, ...], cam: Camera, edge_sigma: float,
                    amodal: bool, tri: torch.Tensor | None = None,
                    fn: torch.Tensor | None = None,
                    visibility: str = "raster") -> dict[str, Any]:
    """Visibility and soft silhouettes of a concatenated scene (see the module docstring).

    Args:
        verts: ``(V, 3)`` camera-frame vertices of all non-empty meshes (metres; may carry
            gradients).
        faces: ``(F, 3)`` int64 global vertex indices.
        face_offsets: ``(K + 1,)`` int64, faces of group ``k`` are
            ``face_offsets[k]:face_offsets[k + 1]``.
        face_tensors: the original per-mesh face tensors (BVH cache key).
        cam: camera at the output size.
        edge_sigma: soft edge scale in pixels.
        amodal: also compute each group's coverage alone.
        tri, fn: optional precomputed ``(F, 3, 3)`` face corners and ``(F, 3)`` unnormalised
            face normals (detached), to share work with the caller.
        visibility: "raster" (z-buffer of the faces' parts in front of ``z = NEAR_Z``,
            default, faster) or "ray" (BVH ray cast per pixel centre, ``t >= 0``); both
            decide coverage exactly at pixel centres and agree except on ties.

    Returns:
        ``{"face": (H*W,) int64 global face or -1, "soft": (S, H*W) soft coverage,
        "num_groups": K}`` with outline order as in :func:`_outline_segments`, and
        ``"amodal_face": (K, H*W)`` when amodal and K > 1.
    """
    H, W = cam.height, cam.width
    dev = verts.device
    K = face_offsets.numel() - 1
    counts = face_offsets[1:] - face_offsets[:-1]
    group_of_face = torch.repeat_interleave(torch.arange(K, device=dev), counts)
    band = BAND_SIGMAS * edge_sigma
    num_sets = 1 if K == 1 else 1 + K + (K if amodal else 0)
    if num_sets > _MAX_SETS:
        raise ValueError(f"render: at most {(_MAX_SETS - 1) // (2 if amodal else 1)} "
                         f"non-empty meshes per call{' with amodal=True' if amodal else ''}, "
                         f"got {K}")
    kern = _kernels()
    if tri is None or fn is None:
        v = verts.detach()
        tri = v.index_select(0, faces.reshape(-1)).reshape(-1, 3, 3)
        fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    with _LOCK:
        entry = _get_bvh(verts.detach().float(), faces, group_of_face, face_tensors)
        per_group = amodal and K > 1
        if visibility == "raster":
            img = _raster(entry, cam, per_group, K)
        elif visibility == "ray":
            groups = [-1] + (list(range(K)) if per_group else [])
            img = torch.empty(len(groups), H * W, dtype=torch.int32, device=dev)
            _launch(kern["cast_image"], (len(groups), H * W),
                    [entry.mesh.id, _wp(torch.tensor(groups, dtype=torch.int32, device=dev)),
                     cam.fx, cam.fy, cam.cx, cam.cy, W, _wp(img)], dev)
            img = img.long()
        else:
            raise ValueError(f"visibility must be 'raster' or 'ray', got {visibility!r}")
        seg = _outline_segments(verts, faces, entry, group_of_face, K, cam, amodal, band,
                                tri, fn)
        if seg is not None:
            near_edge, _ = _nearest_edges(seg, num_sets, cam, band)
    face = img[0]
    hit_group = torch.where(face >= 0, group_of_face[face.clamp_min(0)], -1)
    hard = [face >= 0]
    if K > 1:
        hard += [hit_group == k for k in range(K)]
        if amodal:
            hard += [img[1 + k] >= 0 for k in range(K)]
    hard_t = torch.stack(hard).to(verts.dtype)
    soft = hard_t
    if seg is not None:
        s_idx, p_idx = torch.nonzero(near_edge >= 0, as_tuple=True)
        if s_idx.numel():
            e = near_edge[s_idx, p_idx]
            pa = _project(take(verts, seg["ia"][e]), cam)  # deterministic backward
            pb = _project(take(verts, seg["ib"][e]), cam)
            row = torch.div(p_idx, W, rounding_mode="floor")
            p = torch.stack([(p_idx - row * W).to(verts.dtype) + 0.5,
                             row.to(verts.dtype) + 0.5], -1)
            ab = pb - pa
            h = (((p - pa) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-20)).clamp(0, 1)
            diff = p - (pa + h[:, None] * ab)
            dist = (diff * diff).sum(-1).clamp_min(1e-20).sqrt()
            sign = hard_t[s_idx, p_idx] * 2 - 1
            vals = soft_edge(sign * dist, edge_sigma)
            soft = hard_t.index_put((s_idx, p_idx), vals)
    out: dict[str, Any] = {"face": face, "soft": soft, "num_groups": K}
    if amodal and K > 1:
        out["amodal_face"] = img[1:]
    return out
