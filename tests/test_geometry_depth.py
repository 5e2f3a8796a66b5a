"""Point maps: unprojection, depth edges, and the grid mesh the targets are rendered from."""

import numpy as np
import pytest
import torch

from hoiguide.geometry import (depth_edges, mesh_from_point_map, point_map_from_depth,
                               point_map_targets)
from hoiguide.render import render
from hoiguide.types import Camera


def _plane_depth(cam: Camera, z0: float = 0.5, slope: float = 0.2) -> np.ndarray:
    """z of the plane z = z0 + slope * y seen by the camera (analytic per pixel)."""
    v = (np.arange(cam.height) + 0.5 - cam.cy) / cam.fy
    z = z0 / (1 - slope * v)
    return np.repeat(z[:, None], cam.width, 1)


def test_point_map_reprojects_to_pixel_centres():
    cam = Camera.from_fov(50.0, 24, 16)
    d = _plane_depth(cam)
    P = point_map_from_depth(d, cam)
    uv = cam.project(torch.as_tensor(P.reshape(-1, 3))).numpy().reshape(16, 24, 2)
    jj, ii = np.meshgrid(np.arange(24) + 0.5, np.arange(16) + 0.5)
    assert np.allclose(uv[..., 0], jj) and np.allclose(uv[..., 1], ii)
    d[3, 4] = 0.0
    assert np.isnan(point_map_from_depth(d, cam)[3, 4]).all()
    with pytest.raises(ValueError, match="expected depth"):
        point_map_from_depth(d[:5], cam)


def test_depth_edges_find_a_step_and_borders_only():
    d = np.full((20, 20), 1.0)
    d[:, 10:] = 1.5                      # a 50 % step between columns 9 and 10
    e = depth_edges(d, dilate=0)
    assert e[:, 9].all() and e[:, 10].all() and e.sum() == 40
    assert depth_edges(d, dilate=1)[:, 8:12].all()
    smooth = np.linspace(1.0, 1.2, 400).reshape(20, 20)   # gentle slope: no edge
    assert not depth_edges(smooth).any()
    hole = np.ones((10, 10)); hole[5, 5] = 0
    e = depth_edges(hole, dilate=0)
    assert e[4, 5] and e[5, 4] and not e[5, 5] and not e[0, 0]


def test_grid_mesh_renders_back_to_its_depth_and_faces_the_camera():
    cam = Camera.from_fov(50.0, 32, 32)
    d = _plane_depth(cam)
    valid = np.ones_like(d, bool)
    valid[:, :4] = False
    m = mesh_from_point_map(point_map_from_depth(d, cam), valid)
    assert m.num_faces == 2 * 31 * 27
    # rendered at twice the resolution (rays between the vertices) it gives back the plane
    r = render(m, cam, size=64)
    d2 = _plane_depth(cam.resized(64, 64))
    inner = np.zeros((64, 64), bool); inner[2:-2, 10:-2] = True
    assert r.mask.numpy()[inner].all() and not r.mask.numpy()[:, :7].any()
    assert np.allclose(r.depth.numpy()[inner], d2[inner], rtol=1e-6)
    n_true = np.array([0.0, 0.2, -1.0]) / np.hypot(0.2, 1.0)   # normal of z - 0.2 z y/z ... plane
    n = r.normals.numpy()[inner]
    assert np.allclose(n, n_true, atol=1e-3)                    # facing the camera
    # the direct targets: disparity 1/z, the same normals, valid where a triangle touches
    tn, tdisp, tvalid = point_map_targets(point_map_from_depth(d, cam), valid)
    assert tvalid.numpy()[:, 4:].all() and not tvalid.numpy()[:, :4].any()
    assert np.allclose(tdisp.numpy()[:, 4:], 1 / d[:, 4:], rtol=1e-6)
    assert np.allclose(tn.numpy()[:, 4:], n_true, atol=1e-3)
    assert (tn.numpy()[:, :4] == 0).all()


def test_grid_mesh_does_not_bridge_depth_edges():
    cam = Camera.from_fov(50.0, 16, 16)
    d = np.full((16, 16), 0.5); d[:, 8:] = 0.8
    m = mesh_from_point_map(point_map_from_depth(d, cam), np.ones((16, 16), bool))
    z = m.vertices[m.faces][..., 2]
    assert ((z.max(1).values - z.min(1).values) < 1e-9).all()
    assert m.num_faces == 2 * 15 * 7 * 2
    assert mesh_from_point_map(np.zeros((4, 4, 3)), np.zeros((4, 4), bool)).is_empty
