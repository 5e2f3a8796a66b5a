"""hoiguide.guided_reconstruct, Reconstruction and editing a copied preset."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import numpy as np
import pytest
import torch

import hoiguide
from hoiguide.testing import GaussianGridBackbone, make_scene
from hoiguide.types import Mesh

SMALL = {"max_iterations": 2, "grid_resolution": 16, "render_size": 32, "final_resolution": 17}


@pytest.fixture(scope="module")
def backbone():
    return GaussianGridBackbone()


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def test_public_names():
    for name in ("guided_reconstruct", "Reconstruction", "load_schedule", "ScheduleError",
                 "FlowBackbone", "Observations"):
        assert hasattr(hoiguide, name)
    assert issubclass(hoiguide.ScheduleError, ValueError)


def test_missing_components_raise_clear_errors(backbone, scene):
    with pytest.raises(TypeError, match="missing 1 required argument: 'image' or 'observations'"):
        hoiguide.guided_reconstruct(backbone=backbone)
    # an image runs the adapter chain; a model that cannot be built is named (no downloads)
    from hoiguide.adapters import ModelLoadError, Models

    models = Models.from_dict({"segmentation": {"factory": f"python:{__name__}:_no_weights"}})
    with pytest.raises((ModelLoadError, FileNotFoundError), match="weights"):
        hoiguide.guided_reconstruct(image=scene.observations.object_image[..., :3],
                                    backbone=backbone, models=models, progress=False)
    with pytest.raises(TypeError, match="missing 1 required argument: 'backbone'"):
        hoiguide.guided_reconstruct(observations=scene.observations)
    with pytest.raises(TypeError, match="Observations"):
        hoiguide.guided_reconstruct(observations={"camera": 1}, backbone=backbone)
    with pytest.raises(ValueError, match="device"):
        hoiguide.guided_reconstruct(observations=scene.observations, backbone=backbone,
                                    device="meta")
    with pytest.raises(hoiguide.ScheduleError, match="phases\\[0\\].weights.silhuette.*"
                                                     "did you mean silhouette"):
        hoiguide.guided_reconstruct(observations=scene.observations, backbone=backbone,
                                    schedule={"name": "x", "phases": [{
                                        "name": "p", "window": {"start": 0.5, "end": 1.0},
                                        "iterations": 1, "optimize": {"velocity": 0.1},
                                        "weights": {"silhuette": 1.0}}]})


def test_reconstruct_and_save(backbone, scene, tmp_path):
    rec = hoiguide.guided_reconstruct(observations=scene.observations, backbone=backbone,
                                      schedule="fast", seed=1, progress=False, options=SMALL)
    assert isinstance(rec, hoiguide.Reconstruction) and rec.ok
    assert rec.seed == 1 and rec.schedule["name"] == "fast" and rec.schedule["num_steps"] == 8
    assert [p["name"] for p in rec.schedule["phases"]] == ["hand", "object", "joint"]
    assert rec.schedule["phases"][2]["steps"] == [5, 6, 7]
    assert rec.counters["iterations"] == 2 * 5
    # the object mesh is the generator-frame mesh mapped by object_similarity ∘ gen_to_image
    mapped = rec.object_transform.apply(rec.object_mesh_generator.vertices.double())
    assert torch.allclose(mapped, rec.object_mesh.vertices.double(), atol=1e-9)
    out = rec.save(tmp_path / "run")
    names = {p.name for p in out.iterdir()}
    assert {"object.glb", "object.ply", "hand.glb", "hand.ply", "scene.glb", "result.json",
            "history.json"} <= names
    obj = Mesh.load(out / "object.ply")
    assert obj.num_faces == rec.object_mesh.num_faces
    assert torch.allclose(obj.vertices.double(), rec.object_mesh.vertices.double(), atol=1e-5)
    data = json.loads((out / "result.json").read_text())
    assert data["status"] == "ok" and data["seed"] == 1
    assert data["schedule"]["name"] == "fast"
    assert data["counters"]["iterations"] == 10
    assert abs(data["hand_similarity"]["scale"] - float(rec.hand_similarity.scale)) < 1e-12
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 10 and hist[0]["phase"] == "hand"
    import trimesh
    sc = trimesh.load(str(out / "scene.glb"))
    assert len(sc.geometry) == 2


def test_copied_and_edited_preset_takes_effect(backbone, scene, tmp_path):
    """Copy the shipped `fast` preset, edit it, pass the path: the edit takes effect."""
    src = resources.files("hoiguide.phases") / "presets" / "fast.yaml"
    dst = tmp_path / "my_fast.yaml"
    text = src.read_text()
    assert "joint: {iterations: 5}" in text
    # an edited copy: 3 joint iterations, and `base` resolved from the package preset
    dst.write_text(text.replace("joint: {iterations: 5}", "joint: {iterations: 3}")
                   .replace("name: fast", "name: my_fast"))
    sched = hoiguide.load_schedule(str(dst))
    assert sched.name == "my_fast" and sched.phase("joint").iterations == 3
    assert "joint" in str(sched.resolve(8))
    rec = hoiguide.guided_reconstruct(observations=scene.observations, backbone=backbone,
                                      schedule=str(dst), progress=False,
                                      options={k: v for k, v in SMALL.items()
                                               if k != "max_iterations"} | {
                                          "max_iterations": 100})
    joint = rec.history.select("joint")
    assert len(joint) == 3 * 3  # 3 steps x 3 iterations (was 3 x 5)
    assert rec.schedule["name"] == "my_fast"
    # a broken copy names the YAML path
    dst.write_text(text.replace("joint: {iterations: 5}", "joint: {iterations: 5, "
                                "weights: {normel: 1.0}}"))
    with pytest.raises(hoiguide.ScheduleError, match="normel.*did you mean normal"):
        hoiguide.load_schedule(str(dst))


def _no_weights(**kwargs):
    raise FileNotFoundError("no weights here (test)")


_BUILT: list = []


def _records_build(**kwargs):
    _BUILT.append(kwargs)
    raise AssertionError("a model was built before the arguments were checked")


@pytest.mark.parametrize("bad, match", [
    (dict(image=np.zeros((32, 32, 3), np.complex64)), "uint8"),
    (dict(image=np.zeros((32, 32, 3), np.uint8), seed=-1), "seed"),
    (dict(image=np.zeros((32, 32, 3), np.uint8), object_name=""), "object_name"),
    (dict(image=np.zeros((32, 32, 3), np.uint8), schedule="no_such_preset"), "no_such_preset"),
    (dict(image=np.zeros((32, 32, 3), np.uint8), options={"grid_resolutio": 3}),
     "grid_resolution"),
])
def test_arguments_are_checked_before_any_model_is_built(bad, match):
    """Issue: a float64 image built the generator (18.7 s) before the dtype was reported."""
    from hoiguide.adapters import Models

    models = Models.from_dict({"generator": {"factory": f"python:{__name__}:_records_build"},
                               "segmentation": {"factory": f"python:{__name__}:_records_build"}})
    _BUILT.clear()
    with pytest.raises((TypeError, ValueError), match=match):
        hoiguide.guided_reconstruct(models=models, progress=False, **bad)
    assert _BUILT == []


def test_models_accepts_the_cli_names():
    from hoiguide.adapters import Models

    assert Models.load("offline").describe() == Models.offline().describe()
    assert Models.load("default").describe() == Models.default().describe()


def _missing_a(**kw):
    raise FileNotFoundError("no weights at /nowhere/a (run `hf download org/a`)")


def _missing_b(**kw):
    raise FileNotFoundError("no weights at /nowhere/b (run `hf download org/b`)")


def test_every_missing_model_is_listed_at_once():
    """A photo with no weights on disk: one error names every role that cannot be built."""
    from hoiguide.adapters import ModelLoadError, Models

    m = Models.from_dict({"segmentation": {"factory": f"python:{__name__}:_missing_a"},
                          "geometry": {"factory": f"python:{__name__}:_missing_b"},
                          "inpainting": {"kind": "opencv"}})
    with pytest.raises(ModelLoadError) as ei:
        m.build(["segmentation", "inpainting", "geometry"])
    msg = str(ei.value)
    assert msg.startswith("2 models cannot be built:")
    assert "models.segmentation" in msg and "hf download org/a" in msg
    assert "models.geometry" in msg and "hf download org/b" in msg
