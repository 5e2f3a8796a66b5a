"""``hoiguide app``: the web demo (``hoiguide.apps.webapp``)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from hoiguide.cli.common import BACKBONE_SPEC, Formatter, UsageError

log = logging.getLogger("hoiguide")

EXAMPLES = """examples:
  hoiguide app                                   # http://127.0.0.1:7860, CPU, tiny generator
  hoiguide app --port 8080 --host 0.0.0.0        # reachable from other machines
  hoiguide app --models models.yaml              # photos too (needs the model weights)
"""


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hoiguide app`` to ``subparsers`` (``parents``: the shared -q/-v flags)."""
    s = subparsers.add_parser(
        "app", parents=parents, epilog=EXAMPLES, formatter_class=Formatter, help="the web demo (Gradio): sample or photo -> 3D result in the browser",
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
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Serve the web demo (hoiguide.apps.webapp) until interrupted."""
    try:
        from hoiguide.apps.webapp import launch

        if not 0 < args.port < 65536:
            raise UsageError(f"--port: expected 1-65535, got {args.port}")
        _check_port_free(args.host, args.port)
        if args.backbone != "tiny" and not BACKBONE_SPEC.match(args.backbone):
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


def _check_port_free(host: str, port: int) -> None:
    """A :class:`UsageError` when ``host:port`` cannot be listened on (in use, or an address
    this machine does not have), before Gradio starts."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") \
            from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno in (98, 48, 10048):   # EADDRINUSE on Linux, macOS, Windows
                raise UsageError(f"--port {port}: already in use on {host}; stop the other "
                                 f"server or pick another port (--port {port + 1})") from None
            raise UsageError(f"--host {host} --port {port}: cannot listen there "
                             f"({exc.strerror})") from None
