"""Benchmark the Hunyuan3D-2 backbone: one velocity evaluation and one decode + backward.

Usage::

    python benchmarks/backbone.py                      # tiny config, CPU, float32
    python benchmarks/backbone.py --full --device cuda --dtype float16   # full size, random weights
    python benchmarks/backbone.py --json out.json

What is timed (median of ``--repeats`` runs after one warm-up):

* ``velocity``: one ``backbone.velocity`` call with classifier-free guidance (the DiT runs on the
  batch ``[cond; uncond]``), no gradient, at sigma 0.5;
* ``decode``: ``decode_sdf`` of one latent on the dense ``R^3`` grid (default 65^3), no gradient;
* ``decode+backward``: the same with gradients enabled, then ``loss.backward()`` to the latent
  (chunks are checkpointed, so memory stays bounded);
* ``encode``: ``encode_condition`` of one image (DINOv2).

Weights are random (timings do not depend on weight values). ``--full`` builds the
``hunyuan3d-dit-v2-0`` architecture (DiT 1.1B, VAE decoder 0.2B, DINOv2-giant 1.1B parameters):
on a CPU this is very slow, use a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hoiguide.backbones import HunyuanBackbone  # noqa: E402
from hoiguide.geometry import grid_points  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _image(size: int = 256) -> np.ndarray:
    img = np.zeros((size, size, 4), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - size / 2) / (0.35 * size)) ** 2 + ((xx - size / 2) / (0.22 * size)) ** 2 < 1
    img[inside] = [180, 90, 40, 255]
    return img


def run(full: bool, device: str, dtype: str, resolution: int, repeats: int,
        chunk_size: int | None) -> dict:
    dev = torch.device(device)
    dt = DTYPES[dtype]
    cfg = HunyuanBackbone.reference_config() if full else HunyuanBackbone.tiny_config()
    t0 = time.perf_counter()
    kwargs = {"chunk_size": chunk_size} if chunk_size else {}
    bb = HunyuanBackbone.from_config(cfg, device=dev, dtype=dt, seed=0,
                                     init_device=dev if dev.type == "cuda" else None, **kwargs)
    _sync(dev)
    build_s = time.perf_counter() - t0
    params = {name: sum(p.numel() for p in m.parameters())
              for name, m in (("dit", bb.model), ("vae", bb.vae), ("conditioner", bb.conditioner))}

    image = _image(256 if not full else 512)
    enc_t = _time(lambda: bb.encode_condition(image), dev, max(1, repeats))
    cond = bb.encode_condition(image)
    g = torch.Generator("cpu").manual_seed(0)
    latent = torch.randn((1, *bb.latent_shape), generator=g, dtype=dt).to(dev)

    def velocity():
        with torch.no_grad():
            bb.velocity(latent, 0.5, cond, 5.0)

    pts = grid_points(bb.bounds, resolution, dtype=torch.float32, device=dev).reshape(-1, 3)

    def decode():
        with torch.no_grad():
            bb.decode_sdf(latent, pts)

    def decode_backward():
        lat = latent.detach().clone().requires_grad_(True)
        sdf = bb.decode_sdf(lat, pts)
        loss = sdf.float().square().mean()
        loss.backward()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    vel_t = _time(velocity, dev, repeats)
    dec_t = _time(decode, dev, repeats)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    bwd_t = _time(decode_backward, dev, repeats)
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None
    return {
        "config": "full (hunyuan3d-dit-v2-0 architecture, random weights)" if full else "tiny",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or platform.machine(),
        "dtype": dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "latent_shape": list(bb.latent_shape),
        "params": params,
        "resolution": resolution,
        "points": int(pts.shape[0]),
        "chunk_size": bb.chunk_size,
        "build_s": build_s,
        "encode_s": statistics.median(enc_t),
        "velocity_s": statistics.median(vel_t),
        "decode_s": statistics.median(dec_t),
        "decode_backward_s": statistics.median(bwd_t),
        "decode_backward_peak_gib": peak,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="full-size architecture, random weights")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                    help="default: float16 on CUDA, float32 on CPU")
    ap.add_argument("--resolution", type=int, default=65, help="decode grid points per axis")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=None, help="decoder points per chunk")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    res = run(args.full, args.device, dtype, args.resolution, args.repeats, args.chunk_size)
    p = res["params"]
    print(f"Hunyuan3D-2 backbone, {res['config']}: latent {tuple(res['latent_shape'])}, "
          f"params DiT {p['dit'] / 1e6:.2f}M / VAE {p['vae'] / 1e6:.2f}M / "
          f"conditioner {p['conditioner'] / 1e6:.2f}M")
    print(f"device {res['device']} ({args.device}), {res['dtype']}, torch {res['torch']}, "
          f"{res['threads']} threads, median of {res['repeats']}")
    rows = [("build (random init)", res["build_s"]),
            ("encode_condition (1 image)", res["encode_s"]),
            ("velocity (1 latent, CFG batch 2)", res["velocity_s"]),
            (f"decode_sdf {res['resolution']}^3 = {res['points']} pts", res["decode_s"]),
            (f"decode_sdf {res['resolution']}^3 + backward", res["decode_backward_s"])]
    width = max(len(r[0]) for r in rows)
    print(f"| {'operation'.ljust(width)} | time (s) |")
    print(f"|{'-' * (width + 2)}|----------|")
    for name, t in rows:
        print(f"| {name.ljust(width)} | {t:8.4f} |")
    if res["decode_backward_peak_gib"] is not None:
        print(f"peak GPU memory during decode+backward: {res['decode_backward_peak_gib']:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
