"""The bundled tiny generator: loads through from_pretrained, meets the FlowBackbone contract,
is deterministic, and its samples depend on (and fit) the input image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("hy3dgen")
pytest.importorskip("cv2")

from hoiguide.backbones import HunyuanBackbone, check_backbone, tiny  # noqa: E402
from hoiguide.guidance.sampler import latent_to_mesh, sample  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "hoiguide" / "backbones" / "weights" / "tiny"
STEPS = 20
RES = 48


@pytest.fixture(scope="module")
def bb() -> HunyuanBackbone:
    return tiny(device="cpu")


def _object_image(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """RGBA object image as the inpainting observer makes it (no hand), and the object's
    surface points in the generator frame (centred, longest side 1.8)."""
    from hoiguide.geometry import sample_surface
    from hoiguide.render import render
    from hoiguide.synth.appearance import Material, Lighting, Texture, shade
    from hoiguide.synth.cameras import look_at
    from hoiguide.synth.objects import load_object
    from hoiguide.synth.observers import inpaint_object
    from hoiguide.types import Camera, Mesh

    rng = np.random.default_rng(seed)
    obj = load_object(f"procedural:{kind}", rng=rng).to(dtype=torch.float64)
    V = obj.vertices
    c = 0.5 * (V.min(0).values + V.max(0).values)
    L = float((V.max(0).values - V.min(0).values).max())
    obj = Mesh(V - c, obj.faces)
    gen = Mesh((V - c) * (1.8 / L), obj.faces)
    r = float(torch.linalg.norm(obj.vertices, dim=1).max())
    d = np.array([0.5, -0.6, -0.62])
    d /= np.linalg.norm(d)
    fov = math.radians(50)
    dist = r / (0.7 * math.tan(fov / 2)) + 0.3 * r
    w2c = look_at(d * dist, np.zeros(3), up=(0, -1, 0))
    f = 64 / math.tan(fov / 2)
    cam = Camera(f, f, 64.0, 64.0, 128, 128)
    obj_c = obj.transformed(w2c)
    mat = Material(base_color=np.array([0.8, 0.35, 0.2]))
    light = Lighting(ambient=0.3, lights=[(np.array([0.3, -0.6, -1.0]), np.ones(3), 0.9)],
                     background="plain", background_colors=np.array([[0.6, 0.6, 0.62]] * 2))
    img = shade([obj_c], [Texture.of(obj, mat)], cam, light, supersample=1)
    mask = (render([obj_c], cam).mesh_id == 0).numpy()
    rgba = inpaint_object(img, np.zeros_like(mask), mask, size=128)
    return rgba, sample_surface(gen, 3000, seed=0)


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return float(0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()))


def _surface(bb: HunyuanBackbone, latent: torch.Tensor) -> np.ndarray:
    from hoiguide.geometry import sample_surface

    mesh = latent_to_mesh(bb, latent, RES)
    assert not mesh.is_empty, "the generator produced no surface"
    return sample_surface(mesh.to(dtype=torch.float64), 3000, seed=0)


@pytest.fixture(scope="module")
def box_and_sphere(bb):
    box_img, box_pts = _object_image("box", 3)
    sph_img, sph_pts = _object_image("sphere", 0)
    ext = box_pts.max(0) - box_pts.min(0)
    assert ext.min() < 0.7 * ext.max(), "the test box should be clearly elongated"
    box_s = _surface(bb, sample(bb, box_img, num_steps=STEPS, guidance_scale=3.0, seed=0))
    sph_s = _surface(bb, sample(bb, sph_img, num_steps=STEPS, guidance_scale=3.0, seed=0))
    return box_img, box_pts, sph_img, sph_pts, box_s, sph_s


def test_files_are_small_and_loadable():
    cfg, w = WEIGHTS / "config.yaml", WEIGHTS / "model.safetensors"
    assert cfg.is_file() and w.is_file()
    assert cfg.stat().st_size + w.stat().st_size < 20 * 2**20
    from safetensors.torch import load_file

    keys = load_file(str(w)).keys()
    assert {k.split(".")[0] for k in keys} == {"model", "vae", "conditioner"}


def test_tiny_is_a_flow_backbone(bb):
    assert isinstance(bb, HunyuanBackbone)
    check_backbone(bb)
    assert bb.latent_shape == (64, 16)
    assert bb.time_convention.value == "data_at_1"
    assert bb.dtype == torch.float32 and bb.device.type == "cpu"
    assert bb.vae.scale_factor == 1.0
    n = sum(p.numel() for m in (bb.model, bb.vae, bb.conditioner) for p in m.parameters())
    assert 0.5e6 < n < 5e6
    # parameters are frozen, gradients flow to the latent
    assert not any(p.requires_grad for p in bb.model.parameters())
    z = torch.randn(2, *bb.latent_shape, requires_grad=True)
    sdf = bb.decode_sdf(z, torch.rand(100, 3) * 2 - 1)
    assert sdf.shape == (2, 100)
    sdf.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_deterministic(bb, box_and_sphere):
    img = box_and_sphere[0]
    a = sample(bb, img, num_steps=5, guidance_scale=3.0, seed=7)
    b = sample(bb, img, num_steps=5, guidance_scale=3.0, seed=7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = sample(tiny(device="cpu"), img, num_steps=5, guidance_scale=3.0, seed=7)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    d = sample(bb, img, num_steps=5, guidance_scale=3.0, seed=8)
    assert not torch.equal(a, d)


def test_cfg_weights_mix_conditional_and_unconditional(bb, box_and_sphere):
    cond = bb.encode_condition(box_and_sphere[0])
    x = torch.randn(1, *bb.latent_shape, generator=torch.Generator().manual_seed(0))
    vc = bb.velocity(x, 0.3, cond, None)
    vu = bb.velocity(x, 0.3, cond, 0.0)
    v3 = bb.velocity(x, 0.3, cond, 3.0)
    torch.testing.assert_close(v3, vu + 3.0 * (vc - vu), rtol=1e-4, atol=1e-4)
    # the image matters: conditional and unconditional velocities differ clearly
    assert (vc - vu).norm() > 0.05 * vu.norm()


def test_samples_are_inside_out_fields(bb, box_and_sphere):
    """Negative inside: a sphere's sample is negative at the centre, positive at the corners."""
    sph_img = box_and_sphere[2]
    lat = sample(bb, sph_img, num_steps=STEPS, guidance_scale=3.0, seed=0)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.98, 0.98, 0.98], [-0.98, -0.98, -0.98]])
    f = bb.decode_sdf(lat, pts)[0]
    assert f[0] < 0 and f[1] > 0 and f[2] > 0


def test_different_images_give_different_fitting_shapes(box_and_sphere):
    """Fails for an image-ignoring generator: the box image gives a shape nearer the true box
    than the true sphere, the sphere image the other way round, and the two differ."""
    _, box_pts, _, sph_pts, box_s, sph_s = box_and_sphere
    assert _chamfer(box_s, box_pts) < _chamfer(box_s, sph_pts)
    assert _chamfer(sph_s, sph_pts) < _chamfer(sph_s, box_pts)
    assert _chamfer(box_s, sph_s) > 0.1
    # proportions follow the image: the sphere sample is rounder than the box sample
    def aspect(p):
        e = np.linalg.svd(p - p.mean(0), compute_uv=False)
        return e[-1] / e[0]
    assert aspect(sph_s) > aspect(box_s)


def test_tiny_accepts_options():
    bb2 = tiny(device="cpu", dtype=torch.float64, default_resolution=33, chunk_size=500)
    assert bb2.dtype == torch.float64 and bb2.default_resolution == 33
    assert bb2.chunk_size == 500
    assert tiny(device="cpu").default_resolution == 65
    assert tiny(device="cpu").guidance_resolution == 33
    assert tiny(device="cpu", guidance_resolution=49).guidance_resolution == 49
