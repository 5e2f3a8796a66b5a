"""Many frames -> ClipObservations (hoiguide.adapters.clip): box tracking, the image chain per
frame with one set of models and one camera, frames that fail, left hands.

The clip is the session's 96x96 synthetic scene repeated over frames; each frame carries a
6x6 marker in its top-left corner (away from the hand and the object) whose grey level is
the frame's index, so the stand-in models of test_adapters_pipeline.py can tell frames apart
(detections that miss or jump in chosen frames, a hand mask that is empty in a chosen frame)
while answering from the scene's ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hoiguide.adapters.clip import clip_observations_from_frames, clip_to_full_frame, track_boxes
from hoiguide.adapters.pipeline import PipelineError, mirror_mesh
from hoiguide.result import ClipReconstruction
from hoiguide.testing import GaussianGridBackbone
from hoiguide.types import Camera, ClipObservations, Mesh, Similarity
from test_adapters_pipeline import (PIPELINE, FakeGeometry, FakeHaMeR, FakeMediaPipe,
                                    FakeSegmenter, Recorder, Truth, adapter_env, nn_mean)

MARK = 6


# ====================================================================== marked frames
def marked(image: np.ndarray, k: int) -> np.ndarray:
    """``image`` with frame ``k``'s marker (grey level 20 + 25 k) in the top-left corner."""
    out = image.copy()
    out[:MARK, :MARK] = 20 + 25 * k
    return out


def _index(v: float) -> int:
    return int(round((float(v) - 20) / 25))


def clip_frames(truth: Truth, n: int) -> list[np.ndarray]:
    return [marked(truth.image, k) for k in range(n)]


class FrameSegmenter(FakeSegmenter):
    """The ground-truth segmenter, told per frame (by the marker) to miss the hand
    (``hide_hand``), to find a hand far away instead (``jump``), or to return an empty hand
    mask (``fail``)."""

    JUMP_BOX = (0.0, 0.0, 20.0, 20.0)

    def __init__(self, truth, rec, env, *, hide_hand=(), jump=(), fail=(), **kw):
        super().__init__(truth, rec, env, **kw)
        self.hide_hand, self.jump, self.fail = set(hide_hand), set(jump), set(fail)
        self.frames_seen: list[int] = []

    def detect(self, image, prompt):
        k = _index(image[MARK // 2, MARK // 2, 0])
        if prompt == "hand":
            self.frames_seen.append(k)
            if k in self.hide_hand:
                self.calls.append(("detect", prompt))
                return []
            if k in self.jump:
                self.calls.append(("detect", prompt))
                return [(self.JUMP_BOX, 0.95, prompt)]
        return super().detect(image, prompt)

    def segment(self, image, prompt, fallback_prompt=None):
        u, v = self.rec.crop.to_crop_points(np.array([[MARK / 2, MARK / 2]]))[0]
        k = _index(image[int(v), int(u), 0])
        if prompt == "hand" and k in self.fail:
            m = np.zeros(image.shape[:2], bool)
            return self.env["SegmentationResult"](mask=m, box=None, score=0.0, label=prompt)
        return super().segment(image, prompt, fallback_prompt)


def clip_models(truth: Truth, rec: Recorder, env, *, mediapipe: bool = False, **seg):
    from hoiguide.adapters.models import Models

    geo = FakeGeometry(truth, rec, env)
    hand = (FakeMediaPipe if mediapipe else FakeHaMeR)(truth, rec, geo, env)
    return Models(segmenter=FrameSegmenter(truth, rec, env, **seg),
                  inpainter=env["inpainting"].OpenCVInpainter(), geometry=geo, hand=hand,
                  backbone=GaussianGridBackbone())


@pytest.fixture
def env(monkeypatch):
    e = adapter_env()
    rec = Recorder(e["crop"].make_crop)
    monkeypatch.setattr(e["crop"], "make_crop", rec)
    e["rec"] = rec
    return e


@pytest.fixture(scope="module")
def truth(synth_scene):
    return Truth.of(synth_scene)


# ====================================================================== a stand-in result
def stand_in_reconstruction(clip: ClipObservations, seed: int = 0, **_: object
                            ) -> ClipReconstruction:
    """What guided_reconstruct_video returns, built from the clip's own observations: the
    analytic generator's sphere placed by each observed frame's gen_to_image (the nearest
    observed frame's for a missing one) and each frame's observed hand."""
    import trimesh

    tm = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    gen = Mesh(torch.tensor(tm.vertices), torch.tensor(tm.faces))
    seen = clip.observed
    near = [min(seen, key=lambda s: abs(s - t)) for t in range(clip.num_frames)]
    frames = [clip.frames[j] for j in near]
    return ClipReconstruction(
        object_mesh_generator=gen, object_transforms=[f.gen_to_image for f in frames],
        hand_meshes=[f.hand_mesh.to(dtype=torch.float64) for f in frames],
        hand_similarities=[Similarity.identity() for _ in frames], times=clip.times,
        reference=clip.reference, observed=[f is not None for f in clip.frames],
        latent=torch.zeros(1, 4), history=[], timings={"total": 0.0},
        schedule={"name": "stand-in", "num_steps": 0}, seed=int(seed), status="ok",
        counters={"frame_visits": [1] * clip.num_frames})


# ====================================================================== tracking
def test_track_boxes_fills_gaps_and_rejects_jumps():
    """A missed frame is interpolated between its neighbours, a far-away detection is
    replaced by the track, a second detection near the track is chosen over a more confident
    far one, and the clip's ends hold the nearest tracked box."""
    box = lambda x: (x, 10.0, x + 20.0, 30.0)  # noqa: E731 -- a hand moving right 2 px/frame
    cands = [[(box(2.0 * t), 0.9)] for t in range(9)]
    cands[3] = []                                           # missed
    cands[5] = [((60.0, 60.0, 70.0, 70.0), 0.99)]           # jumped (only candidate)
    cands[6] = [((60.0, 60.0, 70.0, 70.0), 0.99), (box(12.0), 0.4)]  # jump + the hand
    cands[0] = []                                           # the first frame missed
    boxes, src = track_boxes(cands)
    assert src == ["held", "detected", "detected", "interpolated", "detected", "replaced",
                   "detected", "detected", "detected"]
    np.testing.assert_allclose(boxes[3], box(6.0))
    np.testing.assert_allclose(boxes[5], box(10.0))
    assert boxes[6] == box(12.0)
    assert boxes[0] == box(2.0)
    assert track_boxes([[], []]) == ([None, None], ["none", "none"])


# ====================================================================== the chain per frame
def test_clip_tracks_the_hand_and_keeps_one_camera(truth, env):
    """Frame 1: the detector misses the hand (the chain alone would stop with 'no hand
    detected'); frame 3: it finds a 'hand' far away: both frames use the tracked box and
    are observed. Frame 2's hand mask is empty: that frame is None with its reason. Every
    observed frame shares the first frame's camera."""
    T = 5
    models = clip_models(truth, env["rec"], env, hide_hand={1}, jump={3}, fail={2})
    clip, crops = clip_observations_from_frames(
        clip_frames(truth, T), models, object_name="bottle", options=PIPELINE,
        progress=False, times=[0.0, 0.1, 0.2, 0.3, 0.4])
    assert isinstance(clip, ClipObservations) and clip.num_frames == T
    assert clip.observed == [0, 1, 3, 4]
    assert clip.frames[2] is None and crops[2] is None
    meta = clip.metadata
    f = meta["frames"]
    assert [r["status"] for r in f] == ["ok", "ok", "no hand mask", "ok", "ok"]
    assert f[2]["stage"] == "segment" and "hand mask" in f[2]["reason"]
    assert [r["hand_box_source"] for r in f] == ["detected", "interpolated", "detected",
                                                 "replaced", "detected"]
    true_box = FakeSegmenter._box(None, truth.mask_hand)
    for t in (1, 3):
        np.testing.assert_allclose(f[t]["hand_box"], true_box)
    # every frame was detected once (the chain itself reused the tracked boxes)
    assert sorted(models.segmenter.frames_seen) == list(range(T))
    # one camera: the geometry model's (the true one) from frame 0, then given to all
    assert meta["camera_source"] == "geometry (frame 0)"
    cam = Camera.from_dict(meta["camera"])
    for k in ("fx", "fy", "cx", "cy"):
        assert getattr(cam, k) == pytest.approx(getattr(truth.camera, k), rel=1e-6)
    for t in clip.observed:
        x0, y0, x1, y1 = crops[t].box
        want = cam.cropped(x0, y0, x1 - x0, y1 - y0, crops[t].size, crops[t].size)
        assert clip.frames[t].camera.fx == pytest.approx(want.fx)
        assert clip.frames[t].camera.cx == pytest.approx(want.cx)
        # the hand lies on the true hand in every observed frame
        assert nn_mean(clip.frames[t].hand_mesh.vertices, truth.hand.vertices) < 0.004
    torch.testing.assert_close(clip.times, torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4],
                                                        dtype=torch.float64))
    assert clip.reference in clip.observed
    assert meta["tracking"]["hand"] == {"detected": 3, "interpolated": 1, "replaced": 1}


def test_no_frame_shows_a_hand(truth, env):
    models = clip_models(truth, env["rec"], env, hide_hand={0, 1, 2})
    with pytest.raises(PipelineError) as ei:
        clip_observations_from_frames(clip_frames(truth, 3), models, options=PIPELINE,
                                      progress=False)
    assert ei.value.status == "no hand detected" and ei.value.stage == "detect"
    assert "no frame of the 3-frame clip shows a hand" in str(ei.value)
    assert env["rec"].crop is None                     # the chain never started


def test_every_frame_failing_names_the_reasons(truth, env):
    models = clip_models(truth, env["rec"], env, fail={0, 1})
    with pytest.raises(PipelineError) as ei:
        clip_observations_from_frames(clip_frames(truth, 2), models, options=PIPELINE,
                                      progress=False)
    assert ei.value.status == "no hand mask"
    assert "failed on every frame of the 2-frame clip: 2 x no hand mask (segment)" in \
        ei.value.message


def test_bad_frames_are_refused_before_any_model_runs(truth, env):
    from hoiguide.videoio import VideoError

    models = clip_models(truth, env["rec"], env)
    small = truth.image[:80]
    with pytest.raises(VideoError, match="frames of different sizes: frame 0 is 96x96 but "
                                         "frame 1 is 96x80"):
        clip_observations_from_frames([truth.image, small], models, progress=False)
    with pytest.raises(VideoError, match="no frames"):
        clip_observations_from_frames([], models, progress=False)
    with pytest.raises(VideoError, match="expected 2 frame times"):
        clip_observations_from_frames([truth.image] * 2, models, times=[0.0], progress=False)
    assert models.segmenter.calls == []


def test_left_hand_clip_is_mirrored_back(truth, env):
    """A left-hand clip (the mirror image of the scene): every crop is mirrored, the models
    see right hands, and clip_to_full_frame puts the hand meshes and the placed object back
    onto the mirrored truth."""
    left = truth.flipped()
    models = clip_models(left, env["rec"], env, mediapipe=True)
    clip, crops = clip_observations_from_frames(
        clip_frames(left, 2), models, object_name="bottle", left_hand=True, options=PIPELINE,
        progress=False)
    assert clip.observed == [0, 1] and all(c.mirrored for c in crops)
    assert clip.metadata["left_hand"] is True
    rec = stand_in_reconstruction(clip)
    full = clip_to_full_frame(rec, crops)
    for t in range(2):
        assert nn_mean(full.hand_meshes[t].vertices, left.hand.vertices) < 0.004
        assert nn_mean(rec.hand_meshes[t].vertices, left.hand.vertices) > 0.01
        a = full.object_mesh(t).vertices.numpy()
        b = rec.object_mesh(t).vertices.numpy() * np.array([-1.0, 1.0, 1.0])
        np.testing.assert_allclose(a, b, atol=1e-9)
        assert torch.det(full.object_transforms[t].rotation) > 0
    # a right-hand clip is returned as it is
    assert clip_to_full_frame(rec, [None, *[type("C", (), {"mirrored": False})()]]) is rec


def test_clip_to_full_frame_mirrors_normals_outward():
    """The mirrored generator mesh keeps outward faces (its signed volume stays positive)."""
    import trimesh

    tm = trimesh.creation.box(extents=(0.1, 0.2, 0.3))
    gen = Mesh(torch.tensor(tm.vertices), torch.tensor(tm.faces))
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    T = Similarity(torch.tensor(0.5, dtype=torch.float64), R,
                   torch.tensor([0.1, 0.0, 0.5], dtype=torch.float64))
    rec = ClipReconstruction(gen, [T], [mirror_mesh(gen)], [Similarity.identity()],
                             torch.zeros(1, dtype=torch.float64), 0, [True], torch.zeros(1),
                             [], {}, {}, 0, "ok", {})
    full = clip_to_full_frame(rec, [type("C", (), {"mirrored": True})()])
    vol = trimesh.Trimesh(full.object_mesh(0).vertices.numpy(),
                          full.object_mesh(0).faces.numpy()).volume
    assert vol == pytest.approx(0.5 ** 3 * 0.1 * 0.2 * 0.3, rel=1e-6)
    with pytest.raises(ValueError, match="disagree on mirroring"):
        clip_to_full_frame(rec, [type("C", (), {"mirrored": m})() for m in (True, False)])
