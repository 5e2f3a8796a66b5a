"""The torchvision stand-in used while importing hy3dgen, against torchvision's documented
behaviour for tensor images, with expectations computed by hand or by naive code here."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from hoiguide.backbones import _torchvision_shim as tv


# -- Resize -------------------------------------------------------------------------------


@pytest.mark.parametrize("hw,size,expected", [
    ((20, 30), 10, (10, 15)),   # shorter side (height) -> 10, width keeps the aspect ratio
    ((30, 20), 10, (15, 10)),
    ((7, 10), 5, (5, 7)),       # int(5 * 10 / 7) = int(7.14) = 7 (truncated, not rounded)
    ((10, 7), 5, (7, 5)),
    ((9, 9), 4, (4, 4)),
    ((20, 30), (6, 8), (6, 8)),  # explicit (h, w)
    ((20, 30), [10], (10, 15)),  # one-element sequence = shorter side
])
def test_resize_output_size(hw, size, expected):
    assert tv.resized_output_size(*hw, size) == expected
    img = torch.rand(2, 3, *hw)
    assert tuple(tv.Resize(size)(img).shape) == (2, 3, *expected)


def test_resize_max_size_caps_the_longer_side():
    assert tv.resized_output_size(10, 40, 8, max_size=20) == (5, 20)
    with pytest.raises(ValueError, match="max_size"):
        tv.resized_output_size(10, 40, (8, 8), max_size=20)


def test_resize_same_size_returns_input_unchanged():
    img = torch.rand(1, 3, 12, 16)
    assert tv.Resize(12)(img) is img


def _aa_weights_1d(n_in, n_out):
    """Antialiased bilinear (triangle filter widened by the scale factor) weights, as
    documented for PIL / torch antialias=True; computed naively."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        for j in range(n_in):
            d = abs(j + 0.5 - centre) / support
            w[i, j] = max(0.0, 1.0 - d)
        w[i] /= w[i].sum()
    return w


def test_resize_downsampling_is_antialiased_bilinear():
    img = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    img[0, 0, 3, 4] = 1.0  # an impulse
    out = tv.Resize(4, tv.InterpolationMode.BILINEAR, antialias=True)(img)[0, 0].numpy()
    w = _aa_weights_1d(8, 4)
    np.testing.assert_allclose(out, np.outer(w[:, 3], w[:, 4]), atol=1e-12)
    # factor 2: interior weights 1/8, 3/8, 3/8, 1/8 (hand-computed triangle filter)
    np.testing.assert_allclose(w[1, 1:5], [1 / 8, 3 / 8, 3 / 8, 1 / 8])
    no_aa = tv.Resize(4, antialias=False)(img)[0, 0].numpy()
    assert not np.allclose(no_aa, out)


def test_resize_upsampling_bilinear_half_pixel_centres():
    img = torch.tensor([[[[0.0, 4.0]]]], dtype=torch.float64)  # 1 x 2
    out = tv.Resize((1, 4))(img)[0, 0, 0].tolist()
    # output pixel k samples input position (k + 0.5) / 2 - 0.5, clamped to the edge pixels
    assert out == pytest.approx([0.0, 1.0, 3.0, 4.0])


def test_resize_integer_and_half_images_are_computed_in_float32():
    img = torch.tensor([[[[0, 255, 0, 255]]]], dtype=torch.uint8).expand(1, 1, 2, 4)
    out = tv.Resize((2, 2))(img)
    assert out.dtype == torch.uint8
    ref = tv.Resize((2, 2))(img.float())
    assert torch.equal(out, torch.round(ref).to(torch.uint8))
    half = torch.rand(1, 3, 8, 8).half()
    out_h = tv.Resize(4)(half)
    assert out_h.dtype == torch.float16
    torch.testing.assert_close(out_h, tv.Resize(4)(half.float()).half(), rtol=0, atol=0)


# -- CenterCrop ---------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,size,top,left", [
    (5, 5, 3, 1, 1),
    (6, 6, 3, 2, 2),    # round(1.5) = 2 (Python rounds half to even)
    (4, 4, 3, 0, 0),    # round(0.5) = 0
    (8, 6, (4, 2), 2, 2),
])
def test_center_crop_offsets(h, w, size, top, left):
    img = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)
    ch, cw = (size, size) if isinstance(size, int) else size
    out = tv.CenterCrop(size)(img)
    assert torch.equal(out, img[:, top:top + ch, left:left + cw])


def test_center_crop_pads_small_images_with_zeros():
    img = torch.arange(1, 7, dtype=torch.float32).reshape(1, 2, 3)
    out = tv.CenterCrop((3, 4))(img)
    # height 2 -> 3: 0 rows on top, 1 at the bottom; width 3 -> 4: 0 left, 1 right
    expect = torch.tensor([[[1, 2, 3, 0], [4, 5, 6, 0], [0, 0, 0, 0]]], dtype=torch.float32)
    assert torch.equal(out, expect)
    out2 = tv.CenterCrop(4)(torch.ones(1, 2, 2))
    assert torch.equal(out2[0], torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0],
                                               [0, 0, 0, 0]], dtype=torch.float32))


# -- Normalize / Compose ------------------------------------------------------------------


def test_normalize_formula_per_channel():
    img = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = tv.Normalize(mean, std)(img)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (img[:, c] - mean[c]) / std[c])
    assert not torch.equal(out, img)  # input untouched (not in place)
    with pytest.raises(TypeError, match="float tensor"):
        tv.Normalize(mean, std)(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="zero"):
        tv.Normalize(mean, [1.0, 0.0, 1.0])(img)


def test_compose_applies_in_order_and_rejects_pil():
    img = torch.rand(1, 3, 20, 30)
    pipe = tv.Compose([tv.Resize(10), tv.CenterCrop(10), tv.Normalize([0.5] * 3, [0.5] * 3)])
    manual = (torch.nn.functional.interpolate(img, size=(10, 15), mode="bilinear",
                                              align_corners=False, antialias=True)
              [..., 0:10, 2:12] - 0.5) / 0.5  # left = round((15 - 10) / 2) = round(2.5) = 2
    torch.testing.assert_close(pipe(img), manual)
    with pytest.raises(TypeError, match="tensors"):
        tv.Resize(10)(np.zeros((5, 5, 3)))


# -- installation only while importing hy3dgen --------------------------------------------


def test_stand_in_is_installed_only_inside_the_block():
    if tv.working_torchvision_available():
        pytest.skip("a working torchvision is installed; the stand-in is not used")
    assert "torchvision" not in sys.modules
    with tv.torchvision_stand_in() as used:
        assert used
        from torchvision import transforms  # noqa: F401  (resolves to the stand-in)

        assert transforms.Resize is tv.Resize
        assert transforms.InterpolationMode.BILINEAR.value == "bilinear"
    assert "torchvision" not in sys.modules and "torchvision.transforms" not in sys.modules
    assert importlib.util.find_spec("torchvision") is None
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401


def test_pymeshlab_placeholder_raises_on_use():
    if importlib.util.find_spec("pymeshlab") is not None:
        pytest.skip("pymeshlab is installed; the placeholder is not used")
    with tv.pymeshlab_stand_in() as used:
        assert used
        import pymeshlab

        with pytest.raises(ImportError, match="pip install pymeshlab"):
            pymeshlab.MeshSet()
        with pytest.raises(ImportError, match="pymeshlab"):
            pymeshlab.Percentage(2)
    assert "pymeshlab" not in sys.modules


def test_hy3dgen_conditioner_uses_the_stand_in_and_nothing_leaks():
    pytest.importorskip("hy3dgen")
    from hoiguide.backbones.hunyuan import HunyuanBackbone, import_hy3dgen

    import_hy3dgen()
    assert "torchvision" not in sys.modules or tv.working_torchvision_available()
    from transformers.utils import import_utils

    assert import_utils.is_torchvision_available() == tv.working_torchvision_available()
    bb = HunyuanBackbone.from_config(HunyuanBackbone.tiny_config(), seed=0)
    enc = bb.conditioner.main_image_encoder
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    # hy3dgen maps [-1, 1] -> [0, 1], then Resize(56, bilinear, antialias) + CenterCrop(56)
    # + Normalize(DINO mean/std): written out here with plain torch
    x = (img + 1) / 2
    x = torch.nn.functional.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False,
                                        antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    torch.testing.assert_close(enc.transform((img + 1) / 2), x)
    with torch.no_grad():
        torch.testing.assert_close(enc(img), enc.model(x).last_hidden_state)
