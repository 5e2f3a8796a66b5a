"""``hoiguide reconstruct IMAGE --out DIR [--models FILE.yaml]``: one photo -> meshes.

Runs :func:`hoiguide.apps.photo.reconstruct_image`: the foundation-model chain named
by the models file (:mod:`hoiguide.adapters.models`; default: the reference's models), the
guided reconstruction, and writes ``DIR/object.glb|ply|obj``, ``hand.glb|ply|obj``,
``scene.glb``, ``history.json``, ``input.png``, ``observations.png``, ``overlay.png``,
``turntable.png|gif``, ``losses.png``, ``report.html`` and ``result.json`` (the same files as ``hoiguide demo`` minus the
ground-truth metrics). Meshes are in the photo's OpenCV camera frame, metres.

Exit codes: 0 the reconstruction succeeded; 1 it failed (``DIR/result.json`` holds only the
``status``, ``stage`` and ``reason``; no other file is left); 2 it could not start (bad
arguments, an unreadable or too large image, an invalid models file, a model that cannot be
loaded, an output folder holding other files): nothing is written.

``register(subparsers, parents)`` adds the subcommand to the ``hoiguide`` parser.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from hoiguide.adapters.models import ModelLoadError, ModelsConfigError
from hoiguide.adapters.pipeline import ImageError
from hoiguide.apps.photo import OUTPUT_FILES, RESULT_KIND, reconstruct_image
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
from hoiguide.phases import DEFAULT_SCHEDULE, ScheduleError, load_schedule

__all__ = ["register", "run"]

log = logging.getLogger("hoiguide")

DESCRIPTION = (
    "Reconstruct the hand and the object it holds from one RGB photo: detection and "
    "segmentation, crop, inpainting, monocular geometry, hand recovery, the generator's coarse "
    "hand-object mesh, alignment (three ICPs), then guided generation. Writes "
    "OUT/object.glb|ply|obj, hand.glb|ply|obj, scene.glb, history.json, input.png, "
    "observations.png, overlay.png, turntable.png|gif, losses.png, report.html and result.json (meshes in the photo's camera frame, metres). "
    "Exit code 0: ok; 1: the reconstruction failed (OUT/result.json says where and why, no "
    "other file is written); 2: bad arguments, unreadable image, invalid models file or a "
    "model that cannot be loaded (nothing written).")

MODELS_HELP = (
    "models YAML naming the model of each role (segmentation, inpainting, geometry, hand, "
    "generator: hub id or local path, and options); 'default' (the reference's models: "
    "GroundingDINO + SAM, FLUX.1 Kontext, MoGe-2, HaMeR, Hunyuan3D-2) or 'offline' (OpenCV "
    "inpainting, MediaPipe hands, the bundled tiny generator; segmentation and MoGe weights "
    "from the local cache). Default: default")


EXAMPLES = """examples:
  hoiguide reconstruct photo.jpg --out out/photo --models models.yaml
  hoiguide reconstruct photo.jpg --out out/photo --models offline --object-name mug
  hoiguide reconstruct left.jpg --left-hand --intrinsics 1500,1500,960,540 --out out/left
"""


def register(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
             ) -> argparse.ArgumentParser:
    """Add ``reconstruct`` to an ``argparse`` subparsers object (``parents``: shared flags);
    returns its parser (its ``func`` default is :func:`run`)."""
    s = subparsers.add_parser("reconstruct", help="reconstruct hand and object from one photo",
                              description=DESCRIPTION, parents=list(parents), epilog=EXAMPLES,
                              formatter_class=Formatter)
    s.add_argument("image", help="the photo (PNG, JPEG, ...; at most 40 megapixels)")
    s.add_argument("--out", required=True, help="output folder (new, empty, or an earlier "
                                                "'hoiguide reconstruct' output, replaced)")
    s.add_argument("--models", default="default", metavar="FILE.yaml", help=MODELS_HELP)
    s.add_argument("--preset", default=DEFAULT_SCHEDULE,
                   help=f"phase schedule: preset name (fast, followmyhold, ...) or YAML path "
                        f"(default: {DEFAULT_SCHEDULE})")
    s.add_argument("--seed", type=seed_arg, default=0, help="noise seed (default 0)")
    s.add_argument("--object-name", default="object",
                   help="what the hand holds, in words (detection and inpainting prompt; "
                        "default: object)")
    s.add_argument("--left-hand", action="store_true",
                   help="the hand is a left hand (mirrored for the models, results mirrored "
                        "back)")
    s.add_argument("--intrinsics", default=None, metavar="FX,FY,CX,CY",
                   help="the photo's intrinsics in pixels (of the upright photo); default: "
                        "the monocular-geometry model's estimate")
    s.add_argument("--backbone", default=None,
                   help="replace the models file's generator: tiny, hunyuan:PATH_OR_REPO or "
                        "python:module:callable")
    s.add_argument("--device", default=None, help="torch device of every model")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="guidance option (GuidanceOptions field), e.g. grid_resolution=33; "
                        "repeatable")
    s.add_argument("--pipeline-option", action="append", default=[], metavar="KEY=VALUE",
                   help="image-chain option (PipelineOptions field), e.g. crop_size=384; "
                        "repeatable")
    s.add_argument("--no-pictures", action="store_true", help="skip the PNG pictures")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Run ``hoiguide reconstruct`` (see the module docstring for the exit codes)."""

    quiet = bool(getattr(args, "quiet", False))
    try:
        pipeline_options = dict(parse_option(o) for o in args.pipeline_option)
        intrinsics = intrinsics_arg(args.intrinsics)
        image = Path(args.image).expanduser()
        if image.is_dir():
            raise UsageError(f"{image}: is a folder, not an image file (give one photo; "
                             f"'hoiguide batch FOLDER' takes a folder)")
        if not image.is_file():
            raise UsageError(f"no such image file: {image}")
        output_folder(args.out, RESULT_KIND, OUTPUT_FILES)
        # the cheap checks first, then the models
        load_schedule(args.preset)
        options = guidance_options(args.option)
        models, merged = models_arg(args.models, pipeline_options, args.device,
                                    args.backbone)
    except (UsageError, ModelsConfigError, ScheduleError, FileNotFoundError) as exc:
        log.error("%s", first_line(exc))
        return 2
    except (ModelLoadError, ImportError) as exc:     # a --backbone that cannot be loaded
        log.error("%s", str(exc).strip())
        return 2
    try:
        result = reconstruct_image(image, args.out, models=models, schedule=args.preset,
                                   seed=args.seed, object_name=args.object_name,
                                   camera=intrinsics, left_hand=bool(args.left_hand),
                                   options=merged or None, guidance_options=options,
                                   progress=not quiet, pictures=not args.no_pictures)
    except ModelLoadError as exc:
        log.error("%s", str(exc).strip())        # the adapter's whole message: what to fix
        log.error("(name the models with --models FILE.yaml: see hoiguide.adapters.models "
                  "for the format, or --models offline)")
        return 2
    except (ImageError, FileNotFoundError, FileExistsError, ValueError, TypeError) as exc:
        log.error("%s", first_line(exc))
        return 2
    out = Path(args.out)
    status = result.get("status")
    if status == "ok":
        print(f"hoiguide reconstruct: status ok in {result.get('seconds', 0):.1f} s "
              f"(object {result.get('object_mesh', {}).get('vertices')} vertices, hand "
              f"{result.get('hand_mesh', {}).get('vertices')} vertices)")
        print(f"wrote {out}/: {', '.join(result.get('files') or [])}")
        for w in result.get("warnings") or []:
            log.warning("%s", w)
        return 0
    print(f"hoiguide reconstruct: status {status} (stage {result.get('stage')}: "
          f"{result.get('reason')})")
    print(f"wrote {out}/result.json")
    return 1
