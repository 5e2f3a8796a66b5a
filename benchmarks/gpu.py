"""GPU benchmark: the followmyhold schedule with the full-size Hunyuan3D-2 architecture.

    python benchmarks/gpu.py --json gpu.json      # one CUDA GPU, unattended, < 8 min

What it runs (random weights: time and memory do not depend on weight values):

* the full-size architecture, ``HunyuanBackbone.reference_config()`` (flow transformer,
  DINOv2 image encoder, ShapeVAE), built directly on the GPU in ``--dtype`` (float16);
* the ``followmyhold`` schedule (20 steps, 750 inner iterations) on the tests' synthetic
  scene (``hoiguide.testing.make_scene`` at ``--size`` px), for every configuration of
  decoding (``--modes``: dense, sparse) x renderer (``--renderers``: portable,
  nvdiffrast when it imports), each phase's inner iterations capped at
  ``--max-iterations`` (default 10) so all configurations fit the time budget; the run is
  then scaled to the full schedule (``extrapolated_full_schedule_s``: the run's total plus,
  per phase, its measured seconds per iteration x the iterations the cap left out);
* one uncapped end-to-end run of the configuration with the smallest estimate, if the
  remaining budget (``--time-budget``, default 420 s) allows it;
* the final decode at ``--final-res`` (385), sparse, and dense if its estimate (from the
  per-query cost of the sparse run) fits the remaining budget, else extrapolated.

Random weights decode no shape, so the backbone is wrapped: its field is ``mug(p) + 1e-3
decoder(p)`` (``benchmarks/decode_cost.py``'s analytic mug, a saturating field like a
trained decoder's), so the surface, the band and the mesh are realistic while the full
decoder runs on every query forward and backward. Sparse decoding enters the engine through
``GuidanceOptions.sparse`` when the engine has that option, else by substituting
``decode_grid(..., sparse=True)`` for the engine's decode (the JSON says which).

Output: one JSON (``--json``, written after every configuration): per configuration the
per-phase and per-part seconds (``profile=True``: the GPU is synchronised around each part),
inner iterations run, decoder queries, peak GPU memory (``torch.cuda.max_memory_allocated``)
and the extrapolated full-schedule time; the final decode; the device and versions.
Without CUDA it stops at once with a one-line message (exit status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("dense", "sparse")
RENDERERS = ("portable", "nvdiffrast")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ShapedBackbone:
    """A backbone whose field is ``mug(p) + weight * inner(p)``; counts decoder queries.

    Everything else (sampling, conditioning, attributes) is the wrapped backbone's."""

    def __init__(self, inner: Any, field: Callable[[torch.Tensor], torch.Tensor],
                 weight: float = 1e-3) -> None:
        self._inner, self._field, self._weight = inner, field, float(weight)
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _shape(self, points: torch.Tensor) -> torch.Tensor:
        return self._field(points.reshape(-1, 3).float()).reshape(points.shape[:-1])

    def decode_sdf(self, latent: torch.Tensor, points: torch.Tensor,
                   **kwargs: Any) -> torch.Tensor:
        self.queries += int(points.shape[-2]) * int(latent.shape[0])
        return self._shape(points) + self._weight * self._inner.decode_sdf(latent, points,
                                                                           **kwargs)

    def sdf_query(self, latent: torch.Tensor, **kwargs: Any) -> Callable:
        q = self._inner.sdf_query(latent, **kwargs)
        b = int(latent.shape[0])

        def query(points: torch.Tensor) -> torch.Tensor:
            self.queries += int(points.shape[-2]) * b
            return self._shape(points) + self._weight * q(points)

        return query


@contextlib.contextmanager
def renderer(name: str) -> Iterator[None]:
    """Make the engine's ``backend="auto"`` pick ``name`` on the GPU."""
    import hoiguide.render.renderer as rr

    if name == "portable":
        saved = rr._nvdiffrast_importable
        rr._nvdiffrast_importable = lambda: False
        try:
            yield
        finally:
            rr._nvdiffrast_importable = saved
    else:
        yield


@contextlib.contextmanager
def decoding(mode: str, options: dict[str, Any]) -> Iterator[str]:
    """Sparse decoding in the engine: the ``sparse`` option when the engine has it, else
    ``decode_grid(..., sparse=True)`` in place of the engine's decode. Yields how."""
    from hoiguide.guidance import records

    fields = {f.name for f in dataclasses.fields(records.GuidanceOptions)}
    if mode == "dense" or "sparse" in fields:
        if mode == "sparse":
            options["sparse"] = True
        yield "option" if mode == "sparse" else "dense"
        return
    import hoiguide.guidance.context as ctx_mod
    import hoiguide.guidance.engine as eng_mod
    from hoiguide.guidance.sampler import decode_grid

    patched = functools.partial(decode_grid, sparse=True)
    saved = ctx_mod.decode_grid, eng_mod.decode_grid
    ctx_mod.decode_grid = eng_mod.decode_grid = patched
    try:
        yield "patched decode_grid(sparse=True)"
    finally:
        ctx_mod.decode_grid, eng_mod.decode_grid = saved


def _schedule_iterations(schedule: Any, cap: int | None) -> dict[str, int]:
    out = {}
    for ph in schedule.resolve():
        n = ph.iterations if cap is None else min(ph.iterations, cap)
        out[ph.name] = n * (1 if ph.after_sampling else len(ph.steps))
    return out


def run_config(bb: ShapedBackbone, obs: Any, mode: str, rend: str, args: argparse.Namespace,
               cap: int | None) -> dict[str, Any]:
    from hoiguide.guidance import GuidedSampler
    from hoiguide.phases import load_schedule

    schedule = load_schedule("followmyhold")
    opts: dict[str, Any] = {"grid_resolution": args.grid, "render_size": args.size,
                            "final_resolution": args.grid, "max_iterations": cap,
                            "profile": True}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    bb.queries = 0
    t0 = time.perf_counter()
    with renderer(rend), decoding(mode, opts) as how:
        rec = GuidedSampler(bb, schedule, opts).run(obs, progress=False)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    timings = rec.timings
    run_its = _schedule_iterations(schedule, cap)
    full_its = _schedule_iterations(schedule, None)
    # the run's total plus, per guidance phase, its seconds per iteration times the
    # iterations the cap left out ("sampling" contains the phases run during sampling)
    extrap = float(timings["total"])
    for name, sec in timings["phases"].items():
        if name in run_its and run_its[name] > 0:
            extrap += sec / run_its[name] * (full_its[name] - run_its[name])
    return {"mode": mode, "renderer": rend, "sparse_via": how if mode == "sparse" else None,
            "max_iterations": cap, "wall_s": round(wall, 2),
            "phases_s": {k: round(v, 3) for k, v in timings["phases"].items()},
            "parts_s": {k: round(v, 3) for k, v in timings["parts"].items()},
            "part_counts": timings["part_counts"],
            "inner_iterations_run": sum(run_its.values()),
            "inner_iterations_schedule": sum(full_its.values()),
            "decoder_queries": bb.queries,
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
            "extrapolated_full_schedule_s": round(extrap, 1)}


def final_decode(bb: ShapedBackbone, latent: torch.Tensor, res: int, mode: str) -> dict[str, Any]:
    from hoiguide.guidance.sampler import latent_to_mesh

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    bb.queries = 0
    t0 = time.perf_counter()
    mesh = latent_to_mesh(bb, latent, res, sparse=(mode == "sparse"))
    torch.cuda.synchronize()
    return {"mode": mode, "resolution": res, "seconds": round(time.perf_counter() - t0, 2),
            "decoder_queries": bb.queries, "faces": mesh.num_faces,
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}


def _write(path: Path | None, out: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)


def _csv(choices: tuple[str, ...], flag: str) -> Callable[[str], list[str]]:
    def parse(s: str) -> list[str]:
        items = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {bad}; expected some of {list(choices)}")
        return items
    parse.__name__ = flag
    return parse


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Runs the followmyhold schedule; needs CUDA.")
    ap.add_argument("--modes", type=_csv(MODES, "--modes"), default=list(MODES),
                    help="decoding modes, comma-separated (default: dense,sparse)")
    ap.add_argument("--renderers", type=_csv(RENDERERS, "--renderers"),
                    default=list(RENDERERS),
                    help="renderers, comma-separated (nvdiffrast is skipped, and said so, "
                    "when it does not import)")
    ap.add_argument("--grid", type=_int_at_least(3), default=65,
                    help="inner-loop grid points per axis (the reference's 65)")
    ap.add_argument("--size", type=_int_at_least(32), default=512, help="render size (px)")
    ap.add_argument("--final-res", type=_int_at_least(3), default=385)
    ap.add_argument("--max-iterations", type=_int_at_least(1), default=10,
                    help="cap on each phase's inner iterations per step in the timed runs")
    ap.add_argument("--time-budget", type=float, default=420.0,
                    help="seconds: configurations whose estimate does not fit are skipped")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    ap.add_argument("--no-full-run", action="store_true",
                    help="skip the uncapped end-to-end run")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if not (math.isfinite(a.time_budget) and a.time_budget > 0):
        ap.error(f"--time-budget: expected a positive number of seconds, got {a.time_budget}")
    return a


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse printed "gpu.py: error: argument --modes: ..."
        return int(e.code or 0)
    if not torch.cuda.is_available():
        print("gpu.py: needs a CUDA GPU (torch.cuda.is_available() is False here); run it "
              "on a machine with one and a CUDA build of torch", file=sys.stderr)
        return 1
    t_start = time.perf_counter()

    def left() -> float:
        return args.time_budget - (time.perf_counter() - t_start)

    from decode_cost import _mug_field

    from hoiguide.backbones import HunyuanBackbone
    from hoiguide.render.renderer import available_backends
    from hoiguide.testing import make_scene

    dev = torch.device("cuda")
    out: dict[str, Any] = {
        "command": " ".join(["benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "dtype": args.dtype, "grid": args.grid, "render_size": args.size,
        "configs": {}, "skipped": {}}
    t = time.perf_counter()
    inner = HunyuanBackbone.from_config(HunyuanBackbone.reference_config(), device=dev,
                                        dtype=DTYPES[args.dtype], init_device=dev, seed=0)
    out["build_s"] = round(time.perf_counter() - t, 1)
    bb = ShapedBackbone(inner, _mug_field)
    obs = make_scene(size=args.size).observations
    _write(args.json, out)

    estimates: dict[str, float] = {}
    for rend in args.renderers:
        if rend not in available_backends():
            out["skipped"][f"*/{rend}"] = f"{rend} is not usable here (does not import)"
            continue
        for mode in args.modes:
            key = f"{mode}/{rend}"
            guess = max(estimates.values(), default=0.0) * (4.0 if mode == "dense" else 1.0)
            if guess > left():
                out["skipped"][key] = f"estimated {guess:.0f} s > {left():.0f} s left"
                continue
            t = time.perf_counter()
            try:
                out["configs"][key] = run_config(bb, obs, mode, rend, args,
                                                 args.max_iterations)
            except torch.cuda.OutOfMemoryError as e:
                out["configs"][key] = {"error": f"out of GPU memory: {str(e).splitlines()[0]}"}
            estimates[key] = time.perf_counter() - t
            _write(args.json, out)

    # final decode: sparse measured; dense measured if it fits, else extrapolated
    latent = torch.randn(1, *inner.latent_shape, device=dev, dtype=inner.dtype,
                         generator=torch.Generator(dev).manual_seed(0))
    out["final_decode"] = {}
    if left() > 30:
        sp = final_decode(bb, latent, args.final_res, "sparse")
        out["final_decode"]["sparse"] = sp
        per_query = sp["seconds"] / max(sp["decoder_queries"], 1)
        dense_est = per_query * args.final_res ** 3
        if dense_est < 0.5 * left():
            out["final_decode"]["dense"] = final_decode(bb, latent, args.final_res, "dense")
        else:
            out["final_decode"]["dense"] = {
                "extrapolated_seconds": round(dense_est, 1),
                "note": "not run: sparse seconds per query x resolution^3 exceeds half the "
                        "remaining budget"}
        _write(args.json, out)

    # one uncapped end-to-end run of the cheapest configuration
    done = {k: v for k, v in out["configs"].items() if "extrapolated_full_schedule_s" in v}
    if done and not args.no_full_run:
        key = min(done, key=lambda k: done[k]["extrapolated_full_schedule_s"])
        est = done[key]["extrapolated_full_schedule_s"]
        if est < left():
            mode, rend = key.split("/")
            out["full_run"] = run_config(bb, obs, mode, rend, args, None)
        else:
            out["skipped"]["full_run"] = (f"{key}: estimated {est:.0f} s > {left():.0f} s "
                                          f"left")
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    _write(args.json, out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
