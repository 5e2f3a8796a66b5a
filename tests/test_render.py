"""Tests of hoiguide.render: analytic answers, naive references, float64 finite differences."""

import math
import sys

import numpy as np
import pytest
import torch
import trimesh

from hoiguide.render import RenderOutput, available_backends, render
from hoiguide.render import portable
from hoiguide.render.portable import BAND_SIGMAS, soft_edge
from hoiguide.types import Camera, Mesh

F64 = torch.float64


def sphere(sub: int, radius: float, center, dtype=F64) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=sub, radius=radius)
    v = torch.tensor(s.vertices, dtype=dtype) + torch.tensor(center, dtype=dtype)
    return Mesh(v, torch.tensor(s.faces))


def quad(z: float | list, half: float = 1.0, toward_camera: bool = True) -> Mesh:
    """A square in the plane of constant z (or with the given four corner z values)."""
    zs = [z] * 4 if not isinstance(z, list) else z
    v = torch.tensor([[-half, -half, zs[0]], [half, -half, zs[1]], [half, half, zs[2]],
                      [-half, half, zs[3]]], dtype=F64)
    f = torch.tensor([[0, 2, 1], [0, 3, 2]] if toward_camera else [[0, 1, 2], [0, 2, 3]])
    return Mesh(v, f)


def ray_sphere(cam: Camera, c, r: float):
    """Exact first hit of every pixel ray with a sphere: (hit mask, depth, unit normal)."""
    d = cam.pixel_rays(F64)
    c = torch.tensor(c, dtype=F64)
    a = (d * d).sum(-1)
    b = -2 * (d * c).sum(-1)
    cc = (c * c).sum() - r * r
    disc = b * b - 4 * a * cc
    t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
    n = (t[..., None] * d - c) / r
    return disc > 0, t, n


# --------------------------------------------------------------------------------------
# analytic answers
# --------------------------------------------------------------------------------------


def test_fronto_parallel_plane_depth_is_exact():
    cam = Camera(40.0, 45.0, 15.3, 17.1, 32, 36)
    out = render(quad(0.7), cam)
    assert isinstance(out, RenderOutput) and out.backend == "portable"
    assert out.size == (36, 32) and out.depth.shape == (36, 32)
    assert out.depth.dtype == F64 and bool(out.mask.all())
    assert torch.allclose(out.depth, torch.full_like(out.depth, 0.7), rtol=0, atol=1e-9)
    assert torch.allclose(out.disparity, torch.full_like(out.depth, 1 / 0.7), atol=1e-9)
    want = torch.tensor([0.0, 0.0, -1.0], dtype=F64).expand(36, 32, 3)
    assert torch.allclose(out.normals, want, atol=1e-12)
    assert bool((out.mesh_id == 0).all()) and set(out.face_id.unique().tolist()) == {0, 1}
    # soft maps of a plane covering the whole image are exactly one
    assert torch.equal(out.silhouette[0], torch.ones_like(out.depth))
    assert torch.equal(out.coverage, torch.ones_like(out.depth))


def test_tilted_plane_depth_matches_ray_plane_intersection():
    cam = Camera.from_fov(50, 24, 20)
    m = quad([0.6, 0.8, 0.9, 0.7], half=2.0)
    out = render(m, cam)
    v = m.vertices
    n = torch.cross(v[2] - v[0], v[1] - v[0], dim=-1)
    d = cam.pixel_rays(F64)
    want = (n * v[0]).sum() / (d * n).sum(-1)  # ray-plane intersection, z since d_z = 1
    # the quad is not planar: compare on each triangle's own plane
    for fi, tri in enumerate(m.faces):
        p0, p1, p2 = v[tri]
        nf = torch.cross(p1 - p0, p2 - p0, dim=-1)
        want = (nf * p0).sum() / (d * nf).sum(-1)
        sel = out.face_id == fi
        assert sel.sum() > 20
        assert torch.allclose(out.depth[sel], want[sel], rtol=0, atol=1e-9)


def test_sphere_normals_depth_and_area_match_analytic():
    cam = Camera.from_fov(40, 96, 96)
    c, r = [0.0, 0.0, 0.5], 0.1
    out = render(sphere(4, r, c), cam)
    hit, t, n = ray_sphere(cam, c, r)
    both = hit & out.mask
    ang = torch.rad2deg(torch.acos((n * out.normals).sum(-1).clamp(-1, 1)))[both]
    # 5120-face icosphere, smooth normals: measured mean 0.13 deg, max 1.3 deg
    assert float(ang.mean()) < 0.3 and float(ang.max()) < 3.0
    assert bool((out.normals[both][:, 2] < 0).all())  # facing the camera
    # polyhedral sphere is inscribed: depth a little behind the true sphere, never in front
    dz = (out.depth - t)[both]
    assert float(dz.min()) > -1e-9 and float(dz.max()) < 5e-3
    assert float(dz.median()) < 5e-4
    # centred sphere: the image of its silhouette is a disc of radius f tan(asin(r / D))
    area = math.pi * (cam.fx * math.tan(math.asin(r / 0.5))) ** 2
    assert abs(float(out.mask.sum()) / area - 1) < 0.02
    assert abs(float(out.silhouette.sum()) / area - 1) < 0.02
    assert abs(float(out.coverage.sum()) / area - 1) < 0.02
    flat = render(sphere(4, r, c), cam, smooth_normals=False)
    ang_flat = torch.rad2deg(torch.acos((n * flat.normals).sum(-1).clamp(-1, 1)))[both]
    assert float(ang_flat.mean()) > float(ang.mean())  # smooth normals do better


def test_soft_silhouette_matches_convex_hull_reference():
    # the outline of a convex polyhedron in front of the camera is the convex hull of its
    # projected vertices: compute the expected soft coverage from that, brute force
    from scipy.spatial import ConvexHull

    cam = Camera.from_fov(45, 40, 40)
    m = sphere(1, 0.1, [0.013, -0.021, 0.45])
    sigma = 1.3
    out = render(m, cam, edge_sigma=sigma)
    uv = cam.project(m.vertices.numpy())
    hull = ConvexHull(uv)
    ring = uv[hull.vertices]
    a, b = ring, np.roll(ring, -1, axis=0)
    yy, xx = np.mgrid[0:40, 0:40] + 0.5
    p = np.stack([xx, yy], -1).reshape(-1, 1, 2)
    ab = b - a
    h = np.clip(((p - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    dist = np.linalg.norm(p - (a + h[..., None] * ab), axis=-1).min(1)
    inside = (hull.equations[:, :2] @ p.reshape(-1, 2).T + hull.equations[:, 2:]).max(0) < 0
    assert np.array_equal(inside, out.mask.numpy().reshape(-1))
    want = soft_edge(torch.tensor(np.where(inside, dist, -dist)), sigma)
    got = out.silhouette[0].reshape(-1)
    assert torch.allclose(got, want, atol=1e-9)
    # soft and hard agree: > 0.5 exactly inside the hard mask; ramp within the band only
    assert torch.equal(got > 0.5, out.mask.reshape(-1))
    ramp = (got > 0) & (got < 1)
    assert float(torch.tensor(dist)[ramp].max()) <= BAND_SIGMAS * sigma + 1e-6
    assert torch.equal(out.coverage, out.silhouette[0])


def test_soft_edge_profile():
    d = torch.linspace(-10, 10, 2001, dtype=F64)
    g = soft_edge(d, 1.0)
    assert float(soft_edge(torch.zeros((), dtype=F64), 1.0)) == pytest.approx(0.5, abs=1e-15)
    assert torch.allclose(g + soft_edge(-d, 1.0), torch.ones_like(g), atol=1e-12)  # odd
    assert bool((g[d <= -BAND_SIGMAS] == 0).all()) and bool((g[d >= BAND_SIGMAS] == 1).all())
    assert bool((g.diff() >= 0).all())


# --------------------------------------------------------------------------------------
# occlusion, amodal, empty and degenerate input
# --------------------------------------------------------------------------------------


def test_occlusion_between_two_meshes():
    cam = Camera.from_fov(40, 64, 64)
    far = sphere(3, 0.15, [0.0, 0.0, 0.7])
    near = sphere(3, 0.04, [0.005, 0.0, 0.4])  # projects well inside the far sphere
    out = render([far, near], cam, amodal=True)
    solo_near = render(near, cam)
    solo_far = render(far, cam)
    # the nearer one is visible where it covers, with its own depth and ids
    assert torch.equal(out.mesh_id == 1, solo_near.mask)
    assert torch.equal(out.mask, solo_far.mask)
    assert torch.equal(out.face_id[solo_near.mask], solo_near.face_id[solo_near.mask])
    assert torch.allclose(out.depth[solo_near.mask], solo_near.depth[solo_near.mask])
    assert bool((out.mesh_id[~solo_near.mask & out.mask] == 0).all())
    # the far one's visible silhouette is cut out, its amodal coverage is not
    core = solo_near.silhouette[0] == 1
    assert core.sum() > 50
    assert bool((out.silhouette[0][core] == 0).all())
    assert torch.allclose(out.amodal[0], solo_far.silhouette[0])
    assert torch.allclose(out.amodal[1], solo_near.silhouette[0])
    assert torch.allclose(out.silhouette[1], solo_near.silhouette[0])
    # visible silhouettes share the occlusion boundary: they sum to the union coverage
    assert torch.allclose(out.silhouette.sum(0), out.coverage, atol=1e-9)
    assert torch.allclose(out.coverage, solo_far.silhouette[0])


def test_empty_meshes_render_as_nothing():
    cam = Camera.from_fov(40, 32, 32)
    s = sphere(2, 0.1, [0.0, 0.0, 0.5])
    out = render([Mesh.empty(F64), s], cam, amodal=True)
    ref = render(s, cam)
    assert out.silhouette.shape == (2, 32, 32) and out.amodal.shape == (2, 32, 32)
    assert bool((out.silhouette[0] == 0).all()) and bool((out.amodal[0] == 0).all())
    assert torch.equal(out.silhouette[1], ref.silhouette[0])
    assert torch.equal(out.mesh_id, torch.where(ref.mask, 1, -1))
    assert torch.equal(out.depth, ref.depth)
    nothing = render(Mesh.empty(), cam)
    assert not bool(nothing.mask.any()) and bool((nothing.mesh_id == -1).all())
    assert nothing.silhouette.shape == (1, 32, 32) and float(nothing.coverage.abs().sum()) == 0
    with pytest.raises(ValueError, match="at least one mesh"):
        render([], cam)


def test_mesh_behind_camera_renders_empty():
    cam = Camera.from_fov(40, 32, 32)
    out = render(sphere(2, 0.1, [0.0, 0.0, -0.5]), cam, amodal=True)
    assert not bool(out.mask.any())
    assert float(out.silhouette.abs().sum()) == 0 and float(out.coverage.abs().sum()) == 0
    assert float(out.depth.abs().sum()) == 0 and bool((out.face_id == -1).all())


def test_triangle_crossing_the_camera_plane():
    # a floor-like quad from z = -0.5 (behind the camera) to z = 1.5, seen from above
    cam = Camera.from_fov(60, 40, 40)
    v = torch.tensor([[-1, 0.2, -0.5], [1, 0.2, -0.5], [1, 0.2, 1.5], [-1, 0.2, 1.5]], dtype=F64)
    m = Mesh(v, torch.tensor([[0, 2, 1], [0, 3, 2]]))
    t = torch.zeros(3, dtype=F64, requires_grad=True)
    out = render(m.with_vertices(m.vertices + t), cam)
    for x in (out.depth, out.disparity, out.normals, out.silhouette, out.coverage):
        assert bool(torch.isfinite(x).all())
    # the plane y = 0.2 is seen in the lower half of the image, at the exact ray depth
    d = cam.pixel_rays(F64)
    want_mask = (d[..., 1] > 0) & (0.2 / d[..., 1].clamp_min(1e-12) < 1.5)
    assert torch.equal(out.mask, want_mask)
    want = 0.2 / d[..., 1][out.mask]
    assert torch.allclose(out.depth[out.mask], want, atol=1e-9)
    assert bool((out.silhouette >= 0).all() and (out.silhouette <= 1).all())
    (out.silhouette.sum() + out.depth.sum()).backward()
    assert bool(torch.isfinite(t.grad).all())


def test_nan_vertices_are_rejected():
    cam = Camera.from_fov(40, 16, 16)
    s = sphere(1, 0.1, [0.0, 0.0, 0.5])
    s.vertices[3, 1] = float("nan")  # corrupted after construction
    with pytest.raises(ValueError, match="NaN"):
        render(s, cam)


def test_bad_arguments():
    cam = Camera.from_fov(40, 16, 16)
    s = sphere(1, 0.1, [0.0, 0.0, 0.5])
    with pytest.raises(TypeError, match="Mesh"):
        render("mesh", cam)
    with pytest.raises(TypeError, match=r"meshes\[1\]"):
        render([s, 3], cam)
    with pytest.raises(TypeError, match="Camera"):
        render(s, None)
    with pytest.raises(ValueError, match="positive size"):
        render(s, cam, size=(0, 4))
    with pytest.raises(TypeError, match="size"):
        render(s, cam, size="big")
    with pytest.raises(ValueError, match="edge_sigma"):
        render(s, cam, edge_sigma=0.0)
    with pytest.raises(ValueError, match="backend"):
        render(s, cam, backend="opengl")


def test_size_rescales_the_camera_and_dtypes_promote():
    cam = Camera.from_fov(40, 64, 48)
    s32 = sphere(2, 0.1, [0.0, 0.0, 0.5], dtype=torch.float32)
    out = render(s32, cam, size=(24, 32))
    assert out.size == (24, 32) and out.camera == cam.resized(32, 24)
    assert out.depth.dtype == torch.float32 and out.silhouette.shape == (1, 24, 32)
    assert render(s32, cam, size=20).size == (20, 20)
    mixed = render([s32, sphere(1, 0.01, [0.0, 0.0, 0.3])], cam)
    assert mixed.depth.dtype == F64 and mixed.silhouette.dtype == F64


def test_raster_visibility_matches_ray_casting():
    # the default z-buffer and a BVH ray cast per pixel centre decide the same faces
    cam = Camera.from_fov(50, 48, 40)
    meshes = [sphere(2, 0.1, [0.02, 0.0, 0.5]), sphere(2, 0.06, [-0.05, 0.03, 0.42]),
              Mesh(torch.tensor([[-0.3, 0.1, -0.2], [0.3, 0.12, 0.9], [0.1, 0.3, 0.6]],
                                dtype=F64), torch.tensor([[0, 1, 2]]))]
    from hoiguide.render.renderer import _build_scene

    sc = _build_scene(meshes)
    args = (sc.verts, sc.faces, sc.face_offsets, sc.face_tensors, cam, 1.0, True)
    ras = portable.render_portable(*args, visibility="raster")
    ray = portable.render_portable(*args, visibility="ray")
    assert torch.equal(ras["face"] >= 0, ray["face"] >= 0)
    assert float((ras["face"] == ray["face"]).double().mean()) > 0.99
    assert torch.equal(ras["amodal_face"] >= 0, ray["amodal_face"] >= 0)


def test_cached_bvh_is_refit_correctly():
    cam = Camera.from_fov(40, 40, 40)
    s = sphere(2, 0.1, [0.0, 0.0, 0.5])
    render(s, cam)
    moved = s.with_vertices(s.vertices * 1.2 + torch.tensor([0.03, -0.02, 0.1], dtype=F64))
    warm = render(moved, cam)  # same faces tensor: BVH refit, not rebuilt
    portable.clear_cache()
    cold = render(moved, cam)
    for name in ("depth", "normals", "face_id", "silhouette", "coverage"):
        assert torch.equal(getattr(warm, name), getattr(cold, name)), name
    s.faces[:, [1, 2]] = s.faces[:, [2, 1]].clone()  # in-place change of the faces
    flipped = render(s, cam)
    portable.clear_cache()
    assert torch.equal(flipped.normals, render(s, cam).normals)
    assert float(flipped.normals[flipped.mask][:, 2].min()) > 0  # inward now


def test_amodal_single_mesh_and_defaults():
    cam = Camera.from_fov(40, 24, 24)
    out = render(sphere(2, 0.1, [0.0, 0.0, 0.5]), cam, amodal=True)
    assert torch.equal(out.amodal, out.silhouette)
    assert render(sphere(2, 0.1, [0.0, 0.0, 0.5]), cam).amodal is None


# --------------------------------------------------------------------------------------
# gradients: float64 central differences
# --------------------------------------------------------------------------------------


def _fd_check(loss_fn, base: Mesh, cam: Camera, eps: float = 1e-6, **kw):
    """Compare autograd and central differences of loss(render(mesh(theta))) for
    theta = (tx, ty, tz, log s, a): translation in metres, log-scale about the centre and
    the amplitude of a fixed random per-vertex deformation (so flat normals change too)."""
    c = base.vertices.mean(0)
    D = 0.01 * torch.randn(base.vertices.shape, dtype=F64,
                           generator=torch.Generator().manual_seed(7))

    def mesh_at(theta):
        v = c + torch.exp(theta[3]) * (base.vertices - c) + theta[:3] + theta[4] * D
        return base.with_vertices(v)

    n = 5
    theta = torch.zeros(n, dtype=F64, requires_grad=True)
    out = render(mesh_at(theta), cam, **kw)
    loss_fn(out).backward()
    fd = torch.zeros(n, dtype=F64)
    for i in range(n):
        e = torch.zeros(n, dtype=F64)
        e[i] = eps
        op, om = render(mesh_at(e), cam, **kw), render(mesh_at(-e), cam, **kw)
        # the visibility (which triangle) must not flip between the two, else FD is moot
        assert torch.equal(op.face_id, out.face_id) and torch.equal(om.face_id, out.face_id)
        fd[i] = (loss_fn(op) - loss_fn(om)) / (2 * eps)
    return theta.grad, fd


def _scene():
    return sphere(2, 0.1, [0.011, -0.007, 0.5]), Camera.from_fov(40, 40, 40)


def test_depth_gradient_matches_finite_differences():
    m, cam = _scene()
    w = torch.rand(40, 40, dtype=F64, generator=torch.Generator().manual_seed(0))
    g, fd = _fd_check(lambda o: (o.depth * w).sum() + (o.disparity * w).sum(), m, cam)
    assert g.abs().max() > 1
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-6), (g, fd)


def test_normal_gradient_matches_finite_differences():
    m, cam = _scene()
    w = torch.randn(40, 40, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    for smooth in (True, False):
        g, fd = _fd_check(lambda o: (o.normals * w).sum(), m, cam, smooth_normals=smooth)
        assert g.abs().max() > 1
        assert torch.allclose(g, fd, rtol=1e-5, atol=1e-6), (smooth, g, fd)


def test_silhouette_gradient_matches_finite_differences():
    m, cam = _scene()
    w = torch.rand(40, 40, dtype=F64, generator=torch.Generator().manual_seed(2))
    g, fd = _fd_check(lambda o: (o.silhouette[0] * w).sum() + (o.coverage * w ** 2).sum(),
                      m, cam, edge_sigma=1.5)
    assert g.abs().max() > 1
    assert torch.allclose(g, fd, rtol=1e-5, atol=1e-6), (g, fd)


def test_occluded_silhouette_gradient_matches_finite_differences():
    # the far mesh's visible silhouette depends on the near mesh's outline
    cam = Camera.from_fov(40, 40, 40)
    far = sphere(2, 0.1, [0.0, 0.0, 0.7])
    near = sphere(2, 0.04, [0.012, 0.005, 0.45])
    w = torch.rand(40, 40, dtype=F64, generator=torch.Generator().manual_seed(3))
    t = torch.zeros(3, dtype=F64, requires_grad=True)
    out = render([far, near.with_vertices(near.vertices + t)], cam)
    (out.silhouette[0] * w).sum().backward()
    fd = torch.zeros(3, dtype=F64)
    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3, dtype=F64)
        e[i] = eps
        lp = (render([far, near.with_vertices(near.vertices + e)], cam).silhouette[0] * w).sum()
        lm = (render([far, near.with_vertices(near.vertices - e)], cam).silhouette[0] * w).sum()
        fd[i] = (lp - lm) / (2 * eps)
    assert t.grad.abs().max() > 1  # moving the occluder changes the far mesh's silhouette
    assert torch.allclose(t.grad, fd, rtol=1e-5, atol=1e-6), (t.grad, fd)


def test_silhouette_loss_pulls_the_right_way():
    cam = Camera.from_fov(40, 48, 48)
    base = sphere(3, 0.08, [0.0, 0.0, 0.5])
    target_x = render(base.with_vertices(base.vertices + torch.tensor([0.01, 0, 0], dtype=F64)),
                      cam).mask.to(F64)  # ~1.3 px to the right
    t = torch.zeros(3, dtype=F64, requires_grad=True)
    out = render(base.with_vertices(base.vertices + t), cam)
    ((out.silhouette[0] - target_x) ** 2).sum().backward()
    assert float(t.grad[0]) < 0  # descending moves the sphere to +x
    assert abs(float(t.grad[1])) < 0.05 * abs(float(t.grad[0]))
    # and a larger target pulls the scale up
    log_s = torch.zeros((), dtype=F64, requires_grad=True)
    c = base.vertices.mean(0)
    big = render(base.with_vertices(c + 1.15 * (base.vertices - c)), cam).mask.to(F64)
    out = render(base.with_vertices(c + torch.exp(log_s) * (base.vertices - c)), cam)
    ((out.silhouette[0] - big) ** 2).sum().backward()
    assert float(log_s.grad) < 0


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------


def test_backend_selection_and_missing_nvdiffrast(monkeypatch):
    cam = Camera.from_fov(40, 16, 16)
    s = sphere(1, 0.1, [0.0, 0.0, 0.5])
    assert "portable" in available_backends()
    assert render(s, cam, backend="auto").backend == "portable"  # CPU tensors
    assert render(s, cam, backend="portable").backend == "portable"
    monkeypatch.setitem(sys.modules, "nvdiffrast", None)  # importing it now fails
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", None)
    assert "nvdiffrast" not in available_backends()
    with pytest.raises(ImportError, match="pip install .*github.com/NVlabs/nvdiffrast"):
        render(s, cam, backend="nvdiffrast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvdiffrast_matches_portable():
    pytest.importorskip("nvdiffrast.torch")
    cam = Camera.from_fov(40, 128, 128)
    meshes = [sphere(4, 0.1, [0.0, 0.0, 0.7]).to("cuda"),
              sphere(3, 0.04, [0.02, 0.01, 0.45]).to("cuda")]
    a = render(meshes, cam, backend="nvdiffrast", amodal=True)
    b = render(meshes, cam, backend="portable", amodal=True)
    assert a.backend == "nvdiffrast" and b.backend == "portable"
    both = a.mask & b.mask
    assert float((a.mask != b.mask).double().mean()) < 0.01
    assert float((a.depth - b.depth)[both].abs().max()) < 1e-4
    cos = (a.normals * b.normals).sum(-1)[both].clamp(-1, 1)
    assert float(torch.rad2deg(torch.acos(cos)).mean()) < 0.5
    for x, y in ((a.silhouette, b.silhouette), (a.amodal, b.amodal)):
        ax, ay = x.sum((1, 2)), y.sum((1, 2))
        assert torch.allclose(ax, ay, rtol=0.01), (ax, ay)
    t = torch.zeros(3, device="cuda", requires_grad=True)
    out = render([meshes[0], meshes[1].with_vertices(meshes[1].vertices + t)], cam,
                 backend="nvdiffrast")
    out.silhouette[1].sum().backward()
    assert bool(torch.isfinite(t.grad).all()) and float(t.grad.abs().sum()) > 0
