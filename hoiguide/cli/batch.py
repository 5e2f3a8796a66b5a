"""``hoiguide batch``: every image / scene folder / clip of a folder or list file
(``hoiguide.apps.batch``)."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any

from hoiguide.apps.batch import BatchError, parse_shard, run_batch
from hoiguide.apps.video import DEFAULT_VIDEO_SCHEDULE
from hoiguide.cli.common import (
    BACKBONE_SPEC,
    Formatter,
    UsageError,
    first_line,
    parse_noise,
    parse_option,
    seed_arg,
)
from hoiguide.phases import ScheduleError, load_schedule
from hoiguide.videoio import DEFAULT_MAX_FRAMES

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide batch scenes/ --out out/batch                  # every scene folder of scenes/
  hoiguide batch photos/ --models models.yaml --out out/photos
  hoiguide batch list.txt --out out/b --preset unguided   # one path per line
  hoiguide batch scenes/ --out out/b --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  hoiguide batch scenes/ --out out/b --ray                # local Ray, or $RAY_ADDRESS
  hoiguide batch scenes/ --out out/b --ray=ray://head:10001 --ray-workers 8
  hoiguide batch videos/ --models models.yaml --out out/v --clip-preset video --every 2

writes OUT/<item>/ (all files of one reconstruction + result.json; status ok or failed with
its reason) and OUT/batch_summary.json (counts ok / failed / skipped). Re-running skips the
finished items. Exit code 0: no item failed; 1: some failed; 2: could not start.
"""


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hoiguide batch`` to ``subparsers`` (``parents``: the shared -q/-v flags)."""
    s = subparsers.add_parser(
        "batch", parents=parents, epilog=EXAMPLES, formatter_class=Formatter,
        help="reconstruct every image / scene folder / clip of a folder or list file",
        description="Every image file, scene folder, video file and folder of frames of "
                    "INPUT (a folder, or a list file with one path per line) is one "
                    "item: scenes run the demo path (simulated observers, metrics "
                    "against the ground truth), photos the photo path (--models), clips "
                    "the reconstruct-video path (--models, --clip-preset, --every, "
                    "--max-frames). Each item is written to OUT/<item>/ "
                    "atomically (a killed run leaves no half-written folder); "
                    "OUT/<item>/result.json has status ok or failed with the reason; a "
                    "failing item never stops the rest. Re-running skips finished "
                    "items of the same configuration. OUT/batch_summary.json counts "
                    "ok / failed / skipped. --shard i/n splits the sorted items over n "
                    "processes (SLURM job arrays); --ray runs them on a Ray cluster, "
                    "one worker per GPU (or CPU), models loaded once per worker. Put "
                    "--ray after INPUT (or write --ray=ADDRESS).")
    s.add_argument("input", help="a folder of images / scene folders / videos / folders of "
                                 "frames, or a list file")
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
    s.add_argument("--clip-preset", default=DEFAULT_VIDEO_SCHEDULE,
                   help=f"preset name or YAML path of clip items (video files, folders of "
                        f"frames; default: {DEFAULT_VIDEO_SCHEDULE})")
    s.add_argument("--every", type=int, default=1, metavar="N",
                   help="clip items: use every N-th frame (default 1)")
    s.add_argument("--max-frames", type=int, default=None, metavar="M",
                   help=f"clip items: use at most M frames, evenly spread over the clip "
                        f"(default {DEFAULT_MAX_FRAMES})")
    s.add_argument("--seed", type=seed_arg, default=0, help="seed of every item (default 0)")
    s.add_argument("--backbone", default=None,
                   help="tiny, hunyuan:PATH_OR_REPO or python:module:callable (default: "
                        "tiny for scenes, the models' generator for photos and clips)")
    s.add_argument("--models", default=None, metavar="FILE.yaml",
                   help="photo models: a models YAML, 'offline' or 'default' (needed for "
                        "image and clip items only)")
    s.add_argument("--object-name", default="object",
                   help="what the hands hold (photos and clips; default: object)")
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
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Every item of a folder or list file, one output folder each (hoiguide.apps.batch)."""

    try:
        noise = parse_noise(args.noise)
        options = dict(parse_option(o) for o in args.option)
        pipeline_options = dict(parse_option(o) for o in args.pipeline_option) or None
        shard = parse_shard(args.shard)
        if args.backbone is not None and not BACKBONE_SPEC.match(args.backbone):
            raise UsageError(f"--backbone: expected tiny, hunyuan:PATH_OR_REPO or "
                             f"python:module:callable, got {args.backbone!r}")
        for name in ("num_samples", "views", "max_attempts", "every", "max_frames"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, "
                                 f"got {getattr(args, name)}")
        if args.ray_workers is not None and args.ray_workers < 1:
            raise UsageError(f"--ray-workers: expected a positive integer, got "
                             f"{args.ray_workers}")
        if args.ray_workers is not None and args.ray is None:
            raise UsageError("--ray-workers: only with --ray")
        try:
            load_schedule(args.clip_preset)
        except ScheduleError as exc:
            raise UsageError(f"--clip-preset: {first_line(exc)}") from None
        summary = run_batch(args.input, args.out, shard=shard, ray_address=args.ray,
                            ray_workers=args.ray_workers, preset=args.preset,
                            seed=args.seed, backbone=args.backbone, models=args.models,
                            options=options, noise=noise, num_samples=args.num_samples,
                            device=args.device, object_name=args.object_name,
                            pipeline_options=pipeline_options,
                            turntable_views=args.views, overwrite=args.overwrite,
                            max_attempts=args.max_attempts, progress=not args.quiet,
                            clip_preset=args.clip_preset, every=args.every,
                            max_frames=args.max_frames,
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
