"""hoiguide.apps.batch.run_batch and `hoiguide batch`: items, atomic item folders, resuming,
failures recorded, shards, and Ray (a local two-worker cluster on the CPU, workers killed
mid-run).

The scenes are copies of the session's 96x96 synthetic scene under other names; the
generator is the analytic GaussianGridBackbone with a 2-step schedule; the observers return
the scene's real simulated observations, computed once (in other processes -- a killed
`hoiguide batch` and the Ray workers -- :func:`make_worker_backbone` installs that cache
and the kill switches, read from environment variables).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hoiguide.apps.batch import (SUMMARY_NAME, TMP_DIR, BatchError, BatchItem, _Config,
                            discover_items, parse_shard, run_batch)
from hoiguide.cli import main

TESTS = Path(__file__).resolve().parent
OPTIONS = {"num_steps": 2, "max_iterations": 1, "grid_resolution": 12, "render_size": 24,
           "final_resolution": 17}
OPTION_ARGS = [a for k, v in OPTIONS.items() for a in ("--option", f"{k}={v}")]
FAST = dict(options=OPTIONS, num_samples=1500, turntable_views=2, turntable_size=32,
            progress=False)
WORKER_SPEC = "python:test_batch:make_worker_backbone"


# --------------------------------------------------------------------------------------
# the stand-ins other processes import by name
# --------------------------------------------------------------------------------------


def _maybe_die(text: str) -> None:
    """Kill this process (SIGKILL: no cleanup at all) when ``text`` names a scene listed in
    HOIGUIDE_TEST_KILL ("name:once,name:always"); "once" dies only on the first attempt of
    the whole run (a marker file in HOIGUIDE_TEST_MARKERS remembers it)."""
    for entry in filter(None, os.environ.get("HOIGUIDE_TEST_KILL", "").split(",")):
        name, _, mode = entry.partition(":")
        if name not in text.split():
            continue
        if mode == "once":
            marker = Path(os.environ["HOIGUIDE_TEST_MARKERS"]) / name
            marker.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def make_worker_backbone():
    """The analytic backbone, for a worker process. With HOIGUIDE_TEST_WORKER=1 it also
    makes this process's observers return the cached observations (HOIGUIDE_TEST_OBS), makes
    the loss plot of a scene named in HOIGUIDE_TEST_KILL kill the process (half-way through
    writing the item's files) and appends the pid to HOIGUIDE_TEST_LOADS (one line per
    load)."""
    from hoiguide.testing import GaussianGridBackbone

    if os.environ.get("HOIGUIDE_TEST_WORKER") == "1":
        import hoiguide.apps.outputs as pictures     # where write_outputs finds loss_plot
        import hoiguide.synth.observers as observers

        cache = {}

        def cached(scene, **kw):
            if "obs" not in cache:
                cache["obs"] = torch.load(os.environ["HOIGUIDE_TEST_OBS"], weights_only=False)
            return cache["obs"]

        real_plot = pictures.loss_plot

        def dying_plot(history, path, *, title=None, **kw):
            _maybe_die(str(title))          # "<preset> on <scene> (<backbone>)"
            return real_plot(history, path, title=title, **kw)

        observers.simulate_observations = cached
        pictures.loss_plot = dying_plot
        if os.environ.get("HOIGUIDE_TEST_LOADS"):
            with open(os.environ["HOIGUIDE_TEST_LOADS"], "a") as f:
                f.write(f"{os.getpid()}\n")
    return GaussianGridBackbone()


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def obs_file(synth_scene, tmp_path_factory):
    """The scene's real simulated observations (noise "default", seed 0), saved once."""
    from hoiguide.synth.observers import simulate_observations

    path = tmp_path_factory.mktemp("obs") / "obs.pt"
    torch.save(simulate_observations(synth_scene, backbone=None, noise="default", seed=0),
               path)
    return path


@pytest.fixture
def cached_observers(monkeypatch, obs_file):
    import hoiguide.synth.observers as observers

    obs = torch.load(obs_file, weights_only=False)
    monkeypatch.setattr(observers, "simulate_observations", lambda scene, **kw: obs)


@pytest.fixture(scope="module")
def scene_root(synth_scene, tmp_path_factory):
    """Scene folders a, b, doomed, killme, s1, s2: the same scene under other names (saved
    once, copied, its scene_id rewritten)."""
    import shutil

    root = tmp_path_factory.mktemp("scenes")
    first = synth_scene.save(root / "a")
    for name in ("b", "doomed", "killme", "s1", "s2"):
        shutil.copytree(first, root / name)
        meta = read(root / name / "scene.json")
        meta["scene_id"] = name
        (root / name / "scene.json").write_text(json.dumps(meta))
    meta = read(first / "scene.json")
    meta["scene_id"] = "a"
    (first / "scene.json").write_text(json.dumps(meta))
    return root


def scene_input(tmp_path: Path, scene_root: Path, names, extra=()) -> Path:
    """A folder holding symlinks to some scene folders (and extra files)."""
    d = tmp_path / "input"
    d.mkdir()
    for n in names:
        (d / n).symlink_to(scene_root / n, target_is_directory=True)
    for name, data in extra:
        (d / name).write_bytes(data)
    return d


class CountingFactory:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        from hoiguide.testing import GaussianGridBackbone

        self.calls += 1
        return GaussianGridBackbone()


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------
# items and shards
# --------------------------------------------------------------------------------------


def test_items_of_a_folder_and_of_a_list_file(tmp_path, scene_root):
    d = scene_input(tmp_path, scene_root, ["s2", "s1"],
                    extra=[("cup.png", b"x"), ("cup.JPG", b"x"), ("my photo.jpeg", b"x"),
                           ("notes.txt", b"x"), (".hidden.png", b"x")])
    (d / "empty_folder").mkdir()
    items = discover_items(d)
    assert [(i.name, i.kind) for i in items] == [
        ("cup_JPG", "image"), ("cup_png", "image"), ("my_photo", "image"),
        ("s1", "scene"), ("s2", "scene")]
    assert items[3].source == str((scene_root / "s1").resolve())
    lst = tmp_path / "list.txt"
    lst.write_text(f"# scenes\n\ninput/s1\n{d / 'cup.png'}\n  input/nope.png  \n")
    items = discover_items(lst)
    assert [(i.name, i.kind) for i in items] == [("cup", "image"), ("nope", "missing"),
                                                 ("s1", "scene")]
    assert items[1].source == str(tmp_path / "input" / "nope.png")
    # one scene folder, one image
    assert [i.name for i in discover_items(d / "s1")] == ["s1"]
    assert [i.kind for i in discover_items(d / "cup.png")] == ["image"]
    with pytest.raises(FileNotFoundError, match="no such folder or list file"):
        discover_items(tmp_path / "absent")
    with pytest.raises(BatchError, match="holds no image"):
        discover_items(d / "empty_folder")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(BatchError, match="names no path"):
        discover_items(tmp_path / "empty.txt")


def test_parse_shard(monkeypatch):
    assert parse_shard(None) is None
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3/4 ") == (3, 4)
    assert parse_shard((1, 2)) == (1, 2)
    for bad in ("4/4", "-1/4", "1/0", "1", "a/b", "1/2/3"):
        with pytest.raises(BatchError, match="i/n"):
            parse_shard(bad)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_shard("slurm") == (2, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(BatchError, match="not set"):
        parse_shard("slurm")


def test_fingerprint_follows_the_configuration():
    item = BatchItem("s1", "/data/s1", "scene")
    base = _Config(out="o", schedule={"name": "fast", "phases": []}, options=dict(OPTIONS))
    same = dataclasses.replace(base, device="cuda", models="models.yaml")  # not for scenes
    assert base.fingerprint(item) == same.fingerprint(item)
    for change in (dict(seed=1), dict(noise="none"), dict(options={"num_steps": 3}),
                   dict(schedule={"name": "fast", "phases": [1]}), dict(backbone="tiny")):
        assert dataclasses.replace(base, **change).fingerprint(item) != base.fingerprint(item)
    assert base.fingerprint(BatchItem("s1", "/other/s1", "scene")) != base.fingerprint(item)


def test_shards_split_the_items_and_merge_the_summary(tmp_path):
    """Five list entries that name nothing (cheap failures) over two shards."""
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"missing_{k}.png\n" for k in range(5)))
    out = tmp_path / "out"
    s0 = run_batch(lst, out, shard="0/2", progress=False)
    assert [e["item"] for e in s0["items"]] == ["missing_0", "missing_2", "missing_4"]
    assert read(out / SUMMARY_NAME)["counts"]["total"] == 3        # shard 1 not there yet
    s1 = run_batch(lst, out, shard=(1, 2), progress=False)
    assert [e["item"] for e in s1["items"]] == ["missing_1", "missing_3"]
    merged = read(out / SUMMARY_NAME)
    assert merged["counts"] == {"ok": 0, "failed": 5, "skipped": 0, "total": 5, "not_run": 0}
    assert [e["item"] for e in merged["items"]] == [f"missing_{k}" for k in range(5)]
    assert merged["on_disk"] == {"ok": 0, "failed": 5, "missing": 0, "total": 5}
    assert read(out / "batch_summary.shard-1-of-2.json")["shard"] == "1/2"
    r = read(out / "missing_3" / "result.json")
    assert r["status"] == "failed" and "no such image or scene folder" in r["reason"]


# --------------------------------------------------------------------------------------
# local runs
# --------------------------------------------------------------------------------------


def test_failures_are_recorded_and_finished_items_skipped(tmp_path, scene_root,
                                                          cached_observers):
    scene_input(tmp_path, scene_root, ["s1"], extra=[("broken.png", b"not a png")])
    lst = tmp_path / "list.txt"
    lst.write_text("input/s1\ninput/broken.png\ninput/gone\n")
    out = tmp_path / "out"
    factory = CountingFactory()
    summary = run_batch(lst, out, backbone=factory, **FAST)
    assert summary["counts"] == {"ok": 1, "failed": 2, "skipped": 0, "total": 3,
                                 "not_run": 0}
    assert factory.calls == 1
    assert read(out / SUMMARY_NAME) == json.loads(json.dumps(summary))
    ok = read(out / "s1" / "result.json")
    assert ok["status"] == "ok" and ok["batch"]["kind"] == "scene"
    assert ok["batch"]["source"] == str((scene_root / "s1").resolve())
    assert ok["f10"] >= ok["f5"] >= 0 and ok["cd_cm2"] > 0
    for name in ("object.glb", "hand.obj", "overlay.png", "turntable.gif", "report.html"):
        assert (out / "s1" / name).is_file(), name
    broken = read(out / "broken" / "result.json")
    assert broken["status"] == "failed" and "needs models" in broken["reason"]
    assert "no such image or scene folder" in read(out / "gone" / "result.json")["reason"]
    assert not (out / TMP_DIR).exists()
    # re-run: the finished scene is skipped (not rewritten); the failures run again
    stamp = (out / "s1" / "result.json").stat().st_mtime_ns
    again = run_batch(lst, out, backbone=factory, **FAST)
    assert again["counts"] == {"ok": 0, "failed": 2, "skipped": 1, "total": 3, "not_run": 0}
    assert [e["status"] for e in again["items"]] == ["failed", "failed", "skipped"]
    assert (out / "s1" / "result.json").stat().st_mtime_ns == stamp
    assert factory.calls == 1           # nothing needed the generator


def test_killed_run_leaves_no_half_written_item_and_resumes(tmp_path, scene_root, obs_file,
                                                            cached_observers):
    """A real `hoiguide batch` process, SIGKILLed while writing the files of its second
    item; the re-run skips the first and redoes the second."""
    d = scene_input(tmp_path, scene_root, ["s1", "s2"])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(TESTS), os.environ.get("PYTHONPATH")])), "HOIGUIDE_TEST_WORKER": "1",
        "HOIGUIDE_TEST_OBS": str(obs_file), "HOIGUIDE_TEST_KILL": "s2:once",
        "HOIGUIDE_TEST_MARKERS": str(tmp_path / "markers")}
    proc = subprocess.run(
        [sys.executable, "-m", "hoiguide", "-q", "batch", str(d), "--out", str(out),
         "--backbone", WORKER_SPEC, "--num-samples", "1500", "--views", "2", *OPTION_ARGS],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read(out / "s1" / "result.json")["status"] == "ok"
    assert not (out / "s2").exists()                       # no half-written item folder
    partial = list((out / TMP_DIR / "s2").glob("*/*"))
    assert {"hand.glb", "overlay.png"} <= {p.name for p in partial}   # killed mid-write
    assert not (out / SUMMARY_NAME).exists()
    summary = run_batch(d, out, backbone=WORKER_SPEC, **FAST)     # the same configuration
    assert summary["counts"] == {"ok": 1, "failed": 0, "skipped": 1, "total": 2,
                                 "not_run": 0}
    assert read(out / "s2" / "result.json")["status"] == "ok"
    assert (out / "s2" / "losses.png").is_file()
    assert not (out / TMP_DIR).exists()                    # the leftovers are gone


def test_cli_batch_exit_codes(tmp_path, caplog, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text("nothing_here.png\n")
    assert main(["batch", str(lst), "--out", str(tmp_path / "o"), "--shard", "2/2"]) == 2
    assert main(["batch", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert main(["batch", str(lst), "--out", str(tmp_path / "o"), "--backbone", "bogus"]) == 2
    assert main(["batch", str(lst), "--out", str(tmp_path / "o"), "--option", "nope=1"]) == 2
    for bad in (["--every", "0"], ["--max-frames", "0"], ["--clip-preset", "vidoe_fast"]):
        assert main(["batch", str(lst), "--out", str(tmp_path / "o"), *bad]) == 2, bad
    assert not (tmp_path / "o").exists()
    assert main(["-q", "batch", str(lst), "--out", str(tmp_path / "o")]) == 1
    printed = capsys.readouterr().out
    assert "0 ok, 1 failed, 0 skipped" in printed
    assert "nothing_here" in caplog.text and "no such image" in caplog.text


# --------------------------------------------------------------------------------------
# Ray: a local cluster with two CPU workers
# --------------------------------------------------------------------------------------


@pytest.fixture
def ray_cluster(monkeypatch, tmp_path, obs_file):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS),
                                                       os.environ.get("PYTHONPATH")])),
           "HOIGUIDE_TEST_WORKER": "1", "HOIGUIDE_TEST_OBS": str(obs_file),
           "HOIGUIDE_TEST_KILL": "killme:once,doomed:always",
           "HOIGUIDE_TEST_MARKERS": str(tmp_path / "markers"),
           "HOIGUIDE_TEST_LOADS": str(tmp_path / "loads.txt"),
           # everything on the loopback interface (workers report 127.0.0.1)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ray = pytest.importorskip("ray")
    import ray._private.ray_constants as ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # if imported before
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=100 * 1024 ** 2, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_two_workers_survive_killed_workers(tmp_path, scene_root, ray_cluster):
    d = scene_input(tmp_path, scene_root, ["a", "b", "doomed", "killme"])
    out = tmp_path / "out"
    summary = run_batch(d, out, ray_address="", backbone=WORKER_SPEC, max_attempts=2,
                        **FAST)
    assert summary["backend"] == "ray"
    assert summary["counts"] == {"ok": 3, "failed": 1, "skipped": 0, "total": 4,
                                 "not_run": 0}
    by = {e["item"]: e for e in summary["items"]}
    # the finished items are on disk, computed once
    for name in ("a", "b"):
        r = read(out / name / "result.json")
        assert r["status"] == "ok" and r["batch"]["attempts"] == 1, name
        assert (out / name / "report.html").is_file()
    # killed half-way through writing its files on the first attempt, done on the second
    killme = read(out / "killme" / "result.json")
    assert killme["status"] == "ok" and killme["batch"]["attempts"] == 2
    assert by["killme"]["attempts"] == 2
    # killed on every attempt: recorded as failed with the reason
    doomed = read(out / "doomed" / "result.json")
    assert doomed["status"] == "failed" and "worker died 2 time(s)" in doomed["reason"]
    assert sorted(p.name for p in (out / "doomed").iterdir()) == ["result.json"]
    assert not (out / TMP_DIR).exists()
    # the models are loaded once per worker: never twice in one process
    loads = (tmp_path / "loads.txt").read_text().split()
    assert len(loads) == len(set(loads)) and 2 <= len(loads) <= 5
    workers = {by[n]["worker"].split(":")[-1] for n in ("a", "b", "killme")}
    assert workers <= set(loads) and str(os.getpid()) not in loads
    assert read(out / SUMMARY_NAME)["counts"]["ok"] == 3
