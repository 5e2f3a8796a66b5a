"""`hoiguide reconstruct-video CLIP --out DIR --models FILE.yaml` (hoiguide.cli.reconstruct_video
and hoiguide.apps.video) on clips of the session's synthetic scene: a folder of PNG frames
(no extra needed) and a video file written by the test with PyAV (the extra ``video``).

Every model is named in the models YAML by a ``factory: python:module:callable`` returning
the ground-truth stand-ins of test_adapters_clip.py (frame-aware through a corner marker) and
the analytic generator, as test_cli_reconstruct.py does for photos. One test runs the real
clip guidance (``hoiguide.guided_reconstruct_video``) on a video file; the others replace it
by test_adapters_clip's stand-in, which places the generator's sphere with each frame's own
observations: they check the command, the per-frame chain and the files, not the guidance.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import hoiguide.api
from hoiguide.cli import main as hoiguide_main
from hoiguide.testing import GaussianGridBackbone
from test_adapters_clip import (FrameSegmenter, clip_frames, marked,
                                stand_in_reconstruction)
from test_adapters_pipeline import (GUIDANCE, PIPELINE, FakeGeometry, FakeHaMeR, Recorder,
                                    Truth, adapter_env, only_result_json)

STATE: dict = {}
MOD = "python:test_cli_reconstruct_video"
OPTION_ARGS = [a for k, v in GUIDANCE.items() for a in ("--option", f"{k}={v}")]


def main(argv):
    """``hoiguide reconstruct-video ARGV``."""
    return hoiguide_main(["reconstruct-video", *argv])


# factories named in the models YAML ------------------------------------------------------
def fake_segmenter(hide_hand=()):
    STATE["segmenter_builds"] = STATE.get("segmenter_builds", 0) + 1
    return FrameSegmenter(STATE["truth"], STATE["rec"], STATE["env"], hide_hand=hide_hand)


def fake_geometry():
    return FakeGeometry(STATE["truth"], STATE["rec"], STATE["env"])


def fake_hand():
    return FakeHaMeR(STATE["truth"], STATE["rec"], fake_geometry(), STATE["env"])


def analytic_backbone():
    return GaussianGridBackbone()


def models_yaml(tmp_path: Path, *, hide_hand=()) -> Path:
    cfg = {
        "segmentation": {"factory": f"{MOD}:fake_segmenter",
                         "options": {"hide_hand": list(hide_hand)}},
        "inpainting": {"kind": "opencv"},
        "geometry": {"factory": f"{MOD}:fake_geometry"},
        "hand": {"factory": f"{MOD}:fake_hand"},
        "generator": {"factory": f"{MOD}:analytic_backbone"},
        "pipeline": PIPELINE,
    }
    p = tmp_path / f"models{len(hide_hand)}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture
def real_guidance(monkeypatch, synth_scene):
    """The stand-in models, and the real hoiguide.guided_reconstruct_video."""
    env = adapter_env()
    rec = Recorder(env["crop"].make_crop)
    monkeypatch.setattr(env["crop"], "make_crop", rec)
    STATE.clear()
    STATE.update(truth=Truth.of(synth_scene), rec=rec, env=env)
    yield STATE
    STATE.clear()


@pytest.fixture
def cli(monkeypatch, synth_scene):
    env = adapter_env()
    rec = Recorder(env["crop"].make_crop)
    monkeypatch.setattr(env["crop"], "make_crop", rec)
    calls = []

    def guided(clip, **kwargs):
        calls.append((clip, kwargs))
        return STATE.get("make_result", stand_in_reconstruction)(clip, **kwargs)

    monkeypatch.setattr(hoiguide.api, "guided_reconstruct_video", guided, raising=False)
    STATE.clear()
    STATE.update(truth=Truth.of(synth_scene), rec=rec, env=env, calls=calls)
    yield STATE
    STATE.clear()


def frame_folder(tmp_path: Path, truth: Truth, n: int, name="clip") -> Path:
    from PIL import Image

    d = tmp_path / name
    d.mkdir()
    for k, f in enumerate(clip_frames(truth, n)):
        Image.fromarray(f).save(d / f"img_{k}.png")
    return d


def check_ok_folder(out: Path, n_frames: int) -> dict:
    from PIL import Image

    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["kind"] == "hoiguide-reconstruct-video"
    for name in ("object.glb", "object.ply", "object_generator.ply", "hand.glb", "hand.ply",
                 "scene.glb", "poses.json", "history.json", "result.json"):
        assert (out / name).is_file(), name
    hands = sorted(p.name for p in (out / "hands").iterdir())
    assert hands == [f"hand_{t:03d}.ply" for t in range(n_frames)]
    poses = json.loads((out / "poses.json").read_text())
    assert len(poses["frames"]) == n_frames
    for t, f in enumerate(poses["frames"]):
        assert f["hand_mesh"] == f"hands/hand_{t:03d}.ply"
        assert np.asarray(f["object_matrix"]).shape == (4, 4)
    assert res["files"] == sorted(p.name for p in out.iterdir())
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []
    if (out / "overlay.gif").exists():
        with Image.open(out / "overlay.gif") as im:
            assert im.n_frames == n_frames
    return res


def test_frame_folder_ok(cli, tmp_path, capsys, monkeypatch):
    """A folder of 5 PNG frames, every 2nd frame, at most 2: exit 0, every output, one models
    load, the clip handed to guided_reconstruct_video with the schedule and seed. PyAV is
    hidden: a frame folder does not need the extra."""
    import sys

    from hoiguide.types import ClipObservations

    monkeypatch.setitem(sys.modules, "av", None)

    clip = frame_folder(tmp_path, cli["truth"], 5)
    out = tmp_path / "out"
    code = main([str(clip), "--out", str(out), "--models", str(models_yaml(tmp_path)),
                 "--object-name", "bottle", "--seed", "2", "--every", "2", "--max-frames",
                 "2", "--fps", "10", "-q", *OPTION_ARGS])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "status ok" in printed and "2 of 2 frames observed" in printed
    res = check_ok_folder(out, 2)
    assert res["clip"]["frame_indices"] == [0, 4] and res["clip"]["subsampled"] is True
    assert res["clip"]["files"] == ["img_0.png", "img_4.png"]
    assert res["seed"] == 2 and res["object_name"] == "bottle" and res["preset"] == "video_fast"
    assert [f["status"] for f in res["frames"]] == ["ok", "ok"]
    assert res["camera_source"] == "geometry (frame 0)"
    poses = json.loads((out / "poses.json").read_text())
    assert [f["source_frame"] for f in poses["frames"]] == [0, 4]
    assert [f["time"] for f in poses["frames"]] == pytest.approx([0.0, 0.4])
    (clip_obs, kwargs), = cli["calls"]
    assert isinstance(clip_obs, ClipObservations) and clip_obs.num_frames == 2
    assert kwargs["seed"] == 2 and kwargs["schedule"].name == "video_fast"
    assert kwargs["options"].num_steps == GUIDANCE["num_steps"]
    assert STATE["segmenter_builds"] == 1                 # the models were built once
    assert (out / "overlay.gif").is_file() and (out / "report.html").is_file()
    # a second run replaces the first one's folder
    assert main([str(clip), "--out", str(out), "--models", str(models_yaml(tmp_path)),
                 "--max-frames", "1", "-q", "--no-pictures", *OPTION_ARGS]) == 0
    assert not (out / "overlay.gif").exists() and len(list((out / "hands").iterdir())) == 1


def test_video_file_with_the_real_clip_guidance(real_guidance, tmp_path, capsys):
    """End to end without stand-ins past the models: a 6-frame H.264 video written by the
    test, every 2nd frame (0, 2, 4; the detector misses the hand in source frame 2, whose
    box is interpolated), the real clip guidance (video_fast with 2 flow steps on the
    analytic generator): exit 0, every frame's hand on the true hand, the object in view."""
    pytest.importorskip("av")
    from hoiguide.types import Mesh
    from test_adapters_pipeline import nn_mean
    from test_videoio import write_video

    truth = real_guidance["truth"]
    video = write_video(tmp_path / "clip.mp4", clip_frames(truth, 6), fps=10)
    out = tmp_path / "out"
    code = main([str(video), "--out", str(out), "--models",
                 str(models_yaml(tmp_path, hide_hand=[2])), "--every", "2", "--object-name",
                 "bottle", "-q", "--no-pictures", *OPTION_ARGS])
    assert code == 0, capsys.readouterr().out
    res = check_ok_folder(out, 3)
    assert res["clip"]["kind"] == "video" and res["clip"]["frame_indices"] == [0, 2, 4]
    assert [f["hand_box_source"] for f in res["frames"]] == ["detected", "interpolated",
                                                             "detected"]
    assert res["preset"] == "video_fast" and res["reconstruction_status"] == "ok"
    assert res["num_frames"] == 3 and res["observed_frames"] == 3
    poses = json.loads((out / "poses.json").read_text())
    assert [f["time"] for f in poses["frames"]] == pytest.approx([0.0, 0.2, 0.4], abs=1e-6)
    for t in range(3):
        hand = Mesh.load(out / "hands" / f"hand_{t:03d}.ply")
        assert nn_mean(hand.vertices, truth.hand.vertices) < 0.01
    obj = Mesh.load(out / "object.ply")
    uv = truth.camera.project(obj.vertices.double()).numpy()
    assert ((uv > 0) & (uv < 96)).all(-1).mean() > 0.9        # in front of the camera, in view


def test_no_hand_in_any_frame_exit_1_only_result_json(cli, tmp_path, capsys):
    clip = frame_folder(tmp_path, cli["truth"], 3)
    out = tmp_path / "out"
    code = main([str(clip), "--out", str(out), "-q", "--models",
                 str(models_yaml(tmp_path, hide_hand=[0, 1, 2]))])
    assert code == 1
    assert "status no hand detected" in capsys.readouterr().out
    only_result_json(out)
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "no hand detected" and res["stage"] == "detect"
    assert "no frame of the 3-frame clip shows a hand" in res["reason"]
    assert cli["calls"] == []


def test_failed_reconstruction_exit_1_only_result_json(cli, tmp_path, capsys):
    import dataclasses

    STATE["make_result"] = lambda clip, **kw: dataclasses.replace(
        stand_in_reconstruction(clip, **kw), status="guidance stopped: non-finite loss")
    clip = frame_folder(tmp_path, cli["truth"], 2)
    out = tmp_path / "out"
    assert main([str(clip), "--out", str(out), "-q", "--models", str(models_yaml(tmp_path)),
                 "--no-pictures", "--max-frames", "1"]) == 1
    only_result_json(out)
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "guidance stopped: non-finite loss" and res["stage"] == "reconstruct"


def test_bad_inputs_exit_2_and_write_nothing(cli, tmp_path, caplog):
    from PIL import Image

    good = str(models_yaml(tmp_path))
    clip = frame_folder(tmp_path, cli["truth"], 2)
    mixed = frame_folder(tmp_path, cli["truth"], 2, name="mixed")
    Image.fromarray(marked(cli["truth"].image[:80], 2)).save(mixed / "img_2.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    cases = [
        ([str(clip), "--every", "0"], r"--every: expected a positive integer, got 0"),
        ([str(clip), "--max-frames", "0"], r"--max-frames: expected a positive integer"),
        ([str(tmp_path / "missing.mp4")], "no such video file or frame folder"),
        ([str(mixed)], r"frames of different sizes: img_0.png is 96x96 but img_2.png is "
                       r"96x80"),
        ([str(empty)], "holds no image frames"),
        ([str(clip / "img_0.png")], "is one image, not a clip"),
        ([str(clip), "--schedule", "no_such_preset"], "no_such_preset"),
        ([str(clip), "--option", "grid_resolutoin=3"], "did you mean grid_resolution"),
    ]
    for args, pattern in cases:
        caplog.clear()
        out = tmp_path / "out"
        with caplog.at_level(logging.ERROR, logger="hoiguide"):
            assert main([*args, "--out", str(out), "--models", good, "-q"]) == 2, args
        assert re.search(pattern, caplog.text), (args, caplog.text)
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1, args
        assert not out.exists(), args
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="hoiguide"):
        assert main([str(clip), "--out", str(foreign), "--models", good, "-q"]) == 2
    assert "not an earlier 'hoiguide-reconstruct-video' output" in caplog.text
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    assert cli["rec"].crop is None                      # no chain ever started
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_videos_exit_2_and_write_nothing(cli, tmp_path, caplog):
    av = pytest.importorskip("av")
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    empty = tmp_path / "empty.avi"
    c = av.open(str(empty), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width = s.height = 32
    s.pix_fmt = "yuv420p"
    c.start_encoding()
    c.close()
    for path, pattern in ((junk, r"cannot read .*junk.mp4 as a video"),
                          (empty, "zero-length video")):
        caplog.clear()
        out = tmp_path / "out"
        with caplog.at_level(logging.ERROR, logger="hoiguide"):
            assert main([str(path), "--out", str(out), "--models",
                         str(models_yaml(tmp_path)), "-q"]) == 2
        assert re.search(pattern, caplog.text), caplog.text
        assert not out.exists()
    assert cli["rec"].crop is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_batch_routes_clips_to_reconstruct_video(cli, tmp_path):
    """`hoiguide batch`: a folder of frames and a video file in INPUT are clip items (next to
    a photo and an empty folder); the frame folder is reconstructed with the video path,
    the broken video is recorded as failed with its reason; a second run skips the clip."""
    from hoiguide.apps.batch import discover_items, run_batch

    inp = tmp_path / "input"
    inp.mkdir()
    frame_folder(inp, cli["truth"], 3, name="clipA")
    (inp / "movie.mp4").write_text("not a video")
    (inp / "photo.png").write_bytes(b"x")
    (inp / "nothing").mkdir()
    items = discover_items(inp)
    assert [(i.name, i.kind) for i in items] == [("clipA", "clip"), ("movie", "clip"),
                                                 ("photo", "image")]
    lst = tmp_path / "list.txt"
    lst.write_text("input/clipA\ninput/movie.mp4\n")
    out = tmp_path / "out"
    summary = run_batch(lst, out, models=str(models_yaml(tmp_path)), options=GUIDANCE,
                        object_name="bottle", max_frames=2, turntable_views=2,
                        turntable_size=32, progress=False)
    assert summary["counts"]["ok"] == 1 and summary["counts"]["failed"] == 1
    res = json.loads((out / "clipA" / "result.json").read_text())
    assert res["status"] == "ok" and res["kind"] == "hoiguide-reconstruct-video"
    assert res["batch"]["kind"] == "clip" and res["clip"]["frame_indices"] == [0, 2]
    assert res["preset"] == "video_fast"
    assert (out / "clipA" / "poses.json").is_file()
    assert len(list((out / "clipA" / "hands").iterdir())) == 2
    bad = json.loads((out / "movie" / "result.json").read_text())
    assert bad["status"] == "failed" and "movie.mp4" in bad["reason"] and \
        re.search(r"cannot read .* as a video|needs PyAV", bad["reason"])
    again = run_batch(lst, out, models=str(models_yaml(tmp_path)), options=GUIDANCE,
                      object_name="bottle", max_frames=2, progress=False)
    assert [e["status"] for e in again["items"]] == ["skipped", "failed"]
    # the clip settings decide whether a finished clip is still valid, not a scene's
    import dataclasses

    from hoiguide.apps.batch import BatchItem, _Config

    cfg = _Config(out="o", schedule={"name": "fast"}, clip_schedule={"name": "video_fast"})
    clip_item, scene_item = BatchItem("c", "/c", "clip"), BatchItem("s", "/s", "scene")
    for change in (dict(every=2), dict(max_frames=3), dict(clip_schedule={"name": "video"})):
        other = dataclasses.replace(cfg, **change)
        assert other.fingerprint(clip_item) != cfg.fingerprint(clip_item), change
        assert other.fingerprint(scene_item) == cfg.fingerprint(scene_item), change
