"""ClipObservations (validation, defaults) and ClipReconstruction (placement, save)."""

import json

import pytest
import torch

import hoiguide
from hoiguide.result import CLIP_RESULT_KIND, ClipReconstruction
from hoiguide.testing import make_scene
from hoiguide.types import ClipObservations, Similarity


@pytest.fixture(scope="module")
def obs():
    return make_scene(size=32).observations


def test_defaults_reference_is_the_frame_with_most_object_pixels(obs):
    small = make_scene(size=32, hand_offset=(0.0, 0.0, -0.03)).observations  # hand in front
    assert int(small.mask_object.sum()) < int(obs.mask_object.sum())
    clip = ClipObservations((small, None, obs))
    assert clip.reference == 2
    assert clip.observed == [0, 2]
    assert clip.num_frames == 3
    assert torch.allclose(clip.times, torch.tensor([0.0, 1 / 30, 2 / 30], dtype=torch.float64))
    assert clip.reference_observations is obs
    assert hoiguide.ClipObservations is ClipObservations


@pytest.mark.parametrize("kwargs, match", [
    ({"frames": ()}, "non-empty"),
    ({"frames": (None, None)}, "no frame has observations"),
    ({"frames": ("x",)}, r"frames\[0\]"),
    ({"times": [0.0, 0.0]}, "strictly increasing"),
    ({"times": [0.0]}, "expected 2 values"),
    ({"reference": 1}, "frame 1 has no observations"),
    ({"reference": 5}, r"in \[0, 1\]"),
])
def test_bad_clips_name_the_field(obs, kwargs, match):
    args = {"frames": (obs, None), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        ClipObservations(**args)


def test_from_frames_uses_fps(obs):
    clip = ClipObservations.from_frames([obs, obs], fps=10, clip="c")
    assert clip.times.tolist() == [0.0, 0.1]
    assert clip.metadata == {"clip": "c"}
    with pytest.raises(ValueError, match="fps"):
        ClipObservations.from_frames([obs], fps=0)


def test_clip_reconstruction_places_and_saves(tmp_path):
    scene = make_scene(size=32)
    mesh_gen = scene.object_true.transformed(scene.gen_to_image_true.inverse())
    shift = Similarity(torch.tensor(1.0, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                       torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64))
    transforms = [scene.gen_to_image_true, shift.compose(scene.gen_to_image_true)]
    rec = ClipReconstruction(
        object_mesh_generator=mesh_gen, object_transforms=transforms,
        hand_meshes=[scene.hand_true, scene.hand_true],
        hand_similarities=[Similarity.identity()] * 2,
        times=torch.tensor([0.0, 0.1], dtype=torch.float64), reference=0,
        observed=[True, False], latent=torch.zeros(1, 4), history=None, timings={},
        schedule={"name": "x"}, seed=0, status="ok", counters={})
    m0, m1 = rec.object_meshes
    assert torch.allclose(m0.vertices.double(), scene.object_true.vertices.double(), atol=1e-6)
    assert torch.allclose(m1.vertices.double() - m0.vertices.double(),
                          torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64), atol=1e-6)
    with pytest.raises(IndexError):
        rec.object_mesh(2)
    out = rec.save(tmp_path / "clip")
    data = json.loads((out / "result.json").read_text())
    assert data["kind"] == CLIP_RESULT_KIND
    assert [f["observed"] for f in data["frames"]] == [True, False]
    assert (out / "object.glb").is_file() and (out / "object_generator.ply").is_file()
    assert sorted(p.name for p in (out / "hands").iterdir()) == ["hand_000.ply", "hand_001.ply"]
