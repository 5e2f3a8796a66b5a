"""``hoiguide bench``: every preset on every scene of a scene set (``hoiguide.apps.bench``), or
on every clip of a clips set (``hoiguide.apps.bench_clips``: detected by the set's manifest)."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any

from hoiguide.apps.bench import (
    BenchmarkError,
    format_table,
    resolve_presets,
    resolve_scenes,
    run_benchmark,
)
from hoiguide.apps.bench_clips import (
    format_clip_table,
    resolve_clips,
    resolve_runs,
    run_clip_benchmark,
)
from hoiguide.cli.common import (
    Formatter,
    UsageError,
    backbone_arg,
    first_line,
    guidance_options,
    parse_noise,
    seed_arg,
)
from hoiguide.phases import ScheduleError
from hoiguide.synth.clip import is_clips_set

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide bench --scenes scenes/ --preset unguided --preset fast --out out/bench
  hoiguide bench --scenes scenes/ --preset fast --limit 5 --option num_steps=8 --out out/b
  hoiguide bench clips/ --preset video_fast --preset fast --per-frame fast --out out/bc
"""


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hoiguide bench`` to ``subparsers`` (``parents``: the shared -q/-v flags)."""
    s = subparsers.add_parser(
        "bench", parents=parents, epilog=EXAMPLES, formatter_class=Formatter, help="run presets on a scene set and tabulate the paper's metrics",
        description="Run every preset on every scene (hand-aligned protocol: CD cm^2, F5, "
                    "F10, IV cm^3, RR, seconds per scene). Writes OUT/<preset>/<scene>.json, "
                    "OUT/summary.json and OUT/summary.md. Failed scenes are recorded and "
                    "count against RR; re-running skips finished scenes. A clips set "
                    "(hoiguide synth OUT --frames T) runs clip presets (e.g. video_fast) on "
                    "every frame and single-image presets on the reference frame, scored "
                    "per frame (CD, hidden CD over the clip, IV, jitter mm/frame^2).")
    s.add_argument("scenes_dir", nargs="?", default=None, metavar="SCENES",
                   help="scene-set or clips-set folder (or --scenes)")
    s.add_argument("--scenes", default=None,
                   help="scene-set or clips-set folder (hoiguide synth output)")
    s.add_argument("--preset", action="append", required=True, metavar="NAME",
                   help="preset name or YAML path; repeat for several (e.g. --preset unguided "
                        "--preset fast)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--backbone", default="tiny",
                   help="tiny (default), hunyuan:PATH_OR_REPO or python:module:callable")
    s.add_argument("--noise", default="default",
                   help="observer noise: default, none or a number (default: default)")
    s.add_argument("--seed", type=seed_arg, default=0, help="base seed (default 0)")
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
    s.add_argument("--per-frame", action="append", default=[], metavar="NAME",
                   help="clips only: also run this single-image preset on every frame "
                        "independently (the jitter baseline); repeatable")
    s.add_argument("--temporal-correlation", type=float, default=0.9, metavar="RHO",
                   help="clips only: lag-1 correlation of the observers' errors between "
                        "frames, 0-1 (default 0.9)")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Run presets on a scene set and write per-scene results and the summary tables."""

    try:
        args.scenes = _scenes_dir(args)
        clips = is_clips_set(args.scenes)
        noise = parse_noise(args.noise)
        options = guidance_options(args.option)
        if args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit: expected a positive integer, got {args.limit}")
        if not clips and (args.per_frame or args.temporal_correlation != 0.9):
            raise UsageError(f"{'--per-frame' if args.per_frame else '--temporal-correlation'}"
                             f": only applies to a clips set; {args.scenes} is a scene set")
        if not 0.0 <= args.temporal_correlation <= 1.0:
            raise UsageError(f"--temporal-correlation: expected a number from 0 to 1, got "
                             f"{args.temporal_correlation}")
        try:  # the cheap inputs first, then a (possibly large) backbone
            if clips:
                resolve_clips(args.scenes, args.limit)
                resolve_runs(args.preset, args.per_frame)
            else:
                resolve_scenes(args.scenes, args.limit)
                resolve_presets(args.preset)
        except (BenchmarkError, ScheduleError, FileNotFoundError) as exc:
            raise UsageError(first_line(exc)) from None
        backbone = backbone_arg(args.backbone, args.device)
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    command = "hoiguide " + shlex.join(args.argv)
    if clips:
        try:
            summary = run_clip_benchmark(
                args.scenes, args.out, args.preset, backbone=backbone,
                per_frame=args.per_frame, noise=noise,
                temporal_correlation=args.temporal_correlation, seed=args.seed,
                device=args.device, num_samples=args.num_samples, overwrite=args.overwrite,
                progress=not args.quiet, limit=args.limit, options=options,
                save_meshes=args.save_meshes, backbone_name=args.backbone, command=command)
        except BenchmarkError as exc:
            log.error("%s", first_line(exc))
            return 2
        print(format_clip_table(summary, stat="median"), end="")
        failed = sum(s["n"] - s["n_ok"] for s in summary["runs"].values())
        log.info("wrote %s and %s (%d failed run(s), counted in RR)",
                 Path(args.out) / "summary.json", Path(args.out) / "summary.md", failed)
        return 0
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


def _scenes_dir(args: argparse.Namespace) -> str:
    """The scene / clips set: the positional SCENES or --scenes (one of them)."""
    if args.scenes_dir is not None and args.scenes is not None and \
            args.scenes_dir != args.scenes:
        raise UsageError(f"SCENES: got two folders ({args.scenes_dir!r} and --scenes "
                         f"{args.scenes!r}); give one")
    d = args.scenes_dir if args.scenes_dir is not None else args.scenes
    if d is None:
        raise UsageError("--scenes: expected a scene-set or clips-set folder (hoiguide bench "
                         "SCENES --preset NAME --out DIR)")
    return d
