"""hoiguide.apps.outputs.write_outputs: every file of a reconstruction, on a hand-made
Reconstruction (two spheres in front of a pinhole camera, a short loss history), so the
expected meshes, colours, picture sizes and report contents are known exactly."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hoiguide.result import HAND_COLOR, OBJECT_COLOR, Reconstruction
from hoiguide.guidance import History, HistoryRecord
from hoiguide.apps.outputs import OUTPUT_FILES, write_outputs
from hoiguide.types import Camera, Mesh, Similarity

SIZE = 64
CAM = Camera.from_fov(50.0, SIZE, SIZE)
TILE = 40


def sphere(center, radius, subdivisions=2) -> Mesh:
    import trimesh

    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    tm.apply_translation(center)
    return Mesh.from_trimesh(tm, dtype=torch.float64)


def make_rec(object_mesh=None, status="ok") -> Reconstruction:
    hand = sphere([-0.03, 0.0, 0.40], 0.025)
    obj = sphere([0.03, 0.0, 0.40], 0.035) if object_mesh is None else object_mesh
    ident = Similarity.identity()
    hist = History([HistoryRecord(0, "object", i, {"silhouette": 1.0 / (i + 1),
                                                   "normal": 0.5 / (i + 1)}, 2.0 / (i + 1))
                    for i in range(3)] +
                   [HistoryRecord(1, "joint", 0, {"silhouette": 0.2, "contact": 0.1}, 0.4)])
    return Reconstruction(
        object_mesh=obj, hand_mesh=hand, object_similarity=ident, hand_similarity=ident,
        gen_to_image=ident, latent=torch.zeros(1, 4), history=hist,
        timings={"total": 1.5, "phases": {"object": 1.0, "joint": 0.5}},
        schedule={"name": "fast", "num_steps": 2,
                  "resolved": "schedule 'fast' at num_steps=2\nphase object steps 0"},
        seed=0, status=status, counters={"iterations": 4})


def image() -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[..., 1] = 90
    img[::8] = 200                      # stripes, so "unchanged" is a real check
    return img


def png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    rec = make_rec()
    result = {"status": "ok", "cd_cm2": 1.2345, "f5": 0.5, "f10": 0.75, "iv_cm3": 0.25,
              "preset": "fast", "backbone": "analytic", "seed": 0,
              "seconds_parts": {"scene": 0.5}}
    info = write_outputs(out, rec, image=image(), camera=CAM, result=result,
                         title="spheres <test>", turntable_views=3, turntable_size=TILE)
    return out, rec, info


def test_every_file_is_written(written):
    out, _, info = written
    assert info["warnings"] == [] and info["skipped"] == {}
    assert info["files"] == list(OUTPUT_FILES)
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


@pytest.mark.parametrize("suffix", ["glb", "ply", "obj"])
def test_meshes_round_trip_with_their_colours(written, suffix):
    out, rec, _ = written
    for name, mesh, color in (("hand", rec.hand_mesh, HAND_COLOR),
                              ("object", rec.object_mesh, OBJECT_COLOR)):
        back = Mesh.load(out / f"{name}.{suffix}", dtype=torch.float64)
        assert back.num_faces == mesh.num_faces
        # same surface (formats may reorder/merge vertices): every vertex has its twin
        from scipy.spatial import cKDTree

        d, _ = cKDTree(mesh.vertices.numpy()).query(back.vertices.numpy())
        assert d.max() < 1e-6
        assert back.vertex_colors is not None
        rgb = back.vertex_colors[:, :3].numpy()
        np.testing.assert_allclose(rgb, np.broadcast_to(color[:3], rgb.shape), atol=1 / 255)


def test_scene_glb_holds_hand_and_object(written):
    import trimesh

    out, rec, _ = written
    scene = trimesh.load(str(out / "scene.glb"), force="scene")
    assert sorted(scene.geometry) == ["hand", "object"]
    assert len(scene.geometry["object"].faces) == rec.object_mesh.num_faces
    hist = json.loads((out / "history.json").read_text())
    assert [r["phase"] for r in hist] == ["object"] * 3 + ["joint"]


def test_overlay_keeps_the_input_and_draws_the_meshes(written):
    out, _, _ = written
    img = image()
    np.testing.assert_array_equal(png(out / "input.png"), img)
    ov = png(out / "overlay.png")
    assert ov.shape == (SIZE, 2 * SIZE + 4, 3)
    np.testing.assert_array_equal(ov[16:, :SIZE], img[16:])      # left: the input (no label)
    right = ov[:, SIZE + 4:]
    # the spheres project around the image centre; the corners stay the input
    u_obj = int(CAM.cx + CAM.fx * 0.03 / 0.40)
    assert (right[SIZE // 2, u_obj].astype(int) - img[SIZE // 2, u_obj]).__abs__().sum() > 30
    np.testing.assert_array_equal(right[-3:, -3:], img[-3:, -3:])


def test_turntable_strip_and_gif_agree(written):
    from PIL import Image

    out, _, _ = written
    strip = png(out / "turntable.png")
    assert strip.shape == (TILE, 3 * TILE, 3)
    with Image.open(out / "turntable.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (TILE, TILE)
        assert gif.info.get("loop") == 0
        for k in range(3):
            gif.seek(k)
            frame = np.asarray(gif.convert("RGB"), np.int64)
            tile = strip[:, k * TILE:(k + 1) * TILE].astype(np.int64)
            assert np.abs(frame - tile).mean() < 6, k      # the palette is adaptive
            assert (frame.sum(-1) < 600).sum() > 50        # something drawn on white


def test_loss_plot_is_drawn(written):
    pytest.importorskip("matplotlib")
    out, _, _ = written
    assert png(out / "losses.png").shape == (550, 800, 3)


def test_report_is_self_contained(written):
    out, rec, _ = written
    text = (out / "report.html").read_text()
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", text)
    assert "url(" not in text and "@import" not in text
    # every picture is embedded, byte for byte
    uris = dict(re.findall(r'alt="([^"]+)" src="data:image/\w+;base64,([^"]+)"', text))
    assert set(uris) == {"overlay.png", "turntable.gif", "turntable.png", "losses.png"}
    for name, b64 in uris.items():
        assert base64.b64decode(b64) == (out / name).read_bytes(), name
    # metrics, schedule, timings, counters and the title (escaped)
    assert "spheres &lt;test&gt;" in text
    assert "1.2345" in text and "0.750" in text and "fast" in text
    assert "schedule &#x27;fast&#x27; at num_steps=2" in text
    assert "phases.object" in text and "1.00 s" in text and "run.scene" in text
    assert f"{rec.object_mesh.num_faces} faces" in text
    for name in ("object.glb", "hand.obj", "scene.glb", "result.json"):
        assert f'href="{name}"' in text


def test_without_a_reconstruction_only_the_input_pictures(tmp_path):
    truth = [sphere([-0.03, 0.0, 0.40], 0.025), sphere([0.03, 0.0, 0.40], 0.035)]
    info = write_outputs(tmp_path, None, image=image(), camera=CAM, truth=truth,
                         turntable_views=2, turntable_size=TILE)
    assert info["files"] == ["input.png", "overlay.png", "turntable.png"]
    assert info["skipped"] == {"losses.png": "no reconstruction"}
    assert png(tmp_path / "turntable.png").shape == (TILE, 2 * TILE, 3)   # the truth only


def test_with_a_ground_truth_the_turntable_has_two_rows(tmp_path):
    from PIL import Image

    truth = [sphere([-0.03, 0.0, 0.40], 0.025), sphere([0.03, 0.0, 0.40], 0.035)]
    shift = Similarity(torch.tensor(1.0, dtype=torch.float64),
                       torch.eye(3, dtype=torch.float64),
                       torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64))
    info = write_outputs(tmp_path, make_rec(), image=image(), camera=CAM, truth=truth,
                         result={"alignment": shift.to_dict(), "status": "ok"},
                         turntable_views=2, turntable_size=TILE, report=False)
    assert "report.html" not in info["files"]
    assert png(tmp_path / "turntable.png").shape == (2 * TILE + 4, 2 * TILE, 3)
    with Image.open(tmp_path / "turntable.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (TILE, 2 * TILE + 4)


def test_empty_object_removes_stale_files_and_a_failed_picture_is_a_warning(
        tmp_path, monkeypatch):
    import hoiguide.apps.outputs as pictures   # the name write_outputs calls

    for name in ("object.obj", "object.glb", "turntable.gif"):
        (tmp_path / name).write_text("stale")

    def broken(*a, **k):
        raise RuntimeError("no turntable today")

    monkeypatch.setattr(pictures, "turntable", broken)
    info = write_outputs(tmp_path, make_rec(object_mesh=Mesh.empty(torch.float64)),
                         image=image(), camera=CAM, turntable_views=2, turntable_size=TILE)
    assert info["warnings"] == ["turntable.png: RuntimeError: no turntable today"]
    for name in ("object.obj", "object.glb", "object.ply", "turntable.gif", "turntable.png"):
        assert not (tmp_path / name).exists(), name
    for name in ("hand.glb", "hand.obj", "scene.glb", "overlay.png", "report.html"):
        assert name in info["files"]
    assert "no turntable today" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(reconstruction="not a reconstruction"), TypeError, "expected a hoiguide Reconstr"),
    (dict(image=np.zeros((8, 8), np.uint8)), ValueError, r"\(H, W, 3\) uint8, got \(8, 8\)"),
    (dict(camera="cam"), TypeError, "Camera"),
    (dict(truth=[1, 2, 3]), ValueError, r"\[hand, object\]"),
    (dict(turntable_views=0), ValueError, "turntable_views"),
])
def test_bad_arguments_write_nothing(tmp_path, kwargs, exc, match):
    out = tmp_path / "never"
    args = {"reconstruction": make_rec(), "image": image(), "camera": CAM, **kwargs}
    rec = args.pop("reconstruction")
    with pytest.raises(exc, match=match):
        write_outputs(out, rec, **args)
    assert not out.exists()
