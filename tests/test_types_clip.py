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


def test_frame_reconstruction_is_that_frames_object_and_hand(tmp_path):
    scene = make_scene(size=32)
    mesh_gen = scene.object_true.transformed(scene.gen_to_image_true.inverse())
    f64 = torch.float64
    shift = Similarity(torch.tensor(1.0, dtype=f64), torch.eye(3, dtype=f64),
                       torch.tensor([0.02, -0.01, 0.0], dtype=f64))
    hand_sim = Similarity(torch.tensor(1.1, dtype=f64), torch.eye(3, dtype=f64),
                          torch.zeros(3, dtype=f64))
    hand1 = scene.hand_true.transformed(shift)
    rec = ClipReconstruction(
        object_mesh_generator=mesh_gen,
        object_transforms=[scene.gen_to_image_true, shift.compose(scene.gen_to_image_true)],
        hand_meshes=[scene.hand_true, hand1],
        hand_similarities=[Similarity.identity(), hand_sim],
        times=torch.tensor([0.0, 0.1], dtype=f64), reference=1, observed=[True, True],
        latent=torch.zeros(1, 4), history=None, timings={"total": 1.0},
        schedule={"name": "x"}, seed=5, status="ok", counters={"iterations": 3})
    for t in (0, 1, -1):
        fr = rec.frame_reconstruction(t)
        assert isinstance(fr, hoiguide.Reconstruction)
        assert torch.allclose(fr.object_mesh.vertices, rec.object_mesh(t).vertices)
        assert fr.hand_mesh is rec.hand_meshes[t]
        assert fr.hand_similarity is rec.hand_similarities[t]
        # the single-image result's object transform is the frame's generator -> image map
        v = mesh_gen.vertices.double()
        assert torch.allclose(fr.object_transform.apply(v), rec.object_transforms[t].apply(v),
                              atol=1e-9)
        assert (fr.seed, fr.status, fr.counters) == (5, "ok", {"iterations": 3})
    # frame 1 is the reference and the default; frame 0's object is 2 cm to the left of it
    assert torch.equal(rec.frame_reconstruction().object_mesh.vertices,
                       rec.frame_reconstruction(1).object_mesh.vertices)
    d = rec.frame_reconstruction(1).object_mesh.vertices.double() - \
        rec.frame_reconstruction(0).object_mesh.vertices.double()
    assert torch.allclose(d, torch.tensor([0.02, -0.01, 0.0], dtype=f64), atol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        rec.frame_reconstruction(2)
    # save writes the reference frame's meshes: object.ply is frame 1's object
    out = rec.save(tmp_path / "clip")
    import trimesh

    saved = torch.as_tensor(trimesh.load(out / "object.ply", process=False).vertices)
    assert torch.allclose(saved, rec.object_mesh(1).vertices.double(), atol=1e-5)
