"""Tests of hoiguide.geometry.mesh_query against analytic SDFs, a brute-force numpy reference
and float64 finite differences."""


import numpy as np
import pytest
import torch
import trimesh

from hoiguide.geometry.mesh_query import closest_points, inside, signed_distance, winding_number
from hoiguide.types import Mesh


def sphere_mesh(radius=1.0, subdivisions=3, center=(0.0, 0.0, 0.0), dtype=torch.float64):
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(torch.tensor(s.vertices + np.asarray(center), dtype=dtype),
                torch.tensor(s.faces, dtype=torch.long))


def open_sphere(radius=1.0, subdivisions=3, zcut=0.8):
    """A sphere with the cap of faces whose centroid has z > zcut * radius removed."""
    m = sphere_mesh(radius, subdivisions)
    cent = m.vertices[m.faces].mean(1)
    keep = cent[:, 2] <= zcut * radius
    return Mesh(m.vertices, m.faces[keep]), Mesh(m.vertices, m.faces[~keep])


def random_points(n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * scale


# ----------------------------------------------------------------------------- references


def seg_dist_np(p, a, b):
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    q = a + t[:, None] * ab
    return np.linalg.norm(p - q, axis=1), q


def point_triangle_np(p, a, b, c):
    """Distance and closest point from points p (N,3) to one triangle: plane projection when it
    falls inside the triangle, else the nearest of the three edges (a different algorithm from
    the library's Voronoi-region test)."""
    n = np.cross(b - a, c - a)
    n = n / np.linalg.norm(n)
    h = (p - a) @ n
    q = p - h[:, None] * n
    # barycentric signs via sub-triangle orientation
    s0 = np.cross(b - a, q - a) @ n
    s1 = np.cross(c - b, q - b) @ n
    s2 = np.cross(a - c, q - c) @ n
    ins = (s0 >= 0) & (s1 >= 0) & (s2 >= 0)
    best_d = np.where(ins, np.abs(h), np.inf)
    best_q = np.where(ins[:, None], q, np.nan)
    for u, v in ((a, b), (b, c), (c, a)):
        d, qq = seg_dist_np(p, u, v)
        better = d < best_d
        best_d = np.where(better, d, best_d)
        best_q = np.where(better[:, None], qq, best_q)
    return best_d, best_q


def brute_force_np(p, V, F):
    D = np.stack([point_triangle_np(p, *V[f])[0] for f in F], 1)  # (N, F)
    return D.min(1), D


def box_sdf(p, half):
    q = np.abs(p) - half
    outside = np.linalg.norm(np.maximum(q, 0), axis=1)
    inside_ = np.minimum(q.max(1), 0)
    return outside + inside_


# ----------------------------------------------------------------------------- analytic SDFs


def test_sphere_sdf_matches_analytic_within_tessellation():
    r = 0.05
    m = sphere_mesh(r, subdivisions=3)
    # Hausdorff distance between the inscribed polyhedron and the sphere: r minus the smallest
    # distance from the centre to a face plane
    tri = m.vertices[m.faces]
    n = torch.nn.functional.normalize(torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0],
                                                  dim=-1), dim=-1)
    sag = r - float((n * tri[:, 0]).sum(-1).min())
    assert 0 < sag < 0.01 * r
    p = random_points(3000, 2 * r, seed=1)
    d = signed_distance(p, m)
    assert d.dtype == torch.float64 and d.shape == (3000,)
    ref = p.norm(dim=-1) - r
    err = (d - ref).abs().max().item()
    assert err <= sag + 1e-9
    assert err > 0.1 * sag  # the tessellation error is actually seen (the test is not vacuous)
    assert bool(((d < 0) == (ref < -sag)).logical_or((ref > -sag) & (ref < 0)).all())


def test_box_sdf_exact_inside_and_outside():
    half = np.array([0.03, 0.02, 0.05])
    b = trimesh.creation.box(extents=2 * half)
    m = Mesh(torch.tensor(b.vertices), torch.tensor(b.faces))
    p = random_points(4000, 0.08, seed=2)
    ref = box_sdf(p.numpy(), half)
    for sign in ("winding", "normal"):
        d = signed_distance(p, m, sign=sign).numpy()
        # the closest face is chosen in float32 by warp, the distance recomputed in float64
        np.testing.assert_allclose(d, ref, atol=2e-7, rtol=0)
    du = signed_distance(p, m, sign="none").numpy()
    np.testing.assert_allclose(du, np.abs(ref), atol=2e-7, rtol=0)
    assert (ref < 0).sum() > 100  # some points really are inside


# ----------------------------------------------------------------------------- brute force


def test_closest_points_match_brute_force():
    g = torch.Generator().manual_seed(3)
    m0 = sphere_mesh(1.0, subdivisions=1)
    # an irregular, non-convex closed mesh: push vertices in and out radially
    V = m0.vertices * (1 + 0.3 * torch.rand(m0.num_vertices, 1, generator=g, dtype=torch.float64))
    m = Mesh(V, m0.faces)
    p = random_points(500, 2.0, seed=4)
    dist, cp, face = closest_points(p, m)
    Vn, Fn = m.numpy()
    ref, D = brute_force_np(p.numpy(), Vn, Fn)
    np.testing.assert_allclose(dist.numpy(), ref, atol=1e-6, rtol=0)
    # the reported closest point is at the reported distance and lies on the reported face
    np.testing.assert_allclose((p - cp).norm(dim=-1).numpy(), dist.numpy(), atol=1e-12)
    fi = face.numpy()
    on_face = np.array([point_triangle_np(cp[i:i + 1].numpy(), *Vn[Fn[fi[i]]])[0][0]
                        for i in range(len(fi))])
    assert on_face.max() < 1e-12
    np.testing.assert_allclose(D[np.arange(len(fi)), fi], ref, atol=1e-6, rtol=0)


def test_numpy_input_float32_mesh_and_empty_query():
    m = sphere_mesh(1.0, 2, dtype=torch.float32)
    p = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float64)
    d = signed_distance(p, m)
    assert d.dtype == torch.float64  # promoted with the float64 points
    assert d[0].item() == pytest.approx(1.0, abs=0.02) and d[1].item() < -0.9
    d32 = signed_distance(torch.tensor(p, dtype=torch.float32), m)
    assert d32.dtype == torch.float32
    empty = signed_distance(torch.zeros(0, 3), m)
    assert empty.shape == (0,)
    dist, cp, f = closest_points(torch.zeros(0, 3), m)
    assert dist.shape == (0,) and cp.shape == (0, 3) and f.shape == (0,)


# ----------------------------------------------------------------------------- gradients


def test_signed_distance_gradcheck_points_and_vertices():
    g = torch.Generator().manual_seed(5)
    m0 = sphere_mesh(1.0, subdivisions=1)
    V = (m0.vertices * (1 + 0.2 * torch.rand(m0.num_vertices, 1, generator=g,
                                             dtype=torch.float64))).requires_grad_(True)
    F = m0.faces
    # points outside (1.4..2) and inside (0.3..0.6) along random directions
    dirs = torch.nn.functional.normalize(torch.randn(24, 3, generator=g, dtype=torch.float64),
                                         dim=-1)
    rad = torch.cat([1.4 + 0.6 * torch.rand(12, generator=g, dtype=torch.float64),
                     0.3 + 0.3 * torch.rand(12, generator=g, dtype=torch.float64)])
    p = (dirs * rad[:, None]).requires_grad_(True)

    def f(pts, verts):
        return signed_distance(pts, Mesh(verts, F))

    d = f(p, V)
    assert (d[:12] > 0).all() and (d[12:] < 0).all()
    assert torch.autograd.gradcheck(f, (p, V), eps=1e-6, atol=1e-6, rtol=1e-4)
    # and the unsigned distance from closest_points
    assert torch.autograd.gradcheck(lambda a, b: closest_points(a, Mesh(b, F))[0], (p, V),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradient_wrt_points_is_unit_normal_for_box():
    half = np.array([0.5, 0.5, 0.5])
    b = trimesh.creation.box(extents=2 * half)
    m = Mesh(torch.tensor(b.vertices), torch.tensor(b.faces))
    p = torch.tensor([[0.2, 0.1, 0.9], [0.0, 0.1, 0.3]], dtype=torch.float64,
                     requires_grad=True)
    d = signed_distance(p, m)
    d.sum().backward()
    # outside above the +z face: grad +z; inside nearest the +z face (0.2 away): grad +z too
    torch.testing.assert_close(p.grad, torch.tensor([[0, 0, 1.0], [0, 0, 1.0]],
                                                    dtype=torch.float64))
    torch.testing.assert_close(d.detach(), torch.tensor([0.4, -0.2], dtype=torch.float64))


# ----------------------------------------------------------------------------- inside / winding


def test_winding_number_cube_face_is_one_sixth_and_closed_is_one():
    b = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    m = Mesh(torch.tensor(b.vertices), torch.tensor(b.faces))
    c = torch.zeros(1, 3, dtype=torch.float64)
    assert winding_number(c, m).item() == pytest.approx(1.0, abs=1e-12)
    # the two triangles of one face of a unit cube subtend 1/6 of the sphere from the centre
    n = m.face_normals()
    one_face = Mesh(m.vertices, m.faces[n[:, 2] > 0.5])
    assert one_face.num_faces == 2
    assert winding_number(c, one_face).item() == pytest.approx(1 / 6, abs=1e-12)
    far = torch.tensor([[3.0, 0.2, -1.0]], dtype=torch.float64)
    assert winding_number(far, m).item() == pytest.approx(0.0, abs=1e-12)


def test_inside_open_mesh_sphere_with_cap_removed():
    m_open, cap = open_sphere(1.0, subdivisions=3, zcut=0.8)
    assert cap.num_faces > 10 and m_open.num_faces > 1000
    g = torch.Generator().manual_seed(6)
    dirs = torch.nn.functional.normalize(torch.randn(400, 3, generator=g, dtype=torch.float64),
                                         dim=-1)
    deep = dirs * (0.7 * torch.rand(400, 1, generator=g, dtype=torch.float64))
    far = dirs * (1.3 + torch.rand(400, 1, generator=g, dtype=torch.float64))
    assert bool(inside(deep, m_open).all())
    assert not bool(inside(far, m_open).any())
    # additivity of the exact winding number: open part + removed cap = closed sphere = 1
    w_open = winding_number(deep, m_open)
    w_cap = winding_number(deep, cap)
    torch.testing.assert_close(w_open + w_cap, torch.ones_like(w_open), atol=1e-10, rtol=0)
    assert float(w_open.min()) > 0.5 and float(w_open.max()) < 1.0
    # inside() agrees with the exact winding number away from the 0.5 level set
    q = random_points(2000, 1.5, seed=7)
    w = winding_number(q, m_open)
    sure = (w - 0.5).abs() > 0.05
    assert bool((inside(q, m_open)[sure] == (w[sure] >= 0.5)).all())
    # signed distance of deep points is negative (the winding sign works on the open mesh)
    assert bool((signed_distance(deep, m_open) < 0).all())


def test_open_cylinder_hand_like():
    # a tube closed at one end, open at the other (like a hand open at the wrist)
    tube = trimesh.creation.cylinder(radius=0.01, height=0.08, sections=24)
    V = torch.tensor(tube.vertices)
    F = torch.tensor(tube.faces)
    cent = V[F].mean(1)
    nrm = Mesh(V, F).face_normals()
    keep = ~((nrm[:, 2] < -0.99) & (cent[:, 2] < -0.039))  # drop the bottom (z = -4 cm) disc
    m = Mesh(V, F[keep])
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.005, 0.03], [0.0, 0.0, -0.03],
                        [0.02, 0.0, 0.0], [0.0, 0.0, 0.06]], dtype=torch.float64)
    ins = inside(pts, m)
    assert ins.tolist() == [True, True, True, False, False]
    d = signed_distance(pts, m)
    assert d[0].item() == pytest.approx(-0.01, abs=1e-3)
    assert d[3].item() == pytest.approx(0.01, abs=1e-3)


# ----------------------------------------------------------------------------- cache & errors


def test_bvh_cache_follows_in_place_vertex_changes():
    m = sphere_mesh(1.0, 2)
    p = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    d1 = signed_distance(p, m).item()
    d1b = signed_distance(p, m).item()
    assert d1 == d1b
    with torch.no_grad():
        m.vertices.mul_(2.0)
    d2 = signed_distance(p, m).item()
    assert d2 == pytest.approx(d1 - 1.0, abs=1e-9)


def test_errors_are_clear():
    m = sphere_mesh(1.0, 1)
    with pytest.raises(ValueError, match="signed_distance.*non-empty mesh"):
        signed_distance(torch.zeros(3, 3), Mesh.empty())
    with pytest.raises(ValueError, match="inside.*non-empty mesh"):
        inside(torch.zeros(3, 3), Mesh.empty())
    with pytest.raises(ValueError, match=r"expected points of shape \(N, 3\), got \(4, 2\)"):
        closest_points(torch.zeros(4, 2), m)
    with pytest.raises(ValueError, match="NaN"):
        winding_number(torch.tensor([[0.0, float("nan"), 0.0]]), m)
    with pytest.raises(ValueError, match="expected sign in"):
        signed_distance(torch.zeros(1, 3), m, sign="parity")
    with pytest.raises(TypeError, match="expected a hoiguide Mesh"):
        inside(torch.zeros(1, 3), "mesh")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    m = sphere_mesh(1.0, 3)
    p = random_points(1000, 2.0, seed=8)
    d_cpu = signed_distance(p, m)
    d_gpu = signed_distance(p.cuda(), m.to("cuda"))
    torch.testing.assert_close(d_gpu.cpu(), d_cpu, atol=1e-6, rtol=0)
    assert torch.equal(inside(p.cuda(), m.to("cuda")).cpu(), inside(p, m))
    torch.testing.assert_close(winding_number(p.cuda(), m.to("cuda")).cpu(),
                               winding_number(p, m), atol=1e-9, rtol=0)
