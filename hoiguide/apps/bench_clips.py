"""The clip benchmark: clip presets beside single-image presets on the same synthetic clips,
scored with :func:`hoiguide.eval.clip_metrics`, written clip by clip and summarised.

What runs, per clip (``hoiguide synth OUT --frames T`` output):

* the clip's observations are simulated ONCE (:func:`hoiguide.synth.simulate_clip_observations`,
  seed :func:`hoiguide.apps.score.scene_seed` of the clip id) and shared by every run, so
  every method sees identical inputs;
* a **clip** preset (a schedule with a ``clip:`` block, e.g. ``video_fast``) runs
  :func:`hoiguide.guided_reconstruct_video` on the whole clip; every frame is scored;
* a **single-image** preset (e.g. ``fast``, ``unguided``) runs
  :func:`hoiguide.guided_reconstruct` on the REFERENCE frame's observations alone (kind
  ``reference``); only the reference frame is scored (its CD and hidden-side CD, where the
  hidden side is the surface no frame of the clip shows, so the two kinds are compared on
  the same surface);
* with ``per_frame=[name, ...]`` a single-image preset also runs on EVERY observed frame
  independently (kind ``per_frame``, folder ``<name>.per_frame``): every frame is scored and
  its jitter is the baseline the clip method's jitter is compared with.

Layout of ``out``::

    run.json                          what was run (clips, backbone, noise, seed, runs with
                                      their kind and configuration fingerprint, command)
    <run>/<clip_id>.json              one record per (clip, run): status, phase and reason
                                      of a failure, the clip metrics (per frame too),
                                      seconds, counters, whether the object is in the
                                      backbone's training set
    <run>/<clip_id>/                  meshes, only with ``save_meshes=True``
    summary.json, summary.md          per run: median and mean of each metric over the clips
                                      that succeeded, RR, n, the failures

Failure policy (as :mod:`hoiguide.apps.bench`): an exception while loading a clip,
observing it, reconstructing or scoring is caught, logged with its traceback and recorded
as ``{"status": "failed", "phase", "reason"}``; the other clips and runs go on; failures count
against RR and are left out of the medians. Re-running into the same folder skips (clip,
run) pairs whose record has the same configuration fingerprint (``overwrite=True``
recomputes); the summaries are rebuilt from the records on disk.

Metrics (:mod:`hoiguide.eval.clip`): ``cd_cm2`` mean over the scored frames of the
hand-aligned Chamfer distance (cm^2), ``reference_cd_cm2`` the reference frame's,
``hidden_cd_cm2`` (surface seen in no frame), ``f5``, ``f10``, ``iv_cm3`` (cm^3),
``object_jitter_mm`` / ``hand_jitter_mm`` against the truth's ``gt_*`` (mm/frame^2).
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

from hoiguide.apps.bench import BenchmarkError, resolve_folders, resolve_presets
from hoiguide.apps.score import (
    backbone_name as name_of_backbone,
)
from hoiguide.apps.score import (
    finite,
    format_number,
    in_training_set,
    progress_bar,
    scene_seed,
    stats,
)
from hoiguide.eval.clip import clip_metrics
from hoiguide.guidance.engine import GuidanceOptions
from hoiguide.io import failure_record, fingerprint, read_json, write_json, write_mesh
from hoiguide.synth.clip import list_clips, load_clip

__all__ = ["run_clip_benchmark", "summarize_clips", "format_clip_table", "resolve_clips",
           "resolve_runs",
           "CLIP_METRICS", "is_clip_schedule"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

RESULT_FORMAT = "hoiguide-bench-clip-result"
SUMMARY_FORMAT = "hoiguide-bench-clips-summary"
RUN_FORMAT = "hoiguide-bench-clips-run"
FORMAT_VERSION = 1
PER_FRAME_SUFFIX = ".per_frame"

#: summary metrics in table order (key in the records, table header, digits)
CLIP_METRICS = (
    ("cd_cm2", "CD (cm^2) ↓", 3),
    ("reference_cd_cm2", "CD ref (cm^2) ↓", 3),
    ("hidden_cd_cm2", "hidden CD (cm^2) ↓", 3),
    ("f5", "F5 ↑", 3),
    ("f10", "F10 ↑", 3),
    ("iv_cm3", "IV (cm^3) ↓", 2),
    ("object_jitter_mm", "obj jitter (mm/f²)", 2),
    ("gt_object_jitter_mm", "truth obj jitter", 2),
    ("hand_jitter_mm", "hand jitter (mm/f²)", 2),
    ("gt_hand_jitter_mm", "truth hand jitter", 2),
)
_EXTRA = ("reference_hidden_cd_cm2", "hidden_f10", "object_jitter_ratio", "hand_jitter_ratio",
          "hidden_fraction", "reference_f5", "reference_iv_cm3")
_STATS = ("mean", "median")


def is_clip_schedule(schedule: Any) -> bool:
    """Whether a schedule is a clip preset (it has a ``clip:`` block, e.g. ``video_fast``)."""
    return getattr(schedule, "clip", None) is not None


def resolve_clips(clips: Union[PathLike, Sequence[PathLike]], limit: Optional[int] = None
                  ) -> list[tuple[str, Path]]:
    """``(clip_id, folder)`` of every clip: ``clips`` is a clips set (``hoiguide synth OUT
    --frames T``), one clip folder, or a list of either.

    Raises:
        BenchmarkError: no clips, a missing folder, a malformed manifest, duplicate ids or a
            bad ``limit`` (one line).
    """
    return resolve_folders(clips, list_clips, "clip", "clips folder", "clips", limit)


def resolve_runs(presets: Sequence[Any], per_frame: Sequence[Any]) -> list[tuple[str, str, Any]]:
    """``(run name, kind, schedule)`` of every requested run: kind ``"clip"`` for a clip
    preset, ``"reference"`` for a single-image preset, ``"per_frame"`` (name
    ``<preset>.per_frame``) for each of ``per_frame``.

    Raises:
        hoiguide.ScheduleError: an unknown preset or an invalid schedule.
        BenchmarkError: a clip preset as a per-frame baseline, or a run requested twice.
    """
    runs: list[tuple[str, str, Any]] = []
    for name, sched in resolve_presets(presets):
        runs.append((name, "clip" if is_clip_schedule(sched) else "reference", sched))
    if per_frame:
        for name, sched in resolve_presets(per_frame):
            if is_clip_schedule(sched):
                raise BenchmarkError(f"bench: per-frame baseline {name!r} is a clip preset; "
                                     "give a single-image preset (e.g. fast)")
            runs.append((name + PER_FRAME_SUFFIX, "per_frame", sched))
    names = [r[0] for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BenchmarkError(f"bench: run {dup[0]!r} is requested twice")
    return runs


def _default_reconstruct_video() -> Callable[..., Any]:
    import hoiguide.api as api

    fn = getattr(api, "guided_reconstruct_video", None)
    if fn is None:
        raise BenchmarkError("bench: hoiguide.guided_reconstruct_video is not available in "
                             "this hoiguide; clip presets cannot run")
    return fn


def _failed(phase: str, exc: BaseException, what: str) -> dict[str, Any]:
    log.warning("bench: %s failed while %s: %s", what, phase, failure_record(exc)["reason"],
                exc_info=exc)
    return {"status": "failed", "phase": phase, "reason": failure_record(exc)["reason"],
            "traceback": "".join(traceback.format_exception(type(exc), exc,
                                                           exc.__traceback__))[-4000:]}


def _score(clip: Any, clip_obs: Any, hands: list, objects: list, *, seed: int,
           num_samples: int) -> dict[str, Any]:
    times = clip_obs.times
    fps = (1.0 / float(times[1] - times[0])) if len(times) > 1 else None
    m = clip_metrics(hands, objects, [f.hand_mesh for f in clip.frames],
                     [f.object_mesh for f in clip.frames],
                     cameras=[f.camera for f in clip.frames],
                     depths=[f.depth for f in clip.frames], reference=clip_obs.reference,
                     fps=fps, num_samples=num_samples, seed=seed)
    return {k: (finite(v) if isinstance(v, float) else v) for k, v in m.items()}


def _run_one(res: dict[str, Any], kind: str, sched: Any, clip: Any, clip_obs: Any, *,
             backbone: Any, seed: int, device: Any, options: Any, num_samples: int,
             reconstruct: Callable[..., Any], reconstruct_video: Optional[Callable[..., Any]],
             save_dir: Optional[Path]) -> None:
    """Reconstruct one (clip, run) and score it, filling ``res`` (``res["phase"]`` says
    where an exception happened)."""
    T = clip.num_frames
    res["phase"] = "reconstruct"
    t0 = time.perf_counter()
    hands: list = [None] * T
    objects: list = [None] * T
    statuses = []
    if kind == "clip":
        fn = reconstruct_video or _default_reconstruct_video()
        rec = fn(clip_obs, backbone=backbone, schedule=sched, seed=seed, device=device,
                 progress=False, options=options)
        statuses.append(rec.status)
        res["counters"] = dict(getattr(rec, "counters", {}) or {})
        if rec.ok and not rec.object_mesh_generator.is_empty:
            hands = list(rec.hand_meshes)
            objects = list(rec.object_meshes)
        if save_dir is not None and hasattr(rec, "save"):
            rec.save(save_dir)
    else:
        frames = [clip_obs.reference] if kind == "reference" else clip_obs.observed
        for t in frames:
            rec = reconstruct(observations=clip_obs.frames[t], backbone=backbone,
                              schedule=sched, seed=seed, device=device, progress=False,
                              options=options)
            statuses.append(rec.status)
            if rec.ok and not rec.object_mesh.is_empty:
                hands[t], objects[t] = rec.hand_mesh, rec.object_mesh
                if save_dir is not None:
                    save_dir.mkdir(parents=True, exist_ok=True)
                    write_mesh(save_dir / f"object_{t:03d}.ply", rec.object_mesh)
                    write_mesh(save_dir / f"hand_{t:03d}.ply", rec.hand_mesh)
        res["counters"] = {"frames_run": len(frames)}
    res["seconds_reconstruct"] = time.perf_counter() - t0
    res["reconstruction_status"] = statuses
    ref = clip_obs.reference
    if objects[ref] is None:
        res.update(status="failed", reason=f"reconstruction status: "
                   f"{statuses[0] if statuses else 'nothing run'} (no object in the reference "
                   "frame)")
        return
    res["phase"] = "metrics"
    t1 = time.perf_counter()
    res["metrics"] = _score(clip, clip_obs, hands, objects, seed=seed,
                            num_samples=num_samples)
    res["seconds_metrics"] = time.perf_counter() - t1
    bad = [k for k in ("reference_cd_cm2",) if res["metrics"].get(k) is None]
    if bad:
        res.update(status="failed", reason=f"non-finite metrics: {', '.join(bad)}")
        return
    failed_frames = sum(1 for s in statuses if s != "ok")
    if failed_frames:
        res["failed_frames"] = failed_frames
    res.update(status="ok", phase=None, reason=None)


def run_clip_benchmark(clips: Union[PathLike, Sequence[PathLike]], out: PathLike,
                       presets: Sequence[Any], *, backbone: Any,
                       per_frame: Sequence[Any] = (), seed: int = 0,
                       noise: Union[str, float] = "default",
                       temporal_correlation: float = 0.9, device: Any = None,
                       num_samples: int = 10000, overwrite: bool = False,
                       progress: bool = True, limit: Optional[int] = None,
                       options: Optional[Mapping[str, Any]] = None, save_meshes: bool = False,
                       backbone_name: Optional[str] = None, command: Optional[str] = None,
                       observe: Optional[Callable[[Any, int], Any]] = None,
                       reconstruct: Optional[Callable[..., Any]] = None,
                       reconstruct_video: Optional[Callable[..., Any]] = None
                       ) -> dict[str, Any]:
    """Run clip and single-image presets on every clip, score, write records and summaries
    (see the module docstring for what runs, the layout and the failure policy).

    Args:
        clips: a clips set (``hoiguide synth OUT --frames T``), a clip folder, or a list.
        out: output folder (created).
        presets: preset names, YAML paths, mappings or schedules; a clip preset (with a
            ``clip:`` block) runs on the clip, a single-image one on the reference frame.
        backbone: the :class:`hoiguide.FlowBackbone` of every run.
        per_frame: single-image presets to also run on every frame independently.
        seed: base seed (per-clip seeds: :func:`~hoiguide.apps.score.scene_seed` of the id).
        noise, temporal_correlation: the observers' strengths and lag-1 correlation
            (:func:`hoiguide.synth.simulate_clip_observations`).
        device: passed to the reconstructions (must be the backbone's).
        num_samples: surface samples per mesh for the metrics.
        overwrite: recompute finished (clip, run) pairs.
        progress: a tqdm bar over (clip, run) pairs.
        limit: only the first ``limit`` clips.
        options: :class:`hoiguide.GuidanceOptions` fields.
        save_meshes: keep the meshes under ``out/<run>/<clip_id>/``.
        backbone_name: the backbone's name in records and fingerprints.
        command: the command line shown in ``summary.md``.
        observe: ``observe(clip, seed) -> ClipObservations`` (default: the simulated
            observers with ``noise`` and ``temporal_correlation``).
        reconstruct, reconstruct_video: replace :func:`hoiguide.guided_reconstruct` /
            :func:`hoiguide.guided_reconstruct_video` (same keyword arguments).

    Returns:
        The summary (what :func:`summarize_clips` writes).

    Raises:
        BenchmarkError, hoiguide.ScheduleError: bad clips or presets (before anything runs).
        KeyboardInterrupt: passed through; finished pairs stay on disk.
    """
    if backbone is None:
        raise BenchmarkError("bench: expected a backbone (any hoiguide.FlowBackbone), got None")
    clip_list = resolve_clips(clips, limit)
    runs = resolve_runs(presets, per_frame)
    num_samples = int(num_samples)
    if num_samples < 1:
        raise BenchmarkError(f"bench: expected num_samples >= 1, got {num_samples}")
    opts = GuidanceOptions.coerce(options)
    opts_dict = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    bname = backbone_name or name_of_backbone(backbone)
    training = tuple(getattr(backbone, "training_objects", ()) or ())
    if reconstruct is None:
        from hoiguide.api import guided_reconstruct as reconstruct
    if observe is None:
        from hoiguide.synth.clip import simulate_clip_observations

        def observe(clip: Any, s: int) -> Any:
            return simulate_clip_observations(clip, backbone=backbone, noise=noise, seed=s,
                                              temporal_correlation=temporal_correlation)

        observer = "hoiguide.synth.clip.simulate_clip_observations"
    else:
        observer = f"{getattr(observe, '__module__', '')}.{getattr(observe, '__qualname__', '')}"
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    common = {"noise": noise, "temporal_correlation": float(temporal_correlation),
              "seed": int(seed), "backbone": bname, "options": opts_dict,
              "num_samples": num_samples, "observer": observer}
    configs = {name: {"schedule": sched.to_dict(), "kind": kind, **common}
               for name, kind, sched in runs}
    prints = {name: fingerprint(cfg) for name, cfg in configs.items()}
    _write_run_info(out, clip_list, clips, runs, prints, common,
                    command if command is not None else shlex.join(sys.argv))
    total = len(clip_list) * len(runs)
    bar = progress_bar(total, progress, "bench clips", "run")
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    done = 0
    try:
        for clip_id, clip_dir in clip_list:
            c_seed = scene_seed(seed, clip_id)
            todo = []
            for name, kind, sched in runs:
                path = out / name / f"{clip_id}.json"
                if not overwrite and _is_done(path, prints[name]):
                    counts["skipped"] += 1
                    done += 1
                    if bar is not None:
                        bar.update(1)
                    continue
                todo.append((name, kind, sched, path))
            if not todo:
                continue
            shared_fail = None
            clip = clip_obs = None
            trained = False
            t_obs = 0.0
            try:
                clip = load_clip(clip_dir)
                trained = in_training_set(clip.object_source, training)
                if trained:
                    log.warning("bench: clip %s shows %s, an object the backbone was trained on "
                                "(its training_objects): its numbers say little about unseen "
                                "objects", clip_id, clip.object_source)
            except Exception as exc:  # noqa: BLE001
                shared_fail = _failed("load", exc, f"clip {clip_id}")
            if shared_fail is None:
                t = time.perf_counter()
                try:
                    clip_obs = observe(clip, c_seed)
                except Exception as exc:  # noqa: BLE001
                    shared_fail = _failed("observe", exc, f"clip {clip_id}")
                t_obs = time.perf_counter() - t
            for name, kind, sched, path in todo:
                t0 = time.perf_counter()
                if shared_fail is not None:
                    res = dict(shared_fail)
                else:
                    res = {}
                    try:
                        _run_one(res, kind, sched, clip, clip_obs, backbone=backbone,
                                 seed=c_seed, device=device, options=opts,
                                 num_samples=num_samples, reconstruct=reconstruct,
                                 reconstruct_video=reconstruct_video,
                                 save_dir=(out / name / clip_id) if save_meshes else None)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # noqa: BLE001 -- recorded, counts against RR
                        res.update(_failed(res.get("phase") or "reconstruct", exc,
                                           f"{name} on {clip_id}"))
                record = _record(clip_id, clip_dir, name, kind, c_seed, prints[name],
                                 configs[name], res, t_obs, time.perf_counter() - t0)
                record["object"] = clip.object_source if clip is not None else None
                record["object_in_training_set"] = trained
                write_json(path, record)
                counts[record["status"]] += 1
                done += 1
                if bar is not None:
                    bar.update(1)
                m = record["metrics"] or {}
                log.info("bench [%d/%d] %s / %s: %s%s (%.1f s)", done, total, name, clip_id,
                         record["status"],
                         f" CD ref {m.get('reference_cd_cm2'):.3g} cm^2"
                         if record["status"] == "ok" else
                         f" ({record['phase']}: {record['reason']})",
                         record["seconds"]["total"])
    finally:
        if bar is not None:
            bar.close()
    log.info("bench: %d ok, %d failed, %d skipped (already done)", counts["ok"],
             counts["failed"], counts["skipped"])
    return summarize_clips(out)


def _is_done(path: Path, fp: str) -> bool:
    if not path.is_file():
        return False
    data = read_json(path, default=None)
    return isinstance(data, dict) and data.get("fingerprint") == fp and \
        data.get("status") in ("ok", "failed")


def _record(clip_id: str, clip_dir: Path, name: str, kind: str, c_seed: int, fp: str,
            config: dict[str, Any], res: dict[str, Any], t_obs: float, t_run: float
            ) -> dict[str, Any]:
    status = "ok" if res.get("status") == "ok" else "failed"
    return {
        "format": RESULT_FORMAT, "version": FORMAT_VERSION,
        "clip_id": clip_id, "clip_dir": str(clip_dir), "run": name, "kind": kind,
        "status": status,
        "phase": None if status == "ok" else res.get("phase"),
        "reason": None if status == "ok" else (res.get("reason") or "unknown"),
        "metrics": res.get("metrics") if status == "ok" else None,
        "metrics_of_failed_run": res.get("metrics") if status != "ok" else None,
        "seconds": {"reconstruct": res.get("seconds_reconstruct"), "observe": t_obs,
                    "metrics": res.get("seconds_metrics"), "total": t_obs + t_run},
        "reconstruction_status": res.get("reconstruction_status"),
        "failed_frames": res.get("failed_frames", 0),
        "counters": res.get("counters"),
        "seed": c_seed, "fingerprint": fp,
        "config": {k: v for k, v in config.items() if k != "schedule"},
        "traceback": res.get("traceback"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _write_run_info(out: Path, clip_list: list, clips_arg: Any, runs: list,
                    prints: dict[str, str], common: dict[str, Any], command: str) -> None:
    path = out / "run.json"
    old = read_json(path, default=None) if path.is_file() else None
    known = dict((old or {}).get("runs", {})) if isinstance(old, dict) else {}
    for name, kind, sched in runs:
        known[name] = {"kind": kind, "fingerprint": prints[name], "source": sched.source,
                       "schedule": sched.to_dict(), "config": common}
    src = [str(clips_arg)] if isinstance(clips_arg, (str, Path)) else \
        [str(s) for s in clips_arg]
    write_json(path, {
        "format": RUN_FORMAT, "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "clips": src,
        "num_clips": len(clip_list), "clip_ids": [c for c, _ in clip_list],
        "backbone": common["backbone"], "noise": common["noise"],
        "temporal_correlation": common["temporal_correlation"], "seed": common["seed"],
        "num_samples": common["num_samples"], "options": common["options"],
        "observer": common["observer"], "command": command,
        "run_order": [name for name, _, _ in runs], "runs": known})


# ------------------------------------------------------------------------------ summaries
def summarize_clips(out: PathLike) -> dict[str, Any]:
    """(Re)build ``out/summary.json`` and ``out/summary.md`` from the records on disk
    (records whose fingerprint differs from ``run.json``'s are stale: skipped, counted).

    Per run: ``kind``, ``mean`` and ``median`` of every :data:`CLIP_METRICS` entry and a few
    more (``reference_hidden_cd_cm2``, ``hidden_f10``, jitter ratios) over the successful
    clips, ``seconds`` (reconstruction wall time per clip), ``rr``, ``n``, ``n_ok``,
    ``n_stale``, ``n_trained_objects``, ``failures``."""
    out = Path(out).expanduser()
    if not out.is_dir():
        raise FileNotFoundError(f"summarize_clips: no such folder: {out}")
    run = read_json(out / "run.json", default=None) or {}
    known = run.get("runs", {})
    order = list(run.get("run_order", []))
    order += [n for n in known if n not in order]
    summary_runs: dict[str, Any] = {}
    for name in order:
        d = out / name
        if not d.is_dir():
            continue
        want = (known.get(name) or {}).get("fingerprint")
        results, stale = [], 0
        for p in sorted(d.glob("*.json")):
            r = read_json(p, default=None)
            if not isinstance(r, dict) or r.get("format") != RESULT_FORMAT:
                continue
            if want is not None and r.get("fingerprint") != want:
                stale += 1
                continue
            results.append(r)
        if not results and not stale:
            continue
        ok = [r for r in results if r.get("status") == "ok" and r.get("metrics")]
        s: dict[str, Any] = {"kind": (known.get(name) or {}).get("kind")}
        for key in [k for k, _, _ in CLIP_METRICS] + list(_EXTRA):
            s[key] = stats(finite(r["metrics"].get(key)) for r in ok)
        s["seconds"] = stats(finite((r.get("seconds") or {}).get("reconstruct")) for r in ok)
        s["n"], s["n_ok"], s["n_stale"] = len(results), len(ok), stale
        s["rr"] = len(ok) / len(results) if results else None
        s["n_trained_objects"] = sum(bool(r.get("object_in_training_set")) for r in results)
        s["failures"] = [{"clip_id": r.get("clip_id"), "phase": r.get("phase"),
                          "reason": r.get("reason")} for r in results if r not in ok]
        summary_runs[name] = s
    summary = {"format": SUMMARY_FORMAT, "version": FORMAT_VERSION,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "run": {k: run.get(k) for k in ("clips", "num_clips", "backbone", "noise",
                                               "temporal_correlation", "seed", "num_samples",
                                               "command")},
               "runs": summary_runs}
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def format_clip_table(summary: Mapping[str, Any], *, stat: str = "median") -> str:
    """One Markdown table, a row per run: kind, :data:`CLIP_METRICS` (``stat`` over the
    clips that succeeded), RR ``(n_ok/n)`` and seconds per clip; ``–`` where missing."""
    if stat not in _STATS:
        raise ValueError(f"format_clip_table: expected stat in {_STATS}, got {stat!r}")
    head = ["run", "kind"] + [h for _, h, _ in CLIP_METRICS] + ["RR ↑", "s/clip"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for name, s in (summary.get("runs") or {}).items():
        cells = [str(name), str(s.get("kind") or "?")]
        cells += [format_number((s.get(k) or {}).get(stat), d) for k, _, d in CLIP_METRICS]
        rr = s.get("rr")
        cells.append("–" if rr is None else f"{rr:.2f} ({s.get('n_ok', 0)}/{s.get('n', 0)})")
        cells.append(format_number((s.get("seconds") or {}).get(stat), 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(summary: Mapping[str, Any]) -> str:
    run = summary.get("run") or {}
    lines = [
        "# hoiguide clip benchmark", "",
        f"- clips: {', '.join(run.get('clips') or []) or '?'} ({run.get('num_clips', '?')} "
        "clips in the last run)",
        f"- backbone: {run.get('backbone')}",
        f"- observer noise: {run.get('noise')} (temporal correlation "
        f"{run.get('temporal_correlation')}); seed: {run.get('seed')}",
        f"- command: `{run.get('command') or '?'}`",
        "- kinds: clip = a clip preset on every frame; reference = a single-image preset on "
        "the reference frame alone (only that frame scored); per_frame = a single-image "
        "preset on every frame independently.",
        "- metrics (hand-aligned per frame): CD = mean over the scored frames, CD ref = the "
        "reference frame's (cm^2); hidden CD = surface seen in no frame (cm^2); IV cm^3; "
        "jitter = mean acceleration of tracked object / hand points (mm/frame^2) beside the "
        "truth's; over the clips that succeeded; RR = succeeded / attempted.",
    ]
    trained = max((s.get("n_trained_objects") or 0
                   for s in (summary.get("runs") or {}).values()), default=0)
    if trained:
        lines.append(f"- **warning**: {trained} clip(s) show objects the backbone was trained "
                     "on: these numbers do not measure unseen objects")
    lines += ["", "## Median over clips", "", format_clip_table(summary, stat="median"),
              "## Mean over clips", "", format_clip_table(summary, stat="mean")]
    fails = [(n, f) for n, s in (summary.get("runs") or {}).items()
             for f in s.get("failures", [])]
    if fails:
        lines += ["## Failures", ""]
        lines += [f"- {n} / {f['clip_id']} ({f['phase']}): {f['reason']}" for n, f in fails]
        lines.append("")
    return "\n".join(lines)
