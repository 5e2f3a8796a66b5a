"""Cost of decoding the SDF: dense grid against narrow-band (sparse) decoding.

    python benchmarks/decode_cost.py --json decode_cost.json            # all parts
    python benchmarks/decode_cost.py --parts tiny --repeats 5           # (a) only
    python benchmarks/decode_cost.py --parts full --full-res 65 --size 512
    python benchmarks/decode_cost.py --parts final --final-res 385

Parts (each configuration of (b) and (c) runs in its own subprocess, so its peak memory,
``ru_maxrss``, is its own). Modes (:data:`MODES`): ``dense``; ``sparse`` (band 1, the
default); ``sparse_last_band_0`` (band 1, none at the last refinement).

(a) ``tiny``: the bundled generator (``hoiguide.backbones.tiny()``), a latent sampled from a
    rendered mug, one guided-style inner iteration: decode (the latent requires grad) +
    iso-surface + render (portable renderer, ``--tiny-size`` px) + silhouette and normal
    losses + backward to the latent, at 33^3 and 65^3. Medians over ``--repeats`` after one
    warm-up of wall and CPU time (CPU time, summed over threads, is the steadier measure on
    a shared machine), and decoder queries (dense = R^3; sparse = all levels plus the
    re-query with gradient).
(b) ``full``: the full-size Hunyuan3D-2 ShapeVAE (``HunyuanBackbone.reference_config()``'s
    VAE, random weights) at ``--full-res`` (65) and ``--size`` px (512): the same inner
    iteration: wall and CPU time, peak memory. Random weights decode no shape, so the field
    queried is ``f(p) = mug(p) + 1e-3 vae(p)``: ``mug`` a fixed analytic, saturating field
    (hollow cylinder + handle, ``tanh(d / 0.1)`` like a trained decoder's) gives the band a
    realistic surface, and the full decoder runs on every query point forward and backward,
    so cost and memory are the real ones (they do not depend on weight values).
(c) ``final``: the final, no-grad decode at ``--final-res`` (385). Not run with the decoder
    (dense: 57 M queries, hours here): queries, bookkeeping time and peak memory are measured
    on the analytic mug field alone, and the decoder's time is extrapolated as queries x its
    measured per-query cost (a separate subprocess); the JSON says so.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hoiguide.geometry import extract_isosurface, grid_points
from hoiguide.geometry.sparse import sdf_query, sparse_grid
from hoiguide.render import render
from hoiguide.types import Camera, Mesh, Similarity

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


def _grid(query: Callable[[torch.Tensor], torch.Tensor], bounds: Any, res: int,
          sparse: dict[str, Any] | None) -> tuple[torch.Tensor, int]:
    """(grid, queries) for a query ``(N, 3) -> (N,)``; ``sparse``: None (dense) or the
    options of ``sparse_grid``."""
    if sparse is not None:
        sg = sparse_grid(query, bounds, res, **sparse)
        return sg.values, sg.queries
    pts = grid_points(bounds, res).reshape(-1, 3)
    return query(pts).reshape(res, res, res), res ** 3


def _iteration(make_query: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
               latent: torch.Tensor, bounds: Any, res: int, sparse: dict[str, Any] | None,
               cam: Camera, g2i: Similarity, target: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One inner iteration; returns per-part wall and CPU seconds (CPU time, summed over
    threads, is the steadier measure of work on a shared machine), queries, mesh size."""
    latent.grad = None
    marks = [(time.perf_counter(), time.process_time())]
    query = make_query()
    grid, n = _grid(query, bounds, res, sparse)
    marks.append((time.perf_counter(), time.process_time()))
    mesh = extract_isosurface(grid, bounds)
    marks.append((time.perf_counter(), time.process_time()))
    placed = Mesh(g2i.apply(mesh.vertices.double()).float(), mesh.faces)
    r = render(placed, cam)
    marks.append((time.perf_counter(), time.process_time()))
    loss = (r.silhouette[0] - target["mask"]).square().mean()
    both = r.mask & target["valid"]
    cos = (r.normals * target["normals"]).sum(-1)
    loss = loss + (torch.where(both, 1.0 - cos, torch.zeros_like(cos)).sum()
                   / both.sum().clamp_min(1))
    marks.append((time.perf_counter(), time.process_time()))
    loss.backward()
    marks.append((time.perf_counter(), time.process_time()))
    names = ("decode", "isosurface", "render", "losses", "backward")
    wall = {k: marks[i + 1][0] - marks[i][0] for i, k in enumerate(names)}
    cpu = {k: marks[i + 1][1] - marks[i][1] for i, k in enumerate(names)}
    wall["total"] = marks[-1][0] - marks[0][0]
    cpu["total"] = marks[-1][1] - marks[0][1]
    g = latent.grad
    return {"seconds": wall, "cpu_seconds": cpu, "queries": n, "faces": mesh.num_faces,
            "grad_norm": float(g.norm()) if g is not None else 0.0}


def _target(make_query, bounds, res, cam, g2i) -> dict[str, torch.Tensor]:
    """The render of the dense mesh, shifted by one pixel-ish, as the loss target."""
    with torch.no_grad():
        grid, _ = _grid(make_query(), bounds, res, None)
        mesh = extract_isosurface(grid, bounds)
        v = g2i.apply(mesh.vertices.double()) + torch.tensor([0.002, -0.001, 0.0],
                                                             dtype=torch.float64)
        r = render(Mesh(v.float(), mesh.faces), cam)
    return {"mask": r.silhouette[0].detach(), "normals": r.normals.detach(),
            "valid": r.mask.clone()}


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("seconds", "cpu_seconds"):
        out["median_" + ("s" if key == "seconds" else "cpu_s")] = {
            k: round(statistics.median(r[key][k] for r in runs), 4) for k in runs[0][key]}
    out["all_total_s"] = [round(r["seconds"]["total"], 4) for r in runs]
    out.update(queries=runs[-1]["queries"], faces=runs[-1]["faces"],
               grad_norm=runs[-1]["grad_norm"])
    return out


def _median_runs(fn: Callable[[], dict[str, Any]], repeats: int) -> dict[str, Any]:
    fn()  # warm-up
    return _medians([fn() for _ in range(repeats)])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# --------------------------------------------------------------------------------------
# (a) bundled generator
# --------------------------------------------------------------------------------------


def _object_image(size: int = 256) -> np.ndarray:
    """The generator's condition: a mug (cylinder + torus handle, trimesh) rendered with the
    library's renderer, shaded by its normals, cropped with the pipeline's ``object_image``."""
    import trimesh

    from hoiguide.adapters.inpainting import object_image
    from hoiguide.rotations import axis_angle_to_matrix

    body = trimesh.creation.cylinder(radius=0.4, height=1.0, sections=48)
    handle = trimesh.creation.torus(major_radius=0.25, minor_radius=0.05)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation([0.45, 0, 0])
    tm = trimesh.util.concatenate([body, handle])
    v = torch.as_tensor(np.asarray(tm.vertices), dtype=torch.float64)
    v = (v - v.mean(0)) / v.abs().max() * 0.04
    rot = axis_angle_to_matrix(torch.tensor([0.6, 0.3, 0.0], dtype=torch.float64))
    v = v @ rot.T + torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)
    cam = Camera.from_fov(40.0, size, size)
    r = render(Mesh(v.float(), torch.as_tensor(np.asarray(tm.faces))), cam)
    light = np.array([0.3, -0.5, -0.8]) / np.linalg.norm([0.3, -0.5, -0.8])
    shade = np.clip(0.35 + 0.65 * (r.normals.numpy() @ -light), 0.0, 1.0)
    rgb = (shade[..., None] * np.array([200.0, 120.0, 60.0])).astype(np.uint8)
    return object_image(rgb, r.mask.numpy(), size=size)


MODES = {"dense": None, "sparse": {"band": 1.0},
         "sparse_last_band_0": {"band": 1.0, "last_band": 0.0}}
"""Decoding modes compared: dense; sparse with the default margin of one cell at every
level; sparse with no margin at the last refinement (isolated specks thinner than two
final cells that touch no coarser grid point can be missed; see hoiguide.geometry.sparse)."""


def bench_tiny(resolutions: list[int], size: int, repeats: int) -> dict[str, Any]:
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
                           "render_size": size, "repeats": repeats,
                           "modes": {k: v for k, v in MODES.items()}}
    for res in resolutions:
        target = _target(lambda: (lambda p: bb.decode_sdf(x0, p)[0]), bb.bounds, res, cam, g2i)
        row: dict[str, Any] = {}
        for mode, opts in MODES.items():
            row[mode] = _median_runs(
                lambda res=res, opts=opts, target=target: _iteration(
                    make_query, latent, bb.bounds, res, opts, cam, g2i, target), repeats)
        d = row["dense"]
        for mode in MODES:
            if mode == "dense":
                continue
            s_ = row[mode]
            row[f"ratio_{mode}"] = _ratios(d, s_)
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
    cup = torch.maximum(wall, y.abs() - 0.6)
    bottom = torch.maximum(rho - 0.48, (y + 0.55).abs() - 0.05)
    cup = torch.minimum(cup, bottom)
    q = torch.stack([torch.sqrt((x - 0.55) ** 2 + y * y + 1e-12) - 0.28, z], -1)
    handle = torch.maximum(q.norm(dim=-1) - 0.05, 0.45 - x)
    return torch.tanh(torch.minimum(cup, handle) / 0.1)


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


def run_full_config(mode: str, res: int, size: int, repeats: int, chunk: int) -> dict[str, Any]:
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
    runs = [_iteration(make_query, latent, bb.bounds, res, MODES[mode], cam, g2i, target)
            for _ in range(repeats)]
    with torch.no_grad():  # the latent transformer alone: the floor of every iteration
        t = time.perf_counter()
        bb.vae((1.0 / bb.vae.scale_factor) * latent.detach())
        transformer_s = time.perf_counter() - t
    return {"mode": mode, "options": MODES[mode], "resolution": res, "render_size": size,
            "repeats": repeats, **_medians(runs),
            "transformer_forward_s": round(transformer_s, 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "rss_before_iterations_mb": round(rss_before, 1), "build_s": round(build_s, 1),
            "chunk_size": chunk}


def run_dense_partial(res: int, chunk: int, k: int) -> dict[str, Any]:
    """(b), dense at full size, extrapolated (in a subprocess): a dense 65^3 iteration is
    ~35 decoder chunks forward and backward, over half an hour on this shared CPU. Measured
    here: the decode (transformer + ``k`` chunks of the dense grid, forward with the
    checkpointing the backbone uses, then backward) and the same with 8 points (the fixed
    part: transformer forward and backward); the decoder part scales with the number of
    chunks. Peak memory is measured: with checkpointing, one chunk's activations are alive
    at a time, so it does not grow with the number of chunks."""
    torch.manual_seed(0)
    bb = _full_backbone()
    latent = (0.5 * torch.randn(1, *bb.latent_shape)).requires_grad_(True)
    pts = grid_points(bb.bounds, res).reshape(-1, 3)
    w = torch.randn(pts.shape[0], generator=torch.Generator().manual_seed(1))
    n_chunks = math.ceil(pts.shape[0] / chunk)
    rss0 = _peak_rss_mb()

    def run(n: int) -> dict[str, float]:
        latent.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        q = sdf_query(bb, latent, chunk_size=chunk)
        v = _mug_field(pts[:n]) + 1e-3 * q(pts[:n])[0]
        t1, c1 = time.perf_counter(), time.process_time()
        (v * w[:n]).sum().backward()
        t2, c2 = time.perf_counter(), time.process_time()
        return {"fwd": t1 - t0, "bwd": t2 - t1, "fwd_cpu": c1 - c0, "bwd_cpu": c2 - c1}

    fixed = run(8)
    part = run(k * chunk)
    est = {key: fixed[key] + (part[key] - fixed[key]) / k * n_chunks for key in fixed}
    return {"mode": "dense_partial", "resolution": res, "chunk_size": chunk,
            "chunks_run": k, "chunks_dense": n_chunks,
            "fixed_s": {key: round(v, 2) for key, v in fixed.items()},
            "partial_s": {key: round(v, 2) for key, v in part.items()},
            "decode_plus_backward_extrapolated_s": round(est["fwd"] + est["bwd"], 1),
            "decode_plus_backward_extrapolated_cpu_s": round(est["fwd_cpu"] + est["bwd_cpu"],
                                                             1),
            "decode_extrapolated_s": round(est["fwd"], 1),
            "backward_extrapolated_s": round(est["bwd"], 1),
            "decode_extrapolated_cpu_s": round(est["fwd_cpu"], 1),
            "backward_extrapolated_cpu_s": round(est["bwd_cpu"], 1),
            "queries": res ** 3, "peak_rss_mb": round(_peak_rss_mb(), 1),
            "rss_before_iterations_mb": round(rss0, 1)}


def run_final_config(mode: str, res: int, chunk: int) -> dict[str, Any]:
    """(c), the bookkeeping: the final no-grad decode of the analytic mug field alone (the
    band the decoder would see), ``res``^3, in a subprocess: queries, time, peak memory."""
    out: dict[str, Any] = {"mode": mode, "options": MODES[mode], "resolution": res}
    with torch.no_grad():
        t = time.perf_counter()
        if MODES[mode] is None:
            # as decode_grid does it: all grid points, decoded chunk by chunk
            pts = grid_points(_FINAL_BOUNDS, res).reshape(-1, 3)
            vals = torch.cat([_mug_field(pts[i:i + chunk])
                              for i in range(0, pts.shape[0], chunk)])
            grid, n = vals.reshape(res, res, res), res ** 3
            del pts, vals
            out["levels"] = None
        else:
            sg = sparse_grid(_mug_field, _FINAL_BOUNDS, res, chunk_size=chunk, **MODES[mode])
            grid, n = sg.values, sg.queries
            out["levels"] = sg.levels
            del sg
        out["decode_without_decoder_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        mesh = extract_isosurface(grid, _FINAL_BOUNDS)
        out["isosurface_s"] = round(time.perf_counter() - t, 2)
    out.update(queries=n, dense_queries=res ** 3, faces=mesh.num_faces,
               peak_rss_mb=round(_peak_rss_mb(), 1))
    return out


_FINAL_BOUNDS = ((-1.01,) * 3, (1.01,) * 3)
"""Hunyuan3D-2's decode box (``box_v = 1.01``)."""


def run_per_query(chunk: int) -> dict[str, Any]:
    """(c), the decoder: the full-size geometry decoder's cost per query point (no grad),
    and the latent transformer's, in a subprocess."""
    torch.manual_seed(0)
    bb = _full_backbone()
    latent = 0.5 * torch.randn(1, *bb.latent_shape)
    with torch.no_grad():
        t = time.perf_counter()
        q = sdf_query(bb, latent, chunk_size=chunk)
        transformer_s = time.perf_counter() - t
        pts = (torch.rand(3 * chunk, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1)
        q(pts[:chunk])  # warm-up
        t = time.perf_counter()
        q(pts)
        per_query = (time.perf_counter() - t) / pts.shape[0]
    return {"transformer_s": round(transformer_s, 3), "per_query_ms": round(per_query * 1e3, 4),
            "points_timed": int(pts.shape[0]), "chunk_size": chunk,
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _subprocess(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "args": args}
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {p.returncode}", "args": args}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def _resolutions(s: str) -> list[int]:
    try:
        out = [int(r) for r in s.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") \
            from None
    if not out or min(out) < 3:
        raise argparse.ArgumentTypeError(f"expected resolutions >= 3, got {s!r}")
    return out


def _ratios(d: dict[str, Any], s: dict[str, Any]) -> dict[str, float]:
    """dense / sparse: wall time, CPU time, decode + backward CPU time, queries, memory."""
    out = {"time": round(d["median_s"]["total"] / s["median_s"]["total"], 2),
           "cpu_time": round(d["median_cpu_s"]["total"] / s["median_cpu_s"]["total"], 2),
           "decode_plus_backward_cpu": round(
               (d["median_cpu_s"]["decode"] + d["median_cpu_s"]["backward"])
               / (s["median_cpu_s"]["decode"] + s["median_cpu_s"]["backward"]), 2),
           "queries": round(d["queries"] / s["queries"], 2)}
    if "peak_rss_mb" in d and "peak_rss_mb" in s:
        out["peak_rss"] = round(d["peak_rss_mb"] / s["peak_rss_mb"], 2)
        out["peak_rss_above_model"] = round(
            (d["peak_rss_mb"] - d["rss_before_iterations_mb"])
            / max(s["peak_rss_mb"] - s["rss_before_iterations_mb"], 1.0), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="tiny,full,final",
                    help="comma-separated subset of tiny, full, final")
    ap.add_argument("--repeats", type=_positive_int, default=5,
                    help="timed iterations per configuration of (a), after one warm-up")
    ap.add_argument("--tiny-res", type=_resolutions, default=[33, 65])
    ap.add_argument("--tiny-size", type=_positive_int, default=256)
    ap.add_argument("--full-res", type=_positive_int, default=65)
    ap.add_argument("--size", type=_positive_int, default=512)
    ap.add_argument("--full-repeats", type=_positive_int, default=1,
                    help="timed iterations per full-size configuration (no warm-up: one "
                    "dense iteration is minutes here)")
    ap.add_argument("--full-modes", default="sparse,sparse_last_band_0,dense",
                    help="of dense, sparse, sparse_last_band_0, dense_partial (dense "
                    "extrapolated from --dense-chunks decoder chunks: for slow machines)")
    ap.add_argument("--dense-chunks", type=_positive_int, default=2)
    ap.add_argument("--resume-log", type=Path, default=None,
                    help="stderr of an earlier run: configurations it finished are taken "
                    "from it instead of being run again")
    ap.add_argument("--final-res", type=_positive_int, default=385)
    ap.add_argument("--final-modes", default="sparse,sparse_last_band_0,dense")
    ap.add_argument("--chunk", type=_positive_int, default=8000,
                    help="points per geometry-decoder call (full size)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds per full-size subprocess")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_config", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._config:  # a subprocess: one configuration, JSON on the last line of stdout
        kind, mode = a._config.split(":")
        if kind == "full":
            res = run_full_config(mode, a.full_res, a.size, a.full_repeats, a.chunk)
        elif kind == "perquery":
            res = run_per_query(a.chunk)
        elif kind == "densepartial":
            res = run_dense_partial(a.full_res, a.chunk, a.dense_chunks)
        else:
            res = run_final_config(mode, a.final_res, a.chunk)
        print(json.dumps(res))
        return
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("tiny", "full", "final")]
    full_modes = [m.strip() for m in a.full_modes.split(",") if m.strip()]
    final_modes = [m.strip() for m in a.final_modes.split(",") if m.strip()]
    if bad:
        ap.error(f"--parts: unknown {bad}; expected some of tiny, full, final")
    for name, modes in (("--full-modes", full_modes), ("--final-modes", final_modes)):
        known = list(MODES) + (["dense_partial"] if name == "--full-modes" else [])
        unknown = [m for m in modes if m not in known]
        if unknown:
            ap.error(f"{name}: unknown {unknown}; expected some of {known}")
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "command": " ".join(["benchmarks/decode_cost.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
    }

    def log(obj: Any) -> None:
        print(json.dumps(obj), file=sys.stderr, flush=True)

    prev: dict[str, Any] = {"tiny": None, "full": {}, "final": {}}
    if a.resume_log is not None:
        for line in a.resume_log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("tiny"):
                prev["tiny"] = rec["tiny"]
            for part in ("full", "final"):
                for k, v in (rec.get(part) or {}).items() if isinstance(rec, dict) else ():
                    if isinstance(v, dict) and "error" not in v:
                        prev[part][k] = v
        out["resumed_from"] = str(a.resume_log)
    if "tiny" in parts:
        out["tiny"] = prev["tiny"] or bench_tiny(a.tiny_res, a.tiny_size, a.repeats)
        log({"tiny": out["tiny"]})
    common = ["--chunk", str(a.chunk)]
    if "full" in parts:
        out["full"] = {}
        for mode in full_modes:
            if mode in prev["full"]:
                out["full"][mode] = prev["full"][mode]
                continue
            kind = "densepartial:-" if mode == "dense_partial" else f"full:{mode}"
            out["full"][mode] = _subprocess(
                ["--_config", kind, "--full-res", str(a.full_res), "--size",
                 str(a.size), "--full-repeats", str(a.full_repeats), "--dense-chunks",
                 str(a.dense_chunks), *common], a.timeout)
            log({"full": {mode: out["full"][mode]}})
        d = out["full"].get("dense", {})
        dp, sp = out["full"].get("dense_partial", {}), out["full"].get("sparse", {})
        if "median_s" not in d and "decode_plus_backward_extrapolated_s" in dp \
                and "median_s" in sp:
            # the same mesh in both modes: iso-surface, render and losses from the sparse run
            rest = {k: sp["median_s"][k] for k in ("isosurface", "render", "losses")}
            rest_cpu = {k: sp["median_cpu_s"][k] for k in ("isosurface", "render", "losses")}
            d = {"extrapolated": True,
                 "median_s": {"decode": dp["decode_extrapolated_s"],
                              "backward": dp["backward_extrapolated_s"], **rest,
                              "total": round(dp["decode_plus_backward_extrapolated_s"]
                                             + sum(rest.values()), 1)},
                 "median_cpu_s": {"decode": dp["decode_extrapolated_cpu_s"],
                                  "backward": dp["backward_extrapolated_cpu_s"], **rest_cpu,
                                  "total": round(dp["decode_plus_backward_extrapolated_cpu_s"]
                                                 + sum(rest_cpu.values()), 1)},
                 "queries": dp["queries"], "peak_rss_mb": dp["peak_rss_mb"],
                 "rss_before_iterations_mb": dp["rss_before_iterations_mb"]}
            out["full"]["dense_extrapolated"] = d
        for mode in full_modes:
            s_ = out["full"][mode]
            if mode.startswith("sparse") and "median_s" in d and "median_s" in s_:
                out["full"][f"ratio_{mode}"] = _ratios(d, s_)
    if "final" in parts:
        out["final"] = {"per_query": prev["final"].get("per_query") or _subprocess(
            ["--_config", "perquery:-", *common], a.timeout)}
        log({"final": {"per_query": out["final"]["per_query"]}})
        pq = out["final"]["per_query"].get("per_query_ms")
        tr = out["final"]["per_query"].get("transformer_s", 0.0)
        for mode in final_modes:
            r = prev["final"].get(mode) or _subprocess(
                ["--_config", f"final:{mode}", "--final-res", str(a.final_res), *common],
                a.timeout)
            if pq is not None and "queries" in r:
                r["decoder_s_extrapolated"] = round(r["queries"] * pq / 1e3, 1)
                r["decode_s_extrapolated"] = round(r["decoder_s_extrapolated"] + tr
                                                   + r["decode_without_decoder_s"], 1)
            out["final"][mode] = r
            log({"final": {mode: r}})
        d = out["final"].get("dense", {})
        for mode in final_modes:
            s_ = out["final"][mode]
            if mode != "dense" and "queries" in s_ and "queries" in d:
                out["final"][f"ratio_{mode}"] = {
                    "queries": round(d["queries"] / s_["queries"], 1),
                    "decode_time_extrapolated": round(
                        d.get("decode_s_extrapolated", math.nan)
                        / s_.get("decode_s_extrapolated", math.nan), 1),
                    "peak_rss": round(d["peak_rss_mb"] / s_["peak_rss_mb"], 2)}
        out["final"]["note"] = (
            "the final decode at full size is not run with the decoder (a dense 385^3 decode "
            "is 57 M queries: hours here): the band, the queries, the time outside the "
            "decoder and the peak memory are measured with the analytic mug field alone; "
            "decoder time = queries x per_query_ms of the full-size geometry decoder "
            "(measured, no grad) plus one latent-transformer pass (transformer_s)")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
