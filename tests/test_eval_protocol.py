"""Tests of hoiguide.eval.protocol (the paper's hand-aligned evaluation)."""

import math

import numpy as np
import pytest
import torch
import trimesh

from hoiguide.eval.metrics import intersection_volume
from hoiguide.eval.protocol import hand_aligned_metrics, hand_alignment
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.types import Mesh, Similarity


def hand_like(sections=24):
    """A procedural stand-in for a hand: a tube open at one end (the "wrist", z = -4 cm),
    closed at the other, with an elliptical cross-section and a bend so that no proper
    rotation maps it onto itself."""
    tube = trimesh.creation.cylinder(radius=0.01, height=0.08, sections=sections)
    V = torch.tensor(tube.vertices)
    F = torch.tensor(tube.faces)
    bottom = (Mesh(V, F).face_normals()[:, 2] < -0.99) & (V[F].mean(1)[:, 2] < -0.039)
    V = V.clone()
    V[:, 1] *= 0.6
    V[:, 0] += 8.0 * (V[:, 2] + 0.04) ** 2  # bend towards +x (1.3 cm at the closed end)
    return Mesh(V, F[~bottom])


def gt_scene():
    hand = hand_like()
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.02)
    obj = Mesh(torch.tensor(s.vertices + [0.025, 0.0, 0.01]), torch.tensor(s.faces))
    return hand, obj


def known_similarity(angle_deg=25.0, scale=1.3):
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    aa = axis / axis.norm() * math.radians(angle_deg)
    return Similarity(torch.tensor(scale, dtype=torch.float64), axis_angle_to_matrix(aa),
                      torch.tensor([0.05, -0.02, 0.4], dtype=torch.float64))


def assert_similarity_close(A, B, atol):
    torch.testing.assert_close(A.matrix(), B.matrix(), atol=atol, rtol=0)


def test_same_topology_alignment_is_exact_and_metrics_perfect():
    gt_hand, gt_obj = gt_scene()
    T = known_similarity()
    pred_hand, pred_obj = gt_hand.transformed(T), gt_obj.transformed(T)
    A = hand_alignment(pred_hand, gt_hand)
    assert_similarity_close(A, T.inverse(), atol=1e-10)
    out = hand_aligned_metrics(pred_hand, pred_obj, gt_hand, gt_obj, num_samples=4000)
    assert set(out) == {"cd_cm2", "f5", "f10", "iv_cm3", "alignment"}
    assert out["cd_cm2"] < 1e-12
    assert out["f5"] == 1.0 and out["f10"] == 1.0
    # IV is measured on the ALIGNED prediction: the GT scene's value, not s^3 times it
    iv_gt = intersection_volume(gt_hand, gt_obj)
    assert iv_gt > 1.0
    assert out["iv_cm3"] == pytest.approx(iv_gt, rel=1e-9)
    iv_unaligned = intersection_volume(pred_hand, pred_obj)
    assert iv_unaligned == pytest.approx(1.3 ** 3 * iv_gt, rel=0.25)  # what we avoid


def test_object_error_is_measured_after_hand_alignment():
    gt_hand, gt_obj = gt_scene()
    T = known_similarity()
    # the predicted object sits d = 7 mm off (in GT units) relative to the hand
    R, d = 0.02, 0.007
    off = torch.tensor([d, 0.0, 0.0], dtype=torch.float64)
    pred_hand = gt_hand.transformed(T)
    pred_obj = gt_obj.with_vertices(gt_obj.vertices + off).transformed(T)
    out = hand_aligned_metrics(pred_hand, pred_obj, gt_hand, gt_obj, num_samples=4000)
    # sphere of radius R shifted by d: a surface point at cos(theta) = c from the shift axis is
    # |sqrt(R^2 - 2Rdc + d^2) - R| from the other sphere, c uniform in [-1, 1] (see
    # test_eval_metrics); the sampled values are a little larger (nearest sample, not surface)
    c = -1 + (np.arange(200000) + 0.5) / 100000
    dist = np.abs(np.sqrt(R ** 2 - 2 * R * d * c + d ** 2) - R)
    cd_expected = 2 * np.mean(dist ** 2) * 1e4
    f5_expected = np.mean(dist < 0.005)  # precision = recall by symmetry
    assert 0.6 < f5_expected < 0.8
    assert cd_expected < out["cd_cm2"] < cd_expected + 0.03
    assert out["f5"] == pytest.approx(f5_expected, abs=0.05)
    assert out["f10"] == 1.0


def test_different_topology_uses_icp():
    gt_hand, gt_obj = gt_scene()
    # the same surface with another triangulation (finer, more vertices)
    v, f = trimesh.remesh.subdivide(*gt_hand.numpy())
    fine_hand = Mesh(torch.tensor(v), torch.tensor(f))
    assert fine_hand.num_vertices != gt_hand.num_vertices
    T = known_similarity(angle_deg=8.0, scale=1.1)
    pred_hand, pred_obj = fine_hand.transformed(T), gt_obj.transformed(T)
    A = hand_alignment(pred_hand, gt_hand, num_samples=3000)
    R_err = A.rotation @ T.rotation
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(R_err)) - 1) / 2))))
    assert angle < 2.0
    assert float(A.scale * T.scale) == pytest.approx(1.0, abs=0.03)
    out = hand_aligned_metrics(pred_hand, pred_obj, gt_hand, gt_obj, num_samples=3000,
                               alignment=A)
    assert out["cd_cm2"] < 0.05
    assert out["f10"] == 1.0


def test_errors():
    gt_hand, gt_obj = gt_scene()
    with pytest.raises(ValueError, match="hand_aligned_metrics: pred_object needs a non-empty"):
        hand_aligned_metrics(gt_hand, Mesh.empty(), gt_hand, gt_obj)
    with pytest.raises(ValueError, match="hand_alignment: gt_hand needs a non-empty"):
        hand_alignment(gt_hand, Mesh.empty())
    with pytest.raises(TypeError, match="expected alignment to be a Similarity"):
        hand_aligned_metrics(gt_hand, gt_obj, gt_hand, gt_obj, alignment=np.eye(4))


# --------------------------------------------------------------------------------------
# hidden side
# --------------------------------------------------------------------------------------


def _camera_scene():
    """The gt scene moved 30 cm in front of a camera, with its rendered depth."""
    from hoiguide.render import render
    from hoiguide.types import Camera

    hand, obj = gt_scene()
    shift = torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)
    hand = Mesh(hand.vertices + shift, hand.faces)
    obj = Mesh(obj.vertices + shift, obj.faces)
    cam = Camera.from_fov(30.0, 96, 96)
    depth = render([hand, obj], cam).depth.numpy()
    return cam, depth, hand, obj


def test_hidden_surface_mask_front_back_and_occluded():
    from hoiguide.eval.protocol import hidden_surface_mask
    from hoiguide.geometry import sample_surface

    cam, depth, hand, obj = _camera_scene()
    pts = sample_surface(obj, 4000, seed=0)
    n = pts - obj.vertices.mean(0).numpy()
    hidden = hidden_surface_mask(pts, cam, depth)
    back = n[:, 2] > 0.01                      # faces away from the camera
    assert hidden[back].mean() > 0.98
    front = (n[:, 2] < -0.012)
    # the front is seen except where the hand is in front of it
    assert 0.3 < (~hidden[front]).mean() <= 1.0
    # a point outside the image is hidden; bad shapes are named
    assert hidden_surface_mask(np.array([[5.0, 0.0, 0.3]]), cam, depth)[0]
    with pytest.raises(ValueError, match="depth map"):
        hidden_surface_mask(pts, cam, depth[:10])


def test_hidden_metrics_separate_the_visible_fit_from_completion():
    from hoiguide.eval.protocol import hidden_surface_mask

    cam, depth, hand, obj = _camera_scene()
    full = hand_aligned_metrics(hand, obj, hand, obj, num_samples=4000, camera=cam,
                                depth=depth)
    assert 0.3 < full["hidden_fraction"] < 0.8
    assert full["hidden_cd_cm2"] < 0.01 and full["hidden_f10"] == 1.0
    # only the faces the camera sees: the visible side is right, the hidden side missing
    centres = obj.vertices[obj.faces].mean(1).numpy()
    seen = ~hidden_surface_mask(centres, cam, depth, tolerance=0.003)
    front = Mesh(obj.vertices, obj.faces[torch.as_tensor(seen)])
    part = hand_aligned_metrics(hand, front, hand, obj, num_samples=4000, camera=cam,
                                depth=depth)
    # (the whole-object CD includes the missing back too, diluted by the right front)
    assert part["hidden_cd_cm2"] > 1.5 * part["cd_cm2"] and part["hidden_cd_cm2"] > 0.3
    assert part["hidden_f10"] < 0.8
    with pytest.raises(ValueError, match="both"):
        hand_aligned_metrics(hand, obj, hand, obj, camera=cam)


def test_object_aligned_metrics_splits_shape_from_placement():
    """A true object moved by a known similarity: the budget recovers the motion as placement
    (size, rotation, translation) and leaves no shape error; a changed shape keeps one."""
    from hoiguide.eval.protocol import object_aligned_metrics
    from hoiguide.testing import make_scene, similarity_about

    gt = make_scene(size=32).object_true.to(dtype=torch.float64)
    T = similarity_about(gt.vertices.mean(0), scale=1.1, axis=(0, 1, 0), angle_deg=10.0)
    moved = gt.transformed(T)
    moved = moved.with_vertices(moved.vertices + torch.tensor([0.005, 0.0, 0.0],
                                                              dtype=torch.float64))
    m = object_aligned_metrics(moved, gt, num_samples=4000)
    assert m["cd_cm2"] > 0.1
    assert m["shape_cd_cm2"] < 1e-3 * m["cd_cm2"]
    assert m["placement_scale_pct"] == pytest.approx(100 * (1 - 1 / 1.1), abs=0.2)
    assert m["placement_rotation_deg"] == pytest.approx(10.0, abs=0.3)
    assert m["placement_translation_cm"] == pytest.approx(0.5, abs=0.05)
    # a different shape (stretched along one axis) keeps a shape error
    c = gt.vertices.mean(0)
    stretched = gt.with_vertices((gt.vertices - c) * torch.tensor([1.6, 1.0, 1.0],
                                                                  dtype=torch.float64) + c)
    s = object_aligned_metrics(stretched, gt, num_samples=4000)
    assert s["shape_cd_cm2"] > 0.01 and s["shape_cd_cm2"] <= s["cd_cm2"]
