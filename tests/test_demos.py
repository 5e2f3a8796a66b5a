"""Smoke-run every file in demos/ (in-process with runpy, fast settings), check that the
README's commands are the ones tested, and run the FlowBackbone contract on the demo's
user-written backbone.

The demos run on the session's saved 96x96 scene with the analytic test backbone where they
take ``--backbone``; the simulated observers' output is shared with test_demo.py (they are
exercised for real there).
"""

from __future__ import annotations

import importlib.util
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from test_backbones_contract import BackboneContract, make_object_image
from test_demo import observations_of

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ROOT / "demos"
ANALYTIC = "python:hoiguide.testing:GaussianGridBackbone"
OPTIONS = {"num_steps": 2, "max_iterations": 1, "grid_resolution": 12, "render_size": 24,
           "final_resolution": 17}


def load_demo_module(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scene_dir(synth_scene, tmp_path_factory):
    return synth_scene.save(tmp_path_factory.mktemp("demos_scene") / synth_scene.scene_id)


@pytest.fixture
def cached_observer(monkeypatch, synth_scene):
    import hoiguide.synth
    import hoiguide.synth.observers as observers

    calls = []

    def fake(scene, *, backbone=None, noise="default", seed=0, **kw):
        assert scene.scene_id == synth_scene.scene_id
        calls.append(seed)
        return observations_of(synth_scene)

    monkeypatch.setattr(observers, "simulate_observations", fake)
    # the package's lazy export may already hold the real function
    monkeypatch.setattr(hoiguide.synth, "simulate_observations", fake, raising=False)
    return calls


def run_script(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(DEMOS / f"{name}.py"), *args])
    runpy.run_path(str(DEMOS / f"{name}.py"), run_name="__main__")


# how CI smoke-runs each Python demo (a new demo without an entry here fails the test below)
SMOKE_ARGS = {
    "quickstart": lambda scene, out: ["--smoke", "--scene", scene, "--backbone", ANALYTIC,
                                      "--out", out],
    "custom_backbone": lambda scene, out: ["--smoke", "--scene", scene, "--out", out],
}


def test_every_demo_is_smoke_run_and_documented():
    readme = (DEMOS / "README.md").read_text()
    for p in sorted(DEMOS.iterdir()):
        if p.suffix == ".py":
            assert p.stem in SMOKE_ARGS, f"demos/{p.name} has no smoke run in {__file__}"
        if p.suffix in (".py", ".yaml"):
            assert f"demos/{p.name}" in readme, f"demos/README.md does not mention {p.name}"
    assert "hoiguide demo --preset demos/custom_schedule.yaml --out out/custom" in readme


@pytest.mark.parametrize("name", sorted(SMOKE_ARGS))
def test_python_demo_smoke_run(name, tmp_path, scene_dir, cached_observer, monkeypatch,
                               capsys):
    out = tmp_path / name
    run_script(name, SMOKE_ARGS[name](str(scene_dir), str(out)), monkeypatch)
    printed = capsys.readouterr().out
    assert "status='ok'" in printed
    assert re.search(r"CD \d+\.\d+ cm\^2 +F5 \d\.\d+ +F10 \d\.\d+ +IV \d+\.\d+ cm\^3", printed)
    for f in ("object.glb", "hand.ply", "scene.glb", "result.json"):
        assert (out / f).is_file(), f
    r = json.loads((out / "result.json").read_text())
    assert r["status"] == "ok" and r["schedule"]["name"] == "fast"
    assert r["schedule"]["num_steps"] == 2 and cached_observer == [0]


def test_custom_schedule_with_the_readme_command(tmp_path, scene_dir, cached_observer,
                                                 monkeypatch, capsys):
    """`hoiguide demo --preset demos/custom_schedule.yaml --out ...` (fast settings), with the
    demo's own backbone plugged in by name (`--backbone python:custom_backbone:...`)."""
    from hoiguide.cli import main
    import hoiguide.apps.scene

    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(DEMOS))
    monkeypatch.setattr(hoiguide.apps.scene, "TURNTABLE_TILE", 24)
    out = tmp_path / "custom"
    opts = [a for k, v in OPTIONS.items() for a in ("--option", f"{k}={v}")]
    code = main(["-q", "demo", "--preset", "demos/custom_schedule.yaml", "--out", str(out),
                 "--scene", str(scene_dir), "--backbone",
                 "python:custom_backbone:TwoBlobBackbone", "--num-samples", "1500", "--views",
                 "2", *opts])
    assert code == 0, capsys.readouterr()
    r = json.loads((out / "result.json").read_text())
    assert r["status"] == "ok" and r["preset"] == "custom"
    assert r["backbone"] == "python:custom_backbone:TwoBlobBackbone"
    assert r["schedule_definition"]["phases"][0]["iterations"] == 15


def test_custom_schedule_resolves_as_its_comments_say():
    from hoiguide.phases import load_schedule

    sched = load_schedule(DEMOS / "custom_schedule.yaml")
    assert sched.name == "custom" and sched.num_steps == 10
    resolved = {p.name: (list(p.steps), p.iterations) for p in sched.resolve(10)}
    assert resolved == {"hand": ([3, 4], 15), "object": ([5], 10),
                        "joint": ([6, 7, 8, 9], 4)}
    fast = {p.name: p for p in load_schedule("fast").phases}
    mine = {p.name: p for p in sched.phases}

    def weights(phases, name):
        return {t.label: t.weight for t in phases[name].weights}

    changed = {("hand", "keypoints_2d"): 3.0e-2, ("object", "silhouette"): 200.0,
               ("joint", "proximity"): 20.0}
    for (phase, term), value in changed.items():
        assert weights(mine, phase)[term] == value != weights(fast, phase)[term]
    assert "vertex_l2" in weights(fast, "joint") and "vertex_l2" not in weights(mine, "joint")
    # everything else is inherited from fast
    for name in ("hand", "object", "joint"):
        assert mine[name].optimize == fast[name].optimize
        assert mine[name].optimizer == fast[name].optimizer
        same = {k: v for k, v in weights(mine, name).items()
                if (name, k) not in changed}
        assert same == {k: v for k, v in weights(fast, name).items() if k in same}


# --------------------------------------------------------------------------------------
# the user-written backbone of demos/custom_backbone.py
# --------------------------------------------------------------------------------------


class TestTwoBlobContract(BackboneContract):
    """The demo's backbone passes the same contract as the library's backbones."""

    @classmethod
    def make_backbone(cls):
        return load_demo_module("custom_backbone").TwoBlobBackbone()

    def test_condition_follows_the_object_image(self, backbone):
        wide = backbone.encode_condition(make_object_image(size=(20, 60)))["mean"]
        tall = backbone.encode_condition(make_object_image(size=(60, 20)))["mean"]
        ax_w, ax_t = wide[0, 3:].exp(), tall[0, 3:].exp()
        assert ax_w[0] > 2 * ax_w[1] and ax_t[1] > 2 * ax_t[0]

    def test_decoded_field_is_the_smooth_union(self, backbone):
        lat = torch.tensor([[[0.0, 0, 0, 0, 0, 0], [3.0, 0, 0, -1.0, -1.0, -1.0]]])  # r 1, far
        pts = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [1.5, 0, 0], [0, 0.9, 0]])
        sdf = backbone.decode_sdf(lat, pts)[0]
        # far from the second blob the union is the first blob's |p| - 1
        torch.testing.assert_close(sdf, pts.norm(dim=-1) - 1.0, atol=1e-6, rtol=0)
