"""``hoiguide demo``: reconstruct a synthetic scene end to end (``hoiguide.apps.scene.run_demo``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from hoiguide.apps.scene import OUTPUT_FILES, RESULT_KIND, headline, run_demo
from hoiguide.cli.common import (
    Formatter,
    UsageError,
    backbone_arg,
    first_line,
    guidance_options,
    output_folder,
    parse_noise,
    seed_arg,
)
from hoiguide.phases import DEFAULT_SCHEDULE, ScheduleError, load_schedule

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide demo --out out/demo
  hoiguide demo --preset unguided --seed 3 --out out/quick        # seconds, no guidance
  hoiguide demo --scene scenes/00003_procedural_mug --preset fast --out out/mug
  hoiguide demo --option num_steps=8 --option grid_resolution=33 --views 12 --out out/d
"""


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hoiguide demo`` to ``subparsers`` (``parents``: the shared -q/-v flags)."""
    s = subparsers.add_parser(
        "demo", parents=parents, epilog=EXAMPLES, formatter_class=Formatter, help="reconstruct a synthetic scene end to end: meshes, pictures, metrics",
        description="Make (or load) a synthetic hand-object scene, simulate the observers, run "
                    "guided reconstruction (default: the bundled tiny generator) and score it "
                    "against the ground truth (hand-aligned CD cm^2, F5, F10, IV cm^3). Writes "
                    "OUT/object.glb|ply|obj, hand.glb|ply|obj, scene.glb, input.png, "
                    "overlay.png, turntable.png|gif, losses.png, report.html, history.json "
                    "and result.json; a generated scene goes to OUT/scene/. Exit code 1 when "
                    "the run failed.")
    s.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    s.add_argument("--preset", default=DEFAULT_SCHEDULE,
                   help=f"phase schedule: preset name (fast_posthoc_fit, fast, followmyhold, "
                        f"...) or YAML path (default: {DEFAULT_SCHEDULE}, the best on the "
                        f"bundled generator; fast: guidance in the loop)")
    s.add_argument("--seed", type=seed_arg, default=0,
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
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """One synthetic scene end to end: meshes, pictures and metrics (hoiguide.apps.scene.run_demo)."""

    try:
        noise = parse_noise(args.noise)
        options = guidance_options(args.option)
        if args.size < 32:
            raise UsageError(f"--size: expected at least 32 pixels, got {args.size}")
        if args.num_samples < 1:
            raise UsageError(f"--num-samples: expected a positive integer, got "
                             f"{args.num_samples}")
        if args.views < 1:
            raise UsageError(f"--views: expected a positive integer, got {args.views}")
        if args.scene is not None and not Path(args.scene).expanduser().is_dir():
            raise UsageError(f"--scene: no such scene folder: {args.scene}")
        output_folder(args.out, RESULT_KIND, OUTPUT_FILES + ("scene",))
        try:
            load_schedule(args.preset)
        except (ScheduleError, FileNotFoundError) as exc:
            raise UsageError(f"--preset {first_line(exc)}") from None
        # the cheap inputs first, then a (possibly large) backbone
        backbone = backbone_arg(args.backbone, args.device)
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    try:
        result = run_demo(args.out, preset=args.preset, seed=args.seed, scene=args.scene,
                          backbone=backbone, noise=noise, image_size=args.size,
                          options=options, progress=not args.quiet, device=args.device,
                          num_samples=args.num_samples, turntable_views=args.views,
                          backbone_name=args.backbone)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        log.error("%s", first_line(exc))     # raised before anything is written
        return 2
    out = Path(args.out)
    print(f"hoiguide demo: {headline(result)}")
    print(f"wrote {out}/: {', '.join(result.get('files') or [])}")
    if result.get("status") != "ok":
        log.error("demo failed while %s: %s (see %s)", result.get("phase"),
                  result.get("reason"), out / "result.json")
        return 1
    return 0
