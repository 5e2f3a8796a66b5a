"""``hoiguide synth``: synthetic hand-object scenes with ground truth (``hoiguide.synth``)."""

from __future__ import annotations

import argparse
import logging
import shlex
from typing import Any

from hoiguide.cli.common import Formatter, UsageError, seed_arg
from hoiguide.synth.generate import generate_scenes
from hoiguide.synth.objects import parse_object_spec

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide synth --n 30 --seed 0 --out scenes/
  hoiguide synth --n 4 --objects procedural:mug,bottle --size 128 --out scenes_small/
"""


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hoiguide synth`` to ``subparsers`` (``parents``: the shared -q/-v flags)."""
    s = subparsers.add_parser(
        "synth", parents=parents, epilog=EXAMPLES, formatter_class=Formatter, help="make synthetic hand-object scenes with ground truth",
        description="Grasp objects with the procedural hand, place a camera, render RGB, "
                    "masks (visible and amodal), depth, normals and keypoints. Writes "
                    "OUT/<id>/ per scene and OUT/manifest.json. Objects: "
                    "pybullet:START-END (development: 0-699; 700-999 and the named meshes "
                    "are the evaluation set), pybullet:NAME,NAME, procedural:KIND,KIND; join "
                    "several with '+'.")
    s.add_argument("--n", type=int, required=True, help="number of scenes")
    s.add_argument("--seed", type=seed_arg, default=0, help="seed (default 0)")
    s.add_argument("--objects", default="pybullet:0-699",
                   help="object spec (default pybullet:0-699)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--overwrite", action="store_true", help="regenerate existing scenes")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Generate synthetic hand-object scenes with ground truth."""

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
