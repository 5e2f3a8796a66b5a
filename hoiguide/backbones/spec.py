"""One way to name a backbone: a spec string (``--backbone`` on the command line, the web app,
batches) or an object, turned into a :class:`~hoiguide.backbones.FlowBackbone`.

Specs:

* ``tiny`` (or ``None``): the bundled tiny generator, :func:`hoiguide.backbones.tiny`;
* ``hunyuan:PATH_OR_REPO``: :meth:`HunyuanBackbone.from_pretrained` (a checkpoint folder's
  ``config.yaml`` may only name allow-listed classes: loading never runs other code);
* ``python:module:callable``: any factory returning a FlowBackbone (given ``device=`` when its
  signature takes one). This imports and runs ``module``: name only code you trust.

Objects: a FlowBackbone is returned as is; a class or a zero-argument factory is called.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Optional

__all__ = ["load_backbone", "BackboneSpecError", "SPEC_FORMS"]

SPEC_FORMS = "tiny, hunyuan:PATH_OR_REPO or python:module:callable"
"""The forms a backbone spec string may take (for messages)."""


class BackboneSpecError(ValueError):
    """A backbone spec that names nothing loadable (one line: the spec and what to do)."""


def _call(factory: Callable[..., Any], device: Optional[str]) -> Any:
    """Call a backbone factory, passing ``device`` when it takes one."""
    if device is not None:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        if "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return factory(device=device)
    return factory()


def load_backbone(spec: Any = None, device: Optional[str] = None) -> Any:
    """The backbone named by ``spec`` (see the module docstring), on ``device`` when the
    loader takes one.

    Raises:
        BackboneSpecError: a malformed spec, or a ``python:`` module / callable that does not
            exist.
        FileNotFoundError, ValueError, ImportError: what the named loader raises (missing
            weights, a refused checkpoint, a missing extra), each naming the file or extra.
    """
    if spec is None or spec == "tiny":
        from hoiguide.backbones.bundled import tiny

        return _call(tiny, device)
    if not isinstance(spec, str):
        if hasattr(spec, "velocity") and hasattr(spec, "decode_sdf"):
            return spec
        if isinstance(spec, type) or callable(spec):
            return _call(spec, device)
        raise BackboneSpecError(f"backbone: expected a FlowBackbone, a factory or a spec "
                                f"({SPEC_FORMS}), got {type(spec).__name__}")
    kind, _, rest = spec.partition(":")
    if kind == "hunyuan" and rest:
        from hoiguide.backbones.hunyuan import HunyuanBackbone

        return HunyuanBackbone.from_pretrained(rest, device=device)
    if kind == "python" and rest.count(":") == 1:
        mod_name, attr = rest.split(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise BackboneSpecError(f"backbone {spec}: cannot import {mod_name!r} ({exc})") \
                from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise BackboneSpecError(f"backbone {spec}: module {mod_name!r} has no callable "
                                    f"{attr!r}")
        return _call(factory, device)
    raise BackboneSpecError(f"backbone: expected {SPEC_FORMS}, got {spec!r}")
