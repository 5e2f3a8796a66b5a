"""hoiguide.adapters.crop: box maths, the crop camera, resampling and the left-hand mirror."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hoiguide.adapters import Crop, default_camera, make_crop
from hoiguide.types import Camera, Mesh


def test_default_camera_field_of_view_spans_longer_side():
    for W, H in ((640, 480), (480, 640), (100, 100)):
        cam = default_camera(W, H, fov_deg=55.0)
        assert cam.fx == cam.fy and (cam.cx, cam.cy) == (W / 2, H / 2)
        fov = math.degrees(2 * math.atan(max(W, H) / 2 / cam.fx))
        assert fov == pytest.approx(55.0, abs=1e-9)
    with pytest.raises(ValueError, match="fov_deg"):
        default_camera(10, 10, fov_deg=180)
    with pytest.raises(ValueError, match="width and height"):
        default_camera(0, 10)


def test_reference_box_rule_by_hand():
    cam = default_camera(640, 480)
    c = make_crop((100, 100, 200, 150), (180, 120, 260, 300), (480, 640), cam)
    # union (100,100,260,300) -> padded (90,90,270,310): 180 x 220 -> side 220 * 1.25 = 275
    # centred on (180, 200)
    assert c.box == pytest.approx((42.5, 62.5, 317.5, 337.5))
    assert c.size == 512 and not c.mirrored and c.image_size == (480, 640)
    assert c.scale == pytest.approx(512 / 275)
    # (width, height) is accepted too when the camera disambiguates it
    assert make_crop((100, 100, 200, 150), (180, 120, 260, 300), (640, 480), cam).box == c.box


def test_clamps_inside_image_and_centres_when_too_big():
    cam = default_camera(640, 480)
    # near the corner: clipped box (0,0,50,50) -> padded (-10,-10,60,60) -> side 87.5,
    # centred at 25 -> starts at -18.75 -> shifted to 0
    c = make_crop((-30, -30, 50, 50), None, (480, 640), cam)
    assert c.box == pytest.approx((0.0, 0.0, 87.5, 87.5))
    c = make_crop(None, (600, 400, 640, 480), (480, 640), cam)
    assert c.box[2] == pytest.approx(640) and c.box[3] == pytest.approx(480)
    # longer than the image: centred on the image along that axis
    cam2 = default_camera(100, 60)
    c = make_crop(None, (10, 5, 90, 55), (60, 100), cam2)
    # padded (0,-5,100,65) -> 100 x 70 -> side 125 > 100 and > 60
    assert c.box == pytest.approx((50 - 62.5, 30 - 62.5, 50 + 62.5, 30 + 62.5))


@settings(max_examples=60, deadline=None)
@given(W=st.integers(40, 900), H=st.integers(40, 900), data=st.data())
def test_box_properties(W, H, data):
    cam = default_camera(W, H)

    def box():
        x0 = data.draw(st.floats(-50, W - 2))
        y0 = data.draw(st.floats(-50, H - 2))
        return (x0, y0, data.draw(st.floats(max(x0, 0) + 1, W + 50)),
                data.draw(st.floats(max(y0, 0) + 1, H + 50)))

    hb, ob = box(), box()
    pad = data.draw(st.floats(0, 20))
    c = make_crop(hb, ob, (H, W), cam, pad_px=pad, size=64)
    x0, y0, x1, y1 = c.box
    assert x1 - x0 == pytest.approx(y1 - y0)                         # square
    clipped = [(max(b[0], 0), max(b[1], 0), min(b[2], W), min(b[3], H)) for b in (hb, ob)]
    ux0, uy0 = min(b[0] for b in clipped) - pad, min(b[1] for b in clipped) - pad
    ux1, uy1 = max(b[2] for b in clipped) + pad, max(b[3] for b in clipped) + pad
    assert x1 - x0 == pytest.approx(1.25 * max(ux1 - ux0, uy1 - uy0))  # x1.25 of the longer
    eps = 1e-6 * max(W, H)
    # the clipped union is inside the crop
    assert x0 <= ux0 + pad + eps and y0 <= uy0 + pad + eps
    assert x1 >= ux1 - pad - eps and y1 >= uy1 - pad - eps
    side = x1 - x0
    if side <= W:
        assert -eps <= x0 and x1 <= W + eps                           # shifted inside
    else:
        assert (x0 + x1) / 2 == pytest.approx(W / 2)                  # centred on the image
    if side <= H:
        assert -eps <= y0 and y1 <= H + eps
    else:
        assert (y0 + y1) / 2 == pytest.approx(H / 2)


@pytest.mark.parametrize("left", [False, True])
def test_crop_camera_projects_like_full_camera_plus_box_transform(left):
    rng = np.random.default_rng(0)
    cam = Camera(900.0, 880.0, 310.0, 250.0, 640, 480)
    c = make_crop((200, 150, 320, 260), (300, 200, 420, 330), (480, 640), cam, size=256,
                  left_hand=left)
    X = np.column_stack([rng.uniform(-0.2, 0.2, 50), rng.uniform(-0.2, 0.2, 50),
                         rng.uniform(0.4, 1.2, 50)])
    uv_full = cam.project(X)
    expected = c.to_crop_points(uv_full)
    # by hand: (u - x0) * size / side, mirrored u -> size - u
    hand = (uv_full - np.array(c.box[:2])) * 256 / (c.box[2] - c.box[0])
    if left:
        hand[:, 0] = 256 - hand[:, 0]
    np.testing.assert_allclose(expected, hand, atol=1e-9)
    # the crop camera sees the (mirrored, for a left hand) world at those pixels
    Xc = X * np.array([-1.0, 1.0, 1.0]) if left else X
    np.testing.assert_allclose(c.camera.project(Xc), expected, atol=1e-9)
    np.testing.assert_allclose(c.to_full_points_3d(Xc), X, atol=1e-12)
    # round trips, numpy and torch
    np.testing.assert_allclose(c.to_full_points(expected), uv_full, atol=1e-9)
    t = torch.as_tensor(uv_full)
    assert torch.allclose(c.to_full_points(c.to_crop_points(t)), t, atol=1e-9)
    assert c.camera.width == c.camera.height == 256


@pytest.mark.parametrize("left,size", [(False, 512), (True, 512), (False, 48), (True, 48)])
def test_resampling_reproduces_a_linear_ramp(left, size):
    """Bilinear resampling (antialiased when shrinking) is exact on a linear image, so every
    crop pixel must hold the ramp's value at its full-image position."""
    cam = default_camera(320, 240)
    c = make_crop((100, 60, 160, 120), (140, 90, 200, 170), (240, 320), cam, size=size,
                  left_hand=left)
    vv, uu = np.mgrid[0:240, 0:320].astype(np.float32) + 0.5
    img = (0.3 * uu + 0.1 * vv + 5).astype(np.float32)
    out = c.apply(img)
    assert out.shape == (size, size) and out.dtype == np.float32
    cv, cu = np.mgrid[0:size, 0:size] + 0.5
    full = c.to_full_points(np.stack([cu, cv], -1))
    expected = 0.3 * full[..., 0] + 0.1 * full[..., 1] + 5
    b = 4
    np.testing.assert_allclose(out[b:-b, b:-b], expected[b:-b, b:-b], atol=0.05)


def test_uint8_rgba_and_outside_fill():
    cam = default_camera(100, 60)
    img = np.zeros((60, 100, 4), np.uint8)
    img[..., :3] = 200
    img[..., 3] = 255
    c = make_crop(None, (10, 5, 90, 55), (60, 100), cam, size=50)   # crop leaves the image
    out = c.apply(img)
    assert out.shape == (50, 50, 4) and out.dtype == np.uint8
    assert out[25, 25, 3] == 255 and out[25, 25, 0] == 200
    assert out[0, 25, 3] == 0 and out[0, 25, 0] == 0                 # above the image
    with pytest.raises(ValueError, match="60x100"):
        c.apply(np.zeros((61, 100, 3), np.uint8))


@pytest.mark.parametrize("left", [False, True])
def test_dot_lands_where_the_points_say_and_mask_round_trip(left):
    cam = default_camera(400, 300)
    c = make_crop((120, 80, 200, 160), (180, 100, 260, 220), (300, 400), cam, size=128,
                  left_hand=left)
    img = np.zeros((300, 400, 3), np.uint8)
    img[140:146, 210:216] = 255                                      # centre (213, 143)
    crop = c.apply(img).astype(np.float64)[..., 0]
    ii, jj = np.nonzero(crop > 0)
    w = crop[ii, jj]
    centroid = np.array([(jj + 0.5) @ w / w.sum(), (ii + 0.5) @ w / w.sum()])
    np.testing.assert_allclose(centroid, c.to_crop_points(np.array([213.0, 143.0])), atol=0.3)
    # masks: full -> crop -> full keeps a blob (IoU), and the mirror is undone
    yy, xx = np.mgrid[0:300, 0:400]
    blob = ((xx - 190) / 40.0) ** 2 + ((yy - 140) / 30.0) ** 2 < 1
    blob &= xx < 215                                                  # asymmetric
    back = c.to_full_mask(c.apply_mask(blob))
    iou = (back & blob).sum() / (back | blob).sum()
    assert iou > 0.9
    assert not back[:, 300:].any()                                   # outside the crop
    rgb = c.to_full_image(c.apply(img))
    assert rgb.shape == (300, 400, 3) and rgb.dtype == np.uint8


def test_mirror_mesh_keeps_normals_outward_and_round_trips():
    import trimesh

    tm = trimesh.creation.box(extents=(0.1, 0.2, 0.3))
    tm.apply_translation((0.05, 0.0, 0.5))
    mesh = Mesh.from_trimesh(tm, dtype=torch.float64)
    cam = default_camera(64, 64)
    c_left = make_crop((10, 10, 30, 30), None, (64, 64), cam, size=32, left_hand=True)
    c_right = make_crop((10, 10, 30, 30), None, (64, 64), cam, size=32)
    assert c_right.mirror_mesh(mesh) is mesh
    m = c_left.mirror_mesh(mesh)
    assert torch.allclose(m.vertices[:, 0], -mesh.vertices[:, 0])
    assert m.to_trimesh().volume > 0                                  # outward normals
    back = c_left.mirror_mesh(m)
    assert torch.equal(back.vertices, mesh.vertices) and torch.equal(back.faces, mesh.faces)


def test_serialisation_round_trip():
    cam = default_camera(64, 48)
    c = make_crop((10, 10, 30, 30), (20, 5, 40, 25), (48, 64), cam, size=32, left_hand=True)
    d = c.to_dict()
    assert Crop.from_dict(d) == c


def test_bad_input_is_reported_clearly():
    cam = default_camera(64, 48)
    with pytest.raises(ValueError, match="x1 > x0"):
        make_crop((30, 10, 10, 20), None, (48, 64), cam)
    with pytest.raises(ValueError, match="outside"):
        make_crop((100, 100, 120, 120), None, (48, 64), cam)
    with pytest.raises(ValueError, match="neither"):
        make_crop(None, None, (48, 64), cam)
    with pytest.raises(ValueError, match="does not match the camera"):
        make_crop((1, 1, 5, 5), None, (100, 100), cam)
    with pytest.raises(ValueError, match=r"box \(x0, y0, x1, y1\)"):
        make_crop((1, 2, 3), None, (48, 64), cam)
    with pytest.raises(TypeError, match="Camera"):
        make_crop((1, 1, 5, 5), None, (48, 64), None)
    c = make_crop((1, 1, 5, 5), None, (48, 64), cam, size=16)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        c.to_full_points(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="16"):
        c.to_full_mask(np.zeros((8, 8), bool))
