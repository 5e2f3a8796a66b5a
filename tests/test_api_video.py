"""hoiguide.guided_reconstruct_video on ClipObservations: the result, its files, and the
argument checks (one clear line each, before any model is built). The frames / video path
branch runs the adapters' chain (tested with reconstruct-video's own tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clip_fixtures import make_clip

import hoiguide
from hoiguide.result import CLIP_RESULT_KIND, ClipReconstruction
from hoiguide.testing import GaussianGridBackbone

OPTS = {"grid_resolution": 20, "render_size": 32, "final_resolution": 25,
        "max_iterations": 2}


@pytest.fixture(scope="module")
def clip():
    return make_clip(3, 32, missing=(1,)).clip


def test_reconstruct_a_clip_and_save(clip, tmp_path):
    seen = []
    rec = hoiguide.guided_reconstruct_video(clip, backbone=GaussianGridBackbone(), seed=1,
                                            options=OPTS, progress=False,
                                            callbacks=[seen.append])
    assert isinstance(rec, ClipReconstruction)
    assert rec.status == "ok" and rec.seed == 1 and rec.num_frames == 3
    assert rec.schedule["name"] == "video_fast"           # the default schedule
    assert rec.observed == [True, False, True]
    assert len(seen) == 8 and seen[-1].phase == "joint"   # one per flow step
    out = rec.save(tmp_path / "out")
    data = json.loads((out / "result.json").read_text())
    assert data["kind"] == CLIP_RESULT_KIND and data["num_frames"] == 3
    assert data["counters"]["frame_visits"][1] == 0
    assert len(list((out / "hands").glob("hand_*.ply"))) == 3
    assert hoiguide.guided_reconstruct_video is not None
    assert "guided_reconstruct_video" in dir(hoiguide)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({}, TypeError, "missing 1 required argument: 'backbone'"),
    ({"backbone": GaussianGridBackbone(), "seed": -1}, TypeError, "seed"),
    ({"backbone": GaussianGridBackbone(), "seed": True}, TypeError, "seed"),
    ({"backbone": GaussianGridBackbone(), "device": "meta"}, ValueError,
     "guided_reconstruct_video: device='meta'"),
    ({"backbone": GaussianGridBackbone(), "schedule": "video_fats"}, ValueError,
     "did you mean video_fast"),
    ({"backbone": GaussianGridBackbone(), "options": {"grid_resolutoin": 3}}, ValueError,
     "grid_resolutoin"),
    ({"backbone": GaussianGridBackbone(), "every": 0}, TypeError, "every"),
])
def test_bad_arguments_get_one_clear_line(clip, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        hoiguide.guided_reconstruct_video(clip, progress=False, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("frames, exc, match", [
    (42, TypeError, "expected frames as hoiguide.ClipObservations.*got int"),
    (np.zeros((4, 4, 3), np.uint8), TypeError, "got ndarray"),
    ([], ValueError, "frames is empty"),
])
def test_bad_frames_are_named(frames, exc, match):
    with pytest.raises(exc, match=match):
        hoiguide.guided_reconstruct_video(frames, backbone=GaussianGridBackbone())


def test_one_observation_points_to_the_single_image_api(clip):
    with pytest.raises(TypeError, match="use hoiguide.guided_reconstruct"):
        hoiguide.guided_reconstruct_video(clip.frames[0], backbone=GaussianGridBackbone())


def test_frames_bad_chain_arguments_fail_before_any_model(monkeypatch):
    """Sequence-of-images input: chain arguments are checked before models load."""
    def boom(*a, **k):
        raise AssertionError("models were loaded")
    monkeypatch.setattr(hoiguide.api.Models, "load", boom)
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="object_name"):
        hoiguide.guided_reconstruct_video([img, img], object_name=" ")
    with pytest.raises(TypeError, match="left_hand"):
        hoiguide.guided_reconstruct_video([img, img], left_hand="left")
    with pytest.raises(ValueError, match="nosuchoption"):
        hoiguide.guided_reconstruct_video([img, img], pipeline_options={"nosuchoption": 1})
