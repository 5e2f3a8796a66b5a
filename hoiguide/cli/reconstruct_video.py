"""``hoiguide reconstruct-video CLIP --out DIR [--models FILE.yaml]``: a clip -> one object,
its pose in every frame and the hand in every frame.

Runs :func:`hoiguide.apps.video.reconstruct_video`: reads the clip (a video file, needs
``pip install 'hoiguide[video]'``, or a folder of frames; ``--every N``; at most
``--max-frames M`` frames, default 64, evenly spread), runs the foundation-model chain on
every frame with the models loaded once and the hand box tracked between frames, then the
clip guidance, and writes ``DIR/object.glb|ply``, ``object_generator.ply``,
``hands/hand_<t>.ply``, ``poses.json``, ``overlay.gif``, the reference frame's pictures,
``report.html`` and ``result.json``.

Exit codes: 0 the reconstruction succeeded; 1 it failed (``DIR/result.json`` holds only the
``status``, ``stage`` and ``reason``, e.g. no frame shows a hand; no other file is left); 2
it could not start (bad arguments, an unreadable or zero-length video, frames of different
sizes, an invalid models file, a model that cannot be loaded, an output folder holding other
files): nothing is written.

``register(subparsers, parents)`` adds the subcommand to the ``hoiguide`` parser.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from hoiguide.adapters.models import ModelLoadError, ModelsConfigError
from hoiguide.apps.video import (
    DEFAULT_VIDEO_SCHEDULE,
    OUTPUT_FILES,
    RESULT_KIND,
    reconstruct_video,
)
from hoiguide.cli.common import (
    Formatter,
    UsageError,
    first_line,
    guidance_options,
    intrinsics_arg,
    models_arg,
    output_folder,
    parse_option,
    seed_arg,
)
from hoiguide.cli.reconstruct import MODELS_HELP
from hoiguide.phases import ScheduleError, load_schedule
from hoiguide.videoio import DEFAULT_MAX_FRAMES

__all__ = ["register", "run"]

log = logging.getLogger("hoiguide")

DESCRIPTION = (
    "Reconstruct the object a hand holds in a clip (a video file or a folder of frames), its "
    "pose in every frame and the hand in every frame: the foundation-model chain on every "
    "frame (models loaded once, the hand box tracked between frames so a missed detection "
    "does not break the clip), then one guided generation of the object from all frames. "
    "Writes OUT/object.glb|ply (reference frame), object_generator.ply, hands/hand_<t>.ply, "
    "poses.json, overlay.gif, input.png, overlay.png, turntable.png|gif, losses.png, "
    "report.html and result.json (the video's camera frame, metres). Exit code 0: ok; 1: the "
    "reconstruction failed (OUT/result.json says where and why, no other file is written); "
    "2: bad arguments, an unreadable or zero-length video, frames of different sizes, an "
    "invalid models file or a model that cannot be loaded (nothing written).")

EXAMPLES = """examples:
  hoiguide reconstruct-video clip.mp4 --out out/clip --models models.yaml
  hoiguide reconstruct-video frames/ --out out/clip --models offline --every 2 --max-frames 16
  hoiguide reconstruct-video clip.mov --out out/clip --schedule video --object-name mug

a video file needs PyAV: pip install 'hoiguide[video]'. At most --max-frames frames are used
(default 64): longer clips are subsampled evenly (a warning says so).
"""


def register(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
             ) -> argparse.ArgumentParser:
    """Add ``reconstruct-video`` to an ``argparse`` subparsers object (``parents``: shared
    flags); returns its parser (its ``func`` default is :func:`run`)."""
    s = subparsers.add_parser("reconstruct-video",
                              help="reconstruct the held object and the hand from a clip",
                              description=DESCRIPTION, parents=list(parents), epilog=EXAMPLES,
                              formatter_class=Formatter)
    s.add_argument("clip", help="a video file (MP4, MOV, AVI, MKV, WebM, ...) or a folder of "
                                "frames (PNG, JPEG, ...; ordered naturally by name)")
    s.add_argument("--out", required=True, help="output folder (new, empty, or an earlier "
                                                "'hoiguide reconstruct-video' output, replaced)")
    s.add_argument("--models", default="default", metavar="FILE.yaml", help=MODELS_HELP)
    s.add_argument("--schedule", "--preset", dest="schedule", default=DEFAULT_VIDEO_SCHEDULE,
                   help=f"phase schedule: preset name (video_fast, video, ...) or YAML path "
                        f"(default: {DEFAULT_VIDEO_SCHEDULE})")
    s.add_argument("--backbone", default=None,
                   help="replace the models file's generator: tiny, hunyuan:PATH_OR_REPO or "
                        "python:module:callable")
    s.add_argument("--seed", type=seed_arg, default=0, help="noise seed (default 0)")
    s.add_argument("--every", type=int, default=1, metavar="N",
                   help="use every N-th frame of the clip (default 1)")
    s.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, metavar="M",
                   help=f"use at most M frames, evenly spread over the clip (default "
                        f"{DEFAULT_MAX_FRAMES})")
    s.add_argument("--fps", type=float, default=None,
                   help="frames per second of a frame folder (default 30; a video's own rate "
                        "is used for a video)")
    s.add_argument("--object-name", default="object",
                   help="what the hand holds, in words (detection and inpainting prompt; "
                        "default: object)")
    s.add_argument("--left-hand", action="store_true",
                   help="the hand is a left hand in the whole clip (mirrored for the models, "
                        "results mirrored back)")
    s.add_argument("--intrinsics", default=None, metavar="FX,FY,CX,CY",
                   help="the video's intrinsics in pixels; default: the monocular-geometry "
                        "model's estimate on the first usable frame, used for every frame")
    s.add_argument("--device", default=None, help="torch device of every model")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="guidance option (GuidanceOptions field); repeatable")
    s.add_argument("--pipeline-option", action="append", default=[], metavar="KEY=VALUE",
                   help="image-chain option (PipelineOptions field), e.g. crop_size=384; "
                        "repeatable")
    s.add_argument("--no-pictures", action="store_true",
                   help="skip the pictures (overlay.gif, PNGs)")
    s.set_defaults(func=run)
    return s


def _positive(name: str, v: Optional[float]) -> None:
    if v is not None and not v > 0:
        raise UsageError(f"--{name}: expected a positive number, got {v:g}")


def run(args: argparse.Namespace) -> int:
    """Run ``hoiguide reconstruct-video`` (see the module docstring for the exit codes)."""

    quiet = bool(getattr(args, "quiet", False))
    try:
        for name in ("every", "max_frames"):
            v = getattr(args, name)
            if v < 1:
                raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, "
                                 f"got {v}")
        _positive("fps", args.fps)
        pipeline_options = dict(parse_option(o) for o in args.pipeline_option)
        intrinsics = intrinsics_arg(args.intrinsics)
        clip = Path(args.clip).expanduser()
        if not clip.exists():
            raise UsageError(f"no such video file or frame folder: {clip}")
        output_folder(args.out, RESULT_KIND, OUTPUT_FILES)
        load_schedule(args.schedule)
        options = guidance_options(args.option)
        models, merged = models_arg(args.models, pipeline_options, args.device,
                                    args.backbone)
    except (UsageError, ModelsConfigError, ScheduleError, FileNotFoundError) as exc:
        log.error("%s", first_line(exc))
        return 2
    except (ModelLoadError, ImportError) as exc:
        log.error("%s", str(exc).strip())
        return 2
    try:
        result = reconstruct_video(clip, args.out, models=models, schedule=args.schedule,
                                   seed=args.seed, every=args.every,
                                   max_frames=args.max_frames, fps=args.fps,
                                   object_name=args.object_name, camera=intrinsics,
                                   left_hand=bool(args.left_hand), options=merged or None,
                                   guidance_options=options, progress=not quiet,
                                   pictures=not args.no_pictures)
    except ModelLoadError as exc:
        log.error("%s", str(exc).strip())
        log.error("(name the models with --models FILE.yaml: see hoiguide.adapters.models "
                  "for the format, or --models offline)")
        return 2
    except ImportError as exc:                  # a video file without PyAV
        log.error("%s", first_line(exc))
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as exc:
        log.error("%s", first_line(exc))        # VideoError / ImageError are ValueErrors
        return 2
    out = Path(args.out)
    status = result.get("status")
    if status == "ok":
        print(f"hoiguide reconstruct-video: status ok in {result.get('seconds', 0):.1f} s "
              f"({result.get('observed_frames')} of {result.get('num_frames')} frames "
              f"observed; reference frame {result.get('reference')})")
        print(f"wrote {out}/: {', '.join(result.get('files') or [])}")
        for w in result.get("warnings") or []:
            log.warning("%s", w)
        return 0
    print(f"hoiguide reconstruct-video: status {status} (stage {result.get('stage')}: "
          f"{result.get('reason')})")
    print(f"wrote {out}/result.json")
    return 1
