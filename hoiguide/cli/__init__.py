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
  (exit code 0); re-running skips finished scenes. On a clips set (``synth --frames``), clip
  presets (``video_fast``, ``video``) run on every frame and single-image presets on the
  reference frame (:func:`hoiguide.apps.bench_clips.run_clip_benchmark`).

* ``hoiguide reconstruct IMAGE --out DIR --models FILE.yaml``: one photo -> meshes
  (:func:`hoiguide.apps.photo.reconstruct_image`).
* ``hoiguide reconstruct-video CLIP --out DIR [--models FILE.yaml] [--every N]
  [--max-frames M]``: a video file (PyAV, ``pip install 'hoiguide[video]'``) or a folder of
  frames -> the models on every frame (hand box tracked) -> one object for the whole clip,
  its pose in every frame and the hand in every frame: meshes, ``hands/``, ``poses.json``,
  ``overlay.gif``, the reference frame's pictures, ``report.html``, ``result.json``
  (:func:`hoiguide.apps.video.reconstruct_video`).
* ``hoiguide synth --n N --out DIR``: synthetic scenes with ground truth; ``--frames T``:
  synthetic clips (one grasp over T frames, per-frame ground truth).
* ``hoiguide batch INPUT --out DIR [--shard i/n] [--ray [ADDRESS]]``: every image / scene
  folder / video / folder of frames of INPUT (a folder or a list file) into ``DIR/<item>/``
  (atomically; re-running resumes; failures recorded), ``DIR/batch_summary.json``
  (:func:`hoiguide.apps.batch.run_batch`); clips with ``--clip-preset``, ``--every``,
  ``--max-frames``.
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
import logging
import sys

from hoiguide.cli import (
    app,
    batch,
    bench,
    demo,
    reconstruct,
    reconstruct_video,
    schedule,
    smoke,
    synth,
)
from hoiguide.cli import eval as eval_cmd
from hoiguide.cli.common import Formatter, UsageError, load_backbone, verbosity_flags

__all__ = ["main", "build_parser", "UsageError", "load_backbone"]

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide demo --out out/demo             # synthetic scene -> guided reconstruction -> pictures
  hoiguide demo --preset demos/custom_schedule.yaml --out out/custom
  hoiguide reconstruct photo.jpg --out out/photo --models models.yaml   # needs the model weights
  hoiguide reconstruct-video clip.mp4 --out out/clip --models models.yaml --max-frames 16
  hoiguide smoke --out out/smoke           # geometric core end to end, writes PNGs + result.json
  hoiguide schedule followmyhold --steps 20
  hoiguide synth --n 30 --seed 0 --objects pybullet:0-699 --out scenes/
  hoiguide synth clips/ --n 12 --frames 8  # synthetic clips: one grasp turning over 8 frames
  hoiguide bench --scenes scenes/ --preset unguided --preset fast --out out/bench
  hoiguide batch scenes/ --out out/batch   # one folder per item, resumable; --shard, --ray
  hoiguide bench clips/ --preset video_fast --preset fast --out out/bench_clips
  hoiguide app                             # web demo on http://127.0.0.1:7860

  -q/--quiet: warnings only, no progress bars; -v/--verbose: debug logging.
exit codes: 0 ok, 1 the run (or a batch item) failed, 2 bad usage, 130 interrupted.
"""


COMMANDS = (demo, reconstruct, reconstruct_video, smoke, schedule, synth, bench, batch, eval_cmd,
            app)
"""One module per command, each with ``register(subparsers, parents)`` and ``run(args)``."""


def build_parser() -> argparse.ArgumentParser:
    """The ``hoiguide`` parser with every command of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(
        prog="hoiguide", description="Hand-held object reconstruction by guided flow sampling.",
        epilog=EXAMPLES, formatter_class=Formatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="warnings and errors only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [verbosity_flags()]
    for command in COMMANDS:
        command.register(sub, parents)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``hoiguide`` with ``argv`` (default: the process's arguments); returns the exit
    code (0 ok, 1 the run failed, 2 bad usage / could not start, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:        # `hoiguide schedule fast | head`: the reader went away
        sys.stderr.close()
        return 0
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    except (ValueError, FileNotFoundError, ImportError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
