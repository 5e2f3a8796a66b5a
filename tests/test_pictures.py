"""hoiguide.pictures: overlay, turntable strip, loss-curve plot (small analytic meshes)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from hoiguide import pictures
from hoiguide.guidance import History, HistoryRecord
from hoiguide.pictures import (label, loss_plot, main_terms, overlay, side_by_side, turntable,
                               turntable_frame)
from hoiguide.types import Camera, Mesh

CAM = Camera.from_fov(60.0, 32, 32)


def quad(half: float, z: float, facing_camera: bool = True, cx: float = 0.0) -> Mesh:
    """A square in the plane z (metres), centred on (cx, 0, z)."""
    v = torch.tensor([[-half + cx, -half, z], [half + cx, -half, z], [half + cx, half, z],
                      [-half + cx, half, z]], dtype=torch.float64)
    f = [[0, 2, 1], [0, 3, 2]] if facing_camera else [[0, 1, 2], [0, 2, 3]]
    return Mesh(v, torch.tensor(f))


def sphere(center, radius: float, subdivisions: int = 3) -> Mesh:
    import trimesh

    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(torch.as_tensor(np.asarray(tm.vertices) + np.asarray(center)),
                torch.as_tensor(np.asarray(tm.faces)))


def projected_box(half: float, z: float, cam: Camera, cx: float = 0.0):
    """Pixel bounds (u0, u1, v0, v1) of a quad (continuous pixel coordinates)."""
    u0, u1 = cam.fx * (cx - half) / z + cam.cx, cam.fx * (cx + half) / z + cam.cx
    v0, v1 = cam.fy * -half / z + cam.cy, cam.fy * half / z + cam.cy
    return u0, u1, v0, v1


def lambert_reference(cam: Camera, normal=(0.0, 0.0, -1.0)) -> np.ndarray:
    """Naive per-pixel light intensity of a flat surface with ``normal`` (written out here)."""
    n = np.asarray(normal, float)
    key = pictures._KEY[1] / np.linalg.norm(pictures._KEY[1])
    out = np.zeros((cam.height, cam.width))
    for row in range(cam.height):
        for col in range(cam.width):
            ray = np.array([(col + 0.5 - cam.cx) / cam.fx, (row + 0.5 - cam.cy) / cam.fy, 1.0])
            view = -ray / np.linalg.norm(ray)
            out[row, col] = (pictures._AMBIENT + pictures._KEY[0] * max(0.0, n @ key)
                             + pictures._HEAD * max(0.0, n @ view))
    return out


# --------------------------------------------------------------------------------------
# overlay
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("facing", [True, False])
def test_overlay_keeps_input_outside_and_blends_inside(facing):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    half, z, tint, alpha = 0.2, 1.0, (0.9, 0.2, 0.1), 0.5
    out = overlay(img, [quad(half, z, facing)], CAM, colors=[tint], alpha=alpha)
    assert out.shape == img.shape and out.dtype == np.uint8
    u0, u1, v0, v1 = projected_box(half, z, CAM)
    cols, rows = np.meshgrid(np.arange(32), np.arange(32))
    outside = (cols + 1 <= u0) | (cols >= u1) | (rows + 1 <= v0) | (rows >= v1)
    inside = (cols >= u0) & (cols + 1 <= u1) & (rows >= v0) & (rows + 1 <= v1)
    assert outside.sum() > 500 and inside.sum() > 60
    np.testing.assert_array_equal(out[outside], img[outside])
    # fully covered pixels: (1 - a) * input + a * tint * Lambert, with the flat normal facing
    # the camera (either winding: the side facing the viewer is shaded)
    light = lambert_reference(CAM)
    shaded = np.clip(np.asarray(tint)[None, None] * light[..., None], 0, 1) * 255
    expect = (1 - alpha) * img.astype(float) + alpha * shaded
    np.testing.assert_allclose(out[inside].astype(float), expect[inside], atol=1.01)
    # edge pixels (partly covered, supersampled): strictly between input and full blend
    edge = ~outside & ~inside
    assert edge.any()
    d_full = np.abs(expect[edge] - img[edge].astype(float)).sum(-1)
    d_out = np.abs(out[edge].astype(float) - img[edge].astype(float)).sum(-1)
    assert (d_out <= d_full + 3).all()
    assert ((d_out < d_full - 3) & (d_full > 20)).any()


def test_overlay_alpha_extremes_and_empty():
    img = np.full((32, 32, 3), 77, np.uint8)
    q = quad(0.2, 1.0)
    np.testing.assert_array_equal(overlay(img, q, CAM, alpha=0.0), img)
    black = np.zeros_like(img)
    out = overlay(black, [q], CAM, colors=[(0.0, 1.0, 0.0)], alpha=1.0)
    assert out[..., 1].max() > 100 and out[..., [0, 2]].max() == 0
    np.testing.assert_array_equal(overlay(img, [Mesh.empty()], CAM), img)
    # a mesh behind the camera draws nothing
    np.testing.assert_array_equal(overlay(img, [quad(0.2, -1.0)], CAM), img)


def test_overlay_occlusion_and_rgba_input():
    img = np.zeros((32, 32, 4), np.uint8)
    far = quad(0.4, 1.0)                 # red, large
    near = quad(0.05, 0.8)               # blue, small, in front
    out = overlay(img, [far, near], CAM, colors=[(1, 0, 0), (0, 0, 1)], alpha=1.0)
    assert out.shape == (32, 32, 3)
    assert out[16, 16, 2] > 100 and out[16, 16, 0] == 0     # the near quad hides the far one
    assert out[16, 8, 0] > 100 and out[16, 8, 2] == 0       # only the far quad there


def test_overlay_rescales_the_camera_to_the_image():
    q = quad(0.2, 1.0)
    small = overlay(np.zeros((32, 32, 3), np.uint8), q, CAM, alpha=1.0)
    big = overlay(np.zeros((64, 64, 3), np.uint8), q, CAM, alpha=1.0)
    # covered area in pixels (coverage-weighted): the projected square, 4x as many pixels
    # at twice the size
    a_small = small.sum(-1).sum() / small.sum(-1)[16, 16]
    a_big = big.sum(-1).sum() / big.sum(-1)[32, 32]
    u0, u1, v0, v1 = projected_box(0.2, 1.0, CAM)
    assert a_small == pytest.approx((u1 - u0) * (v1 - v0), rel=0.05)
    assert a_big / a_small == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("kwargs,match", [
    (dict(image=np.zeros((32, 32), np.uint8)), r"expected image as \(H, W, 3\) uint8"),
    (dict(image=np.zeros((32, 32, 3), np.float32)), r"expected image as \(H, W, 3\) uint8"),
    (dict(colors=[(1, 0, 0), (0, 1, 0)]), r"one RGB colour per mesh \(1, 3\)"),
    (dict(colors=[(2, 0, 0)]), r"colours in \[0, 1\]"),
    (dict(alpha=1.5), r"alpha in \[0, 1\]"),
    (dict(meshes=[]), "at least one mesh"),
    (dict(supersample=0), "supersample"),
])
def test_overlay_bad_input(kwargs, match):
    args = dict(image=np.zeros((32, 32, 3), np.uint8), meshes=[quad(0.2, 1.0)], camera=CAM)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        overlay(**args)
    with pytest.raises(TypeError, match="Camera"):
        overlay(np.zeros((8, 8, 3), np.uint8), quad(0.2, 1.0), "cam")


# --------------------------------------------------------------------------------------
# turntable
# --------------------------------------------------------------------------------------


def _tile(strip: np.ndarray, k: int, size: int) -> np.ndarray:
    return strip[:, k * size:(k + 1) * size]


def _pixels_of(tile: np.ndarray, rgb, tol: int = 60) -> np.ndarray:
    """Pixels whose hue is that of ``rgb`` (a pure channel), as a boolean mask."""
    c = int(np.argmax(rgb))
    others = [i for i in range(3) if i != c]
    t = tile.astype(int)
    return (t[..., c] > 40) & (t[..., others].max(-1) < tol)


def test_turntable_has_n_tiles_and_orbits_about_the_vertical_axis():
    size, n = 40, 4
    big = sphere((0.0, 0.0, 0.5), 0.05)
    small = sphere((0.06, 0.0, 0.5), 0.02)
    strip = turntable([big, small], CAM, n=n, size=size, colors=[(1, 0, 0), (0, 0, 1)],
                      center=(0.0, 0.0, 0.5), radius=0.09, background=(0, 0, 0))
    assert strip.shape == (size, n * size, 3) and strip.dtype == np.uint8
    cols = np.arange(size) + 0.5
    centroids = []
    for k in range(n):
        tile = _tile(strip, k, size)
        assert _pixels_of(tile, (1, 0, 0)).sum() > 50          # every view shows the body
        blue = _pixels_of(tile, (0, 0, 1))
        centroids.append((blue.sum(), (blue * cols[None]).sum() / max(blue.sum(), 1)))
    # view 0 is the input view: the knob (+x) on the right; half a turn: on the left;
    # a quarter turn either way: in front (centred) or hidden behind the body
    assert centroids[0][0] > 5 and centroids[0][1] > size / 2 + 4
    assert centroids[2][0] > 5 and centroids[2][1] < size / 2 - 4
    counts = sorted([centroids[1][0], centroids[3][0]])
    assert counts[0] == 0 and counts[1] > 5
    front = centroids[1] if centroids[1][0] else centroids[3]
    assert abs(front[1] - size / 2) < 2.5
    # mirror symmetry of views 0 and 2 about the tile's vertical centre line
    assert centroids[0][1] - size / 2 == pytest.approx(size / 2 - centroids[2][1], abs=1.0)


def test_turntable_of_a_sphere_is_the_same_in_every_view_and_fits_the_tile():
    size, n = 48, 3
    s = sphere((0.0, 0.0, 0.5), 0.05, subdivisions=4)
    strip = turntable(s, CAM, n=n, size=size, radius=0.05)
    tiles = [_tile(strip, k, size).astype(float) for k in range(n)]
    for t in tiles[1:]:
        assert np.abs(t - tiles[0]).mean() < 1.5
    cover = (tiles[0] < 250).any(-1)
    rows, cols = np.nonzero(cover)
    # the bounding sphere fills the tile without touching its border
    assert rows.min() >= 1 and cols.min() >= 1 and rows.max() <= size - 2 and \
        cols.max() <= size - 2
    assert cols.max() - cols.min() + 1 >= 0.8 * size


def test_turntable_view_zero_looks_along_the_line_of_sight():
    size = 32
    s = sphere((0.25, -0.1, 0.5), 0.03)      # far off the optical axis
    strip = turntable(s, CAM, n=1, size=size, background=(0, 0, 0))
    cover = strip.sum(-1) > 0
    rows, cols = np.nonzero(cover)
    assert (cols + 0.5).mean() == pytest.approx(size / 2, abs=1.0)
    assert (rows + 0.5).mean() == pytest.approx(size / 2, abs=1.0)


def test_turntable_empty_and_frame_and_errors():
    strip = turntable([Mesh.empty()], CAM, n=2, size=16, background=(0.5, 0.5, 0.5))
    assert strip.shape == (16, 32, 3) and (strip == 128).all()
    c, r = turntable_frame([quad(0.1, 1.0), quad(0.1, 2.0, cx=0.4)])
    np.testing.assert_allclose(c, [0.2, 0.0, 1.5])
    assert r == pytest.approx(math.sqrt(0.3 ** 2 + 0.1 ** 2 + 0.5 ** 2))
    with pytest.raises(ValueError, match="n >= 1"):
        turntable(quad(0.1, 1.0), CAM, n=0)
    with pytest.raises(ValueError, match="size >= 8"):
        turntable(quad(0.1, 1.0), CAM, size=4)
    with pytest.raises(ValueError, match="center"):
        turntable(quad(0.1, 1.0), CAM, center=(0, 0))


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def test_side_by_side_and_label():
    a = np.zeros((10, 6, 3), np.uint8)
    b = np.full((8, 4, 3), 9, np.uint8)
    out = side_by_side([a, b], gap=2)
    assert out.shape == (10, 12, 3)
    assert (out[:, 6:8] == 255).all() and (out[:8, 8:] == 9).all() and (out[8:, 8:] == 255).all()
    img = np.full((20, 60, 3), 255, np.uint8)
    lab = label(img, "hi")
    assert lab.shape == img.shape and (lab != 255).any() and (img == 255).all()


# --------------------------------------------------------------------------------------
# loss plot
# --------------------------------------------------------------------------------------


def make_history() -> History:
    recs = []
    for it in range(3):
        recs.append(HistoryRecord(0, "hand", it, {"keypoints_2d": 5.0 - it, "normal": 0.3,
                                                  "translation": 0.0}, 1.0 - 0.1 * it))
    for it in range(2):
        recs.append(HistoryRecord(1, "object", it, {"normal": 0.2, "silhouette": 0.1 + it},
                                  2.0 + it))
    for step in (2, 3):
        recs.append(HistoryRecord(step, "joint", 0, {"normal": 0.1, "normal@hand": 0.4,
                                                     "proximity": 0.01}, 0.5))
    recs.append(HistoryRecord(3, "joint", 1, {}, float("nan"), skipped="empty_surface"))
    return History(recs)


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return arr


def test_loss_plot_from_history_and_from_history_json(tmp_path):
    pytest.importorskip("matplotlib")
    h = make_history()
    p1 = loss_plot(h, tmp_path / "a" / "losses.png", title="test")
    arr = _png_size(p1)
    assert arr.shape == (550, 800, 3)
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20      # curves, shading, text
    records = json.loads(json.dumps(h.to_list(), default=str))
    p2 = loss_plot(records, tmp_path / "b.png")
    assert _png_size(p2).shape == (550, 800, 3)
    p3 = loss_plot(History(), tmp_path / "empty.png")
    assert _png_size(p3).shape == (550, 800, 3)


def test_main_terms_order_and_exclusions():
    recs = make_history().to_list()
    # normal: 7 records; keypoints_2d: 3 (first seen before silhouette, also 2); translation
    # is always 0 and normal@hand a labelled variant: both left out
    assert main_terms(recs) == ["normal", "keypoints_2d", "silhouette", "proximity"]
    assert main_terms(recs, max_terms=2) == ["normal", "keypoints_2d"]


def test_loss_plot_without_matplotlib_and_bad_input(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="History or a list"):
        loss_plot({"total": 1.0}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="record 0"):
        loss_plot([{"total": 1.0}], tmp_path / "x.png")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="matplotlib"):
        loss_plot(make_history(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
