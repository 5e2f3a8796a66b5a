"""Tests for hoiguide.synth.appearance: materials, lighting, vertex colours and shading."""

import math

import numpy as np
import pytest
import torch
import trimesh

from hoiguide.synth.appearance import (
    PATTERNS, Lighting, Material, Texture, random_lighting, random_material, random_skin_tone, shade,
    vertex_colors,
)
from hoiguide.types import Camera, Mesh


def sphere(center, radius, subdivisions=4) -> Mesh:
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(torch.as_tensor(tm.vertices + np.asarray(center), dtype=torch.float32),
                torch.as_tensor(tm.faces, dtype=torch.long))


def flat(rgb, mesh):
    return torch.tensor(rgb, dtype=torch.float32).expand(mesh.num_vertices, 3).clone()


def no_noise_lighting(lights, ambient=0.0, background=(0.2, 0.4, 0.6)):
    return Lighting(ambient=ambient, lights=lights, background=np.asarray(background),
                    noise=0.0)


# ---------------------------------------------------------------------------------------
# materials and lighting
# ---------------------------------------------------------------------------------------


def test_material_validation():
    with pytest.raises(ValueError, match="pattern"):
        Material(base_color=(1, 0, 0), pattern="zebra")
    with pytest.raises(ValueError, match="base_color"):
        Material(base_color=(1.5, 0, 0))
    with pytest.raises(ValueError, match="base_color"):
        Material(base_color=(1, 0))
    with pytest.raises(ValueError, match="roughness"):
        Material(base_color=(1, 0, 0), roughness=0.0)
    with pytest.raises(ValueError, match="direction"):
        Lighting(ambient=0.2, lights=[((0, 0, 0), (1, 1, 1), 1.0)])
    with pytest.raises(ValueError, match="background"):
        Lighting(ambient=0.2, background="sky")


def test_random_material_and_lighting_valid_and_deterministic():
    a, b = random_material(np.random.default_rng(3)), random_material(np.random.default_rng(3))
    assert a == b and a != random_material(np.random.default_rng(4))
    assert random_lighting(np.random.default_rng(3)) == random_lighting(np.random.default_rng(3))
    assert random_skin_tone(np.random.default_rng(3)) == random_skin_tone(np.random.default_rng(3))
    seen = set()
    for s in range(60):
        m = random_material(np.random.default_rng(s))
        seen.add(m.pattern)
        assert m.pattern in PATTERNS and 0 <= m.base_color.min() and m.base_color.max() <= 1
        lt = random_lighting(np.random.default_rng(s))
        assert 1 <= len(lt.lights) <= 3
        key_dir = lt.lights[0][0]
        assert abs(np.linalg.norm(key_dir) - 1) < 1e-9
        assert key_dir[2] < 0 and key_dir[1] < 0  # from the camera side, from above
    assert seen == set(PATTERNS)


def test_skin_tones_span_light_to_dark():
    lum = []
    for s in range(300):
        m = random_skin_tone(np.random.default_rng(s))
        assert m.roughness >= 0.5 and m.specular <= 0.2
        r, g, b = m.base_color
        assert r >= g >= b - 0.02  # skin: red >= green >= blue
        lum.append(0.2126 * r + 0.7152 * g + 0.0722 * b)
    assert min(lum) < 0.3 and max(lum) > 0.75


# ---------------------------------------------------------------------------------------
# vertex colours
# ---------------------------------------------------------------------------------------


def points_mesh(points) -> Mesh:
    p = torch.as_tensor(np.asarray(points, np.float64), dtype=torch.float32)
    return Mesh(p, torch.tensor([[0, 1, 2]]))


BASE, PAT = (0.1, 0.2, 0.9), (0.9, 0.8, 0.1)


def test_vertex_colors_plain_and_stripes():
    s = 0.02
    m = points_mesh([[0, 0, s / 4], [0.3, -0.1, s / 4 + s], [0, 0, 3 * s / 4],
                     [0.05, 0.02, 3 * s / 4 - 2 * s]])
    plain = vertex_colors(m, Material(BASE))
    np.testing.assert_allclose(plain.numpy(), np.tile(BASE, (4, 1)), atol=1e-6)
    st = vertex_colors(m, Material(BASE, "stripes", PAT, s, pattern_axis=(0, 0, 1)))
    assert st.dtype == torch.float32 and st.shape == (4, 3)
    np.testing.assert_allclose(st[:2].numpy(), np.tile(PAT, (2, 1)), atol=1e-3)
    np.testing.assert_allclose(st[2:].numpy(), np.tile(BASE, (2, 1)), atol=1e-3)


def test_vertex_colors_checker_two_tone_noise():
    s = 0.02
    m = points_mesh([[s / 2, s / 2, s / 2], [3 * s / 2, s / 2, s / 2],
                     [3 * s / 2, 3 * s / 2, s / 2], [-s / 2, s / 2, s / 2]])
    ch = vertex_colors(m, Material(BASE, "checker", PAT, s)).numpy()
    np.testing.assert_allclose(ch[[0, 2]], np.tile(PAT, (2, 1)), atol=1e-3)
    np.testing.assert_allclose(ch[[1, 3]], np.tile(BASE, (2, 1)), atol=1e-3)
    line = points_mesh(np.stack([np.zeros(21), np.zeros(21), np.linspace(-0.05, 0.05, 21)], 1))
    tt = vertex_colors(line, Material(BASE, "two_tone", PAT, s, pattern_axis=(0, 0, 1)))
    np.testing.assert_allclose(tt[-1].numpy(), PAT, atol=1e-3)
    np.testing.assert_allclose(tt[0].numpy(), BASE, atol=1e-3)
    rng = np.random.default_rng(0)
    cloud = points_mesh(rng.uniform(-0.05, 0.05, (500, 3)))
    nz = vertex_colors(cloud, Material(BASE, "noise", PAT, s, pattern_seed=4)).numpy()
    lo, hi = np.minimum(BASE, PAT), np.maximum(BASE, PAT)
    assert np.all(nz >= lo - 1e-6) and np.all(nz <= hi + 1e-6)
    assert nz[:, 2].std() > 0.1  # really varies
    # the pattern is a function of the vertex position: same point, same colour
    again = vertex_colors(cloud, Material(BASE, "noise", PAT, s, pattern_seed=4)).numpy()
    np.testing.assert_array_equal(nz, again)


# ---------------------------------------------------------------------------------------
# shade
# ---------------------------------------------------------------------------------------


CAM = Camera.from_fov(24.0, 80, 80)


def analytic_sphere_hits(cam: Camera, c: np.ndarray, r: float):
    """Per pixel centre: hit mask, unit normal of the first ray-sphere intersection, and
    the signed distance in pixels to the outline (positive inside; sphere on the axis)."""
    v, u = np.meshgrid(np.arange(cam.height) + 0.5, np.arange(cam.width) + 0.5, indexing="ij")
    d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    b = (d * c).sum(-1)
    disc = b ** 2 - (c @ c - r ** 2)
    hit = disc > 0
    t = b - np.sqrt(np.clip(disc, 0, None))
    p = d * t[..., None]
    n = (p - c) / r
    assert abs(c[0]) < 1e-12 and abs(c[1]) < 1e-12
    rho = cam.fx * math.tan(math.asin(r / c[2]))
    edge_px = rho - np.hypot(u - cam.cx, v - cam.cy)
    return hit, n, edge_px


def test_shade_lit_sphere_matches_lambert():
    c, r = np.array([0.0, 0.0, 0.5]), 0.05
    mesh = sphere(c, r)
    light = np.array([1.0, -0.5, -1.0]) / 1.5
    lt = no_noise_lighting([(light, (1, 1, 1), 1.0)])
    img = shade([mesh], [flat((1, 1, 1), mesh)], CAM, lt, supersample=1,
                specular=[(0.0, 0.5)])
    assert img.shape == (80, 80, 3) and img.dtype == np.uint8
    hit, n, edge = analytic_sphere_hits(CAM, c, r)
    inner = hit & (edge > 2.0)
    assert inner.sum() > 300
    expected = np.clip((n * light).sum(-1), 0, None)
    linear = (img[..., 0].astype(np.float64) / 255.0) ** 2.2
    err = np.abs(linear[inner] - expected[inner])
    assert err.mean() < 0.01 and err.max() < 0.05
    # the lit side (towards +x, -y in the image) is brighter than the opposite side
    v, u = np.nonzero(inner)
    right = u > CAM.cx
    assert linear[v[right], u[right]].mean() > linear[v[~right], u[~right]].mean() + 0.2
    # the brightest pixels lie towards the light's direction projected on the image
    top = linear[inner] > np.quantile(linear[inner], 0.95)
    du, dv = u[top].mean() - CAM.cx, v[top].mean() - CAM.cy
    cosang = (du * light[0] + dv * light[1]) / math.hypot(du, dv) / math.hypot(*light[:2])
    assert cosang > 0.95


def test_shade_background_and_red_object():
    mesh = sphere((0.0, 0.0, 0.5), 0.05, subdivisions=3)
    red = Material((1.0, 0.0, 0.0))
    lt = no_noise_lighting([((0, -0.3, -1), (1, 1, 1), 1.0)], ambient=0.2)
    img = shade([mesh], [vertex_colors(mesh, red)], CAM, lt, specular=[(0.0, 0.5)])
    hit, _, edge = analytic_sphere_hits(CAM, np.array([0, 0, 0.5]), 0.05)
    # background exactly the colour where no mesh (and no antialiasing mix)
    far = edge < -2
    np.testing.assert_array_equal(img[far], np.tile([51, 102, 153], (far.sum(), 1)))
    obj = img[hit & (edge > 2)]
    assert np.median(obj[:, 0]) > 120 and obj[:, 1].max() <= 2 and obj[:, 2].max() <= 2


def test_shade_occlusion_sizes_and_determinism():
    front = sphere((0.0, 0.0, 0.4), 0.03, subdivisions=3)
    back = sphere((0.02, 0.0, 0.6), 0.06, subdivisions=3)
    lt = Lighting(ambient=0.5, lights=[((0, 0, -1), (1, 1, 1), 0.5)], background="table",
                  noise=0.02, seed=5)
    cols = [flat((1, 0, 0), front), flat((0, 0, 1), back)]
    img = shade([front, back], cols, CAM, lt, supersample=2)
    centre = img[38:42, 38:42].reshape(-1, 3).astype(int)
    assert np.all(centre[:, 0] > centre[:, 2] + 60)  # the front (red) sphere occludes
    assert np.array_equal(img, shade([front, back], cols, CAM, lt, supersample=2))
    noisy = shade([front, back], cols, CAM, lt, supersample=2, rng=np.random.default_rng(1))
    assert not np.array_equal(img, noisy)
    assert np.abs(img.astype(int) - noisy.astype(int)).mean() < 10
    cam = Camera.from_fov(30.0, 40, 30)
    for size, ss, shape in ((None, 3, (30, 40, 3)), ((24, 32), 2, (24, 32, 3)),
                            (20, 1, (20, 20, 3))):
        out = shade([front, back], cols, cam, lt, size=size, supersample=ss)
        assert out.shape == shape and out.dtype == np.uint8
    # gradient and plain backgrounds, a mesh with no faces, a background override
    for bg in ("gradient", "plain", np.full((8, 8, 3), 200, np.uint8)):
        out = shade([Mesh.empty(), front], [torch.zeros(0, 3), cols[0]], CAM, lt,
                    background=bg, supersample=1)
        assert out.shape == (80, 80, 3)


def test_shade_supersampling_antialiases_edges():
    mesh = sphere((0.0, 0.0, 0.5), 0.05, subdivisions=3)
    lt = no_noise_lighting([((0, 0, -1), (1, 1, 1), 1.0)], ambient=0.0, background=(0, 0, 0))
    hard = shade([mesh], [flat((1, 1, 1), mesh)], CAM, lt, supersample=1, specular=[(0, .5)])
    soft = shade([mesh], [flat((1, 1, 1), mesh)], CAM, lt, supersample=4, specular=[(0, .5)])
    # more distinct intermediate values along the outline with supersampling
    assert len(np.unique(soft[..., 0])) > len(np.unique(hard[..., 0]))
    # the covered area (sum of linear intensity) agrees
    a = ((hard[..., 0] / 255.0) ** 2.2).sum()
    b = ((soft[..., 0] / 255.0) ** 2.2).sum()
    assert a == pytest.approx(b, rel=0.05)


def test_texture_gives_crisp_patterns_on_coarse_meshes():
    """Two triangles with 2 cm stripes: per-pixel texture shows every stripe (period
    f * s / z = 7.5 px), interpolated vertex colours cannot."""
    quad = Mesh(torch.tensor([[-0.1, -0.1, 0.5], [0.1, -0.1, 0.5], [0.1, 0.1, 0.5],
                              [-0.1, 0.1, 0.5]]), torch.tensor([[0, 2, 1], [0, 3, 2]]))
    mat = Material(BASE, "stripes", PAT, 0.02, pattern_axis=(1, 0, 0))
    lt = no_noise_lighting([((0, 0, -1), (1, 1, 1), 1.0)], ambient=0.1)
    crisp = shade([quad], [Texture.of(quad, mat)], CAM, lt, supersample=1,
                  specular=[(0, .5)])[40, :, 2].astype(float)
    blurry = shade([quad], [vertex_colors(quad, mat)], CAM, lt, supersample=1,
                   specular=[(0, .5)])[40, :, 2].astype(float)
    flips = np.count_nonzero(np.diff(np.sign(crisp - crisp.mean())))
    period_px = CAM.fx * 0.02 / 0.5
    assert abs(flips - 2 * 80 / period_px) <= 3
    assert np.count_nonzero(np.diff(np.sign(blurry - blurry.mean()))) <= 2
    assert crisp.max() - crisp.min() > 100
    with pytest.raises(ValueError, match="Texture of 3 vertices"):
        shade([quad], [Texture(mat, np.zeros((3, 3)))], CAM, lt)


def test_shade_errors():
    mesh = sphere((0.0, 0.0, 0.5), 0.05, subdivisions=1)
    lt = no_noise_lighting([((0, 0, -1), (1, 1, 1), 1.0)])
    with pytest.raises(ValueError, match="colors\\[0\\]"):
        shade([mesh], [torch.ones(3, 3)], CAM, lt)
    with pytest.raises(ValueError, match="one colour tensor per mesh"):
        shade([mesh], [], CAM, lt)
    with pytest.raises(ValueError, match="supersample"):
        shade([mesh], [flat((1, 1, 1), mesh)], CAM, lt, supersample=0)
    with pytest.raises(TypeError, match="Lighting"):
        shade([mesh], [flat((1, 1, 1), mesh)], CAM, "sunny")
