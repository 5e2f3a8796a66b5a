"""Which foundation model plays which role in the image -> observations chain.

:class:`Models` holds one object per role, each built lazily (on first use) from a small
YAML file or mapping, or given directly as an object:

=============  ===============  =========================================================
YAML section   attribute        what it is
=============  ===============  =========================================================
segmentation   ``segmenter``    text-prompted boxes and masks
                                (:class:`hoiguide.adapters.segmentation.TextSegmenter`)
inpainting     ``inpainter``    removes the hand, completes the object
                                (``FluxKontextInpainter`` or ``OpenCVInpainter``)
geometry       ``geometry``     monocular point map (``MoGeEstimator``)
hand           ``hand``         hand mesh recovery (``HaMeREstimator`` or
                                ``MediaPipeHandEstimator``)
generator      ``backbone``     the image-to-3D flow generator (any
                                :class:`hoiguide.FlowBackbone`)
=============  ===============  =========================================================

The YAML (every section and key optional; a missing section takes :meth:`Models.default`'s)::

    device: cuda                    # default torch device of every role (optional)
    segmentation:
      detector: IDEA-Research/grounding-dino-base   # hub id or local folder
      sam: facebook/sam-vit-base                    # hub id or local folder
      device: cuda
      local_files_only: false
    inpainting:
      kind: flux_kontext            # flux_kontext | opencv
      model: black-forest-labs/FLUX.1-Kontext-dev
    geometry:
      kind: moge
      model: Ruicheng/moge-2-vitl-normal
    hand:
      kind: hamer                   # hamer | mediapipe
      checkpoint: /models/hamer/checkpoints/hamer.ckpt
      mano: /models/mano/MANO_RIGHT.pkl
    generator:
      kind: hunyuan                 # hunyuan | tiny
      model: tencent/Hunyuan3D-2
      dtype: float16
    pipeline:                       # hoiguide.adapters.pipeline.PipelineOptions fields
      crop_size: 512

Every role also takes ``options:`` (a mapping passed as keyword arguments to the adapter's
constructor / ``from_pretrained``) and ``factory:`` (it replaces ``kind``; the callable is called
with ``options`` and, when it accepts one, ``device``), which is one of:

* ``"hoiguide.<module>:<Class>"``: one of hoiguide's own model classes (a class defined in
  ``hoiguide.adapters`` or ``hoiguide.backbones``) or ``hoiguide.backbones:tiny``; anything
  else under ``hoiguide`` is refused;
* ``"python:<module>:<callable>"``: your own model. **This is trusted code**: building the role
  imports ``<module>`` and calls ``<callable>``, so it runs whatever they contain, with the
  options the file gives. The ``python:`` prefix says you wrote or checked it; use it only in
  models files you wrote or checked, as you would a Python script. A factory without it that
  is not hoiguide's is refused (:class:`ModelsConfigError` naming ``<role>.factory``).

Model ids and paths name weights, read by each adapter's loader: the generator's folder only
through an allow-list of hy3dgen's classes and safetensors (see
:meth:`hoiguide.backbones.HunyuanBackbone.from_pretrained`); HaMeR's ``hand.checkpoint`` goes
to HaMeR's own loader (Lightning's ``load_from_checkpoint``, a pickle): use the file of
HaMeR's release only. Invalid files raise :class:`ModelsConfigError` naming the YAML path
(``hand.kind: expected one of hamer, mediapipe, got 'hammer'; did you mean hamer?``), as
:class:`hoiguide.phases.ScheduleError` does for schedules. Building a role that cannot be
built (a missing extra, missing weights) raises :class:`ModelLoadError` naming the role, the
model and the adapter's own explanation (which extra to install, where it looked).

``Models.default()`` is the reference's set (GroundingDINO + SAM, FLUX.1 Kontext [dev],
MoGe-2, HaMeR, Hunyuan3D-2); it needs those weights (downloaded from the hub or local) and
HaMeR's checkpoint and MANO file, which have no hub id: set ``hand.checkpoint`` and
``hand.mano``. ``Models.offline()`` is what needs no download at all except the
segmentation and monocular-geometry weights: OpenCV inpainting, MediaPipe hands (models
bundled in ``mediapipe`` 0.10.21), the bundled tiny generator; segmentation and MoGe look
for their weights in the local Hugging Face cache only (``local_files_only: true``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

__all__ = ["Models", "ModelsConfigError", "ModelLoadError", "ROLES", "DEFAULT_MODELS",
           "OFFLINE_MODELS", "load_models_config"]

from hoiguide.adapters.hamer import HaMeREstimator
from hoiguide.adapters.inpainting import FluxKontextInpainter
from hoiguide.adapters.moge import MoGeEstimator
from hoiguide.adapters.options import PipelineOptions
from hoiguide.adapters.segmentation import TextSegmenter
from hoiguide.backbones import HunyuanBackbone
from hoiguide.io import ConfigError, did_you_mean, load_yaml

log = logging.getLogger(__name__)

ROLES: dict[str, str] = {
    "segmentation": "segmenter",
    "inpainting": "inpainter",
    "geometry": "geometry",
    "hand": "hand",
    "generator": "backbone",
}
"""YAML section -> :class:`Models` attribute."""

_ATTR_TO_ROLE = {v: k for k, v in ROLES.items()}

DEFAULT_MODELS: dict[str, Any] = {
    "segmentation": {"detector": "IDEA-Research/grounding-dino-base",
                     "sam": "facebook/sam-vit-base"},
    "inpainting": {"kind": "flux_kontext", "model": "black-forest-labs/FLUX.1-Kontext-dev"},
    "geometry": {"kind": "moge", "model": "Ruicheng/moge-2-vitl-normal"},
    "hand": {"kind": "hamer", "checkpoint": None, "mano": None},
    "generator": {"kind": "hunyuan", "model": "tencent/Hunyuan3D-2"},
}
"""The reference's models (docs/method.md section 1)."""

OFFLINE_MODELS: dict[str, Any] = {
    "segmentation": {"detector": "IDEA-Research/grounding-dino-base",
                     "sam": "facebook/sam-vit-base", "local_files_only": True},
    "inpainting": {"kind": "opencv"},
    "geometry": {"kind": "moge", "model": "Ruicheng/moge-2-vitl-normal",
                 "local_files_only": True},
    "hand": {"kind": "mediapipe"},
    "generator": {"kind": "tiny"},
}
"""What runs without a download (segmentation and MoGe weights must be in the local cache)."""

# allowed keys per role and kind (``options``/``factory``/``device`` are always allowed)
_COMMON = ("kind", "factory", "options", "device")
_KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "segmentation": {"grounded_sam": ("detector", "sam", "local_files_only")},
    "inpainting": {"flux_kontext": ("model", "local_files_only"), "opencv": ()},
    "geometry": {"moge": ("model", "local_files_only")},
    "hand": {"hamer": ("checkpoint", "mano"), "mediapipe": ()},
    "generator": {"hunyuan": ("model", "subfolder", "dtype", "local_files_only"),
                  "tiny": ("dtype",)},
}
_DEFAULT_KIND = {"segmentation": "grounded_sam", "inpainting": "flux_kontext",
                 "geometry": "moge", "hand": "hamer", "generator": "hunyuan"}
_STRING_KEYS = ("detector", "sam", "model", "checkpoint", "mano", "subfolder", "dtype",
                "device", "factory")
_DTYPES = ("float16", "bfloat16", "float32", "float64")


class ModelsConfigError(ConfigError):
    """An invalid models file or mapping. ``path`` is the offending YAML path
    (``hand.kind``), ``source`` the file; both appear in the message."""


class ModelLoadError(RuntimeError):
    """A role's model could not be built (missing package, weights or bad options).
    ``role`` is the YAML section; the adapter's own exception is the ``__cause__``."""

    def __init__(self, role: str, message: str) -> None:
        self.role = role
        super().__init__(message)


_suggest = did_you_mean


def _validate_role(role: str, raw: Any, source: Optional[str]) -> dict[str, Any]:
    """One role's section -> a normalised dict (``kind`` filled in, ``options`` a dict)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ModelsConfigError(f"expected a mapping, got {type(raw).__name__} {raw!r}",
                                role, source)
    cfg = dict(raw)
    for k in cfg:
        if not isinstance(k, str):
            raise ModelsConfigError(f"expected string keys, got {k!r}", role, source)
    factory = cfg.get("factory")
    kinds = _KINDS[role]
    kind = cfg.get("kind", None)
    if factory is not None:
        _check_factory_spec(factory, f"{role}.factory", source)
        if kind not in (None, "factory"):
            raise ModelsConfigError(f"give either kind or factory, not both (got kind "
                                    f"{kind!r} and factory {factory!r})", f"{role}.kind", source)
        kind = "factory"
        allowed = set(_COMMON) | {k for ks in kinds.values() for k in ks}
    else:
        if kind is None:
            kind = _DEFAULT_KIND[role]
        if kind not in kinds:
            raise ModelsConfigError(f"expected one of {', '.join(kinds)}, got {kind!r}"
                                    f"{_suggest(kind, kinds)}", f"{role}.kind", source)
        allowed = set(_COMMON) | set(kinds[kind])
    for k in cfg:
        if k not in allowed:
            others = [kk for kk, ks in kinds.items() if k in ks]
            hint = (f" (it belongs to kind {others[0]})" if others else
                    _suggest(k, sorted(allowed)))
            raise ModelsConfigError(f"unknown key for kind {kind!r}{hint}; allowed: "
                                    f"{', '.join(sorted(allowed))}", f"{role}.{k}", source)
    for k in _STRING_KEYS:
        v = cfg.get(k)
        if v is not None and not isinstance(v, (str, Path)):
            raise ModelsConfigError(f"expected a string (hub id, path or name), got "
                                    f"{type(v).__name__} {v!r}", f"{role}.{k}", source)
        if isinstance(v, Path):
            cfg[k] = str(v)
    if cfg.get("dtype") is not None and cfg["dtype"] not in _DTYPES:
        raise ModelsConfigError(f"expected one of {', '.join(_DTYPES)}, got {cfg['dtype']!r}"
                                f"{_suggest(cfg['dtype'], _DTYPES)}", f"{role}.dtype", source)
    lfo = cfg.get("local_files_only")
    if lfo is not None and not isinstance(lfo, bool):
        raise ModelsConfigError(f"expected true, false or null, got {lfo!r}",
                                f"{role}.local_files_only", source)
    opts = cfg.get("options")
    if opts is None:
        opts = {}
    if not isinstance(opts, Mapping) or not all(isinstance(k, str) for k in opts):
        raise ModelsConfigError(f"expected a mapping of keyword arguments, got {opts!r}",
                                f"{role}.options", source)
    cfg["options"] = dict(opts)
    cfg["kind"] = kind
    return cfg


def load_models_config(spec: Union[str, Path, Mapping[str, Any], None],
                       source: Optional[str] = None) -> dict[str, Any]:
    """Read and validate a models YAML file (path) or mapping.

    Returns ``{"device": ..., "pipeline": {...}, <role>: {...} for every role given}`` with
    every role normalised (``kind`` filled in, ``options`` a dict). Roles not given are
    absent (the caller fills them from a default set).

    Raises:
        FileNotFoundError: ``spec`` names no file.
        ModelsConfigError: invalid YAML or schema; the message names the YAML path.
    """

    if spec is None:
        raw: Any = {}
    elif isinstance(spec, Mapping):
        raw = copy.deepcopy(dict(spec))
        source = source or "<mapping>"
    elif isinstance(spec, (str, Path)):
        p = Path(spec).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"models file not found: {p}")
        source = source or str(p)
        try:
            raw = load_yaml(p)
        except ValueError as exc:
            raise ModelsConfigError(str(exc).removeprefix(f"{p}: "), "", source) from None
        if raw is None:
            raw = {}
    else:
        raise TypeError(f"models: expected a YAML path, a mapping, a Models or None, got "
                        f"{type(spec).__name__}")
    if not isinstance(raw, Mapping):
        raise ModelsConfigError(f"expected a mapping of roles at the top level, got "
                                f"{type(raw).__name__}", "", source)
    allowed = set(ROLES) | {"device", "pipeline"}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in allowed:
            alias = _ATTR_TO_ROLE.get(k)
            hint = f"; did you mean {alias}?" if alias else _suggest(k, sorted(allowed))
            raise ModelsConfigError(f"unknown section{hint} (sections: "
                                    f"{', '.join(sorted(allowed))})", str(k), source)
        if k == "device":
            if v is not None and not isinstance(v, str):
                raise ModelsConfigError(f"expected a device string, got {v!r}", "device",
                                        source)
            out["device"] = v
        elif k == "pipeline":
            out["pipeline"] = _validate_pipeline(v, source)
        else:
            out[k] = _validate_role(k, v, source)
    return out


def _validate_pipeline(raw: Any, source: Optional[str]) -> dict[str, Any]:

    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ModelsConfigError(f"expected a mapping of PipelineOptions fields, got {raw!r}",
                                "pipeline", source)
    names = [f.name for f in dataclasses.fields(PipelineOptions)]
    for k in raw:
        if k not in names:
            raise ModelsConfigError(f"unknown pipeline option{_suggest(k, names)} (options: "
                                    f"{', '.join(names)})", f"pipeline.{k}", source)
    try:
        PipelineOptions.coerce(dict(raw))
    except (TypeError, ValueError) as exc:
        raise ModelsConfigError(str(exc), "pipeline", source) from None
    return dict(raw)


def _torch_dtype(name: Optional[str]) -> Any:
    if name is None:
        return None
    import torch

    return getattr(torch, name)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


_TRUSTED_PREFIX = "python:"
_FACTORY_SYNTAX = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_HOIGUIDE_FACTORY_MODULES = ("hoiguide.adapters", "hoiguide.backbones")
_HOIGUIDE_FACTORY_FUNCTIONS = ("hoiguide.backbones.bundled.tiny",)


def _check_factory_spec(factory: Any, path: str, source: Optional[str]) -> None:
    """``factory:`` must be ``hoiguide.<module>:<Class>`` or ``python:<module>:<callable>``
    (trusted user code); checked on the text only, nothing is imported here."""
    spec = factory[len(_TRUSTED_PREFIX):] if isinstance(factory, str) and \
        factory.startswith(_TRUSTED_PREFIX) else factory
    if not isinstance(spec, str) or not _FACTORY_SYNTAX.match(spec):
        raise ModelsConfigError(f"expected 'module:callable': 'python:module:callable' for "
                                f"your own code or one of hoiguide's 'hoiguide.module:Class', "
                                f"got {factory!r}", path, source)
    if spec is factory and not (spec == "hoiguide" or spec.startswith("hoiguide.")):
        raise ModelsConfigError(
            f"{factory!r} is not one of hoiguide's model factories, and a factory of your own "
            f"is code that runs when the model is built: write it as "
            f"'{_TRUSTED_PREFIX}{factory}' if you wrote or checked that code (never for a "
            f"models file you have not checked)", path, source)


def _import_factory(spec: str) -> Callable[..., Any]:
    """The callable of a ``factory:`` entry (see the module docstring).

    ``python:`` entries are trusted user code: imported and returned as they are. Other
    entries must resolve to a class defined in ``hoiguide.adapters`` / ``hoiguide.backbones``
    (or ``hoiguide.backbones:tiny``); anything else is refused with :class:`ModelsConfigError`.
    """
    trusted = spec.startswith(_TRUSTED_PREFIX)
    mod_name, attr = spec[len(_TRUSTED_PREFIX):].split(":") if trusted else spec.split(":")
    if trusted:
        log.info("models: importing trusted user code %s:%s (a python: factory)", mod_name,
                 attr)
    module = importlib.import_module(mod_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AttributeError(f"module {mod_name!r} has no callable {attr!r}")
    if not trusted:
        where = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"
        ok = (inspect.isclass(fn) and str(fn.__module__).startswith(
            tuple(m + "." for m in _HOIGUIDE_FACTORY_MODULES))) or \
            where in _HOIGUIDE_FACTORY_FUNCTIONS
        if not ok:
            raise ModelsConfigError(
                f"{spec!r} is not one of hoiguide's model factories (a class of "
                f"{' or '.join(_HOIGUIDE_FACTORY_MODULES)}, or hoiguide.backbones:tiny); for "
                f"your own code write '{_TRUSTED_PREFIX}module:callable' (trusted code)",
                "factory")
    return fn


def _describe_cfg(role: str, cfg: Mapping[str, Any]) -> str:
    kind = cfg.get("kind")
    if kind == "factory":
        return f"factory {cfg['factory']}"
    names = [str(cfg[k]) for k in ("detector", "sam", "model", "checkpoint") if cfg.get(k)]
    return f"{kind}" + (f" {' + '.join(names)}" if names else "")


class Models:
    """The models of the image -> observations chain, one per role, built lazily.

    Args:
        config: a models YAML path, a mapping (see the module docstring) or ``None``; roles
            it does not name come from ``base`` (default :data:`DEFAULT_MODELS`).
        segmenter, inpainter, geometry, hand, backbone: ready objects for these roles
            (they win over ``config``).
        base: the set the missing roles come from (:data:`DEFAULT_MODELS` or
            :data:`OFFLINE_MODELS` or a mapping).
        source: the name used for ``config`` in error messages.

    Attributes (each built on first access; building errors raise :class:`ModelLoadError`):
        segmenter, inpainter, geometry, hand, backbone.
        config: the validated configuration (``{role: {...}, "device", "pipeline"}``).
        pipeline_options: the ``pipeline:`` section (PipelineOptions fields).

    Example::

        models = Models.from_yaml("models.yaml")
        models = Models.offline().replace(backbone=my_backbone)
        models.build()          # load everything now (else: on first use)
    """

    def __init__(self, config: Union[str, Path, Mapping[str, Any], None] = None, *,
                 segmenter: Any = None, inpainter: Any = None, geometry: Any = None,
                 hand: Any = None, backbone: Any = None,
                 base: Optional[Mapping[str, Any]] = None,
                 source: Optional[str] = None) -> None:
        given = load_models_config(config, source)
        base_cfg = load_models_config(DEFAULT_MODELS if base is None else base, "<base>")
        cfg = {role: given.get(role, base_cfg.get(role)) for role in ROLES}
        cfg["device"] = given.get("device", base_cfg.get("device"))
        cfg["pipeline"] = given.get("pipeline", base_cfg.get("pipeline", {}))
        self.config: dict[str, Any] = cfg
        self.source = source or (str(config) if isinstance(config, (str, Path)) else None)
        self._objects: dict[str, Any] = {}
        for attr, obj in (("segmenter", segmenter), ("inpainter", inpainter),
                          ("geometry", geometry), ("hand", hand), ("backbone", backbone)):
            if obj is not None:
                self._objects[_ATTR_TO_ROLE[attr]] = obj
        self._given = set(self._objects)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_yaml(cls, path: Union[str, Path], **objects: Any) -> "Models":
        """From a models YAML file (missing roles: :data:`DEFAULT_MODELS`)."""
        return cls(Path(path), **objects)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], *, source: str = "<mapping>",
                  **objects: Any) -> "Models":
        """From a mapping with the YAML's structure."""
        return cls(mapping, source=source, **objects)

    @classmethod
    def default(cls, **objects: Any) -> "Models":
        """The reference's models (:data:`DEFAULT_MODELS`): GroundingDINO + SAM, FLUX.1
        Kontext [dev], MoGe-2, HaMeR (set its checkpoint and MANO paths), Hunyuan3D-2."""
        return cls(None, base=DEFAULT_MODELS, **objects)

    @classmethod
    def offline(cls, **objects: Any) -> "Models":
        """What needs no download (:data:`OFFLINE_MODELS`): OpenCV inpainting, MediaPipe
        hands, the bundled tiny generator; GroundingDINO + SAM and MoGe-2 from the local
        cache only (put their weights there first, or pass your own objects)."""
        return cls(None, base=OFFLINE_MODELS, **objects)

    @classmethod
    def load(cls, spec: Union["Models", str, Path, Mapping[str, Any], None]) -> "Models":
        """``None`` or ``"default"`` -> :meth:`default`; ``"offline"`` -> :meth:`offline`; a
        :class:`Models` -> itself; a path -> the YAML file; a mapping -> :meth:`from_dict`.
        (The same names the CLI's ``--models`` accepts.)"""
        if spec is None or (isinstance(spec, str) and spec == "default"):
            return cls.default()
        if isinstance(spec, str) and spec == "offline":
            return cls.offline()
        if isinstance(spec, Models):
            return spec
        if isinstance(spec, (str, Path)):
            return cls.from_yaml(spec)
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        raise TypeError(f"models: expected Models, a YAML path, a mapping or None, got "
                        f"{type(spec).__name__}")

    def replace(self, **objects: Any) -> "Models":
        """A copy with some roles replaced by objects (``backbone=...``, ``hand=...``);
        models already built are shared."""
        bad = [k for k in objects if k not in _ATTR_TO_ROLE]
        if bad:
            raise TypeError(f"Models.replace: unknown role {bad[0]!r} (roles: "
                            f"{', '.join(_ATTR_TO_ROLE)})")
        new = copy.copy(self)
        new.config = copy.deepcopy(self.config)
        new._objects = dict(self._objects)
        new._given = set(self._given)
        for attr, obj in objects.items():
            role = _ATTR_TO_ROLE[attr]
            if obj is None:
                new._objects.pop(role, None)
                new._given.discard(role)
            else:
                new._objects[role] = obj
                new._given.add(role)
        return new

    def with_device(self, device: Optional[str]) -> "Models":
        """A copy whose roles not built yet are built on ``device`` (roles with their own
        ``device`` key keep it)."""
        new = self.replace()
        new.config["device"] = device
        return new

    # ------------------------------------------------------------------ roles
    @property
    def segmenter(self) -> Any:
        return self.get("segmentation")

    @property
    def inpainter(self) -> Any:
        return self.get("inpainting")

    @property
    def geometry(self) -> Any:
        return self.get("geometry")

    @property
    def hand(self) -> Any:
        return self.get("hand")

    @property
    def backbone(self) -> Any:
        return self.get("generator")

    @property
    def pipeline_options(self) -> dict[str, Any]:
        return dict(self.config.get("pipeline") or {})

    def is_built(self, role: str) -> bool:
        """Whether the role's object exists already (given or built)."""
        return role in self._objects

    def get(self, role: str) -> Any:
        """The object of ``role`` (a YAML section name or an attribute name), built on
        first use."""
        role = _ATTR_TO_ROLE.get(role, role)
        if role not in ROLES:
            raise KeyError(f"Models: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if role not in self._objects:
            self._objects[role] = self._build(role)
        return self._objects[role]

    def build(self, roles: Any = None) -> "Models":
        """Build every role now (or the given ones); returns ``self``. Every role is tried, so
        one error lists everything that is missing (each role's message says what to
        install or download).

        Raises:
            ModelLoadError: one or more roles cannot be built (``role`` is the first; the
                message has one line per role).
        """
        failed: list[ModelLoadError] = []
        for role in (ROLES if roles is None else roles):
            try:
                self.get(role)
            except ModelLoadError as exc:
                failed.append(exc)
        if len(failed) == 1:
            raise failed[0]
        if failed:
            lines = "\n".join(f"  - {str(e).strip()}" for e in failed)
            raise ModelLoadError(failed[0].role, f"{len(failed)} models cannot be built:\n"
                                                 f"{lines}") from failed[0]
        return self

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description of every role (config, or the object's class)."""
        out: dict[str, Any] = {}
        for role in ROLES:
            if role in self._given:
                obj = self._objects[role]
                out[role] = {"object": f"{type(obj).__module__}.{type(obj).__qualname__}"}
            else:
                cfg = {k: v for k, v in self.config[role].items() if v not in (None, {})}
                out[role] = cfg
        if self.config.get("device") is not None:
            out["device"] = self.config["device"]
        return out

    def __repr__(self) -> str:
        parts = []
        for role in ROLES:
            if role in self._given:
                parts.append(f"{role}={type(self._objects[role]).__name__}")
            else:
                parts.append(f"{role}={_describe_cfg(role, self.config[role])!r}")
        return f"Models({', '.join(parts)})"

    # ------------------------------------------------------------------ building
    def _build(self, role: str) -> Any:
        cfg = self.config[role]
        device = cfg.get("device") or self.config.get("device")
        desc = _describe_cfg(role, cfg)
        log.info("models: building %s (%s)", role, desc)
        try:
            return _BUILDERS[role](cfg, device)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 -- re-raised with the role named
            where = f" (from {self.source})" if self.source else ""
            raise ModelLoadError(role, f"models.{role} ({desc}){where} could not be built: "
                                       f"{type(exc).__name__}: {exc}") from exc


def _with_device(fn: Callable[..., Any], kwargs: dict[str, Any], device: Any) -> dict[str, Any]:
    if device is not None and "device" not in kwargs and _accepts(fn, "device"):
        kwargs["device"] = device
    return kwargs


def _set_if_accepted(fn: Callable[..., Any], kwargs: dict[str, Any], name: str,
                     value: Any) -> None:
    """``kwargs[name] = value`` when ``value`` is set and ``fn`` takes ``name``."""
    if value is None:
        return
    if _accepts(fn, name):
        kwargs[name] = value
    else:
        log.warning("models: %s takes no %r; ignored", getattr(fn, "__qualname__", fn), name)


def _factory(cfg: Mapping[str, Any], device: Any) -> Any:
    fn = _import_factory(cfg["factory"])
    return fn(**_with_device(fn, dict(cfg["options"]), device))


def _build_segmentation(cfg: Mapping[str, Any], device: Any) -> Any:
    if cfg["kind"] == "factory":
        return _factory(cfg, device)

    kw = dict(cfg["options"])
    for k in ("detector", "sam", "local_files_only"):
        if cfg.get(k) is not None:
            kw[k] = cfg[k]
    if device is not None:
        kw["device"] = device
    return TextSegmenter.from_pretrained(**kw)


def _build_inpainting(cfg: Mapping[str, Any], device: Any) -> Any:
    if cfg["kind"] == "factory":
        return _factory(cfg, device)
    if cfg["kind"] == "opencv":
        from hoiguide.adapters.inpainting import OpenCVInpainter

        return OpenCVInpainter(**cfg["options"])

    kw = dict(cfg["options"])
    fn = FluxKontextInpainter.from_pretrained
    _set_if_accepted(fn, kw, "local_files_only", cfg.get("local_files_only"))
    model = cfg.get("model") or DEFAULT_MODELS["inpainting"]["model"]
    return fn(model, **_with_device(fn, kw, device))


def _build_geometry(cfg: Mapping[str, Any], device: Any) -> Any:
    if cfg["kind"] == "factory":
        return _factory(cfg, device)

    kw = dict(cfg["options"])
    fn = MoGeEstimator.from_pretrained
    _set_if_accepted(fn, kw, "local_files_only", cfg.get("local_files_only"))
    model = cfg.get("model") or DEFAULT_MODELS["geometry"]["model"]
    return fn(model, **_with_device(fn, kw, device))


def _build_hand(cfg: Mapping[str, Any], device: Any) -> Any:
    if cfg["kind"] == "factory":
        return _factory(cfg, device)
    if cfg["kind"] == "mediapipe":
        from hoiguide.adapters.mediapipe_hand import MediaPipeHandEstimator

        fn = MediaPipeHandEstimator
        return fn(**_with_device(fn, dict(cfg["options"]), device))
    missing = [k for k in ("checkpoint", "mano") if not cfg.get(k)]
    if missing:
        raise FileNotFoundError(
            f"HaMeR needs {' and '.join('hand.' + k for k in missing)}: the HaMeR checkpoint "
            f"(hamer.ckpt from HaMeR's release, no hub id) and the MANO right-hand model file "
            f"(MANO_RIGHT.pkl, registration at mano.is.tue.mpg.de); set them in your models "
            f"YAML, or use 'hand: {{kind: mediapipe}}' (no download; pip install "
            f"mediapipe==0.10.21 --no-deps)")

    fn = HaMeREstimator.from_pretrained
    return fn(cfg["checkpoint"], cfg["mano"], **_with_device(fn, dict(cfg["options"]), device))


def _build_generator(cfg: Mapping[str, Any], device: Any) -> Any:
    if cfg["kind"] == "factory":
        return _factory(cfg, device)
    kw = dict(cfg["options"])
    if cfg.get("dtype") is not None:
        kw["dtype"] = _torch_dtype(cfg["dtype"])
    if device is not None:
        kw["device"] = device
    if cfg["kind"] == "tiny":
        from hoiguide.backbones import tiny

        return tiny(**kw)

    for k in ("subfolder", "local_files_only"):
        if cfg.get(k) is not None:
            kw[k] = cfg[k]
    return HunyuanBackbone.from_pretrained(cfg.get("model") or
                                           DEFAULT_MODELS["generator"]["model"], **kw)


_BUILDERS: dict[str, Callable[[Mapping[str, Any], Any], Any]] = {
    "segmentation": _build_segmentation,
    "inpainting": _build_inpainting,
    "geometry": _build_geometry,
    "hand": _build_hand,
    "generator": _build_generator,
}
