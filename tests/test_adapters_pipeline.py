"""The image -> Observations chain (hoiguide.adapters.pipeline) and the models file
(hoiguide.adapters.models), end to end on the session's 96x96 synthetic scene.

Every model is a stand-in that answers from the scene's ground truth AS SEEN THROUGH THE CROP
the pipeline made (masks, depth and hand sampled at the crop's pixels by the test's own crop
geometry), so the chain runs for real through detection boxes, the crop, the object image,
the coarse generator run, both ICPs, guided_reconstruct and the writing of files, with the
analytic GaussianGridBackbone as the generator. The adapters' own Crop / make_crop /
OpenCVInpainter / object_image / PointMap / HandEstimate / SegmentationResult are used, and
two tests put the real TextSegmenter (tiny random GroundingDINO + SAM) and the real
MediaPipeHandEstimator (its hand fit; mediapipe's detector replaced by true landmarks) into
the chain.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hoiguide.testing import GaussianGridBackbone
from hoiguide.types import Camera, Mesh

GUIDANCE = {"num_steps": 2, "max_iterations": 1, "grid_resolution": 12, "render_size": 24,
            "final_resolution": 17}
# the real alignment, on fewer points and ICP rounds than the defaults (time)
PIPELINE = {"crop_size": 96, "object_image_size": 64, "coarse_steps": 3,
            "coarse_resolution": 17,
            "alignment": {"start_points": 500, "refine_points": 1500, "max_points": 4000,
                          "visibility_rounds": [4, 30], "hand_icp_points": 3000,
                          "iterations": [20, 40]}}


# ====================================================================== the adapters
def adapter_env() -> dict[str, Any]:
    """The real adapter modules and result classes the stand-in models build on."""
    import hoiguide.adapters.crop as crop_mod
    import hoiguide.adapters.inpainting as inp_mod
    from hoiguide.adapters.moge import PointMap
    from hoiguide.adapters.hand import HandEstimate
    from hoiguide.adapters.segmentation import SegmentationResult

    return {"crop": crop_mod, "inpainting": inp_mod, "PointMap": PointMap,
            "HandEstimate": HandEstimate, "SegmentationResult": SegmentationResult}


# ====================================================================== ground truth
def sample_full(arr: np.ndarray, crop, order: int = 0) -> np.ndarray:
    """The test's own crop geometry: crop pixel (i, j) shows the full-image point
    x = x0 + u (x1 - x0) / S, u = j + 0.5 (S - j - 0.5 when mirrored); nearest (order 0) or
    bilinear (order 1) sampling; 0 (False) outside the photo."""
    from scipy.ndimage import map_coordinates

    x0, y0, x1, y1 = map(float, crop.box)
    S = int(crop.size)
    u = np.arange(S) + 0.5
    if crop.mirrored:
        u = S - u
    xs = x0 + u * (x1 - x0) / S - 0.5
    ys = y0 + (np.arange(S) + 0.5) * (y1 - y0) / S - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    a = np.asarray(arr)
    chans = a[..., None] if a.ndim == 2 else a
    out = np.stack([map_coordinates(chans[..., c].astype(np.float64), [yy, xx], order=order,
                                    mode="grid-constant", cval=0.0)
                    for c in range(chans.shape[-1])], -1)
    out = out[..., 0] if a.ndim == 2 else out
    if a.dtype == bool:
        return out > 0.5
    if a.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out.astype(a.dtype)


@dataclass
class Truth:
    """What the stand-in models know: the scene's ground truth for the image they are shown."""

    image: np.ndarray
    camera: Camera
    mask_hand: np.ndarray
    mask_object: np.ndarray
    mask_object_amodal: np.ndarray
    depth: np.ndarray
    hand: Mesh
    keypoints_3d: torch.Tensor

    @classmethod
    def of(cls, scene) -> "Truth":
        return cls(scene.image, scene.camera, scene.mask_hand, scene.mask_object,
                   scene.mask_object_amodal, scene.depth, scene.hand_mesh,
                   torch.as_tensor(scene.hand_keypoints_3d))

    def flipped(self) -> "Truth":
        """The mirror image (a left hand): pixels flipped left-right, 3D x -> -x."""
        c = self.camera
        v = self.hand.vertices.clone()
        v[:, 0] = -v[:, 0]
        kp = self.keypoints_3d.clone()
        kp[:, 0] = -kp[:, 0]
        f = lambda a: np.ascontiguousarray(a[:, ::-1])  # noqa: E731
        return Truth(f(self.image), Camera(c.fx, c.fy, c.width - c.cx, c.cy, c.width, c.height),
                     f(self.mask_hand), f(self.mask_object), f(self.mask_object_amodal),
                     f(self.depth), Mesh(v, self.hand.faces[:, [0, 2, 1]]), kp)

    def cut(self, x_from: int) -> "Truth":
        """Columns ``x_from:`` only (an object cut off by the left border)."""
        c = self.camera
        s = slice(x_from, None)
        return Truth(np.ascontiguousarray(self.image[:, s]),
                     Camera(c.fx, c.fy, c.cx - x_from, c.cy, c.width - x_from, c.height),
                     self.mask_hand[:, s], self.mask_object[:, s],
                     self.mask_object_amodal[:, s], self.depth[:, s], self.hand,
                     self.keypoints_3d)


class Recorder:
    """Wraps make_crop to remember the crop the pipeline made (the stand-ins need it)."""

    def __init__(self, make_crop):
        self.make_crop = make_crop
        self.crop = None
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.crop = self.make_crop(*args, **kwargs)
        self.calls.append((args, kwargs))
        return self.crop


class FakeSegmenter:
    """detect: ground-truth boxes (full image); segment: ground-truth masks in the crop
    (visible on the crop, amodal on the inpainted crop)."""

    def __init__(self, truth: Truth, rec: Recorder, env, *, hide=(), empty_masks=()):
        self.truth, self.rec, self.env = truth, rec, env
        self.hide, self.empty_masks = set(hide), set(empty_masks)
        self.calls = []

    def _box(self, m):
        ii, jj = np.nonzero(m)
        return (float(jj.min()), float(ii.min()), float(jj.max() + 1), float(ii.max() + 1))

    def detect(self, image, prompt):
        self.calls.append(("detect", prompt))
        assert image.shape == self.truth.image.shape, "detect runs on the full image"
        kind = "hand" if prompt == "hand" else "object"
        if kind in self.hide:
            return []
        m = self.truth.mask_hand if kind == "hand" else self.truth.mask_object_amodal
        return [(self._box(m), 0.9, prompt)]

    def segment(self, image, prompt, fallback_prompt=None):
        crop = self.rec.crop
        assert crop is not None and image.shape[:2] == (crop.size, crop.size)
        self.calls.append(("segment", prompt))
        kind = "hand" if prompt == "hand" else "object"
        shown = sample_full(self.truth.image, crop, order=1)
        inpainted = float(np.abs(image.astype(float) - shown.astype(float)).mean()) > 2.0 \
            and kind == "object"
        if kind in self.empty_masks:
            m = np.zeros(image.shape[:2], bool)
        elif kind == "hand":
            m = sample_full(self.truth.mask_hand, crop)
        else:
            m = sample_full(self.truth.mask_object_amodal if inpainted
                            else self.truth.mask_object, crop)
        SR = self.env["SegmentationResult"]
        return SR(mask=m, box=self._box(m) if m.any() else None, score=0.8 if m.any() else 0.0,
                  label=prompt)


class FakeGeometry:
    """MoGe stand-in: the true depth seen through the crop, unprojected with the true camera
    of the crop (mirrored for a mirrored crop); invalid outside the hand and the object."""

    def __init__(self, truth: Truth, rec: Recorder, env, *, fail=False):
        self.truth, self.rec, self.env, self.fail = truth, rec, env, fail
        self.images = []

    def crop_camera(self) -> Camera:
        crop = self.rec.crop
        x0, y0, x1, y1 = map(float, crop.box)
        S = crop.size
        cam = self.truth.camera.cropped(x0, y0, x1 - x0, y1 - y0, S, S)
        return Camera(cam.fx, cam.fy, S - cam.cx, cam.cy, S, S) if crop.mirrored else cam

    def __call__(self, image):
        if self.fail:
            raise RuntimeError("the geometry model crashed")
        self.images.append(image)
        crop = self.rec.crop
        S = crop.size
        d = sample_full(self.truth.depth, crop).astype(np.float64)
        fg = sample_full(self.truth.mask_hand | self.truth.mask_object, crop)
        valid = (d > 0) & fg
        cam = self.crop_camera()
        v, u = np.meshgrid(np.arange(S) + 0.5, np.arange(S) + 0.5, indexing="ij")
        pts = cam.unproject(np.stack([u, v], -1), d).astype(np.float32)
        pts[~valid] = np.nan
        return self.env["PointMap"](points=pts, valid=valid, camera=cam, normals=None)


class FakeHaMeR:
    """HaMeR-style stand-in: (image, hand_box, side) -> the true hand in the crop's frame."""

    def __init__(self, truth: Truth, rec: Recorder, geometry: FakeGeometry, env, *,
                 none=False):
        self.truth, self.rec, self.geometry, self.env, self.none = truth, rec, geometry, env, \
            none
        self.calls = []

    def estimate(self):
        if self.none:
            return None
        crop = self.rec.crop
        v = self.truth.hand.vertices.clone()
        f = self.truth.hand.faces
        kp = self.truth.keypoints_3d.clone().float()
        if crop.mirrored:
            v[:, 0] = -v[:, 0]
            kp[:, 0] = -kp[:, 0]
            f = f[:, [0, 2, 1]]
        cam = self.geometry.crop_camera()
        return self.env["HandEstimate"](
            vertices=v, faces=f, keypoints_3d=kp, keypoints_2d=cam.project(kp),
            keypoint_confidence=torch.ones(21), side="right", model="procedural", params={})

    def __call__(self, image, hand_box, side):
        self.calls.append((tuple(hand_box), side))
        return self.estimate()


class FakeMediaPipe(FakeHaMeR):
    """MediaPipe-style call signature: (image, camera)."""

    def __call__(self, image, camera):
        self.calls.append(("camera", camera))
        return self.estimate()


def make_models(truth: Truth, rec: Recorder, env, *, hide=(), empty_masks=(),
                geometry_fails=False, no_hand=False, mediapipe=False, backbone=None):
    from hoiguide.adapters.models import Models

    geo = FakeGeometry(truth, rec, env, fail=geometry_fails)
    hand_cls = FakeMediaPipe if mediapipe else FakeHaMeR
    return Models(segmenter=FakeSegmenter(truth, rec, env, hide=hide, empty_masks=empty_masks),
                  inpainter=env["inpainting"].OpenCVInpainter(),
                  geometry=geo, hand=hand_cls(truth, rec, geo, env, none=no_hand),
                  backbone=backbone or GaussianGridBackbone())


@pytest.fixture
def env(monkeypatch):
    e = adapter_env()
    rec = Recorder(e["crop"].make_crop)
    monkeypatch.setattr(e["crop"], "make_crop", rec)
    e["rec"] = rec
    return e


@pytest.fixture(scope="module")
def truth(synth_scene):
    return Truth.of(synth_scene)


def nn_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean distance from each point of a to its nearest point of b (metres)."""
    from scipy.spatial import cKDTree

    return float(cKDTree(np.asarray(b, np.float64)).query(np.asarray(a, np.float64))[0].mean())


def only_result_json(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == [], leftovers


# ====================================================================== end to end
@pytest.fixture(scope="module")
def right_run(truth, tmp_path_factory):
    """One real run on the right-hand scene (shared by several tests)."""
    from hoiguide.apps.photo import reconstruct_image

    mp = pytest.MonkeyPatch()
    try:
        e = adapter_env()
        rec = Recorder(e["crop"].make_crop)
        mp.setattr(e["crop"], "make_crop", rec)
        models = make_models(truth, rec, e)
        out = tmp_path_factory.mktemp("right") / "out"
        result = reconstruct_image(truth.image, out, models=models, object_name="bottle",
                                   seed=0, options=PIPELINE, guidance_options=GUIDANCE,
                                   turntable_views=2, turntable_size=48)
        return {"result": result, "out": out, "crop": rec.crop, "models": models, "env": e}
    finally:
        mp.undo()


def test_end_to_end_writes_meshes_and_status(right_run, truth):
    res, out = right_run["result"], right_run["out"]
    assert res["status"] == "ok", res.get("reason")
    for name in ("object.glb", "object.ply", "hand.glb", "hand.ply", "scene.glb",
                 "result.json", "history.json", "input.png", "overlay.png",
                 "observations.png", "turntable.png"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["kind"] == "hoiguide-reconstruct"
    assert on_disk["stage"] is None and on_disk["files"] == sorted(
        p.name for p in out.iterdir())
    assert [p.name for p in out.parent.iterdir() if p.name != "out"] == []  # no temp folder
    # the stages saw what the chain says they saw
    seg = right_run["models"].segmenter
    assert ("detect", "hand") in seg.calls and ("detect", "bottle") in seg.calls
    assert res["boxes"]["object_prompt"] == "bottle"
    assert res["camera_source"] == "geometry"
    assert res["crop"]["mirrored"] is False and res["crop"]["size"] == PIPELINE["crop_size"]


def test_crop_matches_the_documented_geometry(right_run, truth):
    """The crop image equals the test's own sampling of the photo at the crop's box (so
    the stand-ins' ground truth lines up with what the pipeline's models are shown)."""
    crop = right_run["crop"]
    shown = crop.apply(truth.image)
    ref = sample_full(truth.image, crop, order=1)
    assert float(np.abs(shown.astype(float) - ref.astype(float)).mean()) < 6.0
    # geometry saw the crop whitened outside the union mask
    geo_img = right_run["models"].geometry.images[0]
    union = sample_full(truth.mask_hand | truth.mask_object, crop)
    assert (geo_img[~union] == 255).all()


def test_camera_recovered_from_the_point_map(right_run, truth):
    """The full photo's camera is the inverse crop of the point map's camera: here the
    scene's true camera."""
    cam = Camera.from_dict(right_run["result"]["camera"])
    t = truth.camera
    for k in ("fx", "fy", "cx", "cy"):
        assert getattr(cam, k) == pytest.approx(getattr(t, k), rel=1e-6, abs=1e-6)
    assert cam.size == t.size


def test_meshes_are_in_the_photos_camera_frame(right_run, truth):
    """The saved hand lies on the true hand (the hand model gave the true hand; ICP b to
    the partial points keeps it there); the object lies near the true object's region."""
    hand = Mesh.load(right_run["out"] / "hand.ply")
    assert nn_mean(hand.vertices, truth.hand.vertices) < 0.004
    obj = Mesh.load(right_run["out"] / "object.ply")
    uv = truth.camera.project(obj.vertices.double()).numpy()
    inside = (uv[:, 0] > 0) & (uv[:, 0] < 96) & (uv[:, 1] > 0) & (uv[:, 1] < 96)
    assert inside.mean() > 0.95
    c = obj.vertices.double().mean(0)
    # the object's centre is about as far as the scene's object (the analytic generator's
    # sphere is the wrong shape, so only coarse agreement is expected)
    ii, jj = np.nonzero(truth.mask_object)
    z_true = float(np.median(truth.depth[ii, jj]))
    assert abs(float(c[2]) - z_true) < 0.06


def test_left_hand_is_mirrored_in_and_out(truth, env, tmp_path):
    """The mirror image of the scene with left_hand=True: the models see the original
    (right-hand) crop and the saved meshes are mirrored back onto the mirrored truth."""
    from hoiguide.apps.photo import reconstruct_image

    left = truth.flipped()
    models = make_models(left, env["rec"], env, mediapipe=True)
    out = tmp_path / "left"
    res = reconstruct_image(left.image, out, models=models, object_name="bottle",
                            left_hand=True, options=PIPELINE, guidance_options=GUIDANCE,
                            pictures=False)
    assert res["status"] == "ok", res.get("reason")
    crop = env["rec"].crop
    assert crop.mirrored and res["crop"]["mirrored"] is True
    # the models were shown a right hand: the mirrored crop of the mirrored photo is the
    # crop of the original photo
    seen = crop.apply(left.image).astype(float)
    orig = sample_full(truth.image, type("C", (), {"box": (96 - crop.box[2], crop.box[1],
                                                           96 - crop.box[0], crop.box[3]),
                                                   "size": crop.size, "mirrored": False})(),
                       order=1).astype(float)
    assert np.abs(seen - orig).mean() < 6.0
    # MediaPipe-style call got the crop camera
    assert models.hand.calls and models.hand.calls[0][0] == "camera"
    hand = Mesh.load(out / "hand.ply")
    assert nn_mean(hand.vertices, left.hand.vertices) < 0.004
    assert nn_mean(hand.vertices, truth.hand.vertices) > 0.01   # really mirrored back
    cam = Camera.from_dict(res["camera"])
    assert cam.cx == pytest.approx(left.camera.cx, abs=1e-6)


def test_guided_reconstruct_from_an_image(truth, env):
    import hoiguide

    models = make_models(truth, env["rec"], env)
    with pytest.raises(TypeError, match="image. or .observations"):
        hoiguide.guided_reconstruct(backbone=models.backbone)
    rec = hoiguide.guided_reconstruct(image=truth.image, models=models, object_name="bottle",
                                      schedule="fast", options=GUIDANCE, progress=False,
                                      pipeline_options=PIPELINE)
    assert rec.ok, rec.status
    assert nn_mean(rec.hand_mesh.vertices, truth.hand.vertices) < 0.004
    assert not rec.object_mesh.is_empty


# ====================================================================== failures
def run_failing(truth, env, tmp_path, **kw):
    from hoiguide.apps.photo import reconstruct_image

    image = kw.pop("image", truth.image)
    models = make_models(truth, env["rec"], env, **kw)
    out = tmp_path / "out"
    res = reconstruct_image(image, out, models=models, options=PIPELINE,
                            guidance_options=GUIDANCE)
    only_result_json(out)
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["status"] == res["status"] and on_disk["stage"] == res["stage"]
    assert on_disk["files"] == ["result.json"]
    res["_models"] = models
    return res


@pytest.mark.parametrize("kw,status,stage", [
    ({"hide": ("hand",)}, "no hand detected", "detect"),
    ({"hide": ("object",)}, "no object detected", "detect"),
    ({"empty_masks": ("object",)}, "no object mask", "segment"),
    ({"empty_masks": ("hand",)}, "no hand mask", "segment"),
    ({"no_hand": True}, "no hand detected by the hand model", "hand"),
    ({"geometry_fails": True}, "geometry failed", "geometry"),
])
def test_failing_stages_leave_only_a_status(truth, env, tmp_path, kw, status, stage):
    res = run_failing(truth, env, tmp_path, **kw)
    assert res["status"] == status and res["stage"] == stage
    assert res["reason"]
    if kw.get("geometry_fails"):
        assert "crashed" in res["reason"] and "RuntimeError" in res["traceback"]


def test_no_object_box_uses_the_fallback_prompt_first(truth, env, tmp_path):
    res = run_failing(truth, env, tmp_path, hide=("object",))
    assert res["_models"].segmenter.calls == [("detect", "hand"), ("detect", "object"),
                                              ("detect", "manipulated object")]
    assert env["rec"].calls == []                            # never got to the crop
    assert "'object' nor 'manipulated object'" in res["reason"]


def test_object_cut_off_by_the_border(truth, env, tmp_path):
    """An object mask that reaches the photo's border is refused (status, no files)."""
    cut = truth.cut(30)                      # the bottle starts left of column 30
    assert cut.mask_object[:, 0].any()
    res = run_failing(cut, env, tmp_path, image=cut.image)
    assert res["status"] == "object touches the image border"
    assert res["stage"] == "segment"


def test_bad_reconstruction_status_is_a_failure(truth, env, tmp_path):
    class NoSurface(GaussianGridBackbone):
        def decode_sdf(self, latent, points):
            return super().decode_sdf(latent, points) * 0 + 1.0

    res = run_failing(truth, env, tmp_path, backbone=NoSurface())
    assert res["status"] == "empty coarse mesh" and res["stage"] == "coarse"


def test_a_failure_replaces_an_earlier_output(right_run, truth, env, tmp_path):
    """Re-running into an earlier output folder replaces it; a failed re-run leaves only
    the new result.json (no stale meshes that look like this run's)."""
    import shutil

    from hoiguide.apps.photo import reconstruct_image

    out = tmp_path / "out"
    shutil.copytree(right_run["out"], out)
    models = make_models(truth, env["rec"], env, hide=("hand",))
    res = reconstruct_image(truth.image, out, models=models, options=PIPELINE)
    assert res["status"] == "no hand detected"
    only_result_json(out)


def test_foreign_output_folder_is_refused(truth, env, tmp_path):
    from hoiguide.apps.photo import reconstruct_image

    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    models = make_models(truth, env["rec"], env)
    with pytest.raises(FileExistsError, match="not an earlier .hoiguide-reconstruct. output"):
        reconstruct_image(truth.image, out, models=models, options=PIPELINE)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert env["rec"].crop is None                           # refused before any work


# ====================================================================== the photo
def png_bytes(w: int, h: int, color_type: int = 2) -> bytes:
    """A valid PNG header claiming w x h pixels followed by a tiny (wrong) IDAT: enough for
    a reader that checks the size before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_load_image_conversions(tmp_path):
    from PIL import Image

    from hoiguide.adapters.pipeline import load_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    a, info = load_image(tmp_path / "rgb.png")
    assert np.array_equal(a, rgb) and info["mode"] == "RGB" and info["conversions"] == []
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    a, info = load_image(tmp_path / "gray.png")
    assert a.shape == (20, 30, 3) and all(np.array_equal(a[..., c], gray) for c in range(3))
    assert "grayscale" in info["conversions"][0]
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 64, np.uint8)], -1)
    rgba[0, 0] = (100, 50, 0, 128)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    a, info = load_image(tmp_path / "rgba.png")
    alpha = 128 / 255
    expect = np.round(np.array([100, 50, 0]) * alpha + 255 * (1 - alpha))
    assert np.array_equal(a[0, 0], expect.astype(np.uint8)) and info["mode"] == "RGBA"
    assert "white" in info["conversions"][0]
    g16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    a, info = load_image(tmp_path / "g16.png")
    assert a[..., 0].max() == round(59900 / 65535 * 255) and a.dtype == np.uint8
    # arrays: same rules
    a2, _ = load_image(rgba)
    assert np.array_equal(a2[0, 0], expect.astype(np.uint8))
    a3, _ = load_image(gray[..., None])
    assert a3.shape == (20, 30, 3)


def test_load_image_applies_exif_orientation(tmp_path):
    from PIL import Image

    from hoiguide.adapters.pipeline import load_image

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255                                   # left half white
    exif = Image.Exif()
    exif[0x0112] = 6                                    # stored rotated: turn 90 deg CW
    Image.fromarray(img).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    a, info = load_image(tmp_path / "phone.jpg")
    assert a.shape == (40, 20, 3)                       # upright: portrait
    assert a[:15].mean() > 200 and a[25:].mean() < 50   # the white half is now on top
    assert any("EXIF" in c for c in info["conversions"])


def test_load_image_refuses_bad_files(tmp_path):
    from hoiguide.adapters.pipeline import ImageError, load_image

    with pytest.raises(FileNotFoundError, match="no such image"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "notes.png")
    # a real PNG cut in half
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                    ).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "half.png")
    # 9000 x 6000 = 54 MP claimed in the header: refused before decoding
    (tmp_path / "huge.png").write_bytes(png_bytes(9000, 6000))
    with pytest.raises(ImageError, match="54.0 megapixels.*limit is 40 MP"):
        load_image(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="megapixels"):
        load_image(np.zeros((40, 40, 3), np.uint8), max_megapixels=0.001)
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((40, 40, 3), np.complex64))
    with pytest.raises(ImageError, match=r"\(40, 40, 2\)"):
        load_image(np.zeros((40, 40, 2), np.uint8))
    with pytest.raises(ImageError, match="at least 16"):
        load_image(np.zeros((8, 40, 3), np.uint8))


def test_unreadable_or_huge_photo_writes_nothing(truth, env, tmp_path):
    from hoiguide.adapters.pipeline import ImageError
    from hoiguide.apps.photo import reconstruct_image

    models = make_models(truth, env["rec"], env)
    (tmp_path / "huge.png").write_bytes(png_bytes(9000, 6000))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    for name in ("huge.png", "bad.jpg"):
        out = tmp_path / f"out_{name}"
        with pytest.raises(ImageError):
            reconstruct_image(tmp_path / name, out, models=models, options=PIPELINE)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg", "huge.png"]


# ====================================================================== frames
def test_uncrop_camera_inverts_cropping():
    from hoiguide.adapters.pipeline import uncrop_camera

    full = Camera(500.0, 520.0, 310.0, 245.0, 640, 480)
    box = (100.0, 60.0, 400.0, 360.0)
    crop = full.cropped(box[0], box[1], 300, 300, 128, 128)
    back = uncrop_camera(crop, box, 128, False, 640, 480)
    for k in ("fx", "fy", "cx", "cy"):
        assert getattr(back, k) == pytest.approx(getattr(full, k))
    mirrored = Camera(crop.fx, crop.fy, 128 - crop.cx, crop.cy, 128, 128)
    back = uncrop_camera(mirrored, box, 128, True, 640, 480)
    assert back.cx == pytest.approx(full.cx)
    # a 3D point: the mirrored crop camera sees the mirrored point where the crop box says
    p = np.array([0.03, -0.02, 0.5])
    u_full, v_full = full.project(p)
    u_m, v_m = mirrored.project(p * np.array([-1, 1, 1]))
    assert 128 - u_m == pytest.approx((u_full - box[0]) * 128 / 300)
    assert v_m == pytest.approx((v_full - box[1]) * 128 / 300)


def test_mirror_mesh_keeps_faces_outward():
    import trimesh

    from hoiguide.adapters.pipeline import mirror_mesh

    tm = trimesh.creation.icosphere(subdivisions=1)
    tm.vertices = tm.vertices * np.array([1.0, 2.0, 0.5]) + np.array([0.3, 0.1, 1.0])
    m = Mesh(torch.as_tensor(tm.vertices), torch.as_tensor(tm.faces))
    mm = mirror_mesh(m)
    assert torch.allclose(mm.vertices[:, 0], -m.vertices[:, 0])
    c = mm.vertices.mean(0)
    centres = mm.vertices[mm.faces].mean(1)
    assert ((mm.face_normals() * (centres - c)).sum(-1) > 0).all()
    twice = mirror_mesh(mm)
    assert torch.equal(twice.vertices, m.vertices) and torch.equal(twice.faces, m.faces)


def test_touches_border_geometry():
    from hoiguide.adapters.pipeline import _touches_border

    class C:
        box, size, mirrored = (-10.0, 5.0, 90.0, 105.0), 50, False

    m = np.zeros((50, 50), bool)
    m[20:30, 20:30] = True
    assert not _touches_border(m, C, 100, 100, 1.0)
    m2 = m.copy()
    m2[25, 5] = True                 # x = -10 + 5.5 * 2 = 1.0: footprint [0, 2] reaches x < 1
    assert _touches_border(m2, C, 100, 100, 1.0)
    m3 = m.copy()
    m3[25, 6] = True                 # x = 3.0: footprint [2, 4]
    assert not _touches_border(m3, C, 100, 100, 1.0)
    C.mirrored = True                # column j shows x = -10 + (50 - j - 0.5) * 2
    m4 = m.copy()
    m4[25, 44] = True                # x = 1.0
    assert _touches_border(m4, C, 100, 100, 1.0)
    assert not _touches_border(m2, C, 100, 100, 1.0)


# ====================================================================== the models file
def test_models_yaml_errors_name_the_path(tmp_path):
    from hoiguide.adapters.models import Models, ModelsConfigError

    cases = [
        ({"hand": {"kind": "hammer"}}, r"hand\.kind: expected one of hamer, mediapipe, got "
                                       r"'hammer'; did you mean hamer\?"),
        ({"inpainting": {"kind": "flux_kontext", "modle": "x"}},
         r"inpainting\.modle: unknown key .*did you mean model\?"),
        ({"inpainting": {"kind": "opencv", "model": "x"}},
         r"inpainting\.model: unknown key for kind 'opencv' \(it belongs to kind "
         r"flux_kontext\)"),
        ({"segmenter": {}}, r"segmenter: unknown section; did you mean segmentation\?"),
        ({"generator": {"dtype": "fp16"}}, r"generator\.dtype: expected one of float16"),
        ({"geometry": {"model": 3}}, r"geometry\.model: expected a string"),
        ({"hand": {"factory": "nocolon"}}, r"hand\.factory: expected 'module:callable'"),
        ({"hand": "hamer"}, r"hand: expected a mapping"),
        ({"pipeline": {"crop_sise": 256}}, r"pipeline\.crop_sise: .*did you mean crop_size"),
        ({"pipeline": {"crop_size": 4}}, r"pipeline: PipelineOptions\.crop_size"),
        ({"segmentation": {"options": [1]}}, r"segmentation\.options: expected a mapping"),
    ]
    for cfg, pattern in cases:
        with pytest.raises(ModelsConfigError, match=pattern):
            Models.from_dict(cfg)
    p = tmp_path / "models.yaml"
    p.write_text("hand:\n  kind: hamer\n  checkpont: /x\n")
    with pytest.raises(ModelsConfigError, match=r"models\.yaml: hand\.checkpont: .*did you "
                                                r"mean checkpoint\?") as ei:
        Models.from_yaml(p)
    assert ei.value.path == "hand.checkpont" and ei.value.source == str(p)
    p.write_text("hand: [unclosed\n")
    with pytest.raises(ModelsConfigError, match="not valid YAML"):
        Models.from_yaml(p)
    with pytest.raises(FileNotFoundError, match="models file not found"):
        Models.from_yaml(tmp_path / "nope.yaml")


_BUILT: list = []


def counting_factory(scale: float = 1.0, device: Any = None):
    _BUILT.append({"scale": scale, "device": device})
    return GaussianGridBackbone(scale=scale)


def test_models_build_lazily_from_yaml(tmp_path):
    from hoiguide.adapters.models import Models

    p = tmp_path / "m.yaml"
    p.write_text("device: cpu\n"
                 "generator:\n  factory: python:test_adapters_pipeline:counting_factory\n"
                 "  options: {scale: 0.2}\n"
                 "inpainting: {kind: opencv}\n"
                 "pipeline: {crop_size: 128}\n")
    _BUILT.clear()
    m = Models.from_yaml(p)
    assert _BUILT == [] and not m.is_built("generator")
    bb = m.backbone
    assert isinstance(bb, GaussianGridBackbone) and bb.scale == 0.2
    assert _BUILT == [{"scale": 0.2, "device": "cpu"}]
    assert m.backbone is bb and len(_BUILT) == 1                 # built once
    assert m.pipeline_options == {"crop_size": 128}
    d = m.describe()
    assert d["generator"]["factory"] == "python:test_adapters_pipeline:counting_factory"
    assert d["inpainting"]["kind"] == "opencv"
    assert d["hand"]["kind"] == "hamer"                          # default for missing roles
    m2 = m.replace(backbone=GaussianGridBackbone())
    assert m2.backbone is not bb and m.backbone is bb
    assert "object" in m2.describe()["generator"]


def test_models_load_errors_name_role_and_remedy(tmp_path):
    from hoiguide.adapters.models import ModelLoadError, Models

    with pytest.raises(ModelLoadError, match=r"models\.hand .*hand\.checkpoint and "
                                             r"hand\.mano.*mediapipe") as ei:
        Models.default().hand
    assert ei.value.role == "hand" and isinstance(ei.value.__cause__, FileNotFoundError)
    m = Models.from_dict({"generator": {"kind": "hunyuan", "model": str(tmp_path / "nowhere"),
                                        "local_files_only": True}})
    with pytest.raises(ModelLoadError, match=r"models\.generator \(hunyuan .*nowhere"):
        m.build(["generator"])
    m = Models.from_dict({"segmentation": {"factory": "python:no_such_module_xyz:make"}})
    with pytest.raises(ModelLoadError, match="no_such_module_xyz"):
        m.segmenter


def test_pipeline_options_validation():
    from hoiguide.adapters.options import PipelineOptions

    o = PipelineOptions.coerce({"crop_size": 64, "alignment": {"trim": 0.1,
                                                              "scale_range": [0.5, 2.0]}})
    assert o.alignment.trim == 0.1 and o.alignment.scale_range == (0.5, 2.0)
    with pytest.raises(ValueError, match="unknown option 'crop'; did you mean crop_size"):
        PipelineOptions.coerce({"crop": 3})
    with pytest.raises(ValueError, match="enlarge: expected a number > 0"):
        PipelineOptions(enlarge=0)
    with pytest.raises(ValueError, match="unknown AlignmentOptions field 'trimm'"):
        PipelineOptions(alignment={"trimm": 0.1})


def test_real_tiny_segmenter_plugs_in(truth, env, tmp_path):
    """The real TextSegmenter (GroundingDINO + SAM of transformers, tiny random weights):
    its detections and masks are random, so the run ends in whatever status they lead to,
    but through the chain's own checks (a status naming what was missing), never an
    interface error ("<stage> failed"), and a failed run leaves only result.json."""
    pytest.importorskip("transformers")
    from hoiguide.apps.photo import reconstruct_image
    from hoiguide.adapters.segmentation import TextSegmenter

    models = make_models(truth, env["rec"], env).replace(segmenter=TextSegmenter.from_config())
    out = tmp_path / "out"
    res = reconstruct_image(truth.image, out, models=models, options=PIPELINE,
                            guidance_options=GUIDANCE, pictures=False)
    assert not res["status"].endswith(" failed"), (res["status"], res.get("reason"))
    if res["status"] != "ok":
        only_result_json(out)
    else:
        assert (out / "hand.ply").is_file()
    assert res["models"]["segmentation"]["object"].endswith("TextSegmenter")


class LandmarkHands:
    """Stands in for mediapipe's Hands: ``process(rgb)`` returns the result shape of
    mediapipe 0.10 (multi_hand_landmarks[i].landmark[j].x/y/z normalised to the image,
    multi_handedness[i].classification[0].label/score for a mirrored image) built from the
    true keypoints seen through the pipeline's crop."""

    def __init__(self, truth: Truth, geometry: FakeGeometry):
        self.truth, self.geometry = truth, geometry

    def process(self, rgb):
        from types import SimpleNamespace as NS

        crop = self.geometry.rec.crop
        kp = self.truth.keypoints_3d.double().clone()
        if crop.mirrored:
            kp[:, 0] = -kp[:, 0]
        cam = self.geometry.crop_camera()
        uv = cam.project(kp).numpy()
        S = rgb.shape[1]
        z = (kp[:, 2] - kp[0, 2]).numpy() * cam.fx / float(kp[0, 2]) / S
        lms = NS(landmark=[NS(x=u / S, y=v / rgb.shape[0], z=zz)
                           for (u, v), zz in zip(uv, z)])
        # mediapipe labels handedness as if the image were mirrored: a right hand -> "Left"
        return NS(multi_hand_landmarks=[lms],
                  multi_handedness=[NS(classification=[NS(label="Left", score=0.95)])])


def test_real_mediapipe_estimator_in_the_chain(truth, env, tmp_path):
    """The real MediaPipeHandEstimator (its fit of the procedural hand to 21 landmarks) with
    mediapipe's detector replaced by the true keypoints: the fitted hand, placed by ICP b,
    ends up on the true hand."""
    from hoiguide.adapters.mediapipe_hand import MediaPipeHandEstimator
    from hoiguide.adapters.pipeline import observations_from_image

    models = make_models(truth, env["rec"], env)
    est = MediaPipeHandEstimator(LandmarkHands(truth, models.geometry),
                                          iterations=100)
    models = models.replace(hand=est)
    obs, crop, info = observations_from_image(truth.image, models, object_name="bottle",
                                              options=PIPELINE)
    assert info["hand"]["model"] == "procedural" and info["hand"]["side"] == "right"
    assert obs.keypoints_2d is not None and obs.hand_keypoints_3d is not None
    assert nn_mean(obs.hand_mesh.vertices, truth.hand.vertices) < 0.008
