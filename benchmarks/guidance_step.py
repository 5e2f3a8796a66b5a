"""Time one inner iteration of the guided sampler, broken into its parts.

    python benchmarks/guidance_step.py                       # 65^3 grid, 256x256 render, CPU
    python benchmarks/guidance_step.py --backbone analytic --iterations 10 --json out.json

One joint-phase step (followmyhold's joint losses, velocity + both similarities optimised)
runs ``--iterations`` inner iterations after one warm-up step; the engine's own timers split
each iteration (that reached the backward pass; a skipped optimiser step for a non-finite
gradient still counts) into decode (latent -> SDF grid), iso-surface, render, losses, backward and
the optimiser step. Backbones: ``hunyuan`` (tiny hy3dgen config, random weights: its field
is arbitrary, so the mesh size is whatever that field gives), ``analytic`` (the tests'
Gaussian-grid backbone: trilinear decode, so "decode" is nearly free) or ``auto`` (hunyuan if
hy3dgen imports and its random field has a surface, else analytic). The scene is the tests'
synthetic ellipsoid + hand stand-in rendered at the requested size.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from analytic_backbone import GaussianGridBackbone, make_scene  # noqa: E402
from hoiguide.guidance import GuidedSampler  # noqa: E402
from hoiguide.phases import load_schedule  # noqa: E402


def _schedule(iterations: int):
    return load_schedule({"base": "followmyhold", "name": "bench", "num_steps": 4,
                          "phases": {"hand": None, "object": None,
                                     "joint": {"window": None, "steps": [2],
                                               "iterations": iterations}}})


def _hunyuan(device: str):
    from hoiguide.backbones import HunyuanBackbone

    return HunyuanBackbone.from_config(HunyuanBackbone.tiny_config(), device=device,
                                       dtype=torch.float32, seed=0)


def run(backbone_name: str, grid: int, size: int, iterations: int, device: str) -> dict:
    scene = make_scene(size=size)
    bb, used = None, backbone_name
    if backbone_name in ("auto", "hunyuan"):
        try:
            bb = _hunyuan(device)
            used = "hunyuan-tiny (random weights)"
        except Exception as e:  # noqa: BLE001 - report and fall back
            if backbone_name == "hunyuan":
                raise
            print(f"hunyuan unavailable ({type(e).__name__}: {e}); using the analytic backbone",
                  file=sys.stderr)
    if bb is None:
        bb = GaussianGridBackbone()
        used = "analytic (hoiguide.testing)"
    opts = {"grid_resolution": grid, "render_size": size, "final_resolution": 17}
    # warm-up (kernel compilation, caches)
    GuidedSampler(bb, _schedule(1), opts).run(scene.observations, progress=False)
    res = GuidedSampler(bb, _schedule(iterations), opts).run(scene.observations,
                                                            progress=False)
    counts = res.timings["part_counts"]
    done = counts.get("backward", 0)  # iterations that ran to the backward pass
    if done == 0 and backbone_name == "auto" and not isinstance(bb, GaussianGridBackbone):
        print("the random hunyuan field has no surface; using the analytic backbone",
              file=sys.stderr)
        return run("analytic", grid, size, iterations, device)
    parts = res.timings["parts"]
    per_iter = {k: parts.get(k, 0.0) / max(done, 1) for k in
                ("decode", "isosurface", "render", "losses", "backward", "step")}
    return {
        "backbone": used, "grid_resolution": grid, "render_size": size,
        "iterations_timed": done, "skipped_empty": res.counters["skipped_empty_surface"],
        "skipped_nonfinite": res.counters["skipped_nonfinite"],
        "per_iteration_ms": {k: round(v * 1e3, 2) for k, v in per_iter.items()},
        "total_ms": round(sum(per_iter.values()) * 1e3, 2),
        "part_counts": counts,
        "torch_threads": torch.get_num_threads(), "device": device,
        "machine": platform.processor() or platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=("auto", "hunyuan", "analytic"), default="auto")
    ap.add_argument("--grid", type=int, default=65)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    out = run(a.backbone, a.grid, a.size, a.iterations, a.device)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
