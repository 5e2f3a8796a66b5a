"""hoiguide.io: strict JSON, YAML numbers, atomic folders, the output-folder rule, images."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from hoiguide.io import (ImageError, OutputFolderError, check_output_folder, commit_folder,
                         fingerprint, load_image, load_yaml, read_json, write_json)


def test_json_is_strict_and_atomic(tmp_path):
    p = write_json(tmp_path / "a" / "r.json", {"x": math.nan, "y": [1.0, math.inf],
                                                "z": np.float32(2.5), "w": np.arange(2)})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"x": None, "y": [1.0, None], "z": 2.5, "w": [0, 1]}
    assert [q.name for q in p.parent.iterdir()] == ["r.json"]      # no temporary left


def test_read_json_names_the_broken_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(bad)
    assert read_json(bad, default=None) is None
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")


def test_yaml_reads_exponents_as_numbers():
    assert load_yaml("x", text="lr: 1e-4\nb: 5E3\nc: '1e-4'") == {"lr": 1e-4, "b": 5000.0,
                                                                  "c": "1e-4"}
    with pytest.raises(ValueError, match="cfg.yaml"):
        load_yaml("cfg.yaml", text="a: [1, 2")


def test_yaml_never_constructs_objects():
    with pytest.raises(ValueError, match="not valid YAML"):
        load_yaml("evil", text="!!python/object/apply:os.system ['touch /tmp/x']")


def test_fingerprint_ignores_key_order():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_output_folder_rule(tmp_path):
    check_output_folder(tmp_path / "new", "k")                   # missing: fine
    mine = tmp_path / "mine"
    write_json(mine / "result.json", {"kind": "k"})
    (mine / "object.ply").write_text("x")
    check_output_folder(mine, "k", ("object.ply",))              # ours: replaced later
    with pytest.raises(OutputFolderError, match="not an earlier 'other' output"):
        check_output_folder(mine, "other", ("object.ply",))
    (mine / "notes.txt").write_text("user's")
    with pytest.raises(OutputFolderError, match="notes.txt"):
        check_output_folder(mine, "k", ("object.ply",))
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(OutputFolderError, match="not a folder"):
        check_output_folder(f, "k")


def test_commit_folder_replaces_whole(tmp_path):
    final, tmp = tmp_path / "out", tmp_path / "tmp"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    commit_folder(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_float_tiff_in_unit_range_keeps_its_brightness(tmp_path):
    """Issue: a float TIFF in [0, 1] came out black."""
    a = np.full((20, 24), 0.5, np.float32)
    p = tmp_path / "f.tiff"
    Image.fromarray(a, mode="F").save(p)
    img, info = load_image(p)
    assert img.shape == (20, 24, 3) and int(img.max()) == 128 and int(img.min()) == 128


def test_16bit_image_is_scaled_by_its_type_range(tmp_path):
    """Issue: a 16-bit image whose maximum is <= 255 was brightened ~257x."""
    a = np.full((20, 24), 200, np.uint16)
    p = tmp_path / "d.png"
    Image.fromarray(a).save(p)
    img, _ = load_image(p)
    assert int(img.max()) == round(200 / 65535 * 255) == 1
    img, _ = load_image(np.full((20, 24, 3), 65535, np.uint16))
    assert int(img.min()) == 255
    img, _ = load_image(np.full((20, 24, 3), 0.25, np.float64))
    assert int(img.max()) == 64


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
