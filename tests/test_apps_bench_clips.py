"""The clip benchmark (hoiguide.apps.bench_clips) end to end on a tiny clips set: a clip preset
(hoiguide.guided_reconstruct_video), a single-image preset on the reference frame and the
per-frame baseline, scored with clip_metrics; a failing clip and a failing run are recorded
while the rest go on; re-running skips finished pairs; ``hoiguide bench`` routes a clips set
here. The analytic GaussianGridBackbone and observations made from the ground truth (a local
stand-in for the simulated observers) keep it fast."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import hoiguide.api
from hoiguide.apps.bench_clips import format_clip_table, resolve_runs, run_clip_benchmark
from hoiguide.apps.bench import BenchmarkError
from hoiguide.cli import main
from hoiguide.synth.clip import make_clip, write_clips_manifest
from hoiguide.testing import GaussianGridBackbone
from hoiguide.types import ClipObservations, Observations

OPTIONS = {"num_steps": 2, "max_iterations": 1, "grid_resolution": 12, "render_size": 24,
           "final_resolution": 17}
KW = dict(options=OPTIONS, num_samples=800, progress=False)
T = 3


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipset")
    clip = make_clip("procedural:cup@10001", num_frames=T, image_size=40, axis_candidates=1,
                     clip_id="c0")
    clip.save(root / "c0")
    clip.clip_id = "c1"                                 # a second clip (same content)
    clip.save(root / "c1")
    write_clips_manifest(root, [{"id": "c0", "path": "c0"}, {"id": "c1", "path": "c1"}])
    return root


def ground_truth_observations(clip, seed):
    """A stand-in for simulate_clip_observations: each frame's observations from its truth."""
    OBSERVED.append((clip.clip_id, seed))
    if clip.clip_id == "c1" and FAIL_C1:
        raise RuntimeError("no hand found in any frame")
    frames = []
    for t, sc in enumerate(clip.frames):
        depth = torch.as_tensor(sc.depth)
        valid = depth > 0
        frames.append(Observations(
            camera=sc.camera, object_image=np.full((32, 32, 4), 200, np.uint8),
            mask_hand=torch.as_tensor(sc.mask_hand), mask_object=torch.as_tensor(sc.mask_object),
            mask_object_amodal=torch.as_tensor(sc.mask_object_amodal),
            hand_mesh=sc.hand_mesh, hand_keypoints_3d=torch.as_tensor(sc.hand_keypoints_3d),
            keypoints_2d=torch.as_tensor(sc.keypoints_2d),
            target_normals=torch.as_tensor(sc.normals),
            target_disparity=torch.where(valid, 1.0 / depth.clamp_min(1e-9),
                                         torch.zeros_like(depth)),
            target_valid=valid, gen_to_image=clip.gen_to_camera[t]))
    return ClipObservations(tuple(frames), torch.as_tensor(clip.times), clip.reference)


OBSERVED: list = []
FAIL_C1 = True


@pytest.fixture(scope="module")
def bench(clips_dir, tmp_path_factory):
    """One benchmark: video_fast (clip), fast (reference frame), fast per frame."""
    assert hasattr(hoiguide.api, "guided_reconstruct_video")
    out = tmp_path_factory.mktemp("bench_clips")
    OBSERVED.clear()
    summary = run_clip_benchmark(clips_dir, out, ["video_fast", "fast"], per_frame=["fast"],
                                 backbone=GaussianGridBackbone(), seed=3,
                                 observe=ground_truth_observations, **KW)
    return out, summary


def _record(out, run, cid):
    return json.loads((out / run / f"{cid}.json").read_text())


def test_runs_are_classified():
    runs = resolve_runs(["video_fast", "fast"], ["unguided"])
    assert [(n, k) for n, k, _ in runs] == [("video_fast", "clip"), ("fast", "reference"),
                                            ("unguided.per_frame", "per_frame")]
    with pytest.raises(BenchmarkError, match="is a clip preset"):
        resolve_runs(["fast"], ["video_fast"])
    with pytest.raises(BenchmarkError, match="two presets are named"):
        resolve_runs(["fast", "fast"], [])


def test_records_per_clip_and_run(bench):
    out, summary = bench
    assert [c for c, _ in OBSERVED] == ["c0", "c1"]          # observed once per clip
    clip_rec = _record(out, "video_fast", "c0")
    assert clip_rec["status"] == "ok", clip_rec["reason"]
    assert clip_rec["kind"] == "clip"
    m = clip_rec["metrics"]
    assert m["frames_scored"] == list(range(T))
    for k in ("cd_cm2", "reference_cd_cm2", "hidden_cd_cm2", "iv_cm3", "object_jitter_mm",
              "gt_object_jitter_mm", "hand_jitter_mm"):
        assert m[k] is not None and m[k] >= 0, k
    ref = _record(out, "fast", "c0")
    assert ref["status"] == "ok" and ref["kind"] == "reference"
    r = ref["metrics"]["reference"]
    assert ref["metrics"]["frames_scored"] == [r]
    assert ref["metrics"]["object_jitter_mm"] is None
    assert ref["metrics"]["reference_hidden_cd_cm2"] is not None
    per = _record(out, "fast.per_frame", "c0")
    assert per["status"] == "ok" and per["metrics"]["frames_scored"] == list(range(T))
    assert per["counters"]["frames_run"] == T
    assert per["metrics"]["object_jitter_mm"] is not None
    # the single-image run on the reference frame is the per-frame baseline's reference frame
    assert per["metrics"]["reference_cd_cm2"] == pytest.approx(ref["metrics"]["cd_cm2"])
    # the object is a procedural instance: the analytic backbone has no training set
    assert clip_rec["object_in_training_set"] is False


def test_a_failing_clip_is_recorded_and_the_rest_continue(bench):
    out, summary = bench
    for run in ("video_fast", "fast", "fast.per_frame"):
        rec = _record(out, run, "c1")
        assert rec["status"] == "failed" and rec["phase"] == "observe"
        assert "no hand found" in rec["reason"]
        s = summary["runs"][run]
        assert s["n"] == 2 and s["n_ok"] == 1 and s["rr"] == 0.5
    md = (out / "summary.md").read_text()
    assert "video_fast" in md and "fast.per_frame" in md and "## Failures" in md
    table = format_clip_table(summary)
    assert "| video_fast | clip |" in table and "| fast | reference |" in table
    assert summary["runs"]["fast"]["reference_cd_cm2"]["median"] == \
        pytest.approx(_record(out, "fast", "c0")["metrics"]["reference_cd_cm2"])


def test_rerun_skips_finished_pairs_and_a_failing_run_is_recorded(bench, clips_dir):
    global FAIL_C1
    out, _ = bench
    OBSERVED.clear()
    FAIL_C1 = False
    calls = []

    def broken_video(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("the clip engine fell over")

    try:
        summary = run_clip_benchmark(clips_dir, out, ["video_fast", "fast"], per_frame=["fast"],
                                     backbone=GaussianGridBackbone(), seed=3,
                                     observe=ground_truth_observations,
                                     reconstruct_video=broken_video, **KW)
    finally:
        FAIL_C1 = True
    # c0 was finished: skipped; c1 failed before with the same configuration: skipped too
    assert OBSERVED == [] and calls == []
    summary = run_clip_benchmark(clips_dir, out, ["video_fast", "fast"],
                                 backbone=GaussianGridBackbone(), seed=3, overwrite=True,
                                 observe=ground_truth_observations,
                                 reconstruct_video=broken_video, **KW)
    assert len(calls) == 1                       # c0 only (c1 fails while observing)
    rec = _record(out, "video_fast", "c0")
    assert rec["status"] == "failed" and rec["phase"] == "reconstruct"
    assert "the clip engine fell over" in rec["reason"]
    assert _record(out, "fast", "c0")["status"] == "ok"
    assert summary["runs"]["video_fast"]["n_ok"] == 0


def test_cli_routes_a_clips_set(clips_dir, tmp_path, monkeypatch, caplog, capsys):
    seen = {}

    def fake_run(clips, out, presets, **kw):
        seen.update(clips=clips, presets=list(presets), per_frame=kw["per_frame"],
                    rho=kw["temporal_correlation"])
        return {"runs": {}}

    monkeypatch.setattr("hoiguide.cli.bench.run_clip_benchmark", fake_run)
    backbone = "python:hoiguide.testing:GaussianGridBackbone"
    assert main(["-q", "bench", str(clips_dir), "--preset", "video_fast", "--preset", "fast",
                 "--per-frame", "fast", "--temporal-correlation", "0.5",
                 "--out", str(tmp_path / "o"), "--backbone", backbone]) == 0
    assert seen == {"clips": str(clips_dir), "presets": ["video_fast", "fast"],
                    "per_frame": ["fast"], "rho": 0.5}
    for argv, msg in (
            ([str(clips_dir), "--preset", "fast", "--per-frame", "video_fast"],
             "is a clip preset"),
            ([str(clips_dir), "--preset", "fast", "--temporal-correlation", "2"],
             "--temporal-correlation: expected a number from 0 to 1"),
            ([str(clips_dir / "c0" / "frame_000"), "--preset", "fast", "--per-frame", "fast"],
             "--per-frame: only applies to a clips set")):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="hoiguide"):
            code = main(["bench", *argv, "--out", str(tmp_path / "x"), "--backbone", backbone])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert code == 2 and len(errors) == 1 and msg in errors[0], errors
        assert not (tmp_path / "x").exists()
