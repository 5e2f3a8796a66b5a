"""Synthetic clips (hoiguide.synth.clip): per-frame ground truth agrees with the renders, the
motion turns by the requested angle smoothly, finger motion keeps the contact fingers, the
on-disk round trip, clips-set detection, temporally correlated observers, and
``hoiguide synth --frames``. One 4-frame 64 px clip of a procedural cup (no pybullet)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from hoiguide.cli import main
from hoiguide.eval.clip import object_tracks, trajectory_jitter
from hoiguide.hands import ProceduralHand
from hoiguide.render import render
from hoiguide.rotations import rotation_angle
from hoiguide.synth.clip import (
    CLIPS_MANIFEST_FORMAT,
    Clip,
    CorrelatedDraws,
    is_clips_set,
    list_clips,
    load_clip,
    make_clip,
    simulate_clip_observations,
    write_clips_manifest,
)
from hoiguide.synth.observers import ObserverNoise, observe_hand
from hoiguide.synth.scene import SceneFormatError, list_scenes, write_manifest
from hoiguide.types import ClipObservations

SPEC = "procedural:cup@10001"
T = 4


@pytest.fixture(scope="module")
def clip():
    # one rotation axis (axis_candidates=1): the visibility search costs 3 x T renders
    return make_clip(SPEC, seed=0, index=0, num_frames=T, image_size=64, rotation_deg=90.0,
                     finger_motion=True, axis_candidates=1)


@pytest.fixture(scope="module")
def saved(clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    clip.save(root / clip.clip_id)
    write_clips_manifest(root, [{"id": clip.clip_id, "path": clip.clip_id}], seed=0)
    return root


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def test_object_pose_per_frame_reproduces_the_rendered_object(clip):
    assert clip.num_frames == T and len(clip.times) == T
    assert np.allclose(np.diff(clip.times), 1 / 30)
    for t, sc in enumerate(clip.frames):
        placed = clip.object_mesh.to(dtype=torch.float64).transformed(clip.object_to_camera[t])
        assert torch.allclose(placed.vertices, sc.object_mesh.vertices.double(), atol=2e-5)
        r = render([placed], sc.camera, amodal=True)
        assert _iou((r.amodal[0] > 0.5).numpy(), sc.mask_object_amodal) > 0.98
        # the visible mask is the amodal one minus what the hand hides
        assert not (sc.mask_object & ~sc.mask_object_amodal).any()
        # the generator frame is the object frame scaled to a 1.8 longest side
        L = float((clip.object_mesh.bounds()[1] - clip.object_mesh.bounds()[0]).max())
        g, o = clip.gen_to_camera[t], clip.object_to_camera[t]
        assert math.isclose(float(g.scale), float(o.scale) * L / 1.8, rel_tol=1e-5)
        assert torch.allclose(g.rotation, o.rotation, atol=1e-9)


def test_hand_parameters_per_frame_reproduce_the_hand(clip):
    model = ProceduralHand("right")
    for sc in clip.frames:
        hp = sc.hand_params
        with torch.no_grad():
            out = model(global_orient=torch.tensor(hp["global_orient"], dtype=torch.float64)[None],
                        hand_pose=torch.tensor(hp["hand_pose"], dtype=torch.float64)[None],
                        betas=torch.tensor(hp["betas"], dtype=torch.float64)[None],
                        transl=torch.tensor(hp["transl"], dtype=torch.float64)[None])
        assert torch.allclose(out.vertices[0], sc.hand_mesh.vertices.double(), atol=2e-5)
        assert np.allclose(out.keypoints[0].numpy(), sc.hand_keypoints_3d, atol=2e-5)
        assert _iou(sc.mask_hand, sc.mask_hand_amodal) > 0.3


def test_motion_turns_by_the_requested_angle_about_a_sideways_axis(clip):
    R = clip.object_to_camera[0].inverse().compose(clip.object_to_camera[-1]).rotation
    total = math.degrees(float(rotation_angle(R)))
    assert total >= 90.0 - 1e-6 and total < 90.5
    axis = np.asarray(clip.metadata["motion"]["axis_camera"])
    view = np.asarray(clip.metadata["motion"]["centre_camera"])
    view = view / np.linalg.norm(view)
    assert abs(float(axis @ view)) <= math.sin(math.radians(15.0)) + 1e-9
    # consecutive frames are equally far apart in angle (constant angular speed)
    steps = [math.degrees(float(rotation_angle(clip.object_to_camera[t].inverse().compose(
        clip.object_to_camera[t + 1]).rotation))) for t in range(T - 1)]
    assert np.allclose(steps, 90.0 / (T - 1), atol=1e-4)


def test_truth_is_smooth(clip):
    tracks = object_tracks([f.object_mesh for f in clip.frames], num_points=200)
    jitter = trajectory_jitter(tracks)
    step = np.mean([np.linalg.norm(tracks[t + 1] - tracks[t], axis=1).mean()
                    for t in range(T - 1)]) * 1000
    # a constant-speed turn plus a gentle drift: the acceleration stays below a step (30
    # degrees per frame here: the centripetal part alone is 2 sin(15°) |v| = 0.52 |v|)
    assert 0 < jitter < 0.8 * step
    # per-frame placement noise of a few millimetres makes it clearly less smooth
    rng = np.random.default_rng(0)
    noisy = [p + rng.normal(0, 0.005, 3) for p in tracks]
    assert trajectory_jitter(noisy) > jitter + 3.0


def test_finger_motion_moves_only_the_free_fingers(clip):
    fm = clip.metadata["finger_motion"]
    assert fm["enabled"]
    poses = np.array([sc.hand_params["hand_pose"] for sc in clip.frames]).reshape(T, 15, 3)
    # MANO joint order: index 0-2, middle 3-5, pinky 6-8, ring 9-11, thumb 12-14
    joints = {0: [12, 13, 14], 1: [0, 1, 2], 2: [3, 4, 5], 3: [9, 10, 11], 4: [6, 7, 8]}
    contact = set(clip.frames[0].metadata["grasp"]["contact_fingers"])
    assert set(fm["moving_fingers"]) == set(range(5)) - contact
    for f in range(5):
        spread = np.ptp(poses[:, joints[f], 0], axis=0).max()
        if f in fm["moving_fingers"]:
            assert spread > 1e-3, f"finger {f} should move"
        else:
            assert spread < 1e-9, f"finger {f} touches the object and must keep its pose"


def test_round_trip_and_errors(clip, saved, tmp_path):
    back = load_clip(saved / clip.clip_id)
    assert back.num_frames == T and back.reference == clip.reference
    assert back.object_source == SPEC
    assert np.allclose(back.times, clip.times)
    for a, b in zip(clip.frames, back.frames):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask_object, b.mask_object)
        assert np.array_equal(a.depth, b.depth)
    for t in range(T):
        assert torch.allclose(back.object_to_camera[t].matrix(), clip.object_to_camera[t].matrix())
    assert back.metadata["frames"][0]["visible_object_pixels"] == clip.object_pixels[0]
    # the reference is the frame with the most visible object
    assert clip.reference == int(np.argmax(clip.object_pixels))
    info = json.loads((saved / clip.clip_id / "clip.json").read_text())
    assert info["format"] == "hoiguide-synth-clip" and len(info["frames"]) == T
    with pytest.raises(SceneFormatError, match="no clip.json"):
        load_clip(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "clip.json").write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(SceneFormatError, match="newer"):
        load_clip(bad)
    (bad / "clip.json").write_text(json.dumps({**info, "frames": [{"path": "frame_000"}]}))
    with pytest.raises(SceneFormatError, match="bad"):
        load_clip(bad)


def test_clips_set_is_told_from_a_scene_set(clip, saved, tmp_path):
    assert is_clips_set(saved) and is_clips_set(saved / clip.clip_id)
    assert list_clips(saved) == [(clip.clip_id, saved / clip.clip_id)]
    man = json.loads((saved / "manifest.json").read_text())
    assert man["format"] == CLIPS_MANIFEST_FORMAT and man["num_clips"] == 1
    with pytest.raises(SceneFormatError, match="hoiguide-synth-clips"):
        list_scenes(saved)          # the single-image tools refuse a clips set
    scenes = tmp_path / "scenes"
    clip.frames[0].save(scenes / "s0")
    write_manifest(scenes, [{"id": "s0", "path": "s0"}])
    assert not is_clips_set(scenes)
    with pytest.raises(SceneFormatError, match="expected 'hoiguide-synth-clips'"):
        list_clips(scenes)


def test_correlated_draws_are_ar1_with_the_asked_marginals():
    for rho in (0.0, 0.9):
        d = CorrelatedDraws(3, rho)
        z, u = [], []
        for _ in range(600):
            d.next_frame()
            z.append(d.normal(0.0, 2.0, size=4))
            u.append(d.uniform(-1.0, 1.0))
        z = np.array(z)[:, 0] / 2.0
        r1 = float(np.corrcoef(z[1:], z[:-1])[0, 1])
        assert abs(r1 - rho) < 0.12
        assert 0.8 < float(z.std()) < 1.2
        u = np.array(u)
        assert u.min() >= -1 and u.max() <= 1 and abs(float(u.mean())) < 0.12


def _hand_errors(clip, rho: float, seed: int) -> np.ndarray:
    d = CorrelatedDraws(seed, rho)
    nz = ObserverNoise()
    out = []
    for t, sc in enumerate(clip.frames):
        if t:
            d.next_frame()
        mesh, _, _ = observe_hand(sc, nz, d)
        out.append((mesh.vertices.double().mean(0) - sc.hand_mesh.vertices.double().mean(0))
                   .numpy())
    return np.array(out)


def test_hand_error_is_correlated_across_frames(clip):
    """Normalised lag-1 variogram 1 - rho: about 0.1 for rho = 0.9, about 1 when independent."""
    def variogram(rho):
        e = np.array([_hand_errors(clip, rho, s) for s in range(12)])   # (seeds, T, 3)
        return float(((e[:, 1:] - e[:, :-1]) ** 2).mean() / (2 * (e ** 2).mean()))

    assert variogram(0.9) < 0.35
    assert variogram(0.0) > 0.6


def test_simulated_clip_observations(clip):
    # two frames keep it fast: the observers and the ICP chain run per frame
    sub = Clip(clip_id=clip.clip_id, frames=clip.frames[1:3], times=clip.times[1:3],
               object_to_camera=clip.object_to_camera[1:3],
               gen_to_camera=clip.gen_to_camera[1:3], reference=1,
               object_mesh=clip.object_mesh, object_source=clip.object_source)
    obs = simulate_clip_observations(sub, seed=1)
    assert isinstance(obs, ClipObservations)
    assert obs.num_frames == 2 and obs.observed == [0, 1] and obs.reference == 1
    assert torch.allclose(obs.times, torch.as_tensor(sub.times, dtype=torch.float64))
    scales = []
    for t, f in enumerate(obs.frames):
        assert f.metadata["frame"] == t and f.metadata["clip_id"] == clip.clip_id
        truth = f.metadata["gen_to_image_true"]
        scales.append(f.metadata["depth_scale"])
        assert math.isclose(truth["scale"], f.metadata["depth_scale"]
                            * float(sub.gen_to_camera[t].scale), rel_tol=1e-6)
        # the per-frame placement lands near the truth (noisy observers, coarse ICP)
        c_obs = f.gen_to_image.translation.double()
        c_true = torch.as_tensor(truth["translation"], dtype=torch.float64)
        assert float(torch.linalg.norm(c_obs - c_true)) < 0.08
    assert scales[0] != scales[1]          # a depth scale per frame ...
    assert abs(math.log(scales[0] / scales[1])) < 0.1   # ... that drifts slowly (rho 0.9)


def test_bad_arguments_get_one_line():
    for kw, pat in ((dict(num_frames=0), "num_frames"), (dict(rotation_deg=-5), "rotation_deg"),
                    (dict(num_frames=1000), "num_frames"), (dict(fps=0), "fps")):
        with pytest.raises(ValueError, match=pat):
            make_clip(SPEC, **kw)
    with pytest.raises(ValueError, match="temporal_correlation"):
        CorrelatedDraws(0, 1.5)


def test_cli_synth_frames(tmp_path, caplog):
    out = tmp_path / "clips"
    assert main(["-q", "synth", str(out), "--n", "1", "--frames", "2", "--size", "32",
                 "--objects", SPEC, "--rotation", "60"]) == 0
    assert is_clips_set(out)
    (cid, folder), = list_clips(out)
    c = load_clip(folder)
    assert c.num_frames == 2 and c.metadata["motion"]["rotation_deg"] == 60.0
    man = json.loads((out / "manifest.json").read_text())
    assert man["num_frames"] == 2 and man["command"].startswith("hoiguide")
    assert not list(out.glob(".*.tmp"))
    for argv, msg in ((["--frames", "0"], "--frames: expected an integer from 1"),
                      (["--rotation", "30"], "--rotation: only applies to clips"),
                      (["--frames", "3", "--rotation", "400"], "--rotation: expected degrees")):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="hoiguide"):
            code = main(["synth", str(tmp_path / "x"), "--n", "1", *argv])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert code == 2 and len(errors) == 1 and msg in errors[0], errors
        assert not (tmp_path / "x").exists()
