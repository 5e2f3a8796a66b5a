"""Hunyuan3D-2 (PyPI ``hy3dgen`` 2.0.2) as a :class:`~hoiguide.backbones.FlowBackbone`.

Components are the real hy3dgen classes: the DiT ``Hunyuan3DDiT`` (velocity), the ``ShapeVAE``
decoder (post-KL linear + transformer + geometry cross-attention decoder), the DINOv2 image
conditioner ``SingleImageEncoder``, the ``FlowMatchEulerDiscreteScheduler`` (only its config is
read: the flow arithmetic is :mod:`hoiguide.guidance.flow`) and ``ImageProcessorV2``.

Conventions verified in hy3dgen's code (``shapegen/pipelines.py``, ``schedulers.py``):

* time: ``"data_at_1"``; the pipeline's grid is ``linspace(0, 1, N)`` (shifted by the
  scheduler's ``shift``) plus an appended ``1.0``, so its last of ``N`` model calls has zero
  step length; the DiT receives ``t = (sigma * 1000).to(dtype) / 1000``;
* noise: ``randn((B, *latent_shape), generator, device=generator's device, dtype)`` moved to the
  device (diffusers' ``randn_tensor``);
* classifier-free guidance: batch ``[cond; uncond]`` with an all-zero unconditional embedding,
  ``v = v_u + w (v_c - v_u)``; guidance-distilled models (``guidance_embed``) get ``w`` as an
  input instead;
* decoding: ``latent / scale_factor -> vae() -> geo_decoder(queries, latents)``; its logits are
  *positive inside*, so :meth:`HunyuanBackbone.decode_sdf` returns their negation; the dense grid
  spans ``[-box_v, box_v]^3`` with ``box_v = 1.01`` by default.

Loading a checkpoint folder never runs code the folder names: ``config.yaml`` is plain YAML
(``yaml.safe_load``) whose ``target:`` entries must be hy3dgen's own classes for their section
(an allow-list, checked before anything is imported or called; hy3dgen's own loader would call
whatever they name), and the weights are read with safetensors (preferred) or, for a ``.ckpt``,
``torch.load(weights_only=True)``, then checked (shapes, dtypes, finite values) before use.
Refusals are :class:`CheckpointError` (a ``ValueError``) naming the file.

``hy3dgen`` imports torchvision (and pymeshlab) at import time; see
:mod:`hoiguide.backbones._torchvision_shim` for how that is handled without installing them.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np
import torch

from hoiguide.backbones.base import (
    Bounds,
    TimeConvention,
    check_latent,
    normalize_bounds,
)
from hoiguide.geometry import grid_points

__all__ = ["HunyuanBackbone", "HunyuanCondition", "CheckpointNotFoundError",
           "CheckpointError", "import_hy3dgen", "INSTALL_HINT"]

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "hoiguide[hunyuan]"'
DEFAULT_SUBFOLDER = "hunyuan3d-dit-v2-0"
_WEIGHT_NAMES = ("model.{variant}.safetensors", "model.safetensors", "model.{variant}.ckpt",
                 "model.ckpt")


# --------------------------------------------------------------------------------------
# importing hy3dgen
# --------------------------------------------------------------------------------------


def _warm_up_dependencies() -> None:
    """Import what hy3dgen imports that also *checks* for torchvision, before the stand-in
    exists, so that transformers/diffusers record "no torchvision" and never see the stand-in."""
    import transformers
    from transformers.utils import import_utils as tf_import_utils

    if hasattr(tf_import_utils, "is_torchvision_available"):
        tf_import_utils.is_torchvision_available()  # cached: False without a real torchvision
    import diffusers.configuration_utils  # noqa: F401
    import diffusers.schedulers.scheduling_utils  # noqa: F401
    import diffusers.utils.torch_utils  # noqa: F401
    from transformers import (  # noqa: F401
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )
    del transformers


def import_hy3dgen() -> ModuleType:
    """Import and return ``hy3dgen.shapegen``.

    torchvision/pymeshlab stand-ins are provided during the import only where the real packages
    are missing or broken (see :mod:`hoiguide.backbones._torchvision_shim`).

    Raises:
        ImportError: hy3dgen or one of its dependencies is missing; the message names the extra
            to install.
    """
    mod = sys.modules.get("hy3dgen.shapegen")
    if mod is not None:
        return mod
    try:
        if importlib.util.find_spec("hy3dgen") is None:
            raise ModuleNotFoundError("No module named 'hy3dgen'", name="hy3dgen")
        _warm_up_dependencies()
        from hoiguide.backbones._torchvision_shim import hy3dgen_import_stand_ins

        with hy3dgen_import_stand_ins() as used:
            mod = importlib.import_module("hy3dgen.shapegen")
        if any(used.values()):
            log.debug("imported hy3dgen with stand-ins for %s",
                      [k for k, v in used.items() if v])
        return mod
    except ImportError as exc:
        raise ImportError(
            f"The Hunyuan3D-2 backbone needs the optional package `hy3dgen` (2.0.2) and its "
            f"shape-generation dependencies (diffusers, transformers, einops, opencv-python-"
            f"headless, ...): install them with `{INSTALL_HINT}` (slim alternative: `pip install "
            f"--no-deps hy3dgen==2.0.2` plus those packages). Import failed with: {exc}"
        ) from exc


# --------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------


def _tiny_config() -> dict[str, Any]:
    return {
        "model": {
            "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
            "params": {"in_channels": 8, "context_in_dim": 32, "hidden_size": 64,
                       "mlp_ratio": 2.0, "num_heads": 4, "depth": 1, "depth_single_blocks": 1,
                       "axes_dim": [16], "theta": 10000, "qkv_bias": True,
                       "guidance_embed": False},
        },
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {"num_latents": 32, "embed_dim": 8, "num_freqs": 8, "include_pi": False,
                       "heads": 4, "width": 64, "num_decoder_layers": 1, "qkv_bias": False,
                       "qk_norm": True, "scale_factor": 0.9990943042622529},
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {"main_image_encoder": {
                "type": "DinoImageEncoder",
                "kwargs": {"config": {
                    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
                    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 32,
                    "image_size": 56, "initializer_range": 0.02, "layer_norm_eps": 1e-6,
                    "layerscale_value": 1.0, "mlp_ratio": 2, "model_type": "dinov2",
                    "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 1,
                    "patch_size": 14, "qkv_bias": True, "use_swiglu_ffn": False},
                    "image_size": 56},
            }},
        },
        "scheduler": {
            "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000},
        },
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
            "params": {"size": 64, "border_ratio": 0.15},
        },
    }


def _reference_config() -> dict[str, Any]:
    return {
        "model": {
            "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
            "params": {"in_channels": 64, "context_in_dim": 1536, "hidden_size": 1024,
                       "mlp_ratio": 4.0, "num_heads": 16, "depth": 16,
                       "depth_single_blocks": 32, "axes_dim": [64], "theta": 10000,
                       "qkv_bias": True, "guidance_embed": False},
        },
        "vae": {
            "target": "hy3dgen.shapegen.models.ShapeVAE",
            "params": {"num_latents": 3072, "embed_dim": 64, "num_freqs": 8,
                       "include_pi": False, "heads": 16, "width": 1024,
                       "num_decoder_layers": 16, "qkv_bias": False, "qk_norm": True,
                       "scale_factor": 0.9990943042622529},
        },
        "conditioner": {
            "target": "hy3dgen.shapegen.models.SingleImageEncoder",
            "params": {"main_image_encoder": {
                "type": "DinoImageEncoder",
                "kwargs": {"config": {
                    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
                    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 1536,
                    "image_size": 518, "initializer_range": 0.02, "layer_norm_eps": 1e-6,
                    "layerscale_value": 1.0, "mlp_ratio": 4, "model_type": "dinov2",
                    "num_attention_heads": 24, "num_channels": 3, "num_hidden_layers": 40,
                    "patch_size": 14, "qkv_bias": True, "use_swiglu_ffn": True},
                    "image_size": 518},
            }},
        },
        "scheduler": {
            "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000},
        },
        "image_processor": {
            "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
            "params": {"size": 512, "border_ratio": 0.15},
        },
    }


_SECTIONS = ("model", "vae", "conditioner", "scheduler", "image_processor")

# The only classes a config's ``target:`` may name, per section: hy3dgen 2.0.2's own classes
# that Hunyuan3D-2 checkpoints (2.0, mini, mv, fast/turbo) use, and that the bundled tiny
# generator uses. Written as "module:Class" of the module that DEFINES the class; a target may
# spell it through any module of hy3dgen.shapegen that re-exports it (hub configs write
# ``hy3dgen.shapegen.models.Hunyuan3DDiT``): the resolved object must be one of these classes.
_ALLOWED_TARGETS: dict[str, tuple[str, ...]] = {
    "model": ("hy3dgen.shapegen.models.denoisers.hunyuan3ddit:Hunyuan3DDiT",),
    "vae": ("hy3dgen.shapegen.models.autoencoders.model:ShapeVAE",),
    "conditioner": ("hy3dgen.shapegen.models.conditioner:SingleImageEncoder",
                    "hy3dgen.shapegen.models.conditioner:DualImageEncoder"),
    "scheduler": ("hy3dgen.shapegen.schedulers:FlowMatchEulerDiscreteScheduler",
                  "hy3dgen.shapegen.schedulers:ConsistencyFlowMatchEulerDiscreteScheduler"),
    "image_processor": ("hy3dgen.shapegen.preprocessors:ImageProcessorV2",
                        "hy3dgen.shapegen.preprocessors:MVImageProcessorV2"),
}
_TARGET_PACKAGE = "hy3dgen.shapegen"
_TARGET_SYNTAX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CheckpointError(ValueError):
    """A checkpoint (config or weight file) that hoiguide refuses to load.

    Raised for a config entry naming code outside the allow-list (``model.target: os.system``),
    a malformed config, and a weight file that cannot be read, holds NaN/inf values, or whose
    tensors do not fit the architecture (missing/extra tensors, wrong shape or dtype). The
    message is one line naming the file (and the config entry); ``path`` is that file.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


def _load_config(config: Mapping[str, Any] | str | os.PathLike,
                 source: str | None = None) -> dict[str, Any]:
    """Read (``yaml.safe_load``: plain data only) and check a hub-style config; every
    ``target:`` is checked against the allow-list here, before anything is built."""
    if isinstance(config, (str, os.PathLike)):
        import yaml

        source = source or os.fspath(config)
        try:
            with open(config, "r", encoding="utf-8") as f:
                config = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{source}: not valid YAML ({first})", source) from None
        except UnicodeDecodeError:
            raise CheckpointError(f"{source}: not a text (UTF-8 YAML) file", source) from None
    source = source or "config"
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source}: expected a mapping with sections {list(_SECTIONS)} "
                              f"(or a path to such a YAML file), got {type(config).__name__}",
                              None if source == "config" else source)
    missing = [s for s in _SECTIONS if s not in config]
    if missing:
        raise CheckpointError(f"{source}: missing section(s) {missing}; a Hunyuan3D-2 config has "
                              f"{list(_SECTIONS)}, each {{target: dotted.Class, params: {{...}}}}",
                              None if source == "config" else source)
    for s in _SECTIONS:
        entry = config[s]
        if not isinstance(entry, Mapping) or "target" not in entry:
            raise CheckpointError(f"{source}: {s}: expected {{target: dotted.Class, params: "
                                  f"{{...}}}}, got {entry!r}",
                                  None if source == "config" else source)
        params = entry.get("params")
        if params is not None and (not isinstance(params, Mapping)
                                   or not all(isinstance(k, str) for k in params)):
            raise CheckpointError(f"{source}: {s}.params: expected a mapping of keyword "
                                  f"arguments, got {params!r}",
                                  None if source == "config" else source)
        _resolve_target(s, entry["target"], source)
    return copy.deepcopy(dict(config))


def _allowed_classes(section: str) -> dict[type, str]:
    """The allowed classes of ``section``. Only the fixed modules of :data:`_ALLOWED_TARGETS`
    are imported (installed hy3dgen code, e.g. ``hy3dgen.shapegen.schedulers``, which
    ``import_hy3dgen`` does not load), never a module named by a config."""
    out: dict[type, str] = {}
    for spec in _ALLOWED_TARGETS[section]:
        mod_name, name = spec.split(":")
        module = sys.modules.get(mod_name)
        if module is None and "hy3dgen.shapegen" in sys.modules:
            from hoiguide.backbones._torchvision_shim import hy3dgen_import_stand_ins

            try:
                with hy3dgen_import_stand_ins():
                    module = importlib.import_module(mod_name)
            except ImportError as exc:  # a broken hy3dgen install: the class is not allowed
                log.debug("cannot import %s: %s", mod_name, exc)
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            out[cls] = f"{mod_name}.{name}"
    return out


def _resolve_target(section: str, target: Any, source: str) -> type:
    """The class a config's ``<section>.target`` names, if it is on the allow-list.

    Nothing named by the config is imported or called: the module part must be a module of
    ``hy3dgen.shapegen`` that is already loaded (:func:`import_hy3dgen` and the allow-list's
    own modules), and the attribute must be one of :data:`_ALLOWED_TARGETS` ``[section]`` (by
    identity, so re-exports work).

    Raises:
        CheckpointError: naming the entry, the file and what is allowed.
    """
    allowed = _allowed_classes(section)
    names = sorted({n.rsplit(".", 1)[-1] for n in allowed.values()}
                   or {spec.split(":")[1] for spec in _ALLOWED_TARGETS[section]})
    where = None if source == "config" else source

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(
            f"{source}: {section}.target {target!r} is refused ({why}): a Hunyuan3D-2 config "
            f"may name only hy3dgen's own {section} class{'es' if len(names) > 1 else ''} "
            f"({', '.join(names)}, under {_TARGET_PACKAGE}); hoiguide never runs other code "
            f"named in a checkpoint folder. For another architecture, build the modules "
            f"yourself and use HunyuanBackbone.from_pipeline(...)", where)

    if not isinstance(target, str) or not _TARGET_SYNTAX.match(target):
        raise refuse("not a dotted module.Class name")
    mod_name, attr = target.rsplit(".", 1)
    if not (mod_name == _TARGET_PACKAGE or mod_name.startswith(_TARGET_PACKAGE + ".")):
        raise refuse(f"outside {_TARGET_PACKAGE}")
    module = sys.modules.get(mod_name)
    obj = getattr(module, attr, None) if isinstance(module, ModuleType) else None
    if not isinstance(obj, type) or obj not in allowed:
        what = ("not a module hy3dgen has loaded" if module is None else
                "no such name" if obj is None else
                "not a class" if not isinstance(obj, type) else f"not a {section} class")
        raise refuse(what)
    return obj


def _instantiate(section: str, cfg: Mapping[str, Any], source: str) -> Any:
    """``cls(**params)`` for an allowed ``target`` (hy3dgen's ``instantiate_from_config``
    without the arbitrary import: hy3dgen 2.0.2 does not nest targets, the params are data)."""
    cls = _resolve_target(section, cfg[section]["target"], source)
    params = dict(cfg[section].get("params") or {})
    try:
        return cls(**params)
    except (TypeError, ValueError, KeyError) as exc:  # params that do not fit the class
        raise CheckpointError(f"{source}: {section}.params do not fit {cls.__name__} "
                              f"({_first_line(exc)})",
                              None if source == "config" else source) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _read_weights(path: Path) -> dict[str, dict[str, Any]]:
    """The tensors of a checkpoint grouped by module prefix (``model``, ``vae``,
    ``conditioner``). ``.safetensors`` (preferred: tensors only, nothing to execute) or
    ``.ckpt`` read with ``torch.load(weights_only=True)`` (a restricted unpickler).

    Raises:
        CheckpointError: the file cannot be read, naming it.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 -- SafetensorError, OSError, ...
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})"
                                  f"; download it again or re-save it with "
                                  f"HunyuanBackbone.save_pretrained", path) from None
        groups: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            prefix, _, rest = key.partition(".")
            groups.setdefault(prefix, {})[rest] = value
        return groups
    log.warning("%s: reading a .ckpt (pickle) checkpoint with torch.load(weights_only=True); "
                "prefer model.safetensors (tensors only, nothing to unpickle)", path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable tensors-only torch checkpoint "
                              f"({_first_line(exc)}); prefer model.safetensors", path) from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, Mapping) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping {{'model': state_dict, 'vae': "
                              f"state_dict, 'conditioner': state_dict}}, got "
                              f"{type(obj).__name__}", path)
    return {str(k): dict(v) for k, v in obj.items()}


def _load_checked(module: torch.nn.Module, state: Mapping[str, Any] | None, section: str,
                  path: Path, config_path: str) -> None:
    """``module.load_state_dict(state)`` after checking every tensor: present, no extra ones,
    same shape, a floating dtype where the module has one (same dtype otherwise), finite.

    Raises:
        CheckpointError: the first problem, naming the file and the tensor.
    """
    if not state:
        raise CheckpointError(f"{path}: no '{section}.*' tensors; a Hunyuan3D-2 checkpoint has "
                              f"model.*, vae.* and conditioner.* tensors", path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {section}.{missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {section}.{extra[0]})")
        raise CheckpointError(f"{path}: the {section} tensors do not fit the architecture in "
                              f"{config_path}: {', '.join(parts)}", path)
    for key, ref in expected.items():
        t = state[key]
        name = f"{section}.{key}"
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is a {type(t).__name__}, not a tensor", path)
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(t.shape)}, the "
                                  f"architecture in {config_path} expects {tuple(ref.shape)}",
                                  path)
        if ref.is_floating_point():
            if t.dtype not in _WEIGHT_DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}; expected a "
                                      f"floating dtype (float16, bfloat16, float32, float64)",
                                      path)
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int(finite.numel() - int(finite.sum()))
                raise CheckpointError(f"{path}: tensor {name} holds {bad} NaN/inf value"
                                      f"{'s' if bad != 1 else ''} of {t.numel()}; the file is "
                                      f"damaged or not a trained checkpoint", path)
        elif t.dtype != ref.dtype:
            raise CheckpointError(f"{path}: tensor {name} has dtype {t.dtype}, expected "
                                  f"{ref.dtype}", path)
    module.load_state_dict(dict(state))


# --------------------------------------------------------------------------------------
# checkpoint lookup
# --------------------------------------------------------------------------------------


class CheckpointNotFoundError(FileNotFoundError):
    """No Hunyuan3D-2 checkpoint was found; the message lists every place that was searched."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_weights(folder: Path, variant: str | None) -> Path | None:
    names = [n.format(variant=variant) for n in _WEIGHT_NAMES if variant or "{variant}" not in n]
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def _weights_hint(variant: str | None) -> str:
    v = f"model.{variant}.safetensors or " if variant else ""
    return f"config.yaml and {v}model.safetensors"


def resolve_checkpoint(name_or_path: str | os.PathLike, subfolder: str | None = DEFAULT_SUBFOLDER,
                       *, variant: str | None = "fp16",
                       local_files_only: bool | None = None) -> tuple[Path, Path]:
    """Find ``(config.yaml, weights file)`` for a local folder or a hub id.

    Order: (1) ``name_or_path`` as a local folder (its ``subfolder``, then the folder itself);
    (2) ``$HY3DGEN_MODELS/<id>/<subfolder>`` (default ``~/.cache/hy3dgen``, as hy3dgen);
    (3) the Hugging Face cache, then the hub, unless offline (``local_files_only=True`` or
    ``HF_HUB_OFFLINE=1``: cache only).

    Raises:
        CheckpointNotFoundError: listing every place looked at and how to fix it.
    """
    name = os.fspath(name_or_path)
    sub = subfolder or ""
    looked: list[str] = []

    def check(folder: Path, label: str) -> tuple[Path, Path] | None:
        cfg = folder / "config.yaml"
        if not folder.is_dir():
            looked.append(f"{folder} ({label}): no such folder")
            return None
        w = _find_weights(folder, variant)
        if not cfg.is_file() or w is None:
            looked.append(f"{folder} ({label}): folder exists but lacks "
                          f"{_weights_hint(variant)}")
            return None
        return cfg, w

    p = Path(name).expanduser()
    path_like = p.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1
    if p.is_dir():
        candidates = ([(p / sub, "local folder / subfolder")] if sub else []) + [
            (p, "local folder")]
        for folder, label in candidates:
            found = check(folder, label)
            if found:
                return found
    elif path_like:
        looked.append(f"{p} (local folder): no such folder")
    if not path_like:
        base = os.environ.get("HY3DGEN_MODELS", "~/.cache/hy3dgen")
        found = check(Path(os.path.expanduser(os.path.join(base, name, sub))),
                      "$HY3DGEN_MODELS" if "HY3DGEN_MODELS" in os.environ
                      else "~/.cache/hy3dgen, hy3dgen's default; set $HY3DGEN_MODELS to change")
        if found:
            return found
        offline = bool(local_files_only) or _env_flag("HF_HUB_OFFLINE")
        try:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(repo_id=name, allow_patterns=[f"{sub}/*" if sub else "*"],
                                     local_files_only=offline)
            found = check(Path(snap) / sub, "Hugging Face " + ("cache" if offline else "hub"))
            if found:
                return found
        except ImportError:
            looked.append("Hugging Face hub: huggingface_hub is not installed")
        except Exception as exc:  # offline cache miss, no network, unknown repo, ...
            where = "cache (offline: HF_HUB_OFFLINE=1 or local_files_only)" if offline else "hub"
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            looked.append(f"Hugging Face {where} for {name!r}: {type(exc).__name__}: {msg}")
    listing = "\n".join(f"  - {entry}" for entry in looked)
    try:
        import importlib.util
        have_hy3dgen = importlib.util.find_spec("hy3dgen") is not None
    except (ImportError, ValueError):
        have_hy3dgen = False
    steps = [] if have_hy3dgen else [f"install the extra with `{INSTALL_HINT}`"]
    if path_like:
        steps.append(f"put {_weights_hint(variant)} in {p} or its {sub!r} subfolder")
    else:
        steps.append(f"download the weights: `hf download {name} --include "
                     f"'{sub or DEFAULT_SUBFOLDER}/*' --local-dir /path/to/{name.split('/')[-1]}`"
                     f" and load HunyuanBackbone.from_pretrained('/path/to/"
                     f"{name.split('/')[-1]}'), or set HY3DGEN_MODELS=/path/to/models so that "
                     f"$HY3DGEN_MODELS/{name}/{sub} holds them")
    raise CheckpointNotFoundError(
        f"Could not find Hunyuan3D-2 weights for {name!r} (subfolder {sub!r}). Looked in:\n"
        f"{listing}\nTo fix: " + "; then ".join(steps) + ".")


# --------------------------------------------------------------------------------------
# the backbone
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HunyuanCondition:
    """Encoded image condition: hy3dgen's context dicts (``{"main": (B, T, C)}``) on the device.

    ``uncond`` is the all-zero unconditional embedding used for classifier-free guidance.
    """

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor]

    @property
    def batch_size(self) -> int:
        return int(next(iter(self.cond.values())).shape[0])


def _default_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _default_dtype(dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    return dtype


def _expand_batch(t: torch.Tensor, b: int, what: str) -> torch.Tensor:
    if t.shape[0] == b:
        return t
    if t.shape[0] == 1:
        return t.expand(b, *t.shape[1:])
    raise ValueError(f"{what}: condition has batch {t.shape[0]}, latent has batch {b}; expected "
                     f"equal batches or a condition of batch 1")


class HunyuanBackbone:
    """Hunyuan3D-2's shape generator behind the :class:`~hoiguide.backbones.FlowBackbone` protocol.

    Build it with :meth:`from_pretrained` (local folder or hub id), :meth:`from_pipeline` (an
    existing ``hy3dgen`` pipeline; modules are shared, not copied) or :meth:`from_config` (random
    weights, e.g. :meth:`tiny_config` for tests). All modules are put in eval mode with
    ``requires_grad_(False)``: gradients flow to inputs only.

    Frames: the generator frame of Hunyuan3D-2 (shapes normalised to about ``[-1, 1]^3``); the
    decode box is ``[-box_v, box_v]^3`` (``box_v = 1.01`` as hy3dgen's pipeline).

    Attributes:
        latent_shape: ``(num_latents, embed_dim)``, e.g. ``(3072, 64)``.
        time_convention: ``"data_at_1"``.
        bounds: ``((-box_v,)*3, (box_v,)*3)``.
        default_resolution: grid points per axis for :func:`hoiguide.guidance.latent_to_mesh`
            (385 = hy3dgen's default octree resolution 384 + 1).
        chunk_size: query points per geometry-decoder call in :meth:`decode_sdf`.
        config: the hub-style config dict when known (needed by :meth:`save_pretrained`).
        guidance_resolution: grid points per axis of the SDF decoded in guidance's inner loop
            (``None``: the engine's default, ``min(default_resolution, 65)``).
    """

    time_convention = TimeConvention.DATA_AT_1

    def __init__(self, *, model: torch.nn.Module, vae: torch.nn.Module,
                 conditioner: torch.nn.Module, scheduler: Any, image_processor: Any,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 box_v: float = 1.01, default_resolution: int = 385, chunk_size: int = 8000,
                 config: Mapping[str, Any] | None = None,
                 guidance_resolution: int | None = None) -> None:
        self.device = _default_device(device)
        self.dtype = _default_dtype(dtype, self.device)
        for name, m in (("model", model), ("vae", vae), ("conditioner", conditioner)):
            if not isinstance(m, torch.nn.Module):
                raise TypeError(f"{name}: expected a torch.nn.Module, got {type(m).__name__}")
        if not hasattr(vae, "geo_decoder") or not hasattr(vae, "latent_shape"):
            raise TypeError(f"vae: expected a hy3dgen ShapeVAE (with geo_decoder and "
                            f"latent_shape), got {type(vae).__name__}")
        for m in (model, vae, conditioner):  # same order as hy3dgen's pipeline.to()
            m.to(dtype=self.dtype)
            m.to(self.device)
            m.eval()
            m.requires_grad_(False)
        self.model, self.vae, self.conditioner = model, vae, conditioner
        self.scheduler, self.image_processor = scheduler, image_processor
        self.latent_shape = tuple(int(s) for s in vae.latent_shape)
        in_ch = getattr(model, "in_channels", self.latent_shape[-1])
        if in_ch != self.latent_shape[-1]:
            raise ValueError(f"model.in_channels={in_ch} does not match the VAE latent channels "
                             f"{self.latent_shape[-1]} (latent_shape {self.latent_shape})")
        if not box_v > 0:
            raise ValueError(f"box_v: expected > 0, got {box_v}")
        if int(default_resolution) < 2:
            raise ValueError(f"default_resolution: expected >= 2, got {default_resolution}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        if guidance_resolution is not None and int(guidance_resolution) < 2:
            raise ValueError(f"guidance_resolution: expected >= 2 or None, got "
                             f"{guidance_resolution}")
        self.guidance_resolution = None if guidance_resolution is None \
            else int(guidance_resolution)
        self.box_v = float(box_v)
        self.bounds: Bounds = normalize_bounds(self.box_v)
        self.default_resolution = int(default_resolution)
        self.chunk_size = int(chunk_size)
        self.config = copy.deepcopy(dict(config)) if config is not None else None
        sched_cfg = getattr(scheduler, "config", None)
        self.num_train_timesteps = int(getattr(sched_cfg, "num_train_timesteps", 1000))
        self._shift = float(getattr(sched_cfg, "shift", 1.0))
        if getattr(sched_cfg, "use_dynamic_shifting", False):
            raise NotImplementedError("schedulers with use_dynamic_shifting=True are not "
                                      "supported (hy3dgen's Hunyuan3D-2 configs do not use it)")

    def __repr__(self) -> str:
        n = sum(p.numel() for m in (self.model, self.vae, self.conditioner)
                for p in m.parameters())
        return (f"HunyuanBackbone(latent_shape={self.latent_shape}, params={n / 1e6:.2f}M, "
                f"device={self.device}, dtype={self.dtype}, box_v={self.box_v})")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_pipeline(cls, pipeline: Any, *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None, **kwargs: Any) -> "HunyuanBackbone":
        """Wrap an existing ``hy3dgen`` ``Hunyuan3DDiTFlowMatchingPipeline`` (modules are shared).

        ``device``/``dtype`` default to the pipeline's own; other keyword arguments go to the
        constructor (``box_v``, ``default_resolution``, ``chunk_size``, ``config``). The
        pipeline's modules are switched to eval mode and ``requires_grad_(False)``.
        """
        for attr in ("model", "vae", "conditioner", "scheduler", "image_processor"):
            if not hasattr(pipeline, attr):
                raise TypeError(f"from_pipeline: expected a hy3dgen Hunyuan3DDiT pipeline with "
                                f".{attr}, got {type(pipeline).__name__}")
        return cls(model=pipeline.model, vae=pipeline.vae, conditioner=pipeline.conditioner,
                   scheduler=pipeline.scheduler, image_processor=pipeline.image_processor,
                   device=device if device is not None else getattr(pipeline, "device", None),
                   dtype=dtype if dtype is not None else getattr(pipeline, "dtype", None),
                   **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike, *,
                    device: torch.device | str | None = "cpu",
                    dtype: torch.dtype | None = torch.float32, seed: int = 0,
                    init_device: torch.device | str | None = None,
                    **kwargs: Any) -> "HunyuanBackbone":
        """Build the real hy3dgen classes from a hub-style config with random weights.

        Args:
            config: dict (or YAML path) with sections model / vae / conditioner / scheduler /
                image_processor, each ``{target: dotted.Class, params: {...}}``; e.g.
                :meth:`tiny_config` or :meth:`reference_config`.
            device, dtype: where and in which precision the backbone runs.
            seed: seeds the weight initialisation (the global RNG state is left untouched).
            init_device: where parameters are created and initialised (default CPU; pass the
                GPU to build a full-size model quickly).
            **kwargs: constructor options (``box_v``, ``default_resolution``, ``chunk_size``,
                ``guidance_resolution``).
        Raises:
            ImportError: hy3dgen missing.
            CheckpointError: a ``target:`` outside the allow-list of hy3dgen's classes (see
                :meth:`from_pretrained`) or a malformed config.
        """
        import_hy3dgen()
        source = os.fspath(config) if isinstance(config, (str, os.PathLike)) else "config"
        cfg = _load_config(config, source)  # every target checked against the allow-list
        init_dev = torch.device(init_device) if init_device is not None else torch.device("cpu")
        fork = [init_dev.index or 0] if init_dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed)
            with init_dev:
                model = _instantiate("model", cfg, source)
                vae = _instantiate("vae", cfg, source)
                conditioner = _instantiate("conditioner", cfg, source)
        scheduler = _instantiate("scheduler", cfg, source)
        image_processor = _instantiate("image_processor", cfg, source)
        return cls(model=model, vae=vae, conditioner=conditioner, scheduler=scheduler,
                   image_processor=image_processor, device=device, dtype=dtype, config=cfg,
                   **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike,
                        subfolder: str | None = DEFAULT_SUBFOLDER, *,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, variant: str | None = "fp16",
                        local_files_only: bool | None = None,
                        **kwargs: Any) -> "HunyuanBackbone":
        """Load Hunyuan3D-2 weights from a local folder or a hub id (e.g. ``tencent/Hunyuan3D-2``).

        The folder layout is hy3dgen's: ``<folder>/<subfolder>/config.yaml`` (sections model /
        vae / conditioner / scheduler / image_processor) and ``model.fp16.safetensors`` (keys
        prefixed ``model.``, ``vae.``, ``conditioner.``); ``model.safetensors`` is accepted too,
        as is a folder that holds the files directly. Lookup order: the local folder,
        ``$HY3DGEN_MODELS/<id>/<subfolder>``, the Hugging Face cache, the hub (skipped when
        ``local_files_only`` or ``HF_HUB_OFFLINE=1``). Loading does what hy3dgen's
        ``Hunyuan3DDiTFlowMatchingPipeline.from_single_file`` does (same classes, same weights,
        explicit device and dtype) but never runs code named by the folder:

        * ``config.yaml`` is read with ``yaml.safe_load`` and each section's ``target:`` must be
          one of hy3dgen's own classes for that section (``Hunyuan3DDiT``; ``ShapeVAE``;
          ``SingleImageEncoder`` / ``DualImageEncoder``; ``FlowMatchEulerDiscreteScheduler`` /
          ``ConsistencyFlowMatchEulerDiscreteScheduler``; ``ImageProcessorV2`` /
          ``MVImageProcessorV2``); anything else (``os.system``, a function of hy3dgen, another
          package) is refused before anything is imported or called;
        * weights are read with safetensors (preferred), or a ``.ckpt`` with
          ``torch.load(weights_only=True)`` (tensors only; a warning recommends safetensors);
        * every tensor must be present, of the architecture's shape, of a floating dtype
          (float16/bfloat16/float32/float64) and finite.

        Args:
            device: default CUDA when available, else CPU. dtype: default float16 on CUDA,
                float32 on CPU.
            **kwargs: constructor options (``box_v``, ``default_resolution``, ``chunk_size``,
                ``guidance_resolution``).
        Raises:
            ImportError: hy3dgen missing (names the extra to install).
            CheckpointNotFoundError: nothing found; lists the places searched.
            CheckpointError: (a ``ValueError``) a config entry outside the allow-list, a
                malformed config, or an unreadable / non-finite / ill-fitting weight file;
                one line naming the file (and the entry or tensor).
        """
        import_hy3dgen()
        config_path, weights = resolve_checkpoint(name_or_path, subfolder, variant=variant,
                                                  local_files_only=local_files_only)
        dev = _default_device(device)
        dt = _default_dtype(dtype, dev)
        # 1. the config: plain YAML data, every target on the allow-list (nothing runs before)
        cfg = _load_config(config_path, os.fspath(config_path))
        # 2. the tensors: read and grouped; checked against the modules below
        log.info("loading Hunyuan3D-2 from %s (%s, %s)", weights, dev, dt)
        state = _read_weights(weights)
        unknown = sorted(set(state) - {"model", "vae", "conditioner"})
        if unknown:
            log.warning("%s: ignoring tensors with prefixes %s (not model/vae/conditioner)",
                        weights, unknown)
        # 3. the modules (hy3dgen's classes, built as its from_single_file does; the global
        # RNG is left untouched by their random initialisation), then the checked weights
        src = os.fspath(config_path)
        with torch.random.fork_rng(devices=[]):
            model = _instantiate("model", cfg, src)
            _load_checked(model, state.get("model"), "model", weights, src)
            vae = _instantiate("vae", cfg, src)
            _load_checked(vae, state.get("vae"), "vae", weights, src)
            conditioner = _instantiate("conditioner", cfg, src)
            if "conditioner" in state:  # as hy3dgen: optional (e.g. a pretrained DINOv2 only)
                _load_checked(conditioner, state["conditioner"], "conditioner", weights, src)
        image_processor = _instantiate("image_processor", cfg, src)
        scheduler = _instantiate("scheduler", cfg, src)
        del state
        return cls(model=model, vae=vae, conditioner=conditioner, scheduler=scheduler,
                   image_processor=image_processor, device=dev, dtype=dt, config=cfg, **kwargs)

    @staticmethod
    def tiny_config() -> dict[str, Any]:
        """A tiny config of the real classes (DiT width 64 with one double and one single block,
        VAE width 64 with one layer, 32 latents x 8 channels, DINOv2 width 32 with one layer at
        56 px): a whole image -> mesh run takes about a second on a CPU."""
        return _tiny_config()

    @staticmethod
    def reference_config() -> dict[str, Any]:
        """The full-size Hunyuan3D-2 (``hunyuan3d-dit-v2-0``) architecture: DiT hidden 1024 with
        16 double + 32 single blocks (~1.1B parameters), VAE decoder width 1024 with 16 layers
        on 3072 x 64 latents, DINOv2-giant conditioner at 518 px (1370 tokens)."""
        return _reference_config()

    # ---------------------------------------------------------------- export
    def to_pipeline(self) -> Any:
        """A hy3dgen ``Hunyuan3DDiTFlowMatchingPipeline`` sharing this backbone's modules."""
        hs = import_hy3dgen()
        return hs.Hunyuan3DDiTFlowMatchingPipeline(
            vae=self.vae, model=self.model, scheduler=self.scheduler,
            conditioner=self.conditioner, image_processor=self.image_processor,
            device=self.device, dtype=self.dtype)

    def save_pretrained(self, folder: str | os.PathLike, subfolder: str | None = DEFAULT_SUBFOLDER,
                        *, variant: str | None = "fp16") -> Path:
        """Write a checkpoint in hy3dgen's hub layout that :meth:`from_pretrained` (and hy3dgen's
        own loader) reads: ``<folder>/<subfolder>/config.yaml`` and ``model.<variant>.safetensors``
        with keys prefixed ``model.``, ``vae.``, ``conditioner.``. Tensors are saved in the
        backbone's dtype. Returns the directory written."""
        if self.config is None:
            raise ValueError("save_pretrained needs the config this backbone was built from; it "
                             "is unknown for a backbone made with from_pipeline(...) without "
                             "config=...")
        import yaml
        from safetensors.torch import save_file

        out = Path(folder).expanduser() / (subfolder or "")
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("model", self.model), ("vae", self.vae),
                               ("conditioner", self.conditioner)):
            for k, v in module.state_dict().items():
                tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous().clone()
        name = f"model.{variant}.safetensors" if variant else "model.safetensors"
        save_file(tensors, str(out / name))
        with open(out / "config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(self.config, f, sort_keys=False)
        log.info("wrote Hunyuan3D-2 checkpoint (%d tensors) to %s", len(tensors), out)
        return out

    # ---------------------------------------------------------------- protocol
    def sigmas(self, num_steps: int) -> torch.Tensor:
        """hy3dgen's grid: ``shift``-ed ``linspace(0, 1, num_steps)`` plus an appended 1.0.

        ``num_steps + 1`` float32 values on the CPU; the last step (1.0 -> 1.0) has zero length,
        exactly as in ``Hunyuan3DDiTFlowMatchingPipeline`` (``num_steps`` model calls,
        ``num_steps - 1`` moves).
        """
        if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps: expected an int >= 1, got {num_steps!r}")
        s = np.linspace(0, 1, int(num_steps))
        s = self._shift * s / (1 + (self._shift - 1) * s)
        s = torch.from_numpy(s).to(torch.float32)
        return torch.cat([s, torch.ones(1)])

    def _prepare_image(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        def to_pil(img: Any) -> Any:
            if isinstance(img, Image.Image):
                return img
            if isinstance(img, torch.Tensor):
                img = img.detach().cpu().numpy()
            if isinstance(img, np.ndarray):
                if img.ndim != 3 or img.shape[-1] not in (3, 4):
                    raise ValueError(f"image: expected an (H, W, 3|4) array, got shape "
                                     f"{img.shape}")
                if img.dtype != np.uint8:
                    if not np.issubdtype(img.dtype, np.floating):
                        raise TypeError(f"image: expected uint8 or float in [0, 1], got "
                                        f"{img.dtype}")
                    img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
                return Image.fromarray(np.ascontiguousarray(img),
                                       "RGBA" if img.shape[-1] == 4 else "RGB")
            raise TypeError(f"image: expected a PIL.Image or an (H, W, 3|4) uint8 array, got "
                            f"{type(img).__name__}")

        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("image: got an empty list")
        outs = []
        for img in images:
            pil = to_pil(img)
            if pil.mode == "RGBA" and pil.getchannel("A").getextrema()[1] == 0:
                raise ValueError("image: the alpha channel is empty (no object pixels)")
            outs.append(self.image_processor(pil))
        return (torch.cat([o["image"] for o in outs], 0),
                torch.cat([o["mask"] for o in outs], 0))

    @torch.no_grad()
    def encode_condition(self, image: Any) -> HunyuanCondition:
        """Encode an object image (or a list of them) with hy3dgen's image processor + DINOv2.

        Args:
            image: ``PIL.Image`` (RGBA: alpha is the object mask; RGB: whole image) or an
                ``(H, W, 3|4)`` uint8 array (float arrays in ``[0, 1]`` are accepted), or a list.
                The processor re-centres the object with a 15% border, as hy3dgen does.
        Returns:
            :class:`HunyuanCondition` with ``(B, T, C)`` context tensors on the device.
        """
        img, mask = self._prepare_image(image)
        cond = self.conditioner(image=img, mask=mask)
        uncond = self.conditioner.unconditional_embedding(img.shape[0], mask=mask)
        return HunyuanCondition(cond=dict(cond), uncond=dict(uncond))

    def velocity(self, latent: torch.Tensor, sigma: float | torch.Tensor,
                 condition: HunyuanCondition, guidance_scale: float | None = None
                 ) -> torch.Tensor:
        """DiT velocity ``dx/dsigma`` (data_at_1) with classifier-free guidance, as hy3dgen.

        Args:
            latent: ``(B, num_latents, channels)``; cast to the backbone dtype.
            sigma: flow time in ``[0, 1]`` (float, 0-d or ``(B,)``).
            condition: from :meth:`encode_condition`.
            guidance_scale: ``None``: conditional only; ``w``: ``v_u + w (v_c - v_u)`` computed
                from one batch ``[cond; uncond]`` (guidance-distilled models get ``w`` as input).
        Returns:
            ``(B, num_latents, channels)`` in the backbone dtype.
        """
        latent = check_latent(self, latent)
        if not isinstance(condition, HunyuanCondition):
            raise TypeError(f"condition: expected the result of encode_condition(), got "
                            f"{type(condition).__name__}")
        x = latent.to(device=self.device, dtype=self.dtype)
        b = x.shape[0]
        distilled = getattr(self.model, "guidance_embed", False) is True
        cfg = guidance_scale is not None and not distilled
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        if s.ndim > 1 or (s.ndim == 1 and s.shape[0] not in (1, b)):
            raise ValueError(f"sigma: expected a float, 0-d or ({b},) tensor, got shape "
                             f"{tuple(s.shape)}")
        t = (s * self.num_train_timesteps).reshape(-1).expand(b)
        cond = {k: _expand_batch(v, b, "velocity") for k, v in condition.cond.items()}
        if cfg:
            uncond = {k: _expand_batch(v, b, "velocity") for k, v in condition.uncond.items()}
            contexts = {k: torch.cat([cond[k], uncond[k]], 0).to(self.dtype) for k in cond}
            x_in, t = torch.cat([x, x], 0), torch.cat([t, t], 0)
        else:
            contexts, x_in = cond, x
        t = t.to(x.dtype) / self.num_train_timesteps
        guidance = None
        if distilled:
            w = 1.0 if guidance_scale is None else float(guidance_scale)
            guidance = torch.tensor([w] * b, device=self.device, dtype=self.dtype)
        out = self.model(x_in, t, contexts, guidance=guidance)
        if cfg:
            v_c, v_u = out.chunk(2)
            out = v_u + guidance_scale * (v_c - v_u)
        return out

    def _geo_chunk(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.geo_decoder(queries=queries, latents=latents)[..., 0]

    def decode_sdf(self, latent: torch.Tensor, points: torch.Tensor, *,
                   chunk_size: int | None = None, checkpoint: bool = True) -> torch.Tensor:
        """Negative-inside field at query points, through the VAE transformer and geometry decoder.

        Args:
            latent: ``(B, num_latents, channels)`` clean latent (diffusion space, i.e. before the
                division by ``vae.scale_factor``, which happens here).
            points: ``(P, 3)`` or ``(B, P, 3)`` in the generator frame (decode box ``bounds``).
            chunk_size: points per decoder call (default :attr:`chunk_size`).
            checkpoint: when gradients are needed, recompute each chunk in the backward pass
                instead of storing its activations, so memory stays bounded by one chunk.
        Returns:
            ``(B, P)``: minus hy3dgen's occupancy logits (negative inside, about +-1 away from
            the surface); float32 for half-precision backbones, else the backbone dtype.
        """
        return self.sdf_query(latent, chunk_size=chunk_size, checkpoint=checkpoint)(points)

    def sdf_query(self, latent: torch.Tensor, *, chunk_size: int | None = None,
                  checkpoint: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`decode_sdf` split in two: the VAE's latent transformer runs once, here; the
        returned ``query(points)`` runs only the geometry decoder on ``points``.

        The optional ``sdf_query`` method of the :class:`~hoiguide.backbones.FlowBackbone`
        protocol (see :func:`hoiguide.geometry.sparse.sdf_query`): sparse decoding queries a
        grid level by level, and the transformer (16 layers on 3072 tokens for Hunyuan3D-2)
        costs as much as tens of thousands of point queries.

        Args:
            latent, chunk_size, checkpoint: as :meth:`decode_sdf`.
        Returns:
            ``query(points)``: points ``(P, 3)`` or ``(B, P, 3)`` in the generator frame ->
            ``(B, P)`` values exactly as :meth:`decode_sdf` returns them; differentiable w.r.t.
            ``latent`` (through the transformer output, kept alive by the closure) when
            gradients are enabled at both calls.
        """
        latent = check_latent(self, latent)
        b = latent.shape[0]
        cs = int(chunk_size or self.chunk_size)
        if cs < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {cs}")
        z = (1.0 / self.vae.scale_factor) * latent.to(device=self.device, dtype=self.dtype)
        h = self.vae(z)

        def query(points: torch.Tensor) -> torch.Tensor:
            if not isinstance(points, torch.Tensor):
                points = torch.as_tensor(np.asarray(points))
            if points.ndim == 2 and points.shape[-1] == 3:
                points = points.unsqueeze(0).expand(b, -1, -1)
            elif not (points.ndim == 3 and points.shape[0] == b and points.shape[-1] == 3):
                raise ValueError(f"points: expected (P, 3) or ({b}, P, 3), got "
                                 f"{tuple(points.shape)}")
            pts = points.to(device=self.device, dtype=self.dtype)
            use_ckpt = checkpoint and torch.is_grad_enabled() and (h.requires_grad
                                                                   or pts.requires_grad)
            outs = []
            for start in range(0, pts.shape[1], cs):
                q = pts[:, start:start + cs]
                if use_ckpt:
                    from torch.utils.checkpoint import checkpoint as ckpt

                    outs.append(ckpt(self._geo_chunk, q, h, use_reentrant=False))
                else:
                    outs.append(self._geo_chunk(q, h))
            logits = torch.cat(outs, 1) if outs else h.new_zeros(b, 0)
            sdf = -logits
            return sdf.float() if sdf.dtype in (torch.float16, torch.bfloat16) else sdf

        return query

    def decode_grid(self, latent: torch.Tensor, resolution: int | None = None, *,
                    chunk_size: int | None = None) -> torch.Tensor:
        """Dense ``(B, R, R, R)`` field on ``hoiguide.geometry.grid_points(bounds, R)``
        (``[x, y, z]`` 'ij' order), ``latent`` ``(B, *latent_shape)``; the engine's
        :func:`hoiguide.guidance.sampler.decode_grid` also does narrow-band decoding."""

        r = int(resolution if resolution is not None else self.default_resolution)
        pts = grid_points(self.bounds, r, dtype=torch.float32, device=self.device)
        sdf = self.decode_sdf(latent, pts.reshape(-1, 3), chunk_size=chunk_size)
        return sdf.reshape(latent.shape[0], r, r, r)
