"""What every ``hoiguide`` command shares: the usage error (exit code 2), option parsing, the
backbone spec and the help formatter."""

from __future__ import annotations

import argparse
import json
import logging
import re
from typing import Any

from hoiguide.adapters.models import Models
from hoiguide.adapters.options import PipelineOptions
from hoiguide.backbones.spec import BackboneSpecError
from hoiguide.backbones.spec import load_backbone as _load_backbone
from hoiguide.guidance.records import GuidanceOptions
from hoiguide.io import OutputFolderError, check_output_folder

__all__ = ["UsageError", "parse_noise", "parse_option", "load_backbone", "first_line",
           "Formatter", "verbosity_flags", "BACKBONE_SPEC", "seed_arg", "guidance_options",
           "output_folder", "backbone_arg"]

log = logging.getLogger("hoiguide")

BACKBONE_SPEC = re.compile(r"^(tiny|hunyuan:.+|python:[^:]+:[^:]+)$")
"""The forms ``--backbone`` accepts (checked before anything loads)."""


class UsageError(Exception):
    """Bad command-line usage: reported in one line, exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_noise(text: str) -> "str | float":
    """``--noise``: ``default``, ``none`` or a non-negative number."""
    t = text.strip().lower()
    if t in ("default", "none"):
        return t
    try:
        v = float(t)
    except ValueError:
        raise UsageError(f"--noise: expected default, none or a number, got {text!r}") from None
    if not (v >= 0 and v == v and v != float("inf")):
        raise UsageError(f"--noise: expected a non-negative number, got {text!r}")
    return v


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it is JSON (``33``, ``[1, 2]``, ``true``),
    else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--option: expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def load_backbone(spec: str, device: "str | None" = None) -> Any:
    """The backbone of a ``--backbone`` spec (:func:`hoiguide.backbones.load_backbone`); a
    spec that names nothing is a :class:`UsageError` (exit code 2)."""
    try:
        return _load_backbone(spec, device)
    except BackboneSpecError as exc:
        raise UsageError(f"--{exc}") from None


class Formatter(argparse.HelpFormatter):
    """Wraps descriptions; keeps the examples (text starting with "examples:") as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def verbosity_flags() -> argparse.ArgumentParser:
    """-q/-v accepted after the subcommand too (without overriding the top-level ones)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only, no progress bars")
    return common


def seed_arg(text: str) -> int:
    """argparse ``type`` of ``--seed``: a non-negative integer (argparse reports anything else
    as a usage error, exit code 2)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") \
            from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def guidance_options(option_args: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE ...`` as a validated :class:`hoiguide.GuidanceOptions` mapping; a
    bad key or value is a :class:`UsageError` naming the option."""

    options = dict(parse_option(o) for o in option_args)
    try:
        GuidanceOptions.coerce(options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--option: {first_line(exc)}") from None
    return options


def output_folder(path: str, kind: str, allowed: tuple[str, ...]) -> None:
    """``--out`` follows the one rule (:func:`hoiguide.io.check_output_folder`): new, empty,
    or an earlier output of this command; anything else is a :class:`UsageError`."""

    try:
        check_output_folder(path, kind, allowed)
    except OutputFolderError as exc:
        raise UsageError(f"--out {first_line(exc)}") from None


def backbone_arg(spec: str, device: "str | None" = None) -> Any:
    """:func:`load_backbone` with every loading failure (missing or refused weights, a
    missing extra) as a :class:`UsageError` naming ``--backbone``."""
    try:
        return load_backbone(spec, device)
    except UsageError:
        raise
    except (ValueError, FileNotFoundError, ImportError, OSError, RuntimeError) as exc:
        raise UsageError(f"--backbone {spec}: {first_line(exc)}") from None


def intrinsics_arg(text: Any) -> Any:
    """``--intrinsics FX,FY,CX,CY`` (pixels) as a 4-tuple, or ``None`` when not given."""
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or not all(v == v and abs(v) != float("inf") for v in vals) or \
            vals[0] <= 0 or vals[1] <= 0:
        raise UsageError(f"--intrinsics: expected FX,FY,CX,CY (pixels, focal lengths > 0), "
                         f"got {text!r}")
    return vals


def models_arg(spec: Any, pipeline_options: dict, device: Any,
               backbone: Any) -> tuple[Models, dict]:
    """The photo chain's models from ``--models`` (``default``, ``offline`` or a YAML file),
    moved to ``--device`` and with ``--backbone`` replacing the generator, and the chain's
    options: the models file's ``pipeline_options`` updated by ``--pipeline-option`` values,
    checked (raises UsageError, ModelsConfigError, ModelLoadError, ImportError)."""
    if spec in (None, "default"):
        models = Models.default()
    elif spec == "offline":
        models = Models.offline()
    else:
        models = Models.from_yaml(spec)
    merged = {**models.pipeline_options, **pipeline_options}
    try:
        PipelineOptions.coerce(merged or None)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--pipeline-option: {first_line(exc)}") from None
    if device is not None:
        models = models.with_device(device)
    if backbone is not None:
        models = models.replace(backbone=backbone_arg(backbone, device))
    return models, merged
