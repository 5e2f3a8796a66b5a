"""`hoiguide bench` end to end through hoiguide.cli.main, with a python: backbone factory
defined here (the analytic GaussianGridBackbone) and a local stand-in for the simulated
observers (``hoiguide.synth.observers.simulate_observations``), so the test does not depend
on their noise models."""

from __future__ import annotations

import json
import logging
import sys
import types

import pytest

from hoiguide.testing import GaussianGridBackbone
from hoiguide.cli import main
from test_eval_bench import make_scene_set, observations_from_scene, parse_table, two_step_preset

BACKBONE = f"python:{__name__}:make_backbone"
OPTS = ["--option", "num_steps=2", "--option", "max_iterations=1",
        "--option", "grid_resolution=12", "--option", "render_size=24",
        "--option", "final_resolution=17", "--num-samples", "1500"]
CALLS: list[tuple] = []


def make_backbone():
    return GaussianGridBackbone()


def fake_simulate_observations(scene, *, backbone=None, noise="default", seed=0):
    CALLS.append((scene.scene_id, noise, seed))
    if scene.scene_id == "s1":
        raise RuntimeError("observer could not find the hand")
    assert isinstance(backbone, GaussianGridBackbone)
    return observations_from_scene(scene)


@pytest.fixture
def observers(monkeypatch):
    mod = types.ModuleType("hoiguide.synth.observers")
    mod.simulate_observations = fake_simulate_observations
    monkeypatch.setitem(sys.modules, "hoiguide.synth.observers", mod)
    CALLS.clear()
    return CALLS


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return make_scene_set(tmp_path_factory.mktemp("cli_scenes"), n=2)


def test_bench_end_to_end(scene_dir, tmp_path, observers, capsys):
    preset = two_step_preset(tmp_path)
    out = tmp_path / "out"
    argv = ["-q", "bench", "--scenes", str(scene_dir), "--preset", "unguided",
            "--preset", str(preset), "--out", str(out), "--backbone", BACKBONE,
            "--noise", "0.25", "--seed", "7", *OPTS]
    assert main(argv) == 0  # completed, although scene s1 failed
    assert [c[:2] for c in observers] == [("s0", 0.25), ("s1", 0.25)]
    data = json.loads((out / "summary.json").read_text())
    assert list(data["presets"]) == ["unguided", "t"]
    for s in data["presets"].values():
        assert {"cd_cm2", "f5", "f10", "iv_cm3", "rr", "seconds"} <= set(s)
        for k in ("cd_cm2", "f5", "f10", "iv_cm3", "seconds"):
            assert set(s[k]) == {"mean", "median"} and s[k]["mean"] is not None
        assert (s["rr"], s["n"], s["n_ok"]) == (0.5, 2, 1)
    r = json.loads((out / "t" / "s1.json").read_text())
    assert (r["status"], r["phase"]) == ("failed", "observe")
    assert r["reason"] == "RuntimeError: observer could not find the hand"
    assert r["config"]["backbone"] == BACKBONE and r["config"]["noise"] == 0.25
    md = (out / "summary.md").read_text()
    assert "hoiguide -q bench --scenes" in md and "--seed 7" in md
    printed = parse_table(capsys.readouterr().out)
    assert list(printed) == ["unguided", "t"] and printed["t"][6] == "0.50 (1/2)"
    # re-running skips everything
    observers.clear()
    assert main(argv) == 0
    assert observers == []
    # --overwrite with --limit recomputes only the first scene
    assert main(argv + ["--overwrite", "--limit", "1"]) == 0
    assert [c[0] for c in observers] == ["s0"]


def test_save_meshes_and_default_noise(scene_dir, tmp_path, observers):
    out = tmp_path / "out"
    assert main(["-q", "bench", "--scenes", str(scene_dir), "--preset", "unguided", "--out",
                 str(out), "--backbone", BACKBONE, "--limit", "1", "--save-meshes",
                 *OPTS]) == 0
    assert observers[0][1] == "default"
    assert (out / "unguided" / "s0" / "object.ply").is_file()
    assert (out / "unguided" / "s0" / "hand.ply").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--preset", "unguidd"], "unguidd"),
    (["--preset", "unguided", "--preset", "unguided"], "two presets are named 'unguided'"),
    (["--preset", "unguided", "--backbone", "nonsense"], "--backbone: expected tiny"),
    (["--preset", "unguided", "--backbone", "python:no_such_module_xyz:f"], "cannot import"),
    (["--preset", "unguided", "--backbone", f"python:{__name__}:nothing"], "no callable"),
    (["--preset", "unguided", "--noise", "loud"], "--noise"),
    (["--preset", "unguided", "--option", "grid_resolutio=3"], "did you mean grid_resolution"),
    (["--preset", "unguided", "--limit", "0"], "--limit"),
])
def test_usage_errors_exit_2_with_one_line(scene_dir, tmp_path, observers, caplog, extra,
                                           message):
    argv = ["bench", "--scenes", str(scene_dir), "--out", str(tmp_path / "o"),
            "--backbone", BACKBONE, *extra]
    # later options win: the parametrised --backbone replaces the default one above
    with caplog.at_level(logging.ERROR, logger="hoiguide"):
        assert main(argv) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage() and errors[0].exc_info is None
    assert observers == [] and not (tmp_path / "o").exists()


def test_no_scenes_exit_2(tmp_path, observers, caplog):
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.ERROR, logger="hoiguide"):
        assert main(["bench", "--scenes", str(tmp_path / "empty"), "--preset", "unguided",
                     "--out", str(tmp_path / "o"), "--backbone", BACKBONE]) == 2
    assert "no scenes" in caplog.text


def test_tiny_backbone_missing_is_explained(scene_dir, tmp_path, observers, caplog,
                                            monkeypatch):
    """A bundled generator whose weights are missing: one line naming the file, exit 2,
    nothing written."""
    import hoiguide.backbones.bundled as bundled

    def missing(device=None):
        raise FileNotFoundError("no weights at /x/tiny/model.safetensors (reinstall hoiguide)")

    monkeypatch.setattr(bundled, "tiny", missing)
    with caplog.at_level(logging.ERROR, logger="hoiguide"):
        assert main(["bench", "--scenes", str(scene_dir), "--preset", "unguided",
                     "--out", str(tmp_path / "o")]) == 2
    assert "--backbone tiny: no weights at /x/tiny/model.safetensors" in caplog.text
    assert not (tmp_path / "o").exists()


def test_other_subcommands_still_work(capsys):
    assert main(["schedule", "fast", "--steps", "8"]) == 0
    assert "joint" in capsys.readouterr().out
