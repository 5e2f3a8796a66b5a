"""Clip metrics (hoiguide.eval.clip): a perfect prediction scores 0, a jittered trajectory
jitters more than the truth, per-frame meshes of another topology are tracked by ICP, the
hidden side is what no frame sees (the intersection of the per-frame hidden sets), a
single-frame prediction gives its reference values only, and bad input gets one line.
Built on hoiguide.testing's analytic ellipsoid-and-hand scene turned over a few frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hoiguide.eval import clip_metrics, hand_aligned_metrics, trajectory_jitter
from hoiguide.eval.clip import clip_hidden_mask, object_tracks
from hoiguide.eval.protocol import hidden_surface_mask
from hoiguide.render import render
from hoiguide.testing import make_scene, similarity_about
from hoiguide.types import Mesh, Similarity

T = 5
N = 1500


@pytest.fixture(scope="module")
def truth():
    """T frames of the testing scene turning 20 degrees per frame about a sideways axis."""
    sc = make_scene(size=48)
    centre = sc.gen_to_image_true.translation
    hands, objects, depths, motions = [], [], [], []
    for t in range(T):
        M = similarity_about(centre, 1.0, (0.0, 1.0, 0.2), 20.0 * t, (0.002 * t, 0.0, 0.0))
        h, o = sc.hand_true.transformed(M), sc.object_true.transformed(M)
        hands.append(h)
        objects.append(o)
        motions.append(M)
        depths.append(render([h, o], sc.camera).depth.numpy())
    return {"hands": hands, "objects": objects, "cameras": [sc.camera] * T, "depths": depths,
            "motions": motions}


def _kw(truth, **extra):
    return dict(cameras=truth["cameras"], depths=truth["depths"], num_samples=N, **extra)


def test_perfect_prediction_scores_zero(truth):
    m = clip_metrics(truth["hands"], truth["objects"], truth["hands"], truth["objects"],
                     reference=2, fps=30.0, **_kw(truth))
    assert m["frames_scored"] == list(range(T)) and m["reference"] == 2
    assert m["cd_cm2"] < 1e-12 and m["reference_cd_cm2"] < 1e-12
    assert m["f5"] == 1.0 and m["f10"] == 1.0
    assert m["hidden_cd_cm2"] < 1e-12 and m["hidden_f10"] == 1.0
    assert 0.0 < m["hidden_fraction"] < 1.0
    assert m["object_jitter_mm"] == pytest.approx(m["gt_object_jitter_mm"], rel=1e-6)
    assert m["hand_jitter_mm"] == pytest.approx(m["gt_hand_jitter_mm"], rel=1e-9)
    assert m["object_jitter_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert m["object_jitter_m_s2"] == pytest.approx(m["object_jitter_mm"] * 1e-3 * 900)
    # per-frame values are hand_aligned_metrics' own
    ref = hand_aligned_metrics(truth["hands"][2], truth["objects"][2], truth["hands"][2],
                               truth["objects"][2], num_samples=N)
    assert m["per_frame"][2]["iv_cm3"] == pytest.approx(ref["iv_cm3"])


def test_jittered_trajectory_jitters_more_than_the_truth(truth):
    rng = np.random.default_rng(1)
    shaken_o, shaken_h = [], []
    for h, o in zip(truth["hands"], truth["objects"]):
        S = Similarity(torch.tensor(1.0, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                       torch.as_tensor(rng.normal(0, 0.004, 3)))
        shaken_o.append(o.transformed(S))
        shaken_h.append(h.transformed(S))
    m = clip_metrics(shaken_h, shaken_o, truth["hands"], truth["objects"], **_kw(truth))
    assert m["object_jitter_mm"] > m["gt_object_jitter_mm"] + 2.0
    assert m["hand_jitter_mm"] > m["gt_hand_jitter_mm"] + 2.0
    assert m["object_jitter_ratio"] > 1.5
    # hand and object moved together: the hand-aligned CD stays ~0
    assert m["cd_cm2"] < 1e-6


def test_independent_meshes_are_tracked_by_icp(truth):
    """Per-frame meshes of another topology (a remeshed copy per frame) moving like the truth
    jitter like the truth; shaking them by 4 mm makes them jitter clearly more."""
    import trimesh

    base = truth["objects"][0]
    tm = trimesh.Trimesh(base.vertices.numpy(), base.faces.numpy()).subdivide()
    fine = Mesh(torch.as_tensor(tm.vertices), torch.as_tensor(tm.faces))
    rel = [truth["motions"][t].compose(truth["motions"][0].inverse()) for t in range(T)]
    moved = [fine.transformed(rel[t]) for t in range(T)]
    assert moved[0].num_vertices != base.num_vertices
    tracks = object_tracks(moved, num_points=300, icp_samples=N)
    # the ICP chain recovers the motion: tracked points land on the moved surface
    from scipy.spatial import cKDTree
    for t in range(T):
        d = cKDTree(moved[t].vertices.numpy()).query(tracks[t])[0]
        assert d.max() < 2e-3
    gt = trajectory_jitter(object_tracks(truth["objects"], num_points=300))
    smooth = trajectory_jitter(tracks)
    assert smooth == pytest.approx(gt, rel=0.3)
    rng = np.random.default_rng(2)
    shaken = [m.transformed(Similarity(torch.tensor(1.0, dtype=torch.float64),
                                       torch.eye(3, dtype=torch.float64),
                                       torch.as_tensor(rng.normal(0, 0.004, 3))))
              for m in moved]
    assert trajectory_jitter(object_tracks(shaken, num_points=300, icp_samples=N)) > gt + 2.0


def test_hidden_side_is_the_intersection_over_frames(truth):
    samples, hidden, motions = clip_hidden_mask(truth["objects"], truth["cameras"],
                                                truth["depths"], reference=0, num_samples=N)
    per_frame = [hidden_surface_mask(np.asarray(motions[t].apply(samples)), truth["cameras"][t],
                                     truth["depths"][t]) for t in range(T)]
    assert np.array_equal(hidden, np.logical_and.reduce(per_frame))
    # turning the object shows more of it: fewer points hidden than in any one frame
    assert hidden.sum() < min(h.sum() for h in per_frame)
    one = clip_hidden_mask(truth["objects"][:1], truth["cameras"][:1], truth["depths"][:1],
                           num_samples=N)[1]
    assert np.array_equal(one, per_frame[0])
    # the samples are carried by the true motion
    assert np.allclose(motions[3].apply(samples),
                       truth["motions"][3].compose(truth["motions"][0].inverse()).apply(samples),
                       atol=1e-6)


def test_a_single_frame_prediction_gives_reference_values(truth):
    ref = 1
    hands = [None] * T
    objs = [None] * T
    bigger = truth["objects"][ref].transformed(
        Similarity.about(truth["objects"][ref].vertices.mean(0), 1.1, torch.eye(3,
                         dtype=torch.float64), torch.zeros(3, dtype=torch.float64)))
    hands[ref], objs[ref] = truth["hands"][ref], bigger
    m = clip_metrics(hands, objs, truth["hands"], truth["objects"], reference=ref,
                     **_kw(truth))
    assert m["frames_scored"] == [ref]
    assert m["reference_cd_cm2"] == m["cd_cm2"] > 0
    assert m["reference_hidden_cd_cm2"] > 0
    assert m["object_jitter_mm"] is None and m["hand_jitter_mm"] is None
    assert m["gt_object_jitter_mm"] > 0
    assert m["per_frame"][0] is None


def test_trajectory_jitter_values():
    # constant velocity: 0; x_t = a t^2 / 2 (a = 2 mm/frame^2): 2 mm/frame^2
    p0 = np.zeros((3, 3))
    const = [p0 + 0.001 * t for t in range(5)]
    assert trajectory_jitter(const) == pytest.approx(0.0, abs=1e-9)
    acc = [p0 + np.array([0.001 * t * t, 0, 0]) for t in range(5)]
    assert trajectory_jitter(acc) == pytest.approx(2.0)
    assert trajectory_jitter([const[0], None, const[2], const[3]]) is None
    assert math.isclose(trajectory_jitter([acc[0], acc[1], acc[2], None]), 2.0)


def test_bad_input_gets_one_line(truth):
    h, o = truth["hands"], truth["objects"]
    with pytest.raises(ValueError, match="one entry per frame"):
        clip_metrics(h[:2], o, h, o)
    with pytest.raises(ValueError, match="reference 9 is not a frame index"):
        clip_metrics(h, o, h, o, reference=9)
    with pytest.raises(ValueError, match=r"gt_objects\[1\] must be a non-empty"):
        clip_metrics(h, o, h, [o[0], None, *o[2:]])
    with pytest.raises(ValueError, match="both cameras and depths"):
        clip_metrics(h, o, h, o, cameras=truth["cameras"])
    with pytest.raises(TypeError, match="one entry per frame"):
        clip_metrics(h[0], o, h, o)
