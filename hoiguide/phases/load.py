"""Schedules from files, presets and mappings: :func:`load_schedule` (with ``base:``
derivation and ``drop_losses``) and :func:`available_presets`."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from hoiguide.io import did_you_mean, load_yaml
from hoiguide.losses import LOSSES
from hoiguide.phases.errors import ScheduleError
from hoiguide.phases.model import (
    TOP_KEYS,
    PhaseSchedule,
    check_keys,
    join_path,
    parse_schedule,
)

__all__ = ["load_schedule", "available_presets"]

log = logging.getLogger(__name__)


def _read_yaml(text: str, source: str) -> Any:
    try:
        return load_yaml(source, text=text)
    except ValueError as e:
        raise ScheduleError(str(e).removeprefix(f"{source}: "), source=source) from None




def _preset_dir() -> Any:
    return resources.files("hoiguide.phases") / "presets"


def available_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def _deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key (``None`` deletes), anything else replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _deep_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _merge_phases(base: Any, over: Any, source: str, base_name: str) -> Any:
    if isinstance(over, list):
        return copy.deepcopy(over)
    if not isinstance(over, Mapping):
        raise ScheduleError(f"expected a list of phases (replacing the base's) or a mapping "
                            f"phase name -> changes, got {over!r}", "phases", source)
    if not isinstance(base, list):
        raise ScheduleError(f"base {base_name!r} has no list of phases to patch", "phases",
                            source)
    names = [p.get("name") if isinstance(p, Mapping) else None for p in base]
    out = [copy.deepcopy(p) for p in base]
    for pname, change in over.items():
        path = f"phases.{pname}"
        if pname in names:
            k = names.index(pname)
            if change is None:
                out[k] = None
            else:
                if not isinstance(change, Mapping):
                    raise ScheduleError(f"expected a mapping of changes or null (remove), got "
                                        f"{change!r}", path, source)
                if "name" in change and change["name"] != pname:
                    raise ScheduleError("renaming a phase through a patch is not supported",
                                        join_path(path, "name"), source)
                out[k] = _deep_merge(out[k], change)
        else:
            if change is None:
                known = [n for n in names if n]
                raise ScheduleError(f"base {base_name!r} has no phase {pname!r} to remove"
                                    f"{did_you_mean(pname, known)} (phases: {', '.join(known)})",
                                    path, source)
            if not isinstance(change, Mapping):
                raise ScheduleError(f"expected a complete phase for new phase {pname!r}, got "
                                    f"{change!r}", path, source)
            out.append({"name": pname, **change})
    return [p for p in out if p is not None]


def _drop_losses(d: dict, drop: Any, source: str) -> None:

    if not isinstance(drop, list) or not all(isinstance(x, str) for x in drop):
        raise ScheduleError(f"expected a list of loss names, got {drop!r}", "drop_losses",
                            source)
    for k, loss in enumerate(drop):
        if loss not in LOSSES:
            raise ScheduleError(f"unknown loss{did_you_mean(loss, LOSSES)}", f"drop_losses[{k}]",
                                source)
        hits = 0
        for p in d.get("phases") or []:
            w = p.get("weights") if isinstance(p, Mapping) else None
            if isinstance(w, Mapping):
                keep = {lab: v for lab, v in w.items()
                        if not (isinstance(lab, str) and lab.partition("@")[0] == loss)}
                hits += len(w) - len(keep)
                p["weights"] = keep
        if hits == 0:
            raise ScheduleError(f"no phase uses loss {loss!r}", f"drop_losses[{k}]", source)


def _load_raw(text: str, source: str, directory: Optional[Path], stack: tuple[str, ...],
              default_name: str) -> dict:
    """Parse one file and resolve its ``base`` chain into one plain mapping."""
    data = _read_yaml(text, source)
    if data is None:
        raise ScheduleError("the file is empty", source=source)
    if not isinstance(data, Mapping):
        raise ScheduleError(f"expected a mapping at the top level, got {type(data).__name__}",
                            source=source)
    check_keys(data, TOP_KEYS, "", source, "a schedule")
    data = dict(data)
    base_ref = data.pop("base", None)
    drop = data.pop("drop_losses", None)
    if base_ref is None:
        if drop is not None:
            raise ScheduleError("'drop_losses' needs a 'base' to drop from", "drop_losses",
                                source)
        data.setdefault("name", default_name)
        return data
    if not isinstance(base_ref, str):
        raise ScheduleError(f"expected a preset name or a path, got {base_ref!r}", "base",
                            source)
    btext, bsource, bdir, bname = _locate(base_ref, directory, source, "base")
    if bsource in stack:
        raise ScheduleError(f"circular base chain: {' -> '.join(stack + (bsource,))}", "base",
                            source)
    base = _load_raw(btext, bsource, bdir, stack + (bsource,), bname)
    phases_over = data.pop("phases", None)
    merged = _deep_merge(base, data)
    if phases_over is not None:
        merged["phases"] = _merge_phases(base.get("phases"), phases_over, source, base_ref)
    if drop is not None:
        _drop_losses(merged, drop, source)
    if "name" not in data:
        merged["name"] = default_name
    return merged


def _locate(ref: str, directory: Optional[Path], source: Optional[str], path: str
            ) -> tuple[str, str, Optional[Path], str]:
    """(text, source label, directory, default name) of a preset name or a file path."""
    looks_like_path = ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref
    if looks_like_path:
        p = Path(ref).expanduser()
        if not p.is_absolute() and directory is not None:
            p = directory / p
        if not p.is_file():
            raise ScheduleError(f"no such schedule file: {p}", path, source)
        return p.read_text(), str(p), p.parent, p.stem
    presets = available_presets()
    if ref not in presets:
        raise ScheduleError(f"unknown preset {ref!r}{did_you_mean(ref, presets)} (presets: "
                            f"{', '.join(presets)}; or give a path to a .yaml file)", path,
                            source)
    res = _preset_dir() / f"{ref}.yaml"
    return res.read_text(), ref, None, ref


def load_schedule(name_or_path: Union[str, Path, Mapping[str, Any], PhaseSchedule]
                  ) -> PhaseSchedule:
    """Load and validate a phase schedule.

    Args:
        name_or_path: a preset name (``"followmyhold"``, see :func:`available_presets`), a
            path to a YAML file (``.yaml`` / ``.yml``; may derive from a preset with
            ``base:``), an already-parsed mapping, or a :class:`PhaseSchedule` (returned
            as is).

    Returns:
        The validated :class:`PhaseSchedule`.

    Raises:
        ScheduleError: (a ``ValueError``) naming the file and the YAML path of the problem,
            with the nearest valid name for misspellings
            (``phases[2].weights.silhuette: unknown loss; did you mean silhouette?``).
    """
    if isinstance(name_or_path, PhaseSchedule):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        if "base" in name_or_path or "drop_losses" in name_or_path:
            text = yaml.safe_dump(dict(name_or_path))
            raw = _load_raw(text, "<mapping>", Path.cwd(), ("<mapping>",), "schedule")
            return parse_schedule(raw, "<mapping>")
        return parse_schedule(name_or_path, None)
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"load_schedule: expected a preset name, a path, a mapping or a "
                        f"PhaseSchedule, got {type(name_or_path).__name__}")
    ref = str(name_or_path)
    if isinstance(name_or_path, Path) or Path(ref).expanduser().is_file():
        p = Path(ref).expanduser()
        if not p.is_file():
            raise ScheduleError(f"no such schedule file: {p}")
        text, source, directory, stem = p.read_text(), str(p), p.parent, p.stem
    else:
        text, source, directory, stem = _locate(ref, None, None, "")
    raw = _load_raw(text, source, directory, (source,), stem)
    return parse_schedule(raw, source)
