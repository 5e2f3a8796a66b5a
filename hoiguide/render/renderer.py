"""Differentiable rendering of meshes into depth, disparity, normals and soft silhouettes.

Frames and units: meshes are given in the image-aligned (OpenCV camera) frame, +x right,
+y down, +z forward, metres, camera centre at the origin; pixels as in
:mod:`hoiguide.types` (the centre of pixel ``(col, row)`` is ``(col + 0.5, row + 0.5)``).

How gradients flow:

* ``depth``, ``disparity`` and ``normals`` are exact functions of the vertex positions of the
  visible triangle at each pixel: the visibility search (which triangle) has no gradient;
  the hit itself is recomputed in torch (ray-plane intersection, barycentric interpolation
  of vertex normals), so gradients inside the silhouette are exact.
* ``silhouette``, ``coverage`` and ``amodal`` are soft near the outline: with the portable
  backend, ``g(+-d / edge_sigma)`` where ``d`` is the distance in pixels from the pixel
  centre to the nearest projected outline edge (recomputed in torch) and ``g`` a logistic
  that is exactly 0.5 on the outline and reaches 0 / 1 at ``BAND_SIGMAS * edge_sigma``
  pixels (see :mod:`hoiguide.render.portable`). Moving a mesh sideways or scaling it
  therefore gets a gradient from the pixels along its outline.

Edge cases (documented behaviour, tested):

* An **empty mesh** (no faces) renders as nothing: it keeps its index (its ``silhouette``
  and ``amodal`` planes are zero and ``mesh_id`` never names it). All meshes empty -> an
  empty render. An empty *list* of meshes is an error.
* A mesh **entirely behind the camera** (``z <= 0``) renders as nothing.
* A triangle **crossing z = 0** is clipped at the near plane ``z = NEAR_Z`` (1e-4 m): its
  part in front is rendered correctly, but its outline edges with a vertex at
  ``z <= NEAR_Z`` contribute no soft edge (their projection would be garbage).
* **NaN / inf vertices** are rejected with a ``ValueError``.
* **Degenerate geometry** (zero-area, collinear or sliver faces, duplicate vertices, faces
  seen edge-on, vertices whose face normals cancel) never produces NaN or inf, in values or
  gradients, in float32 as in float64: a pixel whose visible face is degenerate (``|n| <=
  64 eps L^2`` with ``L`` its longest edge, or ``|cos(n, ray)| <= 64 eps``) takes its depth
  and normal from the nearest point of the face's edges *without gradient*; a vertex normal
  or interpolated normal that cancels to zero renders as a zero normal (no gradient). Every
  well-formed face keeps its exact gradient.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from hoiguide.types import Camera, Mesh

log = logging.getLogger(__name__)

__all__ = ["RenderOutput", "render", "available_backends", "DEFAULT_EDGE_SIGMA"]

DEFAULT_EDGE_SIGMA = 1.0
"""Default soft-edge scale in pixels. About one pixel: the soft outline is then about as
wide as a pixel-box antialiased edge (so the soft silhouette stays a faithful,
area-preserving version of the hard mask: for a disc of radius r pixels the soft area
exceeds the hard area by ~pi^3 sigma^2 / 3 ~ 10 px^2), while still giving gradient to the
pixels within ``BAND_SIGMAS * sigma = 4`` pixels of the outline, enough for sub-pixel and
few-pixel motion. Widen it (e.g. 2-4 px) for a larger basin of attraction."""

_BACKENDS = ("auto", "portable", "nvdiffrast")


@dataclass(frozen=True)
class RenderOutput:
    """What :func:`render` returns. All images are torch tensors on the meshes' device.

    Attributes:
        depth: ``(H, W)`` z of the visible surface in metres (along +z, not along the ray);
            0 where empty. Meshes' dtype.
        disparity: ``(H, W)`` ``1 / depth`` in 1/metres; 0 where empty.
        normals: ``(H, W, 3)`` unit normals in the camera frame (a surface facing the camera
            has negative z for a correctly wound mesh; the mesh's own orientation is kept,
            so the inside of an open mesh shows normals pointing away); zero where empty.
        mask: ``(H, W)`` bool, hard union of all meshes (pixel centre covered).
        mesh_id: ``(H, W)`` int64, index (in the input list) of the visible mesh, -1 empty.
        face_id: ``(H, W)`` int64, face index within that mesh, -1 empty.
        silhouette: ``(M, H, W)`` soft visible coverage of each mesh in ``[0, 1]``: accounts
            for occlusion by the other meshes; differentiable at the outline.
        coverage: ``(H, W)`` soft coverage of the union.
        amodal: ``(M, H, W)`` soft coverage of each mesh rendered alone (``amodal=True``),
            else ``None``.
        camera: the camera at the rendered size.
        size: ``(H, W)``.
        backend: the backend that rendered ("portable" or "nvdiffrast").
    """

    depth: torch.Tensor
    disparity: torch.Tensor
    normals: torch.Tensor
    mask: torch.Tensor
    mesh_id: torch.Tensor
    face_id: torch.Tensor
    silhouette: torch.Tensor
    coverage: torch.Tensor
    amodal: torch.Tensor | None
    camera: Camera
    size: tuple[int, int]
    backend: str


def _nvdiffrast_importable() -> bool:
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build
        return False
    return True


def available_backends() -> list[str]:
    """Names of the backends usable here: ``"portable"`` always; ``"nvdiffrast"`` when
    ``nvdiffrast.torch`` imports and CUDA is available."""
    names = ["portable"]
    if torch.cuda.is_available() and _nvdiffrast_importable():
        names.append("nvdiffrast")
    return names


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------


@dataclass
class _Scene:
    meshes: list[Mesh]
    verts: torch.Tensor  # (V, 3) all non-empty meshes, common dtype, differentiable
    faces: torch.Tensor  # (F, 3) int64 global indices
    face_offsets: torch.Tensor  # (K + 1,) int64
    group_index: list[int]  # group k -> index in the input list
    face_tensors: tuple[torch.Tensor, ...]


def _as_mesh_list(meshes: Mesh | Sequence[Mesh]) -> list[Mesh]:
    if isinstance(meshes, Mesh):
        return [meshes]
    if isinstance(meshes, (str, bytes)) or not isinstance(meshes, Sequence):
        raise TypeError(f"render: expected a Mesh or a sequence of Mesh, got "
                        f"{type(meshes).__name__}")
    out = list(meshes)
    if not out:
        raise ValueError("render: expected at least one mesh, got an empty sequence")
    for i, m in enumerate(out):
        if not isinstance(m, Mesh):
            raise TypeError(f"render: expected meshes[{i}] to be a Mesh, got "
                            f"{type(m).__name__}")
    return out


def _resolve_size(camera: Camera, size: int | Sequence[int] | None) -> Camera:
    if not isinstance(camera, Camera):
        raise TypeError(f"render: expected camera to be a hoiguide.types.Camera, got "
                        f"{type(camera).__name__}")
    if size is None:
        return camera
    if isinstance(size, bool):
        raise TypeError(f"render: expected size None, an int or (H, W), got {size!r}")
    if isinstance(size, int):
        H = W = size
    else:
        try:
            H, W = (int(s) for s in size)
        except (TypeError, ValueError):
            raise TypeError(f"render: expected size None, an int or (H, W), got {size!r}") \
                from None
    if H <= 0 or W <= 0:
        raise ValueError(f"render: expected a positive size, got (H, W) = ({H}, {W})")
    if (H, W) == (camera.height, camera.width):
        return camera
    return camera.resized(W, H)


def _build_scene(meshes: list[Mesh]) -> _Scene:
    device = meshes[0].device
    dtype = meshes[0].dtype
    for i, m in enumerate(meshes):
        if m.device != device:
            raise ValueError(f"render: all meshes must be on one device, got meshes[0] on "
                             f"{device} and meshes[{i}] on {m.device}")
        dtype = torch.promote_types(dtype, m.dtype)
        if m.num_vertices and not bool(torch.isfinite(m.vertices.detach()).all()):
            bad = int((~torch.isfinite(m.vertices.detach()).all(-1)).sum())
            raise ValueError(f"render: meshes[{i}] has {bad} NaN or inf vertices")
    verts, faces, offsets, group_index, ftensors = [], [], [0], [], []
    voff = 0
    for i, m in enumerate(meshes):
        if m.is_empty:
            continue
        verts.append(m.vertices.to(dtype))
        faces.append(m.faces + voff)
        voff += m.num_vertices
        offsets.append(offsets[-1] + m.num_faces)
        group_index.append(i)
        ftensors.append(m.faces)
    if not verts:
        return _Scene(meshes, torch.zeros(0, 3, dtype=dtype, device=device),
                      torch.zeros(0, 3, dtype=torch.long, device=device),
                      torch.zeros(1, dtype=torch.long, device=device), [], ())
    return _Scene(meshes, torch.cat(verts) if len(verts) > 1 else verts[0],
                  torch.cat(faces) if len(faces) > 1 else faces[0],
                  torch.tensor(offsets, dtype=torch.long, device=device), group_index,
                  tuple(ftensors))


# --------------------------------------------------------------------------------------
# shading (shared by the backends): exact depth / normals from the visible triangle
# --------------------------------------------------------------------------------------


def _face_geometry(scene: _Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tri (F, 3, 3), fn (F, 3))``: the corners and unnormalised normals ``(v1 - v0) x
    (v2 - v0)`` of every face (differentiable)."""
    F = scene.faces.shape[0]
    tri = scene.verts.index_select(0, scene.faces.reshape(-1)).reshape(F, 3, 3)
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    return tri, fn


_NOISE_ULPS = 64.0
"""Degeneracy threshold in machine epsilons of the vertices' dtype (see :func:`_shade`)."""


def _noise(dtype: torch.dtype) -> float:
    return _NOISE_ULPS * float(torch.finfo(dtype).eps)


def _tiny(dtype: torch.dtype) -> float:
    """Smallest magnitude whose reciprocal square is still finite in ``dtype``."""
    return float(torch.finfo(dtype).tiny) ** 0.5


def _safe_normalize(x: torch.Tensor, ok: torch.Tensor | None = None) -> torch.Tensor:
    """Unit vectors along the last axis; rows where ``ok`` is False or ``x`` is (nearly)
    zero give 0 with zero gradient.

    Each row is first divided by its detached largest ``|component|``: the direction is
    scale-invariant, so value and gradient are unchanged, but neither the norm nor the
    backward pass (``1 / |x|^3``) can under- or overflow for tiny vectors. The unused branch
    of the final ``where`` is a harmless constant (the double-``where`` trick), so no
    ``0 * inf`` reaches the backward pass even where the upstream gradient is zero."""
    m = x.detach().abs().amax(-1, keepdim=True)
    good = m > _tiny(x.dtype)
    if ok is not None:
        good = good & ok.reshape(m.shape)
    u = x / torch.where(good, m, torch.ones_like(m))
    u = torch.where(good, u, torch.ones_like(u))
    n = u / u.norm(dim=-1, keepdim=True)
    return torch.where(good, n, torch.zeros_like(n))


def _vertex_normals_at(num_vertices: int, faces: torch.Tensor, fn: torch.Tensor,
                       corners: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals of the vertices ``corners`` (any shape of indices),
    from the unnormalised normals ``fn`` of all ``faces``.

    A vertex whose sum of face normals cancels to within :data:`_NOISE_ULPS` epsilons of the
    sum of their lengths (a vertex used only by zero-area faces, a fold where opposite faces
    meet) or is isolated has no meaningful normal: 0, no gradient."""
    vn = fn.new_zeros(num_vertices, 3)
    mag = fn.new_zeros(num_vertices)
    fl = fn.detach().norm(dim=-1)
    for k in range(3):
        vn = vn.index_add(0, faces[:, k], fn)
        mag.index_add_(0, faces[:, k], fl)
    idx = corners.reshape(-1)
    v = vn.index_select(0, idx)
    ok = v.detach().norm(dim=-1) > _noise(fn.dtype) * mag.index_select(0, idx)
    return _safe_normalize(v, ok).reshape(*corners.shape, 3)


def _fallback_hits(tri: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """Hit of a pixel ray on a degenerate visible face, no gradient.

    For faces whose plane cannot be intersected reliably (zero-area or sliver faces, faces
    seen edge-on) the hit is taken on the face's outline instead: the point of its three
    edges closest to the ray line ``t d`` (in front of the camera). Returns ``depth (B,)``,
    the edge ``k (B,)`` (corners ``k`` and ``(k + 1) % 3``) and the fraction ``s (B,)``
    along it."""
    with torch.no_grad():
        dh = d / d.norm(dim=-1, keepdim=True)
        a = tri
        e = tri.roll(-1, dims=1) - a                                   # (B, 3, 3)

        def perp(x: torch.Tensor) -> torch.Tensor:
            return x - (x * dh[:, None]).sum(-1, keepdim=True) * dh[:, None]

        pa, pe = perp(a), perp(e)
        den = (pe * pe).sum(-1)
        along = den <= _noise(tri.dtype) * (e * e).sum(-1)  # edge parallel to the ray
        s = (-(pa * pe).sum(-1) / torch.where(along, torch.ones_like(den), den)).clamp(0, 1)
        s = torch.where(along, (e[..., 2] < 0).to(s.dtype), s)        # its nearer end
        q = a + s[..., None] * e
        dist = (perp(q) ** 2).sum(-1)
        dist = torch.where(q[..., 2] > 0, dist, torch.full_like(dist, math.inf))
        k = dist.argmin(-1)
        rows = torch.arange(tri.shape[0], device=tri.device)
        depth = q[rows, k, 2]
        front = torch.isfinite(dist[rows, k])
        depth = torch.where(front, depth, tri[..., 2].amax(-1))
        return depth, k, s[rows, k]


def _shade(scene: _Scene, cam: Camera, face: torch.Tensor, tri: torch.Tensor,
           fn: torch.Tensor, smooth_normals: bool) -> dict[str, torch.Tensor]:
    """Depth, disparity, normals, ids from the global face index per pixel ``(H*W,)``.

    The hit is recomputed from the visible triangle: along the pixel ray
    ``d = ((u - cx) / fx, (v - cy) / fy, 1)`` the plane ``n . x = n . v0`` is met at
    ``t = (n . v0) / (n . d)`` (``t`` is the depth z since ``d_z = 1``); the barycentric
    coordinates of ``t d`` interpolate the vertex normals. Per-face terms are computed once
    per visible face (with the face scaled by its detached longest edge, which changes no
    value or gradient but keeps every intermediate well inside the dtype's range) and
    gathered per pixel.

    Degenerate hits get values but no gradient (the exact one is undefined or enormous):
    a face whose ``|n| <= 64 eps * (longest edge)^2`` (zero-area, collinear or duplicate
    corners) or a pixel ray within ``|cos| <= 64 eps`` of the face's plane (seen edge-on)
    takes depth and normal from the nearest point of the face's edges
    (:func:`_fallback_hits`; normal: interpolated vertex normals along that edge, or the face
    normal for an edge-on face with flat shading). Vertex normals that cancel to zero are 0
    (see :func:`_vertex_normals_at`), and so is a smooth normal interpolated to zero.
    """
    H, W = cam.height, cam.width
    dtype, dev = scene.verts.dtype, scene.verts.device
    noise = _noise(dtype)
    hit = face >= 0
    pix = torch.nonzero(hit).squeeze(1)
    f = face.index_select(0, pix)
    uf, inv = torch.unique(f, return_inverse=True)                   # visible faces
    tv = tri.index_select(0, uf)                                      # (U, 3, 3)
    v0 = tv[:, 0]
    with torch.no_grad():
        td = tv.detach()
        lmax = (td - td.roll(-1, dims=1)).norm(dim=-1).amax(-1, keepdim=True)  # (U, 1)
        lok = lmax > _tiny(dtype)
        lsafe = torch.where(lok, lmax, torch.ones_like(lmax))
    e1, e2 = (tv[:, 1] - v0) / lsafe, (tv[:, 2] - v0) / lsafe         # dimensionless
    nf = torch.cross(e1, e2, dim=-1)                                  # n / L^2, |nf| <= 1
    with torch.no_grad():
        nf_len = nf.detach().norm(dim=-1)
        shape_ok = lok.squeeze(1) & (nf_len > noise)
    c = (nf * v0).sum(-1, keepdim=True)                               # plane offset n . v0
    cols = [nf, c]
    corners = scene.faces.index_select(0, uf)                         # (U, 3)
    vc = None
    if smooth_normals:
        # barycentrics of x on the face plane: b1 = (x - v0) . g1, b2 = (x - v0) . g2
        nn = (nf * nf).sum(-1, keepdim=True)
        nn = torch.where(shape_ok[:, None], nn, torch.ones_like(nn)) * lsafe
        g1 = torch.cross(e2, nf, dim=-1) / nn
        g2 = torch.cross(nf, e1, dim=-1) / nn
        vc = _vertex_normals_at(scene.verts.shape[0], scene.faces, fn, corners)
        cols += [g1, (g1 * v0).sum(-1, keepdim=True), g2, (g2 * v0).sum(-1, keepdim=True),
                 vc[:, 0], vc[:, 1] - vc[:, 0], vc[:, 2] - vc[:, 0]]
    else:
        cols.append(_safe_normalize(nf, shape_ok))
    # gather all per-face terms in one op; unbind (not indexing) keeps the backward cheap
    per_face = torch.cat(cols, -1).t().contiguous()
    g = per_face.index_select(1, inv).unbind(0)
    row = torch.div(pix, W, rounding_mode="floor")
    col = pix - row * W
    dx = ((col.to(dtype) + 0.5) - cam.cx) / cam.fx
    dy = ((row.to(dtype) + 0.5) - cam.cy) / cam.fy

    def dot_d(k: int) -> torch.Tensor:  # (g[k:k+3] . d) with d = (dx, dy, 1)
        return g[k] * dx + g[k + 1] * dy + g[k + 2]

    nd = dot_d(0)
    with torch.no_grad():
        dlen = torch.sqrt(dx * dx + dy * dy + 1)
        ok = shape_ok.index_select(0, inv) & \
            (nd.detach().abs() > noise * nf_len.index_select(0, inv) * dlen)
    t = g[3] / torch.where(ok, nd, torch.ones_like(nd))
    if smooth_normals:
        b1 = t * dot_d(4) - g[7]
        b2 = t * dot_d(8) - g[11]
        nrm = torch.stack([g[12 + k] + b1 * g[15 + k] + b2 * g[18 + k] for k in range(3)], -1)
        nrm = _safe_normalize(nrm, nrm.detach().norm(dim=-1) > noise)
    else:
        nrm = torch.stack(g[4:7], -1)
    bad = torch.nonzero(~ok).squeeze(1)
    if bad.numel():
        # degenerate hits: values from the nearest point of the face's edges, no gradient
        ub = inv.index_select(0, bad)
        d_bad = torch.stack([dx[bad], dy[bad], torch.ones_like(dx[bad])], -1)
        t_bad, k, s = _fallback_hits(td.index_select(0, ub), d_bad)
        with torch.no_grad():
            if vc is None:
                vc = _vertex_normals_at(scene.verts.shape[0], scene.faces, fn.detach(),
                                        corners)
            vcb = vc.detach().index_select(0, ub)
            rows = torch.arange(bad.numel(), device=dev)
            n_bad = (1 - s)[:, None] * vcb[rows, k] + s[:, None] * vcb[rows, (k + 1) % 3]
            n_bad = _safe_normalize(n_bad, n_bad.norm(dim=-1) > noise)
            if not smooth_normals:  # an edge-on face still has a well-defined face normal
                n_bad = torch.where(shape_ok.index_select(0, ub)[:, None],
                                    nrm.detach().index_select(0, bad), n_bad)
            t_fb = torch.zeros_like(t).index_put((bad,), t_bad.to(dtype))
            n_fb = torch.zeros_like(nrm).index_put((bad,), n_bad.to(dtype))
        t = torch.where(ok, t, t_fb)
        nrm = torch.where(ok[:, None], nrm, n_fb)
        log.debug("render: %d pixels on degenerate faces shaded without gradient",
                  int(bad.numel()))
    disp = 1.0 / torch.where(t.detach() > 0, t, torch.ones_like(t))
    depth = torch.zeros(H * W, dtype=dtype, device=dev).index_put((pix,), t)
    disparity = torch.zeros(H * W, dtype=dtype, device=dev).index_put((pix,), disp)
    normals = torch.zeros(H * W, 3, dtype=dtype, device=dev).index_put((pix,), nrm)
    offsets = scene.face_offsets
    if len(scene.group_index) == 1:
        mesh_id = torch.where(hit, scene.group_index[0], -1)
        face_id = face
    else:
        group = torch.searchsorted(offsets[1:], face.clamp_min(0), right=True)
        gmap = torch.tensor(scene.group_index, dtype=torch.long, device=dev)
        group = group.clamp_max(gmap.numel() - 1)
        mesh_id = torch.where(hit, gmap[group], -1)
        face_id = torch.where(hit, face - offsets[group], -1)
    return {"depth": depth.reshape(H, W), "disparity": disparity.reshape(H, W),
            "normals": normals.reshape(H, W, 3), "mask": hit.reshape(H, W),
            "mesh_id": mesh_id.reshape(H, W), "face_id": face_id.reshape(H, W)}


def _empty_output(scene: _Scene, cam: Camera, amodal: bool, backend: str) -> RenderOutput:
    H, W = cam.height, cam.width
    M = len(scene.meshes)
    dtype, dev = scene.verts.dtype, scene.verts.device
    z = torch.zeros(H, W, dtype=dtype, device=dev)
    neg = torch.full((H, W), -1, dtype=torch.long, device=dev)
    return RenderOutput(z, z.clone(), torch.zeros(H, W, 3, dtype=dtype, device=dev),
                        torch.zeros(H, W, dtype=torch.bool, device=dev), neg, neg.clone(),
                        torch.zeros(M, H, W, dtype=dtype, device=dev), z.clone(),
                        torch.zeros(M, H, W, dtype=dtype, device=dev) if amodal else None,
                        cam, (H, W), backend)


# --------------------------------------------------------------------------------------
# public entry
# --------------------------------------------------------------------------------------


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"render: expected backend in {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nvdiffrast" if device.type == "cuda" and _nvdiffrast_importable() \
            else "portable"
    if backend == "nvdiffrast":
        from hoiguide.render.nvdiffrast_backend import require_nvdiffrast
        require_nvdiffrast()
        if device.type != "cuda":
            raise ValueError(f"render: the nvdiffrast backend needs meshes on a CUDA device, "
                             f"got {device}; use backend='portable' on the CPU")
    return backend


def render(meshes: Mesh | Sequence[Mesh], camera: Camera,
           size: int | Sequence[int] | None = None, *, backend: str = "auto",
           edge_sigma: float = DEFAULT_EDGE_SIGMA, amodal: bool = False,
           smooth_normals: bool = True) -> RenderOutput:
    """Render meshes into depth, disparity, normals, ids and soft silhouettes.

    Args:
        meshes: one :class:`~hoiguide.types.Mesh` or a sequence (e.g. ``[hand, object]``) in
            the image-aligned camera frame (OpenCV: +x right, +y down, +z forward, metres).
            They occlude each other. Vertices may carry gradients; the output dtype is the
            promoted dtype of all meshes' vertices. Empty meshes render as nothing.
        camera: pinhole camera (intrinsics in pixels).
        size: ``None`` (the camera's size), an int (square) or ``(H, W)``; the camera is
            rescaled with ``camera.resized(W, H)``.
        backend: ``"auto"`` (nvdiffrast when the meshes are on CUDA and it imports, else
            portable), ``"portable"`` (warp ray casting, CPU or CUDA) or ``"nvdiffrast"``
            (user-installed CUDA package).
        edge_sigma: soft-edge scale in pixels (portable backend; see
            :data:`DEFAULT_EDGE_SIGMA`). nvdiffrast's analytic antialiasing has a fixed
            ~1 px transition and ignores it.
        amodal: also return each mesh's soft coverage as if it were alone.
        smooth_normals: interpolate area-weighted vertex normals (True) or use flat face
            normals (False).

    Returns:
        A :class:`RenderOutput`.
    """
    mesh_list = _as_mesh_list(meshes)
    cam = _resolve_size(camera, size)
    if not (isinstance(edge_sigma, (int, float)) and math.isfinite(edge_sigma)
            and edge_sigma > 0):
        raise ValueError(f"render: expected edge_sigma > 0 (pixels), got {edge_sigma!r}")
    scene = _build_scene(mesh_list)
    name = _pick_backend(backend, scene.verts.device)
    if not scene.group_index:
        return _empty_output(scene, cam, amodal, name)
    H, W = cam.height, cam.width
    M = len(mesh_list)
    K = len(scene.group_index)
    tri, fn = _face_geometry(scene)
    if name == "portable":
        from hoiguide.render.portable import render_portable
        res = render_portable(scene.verts, scene.faces, scene.face_offsets,
                              scene.face_tensors, cam, float(edge_sigma), bool(amodal),
                              tri=tri.detach(), fn=fn.detach())
    else:
        from hoiguide.render.nvdiffrast_backend import render_nvdiffrast
        res = render_nvdiffrast(scene.verts, scene.faces, scene.face_offsets, cam,
                                bool(amodal))
    shaded = _shade(scene, cam, res["face"], tri, fn, smooth_normals)
    soft = res["soft"]  # (S, H*W): [union] or [union, visible_0..K-1, (amodal_0..K-1)]
    dtype, dev = scene.verts.dtype, scene.verts.device
    soft = soft.to(dtype)
    coverage = soft[0]
    idx = torch.tensor(scene.group_index, dtype=torch.long, device=dev)
    vis = soft[:1] if K == 1 else soft[1:1 + K]
    silhouette = torch.zeros(M, H * W, dtype=dtype, device=dev).index_put((idx,), vis)
    amodal_out = None
    if amodal:
        am = soft[:1] if K == 1 else soft[1 + K:1 + 2 * K]
        amodal_out = torch.zeros(M, H * W, dtype=dtype, device=dev).index_put((idx,), am)
        amodal_out = amodal_out.reshape(M, H, W)
    return RenderOutput(depth=shaded["depth"], disparity=shaded["disparity"],
                        normals=shaded["normals"], mask=shaded["mask"],
                        mesh_id=shaded["mesh_id"], face_id=shaded["face_id"],
                        silhouette=silhouette.reshape(M, H, W),
                        coverage=coverage.reshape(H, W), amodal=amodal_out, camera=cam,
                        size=(H, W), backend=name)
