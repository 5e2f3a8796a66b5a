"""hoiguide.apps.bench: the benchmark runner (run_benchmark, summarize, format_table).

Scenes are tiny (64x64) renders of the analytic test scene (an ellipsoid held by a capsule
"hand"); observations are built from each scene's own ground truth by a counting observer
written here (the simulated foundation models arrive separately); the backbone is the
analytic GaussianGridBackbone; presets run 2 flow steps with 1 inner iteration.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hoiguide.testing import GaussianGridBackbone, make_scene
from hoiguide.eval import hand_aligned_metrics
from hoiguide.apps.bench import (BenchmarkError, format_budget, format_table, run_benchmark, scene_seed,
                                 summarize)
from hoiguide.phases import ScheduleError
from hoiguide.synth.scene import Scene, write_manifest
from hoiguide.types import Camera, Mesh, Observations, Similarity

OPTIONS = {"num_steps": 2, "max_iterations": 1, "grid_resolution": 12, "render_size": 24,
           "final_resolution": 17}
FAST_KW = dict(options=OPTIONS, num_samples=1500, progress=False)
HAND_OFFSETS = ((0.0, 0.028, -0.012), (0.004, 0.026, -0.014), (-0.004, 0.03, -0.012))


# --------------------------------------------------------------------------------------
# helpers (also used by test_cli_bench.py)
# --------------------------------------------------------------------------------------


def make_scene_set(directory: Path, n: int = 3, size: int = 64) -> Path:
    """``n`` scenes in the hoiguide-synth format; the true generator -> image similarity
    is kept in each scene's metadata for the test observer."""
    entries = []
    for i in range(n):
        sc = make_scene(size=size, hand_offset=HAND_OFFSETS[i % len(HAND_OFFSETS)])
        o = sc.observations
        disp = o.target_disparity.numpy()
        depth = np.where(disp > 0, 1.0 / np.maximum(disp, 1e-9), 0.0)
        kp3 = sc.hand_true.vertices[:21].numpy()
        scene = Scene(
            scene_id=f"s{i}", camera=sc.camera,
            image=np.full((size, size, 3), 128, np.uint8),
            mask_hand=o.mask_hand.numpy(), mask_object=o.mask_object.numpy(),
            mask_hand_amodal=o.mask_hand.numpy(),
            mask_object_amodal=o.mask_object_amodal.numpy(),
            depth=depth, normals=o.target_normals.numpy(),
            hand_mesh=sc.hand_true, object_mesh=sc.object_true,
            hand_keypoints_3d=kp3, keypoints_2d=sc.camera.project(torch.as_tensor(kp3)).numpy(),
            metadata={"gen_to_image": sc.gen_to_image_true.to_dict()},
            object_source=f"pybullet:{598 + i:03d}")   # s0, s1: "trained on"; s2: not
        scene.save(directory / f"s{i}")
        entries.append({"id": f"s{i}", "path": f"s{i}"})
    write_manifest(directory, entries, seed=0)
    return directory


class Observer:
    """observe(scene, seed) -> Observations from the scene's ground truth; counts calls and
    raises for the scene ids in ``fail``."""

    def __init__(self, fail=(), interrupt=()):
        self.calls: list[tuple[str, int]] = []
        self.fail = set(fail)
        self.interrupt = set(interrupt)

    def __call__(self, scene: Scene, seed: int) -> Observations:
        self.calls.append((scene.scene_id, seed))
        if scene.scene_id in self.interrupt:
            raise KeyboardInterrupt
        if scene.scene_id in self.fail:
            raise RuntimeError("simulated observer failure")
        return observations_from_scene(scene)


def observations_from_scene(scene: Scene) -> Observations:
    depth = torch.as_tensor(scene.depth)
    valid = depth > 0
    return Observations(
        camera=scene.camera, object_image=np.full((32, 32, 4), 200, np.uint8),
        mask_hand=torch.as_tensor(scene.mask_hand), mask_object=torch.as_tensor(scene.mask_object),
        mask_object_amodal=torch.as_tensor(scene.mask_object_amodal),
        hand_mesh=scene.hand_mesh.to(dtype=torch.float32),
        hand_keypoints_3d=torch.as_tensor(scene.hand_keypoints_3d),
        keypoints_2d=torch.as_tensor(scene.keypoints_2d),
        target_normals=torch.as_tensor(scene.normals),
        target_disparity=torch.where(valid, 1.0 / depth.clamp_min(1e-9), torch.zeros_like(depth)),
        target_valid=valid,
        gen_to_image=Similarity.from_dict(scene.metadata["gen_to_image"]),
        metadata={"scene_id": scene.scene_id})


def two_step_preset(directory: Path, name: str = "t") -> Path:
    p = directory / f"{name}.yaml"
    p.write_text(f"base: fast\nname: {name}\nnum_steps: 2\n")
    return p


def load_results(out: Path, preset: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / preset).glob("*.json"))}


def parse_table(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return make_scene_set(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def backbone():
    return GaussianGridBackbone()


@pytest.fixture(scope="module")
def main_run(scene_dir, backbone, tmp_path_factory):
    """unguided + a 2-step guided preset on 3 scenes; the observer fails on s1."""
    tmp = tmp_path_factory.mktemp("bench")
    preset = two_step_preset(tmp)
    out = tmp / "out"
    obs = Observer(fail={"s1"})
    summary = run_benchmark(scene_dir, ["unguided", preset], out, backbone=backbone,
                            observe=obs, seed=3, **FAST_KW)
    return SimpleNamespace(out=out, summary=summary, observer=obs, preset=preset)


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


def test_scene_seed_is_stable_and_distinct():
    # SHA-256 based: the same value in every process (Python's str hash is salted)
    assert scene_seed(0, "s0") == scene_seed(0, "s0") == 1187585433
    seeds = {scene_seed(s, i) for s in range(3) for i in ("a", "b", "c")}
    assert len(seeds) == 9 and all(0 <= x < 2 ** 31 for x in seeds)


def test_layout_failures_and_rr(main_run):
    out, summary = main_run.out, main_run.summary
    assert {p.name for p in out.iterdir()} >= {"unguided", "t", "summary.json", "summary.md",
                                               "run.json"}
    for preset in ("unguided", "t"):
        res = load_results(out, preset)
        assert sorted(res) == ["s0", "s1", "s2"]
        assert res["s1"]["status"] == "failed" and res["s1"]["phase"] == "observe"
        assert res["s1"]["reason"] == "RuntimeError: simulated observer failure"
        assert "simulated observer failure" in res["s1"]["traceback"]
        assert res["s1"]["metrics"] is None
        for sid in ("s0", "s2"):
            r = res[sid]
            assert r["status"] == "ok" and r["reason"] is None, r
            assert set(r["metrics"]) == {"cd_cm2", "f5", "f10", "iv_cm3", "hidden_cd_cm2",
                                         "hidden_f10", "hidden_fraction", "components",
                                         "components_raw", "shape_cd_cm2",
                                         "placement_scale_pct", "placement_rotation_deg",
                                         "placement_translation_cm"}
            # the error budget: the shape error cannot exceed the hand-aligned total
            assert r["metrics"]["shape_cd_cm2"] <= r["metrics"]["cd_cm2"] + 1e-9
            assert 0 <= r["metrics"]["f5"] <= r["metrics"]["f10"] <= 1
            # hidden side: part of the true surface is out of view; the mesh has parts
            m = r["metrics"]
            assert 0 < m["hidden_fraction"] < 1 and 0 <= m["hidden_f10"] <= 1
            assert m["hidden_cd_cm2"] >= 0
            assert m["components_raw"] >= m["components"] >= 1
            assert r["seconds"]["total"] >= r["seconds"]["reconstruct"] > 0
            assert r["seed"] == scene_seed(3, sid) and r["num_steps"] == 2
        s = summary["presets"][preset]
        assert (s["n"], s["n_ok"]) == (3, 2) and s["rr"] == pytest.approx(2 / 3)
        assert s["failures"] == [{"scene_id": "s1", "phase": "observe",
                                  "reason": "RuntimeError: simulated observer failure"}]
    # the guided preset ran its inner iterations, the unguided baseline none
    assert load_results(out, "t")["s0"]["counters"]["iterations"] > 0
    assert load_results(out, "unguided")["s0"]["counters"]["iterations"] == 0


def test_observations_computed_once_per_scene(main_run):
    # scenes outer, presets inner: one observer call per scene, with the per-scene seed
    assert main_run.observer.calls == [(f"s{i}", scene_seed(3, f"s{i}")) for i in range(3)]


def test_summary_shape_and_values(main_run):
    data = json.loads((main_run.out / "summary.json").read_text())
    assert list(data["presets"]) == ["unguided", "t"]
    for name, s in data["presets"].items():
        for key in ("cd_cm2", "f5", "f10", "iv_cm3", "hidden_cd_cm2", "components", "seconds"):
            assert set(s[key]) == {"mean", "median"}
        assert isinstance(s["rr"], float)
        res = [r for r in load_results(main_run.out, name).values() if r["status"] == "ok"]
        for key in ("cd_cm2", "f5", "f10", "iv_cm3"):
            vals = [r["metrics"][key] for r in res]
            assert s[key]["mean"] == pytest.approx(sum(vals) / len(vals), rel=1e-12)
            assert s[key]["median"] == pytest.approx(statistics.median(vals), rel=1e-12)
        secs = [r["seconds"]["reconstruct"] for r in res]
        assert s["seconds"]["mean"] == pytest.approx(sum(secs) / len(secs), rel=1e-12)
    assert data == json.loads(json.dumps(main_run.summary))  # what was returned


def test_markdown_and_format_table_match_summary(main_run):
    summary = main_run.summary
    md = (main_run.out / "summary.md").read_text()
    for name in ("unguided", "t"):
        # mean, median and the error budget
        assert len(re.findall(rf"^\| {name} \|", md, flags=re.M)) == 3
    assert ("| preset | CD (cm^2) ↓ | F5 ↑ | F10 ↑ | IV (cm^3) ↓ | hidden CD (cm^2) ↓ | "
            "parts ↓ | RR ↑ | s/scene |") in md
    assert "## Median over scenes" in md and "s1 (observe)" in md
    assert "GaussianGridBackbone" in md and "seed: 3" in md
    for stat in ("mean", "median"):
        table = format_table(summary, stat=stat)
        assert table in md
        rows = parse_table(table)
        assert list(rows) == ["unguided", "t"]
        for name, cells in rows.items():
            s = summary["presets"][name]
            for cell, key, digits in zip(cells, ("cd_cm2", "f5", "f10", "iv_cm3",
                                                 "hidden_cd_cm2", "components"),
                                         (3, 3, 3, 2, 3, 1)):
                assert abs(float(cell) - s[key][stat]) <= 0.5 * 10 ** -digits + 1e-12
            assert cells[6] == "0.67 (2/3)"
            assert abs(float(cells[7]) - s["seconds"][stat]) <= 0.005 + 1e-12
    budget = parse_table(format_budget(summary))
    assert list(budget) == ["unguided", "t"] and format_budget(summary) in md
    for name, cells in budget.items():
        s = summary["presets"][name]
        for cell, key in zip(cells, ("cd_cm2", "shape_cd_cm2", "placement_scale_pct",
                                     "placement_rotation_deg", "placement_translation_cm")):
            assert abs(float(cell) - s[key]["median"]) <= 0.05 + 1e-12
        assert float(cells[1]) <= float(cells[0]) + 1e-3   # shape <= total
    with pytest.raises(ValueError, match="stat"):
        format_table(summary, stat="max")
    with pytest.raises(ValueError, match="presets"):
        format_table({"x": 1})


def test_format_table_with_no_successes():
    summary = {"presets": {"p": {"cd_cm2": {"mean": None, "median": None},
                                 "f5": {"mean": None, "median": None},
                                 "f10": {"mean": None, "median": None},
                                 "iv_cm3": {"mean": None, "median": None},
                                 "rr": 0.0, "n": 2, "n_ok": 0,
                                 "seconds": {"mean": None, "median": None}}}}
    assert parse_table(format_table(summary))["p"] == ["–"] * 6 + ["0.00 (0/2)", "–"]


def test_rerun_skips_overwrite_and_config_change_recompute(scene_dir, backbone, tmp_path):
    preset = two_step_preset(tmp_path)
    out = tmp_path / "out"
    obs = Observer(fail={"s1"})
    run_benchmark(scene_dir, ["unguided"], out, backbone=backbone, observe=obs, limit=2,
                  **FAST_KW)
    assert [c[0] for c in obs.calls] == ["s0", "s1"]
    before = (out / "unguided" / "s0.json").read_bytes()
    # more scenes and one more preset: s0/s1 re-observed only for the new preset, the
    # finished unguided results are kept byte for byte; s2 is new for both
    obs.calls.clear()
    summary = run_benchmark(scene_dir, ["unguided", preset], out, backbone=backbone,
                            observe=obs, **FAST_KW)
    assert [c[0] for c in obs.calls] == ["s0", "s1", "s2"]
    assert (out / "unguided" / "s0.json").read_bytes() == before
    assert summary["presets"]["unguided"]["n"] == 3 and summary["presets"]["t"]["n"] == 3
    # everything done (failures included): nothing is observed or reconstructed again
    obs.calls.clear()
    summary2 = run_benchmark(scene_dir, ["unguided", preset], out, backbone=backbone,
                             observe=obs, **FAST_KW)
    assert obs.calls == []
    assert summary2["presets"] == summary["presets"]
    # overwrite recomputes
    run_benchmark(scene_dir, ["unguided"], out, backbone=backbone, observe=obs,
                  overwrite=True, **FAST_KW)
    assert [c[0] for c in obs.calls] == ["s0", "s1", "s2"]
    # a changed configuration (noise) recomputes; the summary only counts fresh results
    obs.calls.clear()
    s3 = run_benchmark(scene_dir, ["unguided"], out, backbone=backbone, observe=obs,
                       noise=0.5, limit=1, **FAST_KW)
    assert [c[0] for c in obs.calls] == ["s0"]
    assert s3["presets"]["unguided"]["n"] == 1 and s3["presets"]["unguided"]["n_stale"] == 2
    assert s3["presets"]["t"]["n"] == 3  # the other preset's results are untouched
    assert "t was run with" in (out / "summary.md").read_text()


def test_reconstruction_and_metric_failures_are_recorded(scene_dir, backbone, tmp_path,
                                                         monkeypatch):
    import dataclasses

    import hoiguide.apps.score as score

    real = score.GuidedSampler

    class Fake(real):
        def run(self, observations, **kw):
            sid = observations.metadata["scene_id"]
            if sid == "s0":
                raise ValueError("boom in the engine")
            rec = super().run(observations, **kw)
            return dataclasses.replace(rec, status="empty object mesh") if sid == "s1" else rec

    real_metrics = score.hand_aligned_metrics

    def fake_metrics(*a, **kw):
        raise FloatingPointError("bad metric")

    monkeypatch.setattr(score, "GuidedSampler", Fake)
    out = tmp_path / "out"
    summary = run_benchmark(scene_dir, ["unguided"], out, backbone=backbone,
                            observe=Observer(), limit=2, **FAST_KW)
    res = load_results(out, "unguided")
    assert (res["s0"]["phase"], res["s0"]["reason"]) == ("reconstruct",
                                                        "ValueError: boom in the engine")
    assert res["s1"]["phase"] == "reconstruct"
    assert res["s1"]["reason"] == "reconstruction status: empty object mesh"
    assert res["s1"]["reconstruction_status"] == "empty object mesh"
    assert summary["presets"]["unguided"]["rr"] == 0.0
    assert summary["presets"]["unguided"]["cd_cm2"] == {"mean": None, "median": None}
    # a metric failure
    monkeypatch.setattr(score, "GuidedSampler", real)
    monkeypatch.setattr(score, "hand_aligned_metrics", fake_metrics)
    run_benchmark(scene_dir, ["unguided"], out, backbone=backbone, observe=Observer(),
                  limit=1, overwrite=True, **FAST_KW)
    r = load_results(out, "unguided")["s0"]
    assert (r["phase"], r["reason"]) == ("metrics", "FloatingPointError: bad metric")
    assert r["reconstruction_status"] == "ok" and r["seconds"]["reconstruct"] > 0
    assert real_metrics is not fake_metrics


def test_perfect_prediction_scores_perfectly(scene_dir, backbone, tmp_path, monkeypatch):
    """A reconstruction that returns the ground truth (hand and object) must score CD 0,
    F5 = F10 = 1: checks that prediction and truth are wired the right way round."""
    import hoiguide.apps.score as score

    class Oracle:
        def __init__(self, *a, **kw):
            pass

        def run(self, observations, **kw):
            scene = Scene.load(scene_dir / observations.metadata["scene_id"])
            return SimpleNamespace(ok=True, status="ok", counters={"iterations": 0},
                                   timings={}, num_steps=2, object_mesh=scene.object_mesh,
                                   hand_mesh=scene.hand_mesh)

    monkeypatch.setattr(score, "GuidedSampler", Oracle)
    s = run_benchmark(scene_dir, ["unguided"], tmp_path / "o", backbone=backbone,
                      observe=Observer(), limit=2, **FAST_KW)["presets"]["unguided"]
    assert s["rr"] == 1.0
    assert s["cd_cm2"]["mean"] < 1e-10 and s["f5"]["mean"] == 1.0 and s["f10"]["mean"] == 1.0
    # the object is not inside the hand here: IV is that of the true pair
    sc = Scene.load(scene_dir / "s0")
    direct = hand_aligned_metrics(sc.hand_mesh, sc.object_mesh, sc.hand_mesh, sc.object_mesh,
                                  num_samples=1500, seed=scene_seed(0, "s0"))
    assert load_results(tmp_path / "o", "unguided")["s0"]["metrics"]["iv_cm3"] == \
        pytest.approx(direct["iv_cm3"], abs=1e-12)


def test_saved_meshes_reproduce_the_metrics(scene_dir, backbone, tmp_path):
    out = tmp_path / "out"
    run_benchmark(scene_dir, ["unguided"], out, backbone=backbone, observe=Observer(),
                  limit=1, save_meshes=True, **FAST_KW)
    d = out / "unguided" / "s0"
    obj, hand = Mesh.load(d / "object.ply", torch.float64), Mesh.load(d / "hand.ply",
                                                                        torch.float64)
    sc = Scene.load(scene_dir / "s0")
    m = hand_aligned_metrics(hand, obj, sc.hand_mesh, sc.object_mesh, num_samples=1500,
                             seed=scene_seed(0, "s0"))
    r = load_results(out, "unguided")["s0"]["metrics"]
    assert r["cd_cm2"] == pytest.approx(m["cd_cm2"], rel=1e-3)  # float32 PLY round trip
    assert r["f10"] == pytest.approx(m["f10"], abs=2e-3)


def test_keyboard_interrupt_is_not_swallowed(scene_dir, backbone, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(scene_dir, ["unguided"], out, backbone=backbone,
                      observe=Observer(interrupt={"s1"}), **FAST_KW)
    assert sorted(load_results(out, "unguided")) == ["s0"]  # the finished scene is kept
    s = summarize(out)["presets"]["unguided"]
    assert s["n"] == 1 and s["rr"] == 1.0


def test_bad_inputs_raise_before_running(scene_dir, backbone, tmp_path):
    obs = Observer()
    kw = dict(backbone=backbone, observe=obs, **FAST_KW)
    two = two_step_preset(tmp_path, "unguided")  # same name as the shipped preset
    with pytest.raises(BenchmarkError, match="two presets are named 'unguided'"):
        run_benchmark(scene_dir, ["unguided", two], tmp_path / "o", **kw)
    with pytest.raises(ScheduleError, match="unguidd"):
        run_benchmark(scene_dir, ["unguidd"], tmp_path / "o", **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError, match="no scenes"):
        run_benchmark(tmp_path / "empty", ["unguided"], tmp_path / "o", **kw)
    with pytest.raises(BenchmarkError, match="no such scene folder"):
        run_benchmark(tmp_path / "missing", ["unguided"], tmp_path / "o", **kw)
    with pytest.raises(BenchmarkError, match="limit"):
        run_benchmark(scene_dir, ["unguided"], tmp_path / "o", limit=0, **kw)
    with pytest.raises(BenchmarkError, match="backbone"):
        run_benchmark(scene_dir, ["unguided"], tmp_path / "o", backbone=None, observe=obs)
    assert obs.calls == [] and not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError):
        summarize(tmp_path / "nothing")


def test_camera_roundtrip_of_scene_fixture(scene_dir):
    # guards the fixture itself: what the runner loads is what make_scene rendered
    sc = Scene.load(scene_dir / "s0")
    assert isinstance(sc.camera, Camera) and sc.size == (64, 64)
    assert sc.mask_object.sum() > 50 and sc.mask_hand.sum() > 20


def test_training_objects_are_flagged():
    from hoiguide.apps.score import in_training_set

    pats = ("pybullet:0-599", "procedural:*")
    assert in_training_set("pybullet:538", pats) and in_training_set("pybullet:000", pats)
    assert not in_training_set("pybullet:600", pats)
    assert not in_training_set("pybullet:735", pats)
    assert in_training_set("procedural:mug", pats)
    assert in_training_set("procedural:knife@10003", ("procedural:knife@10000-10999",))
    assert not in_training_set("procedural:knife@20003", ("procedural:knife@10000-10999",))
    assert not in_training_set("procedural:mug", ("procedural:knife",))
    assert not in_training_set(None, pats)


def test_bundled_generator_records_its_training_objects():
    from hoiguide.backbones import tiny

    assert tiny().training_objects == ("pybullet:0-599", "procedural:*")


def test_bench_flags_scenes_of_training_objects(scene_dir, tmp_path, caplog):
    bb = GaussianGridBackbone()
    bb.training_objects = ("pybullet:0-599",)
    with caplog.at_level("WARNING", logger="hoiguide.apps.bench"):
        summary = run_benchmark(scene_dir, ["unguided"], tmp_path / "o", backbone=bb,
                                observe=Observer(), **FAST_KW)
    res = load_results(tmp_path / "o", "unguided")
    assert [res[s]["object_in_training_set"] for s in ("s0", "s1", "s2")] == [True, True, False]
    assert summary["presets"]["unguided"]["n_trained_objects"] == 2
    assert "pybullet:598, an object the backbone was trained on" in caplog.text
    assert "2 scene(s) show objects the backbone was trained on" in \
        (tmp_path / "o" / "summary.md").read_text()
