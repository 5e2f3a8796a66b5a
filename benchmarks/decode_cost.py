"""Cost of decoding the SDF: dense grid against narrow-band (sparse) decoding.

    python benchmarks/decode_cost.py --json decode_cost.json            # all parts
    python benchmarks/decode_cost.py --parts tiny --repeats 5           # (a) only
    python benchmarks/decode_cost.py --parts full --full-res 65 --size 512
    python benchmarks/decode_cost.py --parts final --final-res 385

Parts (each configuration of (b) and (c) runs in its own subprocess, so its peak memory,
``ru_maxrss``, is its own):

(a) ``tiny``: the bundled generator (``hoiguide.backbones.tiny()``), a latent sampled from a
    synthetic object image, one guided-style inner iteration: decode (the latent requires
    grad) + iso-surface + render (portable renderer) + silhouette and normal losses +
    backward to the latent, dense vs sparse at 33^3 and 65^3. Median wall time over
    ``--repeats`` after one warm-up, and decoder queries (points through the geometry
    decoder: dense = R^3; sparse = all levels plus the re-query with gradient).
(b) ``full``: the full-size Hunyuan3D-2 ShapeVAE (``HunyuanBackbone.reference_config()``,
    random weights, 214 M parameters for the VAE part used here) at ``--full-res`` (65) and
    ``--size`` px (512): the same inner iteration, dense vs sparse: wall time and peak memory.
    Random weights decode no shape, so the field queried is ``f(p) = shape(p) +
    1e-3 * vae(p)``: ``shape`` a fixed analytic, saturating field (a mug-like union of a
    hollow cylinder and a handle, tanh of the distance, +-1 at 0.1 units) gives the band a
    realistic surface; the full decoder runs on every query point forward and backward, so
    cost and memory are the real ones (they do not depend on weight values).
(c) ``final``: the final, no-grad decode at ``--final-res`` (385): sparse measured; dense
    extrapolated from the query count and the per-query decoder cost measured in the same
    process (a dense 385^3 decode is 57 M queries: hours on this CPU), and said so.

The tiny part decodes through ``backbone.sdf_query`` (the latent transformer once per
iteration) in both modes, so the ratio is the one of the decoding scheme alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hoiguide.geometry import extract_isosurface, grid_points  # noqa: E402
from hoiguide.geometry.sparse import sdf_query, sparse_grid  # noqa: E402
from hoiguide.render import render  # noqa: E402
from hoiguide.types import Camera, Mesh, Similarity  # noqa: E402


# --------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------


def _camera(size: int) -> tuple[Camera, Similarity]:
    """A camera at the origin looking down +z at an object 0.3 m away, 5 cm per generator
    unit (about a mug's size), tilted so that the object is seen from above-front."""
    from hoiguide.rotations import axis_angle_to_matrix

    cam = Camera.from_fov(30.0, size, size)
    g2i = Similarity(torch.tensor(0.05, dtype=torch.float64),
                     axis_angle_to_matrix(torch.tensor([0.5, 0.4, 0.0], dtype=torch.float64)),
                     torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64))
    return cam, g2i


def _grid(query: Callable[[torch.Tensor], torch.Tensor], bounds: Any, res: int, sparse: bool,
          band: float) -> tuple[torch.Tensor, int]:
    """(grid, queries) for a query ``(N, 3) -> (N,)``."""
    if sparse:
        sg = sparse_grid(query, bounds, res, band=band)
        return sg.values, sg.queries
    pts = grid_points(bounds, res).reshape(-1, 3)
    return query(pts).reshape(res, res, res), res ** 3


def _iteration(make_query: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
               latent: torch.Tensor, bounds: Any, res: int, sparse: bool, band: float,
               cam: Camera, g2i: Similarity, target: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One inner iteration; returns per-part seconds, queries and mesh size."""
    t = {}
    latent.grad = None
    t0 = time.perf_counter()
    query = make_query()
    grid, n = _grid(query, bounds, res, sparse, band)
    t1 = time.perf_counter()
    mesh = extract_isosurface(grid, bounds)
    t2 = time.perf_counter()
    placed = Mesh(g2i.apply(mesh.vertices.double()).float(), mesh.faces)
    r = render(placed, cam)
    t3 = time.perf_counter()
    sil = r.silhouette[0]
    loss = (sil - target["mask"]).square().mean()
    both = r.mask & target["valid"]
    cos = (r.normals * target["normals"]).sum(-1)
    loss = loss + torch.where(both, 1.0 - cos, torch.zeros_like(cos)).sum() / both.sum().clamp_min(1)
    t4 = time.perf_counter()
    loss.backward()
    t5 = time.perf_counter()
    t.update(decode=t1 - t0, isosurface=t2 - t1, render=t3 - t2, losses=t4 - t3,
             backward=t5 - t4, total=t5 - t0)
    g = latent.grad
    return {"seconds": t, "queries": n, "faces": mesh.num_faces,
            "grad_norm": float(g.norm()) if g is not None else 0.0}


def _target(make_query, bounds, res, cam, g2i) -> dict[str, torch.Tensor]:
    """The render of the dense mesh, shifted by one pixel-ish, as the loss target."""
    with torch.no_grad():
        grid, _ = _grid(make_query(), bounds, res, False, 0.0)
        mesh = extract_isosurface(grid, bounds)
        v = g2i.apply(mesh.vertices.double()) + torch.tensor([0.002, -0.001, 0.0],
                                                             dtype=torch.float64)
        r = render(Mesh(v.float(), mesh.faces), cam)
    return {"mask": r.silhouette[0].detach(), "normals": r.normals.detach(),
            "valid": r.mask.clone()}


def _median_runs(fn: Callable[[], dict[str, Any]], repeats: int) -> dict[str, Any]:
    fn()  # warm-up
    runs = [fn() for _ in range(repeats)]
    parts = runs[0]["seconds"].keys()
    med = {k: statistics.median(r["seconds"][k] for r in runs) for k in parts}
    return {"median_s": {k: round(v, 4) for k, v in med.items()},
            "all_total_s": [round(r["seconds"]["total"], 4) for r in runs],
            "queries": runs[-1]["queries"], "faces": runs[-1]["faces"],
            "grad_norm": runs[-1]["grad_norm"]}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# --------------------------------------------------------------------------------------
# (a) bundled generator
# --------------------------------------------------------------------------------------


def _object_image(size: int = 256) -> np.ndarray:
    """A synthetic object image: a shaded mug-like silhouette (body + handle), RGBA."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = (np.abs(xx - 0.45) < 0.2) & (np.abs(yy - 0.5) < 0.27)
    ring = np.abs(np.hypot((xx - 0.68) / 0.09, (yy - 0.5) / 0.14) - 1.0) < 0.35
    m = body | (ring & (xx > 0.64))
    img = np.zeros((size, size, 4), np.uint8)
    shade = (150 + 80 * (1 - np.abs(xx - 0.4) * 2)).clip(0, 255).astype(np.uint8)
    img[..., 0] = shade
    img[..., 1] = (shade * 0.8).astype(np.uint8)
    img[..., 2] = (shade * 0.6).astype(np.uint8)
    img[..., 3] = np.where(m, 255, 0)
    img[~m, :3] = 0
    return img


def bench_tiny(resolutions: list[int], size: int, repeats: int, band: float) -> dict[str, Any]:
    from hoiguide.backbones import tiny
    from hoiguide.guidance.sampler import sample

    bb = tiny(device="cpu", dtype=torch.float32)
    x0 = sample(bb, _object_image(), num_steps=20, seed=0)
    latent = x0.clone().requires_grad_(True)
    cam, g2i = _camera(size)

    def make_query():
        q = sdf_query(bb, latent)
        return lambda p: q(p)[0]

    out: dict[str, Any] = {"backbone": "tiny (bundled, hoiguide.backbones.tiny())",
                           "render_size": size, "band": band}
    for res in resolutions:
        target = _target(lambda: (lambda p: bb.decode_sdf(x0, p)[0]), bb.bounds, res, cam, g2i)
        row = {}
        for mode in ("dense", "sparse"):
            row[mode] = _median_runs(lambda: _iteration(make_query, latent, bb.bounds, res,
                                                        mode == "sparse", band, cam, g2i,
                                                        target), repeats)
        d, s = row["dense"], row["sparse"]
        row["ratio_time"] = round(d["median_s"]["total"] / s["median_s"]["total"], 2)
        row["ratio_decode_plus_backward"] = round(
            (d["median_s"]["decode"] + d["median_s"]["backward"])
            / (s["median_s"]["decode"] + s["median_s"]["backward"]), 2)
        row["ratio_queries"] = round(d["queries"] / s["queries"], 2)
        out[f"{res}"] = row
    return out


# --------------------------------------------------------------------------------------
# (b), (c) full-size ShapeVAE, one configuration per subprocess
# --------------------------------------------------------------------------------------


def _mug_field(p: torch.Tensor) -> torch.Tensor:
    """Analytic mug-like field in generator units, negative inside, saturating: tanh(d / 0.1)
    of the distance to a hollow cylinder (radius 0.45, wall 0.06, height 1.2, with a bottom)
    unioned with a torus handle."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    rho = torch.sqrt(x * x + z * z + 1e-12)
    wall = (rho - 0.45).abs() - 0.03
    height = y.abs() - 0.6
    cup = torch.maximum(wall, height)
    bottom = torch.maximum(rho - 0.48, (y + 0.55).abs() - 0.05)
    cup = torch.minimum(cup, bottom)
    q = torch.stack([torch.sqrt((x - 0.55) ** 2 + y * y + 1e-12) - 0.28, z], -1)
    handle = q.norm(dim=-1) - 0.05
    handle = torch.maximum(handle, 0.45 - x)
    d = torch.minimum(cup, handle)
    return torch.tanh(d / 0.1)


def _full_backbone():
    """Hunyuan3D-2's full-size ShapeVAE (reference config) with random weights; the flow
    transformer and the image encoder, unused here, are the tiny config's (building the
    full-size ones would take ~10 GB for nothing)."""
    import copy

    from hoiguide.backbones import HunyuanBackbone

    cfg = HunyuanBackbone.reference_config()
    small = HunyuanBackbone.tiny_config()
    cfg["model"] = copy.deepcopy(small["model"])
    cfg["model"]["params"]["in_channels"] = cfg["vae"]["params"]["embed_dim"]
    cfg["conditioner"] = copy.deepcopy(small["conditioner"])
    cfg["image_processor"] = copy.deepcopy(small["image_processor"])
    return HunyuanBackbone.from_config(cfg, device="cpu", dtype=torch.float32, seed=0)


def run_full_config(mode: str, res: int, size: int, band: float, repeats: int,
                    chunk: int) -> dict[str, Any]:
    """(b): one configuration (runs in a subprocess)."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    bb = _full_backbone()
    build_s = time.perf_counter() - t0
    latent = (0.5 * torch.randn(1, *bb.latent_shape)).requires_grad_(True)
    cam, g2i = _camera(size)

    def make_query():
        q = sdf_query(bb, latent, chunk_size=chunk)
        return lambda p: _mug_field(p) + 1e-3 * q(p)[0]

    target = _target(lambda: _mug_field, bb.bounds, res, cam, g2i)
    rss_before = _peak_rss_mb()
    runs = []
    for _ in range(repeats):
        runs.append(_iteration(make_query, latent, bb.bounds, res, mode == "sparse", band,
                               cam, g2i, target))
    med = {k: round(statistics.median(r["seconds"][k] for r in runs), 3)
           for k in runs[0]["seconds"]}
    # the latent transformer alone (the floor every iteration pays once)
    with torch.no_grad():
        t = time.perf_counter()
        bb.vae((1.0 / bb.vae.scale_factor) * latent.detach())
        transformer_s = time.perf_counter() - t
    return {"mode": mode, "resolution": res, "render_size": size, "band": band,
            "repeats": repeats, "median_s": med,
            "all_total_s": [round(r["seconds"]["total"], 3) for r in runs],
            "queries": runs[-1]["queries"], "faces": runs[-1]["faces"],
            "transformer_forward_s": round(transformer_s, 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "rss_after_build_mb": round(rss_before, 1), "build_s": round(build_s, 1),
            "chunk_size": chunk}


def run_final_config(mode: str, res: int, band: float, chunk: int) -> dict[str, Any]:
    """(c): the final no-grad decode (runs in a subprocess)."""
    torch.manual_seed(0)
    bb = _full_backbone()
    latent = 0.5 * torch.randn(1, *bb.latent_shape)
    out: dict[str, Any] = {"mode": mode, "resolution": res, "band": band, "chunk_size": chunk}
    with torch.no_grad():
        t = time.perf_counter()
        q = sdf_query(bb, latent, chunk_size=chunk)
        out["transformer_s"] = round(time.perf_counter() - t, 3)
        counter = {"n": 0, "s": 0.0}

        def query(p):
            t1 = time.perf_counter()
            v = _mug_field(p) + 1e-3 * q(p)[0]
            counter["n"] += p.shape[0]
            counter["s"] += time.perf_counter() - t1
            return v

        # per-query cost on a dense-like block of points
        probe = grid_points(bb.bounds, 33).reshape(-1, 3)[:4 * chunk]
        t = time.perf_counter()
        query(probe)
        per_query = (time.perf_counter() - t) / probe.shape[0]
        counter.update(n=0, s=0.0)
        out["per_query_ms"] = round(per_query * 1e3, 4)
        t = time.perf_counter()
        if mode == "sparse":
            sg = sparse_grid(query, bb.bounds, res, band=band)
            grid, n = sg.values, sg.queries
            out["levels"] = sg.levels
        else:
            pts = grid_points(bb.bounds, res).reshape(-1, 3)
            grid, n = query(pts).reshape(res, res, res), res ** 3
        out["decode_s"] = round(time.perf_counter() - t, 2)
        out["decoder_s"] = round(counter["s"], 2)
        t = time.perf_counter()
        mesh = extract_isosurface(grid, bb.bounds)
        out["isosurface_s"] = round(time.perf_counter() - t, 2)
    out.update(queries=n, dense_queries=res ** 3, faces=mesh.num_faces,
               peak_rss_mb=round(_peak_rss_mb(), 1))
    out["dense_decode_extrapolated_s"] = round(res ** 3 * per_query, 1)
    return out


def _subprocess(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "args": args}
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else
                f"exit {p.returncode}", "args": args}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="tiny,full,final",
                    help="comma-separated subset of tiny, full, final")
    ap.add_argument("--repeats", type=_positive_int, default=5)
    ap.add_argument("--band", type=float, default=1.0)
    ap.add_argument("--tiny-res", default="33,65")
    ap.add_argument("--tiny-size", type=_positive_int, default=256)
    ap.add_argument("--full-res", type=_positive_int, default=65)
    ap.add_argument("--size", type=_positive_int, default=512)
    ap.add_argument("--full-repeats", type=_positive_int, default=2)
    ap.add_argument("--final-res", type=_positive_int, default=385)
    ap.add_argument("--chunk", type=_positive_int, default=8000)
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds per full-size subprocess")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_config", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a._config:  # a subprocess: one configuration, JSON on the last line of stdout
        kind, mode = a._config.split(":")
        if kind == "full":
            res = run_full_config(mode, a.full_res, a.size, a.band, a.full_repeats, a.chunk)
        else:
            res = run_final_config(mode, a.final_res, a.band, a.chunk)
        print(json.dumps(res))
        return
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("tiny", "full", "final")]
    if bad:
        ap.error(f"--parts: unknown {bad}; expected some of tiny, full, final")
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None
                                                       else sys.argv[1:])]),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_at_start": os.getloadavg()},
    }
    if "tiny" in parts:
        res = [int(r) for r in a.tiny_res.split(",")]
        out["tiny"] = bench_tiny(res, a.tiny_size, a.repeats, a.band)
        print(json.dumps({"tiny": out["tiny"]}, indent=1), file=sys.stderr)
    common = ["--band", str(a.band), "--chunk", str(a.chunk)]
    if "full" in parts:
        out["full"] = {}
        for mode in ("sparse", "dense"):
            out["full"][mode] = _subprocess(
                ["--_config", f"full:{mode}", "--full-res", str(a.full_res), "--size",
                 str(a.size), "--full-repeats", str(a.full_repeats), *common], a.timeout)
            print(json.dumps({"full": {mode: out["full"][mode]}}), file=sys.stderr)
        d, s = out["full"].get("dense", {}), out["full"].get("sparse", {})
        if "median_s" in d and "median_s" in s:
            out["full"]["ratio_time"] = round(d["median_s"]["total"] / s["median_s"]["total"], 2)
            out["full"]["ratio_queries"] = round(d["queries"] / s["queries"], 2)
            out["full"]["ratio_peak_rss"] = round(d["peak_rss_mb"] / s["peak_rss_mb"], 2)
            out["full"]["ratio_peak_rss_above_model"] = round(
                (d["peak_rss_mb"] - d["rss_after_build_mb"])
                / max(s["peak_rss_mb"] - s["rss_after_build_mb"], 1.0), 2)
    if "final" in parts:
        out["final"] = {"sparse": _subprocess(["--_config", "final:sparse", "--final-res",
                                               str(a.final_res), *common], a.timeout)}
        f = out["final"]["sparse"]
        if "queries" in f:
            f["ratio_queries"] = round(f["dense_queries"] / f["queries"], 1)
            f["ratio_time_vs_extrapolated_dense"] = round(
                f["dense_decode_extrapolated_s"] / max(f["decode_s"], 1e-9), 1)
            f["note"] = ("dense not run: its decode time is extrapolated as dense_queries x "
                         "per_query_ms measured in the same process")
        print(json.dumps({"final": out["final"]}), file=sys.stderr)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
