"""``hoiguide eval``: score a method on DexYCB, HO-3D, OakInk or ARCTIC
(:func:`hoiguide.apps.evaluate.run_evaluation`).

::

    hoiguide eval --dataset dexycb --root DIR --mano DIR --out DIR [--split FILE.csv]
                  [--limit N] [--seed S] [--preset P] [--models FILE.yaml]
                  [--backbone SPEC] [--predictions DIR]

Writes ``OUT/run.json``, ``OUT/samples/<frame id>.json`` (and the photo chain's meshes in
``OUT/samples/<frame id>/``), ``OUT/summary.json`` and ``OUT/summary.md``, and prints the
table. Exit codes: 0 the run finished (frames that failed are recorded and count against
RR, as in ``hoiguide bench``); 2 bad usage or missing input (a dataset folder without the
dataset's files, an unreadable split file, an unknown preset, an invalid models file, a
model that cannot be loaded): nothing is written.

``register(subparsers)`` adds the subcommand to the ``hoiguide`` parser.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any, Sequence

from hoiguide.adapters.models import ModelLoadError, ModelsConfigError
from hoiguide.apps.evaluate import EvalError, format_tables, run_evaluation
from hoiguide.cli.common import UsageError, first_line, parse_option, seed_arg
from hoiguide.datasets import DatasetError
from hoiguide.phases import ScheduleError

__all__ = ["register", "run"]

log = logging.getLogger("hoiguide")

DESCRIPTION = (
    "Evaluate on a real benchmark: every selected frame of DexYCB, HO-3D, OakInk (image "
    "subset) or ARCTIC is reconstructed by the photo chain (or its prediction read from "
    "--predictions DIR/<frame id>/object.ply + hand.ply) and scored with the paper's "
    "hand-aligned protocol (CD cm^2, F5, F10, IV cm^3, RR; --video-protocol adds ForeHOI's "
    "F@5%/F@10% of the object's bounding-box diagonal after object alignment). Writes "
    "OUT/run.json, OUT/samples/<id>.json, OUT/summary.json and OUT/summary.md; re-running "
    "skips finished frames. Exit code 0 when the run finished (failed frames are recorded "
    "and count against RR); 2: bad usage or missing input (nothing written). "
    "docs/datasets.md lists the files each dataset loader reads.")

EPILOG = """examples:
  hoiguide eval --dataset dexycb --root /data/DexYCB --mano /models/mano \\
      --split test_splits/dexycb_test.csv --out out/eval_dexycb --preset followmyhold
  hoiguide eval --dataset oakink --root /data/OakInk --mano /models/mano --limit 1000 \\
      --seed 0 --predictions runs/easyhoi_oakink --out out/eval_easyhoi
  hoiguide eval --dataset ho3d --root /data/HO3D_v3 --mano /models/mano \\
      --dataset-option ycb_dir=/data/YCB_Video_Models/models --limit 50 \\
      --video-protocol --out out/eval_ho3d
  hoiguide eval --dataset arctic --root /data/arctic --mano /models/mano \\
      --split test_splits/arctic_test.csv --dataset-option hand=right --out out/eval_arctic
"""


def register(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
             ) -> argparse.ArgumentParser:
    """Add ``eval`` to an ``argparse`` subparsers object (its ``func`` default is
    :func:`run`); returns the sub-parser."""
    s = subparsers.add_parser("eval", help="evaluate on DexYCB, HO-3D, OakInk or ARCTIC",
                              description=DESCRIPTION, epilog=EPILOG, parents=list(parents),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--dataset", required=True, choices=("dexycb", "ho3d", "oakink", "arctic"),
                   help="the benchmark")
    s.add_argument("--root", required=True, help="the dataset folder (its release layout)")
    s.add_argument("--mano", required=True, metavar="DIR",
                   help="folder with the official MANO_RIGHT.pkl and MANO_LEFT.pkl")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--split", default=None, metavar="FILE.csv",
                   help="frames to evaluate: a CSV with img_id,img_path[,...] columns (the "
                        "reference's test_splits/*.csv); default: every annotated frame")
    s.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N frames (without --split: N random frames, see --seed)")
    s.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the random selection, the flow noise and the metric "
                        "sampling (default 0)")
    s.add_argument("--order", choices=("auto", "first", "random"), default="auto",
                   help="frame order: the split file's / sorted (first), seeded random, or "
                        "auto (random without --split, file order with it; default)")
    s.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, repeatable: ho3d subset=train, ycb_dir=DIR; arctic "
                        "images=cropped|full|auto, hand=auto|right|left, views=[1,2]")
    s.add_argument("--predictions", default=None, metavar="DIR",
                   help="score existing meshes: DIR/<frame id>/object.ply and hand.ply (or "
                        ".obj/.glb; DIR/<img_id>/ also works) in the image's camera frame, "
                        "metres; no model is run")
    s.add_argument("--preset", default=None,
                   help="phase schedule of the photo chain: preset name (followmyhold, fast, "
                        "...) or YAML path (default: the library's default preset)")
    s.add_argument("--models", default="default", metavar="FILE.yaml",
                   help="models of the photo chain: a models YAML, 'default' or 'offline' "
                        "(as for 'hoiguide reconstruct'; default: default)")
    s.add_argument("--backbone", default=None,
                   help="replace the models' generator: tiny, hunyuan:PATH_OR_REPO or "
                        "python:module:callable")
    s.add_argument("--device", default=None, help="torch device of every model")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="guidance option (GuidanceOptions field); repeatable")
    s.add_argument("--pipeline-option", action="append", default=[], metavar="KEY=VALUE",
                   help="image-chain option (PipelineOptions field); repeatable")
    s.add_argument("--known-intrinsics", action="store_true",
                   help="give the chain the dataset's camera intrinsics (default: estimated "
                        "from the image, as for a photo)")
    s.add_argument("--num-samples", type=int, default=10000,
                   help="surface samples per mesh for CD / F-score (default 10000)")
    s.add_argument("--video-protocol", action="store_true",
                   help="also ForeHOI's object-aligned F@5%%/F@10%% of the bounding-box "
                        "diagonal and CD (cm)")
    s.add_argument("--no-save-meshes", action="store_true",
                   help="do not write the photo chain's meshes to OUT/samples/<id>/")
    s.add_argument("--overwrite", action="store_true", help="recompute finished frames")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Run ``hoiguide eval`` (exit codes in the module docstring)."""

    try:
        if args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit: expected a positive integer, got {args.limit}")
        if args.num_samples < 1:
            raise UsageError(f"--num-samples: expected a positive integer, got "
                             f"{args.num_samples}")
        chain_flags = [f for f, given in (
            ("--preset", args.preset is not None), ("--backbone", args.backbone is not None),
            ("--models", args.models != "default"), ("--option", bool(args.option)),
            ("--pipeline-option", bool(args.pipeline_option)),
            ("--known-intrinsics", args.known_intrinsics)) if given]
        if args.predictions is not None and chain_flags:
            raise UsageError(f"--predictions scores existing meshes; {', '.join(chain_flags)} "
                             f"configure the photo chain: give one or the other")
        dataset_options = {}
        for o in args.dataset_option:
            try:
                k, v = parse_option(o)
            except UsageError:
                raise UsageError(f"--dataset-option: expected KEY=VALUE, got {o!r}") from None
            dataset_options[k] = v
        options = dict(parse_option(o) for o in args.option)
        pipeline_options = dict(parse_option(o) for o in args.pipeline_option)
        if not Path(args.mano).expanduser().is_dir():
            raise UsageError(f"--mano: no such folder {args.mano} (the folder with "
                             f"MANO_RIGHT.pkl and MANO_LEFT.pkl)")
        argv = getattr(args, "argv", None)
        command = "hoiguide " + shlex.join(argv) if argv is not None else None
        summary = run_evaluation(
            args.dataset, args.root, args.out, mano_dir=args.mano, split=args.split,
            limit=args.limit, seed=args.seed, order=args.order,
            dataset_options=dataset_options, predictions=args.predictions,
            models=None if args.predictions is not None else args.models,
            backbone=args.backbone, device=args.device, schedule=args.preset,
            guidance_options=options, pipeline_options=pipeline_options,
            known_intrinsics=args.known_intrinsics, num_samples=args.num_samples,
            video_protocol=args.video_protocol, save_meshes=not args.no_save_meshes,
            overwrite=args.overwrite, progress=not getattr(args, "quiet", False),
            command=command)
    except (UsageError, DatasetError, EvalError, ScheduleError, ModelsConfigError) as exc:
        log.error("%s", first_line(exc))
        return 2
    except (ModelLoadError, ImportError) as exc:
        log.error("%s", str(exc).strip())
        return 2
    except (ValueError, TypeError, FileNotFoundError) as exc:   # options, backbone files
        log.error("%s", first_line(exc))
        return 2
    print(format_tables(summary, stat="mean"), end="")
    failed = summary["n"] - summary["n_ok"]
    log.info("wrote %s and %s (%d failed frame(s), counted in RR)",
             Path(args.out) / "summary.json", Path(args.out) / "summary.md", failed)
    return 0
