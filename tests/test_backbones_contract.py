"""The FlowBackbone contract, run against every backbone (tiny, CPU, seconds).

``BackboneContract`` is a mixin: a concrete test class provides ``make_backbone()``. Two very
different backbones pass it: the tiny Hunyuan3D-2 (real hy3dgen classes, ``data_at_1``,
float32, DiT velocity, neural SDF decoder) and ``EllipsoidFlowBackbone`` below (``data_at_0``,
float64, a 6-number latent that *is* an ellipsoid, closed-form velocity), which shows that the
protocol and the generic sampler carry no Hunyuan specifics.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from hoiguide.backbones import FlowBackbone, check_backbone
from hoiguide.testing import EllipsoidFlowBackbone, GaussianGridBackbone
from hoiguide.guidance import (TimeConvention, decode_grid, latent_to_mesh, predict_clean,
                               predict_clean_derivative, sample)


def make_object_image(rgb=(200, 60, 30), size=(48, 40)) -> np.ndarray:
    """An RGBA uint8 object image: a coloured ellipse on a transparent background."""
    h, w = size
    img = np.zeros((h, w, 4), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2) ** 2 / (0.32 * h) ** 2 + (xx - w / 2) ** 2 / (0.25 * w) ** 2 < 1
    img[inside] = [*rgb, 255]
    return img


# --------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------


def _coarse_grid(bounds, n=9, dtype=torch.float64):
    lo, hi = bounds
    axes = [torch.linspace(lo[i], hi[i], n, dtype=dtype) for i in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _close(a, b, rel=1e-5):
    scale = max(float(b.abs().max()), 1e-6)
    assert float((a - b).abs().max()) <= rel * scale, float((a - b).abs().max()) / scale


class BackboneContract:
    """Mixin of tests every FlowBackbone must pass. Subclasses define ``make_backbone()``."""

    num_steps = 4
    guidance_scale = 3.0
    max_sample_seconds = 20.0  # generous: the shared 2-core CI machine is noisy

    @classmethod
    def make_backbone(cls):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def backbone(cls):
        return cls.make_backbone()

    @pytest.fixture(scope="class")
    @classmethod
    def image(cls):
        return make_object_image()

    @pytest.fixture(scope="class")
    @classmethod
    def condition(cls, backbone, image):
        return backbone.encode_condition(image)

    @pytest.fixture(scope="class")
    @classmethod
    def noise(cls, backbone):
        g = torch.Generator().manual_seed(1)
        return torch.randn((2, *backbone.latent_shape), generator=g).to(backbone.dtype)

    @pytest.fixture(scope="class")
    @classmethod
    def sampled(cls, backbone, image):
        return sample(backbone, image, num_steps=cls.num_steps,
                      guidance_scale=cls.guidance_scale, seed=0)

    # -- structure -------------------------------------------------------------------
    def test_protocol_attributes(self, backbone):
        assert isinstance(backbone, FlowBackbone)
        check_backbone(backbone)
        shape = tuple(backbone.latent_shape)
        assert len(shape) >= 1 and all(isinstance(s, int) and s > 0 for s in shape)
        assert isinstance(backbone.dtype, torch.dtype) and backbone.dtype.is_floating_point
        assert isinstance(backbone.device, torch.device)
        TimeConvention.parse(backbone.time_convention)
        lo, hi = backbone.bounds
        assert len(lo) == 3 and len(hi) == 3 and all(a < b for a, b in zip(lo, hi))
        assert int(backbone.default_resolution) >= 2

    @pytest.mark.parametrize("num_steps", [1, 5, 20])
    def test_sigmas_run_from_noise_to_data(self, backbone, num_steps):
        conv = TimeConvention.parse(backbone.time_convention)
        s = backbone.sigmas(num_steps).double()
        assert s.ndim == 1 and s.shape[0] == num_steps + 1
        assert float(s[0]) == pytest.approx(conv.noise_sigma)
        assert float(s[-1]) == pytest.approx(conv.data_sigma)
        steps = s[1:] - s[:-1]
        towards_data = steps if conv is TimeConvention.DATA_AT_1 else -steps
        assert bool((towards_data >= 0).all()) and float(towards_data.sum()) == pytest.approx(1.0)
        assert bool(((s >= 0) & (s <= 1)).all())

    # -- velocity --------------------------------------------------------------------
    def test_velocity_shape_dtype_deterministic(self, backbone, condition, noise):
        s = backbone.sigmas(self.num_steps)[1]
        v1 = backbone.velocity(noise, s, condition, self.guidance_scale)
        v2 = backbone.velocity(noise, s, condition, self.guidance_scale)
        assert v1.shape == noise.shape and v1.dtype == backbone.dtype
        assert bool(torch.isfinite(v1).all()) and float(v1.abs().max()) > 0
        assert torch.equal(v1, v2)

    def test_classifier_free_guidance_combination(self, backbone, condition, noise):
        s = backbone.sigmas(self.num_steps)[1]
        v_c = backbone.velocity(noise, s, condition, None)
        v_u = backbone.velocity(noise, s, condition, 0.0)
        v_w = backbone.velocity(noise, s, condition, 3.5)
        _close(backbone.velocity(noise, s, condition, 1.0), v_c)
        _close(v_w, v_u + 3.5 * (v_c - v_u))
        assert float((v_c - v_u).abs().max()) > 0, "the condition has no effect"

    def test_velocity_batch_is_per_sample(self, backbone, condition, noise):
        s = backbone.sigmas(self.num_steps)[2]
        vb = backbone.velocity(noise, s, condition, self.guidance_scale)
        for i in range(noise.shape[0]):
            _close(vb[i:i + 1], backbone.velocity(noise[i:i + 1], s, condition,
                                                  self.guidance_scale))

    # -- decoding --------------------------------------------------------------------
    def test_decode_sdf_shapes(self, backbone, sampled):
        pts = _coarse_grid(backbone.bounds, 5)
        lat = torch.cat([sampled, sampled])
        out = backbone.decode_sdf(lat, pts)
        assert out.shape == (2, pts.shape[0]) and out.is_floating_point()
        assert bool(torch.isfinite(out).all())
        _close(out[0], out[1])
        per_batch = backbone.decode_sdf(lat, pts[None].expand(2, -1, -1))
        _close(per_batch, out)

    def test_sampled_latent_has_a_surface(self, backbone, sampled):
        with torch.no_grad():
            sdf = backbone.decode_sdf(sampled, _coarse_grid(backbone.bounds, 9))
        assert float(sdf.min()) < 0 < float(sdf.max()), "no inside/outside in the decode box"

    def test_sdf_loss_backpropagates_to_velocity_through_clean_estimate(self, backbone,
                                                                       condition, noise):
        conv = TimeConvention.parse(backbone.time_convention)
        sig = backbone.sigmas(self.num_steps)
        s = sig[self.num_steps // 2]
        x = noise[:1]
        with torch.no_grad():
            v0 = backbone.velocity(x, s, condition, self.guidance_scale)
        pts = _coarse_grid(backbone.bounds, 5)

        def loss_of(lat):
            return (backbone.decode_sdf(lat, pts).float() ** 2).mean()

        v = v0.clone().requires_grad_(True)
        loss_of(predict_clean(x, v, s, conv)).backward()
        x_hat = predict_clean(x, v0, s, conv).detach().requires_grad_(True)
        loss_of(x_hat).backward()
        assert v.grad is not None and bool(torch.isfinite(v.grad).all())
        assert float(v.grad.abs().max()) > 0
        _close(v.grad, float(predict_clean_derivative(s, conv)) * x_hat.grad, rel=1e-4)

    def test_latent_to_mesh(self, backbone, sampled):
        mesh = latent_to_mesh(backbone, sampled, resolution=17)
        assert not mesh.is_empty and mesh.metadata["frame"] == "generator"
        lo = torch.tensor(backbone.bounds[0], dtype=mesh.vertices.dtype)
        hi = torch.tensor(backbone.bounds[1], dtype=mesh.vertices.dtype)
        assert bool(((mesh.vertices >= lo - 1e-6) & (mesh.vertices <= hi + 1e-6)).all())
        grid = decode_grid(backbone, sampled[0], 17)
        assert grid.shape == (17, 17, 17) and float(grid.min()) < 0 < float(grid.max())

    # -- sampling --------------------------------------------------------------------
    def test_sample_is_deterministic_and_quick(self, backbone, image, sampled):
        t0 = time.perf_counter()
        again = sample(backbone, image, num_steps=self.num_steps,
                       guidance_scale=self.guidance_scale, seed=0)
        elapsed = time.perf_counter() - t0
        assert torch.equal(again, sampled)
        assert again.shape == (1, *backbone.latent_shape) and again.dtype == backbone.dtype
        other = sample(backbone, image, num_steps=self.num_steps,
                       guidance_scale=self.guidance_scale, seed=1)
        assert not torch.equal(other, sampled)
        assert elapsed < self.max_sample_seconds

    def test_sample_follows_the_sigma_grid(self, backbone, image):
        seen = []
        sample(backbone, image, num_steps=self.num_steps, guidance_scale=None, seed=0,
               match_reference=True, callback=lambda i, s, x: seen.append((i, float(s))))
        sig = backbone.sigmas(self.num_steps)
        assert [i for i, _ in seen] == list(range(self.num_steps))
        assert [s for _, s in seen] == pytest.approx(sig[1:].double().tolist())


class TestGaussianGridContract(BackboneContract):
    @classmethod
    def make_backbone(cls):
        return GaussianGridBackbone()


class TestEllipsoidContract(BackboneContract):
    @classmethod
    def make_backbone(cls):
        return EllipsoidFlowBackbone()

    def test_ideal_velocity_lands_on_the_target(self, backbone, image, condition):
        for w, target in ((None, condition["cond"]),
                          (2.0, condition["uncond"] + 2.0 * (condition["cond"]
                                                             - condition["uncond"]))):
            out = sample(backbone, image, num_steps=7, guidance_scale=w, seed=3)
            torch.testing.assert_close(out, target, atol=1e-12, rtol=0)


class TestHunyuanContract(BackboneContract):
    @classmethod
    def make_backbone(cls):
        pytest.importorskip("hy3dgen")
        from hoiguide.backbones import HunyuanBackbone

        return HunyuanBackbone.from_config(HunyuanBackbone.tiny_config(), seed=0,
                                           default_resolution=33)
