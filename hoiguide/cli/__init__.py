"""The ``hoiguide`` command.

Subcommands so far:

* ``hoiguide demo [--out DIR] [--preset NAME_OR_YAML] [--seed S] [--scene PATH]``: the main
  job on a fresh machine: a synthetic scene (generated, or loaded with ``--scene``), simulated
  observers, guided reconstruction with the bundled tiny generator (``--backbone`` for another),
  scored against the ground truth. Writes meshes, ``overlay.png``, ``turntable.png``,
  ``losses.png`` and ``result.json`` (:func:`hoiguide.apps.scene.run_demo`); exit code 1 when the
  run failed (``result.json`` says where and why).
* ``hoiguide smoke --out DIR``: an end-to-end run of the geometric core on an analytic
  object (iso-surface -> render -> partial point cloud -> ICP -> metrics). It writes meshes,
  the rendered maps as PNG and ``result.json``; it needs no generator.
* ``hoiguide schedule NAME_OR_PATH [--steps N]``: show which steps each phase of a schedule
  covers, with its inner iterations and learning rates.
* ``hoiguide bench --scenes DIR --preset NAME [--preset NAME ...] --out DIR``: every preset on
  every scene of a scene set, scored with the paper's hand-aligned protocol; writes
  ``DIR/<preset>/<scene>.json``, ``DIR/summary.json`` and ``DIR/summary.md``
  (:func:`hoiguide.eval.run_benchmark`). Failed scenes are recorded and count against RR
  (exit code 0); re-running skips finished scenes.

* ``hoiguide reconstruct IMAGE --out DIR --models FILE.yaml``: one photo -> meshes
  (:func:`hoiguide.apps.photo.reconstruct_image`).
* ``hoiguide synth --n N --out DIR``: synthetic scenes with ground truth.
* ``hoiguide batch INPUT --out DIR [--shard i/n] [--ray [ADDRESS]]``: every image / scene
  folder of INPUT (a folder or a list file) into ``DIR/<item>/`` (atomically; re-running
  resumes; failures recorded), ``DIR/batch_summary.json`` (:func:`hoiguide.apps.batch.run_batch`).
* ``hoiguide app [--host H] [--port P] [--share no]``: the web demo (:mod:`hoiguide.apps.webapp`).

Every reconstruction writes meshes (GLB/PLY/OBJ), overlay.png, turntable.png/.gif,
losses.png and a self-contained report.html (:func:`hoiguide.apps.outputs.write_outputs`).
``-q/--quiet`` (warnings only, no progress bars) and ``-v/--verbose`` (debug) go before or
after the subcommand. docs/cli.md is the reference.

Exit codes: 0 success; 1 the run failed (reason in result.json and on stderr; ``batch``: at
least one item failed, see batch_summary.json); 2 bad usage or it could not start (nothing
written); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide demo --out out/demo             # synthetic scene -> guided reconstruction -> pictures
  hoiguide demo --preset demos/custom_schedule.yaml --out out/custom
  hoiguide reconstruct photo.jpg --out out/photo --models models.yaml   # needs the model weights
  hoiguide smoke --out out/smoke           # geometric core end to end, writes PNGs + result.json
  hoiguide schedule followmyhold --steps 20
  hoiguide synth --n 30 --seed 0 --objects pybullet:0-699 --out scenes/
  hoiguide bench --scenes scenes/ --preset unguided --preset fast --out out/bench
  hoiguide batch scenes/ --out out/batch   # one folder per item, resumable; --shard, --ray
  hoiguide app                             # web demo on http://127.0.0.1:7860

  -q/--quiet: warnings only, no progress bars; -v/--verbose: debug logging.
exit codes: 0 ok, 1 the run (or a batch item) failed, 2 bad usage, 130 interrupted.
"""

SUB_EXAMPLES = {
    "demo": """examples:
  hoiguide demo --out out/demo
  hoiguide demo --preset unguided --seed 3 --out out/quick        # seconds, no guidance
  hoiguide demo --scene scenes/00003_procedural_mug --preset fast --out out/mug
  hoiguide demo --option num_steps=8 --option grid_resolution=33 --views 12 --out out/d
""",
    "smoke": """examples:
  hoiguide smoke --out out/smoke
  hoiguide smoke --resolution 64 --size 128 --out out/smoke_small
""",
    "schedule": """examples:
  hoiguide schedule followmyhold
  hoiguide schedule fast --steps 8
  hoiguide schedule demos/custom_schedule.yaml --steps 20
""",
    "bench": """examples:
  hoiguide bench --scenes scenes/ --preset unguided --preset fast --out out/bench
  hoiguide bench --scenes scenes/ --preset fast --limit 5 --option num_steps=8 --out out/b
""",
    "synth": """examples:
  hoiguide synth --n 30 --seed 0 --out scenes/
  hoiguide synth --n 4 --objects procedural:mug,bottle --size 128 --out scenes_small/
""",
    "reconstruct": """examples:
  hoiguide reconstruct photo.jpg --out out/photo --models models.yaml
  hoiguide reconstruct photo.jpg --out out/photo --models offline --object-name mug
  hoiguide reconstruct left.jpg --left-hand --intrinsics 1500,1500,960,540 --out out/left
""",
    "batch": """examples:
  hoiguide batch scenes/ --out out/batch                  # every scene folder of scenes/
  hoiguide batch photos/ --models models.yaml --out out/photos
  hoiguide batch list.txt --out out/b --preset unguided   # one path per line
  hoiguide batch scenes/ --out out/b --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  hoiguide batch scenes/ --out out/b --ray                # local Ray, or $RAY_ADDRESS
  hoiguide batch scenes/ --out out/b --ray=ray://head:10001 --ray-workers 8

writes OUT/<item>/ (all files of one reconstruction + result.json; status ok or failed with
its reason) and OUT/batch_summary.json (counts ok / failed / skipped). Re-running skips the
finished items. Exit code 0: no item failed; 1: some failed; 2: could not start.
""",
    "app": """examples:
  hoiguide app                                   # http://127.0.0.1:7860, CPU, tiny generator
  hoiguide app --port 8080 --host 0.0.0.0        # reachable from other machines
  hoiguide app --models models.yaml              # photos too (needs the model weights)
""",
}


def _analytic_mug_sdf(points: torch.Tensor) -> torch.Tensor:
    """A mug-like solid in the generator box (units of the box): a capped cylinder with a
    torus handle on +x. Negative inside. Approximate SDF (exact per primitive, union by min)."""
    x, y, z = points.unbind(-1)
    r = torch.sqrt(x * x + z * z)
    d_radial, d_height = r - 0.55, y.abs() - 0.7
    outside = torch.sqrt(d_radial.clamp_min(0) ** 2 + d_height.clamp_min(0) ** 2)
    cylinder = outside + torch.maximum(d_radial, d_height).clamp_max(0)
    # torus in the x-y plane centred at (0.6, 0, 0): ring radius 0.35, tube radius 0.1
    q = torch.sqrt((x - 0.6) ** 2 + y * y) - 0.35
    torus = torch.sqrt(q * q + z * z) - 0.1
    return torch.minimum(cylinder, torus)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def _to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)


def cmd_smoke(args: argparse.Namespace) -> int:
    """Geometric core end to end on an analytic object, with known answers."""
    from hoiguide.eval import chamfer_distance, fscore
    from hoiguide.geometry import extract_isosurface, grid_points, icp
    from hoiguide.render import render
    from hoiguide.rotations import axis_angle_to_matrix, rotation_angle
    from hoiguide.types import Camera, Similarity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. iso-surface of an analytic field in the generator box [-1.1, 1.1]^3
    bounds = 1.1
    grid = grid_points(bounds, args.resolution, dtype=torch.float64)
    mesh_gen = extract_isosurface(_analytic_mug_sdf(grid), bounds)
    timings["isosurface_s"] = time.perf_counter() - t0
    log.info("iso-surface at %d^3: %d vertices, %d faces", args.resolution,
             mesh_gen.num_vertices, mesh_gen.num_faces)

    # 2. place it in the image frame: 10 cm tall object 40 cm in front of the camera
    rot = axis_angle_to_matrix(torch.tensor([0.35, 0.6, 0.1], dtype=torch.float64))
    gen_to_image = Similarity(torch.tensor(0.07, dtype=torch.float64), rot,
                              torch.tensor([0.01, -0.005, 0.4], dtype=torch.float64))
    mesh_img = mesh_gen.transformed(gen_to_image)
    camera = Camera.from_fov(45.0, args.size, args.size)
    t1 = time.perf_counter()
    out_r = render([mesh_img], camera)
    timings["render_s"] = time.perf_counter() - t1
    mask = out_r.mask.numpy()
    normals = out_r.normals.detach().numpy()
    depth = out_r.depth.detach().numpy()
    # normals shown as RGB = (x, -y, -z) * 0.5 + 0.5 (surfaces facing the camera look blue)
    normal_rgb = _to_uint8(normals * np.array([1, -1, -1]) * 0.5 + 0.5, 0, 1)
    _save_png(out / "normals.png", np.where(mask[..., None], normal_rgb, 0).astype(np.uint8))
    d = depth[mask]
    _save_png(out / "depth.png", np.where(mask, _to_uint8(depth, d.min(), d.max()), 0))
    _save_png(out / "silhouette.png",
              _to_uint8(out_r.coverage.detach().numpy(), 0.0, 1.0))

    # 3. partial point cloud of the visible surface (what monocular geometry would give), then
    #    ICP of the complete mesh onto it from a perturbed start
    v, u = np.nonzero(mask)
    partial = camera.unproject(np.stack([u + 0.5, v + 0.5], -1), depth[v, u])
    t2 = time.perf_counter()
    est = icp(mesh_gen, partial, correspondences="target_to_source")
    timings["icp_s"] = time.perf_counter() - t2
    err_rot = float(rotation_angle(est.rotation @ gen_to_image.rotation.T)) * 180 / np.pi
    err_scale = abs(float(est.scale / gen_to_image.scale) - 1)
    err_t = float((est.translation - gen_to_image.translation).norm())
    aligned = mesh_gen.transformed(est)

    # 4. metrics of the aligned mesh against the truth
    result = {
        "status": "ok",
        "mesh": {"vertices": mesh_gen.num_vertices, "faces": mesh_gen.num_faces},
        "visible_pixels": int(mask.sum()),
        "icp": {"rotation_error_deg": err_rot, "scale_error": err_scale,
                "translation_error_mm": err_t * 1000},
        "cd_cm2": chamfer_distance(aligned, mesh_img),
        "f5": fscore(aligned, mesh_img, 0.005),
        "f10": fscore(aligned, mesh_img, 0.01),
        "timings": timings,
        "seconds": time.perf_counter() - t0,
    }
    mesh_img.export(out / "object_truth.glb")
    aligned.export(out / "object_icp.glb")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    log.info("ICP error: %.2f deg, scale %.2f%%, %.2f mm; CD %.4f cm^2, F5 %.3f",
             err_rot, 100 * err_scale, 1000 * err_t, result["cd_cm2"], result["f5"])
    log.info("wrote %s", out)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from hoiguide.phases import load_schedule

    sched = load_schedule(args.schedule)
    print(sched.resolve(args.steps))
    return 0


class UsageError(Exception):
    """Bad command-line usage: reported in one line, exit code 2."""


def _parse_noise(text: str) -> "str | float":
    t = text.strip().lower()
    if t in ("default", "none"):
        return t
    try:
        v = float(t)
    except ValueError:
        raise UsageError(f"--noise: expected default, none or a number, got {text!r}") from None
    if not (v >= 0 and v == v and v != float("inf")):
        raise UsageError(f"--noise: expected a non-negative number, got {text!r}")
    return v


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--option: expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def load_backbone(spec: str, device: "str | None" = None):
    """The backbone of a ``--backbone`` spec (:func:`hoiguide.backbones.load_backbone`); a
    spec that names nothing is a :class:`UsageError` (exit code 2)."""
    from hoiguide.backbones.spec import BackboneSpecError, load_backbone as load

    try:
        return load(spec, device)
    except BackboneSpecError as exc:
        raise UsageError(f"--{exc}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    """Run presets on a scene set and write per-scene results and the summary tables."""
    from hoiguide.apps.bench import (BenchmarkError, format_table, resolve_presets,
                                     resolve_scenes, run_benchmark)
    from hoiguide.phases import ScheduleError

    try:
        noise = _parse_noise(args.noise)
        options = dict(_parse_option(o) for o in args.option)
        if args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit: expected a positive integer, got {args.limit}")
        # validate the cheap inputs before loading a (possibly large) backbone
        resolve_scenes(args.scenes, args.limit)
        resolve_presets(args.preset)
        from hoiguide.guidance.engine import GuidanceOptions
        GuidanceOptions.coerce(options)
        backbone = load_backbone(args.backbone, args.device)
    except (UsageError, BenchmarkError, ScheduleError) as exc:
        log.error("%s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        return 2
    except ValueError as exc:  # GuidanceOptions
        log.error("--option: %s", exc)
        return 2
    command = "hoiguide " + shlex.join(args.argv)
    summary = run_benchmark(args.scenes, args.preset, args.out, backbone=backbone,
                            noise=noise, seed=args.seed, device=args.device,
                            num_samples=args.num_samples, overwrite=args.overwrite,
                            progress=not args.quiet, limit=args.limit, options=options,
                            save_meshes=args.save_meshes, backbone_name=args.backbone,
                            command=command)
    print(format_table(summary, stat="mean"), end="")
    failed = sum(s["n"] - s["n_ok"] for s in summary["presets"].values())
    log.info("wrote %s and %s (%d failed run(s), counted in RR)",
             Path(args.out) / "summary.json", Path(args.out) / "summary.md", failed)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """One synthetic scene end to end: meshes, pictures and metrics (hoiguide.apps.scene.run_demo)."""
    from hoiguide.apps.scene import headline, run_demo
    from hoiguide.guidance.engine import GuidanceOptions
    from hoiguide.phases import ScheduleError, load_schedule

    try:
        noise = _parse_noise(args.noise)
        options = dict(_parse_option(o) for o in args.option)
        if args.size < 32:
            raise UsageError(f"--size: expected at least 32 pixels, got {args.size}")
        if args.num_samples < 1:
            raise UsageError(f"--num-samples: expected a positive integer, got "
                             f"{args.num_samples}")
        if args.views < 1:
            raise UsageError(f"--views: expected a positive integer, got {args.views}")
        if args.scene is not None and not Path(args.scene).expanduser().is_dir():
            raise UsageError(f"--scene: no such scene folder: {args.scene}")
        # validate the cheap inputs before loading a (possibly large) backbone
        load_schedule(args.preset)
        GuidanceOptions.coerce(options)
        backbone = load_backbone(args.backbone, args.device)
    except (UsageError, ScheduleError) as exc:
        log.error("%s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        return 2
    except ValueError as exc:  # GuidanceOptions
        log.error("--option: %s", exc)
        return 2
    result = run_demo(args.out, preset=args.preset, seed=args.seed, scene=args.scene,
                      backbone=backbone, noise=noise, image_size=args.size, options=options,
                      progress=not args.quiet, device=args.device,
                      num_samples=args.num_samples, turntable_views=args.views,
                      backbone_name=args.backbone)
    out = Path(args.out)
    print(f"hoiguide demo: {headline(result)}")
    print(f"wrote {out}/: {', '.join(result.get('files') or [])}")
    if result.get("status") != "ok":
        log.error("demo failed while %s: %s (see %s)", result.get("phase"),
                  result.get("reason"), out / "result.json")
        return 1
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate synthetic hand-object scenes with ground truth."""
    from hoiguide.synth.generate import generate_scenes
    from hoiguide.synth.objects import parse_object_spec

    try:
        parse_object_spec(args.objects)
        if args.n < 1:
            raise UsageError(f"--n: expected a positive integer, got {args.n}")
        if args.size < 32:
            raise UsageError(f"--size: expected at least 32 pixels, got {args.size}")
    except (UsageError, ValueError) as exc:
        log.error("%s", str(exc).strip().splitlines()[0])
        return 2
    command = "hoiguide " + shlex.join(args.argv)
    man = generate_scenes(args.n, args.out, objects=args.objects, seed=args.seed,
                          image_size=args.size, overwrite=args.overwrite,
                          progress=not args.quiet, command=command)
    log.info("wrote %d scenes to %s (%d failed; see manifest.json)", man["num_scenes"],
             args.out, len(man["failed"]))
    return 0 if man["num_scenes"] > 0 else 1


_BACKBONE_SPEC = re.compile(r"^(tiny|hunyuan:.+|python:[^:]+:[^:]+)$")


def cmd_batch(args: argparse.Namespace) -> int:
    """Every item of a folder or list file, one output folder each (hoiguide.apps.batch)."""
    from hoiguide.apps.batch import BatchError, parse_shard, run_batch
    from hoiguide.phases import ScheduleError

    try:
        noise = _parse_noise(args.noise)
        options = dict(_parse_option(o) for o in args.option)
        pipeline_options = dict(_parse_option(o) for o in args.pipeline_option) or None
        shard = parse_shard(args.shard)
        if args.backbone is not None and not _BACKBONE_SPEC.match(args.backbone):
            raise UsageError(f"--backbone: expected tiny, hunyuan:PATH_OR_REPO or "
                             f"python:module:callable, got {args.backbone!r}")
        for name in ("num_samples", "views", "max_attempts"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, "
                                 f"got {getattr(args, name)}")
        if args.ray_workers is not None and args.ray_workers < 1:
            raise UsageError(f"--ray-workers: expected a positive integer, got "
                             f"{args.ray_workers}")
        if args.ray_workers is not None and args.ray is None:
            raise UsageError("--ray-workers: only with --ray")
        summary = run_batch(args.input, args.out, shard=shard, ray_address=args.ray,
                            ray_workers=args.ray_workers, preset=args.preset,
                            seed=args.seed, backbone=args.backbone, models=args.models,
                            options=options, noise=noise, num_samples=args.num_samples,
                            device=args.device, object_name=args.object_name,
                            pipeline_options=pipeline_options,
                            turntable_views=args.views, overwrite=args.overwrite,
                            max_attempts=args.max_attempts, progress=not args.quiet,
                            command="hoiguide " + shlex.join(args.argv))
    except (UsageError, BatchError, ScheduleError, FileNotFoundError) as exc:
        log.error("%s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        return 2
    except ImportError as exc:                  # --ray without Ray
        log.error("%s", exc)
        return 2
    except ValueError as exc:                   # GuidanceOptions / PipelineOptions
        log.error("--option: %s", str(exc).strip().splitlines()[0])
        return 2
    c = summary["counts"]
    out = Path(args.out)
    print(f"hoiguide batch: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped "
          f"(already done) of {c['total']}"
          f"{' in shard ' + summary['shard'] if summary.get('shard') else ''}; "
          f"{summary['seconds']:.1f} s")
    print(f"wrote {out}/<item>/ and {out / 'batch_summary.json'}")
    failed = [e for e in summary["items"] if e["status"] == "failed"]
    for e in failed[:10]:
        log.warning("failed: %s: %s", e["item"], e["reason"])
    if len(failed) > 10:
        log.warning("... and %d more (see %s)", len(failed) - 10, out / "batch_summary.json")
    return 1 if failed else 0


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the web demo (hoiguide.apps.webapp) until interrupted."""
    try:
        from hoiguide.apps.webapp import launch

        if not 0 < args.port < 65536:
            raise UsageError(f"--port: expected 1-65535, got {args.port}")
        if args.backbone != "tiny" and not _BACKBONE_SPEC.match(args.backbone):
            raise UsageError(f"--backbone: expected tiny, hunyuan:PATH_OR_REPO or "
                             f"python:module:callable, got {args.backbone!r}")
        print(f"hoiguide app: http://{args.host}:{args.port} (Ctrl-C to stop)")
        launch(args.host, args.port, share=args.share == "yes", backbone=args.backbone,
               models=args.models, workdir=args.out, default_preset=args.preset)
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    except (ImportError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    return 0


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions; keeps the examples (text starting with "examples:") as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _verbosity_flags() -> argparse.ArgumentParser:
    """-q/-v accepted after the subcommand too (without overriding the top-level ones)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only, no progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hoiguide", description="Hand-held object reconstruction by guided flow sampling.",
        epilog=EXAMPLES, formatter_class=_Formatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="warnings and errors only, no progress bars")
    common = _verbosity_flags()
    raw = _Formatter

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], epilog=SUB_EXAMPLES[name],
                              formatter_class=raw, **kw)

    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = add(
        "demo", help="reconstruct a synthetic scene end to end: meshes, pictures, metrics",
        description="Make (or load) a synthetic hand-object scene, simulate the observers, run "
                    "guided reconstruction (default: the bundled tiny generator) and score it "
                    "against the ground truth (hand-aligned CD cm^2, F5, F10, IV cm^3). Writes "
                    "OUT/object.glb|ply|obj, hand.glb|ply|obj, scene.glb, input.png, "
                    "overlay.png, turntable.png|gif, losses.png, report.html, history.json "
                    "and result.json; a generated scene goes to OUT/scene/. Exit code 1 when "
                    "the run failed.")
    s.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    s.add_argument("--preset", default="fast_posthoc_fit",
                   help="phase schedule: preset name (fast_posthoc_fit, fast, followmyhold, "
                        "...) or YAML path (default: fast_posthoc_fit, the best on the "
                        "bundled generator; fast: guidance in the loop)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the scene, the observers and the flow (default 0)")
    s.add_argument("--scene", default=None,
                   help="a scene folder (hoiguide synth output) instead of generating one")
    s.add_argument("--noise", default="default",
                   help="observer noise: default, none or a number (default: default)")
    s.add_argument("--size", type=int, default=256,
                   help="image side of the generated scene in pixels (default 256)")
    s.add_argument("--backbone", default="tiny",
                   help="tiny (default), hunyuan:PATH_OR_REPO or python:module:callable")
    s.add_argument("--device", default=None, help="torch device for the backbone")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="guidance option (GuidanceOptions field), e.g. grid_resolution=33; "
                        "repeatable")
    s.add_argument("--num-samples", type=int, default=10000,
                   help="surface samples per mesh for CD / F-score (default 10000)")
    s.add_argument("--views", type=int, default=8,
                   help="views in turntable.png (default 8)")
    s.set_defaults(func=cmd_demo)
    s = add("smoke", help="run the geometric core end to end on an analytic object")
    s.add_argument("--out", default="out/smoke", help="output folder (default: out/smoke)")
    s.add_argument("--resolution", type=int, default=96, help="iso-surface grid (default 96)")
    s.add_argument("--size", type=int, default=256, help="render size in pixels (default 256)")
    s.set_defaults(func=cmd_smoke)
    s = add("schedule", help="show which steps each phase of a schedule covers")
    s.add_argument("schedule", help="preset name (e.g. followmyhold) or path to a YAML file")
    s.add_argument("--steps", type=int, default=None, help="number of flow steps")
    s.set_defaults(func=cmd_schedule)
    s = add(
        "bench", help="run presets on a scene set and tabulate the paper's metrics",
        description="Run every preset on every scene (hand-aligned protocol: CD cm^2, F5, "
                    "F10, IV cm^3, RR, seconds per scene). Writes OUT/<preset>/<scene>.json, "
                    "OUT/summary.json and OUT/summary.md. Failed scenes are recorded and "
                    "count against RR; re-running skips finished scenes.")
    s.add_argument("--scenes", required=True, help="scene-set folder (hoiguide synth output)")
    s.add_argument("--preset", action="append", required=True, metavar="NAME",
                   help="preset name or YAML path; repeat for several (e.g. --preset unguided "
                        "--preset fast)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--backbone", default="tiny",
                   help="tiny (default), hunyuan:PATH_OR_REPO or python:module:callable")
    s.add_argument("--noise", default="default",
                   help="observer noise: default, none or a number (default: default)")
    s.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    s.add_argument("--limit", type=int, default=None, help="only the first N scenes")
    s.add_argument("--overwrite", action="store_true", help="recompute finished scenes")
    s.add_argument("--device", default=None, help="torch device for the backbone")
    s.add_argument("--num-samples", type=int, default=10000,
                   help="surface samples per mesh for CD / F-score (default 10000)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="guidance option (GuidanceOptions field), e.g. grid_resolution=33; "
                        "repeatable")
    s.add_argument("--save-meshes", action="store_true",
                   help="also write OUT/<preset>/<scene>/object.ply and hand.ply")
    s.set_defaults(func=cmd_bench)
    s = add(
        "synth", help="make synthetic hand-object scenes with ground truth",
        description="Grasp objects with the procedural hand, place a camera, render RGB, "
                    "masks (visible and amodal), depth, normals and keypoints. Writes "
                    "OUT/<id>/ per scene and OUT/manifest.json. Objects: "
                    "pybullet:START-END (development: 0-699; 700-999 and the named meshes "
                    "are the evaluation set), pybullet:NAME,NAME, procedural:KIND,KIND; join "
                    "several with '+'.")
    s.add_argument("--n", type=int, required=True, help="number of scenes")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    s.add_argument("--objects", default="pybullet:0-699",
                   help="object spec (default pybullet:0-699)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--overwrite", action="store_true", help="regenerate existing scenes")
    s.set_defaults(func=cmd_synth)
    from hoiguide.cli.reconstruct import add_reconstruct_parser

    s = add_reconstruct_parser(sub)
    s.epilog, s.formatter_class = SUB_EXAMPLES["reconstruct"], raw
    s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging")
    s.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings and errors only, no progress bars")

    s = add("batch", help="reconstruct every image / scene folder of a folder or list file",
            description="Every image file and scene folder of INPUT (a folder, or a list "
                        "file with one path per line) is one item: scenes run the demo path "
                        "(simulated observers, metrics against the ground truth), photos "
                        "the photo path (--models). Each item is written to OUT/<item>/ "
                        "atomically (a killed run leaves no half-written folder); "
                        "OUT/<item>/result.json has status ok or failed with the reason; a "
                        "failing item never stops the rest. Re-running skips finished "
                        "items of the same configuration. OUT/batch_summary.json counts "
                        "ok / failed / skipped. --shard i/n splits the sorted items over n "
                        "processes (SLURM job arrays); --ray runs them on a Ray cluster, "
                        "one worker per GPU (or CPU), models loaded once per worker. Put "
                        "--ray after INPUT (or write --ray=ADDRESS).")
    s.add_argument("input", help="a folder of images / scene folders, or a list file")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--shard", default=None, metavar="i/n",
                   help="only items i, i+n, i+2n, ... (0 <= i < n) of the sorted list; "
                        "'slurm' reads SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the items on Ray (needs 'hoiguide[batch]'); no ADDRESS: "
                        "$RAY_ADDRESS, a cluster on this machine or a new local one")
    s.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="Ray worker actors (default: one per GPU, else one per CPU)")
    s.add_argument("--preset", default="fast_posthoc_fit",
                   help="preset name or YAML path (default: fast_posthoc_fit)")
    s.add_argument("--seed", type=int, default=0, help="seed of every item (default 0)")
    s.add_argument("--backbone", default=None,
                   help="tiny, hunyuan:PATH_OR_REPO or python:module:callable (default: "
                        "tiny for scenes, the models' generator for photos)")
    s.add_argument("--models", default=None, metavar="FILE.yaml",
                   help="photo models: a models YAML, 'offline' or 'default' (needed for "
                        "image items only)")
    s.add_argument("--object-name", default="object",
                   help="what the hands hold (photos; default: object)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="guidance option (GuidanceOptions field); repeatable")
    s.add_argument("--pipeline-option", action="append", default=[], metavar="KEY=VALUE",
                   help="image-chain option (PipelineOptions field); repeatable")
    s.add_argument("--noise", default="default",
                   help="observer noise of scenes: default, none or a number")
    s.add_argument("--num-samples", type=int, default=10000,
                   help="surface samples per mesh for the scene metrics (default 10000)")
    s.add_argument("--device", default=None,
                   help="torch device (default: cuda where a worker has one)")
    s.add_argument("--views", type=int, default=8, help="turntable views (default 8)")
    s.add_argument("--max-attempts", type=int, default=2,
                   help="tries per item when its Ray worker dies (default 2)")
    s.add_argument("--overwrite", action="store_true", help="run finished items again")
    s.set_defaults(func=cmd_batch)

    s = add("app", help="the web demo (Gradio): sample or photo -> 3D result in the browser",
            description="Serve a web page: pick a synthetic sample (or upload a photo, with "
                        "--models), choose a preset, run with visible progress, turn the 3D "
                        "result around, see the overlay, turntable and loss curves, read "
                        "the metrics and download the files. CPU, bundled tiny generator. "
                        "Needs 'hoiguide[app]' (Gradio).")
    s.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--share", choices=("no", "yes"), default="no",
                   help="a public gradio.live link (needs internet; default no)")
    s.add_argument("--backbone", default="tiny",
                   help="tiny (default), hunyuan:PATH_OR_REPO or python:module:callable")
    s.add_argument("--models", default=None, metavar="FILE.yaml",
                   help="models for uploaded photos (a models YAML, 'offline', 'default')")
    s.add_argument("--preset", default="fast_posthoc_fit",
                   help="preset selected at start (default fast_posthoc_fit)")
    s.add_argument("--out", default=None,
                   help="folder for the run folders (default: a temporary folder)")
    s.set_defaults(func=cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (ValueError, FileNotFoundError, ImportError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
