"""Bad command-line input: one clear line naming the input, exit code 2, nothing written."""

import json
import logging
import socket

import pytest

from hoiguide.cli import main
from hoiguide.io import write_json

ANALYTIC = "python:hoiguide.testing:GaussianGridBackbone"


def _run(argv, caplog):
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="hoiguide"):
        code = main(argv)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return code, errors


@pytest.mark.parametrize("argv, pattern", [
    (["demo", "--seed", "-1", "--out", "{tmp}/o"], None),      # argparse: SystemExit(2)
    (["synth", "--n", "1", "--seed", "-3", "--out", "{tmp}/o"], None),
])
def test_negative_seed_is_a_usage_error(argv, pattern, tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main([a.format(tmp=tmp_path) for a in argv])
    assert ei.value.code == 2
    assert "--seed: expected a non-negative integer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_option_value_names_the_option(tmp_path, caplog):
    code, errors = _run(["demo", "--option", "grid_resolution=abc", "--out",
                         str(tmp_path / "o"), "--backbone", ANALYTIC], caplog)
    assert code == 2 and len(errors) == 1
    assert "--option: GuidanceOptions.grid_resolution" in errors[0] and "'abc'" in errors[0]
    assert not (tmp_path / "o").exists()


def test_demo_refuses_a_folder_that_is_not_its_own(tmp_path, caplog):
    out = tmp_path / "o"
    out.mkdir()
    write_json(out / "result.json", {"status": "ok", "note": "someone else's"})
    code, errors = _run(["demo", "--out", str(out), "--backbone", ANALYTIC], caplog)
    assert code == 2 and "not an earlier 'hoiguide-demo' output" in errors[0]
    assert json.loads((out / "result.json").read_text())["note"] == "someone else's"


def test_unwritable_out_is_one_line(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, errors = _run(["demo", "--out", str(blocker / "sub"), "--backbone", ANALYTIC],
                        caplog)
    assert code == 2 and len(errors) == 1 and "cannot write into" in errors[0]


def test_scene_missing_a_key_is_named(tmp_path, caplog):
    scene = tmp_path / "scene"
    scene.mkdir()
    write_json(scene / "scene.json", {"format": "hoiguide-synth-scene", "version": 1,
                                      "scene_id": "x", "files": {}})
    code, errors = _run(["demo", "--scene", str(scene), "--out", str(tmp_path / "o"),
                         "--backbone", ANALYTIC], caplog)
    assert code == 2 and len(errors) == 1
    assert "missing camera" in errors[0] and "scene.json" in errors[0]
    assert not (tmp_path / "o").exists()


def test_bad_schedule_file_exits_2(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nphases: [{name: a, window: {start: 0.5, end: 0.4}}]\n")
    code, errors = _run(["schedule", str(bad)], caplog)
    assert code == 2 and len(errors) == 1 and "bad.yaml" in errors[0]
    code, errors = _run(["schedule", str(tmp_path / "missing.yaml")], caplog)
    assert code == 2


def test_busy_port_is_reported_before_gradio_starts(caplog):
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code, errors = _run(["app", "--port", str(port)], caplog)
    assert code == 2 and errors == [f"--port {port}: already in use on 127.0.0.1; stop the "
                                     f"other server or pick another port (--port {port + 1})"]


def test_a_folder_is_not_an_image(tmp_path, caplog):
    code, errors = _run(["reconstruct", str(tmp_path), "--out", str(tmp_path / "o"),
                         "--models", "offline"], caplog)
    assert code == 2 and len(errors) == 1 and "is a folder, not an image file" in errors[0]
    assert not (tmp_path / "o").exists()
