"""Generated grasps: fingertips touch the object, nothing penetrates (issue 5 acceptance, 50 grasps)."""

import numpy as np
import pytest
import torch

from hoiguide.eval import intersection_volume
from hoiguide.synth.grasp import GRASP_TYPES, GraspError, hand_frame, synthesize_grasp
from hoiguide.synth.objects import load_object, parse_object_spec


@pytest.fixture(scope="module")
def hand():
    from hoiguide.synth.generate import default_hand

    return default_hand()


def test_hand_frame_is_orthonormal_and_points_along_the_fingers(hand):
    fr = hand_frame(hand, torch.zeros(hand.num_betas, dtype=torch.float64))
    assert abs(np.linalg.norm(fr["forward"]) - 1) < 1e-9 and abs(fr["forward"] @ fr["normal"]) < 1e-9
    rest = hand.rest_pose()
    tips = rest.keypoints[0, [8, 12, 16, 20]].numpy()
    assert ((tips - rest.keypoints[0, 0].numpy()) @ fr["forward"] > 0.1).all()   # > 10 cm ahead


def test_bad_inputs_are_refused(hand):
    obj = load_object(parse_object_spec("procedural:sphere")[0], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown grasp type"):
        synthesize_grasp(obj, model=hand, grasp_type="karate")
    from hoiguide.types import Mesh

    with pytest.raises(ValueError, match="empty"):
        synthesize_grasp(Mesh.empty(), model=hand)


@pytest.mark.slow
def test_fifty_grasps_touch_without_penetrating(hand):
    """50 grasps over development objects: fingertip contacts within 5 mm (median) and
    intersection volume below 1 cm^3 (paper metric, 5 mm voxels)."""
    sources = parse_object_spec("pybullet:0-699") + parse_object_spec("procedural:all")
    rng = np.random.default_rng(2026)
    medians, ivs, types = [], [], []
    made = 0
    while made < 50:
        src = sources[int(rng.integers(len(sources)))]
        obj = load_object(src, rng=rng, max_faces=6000).to(dtype=torch.float64)
        try:
            g = synthesize_grasp(obj, model=hand, rng=rng)
        except GraspError:
            continue
        made += 1
        with torch.no_grad():
            out = hand(global_orient=g.global_orient[None], hand_pose=g.hand_pose[None],
                       betas=g.betas[None], transl=g.transl[None])
        medians.append(g.stats["median_contact_distance_m"])
        ivs.append(intersection_volume(out.mesh(0).to(dtype=torch.float64), obj))
        types.append(g.grasp_type)
        assert g.stats["hand_penetration_m"] <= 0.0021
        assert g.stats["object_penetration_m"] <= 0.0021
    assert np.median(medians) < 0.005, np.median(medians)
    assert max(ivs) < 1.0, max(ivs)
    assert len(set(types)) >= 3                # several grasp types
