"""hoiguide.adapters.moge against MoGe's documented ``infer`` output (MoGe is not on PyPI):
a fake model returns exactly that format (normalised intrinsics, inf for invalid pixels)."""

import importlib.machinery
import math
import sys
import types

import numpy as np
import pytest
import torch

from hoiguide.adapters import MoGeEstimator, PointMap, WeightsNotFoundError, moge_to_point_map
from hoiguide.types import Camera

H, W = 48, 64
F_PX = 70.0                              # MoGe's focal, pixels


def _scene_depth(H=H, W=W):
    """Background plane at 1.0 m, a box-shaped object at 0.6 m, invalid top-left corner."""
    depth = np.full((H, W), 1.0)
    depth[15:35, 20:45] = 0.6
    valid = np.ones((H, W), bool)
    valid[:6, :8] = False
    return depth, valid


class FakeMoGe:
    """``infer(image (3, H, W) in [0, 1], resolution_level, use_fp16, fov_x=None)`` -> MoGe's
    documented dict: points / depth (inf invalid), mask, normal, normalised intrinsics."""

    def __init__(self):
        self.calls = []

    def infer(self, image, resolution_level=9, use_fp16=True, fov_x=None, **kw):
        assert image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        self.calls.append({"image": image.clone(), "fov_x": fov_x,
                           "resolution_level": resolution_level, "use_fp16": use_fp16})
        _, h, w = image.shape
        depth, valid = _scene_depth(h, w)
        f = F_PX if fov_x is None else (w / 2) / math.tan(math.radians(fov_x) / 2)
        vv, uu = np.mgrid[0:h, 0:w] + 0.5
        x = (uu - w / 2) / f * depth
        y = (vv - h / 2) / f * depth
        pts = np.stack([x, y, depth], -1)
        pts[~valid] = np.inf
        dep = np.where(valid, depth, np.inf)
        normal = np.zeros((h, w, 3))
        normal[..., 2] = -1.0
        normal[~valid] = 0.0
        K = np.array([[f / w, 0, 0.5], [0, f / h, 0.5], [0, 0, 1]])
        return {"points": torch.tensor(pts, dtype=torch.float32),
                "depth": torch.tensor(dep, dtype=torch.float32),
                "mask": torch.tensor(valid), "normal": torch.tensor(normal, dtype=torch.float32),
                "intrinsics": torch.tensor(K, dtype=torch.float32)}


def _image():
    rng = np.random.default_rng(0)
    return (rng.random((H, W, 3)) * 255).astype(np.uint8)


def test_point_map_from_documented_output_reprojects_to_pixels():
    est = MoGeEstimator(FakeMoGe(), device="cpu")
    pm = est(_image())
    assert isinstance(pm, PointMap) and pm.points.shape == (H, W, 3)
    assert pm.points.dtype == np.float32 and pm.valid.dtype == bool
    # normalised intrinsics -> pixels: row 0 times W, row 1 times H
    assert (pm.camera.fx, pm.camera.fy, pm.camera.cx, pm.camera.cy) == pytest.approx(
        (F_PX, F_PX, W / 2, H / 2))
    assert (pm.camera.width, pm.camera.height) == (W, H)
    # inf -> invalid, NaN
    _, valid = _scene_depth()
    assert np.array_equal(pm.valid, valid)
    assert np.isnan(pm.points[~valid]).all() and np.isfinite(pm.points[valid]).all()
    # every valid point projects onto its own pixel centre
    vv, uu = np.mgrid[0:H, 0:W] + 0.5
    uv = pm.camera.project(pm.points[valid].astype(np.float64))
    np.testing.assert_allclose(uv, np.stack([uu, vv], -1)[valid], atol=1e-3)
    assert pm.normals.shape == (H, W, 3) and np.all(pm.normals[valid][:, 2] == -1)
    assert np.all(pm.normals[~valid] == 0)
    call = est.model.calls[-1]
    assert call["fov_x"] is None and call["resolution_level"] == 9 and call["use_fp16"] is False


def test_known_camera_with_off_centre_principal_point():
    cam = Camera(80.0, 80.0, 25.0, 20.0, W, H)     # a crop's camera: off-centre
    est = MoGeEstimator(FakeMoGe(), device="cpu")
    pm = est(_image(), camera=cam)
    assert pm.camera == cam
    assert est.model.calls[-1]["fov_x"] == pytest.approx(
        math.degrees(2 * math.atan(W / (2 * 80.0))))
    depth, valid = _scene_depth()
    np.testing.assert_allclose(pm.depth[valid], depth[valid], rtol=1e-6)
    vv, uu = np.mgrid[0:H, 0:W] + 0.5
    uv = cam.project(pm.points[valid].astype(np.float64))
    np.testing.assert_allclose(uv, np.stack([uu, vv], -1)[valid], atol=1e-3)


def test_mask_whitens_the_outside():
    est = MoGeEstimator(FakeMoGe(), device="cpu")
    mask = np.zeros((H, W), bool)
    mask[10:40, 10:50] = True
    img = _image()
    est(img, mask=mask)
    x = est.model.calls[-1]["image"].permute(1, 2, 0).numpy()
    assert np.all(x[~mask] == 1.0)
    np.testing.assert_allclose(x[mask], img[mask] / 255.0, atol=1e-6)


def test_partial_points_and_targets_drop_depth_edges():
    pm = MoGeEstimator(FakeMoGe(), device="cpu")(_image())
    mask = np.zeros((H, W), bool)
    mask[5:45, 15:50] = True
    pts, keep = pm.partial_points(mask)
    assert keep.dtype == bool and len(pts) == keep.sum()
    assert not keep[~mask].any()
    # the object's outline (a 0.6 -> 1.0 m jump) is an edge: its pixels and their
    # neighbours (dilate 1) are gone; the interiors stay
    for r, c in ((15, 30), (14, 30), (34, 30), (25, 20), (25, 19), (25, 44)):
        assert not keep[r, c], (r, c)
    for r, c in ((25, 30), (10, 30), (40, 30)):
        assert keep[r, c], (r, c)
    normals, disp, tvalid = pm.targets(mask)
    assert normals.shape == (H, W, 3) and disp.shape == (H, W)
    assert float(disp[25, 30]) == pytest.approx(1 / 0.6, rel=1e-5)
    assert float(disp[10, 30]) == pytest.approx(1.0, rel=1e-5)
    assert float(normals[25, 30, 2]) == pytest.approx(-1.0, abs=1e-5)
    assert not bool(tvalid[~torch.as_tensor(keep)].any())


def test_moge_to_point_map_direct_and_bad_output():
    out = FakeMoGe().infer(torch.rand(3, H, W))
    out = {k: v.numpy() for k, v in out.items()}
    pm = moge_to_point_map(out, W, H, metric=False)
    assert not pm.metric and pm.valid.sum() == H * W - 48
    with pytest.raises(ValueError, match="'points' and 'intrinsics'"):
        moge_to_point_map({"points": out["points"]}, W, H)
    with pytest.raises(ValueError, match=r"\(48, 64, 3\)"):
        moge_to_point_map(out, W + 1, H)


def test_bad_input():
    est = MoGeEstimator(FakeMoGe(), device="cpu")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        est(np.zeros((H, W, 3), np.float32))
    with pytest.raises(ValueError, match=r"mask of shape \(48, 64\)"):
        est(_image(), mask=np.ones((H, W + 1), bool))
    with pytest.raises(ValueError, match="camera is 10x10"):
        est(_image(), camera=Camera(10, 10, 5, 5, 10, 10))
    with pytest.raises(TypeError, match="infer"):
        MoGeEstimator(object())


# -- loading ------------------------------------------------------------------------------


def _fake_moge_package(monkeypatch, loader):
    calls = []

    class MoGeModel:
        @classmethod
        def from_pretrained(cls, name, **kw):
            calls.append((name, kw))
            return loader(name, kw)

    pkg = types.ModuleType("moge")
    pkg.__spec__ = importlib.machinery.ModuleSpec("moge", None, is_package=True)
    model = types.ModuleType("moge.model")
    model.__spec__ = importlib.machinery.ModuleSpec("moge.model", None, is_package=True)
    mods = {"moge": pkg, "moge.model": model}
    for v in ("v1", "v2"):
        m = types.ModuleType(f"moge.model.{v}")
        m.MoGeModel = MoGeModel
        mods[f"moge.model.{v}"] = m
    for k, m in mods.items():
        monkeypatch.setitem(sys.modules, k, m)
    return calls


def test_missing_package_and_weights(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="no checkpoint at .*model.pt"):
        MoGeEstimator.from_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "moge", None)
    with pytest.raises(ImportError, match="git\\+https://github.com/microsoft/MoGe.git"):
        MoGeEstimator.from_pretrained("Ruicheng/moge-2-vitl-normal")


def test_from_pretrained_versions_and_offline(tmp_path, monkeypatch):
    def loader(name, kw):
        if kw.get("local_files_only"):
            raise FileNotFoundError("not in the local cache")
        return FakeMoGe()

    calls = _fake_moge_package(monkeypatch, loader)
    est = MoGeEstimator.from_pretrained("Ruicheng/moge-vitl", device="cpu",
                                        local_files_only=False)
    assert not est.metric and calls[-1] == ("Ruicheng/moge-vitl", {"local_files_only": False})
    est = MoGeEstimator.from_pretrained(device="cpu", local_files_only=False)
    assert est.metric and calls[-1][0] == "Ruicheng/moge-2-vitl-normal"
    with pytest.raises(WeightsNotFoundError, match=r"(?s)cache \(offline mode\).*download"):
        MoGeEstimator.from_pretrained("Ruicheng/moge-2-vitl", local_files_only=True)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    MoGeEstimator.from_pretrained(tmp_path, device="cpu")
    assert calls[-1] == (str(ckpt), {})                         # local file: no hub kwargs
