"""``hoiguide synth``: synthetic hand-object scenes with ground truth (``hoiguide.synth``)."""

from __future__ import annotations

import argparse
import logging
import shlex
from typing import Any

from hoiguide.cli.common import Formatter, UsageError, seed_arg
from hoiguide.synth.clip import MAX_FRAMES, generate_clips
from hoiguide.synth.generate import generate_scenes
from hoiguide.synth.objects import parse_object_spec

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide synth --n 30 --seed 0 --out scenes/
  hoiguide synth --n 4 --objects procedural:mug,bottle --size 128 --out scenes_small/
  hoiguide synth clips/ --n 12 --frames 8 --objects pybullet:600-699+procedural:all@val
  hoiguide synth clips_fingers/ --n 4 --frames 8 --rotation 120 --finger-motion
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
                    "several with '+'. With --frames T (T >= 2) each item is a CLIP: the "
                    "same grasp over T frames while the hand turns the object in front of "
                    "a static camera (OUT/<id>/frame_000/... and clip.json per clip, "
                    "OUT/manifest.json of format hoiguide-synth-clips).")
    s.add_argument("out_dir", nargs="?", default=None, metavar="OUT",
                   help="output folder (or --out)")
    s.add_argument("--n", type=int, required=True, help="number of scenes (or clips)")
    s.add_argument("--seed", type=seed_arg, default=0, help="seed (default 0)")
    s.add_argument("--objects", default="pybullet:0-699",
                   help="object spec (default pybullet:0-699)")
    s.add_argument("--out", default=None, help="output folder")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--overwrite", action="store_true", help="regenerate existing scenes")
    s.add_argument("--frames", type=int, default=None, metavar="T",
                   help=f"frames per clip (2-{MAX_FRAMES}: write clips; 1 or absent: single "
                        "scenes)")
    s.add_argument("--rotation", type=float, default=None, metavar="DEG",
                   help="clips: rotation between the first and the last frame in degrees, "
                        "0-360 (default 90)")
    s.add_argument("--finger-motion", action="store_true",
                   help="clips: the fingers not touching the object open and close smoothly")
    s.add_argument("--fps", type=float, default=None,
                   help="clips: frames per second of the frame times (default 30)")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Generate synthetic hand-object scenes with ground truth."""

    try:
        out = _out_dir(args)
        parse_object_spec(args.objects)
        if args.n < 1:
            raise UsageError(f"--n: expected a positive integer, got {args.n}")
        if args.size < 32:
            raise UsageError(f"--size: expected at least 32 pixels, got {args.size}")
        clips = _check_clip_options(args)
    except (UsageError, ValueError) as exc:
        log.error("%s", str(exc).strip().splitlines()[0])
        return 2
    command = "hoiguide " + shlex.join(args.argv)
    if clips:
        man = generate_clips(args.n, out, objects=args.objects, seed=args.seed,
                             num_frames=args.frames, image_size=args.size,
                             rotation_deg=90.0 if args.rotation is None else args.rotation,
                             finger_motion=args.finger_motion,
                             fps=30.0 if args.fps is None else args.fps,
                             overwrite=args.overwrite, progress=not args.quiet,
                             command=command)
        log.info("wrote %d clips of %d frames to %s (%d failed; see manifest.json)",
                 man["num_clips"], args.frames, out, len(man["failed"]))
        return 0 if man["num_clips"] > 0 else 1
    args.out = out
    man = generate_scenes(args.n, args.out, objects=args.objects, seed=args.seed,
                          image_size=args.size, overwrite=args.overwrite,
                          progress=not args.quiet, command=command)
    log.info("wrote %d scenes to %s (%d failed; see manifest.json)", man["num_scenes"],
             args.out, len(man["failed"]))
    return 0 if man["num_scenes"] > 0 else 1


def _out_dir(args: argparse.Namespace) -> str:
    """The output folder: the positional OUT or --out (one of them, not two different)."""
    if args.out_dir is not None and args.out is not None and args.out_dir != args.out:
        raise UsageError(f"OUT: got two output folders ({args.out_dir!r} and --out "
                         f"{args.out!r}); give one")
    out = args.out_dir if args.out_dir is not None else args.out
    if out is None:
        raise UsageError("OUT: expected an output folder (hoiguide synth OUT --n N ...)")
    return out


def _check_clip_options(args: argparse.Namespace) -> bool:
    """Whether clips are asked for; the clip options checked (UsageError, one line)."""
    import math

    if args.frames is not None and not 1 <= args.frames <= MAX_FRAMES:
        raise UsageError(f"--frames: expected an integer from 1 to {MAX_FRAMES} (frames per "
                         f"clip), got {args.frames}")
    clips = args.frames is not None and args.frames >= 2
    extra = [name for name, given in (("--rotation", args.rotation is not None),
                                      ("--finger-motion", args.finger_motion),
                                      ("--fps", args.fps is not None)) if given]
    if extra and not clips:
        raise UsageError(f"{extra[0]}: only applies to clips; add --frames T with T >= 2")
    if args.rotation is not None and not (math.isfinite(args.rotation)
                                          and 0 <= args.rotation <= 360):
        raise UsageError(f"--rotation: expected degrees from 0 to 360, got {args.rotation}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise UsageError(f"--fps: expected a positive number, got {args.fps}")
    return clips
