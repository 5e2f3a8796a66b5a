"""The loss registry: YAML names -> loss terms.

A *term* is a function ``term(ctx: LossContext, **options) -> scalar Tensor`` registered
under a name with :func:`register_loss`. Phase schedules name terms by that name (see
:mod:`hoiguide.phases`) and give each a weight and options; options are declared with
:class:`Option` so that a schedule is validated when it is loaded, not when a term first
runs.

Registering your own term (do it before loading a schedule that names it)::

    from hoiguide.losses import Option, register_loss

    @register_loss("object_height", needs=("object_mesh",),
                   options={"target": Option(0.1, minimum=0.0, doc="metres")})
    def object_height(ctx, target=0.1):
        v = ctx.object_mesh.vertices
        return (v[:, 1].max() - v[:, 1].min() - target) ** 2
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from hoiguide.losses.context import LossContext

__all__ = ["Option", "LossSpec", "LOSSES", "register_loss", "evaluate_terms",
           "required_fields", "suggest"]

log = logging.getLogger(__name__)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the closest candidate (difflib), or ``""``."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


@dataclass(frozen=True)
class Option:
    """One option of a loss term, for validation of schedules.

    Attributes:
        default: the value used when a schedule does not give one; its type (bool, int,
            float or str) is the option's type unless ``kind`` says otherwise (``None`` means
            "no default value", with ``kind`` required).
        choices: allowed values (for string options).
        minimum, maximum: inclusive numeric bounds.
        kind: the value type (``bool``, ``int``, ``float``, ``str`` or ``list`` of ints).
        doc: one line shown by :func:`describe`.
    """

    default: Any
    choices: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    kind: Optional[type] = None
    doc: str = ""

    @property
    def type(self) -> type:
        return self.kind if self.kind is not None else type(self.default)

    def validate(self, value: Any) -> Any:
        """The value converted to the option's type; ``ValueError`` explaining what was
        expected otherwise."""
        kind = self.type
        if value is None and self.default is None:
            return None
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {value!r}")
            if kind is int:
                if int(value) != value:
                    raise ValueError(f"expected an integer, got {value!r}")
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"expected a finite number, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"expected a value >= {self.minimum}, got {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"expected a value <= {self.maximum}, got {value!r}")
            return value
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"expected one of {list(self.choices)}, got {value!r}"
                                 f"{suggest(value, self.choices)}")
            return value
        if kind is list:
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"expected a list of integers, got {value!r}")
            return list(value)
        raise TypeError(f"Option: unsupported option type {kind!r}")


NeedsSpec = Union[Sequence[str], Callable[[Mapping[str, Any]], Sequence[str]]]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss term. Call it as ``spec(ctx, **options)``.

    Attributes:
        name: the YAML name.
        fn: ``fn(ctx, **options) -> scalar Tensor``.
        needs: the :class:`LossContext` fields the term reads (``"render.amodal"`` names a
            render field), or a function of the (validated) options returning them.
        options: declared options, see :class:`Option`.
        doc: first line of ``fn``'s docstring.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs: NeedsSpec = ()
    options: Mapping[str, Option] = field(default_factory=dict)
    doc: str = ""

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """All options with defaults filled in; ``ValueError`` starting with the offending
        option name (``"margn: unknown option; did you mean margin?"``)."""
        out = {}
        for key, value in options.items():
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise ValueError(f"{key}: unknown option of loss {self.name!r} (options: "
                                 f"{known}){suggest(key, self.options)}")
            try:
                out[key] = self.options[key].validate(value)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        for key, opt in self.options.items():
            out.setdefault(key, opt.default)
        return out

    def needs_for(self, options: Optional[Mapping[str, Any]] = None) -> tuple[str, ...]:
        """The context fields this term reads with these options."""
        opts = self.validate_options(options or {})
        needs = self.needs(opts) if callable(self.needs) else self.needs
        return tuple(needs)

    def missing(self, ctx: LossContext, options: Optional[Mapping[str, Any]] = None
                ) -> list[str]:
        """The needed context fields that are ``None`` in ``ctx``."""
        return [f for f in self.needs_for(options) if not ctx.has(f)]

    def __call__(self, ctx: LossContext, **options: Any) -> torch.Tensor:
        if not isinstance(ctx, LossContext):
            raise TypeError(f"loss {self.name!r}: expected a LossContext, got "
                            f"{type(ctx).__name__}")
        try:
            opts = self.validate_options(options)
        except ValueError as e:
            raise ValueError(f"loss {self.name!r}: {e}") from None
        absent = [f for f in (self.needs(opts) if callable(self.needs) else self.needs)
                  if not ctx.has(f)]
        if absent:
            where = ctx.where()
            raise ValueError(f"loss {self.name!r} needs ctx.{', ctx.'.join(absent)}, which "
                             f"{'is' if len(absent) == 1 else 'are'} None"
                             f"{' (' + where + ')' if where else ''}")
        value = self.fn(ctx, **opts)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError(f"loss {self.name!r} must return a scalar tensor, got "
                            f"{type(value).__name__} "
                            f"{tuple(value.shape) if isinstance(value, torch.Tensor) else ''}")
        return value.reshape(())


class _Registry(Mapping):
    """Name -> :class:`LossSpec`; a missing name raises ``KeyError`` with a suggestion."""

    def __init__(self) -> None:
        self._specs: dict[str, LossSpec] = {}
        self._builtins_loaded = False

    def _ensure_builtins(self) -> None:
        # the built-in terms register themselves when their modules are imported; importing
        # them on first use (not at the bottom of this module) avoids import cycles
        if not self._builtins_loaded:
            self._builtins_loaded = True
            from hoiguide.losses import contact, image, regularizers  # noqa: F401

    def __getitem__(self, name: str) -> LossSpec:
        self._ensure_builtins()
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown loss {name!r}{suggest(name, self._specs)} (registered: "
                           f"{', '.join(sorted(self._specs))})") from None

    def __contains__(self, name: object) -> bool:
        self._ensure_builtins()
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        self._ensure_builtins()
        return iter(list(self._specs))

    def __len__(self) -> int:
        self._ensure_builtins()
        return len(self._specs)

    def __repr__(self) -> str:
        self._ensure_builtins()
        return f"LOSSES({', '.join(sorted(self._specs))})"

    def _add(self, spec: LossSpec, overwrite: bool) -> None:
        self._ensure_builtins()
        if spec.name in self._specs and not overwrite:
            raise ValueError(f"register_loss: a loss named {spec.name!r} is already "
                             "registered (pass overwrite=True to replace it)")
        self._specs[spec.name] = spec

    def _remove(self, name: str) -> None:
        self._specs.pop(name, None)


#: the registry: ``LOSSES["normal"](ctx, mask="hand")``
LOSSES = _Registry()


def register_loss(name: str, needs: NeedsSpec = (),
                  options: Optional[Mapping[str, Option]] = None, *,
                  overwrite: bool = False) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(ctx, **options) -> scalar Tensor`` under ``name``.

    Args:
        name: the name schedules use (letters, digits, ``_``; no ``@``, which schedules use
            for labels such as ``normal@hand``).
        needs: the :class:`LossContext` fields the term reads, or a function of the options
            returning them (``"render.amodal"`` names a render field).
        options: ``{option_name: Option(default, ...)}``; the term receives every option as a
            keyword argument, defaults filled in.
        overwrite: replace an existing registration instead of raising.

    Returns the function unchanged (the registered :class:`LossSpec` is ``LOSSES[name]``).
    """
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise ValueError(f"register_loss: expected a name of letters, digits and '_', got "
                         f"{name!r}")
    opts = dict(options or {})
    for k, o in opts.items():
        if not isinstance(o, Option):
            raise TypeError(f"register_loss({name!r}): option {k!r} must be an Option, got "
                            f"{type(o).__name__}")

    def deco(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        LOSSES._add(LossSpec(name, fn, needs if callable(needs) else tuple(needs), opts,
                             doc[0] if doc else ""), overwrite)
        return fn

    return deco


def _term_fields(term: Any) -> tuple[str, str, float, Mapping[str, Any]]:
    """(label, loss, weight, options) of a schedule term or of a plain tuple/mapping."""
    if isinstance(term, Mapping):
        loss = term["loss"]
        return term.get("label", loss), loss, float(term.get("weight", 1.0)), \
            term.get("options", {})
    if isinstance(term, tuple) and not hasattr(term, "_fields") and len(term) in (2, 3):
        loss, weight = term[0], term[1]
        return loss, loss, float(weight), (term[2] if len(term) == 3 else {})
    return term.label, term.loss, float(term.weight), term.options


def required_fields(terms: Iterable[Any]) -> set[str]:
    """The union of the context fields the given terms need (e.g. to decide whether the
    engine must render amodal silhouettes: ``"render.amodal" in required_fields(terms)``).

    ``terms``: schedule terms (objects with ``loss`` and ``options``), or ``(loss, weight[,
    options])`` tuples, or mappings with ``loss`` / ``weight`` / ``options``."""
    out: set[str] = set()
    for t in terms:
        _, loss, weight, options = _term_fields(t)
        if weight != 0:
            out.update(LOSSES[loss].needs_for(options))
    return out


def evaluate_terms(terms: Iterable[Any], ctx: LossContext
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Evaluate weighted terms on one context.

    Args:
        terms: schedule terms (objects with ``label``, ``loss``, ``weight``, ``options``, as
            returned by ``PhaseSchedule.terms_at``), ``(loss, weight[, options])`` tuples or
            mappings with those keys. Terms with weight 0 are not evaluated.
        ctx: the loss context.

    Returns:
        ``(total, values)``: the weighted sum and the UNWEIGHTED value of every evaluated
        term by label. Non-finite values are returned as they are: the caller decides (the
        engine applies the schedule's ``on_nonfinite`` policy and names the term).
    """
    values: dict[str, torch.Tensor] = {}
    total: Optional[torch.Tensor] = None
    for t in terms:
        label, loss, weight, options = _term_fields(t)
        if weight == 0:
            continue
        if label in values:
            raise ValueError(f"evaluate_terms: duplicate term label {label!r}")
        v = LOSSES[loss](ctx, **dict(options))
        values[label] = v
        total = weight * v if total is None else total + weight * v
    if total is None:
        total = torch.zeros(())
    return total, values


def describe() -> str:
    """A readable list of registered losses, their needs and options."""
    lines = []
    for name in sorted(LOSSES):
        spec = LOSSES[name]
        lines.append(f"{name}: {spec.doc}")
        for k, o in spec.options.items():
            extra = f" one of {list(o.choices)}" if o.choices else ""
            lines.append(f"    {k} = {o.default!r}{extra}  {o.doc}".rstrip())
    return "\n".join(lines)
