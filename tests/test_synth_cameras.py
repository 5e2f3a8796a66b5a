"""Tests for hoiguide.synth.cameras: look_at and place_camera."""

import math

import numpy as np
import pytest
import torch

from hoiguide.synth.cameras import STYLES, look_at, place_camera
from hoiguide.types import Camera, Similarity


def camera_centre(w2c: Similarity) -> np.ndarray:
    R = w2c.rotation.numpy()
    return -R.T @ w2c.translation.numpy()


def assert_rigid(w2c: Similarity):
    R = w2c.rotation.numpy()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    assert float(w2c.scale) == 1.0


@pytest.mark.parametrize("eye, target, up", [
    ((0.3, -0.2, -0.5), (0.0, 0.05, 0.1), (0, -1, 0)),
    ((1.0, 2.0, 3.0), (-1.0, 0.5, 0.0), (0, 0, 1)),
    ((0.0, -1.0, 0.0), (0.0, 0.0, 0.0), (0, -1, 0)),  # looking along up: degenerate up
])
def test_look_at_maps_eye_to_origin_and_target_to_axis(eye, target, up):
    T = look_at(eye, target, up)
    assert_rigid(T)
    np.testing.assert_allclose(T.apply(np.array(eye)), 0, atol=1e-12)
    dist = np.linalg.norm(np.subtract(target, eye))
    np.testing.assert_allclose(T.apply(np.array(target)), [0, 0, dist], atol=1e-12)


def test_look_at_up_is_image_up():
    T = look_at((0.0, 0.0, -1.0), (0.0, 0.0, 0.0))  # default up (0, -1, 0): identity
    np.testing.assert_allclose(T.rotation.numpy(), np.eye(3), atol=1e-12)
    T = look_at((2.0, 0.0, 0.0), (0.0, 0.0, 0.0), up=(0, 0, 1))  # z-up world
    above = T.apply(np.array([0.0, 0.0, 0.1]))  # a point above the target
    assert above[1] < 0 and abs(above[0]) < 1e-12  # appears straight up in the image
    with pytest.raises(ValueError, match="coincide"):
        look_at((1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="3-vector"):
        look_at((1, 1), (0, 0, 0))


def hand_like_points(rng):
    """An elongated cloud, 20 x 9 x 4 cm, rotated and shifted."""
    p = rng.uniform(-1, 1, (400, 3)) * np.array([0.10, 0.045, 0.02])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return p @ q.T + np.array([0.1, -0.3, 0.7]), q


@pytest.mark.parametrize("style", STYLES)
def test_place_camera_fill_and_inside(style):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        pts, q = hand_like_points(rng)
        fill = (0.45, 0.75)
        cam, w2c = place_camera(pts, rng, style=style, image_size=128, fill=fill,
                                forward=q[:, 0], palm_normal=q[:, 2])
        assert isinstance(cam, Camera) and (cam.width, cam.height) == (128, 128)
        assert_rigid(w2c)
        fov = math.degrees(2 * math.atan(0.5 * cam.width / cam.fx))
        assert 40 - 1e-6 <= fov <= 60 + 1e-6
        pc = w2c.apply(pts)
        assert np.all(pc[:, 2] > 0)
        uv = pc[:, :2] / pc[:, 2:] * cam.fx + np.array([cam.cx, cam.cy])  # naive projection
        assert np.all(uv >= 0) and np.all(uv <= 128)
        span = (uv.max(0) - uv.min(0)).max() / 128
        assert fill[0] - 1e-3 <= span <= fill[1] + 1e-3
        centre = 0.5 * (uv.max(0) + uv.min(0))
        assert np.all(np.abs(centre - 64) <= 0.06 * 128 + 1e-3)


def test_place_camera_styles_follow_the_hand():
    up = np.array([0.0, -1.0, 0.0])
    forward = np.array([0.0, 0.0, 1.0])  # fingers point along +z (horizontal)
    palm = np.array([1.0, 0.0, 0.0])
    for seed in range(10):
        rng = np.random.default_rng(seed)
        pts, _ = hand_like_points(rng)
        c = 0.5 * (pts.min(0) + pts.max(0))
        _, w2c = place_camera(pts, rng, style="egocentric", forward=forward,
                              palm_normal=palm)
        d = camera_centre(w2c) - c
        d /= np.linalg.norm(d)
        assert d @ up > math.sin(math.radians(25))  # above
        assert d @ forward < 0  # behind the wrist
        # the optical axis points at the box centre (up to the small centring offset)
        R = w2c.rotation.numpy()
        assert R[2] @ (-d) > math.cos(math.radians(12))
        _, w2c = place_camera(pts, rng, style="third_person", forward=forward,
                              palm_normal=palm)
        d = camera_centre(w2c) - c
        d /= np.linalg.norm(d)
        assert abs(d @ palm) > math.cos(math.radians(40))  # facing the palm or the back


def test_place_camera_deterministic_and_tensor_input():
    pts, q = hand_like_points(np.random.default_rng(0))
    a = place_camera(pts, np.random.default_rng(9), style="random")
    b = place_camera(torch.as_tensor(pts, dtype=torch.float32), np.random.default_rng(9),
                     style="random")
    assert a[0] == b[0]
    np.testing.assert_allclose(a[1].matrix().numpy(), b[1].matrix().numpy(), atol=1e-5)


def test_place_camera_errors():
    rng = np.random.default_rng(0)
    pts, _ = hand_like_points(rng)
    with pytest.raises(ValueError, match="style"):
        place_camera(pts, rng, style="drone")
    with pytest.raises(ValueError, match="extent"):
        place_camera(np.zeros((5, 3)), rng)
    with pytest.raises(ValueError, match="fill"):
        place_camera(pts, rng, fill=(0.8, 0.5))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        place_camera(pts[:, :2], rng)
    with pytest.raises(TypeError, match="Generator"):
        place_camera(pts, 0)
