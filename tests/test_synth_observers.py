"""Simulated observers: error models with settable strength, then the real alignment chain."""

import math

import numpy as np
import pytest
import torch

from hoiguide.rotations import matrix_to_axis_angle
from hoiguide.synth import ObserverNoise, simulate_observations
from hoiguide.synth.observers import (inpaint_object, observe_depth, observe_hand, observe_masks,
                                      scene_gen_to_camera, stable_seed)
from hoiguide.types import Similarity


def _iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def _rot_deg(R):
    return math.degrees(float(matrix_to_axis_angle(torch.as_tensor(R).double()).norm()))


def test_noise_presets():
    assert ObserverNoise.preset("none").depth_scale == 0.0
    assert ObserverNoise.preset("default") == ObserverNoise()
    two = ObserverNoise.preset(2.0)
    assert two.hand_pose_deg == 2 * ObserverNoise().hand_pose_deg
    assert two.inpaint_dilate_px == ObserverNoise().inpaint_dilate_px
    for bad in ("loud", -1.0, float("nan")):
        with pytest.raises(ValueError, match="observer noise"):
            ObserverNoise.preset(bad)
    assert stable_seed("a", 1) == stable_seed("a", 1) != stable_seed("a", 2)


def test_mask_noise_moves_the_boundary_by_about_the_set_strength(synth_scene):
    rng = np.random.default_rng(0)
    clean = observe_masks(synth_scene, ObserverNoise.preset("none"), rng)
    assert np.array_equal(clean["mask_hand"], synth_scene.mask_hand)
    nz = ObserverNoise(mask_boundary_px=1.0, mask_hole_rate=0.0)
    m = observe_masks(synth_scene, nz, rng)
    iou = _iou(m["mask_hand"], synth_scene.mask_hand)
    assert 0.6 < iou < 1.0
    assert not (m["mask_object"] & m["mask_hand"]).any()
    strong = observe_masks(synth_scene, ObserverNoise(mask_boundary_px=4.0, mask_hole_rate=0),
                           np.random.default_rng(0))
    assert _iou(strong["mask_hand"], synth_scene.mask_hand) < iou


def test_depth_observer_has_a_global_scale_error(synth_scene):
    nz = ObserverNoise(depth_scale=0.1, depth_noise=0.0, depth_tilt=0.0)
    P, valid, s = observe_depth(synth_scene, nz, np.random.default_rng(1))
    assert s != 1.0 and valid.sum() == ((synth_scene.depth > 0).sum())
    ratio = P[valid][:, 2] / synth_scene.depth[valid]
    assert np.allclose(ratio, s, rtol=1e-5)


def test_hand_observer_errors_scale_with_strength(synth_scene):
    true = synth_scene.hand_mesh.vertices.double()
    errs = []
    for k in (0.0, 1.0, 3.0):
        mesh, kp3, kp2 = observe_hand(synth_scene, ObserverNoise.preset(k),
                                      np.random.default_rng(5))
        errs.append(float((mesh.vertices.double() - true).norm(dim=1).mean()))
        assert kp3.shape == (21, 3) and kp2.shape == (21, 2)
    assert errs[0] < 1e-4 < errs[1] < errs[2]
    assert errs[1] < 0.05                             # centimetres, not decimetres


def test_inpainting_removes_the_hand_and_crops_the_object(synth_scene):
    img = inpaint_object(synth_scene.image, synth_scene.mask_hand,
                         synth_scene.mask_object_amodal, size=64)
    assert img.shape == (64, 64, 4) and img.dtype == np.uint8
    alpha = img[..., 3] > 127
    assert 0.2 < alpha.mean() < 0.9
    assert (img[img[..., 3] == 0][:, :3] == 255).all()   # white background
    with pytest.raises(ValueError, match="empty"):
        inpaint_object(synth_scene.image, synth_scene.mask_hand,
                       np.zeros_like(synth_scene.mask_hand), size=64)


def test_noiseless_observers_recover_the_true_frames(synth_scene):
    obs = simulate_observations(synth_scene, noise="none", seed=0)
    T = Similarity.from_dict(obs.metadata["gen_to_image_true"])
    g = obs.gen_to_image
    assert abs(float(g.scale) / float(T.scale) - 1) < 0.05
    assert _rot_deg(g.rotation @ T.rotation.T) < 8.0
    assert float((g.translation - T.translation).norm()) < 0.01
    err = (obs.hand_mesh.vertices.double() - synth_scene.hand_mesh.vertices.double())
    assert float(err.norm(dim=1).mean()) < 0.003
    assert obs.metadata["coarse_hoi"] == "noisy_union"


def test_default_observers_give_plausible_observations(synth_scene):
    obs = simulate_observations(synth_scene, seed=0)
    again = simulate_observations(synth_scene, seed=0)
    assert torch.equal(obs.mask_hand, again.mask_hand)                      # deterministic
    assert torch.allclose(obs.hand_mesh.vertices, again.hand_mesh.vertices)
    assert _iou(obs.mask_hand, synth_scene.mask_hand) > 0.6
    assert not (obs.target_valid & ~obs.mask_union).any()
    assert obs.partial_points.shape[0] > 100 and obs.object_image.shape[2] == 4
    s = obs.metadata["depth_scale"]
    assert abs(float(obs.gen_to_image.scale) /
               float(scene_gen_to_camera(synth_scene).scale) / s - 1) < 0.25
    err = (obs.hand_mesh.vertices.double() - synth_scene.hand_mesh.vertices.double() * s)
    assert float(err.norm(dim=1).mean()) < 0.03


def test_explicit_rng_is_the_default_stream_and_changes_with_it(synth_scene):
    """``rng=`` (what the clip observers pass): the default stream gives the same
    observations as no argument; another stream gives different ones."""
    from hoiguide.synth.observers import stable_seed

    a = simulate_observations(synth_scene, seed=3)
    b = simulate_observations(synth_scene, seed=3, rng=np.random.default_rng(
        stable_seed("observe", synth_scene.scene_id, 3)))
    c = simulate_observations(synth_scene, seed=3, rng=np.random.default_rng(12345))
    assert torch.equal(a.mask_object, b.mask_object)
    assert torch.equal(a.hand_mesh.vertices, b.hand_mesh.vertices)
    assert not torch.equal(a.hand_mesh.vertices, c.hand_mesh.vertices)
