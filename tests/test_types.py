"""Tests of hoiguide.types (Camera, Similarity, SimilarityParams, Mesh) and hoiguide.rotations."""

import math

import numpy as np
import pytest
import torch

from hoiguide.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_to_matrix,
    rotation_6d_to_matrix,
    rotation_angle,
)
from hoiguide.types import Camera, Mesh, Similarity, SimilarityParams


def random_rotations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return quaternion_to_matrix(q)


# ----------------------------------------------------------------------------- rotations


def test_quaternion_matrix_roundtrip_and_orthonormal():
    R = random_rotations(200)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R @ R.transpose(-1, -2), eye.expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(200, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12)


def test_matrix_to_quaternion_near_180_degrees():
    # rotations by ~pi make the trace -1: the naive w-based formula divides by ~0
    axes = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    R = axis_angle_to_matrix(axes * (math.pi - 1e-9))
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-9)


def test_axis_angle_rodrigues_against_naive():
    aa = torch.tensor([0.2, -0.7, 1.1], dtype=torch.float64)
    th = aa.norm()
    k = aa / th
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    naive = torch.eye(3, dtype=torch.float64) + torch.sin(th) * K + (1 - torch.cos(th)) * K @ K
    assert torch.allclose(axis_angle_to_matrix(aa), naive, atol=1e-14)
    assert torch.allclose(matrix_to_axis_angle(naive), aa, atol=1e-12)
    assert torch.allclose(rotation_angle(naive), th, atol=1e-12)


def test_axis_angle_smooth_at_zero():
    aa = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    R = axis_angle_to_matrix(aa)
    assert torch.allclose(R, torch.eye(3, dtype=torch.float64))
    # derivative of R at 0 along e_z is the generator [[0,-1,0],[1,0,0],[0,0,0]]
    (g,) = torch.autograd.grad(R[1, 0], aa)
    assert torch.allclose(g, torch.tensor([0, 0, 1.0], dtype=torch.float64))


def test_6d_roundtrip_and_gradcheck():
    R = random_rotations(10, seed=1)
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R, atol=1e-12)
    d6 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (d6,))
    q = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q,))


def test_rotation_shape_errors():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        quaternion_to_matrix(torch.zeros(3))
    with pytest.raises(TypeError):
        axis_angle_to_matrix(np.zeros(3))


# ----------------------------------------------------------------------------- camera


def test_camera_project_unproject_roundtrip_and_pixel_centres():
    cam = Camera(500.0, 480.0, 320.0, 240.0, 640, 480)
    pts = np.array([[0.1, -0.05, 0.8], [0.0, 0.0, 2.0], [-0.3, 0.2, 1.5]])
    uv = cam.project(pts)
    assert np.allclose(uv[1], [320.0, 240.0])  # optical axis -> principal point
    assert np.allclose(uv[0], [500 * 0.1 / 0.8 + 320, 480 * -0.05 / 0.8 + 240])
    assert np.allclose(cam.unproject(uv, pts[:, 2]), pts)
    # pixel_rays pass through pixel centres (+0.5)
    rays = cam.pixel_rays(dtype=torch.float64)
    assert rays.shape == (480, 640, 3)
    uv00 = cam.project(rays[0, 0].numpy()[None])[0]
    assert np.allclose(uv00, [0.5, 0.5])


def test_camera_project_torch_is_differentiable_and_behind_is_nan():
    cam = Camera.from_fov(60, 64, 64)
    p = torch.tensor([[0.1, 0.2, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    uv = cam.project(p)
    assert torch.isnan(uv[1]).all()  # behind the camera: no mirrored pixel
    (g,) = torch.autograd.grad(uv[0, 0], p)
    assert torch.allclose(g[0], torch.tensor([cam.fx / 1.0, 0, -cam.fx * 0.1], dtype=torch.float64))


def test_camera_resized_and_cropped_keep_projection_consistent():
    cam = Camera(600, 600, 300, 200, 600, 400)
    p = np.array([[0.05, 0.02, 0.7]])
    uv = cam.project(p)[0]
    small = cam.resized(300, 200)
    assert np.allclose(small.project(p)[0], uv / 2)
    crop = cam.cropped(100, 50, 200, 200, 512, 512)
    assert np.allclose(crop.project(p)[0], (uv - [100, 50]) * 512 / 200)
    assert Camera.from_K(cam.K, 600, 400) == cam
    assert Camera.from_dict(cam.to_dict()) == cam


@pytest.mark.parametrize("kwargs, msg", [
    (dict(fx=0.0), "focal lengths must be positive"),
    (dict(fy=-5.0), "focal lengths must be positive"),
    (dict(width=0), "width must be a positive integer"),
    (dict(height=10.5), "height must be a positive integer"),
    (dict(cx=float("nan")), "cx must be finite"),
])
def test_camera_rejects_bad_parameters(kwargs, msg):
    args = dict(fx=100.0, fy=100.0, cx=50.0, cy=50.0, width=100, height=100)
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        Camera(**args)


def test_camera_from_K_rejects_skew_and_bad_shape():
    K = np.array([[100, 1.0, 50], [0, 100, 50], [0, 0, 1]])
    with pytest.raises(ValueError, match="expected"):
        Camera.from_K(K, 100, 100)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        Camera.from_K(np.eye(4), 100, 100)


# ----------------------------------------------------------------------------- similarity


def test_similarity_compose_inverse_matrix():
    R1, R2 = random_rotations(2, seed=3)
    A = Similarity(torch.tensor(1.7, dtype=torch.float64), R1, torch.tensor([0.1, -0.2, 0.3]))
    B = Similarity(torch.tensor(0.6, dtype=torch.float64), R2, torch.tensor([0.0, 0.5, -0.1]))
    p = np.random.default_rng(0).normal(size=(20, 3))
    assert np.allclose(A.compose(B).apply(p), A.apply(B.apply(p)))
    assert np.allclose((A @ A.inverse()).apply(p), p)
    M = A.matrix().numpy()
    ph = np.concatenate([p, np.ones((20, 1))], 1)
    assert np.allclose((ph @ M.T)[:, :3], A.apply(p))
    back = Similarity.from_matrix(A.matrix())
    assert np.allclose(back.apply(p), A.apply(p))
    assert np.allclose(Similarity.from_dict(A.to_dict()).apply(p), A.apply(p))


def test_similarity_about_centre_matches_reference_formula():
    R = random_rotations(1, seed=4)[0]
    c = torch.tensor([0.3, 0.1, 0.5], dtype=torch.float64)
    t = torch.tensor([0.01, 0.02, -0.03], dtype=torch.float64)
    S = Similarity.about(c, 1.3, R, t)
    x = torch.randn(10, 3, dtype=torch.float64)
    expected = 1.3 * (x - c) @ R.T + c + t
    assert torch.allclose(S.apply(x), expected)
    assert torch.allclose(S.apply(c[None])[0], c + t)  # the centre only translates


def test_similarity_rejects_bad_values():
    with pytest.raises(ValueError, match="scale must be positive"):
        Similarity(torch.tensor(0.0), torch.eye(3), torch.zeros(3))
    with pytest.raises(ValueError, match="rotation must be"):
        Similarity(torch.tensor(1.0), torch.eye(4), torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        Similarity(torch.tensor(1.0), torch.eye(3), torch.tensor([0.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match="positive determinant"):
        Similarity.from_matrix(np.diag([-1.0, 1, 1, 1]))


@pytest.mark.parametrize("repr_", ["quaternion", "6d"])
def test_similarity_params_reproduces_init_and_gradients(repr_):
    R = random_rotations(1, seed=5)[0]
    init = Similarity(torch.tensor(0.8, dtype=torch.float64), R,
                      torch.tensor([0.2, 0.0, 0.4], dtype=torch.float64))
    center = [0.05, -0.02, 0.6]
    P = SimilarityParams(center=center, init=init, rotation_repr=repr_, dtype=torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(P(x), init.apply(x), atol=1e-12)
    assert torch.allclose(P.similarity().apply(x), init.apply(x), atol=1e-12)
    assert set(P.param_groups()) == {"scale", "rotation", "translation"}
    # d/d(translation) of sum(P(x)) is the number of points along each axis
    P(x).sum().backward()
    assert torch.allclose(P.translation.grad, torch.full((3,), 7.0, dtype=torch.float64))
    assert P.log_scale.grad is not None and P.rotation.grad is not None


def test_similarity_params_rotate_about_centre():
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    P = SimilarityParams(center=c, dtype=torch.float64)
    with torch.no_grad():
        P.log_scale.fill_(math.log(2.0))
    # the centre is a fixed point of scale and rotation
    assert torch.allclose(P(c[None])[0], c)


# ----------------------------------------------------------------------------- mesh


def tetrahedron():
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return Mesh(v, f)


def test_mesh_normals_point_outward_and_areas():
    m = tetrahedron()
    n = m.face_normals()
    centroid = m.vertices.mean(0)
    face_centres = m.vertices[m.faces].mean(1)
    assert ((n * (face_centres - centroid)).sum(-1) > 0).all()
    assert torch.allclose(m.face_areas().sum(), torch.tensor(1.5 + math.sqrt(3) / 2,
                                                            dtype=torch.float64))
    assert m.vertex_normals().shape == (4, 3)
    assert torch.allclose(m.bbox_diagonal(), torch.tensor(math.sqrt(3), dtype=torch.float64))


def test_mesh_zero_area_face_gives_zero_normal_not_nan():
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=torch.float32)
    m = Mesh(v, [[0, 1, 2]])
    assert torch.equal(m.face_normals(), torch.zeros(1, 3))
    assert torch.isfinite(m.vertex_normals()).all()


@pytest.mark.parametrize("suffix", [".glb", ".ply", ".obj"])
def test_mesh_export_load_roundtrip(tmp_path, suffix):
    m = tetrahedron()
    m = Mesh(m.vertices, m.faces, torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0.0]]))
    path = m.export(tmp_path / "sub" / f"tet{suffix}")
    back = Mesh.load(path)
    assert back.num_vertices == 4 and back.num_faces == 4
    # same geometry up to vertex order: compare sorted vertex sets and signed volume
    assert np.allclose(np.sort(back.numpy()[0], 0), np.sort(m.numpy()[0], 0), atol=1e-6)
    tri = back.vertices.double()[back.faces]
    vol = (torch.cross(tri[:, 0], tri[:, 1], dim=-1) * tri[:, 2]).sum() / 6
    assert abs(float(vol) - 1 / 6) < 1e-6  # winding (outward normals) survives the round trip


def test_mesh_bad_input_errors():
    with pytest.raises(ValueError, match="NaN or inf"):
        Mesh(torch.tensor([[0, 0, float("nan")], [1, 0, 0], [0, 1, 0]]), [[0, 1, 2]])
    with pytest.raises(ValueError, match="face indices"):
        Mesh(torch.zeros(3, 3), [[0, 1, 3]])
    with pytest.raises(ValueError, match=r"vertices must be \(V, 3\)"):
        Mesh(torch.zeros(3, 2), [[0, 1, 2]])
    with pytest.raises(ValueError, match="unsupported format"):
        tetrahedron().export("/tmp/x.fbx")
    with pytest.raises(FileNotFoundError):
        Mesh.load("/nonexistent/mesh.ply")


def test_empty_mesh_is_detectable_and_guarded():
    e = Mesh.empty()
    assert e.is_empty and e.num_vertices == 0 and e.num_faces == 0
    with pytest.raises(ValueError, match="needs a non-empty mesh"):
        e.bounds()
    assert Mesh(np.zeros((0, 3)), np.zeros((0, 3))).is_empty


def test_mesh_transform_concatenate_and_trimesh():
    m = tetrahedron()
    S = Similarity.about(torch.zeros(3, dtype=torch.float64), 2.0)
    assert torch.allclose(m.transformed(S).vertices, 2 * m.vertices)
    both = Mesh.concatenate([m, m.transformed(S)])
    assert both.num_vertices == 8 and int(both.faces.max()) == 7
    tm = m.to_trimesh()
    assert tm.is_watertight and tm.volume == pytest.approx(1 / 6)
    assert Mesh.from_trimesh(tm).num_faces == 4
