"""The benchmark runner: every preset on every scene of a scene set, scored with the paper's
hand-aligned protocol, written to disk scene by scene and summarised in the paper's layout.

Layout of the output folder ``out``::

    run.json                       what was run: scene set, backbone, noise, seed, command,
                                   and per preset its configuration fingerprint (merged
                                   across runs into the same folder)
    <preset>/<scene_id>.json       one result per (scene, preset): status "ok" / "failed",
                                   the failure's pipeline phase and reason, the metrics,
                                   seconds, the engine's counters
    <preset>/<scene_id>/object.ply + hand.ply    only with ``save_meshes=True``
    summary.json                   per preset: mean and median of each metric over the
                                   scenes that succeeded, RR, n, n_ok, the failures
    summary.md                     the same as Markdown tables (mean and median)

Metrics (:func:`hoiguide.eval.hand_aligned_metrics`, docs/method.md section 4): the predicted
hand is aligned to the ground-truth hand by a similarity, the same similarity is applied to
the predicted object, then Chamfer distance (cm^2), F-score at 5 mm and 10 mm and the
intersection volume of the aligned predicted hand and object (cm^3). Every mesh is in the
camera frame of its scene, metres.

Failure policy: an exception while loading the scene, simulating its observations,
reconstructing or scoring one (scene, preset) pair is caught, logged at WARNING with its
traceback and recorded as ``{"status": "failed", "phase": ..., "reason": "Type: message"}``;
a reconstruction whose status is not ``"ok"`` (e.g. an empty object mesh) is a failure too.
Failures count against the reconstruction rate (``rr = n_ok / n``) and are left out of the
metric means and medians (so always read CD/F/IV together with RR and ``n_ok``).
``KeyboardInterrupt`` is never swallowed; what was finished stays on disk.

Re-running into the same folder skips (scene, preset) pairs whose JSON exists with the same
configuration fingerprint (preset definition, noise, seed, backbone name, guidance options,
metric samples, observer); ``overwrite=True`` recomputes them. The summaries are always
rebuilt from the JSON files on disk, so interrupted or partial runs accumulate.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

__all__ = ["run_benchmark", "summarize", "format_table", "scene_seed", "resolve_scenes",
           "resolve_presets", "BenchmarkError",
           "METRICS", "BUDGET", "format_budget"]

from hoiguide.apps.score import (
    BUDGET,
    METRICS,
    finite,
    format_number,
    in_training_set,
    progress_bar,
    reconstruct_and_score,
    scene_seed,
    stats,
)
from hoiguide.apps.score import backbone_name as name_of_backbone
from hoiguide.guidance.engine import GuidanceOptions
from hoiguide.io import failure_record, fingerprint, read_json, write_json, write_mesh
from hoiguide.phases import load_schedule
from hoiguide.synth.scene import SceneFormatError, list_scenes, read_manifest

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

RESULT_FORMAT = "hoiguide-bench-result"
SUMMARY_FORMAT = "hoiguide-bench-summary"
RUN_FORMAT = "hoiguide-bench-run"
FORMAT_VERSION = 1

_STATS = ("mean", "median")


class BenchmarkError(ValueError):
    """Bad benchmark input (no scenes, duplicate preset names, ...): nothing was run."""


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _callable_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{mod}.{name}" if mod else name


def _scene_entries(directory: Path) -> list[tuple[str, Path]]:

    if (directory / "manifest.json").is_file():
        return [(str(s.get("id", Path(s["path"]).name)), directory / s["path"])
                for s in read_manifest(directory)["scenes"]]
    return [(p.name, p) for p in list_scenes(directory)]


def resolve_scenes(scenes: Union[PathLike, Sequence[PathLike]],
                   limit: Optional[int] = None) -> list[tuple[str, Path]]:
    """``(scene_id, folder)`` of every scene: ``scenes`` is a scene-set folder (with
    ``manifest.json`` or ``*/scene.json``), one scene folder, or a sequence of either.
    Scene ids come from the manifest, else the folder names.

    Raises:
        BenchmarkError: no scenes, a missing folder, duplicate scene ids or a bad ``limit``.
        hoiguide.synth.scene.SceneFormatError: a malformed manifest.
    """

    return resolve_folders(scenes, _scene_entries, "scene", "scene folder", "scenes", limit)


def resolve_folders(items: Any, entries: Any, noun: str, folder: str, plural: str,
                    limit: Optional[int] = None) -> list[tuple[str, Path]]:
    """``(id, folder)`` of every item of a set: ``items`` is one folder or a sequence of
    folders, ``entries(folder)`` lists ``(id, path)`` (e.g. a manifest's scenes or clips);
    ``noun`` / ``folder`` / ``plural`` name them in errors. Raises :class:`BenchmarkError`
    (one line) for no items, a missing folder, a malformed manifest, duplicate or unusable
    ids, or a bad ``limit``."""
    items = [items] if isinstance(items, (str, Path)) else list(items)
    if not items:
        raise BenchmarkError(f"bench: expected at least one {folder}, got none")
    found: list[tuple[str, Path]] = []
    for item in items:
        d = Path(item).expanduser()
        if not d.is_dir():
            raise BenchmarkError(f"bench: no such {folder}: {d}")
        try:
            found.extend(entries(d))
        except SceneFormatError as exc:
            raise BenchmarkError(f"bench: {exc}") from None
    if not found:
        raise BenchmarkError(f"bench: no {plural} in {', '.join(str(i) for i in items)}")
    seen: dict[str, Path] = {}
    for sid, p in found:
        if sid in seen:
            raise BenchmarkError(f"bench: duplicate {noun} id {sid!r} ({seen[sid]} and {p})")
        if not sid or "/" in sid or sid in (".", ".."):
            raise BenchmarkError(f"bench: {noun} id {sid!r} cannot be a file name")
        seen[sid] = p
    if limit is not None:
        if isinstance(limit, bool) or int(limit) != limit or int(limit) < 1:
            raise BenchmarkError(f"bench: expected limit to be a positive integer, got "
                                 f"{limit!r}")
        found = found[:int(limit)]
    return found


def resolve_presets(presets: Sequence[Any]) -> list[tuple[str, Any]]:
    """``(name, PhaseSchedule)`` per preset (a preset name, a YAML path, a mapping or a
    schedule); the schedule's ``name`` names its output folder.

    Raises:
        hoiguide.ScheduleError: an unknown preset or an invalid schedule.
        BenchmarkError: no presets, or two presets with the same name.
    """

    if isinstance(presets, (str, Path)):
        presets = [presets]
    presets = list(presets)
    if not presets:
        raise BenchmarkError("bench: expected at least one preset, got none")
    out: list[tuple[str, Any]] = []
    where: dict[str, Any] = {}
    for p in presets:
        sched = load_schedule(p)
        name = sched.name
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise BenchmarkError(f"bench: preset name {name!r} (from {p!r}) cannot be a "
                                 "folder name")
        if name in where:
            raise BenchmarkError(f"bench: two presets are named {name!r} ({where[name]!r} and "
                                 f"{p!r}); give one a different 'name:'")
        where[name] = p
        out.append((name, sched))
    return out


# --------------------------------------------------------------------------------------
# one (scene, preset) pair
# --------------------------------------------------------------------------------------


def _failed(phase: str, exc: BaseException, what: str) -> dict[str, Any]:
    log.warning("bench: %s failed while %s: %s", what, phase, failure_record(exc)["reason"], exc_info=exc)
    return {"status": "failed", "phase": phase, "reason": failure_record(exc)["reason"],
            "traceback": "".join(traceback.format_exception(type(exc), exc,
                                                           exc.__traceback__))[-4000:]}


def _run_pair(res: dict[str, Any], scene: Any, obs: Any, schedule: Any, *, backbone: Any,
              seed: int, device: Any, options: Any, num_samples: int, save_dir: Optional[Path]
              ) -> None:
    """Reconstruct and score one scene with one preset
    (:func:`hoiguide.apps.score.reconstruct_and_score`), filling ``res``; with ``save_dir``
    the meshes are kept there as PLY. Exceptions propagate: the caller records them with
    ``res["phase"]``."""
    rec, _ = reconstruct_and_score(scene, obs, schedule, backbone=backbone, seed=seed,
                                   options=options, num_samples=num_samples, record=res)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        for name, mesh in (("object", rec.object_mesh), ("hand", rec.hand_mesh)):
            if not mesh.is_empty:
                write_mesh(save_dir / f"{name}.ply", mesh)

# --------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------


def run_benchmark(scenes: Union[PathLike, Sequence[PathLike]], presets: Sequence[Any],
                  out: PathLike, *, backbone: Any,
                  observe: Optional[Callable[[Any, int], Any]] = None,
                  noise: Union[str, float] = "default", seed: int = 0, device: Any = None,
                  num_samples: int = 10000, overwrite: bool = False, progress: bool = True,
                  limit: Optional[int] = None, options: Optional[Mapping[str, Any]] = None,
                  save_meshes: bool = False, backbone_name: Optional[str] = None,
                  command: Optional[str] = None) -> dict[str, Any]:
    """Run every preset on every scene, score with the hand-aligned protocol, write the
    per-scene JSONs, ``summary.json`` and ``summary.md`` into ``out`` (see the module
    docstring for the layout and the failure policy).

    Scenes are the outer loop and presets the inner one: each scene's observations are
    computed once (seed :func:`scene_seed`) and shared by all presets, so presets are
    compared on identical inputs; the same per-scene seed is the flow's noise seed.

    Args:
        scenes: a scene-set folder (``hoiguide synth`` output), a scene folder, or a list.
        presets: preset names, YAML paths, mappings or schedules; each schedule's ``name``
            names its output folder (two with the same name is an error). ``"unguided"`` is
            the no-guidance baseline (generator output placed by the ICP chain).
        out: output folder (created).
        backbone: the :class:`hoiguide.FlowBackbone` used for every run.
        observe: ``observe(scene, seed) -> hoiguide.Observations``; default:
            ``hoiguide.synth.observers.simulate_observations(scene, backbone=backbone,
            noise=noise, seed=seed)``.
        noise: the observers' noise level (``"default"``, ``"none"`` or a float); passed to
            the default observer and part of the configuration fingerprint.
        seed: base seed (per-scene seeds derive from it and the scene id).
        device: passed to :func:`hoiguide.guided_reconstruct` (must be the backbone's).
        num_samples: surface samples per mesh for Chamfer / F-score.
        overwrite: recompute pairs that already have a result with the same configuration.
        progress: a tqdm bar over (scene, preset) pairs (when tqdm is installed).
        limit: only the first ``limit`` scenes.
        options: :class:`hoiguide.GuidanceOptions` fields (e.g. ``grid_resolution``).
        save_meshes: also write ``out/<preset>/<scene_id>/object.ply`` and ``hand.ply``
            (image-aligned camera frame, metres).
        backbone_name: the backbone's name in reports and fingerprints (default: its
            ``name`` attribute or its class path).
        command: the command line shown in ``summary.md`` (default: ``sys.argv``).

    Returns:
        The summary dict (what :func:`summarize` writes to ``summary.json``).

    Raises:
        BenchmarkError, hoiguide.ScheduleError: bad scenes or presets (before anything runs).
        KeyboardInterrupt: passed through; finished pairs stay on disk.
    """

    if backbone is None:
        raise BenchmarkError("bench: expected a backbone (any hoiguide.FlowBackbone), got None")
    scene_list = resolve_scenes(scenes, limit)
    preset_list = resolve_presets(presets)
    num_samples = int(num_samples)
    if num_samples < 1:
        raise BenchmarkError(f"bench: expected num_samples >= 1, got {num_samples}")
    opts = GuidanceOptions.coerce(options)
    opts_dict = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    bname = backbone_name or name_of_backbone(backbone)
    training = tuple(getattr(backbone, "training_objects", ()) or ())
    if observe is None:
        try:
            from hoiguide.synth.observers import simulate_observations
        except ImportError as exc:
            raise ImportError(
                "bench: the default observer hoiguide.synth.observers.simulate_observations "
                f"is not available ({exc}); pass observe=callable(scene, seed) -> "
                "hoiguide.Observations") from exc

        def observe(scene: Any, s: int) -> Any:
            return simulate_observations(scene, backbone=backbone, noise=noise, seed=s)

        observer_name = "hoiguide.synth.observers.simulate_observations"
    else:
        observer_name = _callable_name(observe)

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    common = {"noise": noise, "seed": int(seed), "backbone": bname, "options": opts_dict,
              "num_samples": num_samples, "observer": observer_name}
    configs = {name: {"schedule": sched.to_dict(), **common} for name, sched in preset_list}
    fingerprints = {name: fingerprint(cfg) for name, cfg in configs.items()}
    _write_run_info(out, scene_list, scenes, preset_list, fingerprints, common,
                    command if command is not None else shlex.join(sys.argv))

    total = len(scene_list) * len(preset_list)
    bar = progress_bar(total, progress, "bench", "run")
    redirect = None
    if bar is not None:
        try:
            from tqdm.contrib.logging import logging_redirect_tqdm
            redirect = logging_redirect_tqdm()
            redirect.__enter__()
        except ImportError:
            redirect = None
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    done = 0
    try:
        for scene_id, scene_dir in scene_list:
            s_seed = scene_seed(seed, scene_id)
            todo = []
            for name, sched in preset_list:
                path = out / name / f"{scene_id}.json"
                if not overwrite and _is_done(path, fingerprints[name]):
                    counts["skipped"] += 1
                    done += 1
                    log.debug("bench: %s / %s already done", name, scene_id)
                    if bar is not None:
                        bar.update(1)
                    continue
                todo.append((name, sched, path))
            if not todo:
                continue
            # the scene and its observations: once, shared by every preset
            scene = obs = None
            shared_fail: Optional[dict[str, Any]] = None
            t_obs = 0.0
            try:
                from hoiguide.synth.scene import Scene
                scene = Scene.load(scene_dir)
            except Exception as exc:  # noqa: BLE001 -- recorded, counts against RR
                shared_fail = _failed("load", exc, f"scene {scene_id}")
            trained = scene is not None and in_training_set(scene.object_source, training)
            if trained:
                log.warning("bench: scene %s shows %s, an object the backbone was trained on "
                            "(its training_objects): its numbers say little about unseen "
                            "objects", scene_id, scene.object_source)
            if shared_fail is None:
                t = time.perf_counter()
                try:
                    obs = observe(scene, s_seed)
                except Exception as exc:  # noqa: BLE001
                    shared_fail = _failed("observe", exc, f"scene {scene_id}")
                t_obs = time.perf_counter() - t
            for name, sched, path in todo:
                t0 = time.perf_counter()
                if shared_fail is not None:
                    res = dict(shared_fail)
                else:
                    res = {}
                    try:
                        _run_pair(res, scene, obs, sched, backbone=backbone, seed=s_seed,
                                  device=device, options=opts, num_samples=num_samples,
                                  save_dir=(out / name / scene_id) if save_meshes else None)
                    except Exception as exc:  # noqa: BLE001 -- recorded, counts against RR
                        res.update(_failed(res.get("phase") or "reconstruct", exc,
                                           f"{name} on {scene_id}"))
                    else:
                        if res["status"] != "ok":
                            log.warning("bench: %s on %s failed (%s): %s", name, scene_id,
                                        res["phase"], res["reason"])
                record = _record(scene_id, scene_dir, name, s_seed, fingerprints[name],
                                 configs[name], res, t_obs, time.perf_counter() - t0)
                record["object_in_training_set"] = trained
                write_json(path, record)
                counts[record["status"]] += 1
                done += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(ok=counts["ok"], failed=counts["failed"])
                m = record["metrics"] or {}
                log.info("bench [%d/%d] %s / %s: %s%s (%.1f s)", done, total, name, scene_id,
                         record["status"],
                         f" CD {m['cd_cm2']:.3g} cm^2 F5 {m['f5']:.3f}" if record["status"]
                         == "ok" else f" ({record['phase']}: {record['reason']})",
                         record["seconds"]["total"])
    finally:
        if redirect is not None:
            redirect.__exit__(None, None, None)
        if bar is not None:
            bar.close()
    log.info("bench: %d ok, %d failed, %d skipped (already done); writing %s",
             counts["ok"], counts["failed"], counts["skipped"], out / "summary.json")
    return summarize(out)


def _is_done(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    data = _read_record(path)
    return bool(data) and data.get("fingerprint") == fingerprint and \
        data.get("status") in ("ok", "failed")


def _record(scene_id: str, scene_dir: Path, preset: str, s_seed: int, fingerprint: str,
            config: dict[str, Any], res: dict[str, Any], t_obs: float, t_pair: float
            ) -> dict[str, Any]:
    status = "ok" if res.get("status") == "ok" else "failed"
    rec_s = res.get("seconds_reconstruct")
    return {
        "format": RESULT_FORMAT, "version": FORMAT_VERSION,
        "scene_id": scene_id, "scene_dir": str(scene_dir), "preset": preset,
        "status": status,
        "phase": None if status == "ok" else res.get("phase"),
        "reason": None if status == "ok" else (res.get("reason") or "unknown"),
        "metrics": res.get("metrics") if status == "ok" else None,
        "metrics_of_failed_run": res.get("metrics") if status != "ok" else None,
        "seconds": {"reconstruct": rec_s, "observe": t_obs,
                    "metrics": res.get("seconds_metrics"), "total": t_obs + t_pair},
        "reconstruction_status": res.get("reconstruction_status"),
        "counters": res.get("counters"),
        "num_steps": res.get("num_steps"),
        "object_mesh": res.get("object_mesh"),
        "timings": res.get("timings"),
        "alignment": res.get("alignment"),
        "object_alignment": res.get("object_alignment"),
        "seed": s_seed,
        "fingerprint": fingerprint,
        "config": {k: v for k, v in config.items() if k != "schedule"},
        "traceback": res.get("traceback"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _write_run_info(out: Path, scene_list: list[tuple[str, Path]], scenes_arg: Any,
                    preset_list: list[tuple[str, Any]], fingerprints: dict[str, str],
                    common: dict[str, Any], command: str) -> None:
    path = out / "run.json"
    old = _read_record(path) if path.is_file() else None
    presets = dict((old or {}).get("presets", {}))
    for name, sched in preset_list:
        presets.pop(name, None)
    presets.update({name: {"fingerprint": fingerprints[name], "source": sched.source,
                           "schedule": sched.to_dict(), "config": common}
                    for name, sched in preset_list})
    src = [str(scenes_arg)] if isinstance(scenes_arg, (str, Path)) else \
        [str(s) for s in scenes_arg]
    write_json(path, {
        "format": RUN_FORMAT, "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "scenes": src, "num_scenes": len(scene_list),
        "scene_ids": [s for s, _ in scene_list],
        "backbone": common["backbone"], "noise": common["noise"], "seed": common["seed"],
        "options": common["options"], "num_samples": common["num_samples"],
        "observer": common["observer"], "command": command,
        "run_presets": [name for name, _ in preset_list],
        "presets": presets,
    })


# --------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------


def _preset_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if r.get("status") == "ok" and r.get("metrics")]
    n = len(results)
    summary: dict[str, Any] = {}
    for key, _, _ in METRICS + BUDGET:
        summary[key] = stats(finite(r["metrics"].get(key)) for r in ok)
    summary["rr"] = (len(ok) / n) if n else None
    summary["seconds"] = stats(finite((r.get("seconds") or {}).get("reconstruct"))
                                for r in ok)
    summary["seconds_total"] = stats(finite((r.get("seconds") or {}).get("total"))
                                      for r in ok)
    summary["n"] = n
    summary["n_ok"] = len(ok)
    summary["n_trained_objects"] = sum(bool(r.get("object_in_training_set")) for r in results)
    summary["failures"] = [{"scene_id": r.get("scene_id"), "phase": r.get("phase"),
                            "reason": r.get("reason")}
                           for r in results if not (r.get("status") == "ok"
                                                    and r.get("metrics"))]
    return summary


def summarize(out: PathLike) -> dict[str, Any]:
    """(Re)build ``out/summary.json`` and ``out/summary.md`` from the per-scene JSONs on disk.

    Every ``out/<preset>/*.json`` result counts, except results whose configuration
    fingerprint differs from the one ``run.json`` records for that preset (stale results of
    an earlier configuration: skipped and counted in ``n_stale``). Per preset: ``mean`` and
    ``median`` of ``cd_cm2``, ``f5``, ``f10``, ``iv_cm3`` and ``seconds`` (the
    guided_reconstruct wall time) over the successful scenes, ``rr = n_ok / n`` (failures
    count), ``n``, ``n_ok``, ``failures``.

    Returns:
        ``{"format", "version", "run": {...}, "presets": {name: {...}}}``.

    Raises:
        FileNotFoundError: ``out`` is not a folder.
    """
    out = Path(out).expanduser()
    if not out.is_dir():
        raise FileNotFoundError(f"summarize: no such folder: {out}")
    run = _read_record(out / "run.json") if (out / "run.json").is_file() else None
    run = run or {}
    known = run.get("presets", {})
    order = list(run.get("run_presets", []))
    order += [n for n in known if n not in order]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    order += [n for n in folders if n not in order]
    presets: dict[str, Any] = {}
    for name in order:
        d = out / name
        if not d.is_dir():
            continue
        want = (known.get(name) or {}).get("fingerprint")
        results, stale = [], 0
        for p in sorted(d.glob("*.json")):
            r = _read_record(p)
            if not r or r.get("format") != RESULT_FORMAT:
                continue
            if want is not None and r.get("fingerprint") != want:
                stale += 1
                continue
            results.append(r)
        if not results and not stale:
            continue
        if stale:
            log.warning("summarize: %s: skipped %d result(s) of an earlier configuration "
                        "(re-run the benchmark to recompute them)", name, stale)
        s = _preset_summary(results)
        s["n_stale"] = stale
        cfg = (known.get(name) or {}).get("config")
        if cfg is not None:
            s["config"] = {k: cfg.get(k) for k in ("backbone", "noise", "seed")}
        presets[name] = s
    summary = {
        "format": SUMMARY_FORMAT, "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": {k: run.get(k) for k in ("scenes", "num_scenes", "backbone", "noise", "seed",
                                        "num_samples", "options", "command")},
        "presets": presets,
    }
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def format_table(summary: Mapping[str, Any], *, stat: str = "mean") -> str:
    """One Markdown table in the paper's layout, a row per preset:
    ``| preset | CD (cm^2) ↓ | F5 ↑ | F10 ↑ | IV (cm^3) ↓ | RR ↑ | s/scene |``.

    CD, F5, F10, IV and s/scene are the ``stat`` (``"mean"`` or ``"median"``) over the
    scenes that were reconstructed; RR is ``n_ok / n`` and shown with ``(n_ok/n)``; ``–``
    where no scene succeeded. ``s/scene`` is the guided_reconstruct wall time in seconds.
    """
    if stat not in _STATS:
        raise ValueError(f"format_table: expected stat in {_STATS}, got {stat!r}")
    presets = summary.get("presets") if isinstance(summary, Mapping) else None
    if not isinstance(presets, Mapping):
        raise ValueError("format_table: expected a summary dict with a 'presets' mapping, got "
                         f"{type(summary).__name__} with keys "
                         f"{sorted(summary) if isinstance(summary, Mapping) else '-'}")
    head = ["preset"] + [h for _, h, _ in METRICS] + ["RR ↑", "s/scene"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, s in presets.items():
        cells = [str(name)]
        cells += [format_number((s.get(k) or {}).get(stat), d) for k, _, d in METRICS]
        rr = s.get("rr")
        cells.append("–" if rr is None else f"{rr:.2f} ({s.get('n_ok', 0)}/{s.get('n', 0)})")
        cells.append(format_number((s.get("seconds") or {}).get(stat), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_budget(summary: Mapping[str, Any], *, stat: str = "median") -> str:
    """The error budget as a Markdown table, a row per preset:
    ``| preset | CD (cm^2) | shape CD (cm^2) | size err (%) | rotation err (°) |
    translation err (cm) |`` (``stat`` over the reconstructed scenes)."""
    if stat not in _STATS:
        raise ValueError(f"format_budget: expected stat in {_STATS}, got {stat!r}")
    cols = (METRICS[0],) + BUDGET
    head = ["preset"] + [h for _, h, _ in cols]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, s in (summary.get("presets") or {}).items():
        cells = [str(name)] + [format_number((s.get(k) or {}).get(stat), d) for k, _, d in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(summary: Mapping[str, Any]) -> str:
    run = summary.get("run") or {}
    scenes = ", ".join(run.get("scenes") or []) or "?"
    lines = [
        "# hoiguide benchmark",
        "",
        f"- scene set: {scenes} ({run.get('num_scenes', '?')} scenes in the last run)",
        f"- backbone: {run.get('backbone')}",
        f"- observer noise: {run.get('noise')}; seed: {run.get('seed')}",
        f"- command: `{run.get('command') or '?'}`",
        "- protocol: predicted hand aligned to the ground-truth hand by a similarity, "
        "applied to the object; CD = Chamfer (cm^2), F5/F10 = F-score at 5/10 mm, IV = "
        "hand-object intersection volume (cm^3); metrics over reconstructed scenes only, "
        "RR = reconstructed / attempted (failures count); s/scene = guided_reconstruct "
        "wall time.",
    ]
    for name, s in (summary.get("presets") or {}).items():
        cfg = s.get("config")
        if cfg and (cfg.get("backbone"), cfg.get("noise"), cfg.get("seed")) != (
                run.get("backbone"), run.get("noise"), run.get("seed")):
            lines.append(f"- note: {name} was run with backbone {cfg.get('backbone')}, noise "
                         f"{cfg.get('noise')}, seed {cfg.get('seed')}")
    trained = max((s.get("n_trained_objects") or 0
                   for s in (summary.get("presets") or {}).values()), default=0)
    if trained:
        lines.append(f"- **warning**: {trained} scene(s) show objects the backbone was trained "
                     f"on: these numbers do not measure unseen objects")
    lines += ["", "## Mean over scenes", "", format_table(summary, stat="mean"),
              "## Median over scenes", "", format_table(summary, stat="median"),
              "## Error budget (median over scenes)", "",
              "The hand-aligned object aligned once more to the true object by a similarity "
              "(trimmed ICP with scale): shape CD is what remains after it (the prior's shape), "
              "the errors are that similarity's (the placement).", "",
              format_budget(summary, stat="median")]
    fails = [(name, f) for name, s in (summary.get("presets") or {}).items()
             for f in s.get("failures", [])]
    if fails:
        lines += ["## Failures", ""]
        lines += [f"- {name} / {f['scene_id']} ({f['phase']}): {f['reason']}"
                  for name, f in fails]
        lines.append("")
    return "\n".join(lines)


def _read_record(path: Path) -> Optional[dict]:
    """A stored JSON record, or ``None`` when missing / unreadable / not an object (logged)."""
    data = read_json(path, default=None)
    return data if isinstance(data, dict) else None
