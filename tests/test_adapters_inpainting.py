"""hoiguide.adapters.inpainting: the OpenCV fallback, a tiny randomly initialised
FluxKontextPipeline of the real diffusers classes (CPU, no downloads), object_image."""

import sys

import numpy as np
import pytest
import torch

from hoiguide.adapters import (FluxKontextInpainter, Inpainter, OpenCVInpainter,
                               WeightsNotFoundError, object_image)

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (the CI machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _painted(H=64, W=80):
    """A smooth background with a red "hand" blob painted over it."""
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    bg = np.stack([60 + 1.5 * xx, 80 + 1.0 * yy, 120 + 0.5 * (xx + yy)], -1)
    img = np.clip(bg, 0, 255).astype(np.uint8)
    hand = ((xx - 40) / 10.0) ** 2 + ((yy - 30) / 7.0) ** 2 < 1
    out = img.copy()
    out[hand] = (230, 20, 20)
    return out, img, hand


# -- OpenCV ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_removes_the_painted_region(method):
    painted, clean, hand = _painted()
    inp = OpenCVInpainter(radius=5, method=method, dilate_px=2)
    assert isinstance(inp, Inpainter)
    out = inp(painted, hand, "mug")
    assert out.shape == painted.shape and out.dtype == np.uint8
    err = np.abs(out.astype(float) - clean.astype(float))[hand]
    assert err.mean() < 6 and (out[hand][:, 0].astype(int) - out[hand][:, 1]).max() < 80
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(hand, iterations=2)
    assert np.array_equal(out[far], painted[far])                    # untouched elsewhere
    assert np.array_equal(inp(painted, np.zeros_like(hand), "mug"), painted)


def test_opencv_plus_object_image_is_the_synth_observer():
    """Same crop rule and fill as hoiguide.synth.observers.inpaint_object."""
    from hoiguide.synth.observers import inpaint_object

    painted, _, hand = _painted()
    yy, xx = np.mgrid[:64, :80]
    amodal = (np.abs(xx - 45) < 14) & (np.abs(yy - 34) < 20)
    ours = object_image(OpenCVInpainter(radius=5, method="telea", dilate_px=3)(
        painted, hand, "box"), amodal, size=256, margin=0.1)
    theirs = inpaint_object(painted, hand, amodal, dilate_px=3, size=256, margin=0.1)
    assert np.array_equal(ours, theirs)


def test_object_image_geometry_by_hand():
    img = np.full((50, 60, 3), 90, np.uint8)
    mask = np.zeros((50, 60), bool)
    mask[10:20, 20:40] = True                    # 20 wide, 10 high
    img[mask] = (10, 200, 30)
    out = object_image(img, mask, size=120, margin=0.1)
    assert out.shape == (120, 120, 4) and out.dtype == np.uint8
    # square of side 20 * 1.2 = 24 px centred on the box: object spans 20/24 of the width
    a = out[..., 3] > 127
    ii, jj = np.nonzero(a)
    assert (jj.max() + 1 - jj.min()) == pytest.approx(100, abs=1)
    assert (ii.max() + 1 - ii.min()) == pytest.approx(50, abs=1)
    assert (jj.min() + jj.max() + 1) / 2 == pytest.approx(60, abs=0.6)
    assert np.all(out[60, 60, :3] == (10, 200, 30))
    assert np.all(out[5, 5] == (255, 255, 255, 0))                    # white, transparent
    with pytest.raises(ValueError, match="empty"):
        object_image(img, np.zeros((50, 60), bool))
    with pytest.raises(ValueError, match=r"shape \(50, 60\)"):
        object_image(img, np.ones((50, 61), bool))


# -- FLUX.1 Kontext ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def kontext():
    pytest.importorskip("diffusers")
    return FluxKontextInpainter.from_config(seed=0, num_inference_steps=1)


def test_kontext_one_step_contract(kontext, monkeypatch):
    painted, _, hand = _painted(64, 64)
    seen = {}
    orig = kontext.pipeline.__call__

    class Spy:
        def __getattr__(self, name):
            return getattr(kontext.pipeline, name)

        def __call__(self, **kw):
            seen.update(kw)
            return orig(**kw)

    real = kontext.pipeline
    kontext.pipeline = Spy()
    try:
        out = kontext(painted, hand, "mug")
    finally:
        kontext.pipeline = real
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert seen["prompt"] == "Remove hands but keep the mug."
    assert seen["num_inference_steps"] == 1 and seen["guidance_scale"] == 2.5
    assert seen["max_area"] == 64 * 64 and seen["_auto_resize"] is False
    assert np.array_equal(out, kontext(painted, hand, "mug"))            # seeded
    # defaults are the reference's
    ref = FluxKontextInpainter(kontext.pipeline)
    assert (ref.num_inference_steps, ref.guidance_scale, ref.auto_resize) == (28, 2.5, True)
    assert ref.prompt("bottle") == "Remove hands but keep the bottle."


def test_kontext_composite_keeps_pixels_outside_the_hand(kontext):
    painted, _, hand = _painted(64, 64)
    comp = FluxKontextInpainter(kontext.pipeline, num_inference_steps=1, composite=True,
                                dilate_px=2, auto_resize=False, max_sequence_length=16)
    out = comp(painted, hand, "mug")
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(hand, iterations=2)
    assert np.array_equal(out[far], painted[far])


def test_kontext_loads_a_saved_folder(kontext, tmp_path):
    kontext.pipeline.save_pretrained(tmp_path / "kontext")
    inp = FluxKontextInpainter.from_pretrained(str(tmp_path / "kontext"), device="cpu",
                                               local_files_only=True, num_inference_steps=1,
                                               auto_resize=False, max_sequence_length=16)
    painted, _, hand = _painted(64, 64)
    assert np.array_equal(inp(painted, hand, "mug"), kontext(painted, hand, "mug"))


def test_missing_weights_and_packages(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    with pytest.raises(WeightsNotFoundError, match="no such file or folder.*licence"):
        FluxKontextInpainter.from_pretrained(str(tmp_path / "none"), device="cpu")
    with pytest.raises(WeightsNotFoundError, match=r"(?s)offline mode.*hf auth login"):
        FluxKontextInpainter.from_pretrained("hoiguide-tests/no-such-kontext", device="cpu",
                                             local_files_only=True)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"hoiguide\[inpaint\]"):
        FluxKontextInpainter.from_config()
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="opencv-python-headless"):
        OpenCVInpainter()(*_painted()[::2])


def test_bad_input():
    painted, _, hand = _painted()
    inp = OpenCVInpainter()
    with pytest.raises(ValueError, match=r"expected a mask of shape \(64, 80\)"):
        inp(painted, hand[:10])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        inp(painted[..., 0], hand)
    with pytest.raises(ValueError, match="method"):
        OpenCVInpainter(method="fast")
    with pytest.raises(ValueError, match="{object}"):
        FluxKontextInpainter(None, prompt="remove the hand")
