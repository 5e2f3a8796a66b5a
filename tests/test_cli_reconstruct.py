"""`hoiguide reconstruct IMAGE --out DIR --models FILE.yaml` (hoiguide.cli.reconstruct)
on the session's synthetic scene, with every model named in the models YAML by a
``factory: module:callable`` that returns the ground-truth stand-ins of
test_adapters_pipeline.py (and the analytic generator)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from hoiguide.testing import GaussianGridBackbone
from hoiguide.cli import main as hoiguide_main
from hoiguide.cli.reconstruct import register, run


def main(argv):
    """``hoiguide reconstruct ARGV``."""
    return hoiguide_main(["reconstruct", *argv])
from test_adapters_pipeline import (GUIDANCE, PIPELINE, FakeGeometry, FakeHaMeR,
                                    FakeSegmenter, Recorder, Truth, adapter_env,
                                    only_result_json, png_bytes)

STATE: dict = {}
OPTION_ARGS = [a for k, v in GUIDANCE.items() for a in ("--option", f"{k}={v}")]
MOD = "python:test_cli_reconstruct"


# factories named in the models YAML ------------------------------------------------------
def fake_segmenter(hide=()):
    return FakeSegmenter(STATE["truth"], STATE["rec"], STATE["env"], hide=hide)


def fake_geometry():
    return FakeGeometry(STATE["truth"], STATE["rec"], STATE["env"])


def fake_hand():
    return FakeHaMeR(STATE["truth"], STATE["rec"], fake_geometry(), STATE["env"])


def analytic_backbone():
    return GaussianGridBackbone()


@pytest.fixture
def cli(monkeypatch, synth_scene):
    env = adapter_env()
    rec = Recorder(env["crop"].make_crop)
    monkeypatch.setattr(env["crop"], "make_crop", rec)
    STATE.clear()
    STATE.update(truth=Truth.of(synth_scene), rec=rec, env=env)
    yield STATE
    STATE.clear()


def models_yaml(tmp_path: Path, *, hide=(), **changes) -> Path:
    cfg = {
        "segmentation": {"factory": f"{MOD}:fake_segmenter", "options": {"hide": list(hide)}},
        "inpainting": {"kind": "opencv"},
        "geometry": {"factory": f"{MOD}:fake_geometry"},
        "hand": {"factory": f"{MOD}:fake_hand"},
        "generator": {"factory": f"{MOD}:analytic_backbone"},
        "pipeline": PIPELINE,
    }
    cfg.update(changes)
    p = tmp_path / "models.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def save(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    from PIL import Image

    p = tmp_path / name
    Image.fromarray(array).save(p)
    return p


def test_reconstruct_rgba_photo_ok(cli, tmp_path, capsys):
    """An RGBA PNG (alpha composited on white) with the photo's intrinsics given: exit 0,
    mesh files and result.json with status ok."""
    t = cli["truth"]
    rgba = np.concatenate([t.image, np.full((96, 96, 1), 255, np.uint8)], -1)
    img = save(tmp_path, "photo.png", rgba)
    c = t.camera
    out = tmp_path / "out"
    code = main([str(img), "--out", str(out), "--models", str(models_yaml(tmp_path)),
                 "--object-name", "bottle", "--seed", "1", "--no-pictures", "-q",
                 "--intrinsics", f"{c.fx},{c.fy},{c.cx},{c.cy}", *OPTION_ARGS])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "status ok" in printed
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["seed"] == 1 and res["object_name"] == "bottle"
    assert res["camera_source"] == "given"
    assert res["camera"]["fx"] == pytest.approx(c.fx) and res["camera"]["cx"] == \
        pytest.approx(c.cx)
    assert any("white" in x for x in res["image"]["conversions"])
    for name in ("object.glb", "object.ply", "hand.glb", "hand.ply", "scene.glb",
                 "history.json", "result.json"):
        assert (out / name).is_file(), name
    assert res["models"]["generator"]["factory"] == f"{MOD}:analytic_backbone"
    assert res["pipeline_options"]["crop_size"] == PIPELINE["crop_size"]


def test_failed_run_exit_1_only_result_json(cli, tmp_path, capsys):
    """A grayscale photo in which the detector finds no hand: exit 1, status in
    result.json, nothing else."""
    img = save(tmp_path, "gray.png", cli["truth"].image.mean(-1).astype(np.uint8))
    out = tmp_path / "out"
    code = main([str(img), "--out", str(out), "-q", "--models",
                 str(models_yaml(tmp_path, hide=["hand"]))])
    assert code == 1
    assert "status no hand detected" in capsys.readouterr().out
    only_result_json(out)
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "no hand detected" and res["stage"] == "detect"
    assert "grayscale -> RGB" in res["image"]["conversions"]


def test_usage_errors_exit_2_and_write_nothing(cli, tmp_path, caplog):
    img = save(tmp_path, "photo.png", cli["truth"].image)
    good = str(models_yaml(tmp_path))
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "huge.png").write_bytes(png_bytes(9000, 6000))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("hand:\n  kind: hammer\n")
    hamer = tmp_path / "hamer.yaml"
    hamer.write_text(yaml.safe_dump({**yaml.safe_load(Path(good).read_text()),
                                     "hand": {"kind": "hamer"}}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    cases = [
        ([str(tmp_path / "missing.png")], "no such image file"),
        ([str(tmp_path / "notes.png")], "cannot read"),
        ([str(tmp_path / "huge.png")], "54.0 megapixels"),
        ([str(img), "--models", str(bad_yaml)], r"hand\.kind: expected one of hamer, "
                                                r"mediapipe, got 'hammer'; did you mean hamer"),
        ([str(img), "--models", str(tmp_path / "none.yaml")], "models file not found"),
        ([str(img), "--models", str(hamer)], r"hand\.checkpoint and hand\.mano"),
        ([str(img), "--option", "grid_resolutoin=3"], "did you mean grid_resolution"),
        ([str(img), "--pipeline-option", "crop_size=4"], "crop_size: expected an integer"),
        ([str(img), "--intrinsics", "1,2,3"], "FX,FY,CX,CY"),
        ([str(img), "--preset", "no_such_preset"], "no_such_preset"),
    ]
    for args, pattern in cases:
        caplog.clear()
        out = tmp_path / "out"
        full = [*args, "--out", str(out), "-q"]
        if "--models" not in args:
            full += ["--models", good]
        with caplog.at_level(logging.ERROR, logger="hoiguide"):
            assert main(full) == 2, args
        import re

        assert re.search(pattern, caplog.text), (args, caplog.text)
        assert not out.exists(), args
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="hoiguide"):
        assert main([str(img), "--out", str(foreign), "--models", good, "-q"]) == 2
    assert "not an earlier 'hoiguide-reconstruct' output" in caplog.text
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    assert cli["rec"].crop is None                      # no run ever started
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_parser_wiring():
    """register plugs into a `hoiguide`-style parser: defaults and flags."""
    p = argparse.ArgumentParser(prog="hoiguide")
    sub = p.add_subparsers(dest="command", required=True)
    s = register(sub)
    assert isinstance(s, argparse.ArgumentParser)
    a = p.parse_args(["reconstruct", "img.jpg", "--out", "d"])
    assert a.func is run
    assert (a.image, a.out, a.models, a.preset, a.seed, a.object_name, a.left_hand) == \
        ("img.jpg", "d", "default", "fast_posthoc_fit", 0, "object", False)
    a = p.parse_args(["reconstruct", "img.jpg", "--out", "d", "--models", "m.yaml",
                      "--preset", "followmyhold", "--seed", "3", "--object-name", "mug",
                      "--left-hand"])
    assert (a.models, a.preset, a.seed, a.object_name, a.left_hand) == \
        ("m.yaml", "followmyhold", 3, "mug", True)
    with pytest.raises(SystemExit) as ei:
        p.parse_args(["reconstruct", "img.jpg"])             # --out is required
    assert ei.value.code == 2
