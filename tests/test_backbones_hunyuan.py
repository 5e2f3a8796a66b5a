"""HunyuanBackbone against hy3dgen's own pipeline, with tiny configs of the real classes (CPU)."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("hy3dgen")

from hoiguide.backbones import CheckpointNotFoundError, HunyuanBackbone  # noqa: E402
from hoiguide.backbones.hunyuan import import_hy3dgen  # noqa: E402
from hoiguide.guidance import predict_clean, sample  # noqa: E402


def _object_image(rgb=(40, 160, 220), size=(52, 44)) -> np.ndarray:
    h, w = size
    img = np.zeros((h, w, 4), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[((yy - 26) / 17.0) ** 2 + ((xx - 20) / 11.0) ** 2 < 1] = [*rgb, 255]
    img[30:40, 24:40] = [250, 240, 20, 255]  # a second, differently coloured part
    return img


@pytest.fixture(scope="module")
def image():
    return _object_image()


@pytest.fixture(scope="module")
def tiny():
    return HunyuanBackbone.from_config(HunyuanBackbone.tiny_config(), seed=0,
                                       default_resolution=33)


@pytest.fixture(scope="module")
def tiny64():
    return HunyuanBackbone.from_config(HunyuanBackbone.tiny_config(), seed=0,
                                       dtype=torch.float64)


def _reference_latent(backbone, image, num_steps, guidance_scale, generator):
    pipe = backbone.to_pipeline()
    return pipe(image=Image.fromarray(image, "RGBA"), num_inference_steps=num_steps,
                guidance_scale=-1.0 if guidance_scale is None else guidance_scale,
                generator=generator, output_type="latent", enable_pbar=False)


class _CountingBackbone:
    """Delegates to a backbone and counts velocity calls."""

    def __init__(self, inner):
        self._inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def velocity(self, *args, **kwargs):
        self.calls += 1
        return self._inner.velocity(*args, **kwargs)


# -- 1. unguided sampling reproduces hy3dgen's pipeline -----------------------------------


@pytest.mark.parametrize("num_steps,guidance_scale,seed", [(6, 5.0, 3), (3, 1.0, 0),
                                                           (4, None, 11)])
def test_sample_matches_hy3dgen_pipeline(tiny, image, num_steps, guidance_scale, seed):
    ref = _reference_latent(tiny, image, num_steps, guidance_scale,
                            torch.Generator("cpu").manual_seed(seed))
    counting = _CountingBackbone(tiny)
    exact = sample(counting, image, num_steps=num_steps, guidance_scale=guidance_scale,
                   seed=seed, match_reference=True)
    assert counting.calls == num_steps  # including hy3dgen's zero-length final step
    assert exact.shape == ref.shape == (1, 32, 8)
    assert float((exact - ref).abs().max()) <= 1e-5
    counting.calls = 0
    skipped = sample(counting, image, num_steps=num_steps, guidance_scale=guidance_scale,
                     seed=seed)
    assert counting.calls == num_steps - 1
    assert torch.equal(skipped, exact)


def test_sample_matches_pipeline_with_global_generator_and_pil_input(tiny, image):
    ref = _reference_latent(tiny, image, 4, 5.0, torch.manual_seed(7))
    ours = sample(tiny, Image.fromarray(image, "RGBA"), num_steps=4, guidance_scale=5.0,
                  generator=torch.manual_seed(7), match_reference=True)
    assert float((ours - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sample_matches_pipeline_in_half_precision(image, dtype):
    bb = HunyuanBackbone.from_config(HunyuanBackbone.tiny_config(), seed=0, dtype=dtype)
    ref = _reference_latent(bb, image, 4, 5.0, torch.Generator("cpu").manual_seed(5))
    ours = sample(bb, image, num_steps=4, guidance_scale=5.0, seed=5)
    assert ours.dtype == ref.dtype == dtype
    assert torch.equal(ours, ref)


def test_shifted_scheduler_grid_matches_pipeline(image):
    cfg = HunyuanBackbone.tiny_config()
    cfg["scheduler"]["params"]["shift"] = 3.0
    bb = HunyuanBackbone.from_config(cfg, seed=1)
    ref = _reference_latent(bb, image, 5, 4.0, torch.Generator("cpu").manual_seed(2))
    assert torch.equal(bb.sigmas(5), bb.scheduler.sigmas.cpu())  # state of the pipeline call
    ours = sample(bb, image, num_steps=5, guidance_scale=4.0, seed=2)
    assert float((ours - ref).abs().max()) <= 1e-5


def test_sigmas_are_hy3dgens_grid(tiny):
    s = tiny.sigmas(5)
    assert s.dtype == torch.float32
    assert s.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


# -- 2. decode_sdf equals hy3dgen's grid decoding (sign flipped) ---------------------------


def _hy3dgen_grid(backbone, latent, resolution, box_v=1.01):
    from hy3dgen.shapegen.models.autoencoders.volume_decoders import generate_dense_grid_points

    vae = backbone.vae
    with torch.no_grad():
        h = vae(1.0 / vae.scale_factor * latent)
        grid = vae.volume_decoder(h, vae.geo_decoder, bounds=box_v, num_chunks=500,
                                  octree_resolution=resolution - 1, enable_pbar=False)
    xyz, _, _ = generate_dense_grid_points(np.array([-box_v] * 3), np.array([box_v] * 3),
                                           resolution - 1)
    return grid, torch.from_numpy(xyz).reshape(-1, 3)


@pytest.mark.parametrize("chunk_size", [8000, 97])
def test_decode_sdf_matches_hy3dgen_grid(tiny, image, chunk_size):
    latent = sample(tiny, image, num_steps=5, guidance_scale=5.0, seed=0)
    r = 17
    ref, pts = _hy3dgen_grid(tiny, latent, r)
    ours = tiny.decode_sdf(latent, pts, chunk_size=chunk_size)
    assert ours.shape == (1, r ** 3)
    assert float((ours.reshape(1, r, r, r) + ref).abs().max()) <= 1e-5
    assert float(ref.min()) < 0 < float(ref.max())  # the test is not vacuous
    assert tiny.bounds == ((-1.01,) * 3, (1.01,) * 3)


def test_decode_grid_uses_library_grid_and_matches_hy3dgen(tiny, image):
    latent = sample(tiny, image, num_steps=5, guidance_scale=5.0, seed=0)
    ref, _ = _hy3dgen_grid(tiny, latent, 17)
    ours = tiny.decode_grid(latent, 17)
    assert ours.shape == (1, 17, 17, 17)
    assert float((ours + ref).abs().max()) <= 1e-5


# -- 3. gradients ------------------------------------------------------------------------


def test_sdf_loss_reaches_velocity_with_one_minus_sigma_factor(tiny64, image):
    bb = tiny64
    cond = bb.encode_condition(image)
    x = torch.randn((1, *bb.latent_shape), generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    sigma = float(bb.sigmas(10)[3])  # 1/3
    with torch.no_grad():
        v0 = bb.velocity(x, sigma, cond, 5.0)
    pts = torch.rand((40, 3), generator=torch.Generator().manual_seed(5),
                     dtype=torch.float64) * 2 - 1

    def loss_from_v(v):
        sdf = bb.decode_sdf(predict_clean(x, v, sigma, bb.time_convention), pts, chunk_size=16)
        return ((sdf - 0.1) ** 2).mean()

    def loss_from_clean(xh):
        return ((bb.decode_sdf(xh, pts, chunk_size=16) - 0.1) ** 2).mean()

    v = v0.clone().requires_grad_(True)
    loss_from_v(v).backward()
    d = torch.randn(v0.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        fd_v = (loss_from_v(v0 + eps * d) - loss_from_v(v0 - eps * d)) / (2 * eps)
        x_hat = predict_clean(x, v0, sigma, "data_at_1")
        fd_x = (loss_from_clean(x_hat + eps * d) - loss_from_clean(x_hat - eps * d)) / (2 * eps)
    analytic = float((v.grad * d).sum())
    assert abs(float(fd_x)) > 1e-6
    assert analytic == pytest.approx(float(fd_v), rel=1e-6, abs=1e-12)
    assert float(fd_v) / float(fd_x) == pytest.approx(1 - sigma, rel=1e-6)


def test_decode_sdf_gradients_chunked_and_checkpointed(tiny64):
    """Directional finite differences (float64) for latent and points; checkpointed chunks
    give the same gradient as one plain pass."""
    bb = tiny64
    g = torch.Generator().manual_seed(8)
    lat = torch.randn((1, *bb.latent_shape), generator=g, dtype=torch.float64)
    pts = torch.rand((7, 3), generator=g, dtype=torch.float64) * 2 - 1
    w = torch.randn((1, 7), generator=g, dtype=torch.float64)

    def f(a, p, **kw):
        return (bb.decode_sdf(a, p, chunk_size=3, **kw) * w).sum()

    a, p = lat.clone().requires_grad_(True), pts.clone().requires_grad_(True)
    ga, gp = torch.autograd.grad(f(a, p), (a, p))
    eps = 1e-6
    for _ in range(2):
        da = torch.randn(lat.shape, generator=g, dtype=torch.float64)
        dp = torch.randn(pts.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd_a = (f(lat + eps * da, pts) - f(lat - eps * da, pts)) / (2 * eps)
            fd_p = (f(lat, pts + eps * dp) - f(lat, pts - eps * dp)) / (2 * eps)
        assert float((ga * da).sum()) == pytest.approx(float(fd_a), rel=1e-6, abs=1e-10)
        assert float((gp * dp).sum()) == pytest.approx(float(fd_p), rel=1e-6, abs=1e-10)
    a2 = lat.clone().requires_grad_(True)
    g_plain = torch.autograd.grad(
        (bb.decode_sdf(a2, pts, chunk_size=1000, checkpoint=False) * w).sum(), a2)[0]
    torch.testing.assert_close(ga, g_plain, rtol=1e-10, atol=1e-12)


def test_parameters_are_frozen(tiny):
    for m in (tiny.model, tiny.vae, tiny.conditioner):
        assert not any(p.requires_grad for p in m.parameters())


# -- 4. a tiny checkpoint in the hub layout loads offline ----------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _assert_same_backbone(a, b, image):
    cond_a, cond_b = a.encode_condition(image), b.encode_condition(image)
    x = torch.randn((1, *a.latent_shape), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.velocity(x, 0.3, cond_a, 5.0), b.velocity(x, 0.3, cond_b, 5.0),
                               rtol=0, atol=0)
    pts = torch.rand(50, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(a.decode_sdf(x, pts), b.decode_sdf(x, pts), rtol=0, atol=0)


def test_from_pretrained_local_folder_without_network(tiny, image, tmp_path, monkeypatch,
                                                      no_network):
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path / "nothing_here"))
    out = tiny.save_pretrained(tmp_path / "Hunyuan3D-2")
    assert out == tmp_path / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.fp16.safetensors"]
    from safetensors import safe_open

    with safe_open(str(out / "model.fp16.safetensors"), "pt") as f:
        prefixes = {k.split(".")[0] for k in f.keys()}
    assert prefixes == {"model", "vae", "conditioner"}

    loaded = HunyuanBackbone.from_pretrained(tmp_path / "Hunyuan3D-2", device="cpu",
                                             dtype=torch.float32, default_resolution=33)
    _assert_same_backbone(tiny, loaded, image)
    direct = HunyuanBackbone.from_pretrained(str(out), device="cpu", dtype=torch.float32)
    _assert_same_backbone(tiny, direct, image)
    assert loaded.config == tiny.config


def test_from_pretrained_hub_id_through_hy3dgen_models(tiny, image, tmp_path, monkeypatch,
                                                       no_network):
    tiny.save_pretrained(tmp_path / "models" / "tencent" / "Hunyuan3D-2")
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path / "models"))
    loaded = HunyuanBackbone.from_pretrained("tencent/Hunyuan3D-2", device="cpu",
                                             dtype=torch.float32)
    _assert_same_backbone(tiny, loaded, image)
    # hy3dgen's own loader reads the same folder
    hs = import_hy3dgen()
    pipe = hs.Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(
        "tencent/Hunyuan3D-2", device="cpu", dtype=torch.float32)
    _assert_same_backbone(tiny, HunyuanBackbone.from_pipeline(pipe), image)


# -- 5. helpful errors -------------------------------------------------------------------


def test_missing_weights_error_says_where_it_looked(tmp_path, monkeypatch, no_network):
    models = tmp_path / "models"
    monkeypatch.setenv("HY3DGEN_MODELS", str(models))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointNotFoundError) as info:
        HunyuanBackbone.from_pretrained("tencent/Hunyuan3D-2", device="cpu")
    msg = str(info.value)
    assert str(models / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0") in msg
    assert "Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    # hy3dgen is installed here: no install hint; the download command is the one
    # huggingface_hub installs (`hf`)
    assert 'pip install "hoiguide[hunyuan]"' not in msg
    assert "hf download tencent/Hunyuan3D-2 --include 'hunyuan3d-dit-v2-0/*'" in msg
    assert "HY3DGEN_MODELS" in msg and "from_pretrained('/path/to/Hunyuan3D-2')" in msg
    assert isinstance(info.value, FileNotFoundError)

    empty = tmp_path / "local_folder" / "hunyuan3d-dit-v2-0"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text("model: {}\n")
    with pytest.raises(CheckpointNotFoundError, match="lacks config.yaml and model.fp16"):
        HunyuanBackbone.from_pretrained(tmp_path / "local_folder", device="cpu")
    with pytest.raises(CheckpointNotFoundError, match="no such folder"):
        HunyuanBackbone.from_pretrained(tmp_path / "does" / "not" / "exist", device="cpu")


def test_missing_hy3dgen_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "hy3dgen", None)
    monkeypatch.setitem(sys.modules, "hy3dgen.shapegen", None)
    with pytest.raises(ImportError, match=r'pip install "hoiguide\[hunyuan\]"'):
        import_hy3dgen()
    with pytest.raises(ImportError, match="hy3dgen"):
        HunyuanBackbone.from_pretrained("tencent/Hunyuan3D-2")
    with pytest.raises(ImportError, match="hoiguide"):
        HunyuanBackbone.from_config(HunyuanBackbone.tiny_config())


def test_bad_inputs_raise_clear_errors(tiny, image):
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\|4\) array"):
        tiny.encode_condition(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="alpha channel is empty"):
        tiny.encode_condition(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(TypeError, match="PIL.Image"):
        tiny.encode_condition("not an image")
    cond = tiny.encode_condition(image)
    with pytest.raises(ValueError, match=r"expected shape \(B, 32, 8\), got \(32, 8\)"):
        tiny.velocity(torch.zeros(32, 8), 0.5, cond, 5.0)
    with pytest.raises(ValueError, match=r"points: expected \(P, 3\)"):
        tiny.decode_sdf(torch.zeros(1, 32, 8), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="missing section"):
        HunyuanBackbone.from_config({"model": {"target": "x"}})
    with pytest.raises(ValueError, match="num_steps"):
        tiny.sigmas(0)


def test_image_inputs_agree_and_batch(tiny, image):
    a = tiny.encode_condition(image)
    b = tiny.encode_condition(Image.fromarray(image, "RGBA"))
    c = tiny.encode_condition(image.astype(np.float32) / 255.0)
    torch.testing.assert_close(a.cond["main"], b.cond["main"], rtol=0, atol=0)
    torch.testing.assert_close(a.cond["main"], c.cond["main"], rtol=0, atol=0)
    two = tiny.encode_condition([image, _object_image((230, 20, 20))])
    assert two.batch_size == 2 and float(two.uncond["main"].abs().max()) == 0.0
    torch.testing.assert_close(two.cond["main"][:1], a.cond["main"], rtol=0, atol=0)


def test_reference_config_is_the_full_size_architecture():
    import_hy3dgen()
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    cfg = HunyuanBackbone.reference_config()
    with torch.device("meta"):
        counts = {k: sum(p.numel() for p in instantiate_from_config(cfg[k]).parameters())
                  for k in ("model", "vae", "conditioner")}
    assert 1.05e9 < counts["model"] < 1.2e9  # DiT ~1.1B
    assert 0.2e9 < counts["vae"] < 0.23e9  # VAE decoder ~214M
    assert counts["conditioner"] > 1.0e9  # DINOv2 giant
