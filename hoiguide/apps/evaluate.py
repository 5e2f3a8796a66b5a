"""``hoiguide eval``: score a method on a real benchmark (DexYCB, HO-3D, OakInk, ARCTIC).

For every selected frame of a dataset (:mod:`hoiguide.datasets`: a split file in the
reference's ``test_splits/*.csv`` format, or a seeded random selection), the prediction is
either made here by the photo chain (:func:`hoiguide.guided_reconstruct` on the frame's RGB
image with the given models, backbone and schedule) or read from a folder of existing
predictions (``predictions/<frame id>/object.ply`` and ``hand.ply``, ``.obj`` or ``.glb``
also read: what ``hoiguide reconstruct`` and ``hoiguide batch`` write, or any other
method's meshes in the image's OpenCV camera frame, metres), and scored against the ground
truth with the paper's hand-aligned protocol (:func:`hoiguide.eval.hand_aligned_metrics`:
the predicted hand aligned to the true hand by a similarity, the same similarity applied to
the object; Chamfer distance in cm^2, F-score at 5 mm and 10 mm, the intersection volume of
the aligned hand and object in cm^3). With ``video_protocol`` the object is also scored the
way ForeHOI scores video reconstructions (:func:`object_aligned_metrics`: the predicted object
aligned to the true object by a similarity, F-score at 5 % and 10 % of the true object's
bounding-box diagonal, and the mean nearest-neighbour distance in cm).

Output folder::

    run.json                 the dataset, selection (frame ids), method and configuration
    samples/<id>.json        one record per frame: status ok / failed, the phase that
                             failed (load, predict, metrics) and why, the metrics, seconds
    samples/<id>/object.ply, hand.ply
                             the photo chain's meshes (image camera frame, metres), so a
                             later run can re-score them with ``predictions=out/samples``
    summary.json, summary.md mean and median of each metric over the frames that succeeded,
                             RR = succeeded / attempted (failures count), the failures

Every record is written atomically (temporary file + rename); re-running into the same
folder skips frames whose record exists with the same configuration fingerprint
(``overwrite=True`` recomputes them). Failures never stop the run: a frame that cannot be
loaded, a prediction that is missing or failed, and a metric that cannot be computed are
recorded with their reason and count against RR. ``KeyboardInterrupt`` is never swallowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hoiguide.api import guided_reconstruct
from hoiguide.apps.score import (
    backbone_name,
    finite,
    format_number,
    progress_bar,
    scene_seed,
    stats,
)
from hoiguide.datasets import open_dataset
from hoiguide.eval import fscore, hand_aligned_metrics, sample_surface
from hoiguide.geometry import icp
from hoiguide.io import failure_record, fingerprint, read_json, write_json, write_mesh
from hoiguide.types import Mesh, Similarity

__all__ = ["run_evaluation", "summarize_evaluation", "format_tables", "object_aligned_metrics",
           "EvalError", "PAPER_METRICS", "VIDEO_METRICS", "PREDICTION_SUFFIXES"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

RESULT_FORMAT = "hoiguide-eval-result"
SUMMARY_FORMAT = "hoiguide-eval-summary"
RUN_FORMAT = "hoiguide-eval-run"
FORMAT_VERSION = 1

#: the paper's table: (key in the records, header, digits)
PAPER_METRICS = (("cd_cm2", "CD (cm^2) ↓", 3), ("f5", "F5 ↑", 3), ("f10", "F10 ↑", 3),
                 ("iv_cm3", "IV (cm^3) ↓", 2))
#: ForeHOI's video protocol (object-aligned)
VIDEO_METRICS = (("f5pct", "F@5% ↑", 3), ("f10pct", "F@10% ↑", 3),
                 ("cd_l1_cm", "CD (cm) ↓", 3))
#: prediction mesh files tried in this order (``hoiguide reconstruct`` writes all three)
PREDICTION_SUFFIXES = (".ply", ".obj", ".glb")
_STATS = ("mean", "median")


class EvalError(ValueError):
    """Bad evaluation input (no such predictions folder, a bad number, ...): nothing was
    run or written."""


# --------------------------------------------------------------------------------------
# ForeHOI's object-aligned protocol
# --------------------------------------------------------------------------------------


def _cube_rotations() -> list[np.ndarray]:
    """The 24 rotations mapping the coordinate axes onto themselves (signed permutations
    with determinant +1)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            R = np.zeros((3, 3))
            for i, j in enumerate(perm):
                R[i, j] = signs[i]
            if np.linalg.det(R) > 0:
                out.append(R)
    return out


def _symmetric_mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def object_alignment(pred: np.ndarray, truth: np.ndarray, *, seed: int = 0,
                     starts: int = 3) -> Similarity:
    """The similarity that best maps the predicted object's surface points onto the true
    object's (both ``(N, 3)``, metres, any frames).

    ForeHOI's search, with a similarity instead of a rigid fit at a fixed scale: the
    prediction's centroid is moved onto the truth's and its largest bounding-box side scaled
    to the truth's; each of the 24 axis-aligned rotations is scored by the symmetric mean
    nearest-neighbour distance (on 2000-point subsets) and the best ``starts`` are refined
    by trimmed ICP with scale (:func:`hoiguide.geometry.icp`, scale within 0.8..1.25 of the
    start); the result with the lowest symmetric mean distance on all points wins.
    """

    P, G = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    rng = np.random.default_rng(int(seed))
    ps = P[rng.choice(len(P), min(2000, len(P)), replace=False)]
    gs = G[rng.choice(len(G), min(2000, len(G)), replace=False)]
    cp, cg = P.mean(0), G.mean(0)
    ep, eg = float(np.ptp(P, 0).max()), float(np.ptp(G, 0).max())
    if not (ep > 0 and eg > 0):
        raise ValueError("object_alignment: a point set has zero extent")
    s = eg / ep
    scored = []
    for R in _cube_rotations():
        init = Similarity(torch.tensor(s, dtype=torch.float64), torch.as_tensor(R),
                          torch.as_tensor(cg - s * R @ cp))
        scored.append((_symmetric_mean_distance(init.apply(ps), gs), init))
    scored.sort(key=lambda x: x[0])
    best: Optional[tuple[float, Similarity]] = None
    for _, init in scored[:max(1, int(starts))]:
        T = icp(P, G, init=init, trim=0.1, scale_range=(0.8, 1.25), seed=int(seed),
                backend="scipy", correspondences="source_to_target")
        cost = _symmetric_mean_distance(T.apply(P), G)
        if best is None or cost < best[0]:
            best = (cost, T)
    assert best is not None
    return best[1]


def object_aligned_metrics(pred_object: Mesh, gt_object: Mesh, *, num_samples: int = 10000,
                           seed: int = 0, fractions: Sequence[float] = (0.05, 0.10)
                           ) -> dict[str, Any]:
    """ForeHOI's video protocol for one object: align the prediction to the truth
    (:func:`object_alignment`), then the F-score (:func:`hoiguide.eval.fscore`) at
    ``fractions`` of the true object's bounding-box diagonal and ForeHOI's Chamfer distance
    ``0.5 (mean d(pred -> truth) + mean d(truth -> pred))`` (unsquared, cm).

    Args:
        pred_object, gt_object: non-empty meshes, metres (frames need not agree: the
            alignment takes care of it).
        num_samples: area-weighted surface samples per mesh (seeded by ``seed``).
        fractions: thresholds as fractions of the diagonal.

    Returns:
        ``{"f5pct": ..., "f10pct": ..., "cd_l1_cm": ..., "diag_cm": ..., "alignment":
        Similarity}`` (keys ``f<100 x fraction>pct``).
    """
    from scipy.spatial import cKDTree


    for name, m in (("pred_object", pred_object), ("gt_object", gt_object)):
        if not isinstance(m, Mesh) or m.is_empty:
            raise ValueError(f"object_aligned_metrics: {name} must be a non-empty Mesh")
    P = sample_surface(pred_object.detach().to(dtype=torch.float64), int(num_samples), seed)
    G = sample_surface(gt_object.detach().to(dtype=torch.float64), int(num_samples), seed)
    T = object_alignment(P, G, seed=seed)
    Pa = T.apply(P)
    gv = gt_object.vertices.detach().double().cpu().numpy()
    diag = float(np.linalg.norm(gv.max(0) - gv.min(0)))
    out: dict[str, Any] = {}
    for f in fractions:
        out[f"f{int(round(100 * f))}pct"] = fscore(Pa, G, f * diag)
    d_pg = cKDTree(G).query(Pa)[0]
    d_gp = cKDTree(Pa).query(G)[0]
    out["cd_l1_cm"] = 100.0 * 0.5 * (float(d_pg.mean()) + float(d_gp.mean()))
    out["diag_cm"] = 100.0 * diag
    out["alignment"] = T
    return out


# --------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------


def _find_mesh(folder: Path, name: str) -> Optional[Path]:
    for suf in PREDICTION_SUFFIXES:
        p = folder / f"{name}{suf}"
        if p.is_file():
            return p
    return None


def read_prediction(predictions: Path, sample: Any) -> tuple[Mesh, Mesh, dict[str, Any]]:
    """The predicted (hand, object) meshes of ``sample`` from ``predictions/<id>/`` (or
    ``predictions/<img_id>/``, the split file's ``img_id``).

    Raises:
        FileNotFoundError: no folder or no object / hand mesh in it.
        RuntimeError: the folder's ``result.json`` says the method failed.
        ValueError: an empty or unreadable mesh.
    """
    row = (sample.metadata or {}).get("split_row") or {}
    cands = [predictions / sample.id]
    if row.get("img_id"):
        cands.append(predictions / str(row["img_id"]))
    folder = next((c for c in cands if c.is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"no prediction: no folder {cands[0]}"
                                + (f" or {cands[1]}" if len(cands) > 1 else ""))
    res = read_json(folder / "result.json", default=None)
    if isinstance(res, dict) and res.get("status") not in (None, "ok"):
        raise RuntimeError(f"the prediction failed: {res.get('status')}"
                           + (f" ({res.get('reason')})" if res.get("reason") else ""))
    files = {}
    meshes = {}
    for name in ("hand", "object"):
        p = _find_mesh(folder, name)
        if p is None:
            raise FileNotFoundError(f"no {name} mesh in {folder} (expected {name}.ply, .obj "
                                    f"or .glb)")
        m = Mesh.load(p, dtype=torch.float64)
        if m.is_empty:
            raise ValueError(f"{p}: the {name} mesh is empty")
        meshes[name], files[name] = m, str(p)
    return meshes["hand"], meshes["object"], {"folder": str(folder), "files": files}


# --------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------


def _object_prompt(name: str) -> str:
    """A dataset object name as words for the detection prompt (``006_mustard_bottle`` ->
    ``mustard bottle``)."""
    words = [w for w in str(name).replace("-", "_").split("_") if w and not w.isdigit()]
    return " ".join(words) or "object"


def run_evaluation(dataset: str, root: PathLike, out: PathLike, *,
                   mano_dir: Optional[PathLike] = None, split: Optional[PathLike] = None,
                   limit: Optional[int] = None, seed: int = 0, order: str = "auto",
                   dataset_options: Optional[Mapping[str, Any]] = None,
                   predictions: Optional[PathLike] = None, models: Any = None,
                   backbone: Any = None, device: Optional[str] = None, schedule: Any = None,
                   guidance_options: Optional[Mapping[str, Any]] = None,
                   pipeline_options: Optional[Mapping[str, Any]] = None,
                   known_intrinsics: bool = False, num_samples: int = 10000,
                   video_protocol: bool = False, save_meshes: bool = True,
                   overwrite: bool = False, progress: bool = True,
                   method_name: Optional[str] = None, command: Optional[str] = None
                   ) -> dict[str, Any]:
    """Evaluate a method on a benchmark and write the per-frame records and the summary
    (see the module docstring for the output layout and the failure policy).

    Args:
        dataset, root, mano_dir, dataset_options: the benchmark
            (:func:`hoiguide.datasets.open_dataset`).
        out: output folder (created).
        split, limit, seed, order: the frames (:meth:`hoiguide.datasets.Dataset.select`);
            ``seed`` also seeds each frame's flow noise and metric sampling
            (``hoiguide.apps.score.scene_seed(seed, frame_id)``).
        predictions: score the meshes in this folder instead of running the photo chain.
        models, backbone, schedule, guidance_options, pipeline_options: the photo chain
            (:func:`hoiguide.guided_reconstruct`): a :class:`hoiguide.adapters.Models`, a
            models YAML, ``"default"`` or ``"offline"``; a backbone replacing the models'
            generator (a :class:`hoiguide.FlowBackbone` or a spec such as ``"tiny"``,
            ``"hunyuan:PATH"``, ``"python:module:factory"``, loaded after every other input
            is checked); a preset name / YAML / schedule (default: the library's default
            preset); :class:`hoiguide.GuidanceOptions` fields; ``PipelineOptions`` fields
            (over the models file's ``pipeline:`` section).
        device: torch device of every model of the chain (``Models.with_device``) and of a
            backbone given as a spec.
        known_intrinsics: give the chain the dataset's intrinsics (default: the chain
            estimates them, as from a photo). The hand side is always the dataset's.
        num_samples: surface samples per mesh for the metrics.
        video_protocol: also compute :func:`object_aligned_metrics` (ForeHOI's protocol).
        save_meshes: write the photo chain's meshes to ``out/samples/<id>/``.
        overwrite: recompute frames that already have a record.
        progress: a tqdm bar over frames.
        method_name: the row name in the tables (default: from the method).
        command: the command line recorded in ``run.json`` (default: ``sys.argv``).

    Returns:
        The summary (what ``summary.json`` holds).

    Raises:
        EvalError, hoiguide.datasets.DatasetError, hoiguide.ScheduleError,
        hoiguide.adapters.ModelsConfigError: bad input, before anything is written.
        hoiguide.adapters.ModelLoadError: a model of the photo chain cannot be built (on the
            first frame; nothing is written).
        KeyboardInterrupt: passed through; finished frames stay on disk.
    """

    num_samples = int(num_samples)
    if num_samples < 1:
        raise EvalError(f"eval: num_samples must be a positive integer, got {num_samples}")
    ds = open_dataset(dataset, root, mano_dir=mano_dir, **dict(dataset_options or {}))
    selection = ds.select(split=split, limit=limit, seed=seed, order=order)

    # the method
    pred_dir: Optional[Path] = None
    chain: dict[str, Any] = {}
    if predictions is not None:
        pred_dir = Path(predictions).expanduser()
        if not pred_dir.is_dir():
            raise EvalError(f"eval: no such predictions folder: {pred_dir} (expected one "
                            f"sub-folder per frame id holding object.ply and hand.ply)")
        method = {"kind": "predictions", "folder": str(pred_dir.resolve())}
        name = method_name or f"predictions:{pred_dir.name}"
    else:
        from hoiguide.adapters.models import Models
        from hoiguide.adapters.options import PipelineOptions
        from hoiguide.guidance.records import GuidanceOptions
        from hoiguide.phases import DEFAULT_SCHEDULE, load_schedule

        sched = load_schedule(schedule if schedule is not None else DEFAULT_SCHEDULE)
        gopts = GuidanceOptions.coerce(dict(guidance_options or {}) or None)
        mdl = Models.load(models)
        popts = {**mdl.pipeline_options, **dict(pipeline_options or {})}
        PipelineOptions.coerce(popts or None)
        if device is not None:
            mdl = mdl.with_device(device)
        bname = None
        if backbone is not None:
            from hoiguide.backbones.spec import load_backbone

            bname = backbone if isinstance(backbone, str) else backbone_name(backbone)
            backbone = load_backbone(backbone, device) if isinstance(backbone, str) \
                else backbone
            mdl = mdl.replace(backbone=backbone)
        chain = {"models": mdl, "schedule": sched, "guidance_options": gopts,
                 "pipeline_options": popts or None}
        method = {"kind": "photo", "schedule": sched.to_dict(), "models": mdl.describe(),
                  "backbone": bname,
                  "guidance_options": {f.name: getattr(gopts, f.name)
                                       for f in dataclasses.fields(gopts)},
                  "pipeline_options": popts, "known_intrinsics": bool(known_intrinsics)}
        name = method_name or sched.name
    config = {"format_version": FORMAT_VERSION, "dataset": ds.name,
              "root": str(ds.root.resolve()), "dataset_options": dict(dataset_options or {}),
              "method": method, "num_samples": num_samples, "seed": int(seed),
              "video_protocol": bool(video_protocol)}
    fp = fingerprint(config)
    out = Path(out).expanduser()
    run_info = {"format": RUN_FORMAT, "version": FORMAT_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "method_name": name,
                "dataset": ds.name, "root": str(ds.root), "split": None if split is None
                else str(split), "limit": limit, "order": order, "seed": int(seed),
                "frame_ids": [s.id for s in selection], "fingerprint": fp, "config": config,
                "command": command if command is not None else shlex.join(sys.argv)}

    counts = {"ok": 0, "failed": 0, "skipped": 0}
    bar = progress_bar(len(selection), progress, "eval", "frame")
    wrote_run = False
    try:
        for i, sel in enumerate(selection):
            path = out / "samples" / f"{sel.id}.json"
            if not overwrite and path.is_file():
                old = read_json(path, default=None)
                if isinstance(old, dict) and old.get("fingerprint") == fp and \
                        old.get("status") in ("ok", "failed"):
                    counts["skipped"] += 1
                    if bar is not None:
                        bar.update(1)
                    continue
            rec = _evaluate_one(ds, sel, out, pred_dir=pred_dir, chain=chain,
                                seed=scene_seed(seed, sel.id), num_samples=num_samples,
                                video_protocol=video_protocol, save_meshes=save_meshes,
                                known_intrinsics=known_intrinsics)
            rec.update(fingerprint=fp, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            if not wrote_run:
                write_json(out / "run.json", run_info)
                wrote_run = True
            write_json(path, rec)
            counts[rec["status"]] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=counts["ok"], failed=counts["failed"])
            m = rec.get("metrics") or {}
            log.info("eval [%d/%d] %s: %s%s", i + 1, len(selection), sel.id, rec["status"],
                     f" CD {m['cd_cm2']:.3g} cm^2 F5 {m['f5']:.3f}" if rec["status"] == "ok"
                     else f" ({rec['phase']}: {rec['reason']})")
    finally:
        if bar is not None:
            bar.close()
    if not wrote_run:
        write_json(out / "run.json", run_info)
    log.info("eval: %d ok, %d failed, %d skipped (already done); writing %s", counts["ok"],
             counts["failed"], counts["skipped"], out / "summary.json")
    return summarize_evaluation(out)


def _evaluate_one(ds: Any, sel: Any, out: Path, *, pred_dir: Optional[Path],
                  chain: Mapping[str, Any], seed: int, num_samples: int, video_protocol: bool,
                  save_meshes: bool, known_intrinsics: bool) -> dict[str, Any]:
    """One frame: load, predict, score. Never raises except ``KeyboardInterrupt`` and a
    model that cannot be loaded (which would fail every frame)."""

    rec: dict[str, Any] = {"format": RESULT_FORMAT, "version": FORMAT_VERSION,
                           "id": sel.id, "dataset": ds.name, "split_row": sel.row,
                           "seed": int(seed), "metrics": None, "seconds": {}}
    t0 = time.perf_counter()
    phase = "load"
    try:
        sample = ds.get(sel.id, sel.row)
        rec.update(image=str(sample.image_path), object_name=sample.object_name,
                   is_right=sample.is_right)
        rec["seconds"]["load"] = time.perf_counter() - t0
        phase = "predict"
        t1 = time.perf_counter()
        if pred_dir is not None:
            hand, obj, info = read_prediction(pred_dir, sample)
            rec["prediction"] = info
        else:
            hand, obj = _photo_chain(sample, chain, seed, rec, out if save_meshes else None,
                                     known_intrinsics)
        rec["seconds"]["predict"] = time.perf_counter() - t1
        phase = "metrics"
        t2 = time.perf_counter()
        m = hand_aligned_metrics(hand, obj, sample.hand_mesh, sample.object_mesh,
                                 num_samples=num_samples, seed=seed)
        metrics = {k: finite(m.get(k)) for k, _, _ in PAPER_METRICS}
        rec["alignment"] = m["alignment"].to_dict()
        if video_protocol:
            v = object_aligned_metrics(obj, sample.object_mesh, num_samples=num_samples,
                                       seed=seed)
            metrics.update({k: finite(v.get(k)) for k, _, _ in VIDEO_METRICS})
            metrics["diag_cm"] = finite(v.get("diag_cm"))
            rec["object_alignment"] = v["alignment"].to_dict()
        rec["seconds"]["metrics"] = time.perf_counter() - t2
        rec["metrics"] = metrics
        bad = [k for k, _, _ in PAPER_METRICS if metrics[k] is None]
        if bad:
            raise ValueError(f"non-finite metrics: {', '.join(bad)}")
        rec.update(status="ok", phase=None, reason=None)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 -- recorded, counts against RR
        from hoiguide.adapters.models import ModelLoadError

        if isinstance(exc, ModelLoadError):
            raise
        fail = failure_record(exc)
        reason = fail["reason"]
        if getattr(exc, "status", None) and getattr(exc, "stage", None):   # PipelineError
            reason = f"{exc.stage}: {exc.status}"
        log.warning("eval: %s failed while %s: %s", sel.id, phase, reason,
                    exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
        rec.update(status="failed", phase=phase, reason=reason, error=fail["error"],
                   traceback="".join(traceback.format_exception(
                       type(exc), exc, exc.__traceback__))[-4000:])
    rec["seconds"]["total"] = time.perf_counter() - t0
    return rec


def _photo_chain(sample: Any, chain: Mapping[str, Any], seed: int, rec: dict[str, Any],
                 save_dir: Optional[Path], known_intrinsics: bool) -> tuple[Mesh, Mesh]:

    r = guided_reconstruct(
        sample.image, models=chain["models"], schedule=chain["schedule"], seed=int(seed),
        progress=False, options=chain["guidance_options"],
        pipeline_options=chain["pipeline_options"],
        object_name=_object_prompt(sample.object_name),
        camera=sample.camera if known_intrinsics else None,
        left_hand=not sample.is_right)
    rec["reconstruction_status"] = r.status
    rec["counters"] = dict(r.counters)
    rec["timings"] = r.timings
    if save_dir is not None:
        d = save_dir / "samples" / sample.id
        for nm, mesh in (("object", r.object_mesh), ("hand", r.hand_mesh)):
            if not mesh.is_empty:
                write_mesh(d / f"{nm}.ply", mesh.detach().to(device="cpu"))
    if not r.ok:
        raise RuntimeError(f"reconstruction status: {r.status}")
    if r.object_mesh.is_empty:
        raise RuntimeError("reconstruction status: empty object mesh")
    # scored as saved (float32 vertices, what the PLY files hold), so re-scoring the saved
    # meshes with predictions=out/samples gives the same numbers
    return tuple(m.detach().to(device="cpu", dtype=torch.float32).to(dtype=torch.float64)
                 for m in (r.hand_mesh, r.object_mesh))


# --------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------


def summarize_evaluation(out: PathLike) -> dict[str, Any]:
    """(Re)build ``out/summary.json`` and ``out/summary.md`` from ``run.json`` and the
    records in ``out/samples``: the frames ``run.json`` selects whose record has its
    fingerprint count (``n``); ``rr = n_ok / n``; mean and median of each metric over the
    frames that succeeded; selected frames without a record (an interrupted run) are
    counted in ``n_missing``, records of another configuration in ``n_stale``.

    Raises:
        FileNotFoundError: no ``out/run.json``.
    """
    out = Path(out).expanduser()
    run = read_json(out / "run.json")
    fp = run.get("fingerprint")
    results, missing, stale = [], 0, 0
    for fid in run.get("frame_ids") or []:
        r = read_json(out / "samples" / f"{fid}.json", default=None)
        if not isinstance(r, dict) or r.get("format") != RESULT_FORMAT:
            missing += 1
        elif r.get("fingerprint") != fp:
            stale += 1
        else:
            results.append(r)
    ok = [r for r in results if r.get("status") == "ok" and r.get("metrics")]
    video = bool((run.get("config") or {}).get("video_protocol"))
    keys = PAPER_METRICS + (VIDEO_METRICS if video else ())
    metrics = {k: stats([finite((r["metrics"] or {}).get(k)) for r in ok])
               for k, _, _ in keys}
    n = len(results)
    summary = {
        "format": SUMMARY_FORMAT, "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": {k: run.get(k) for k in ("method_name", "dataset", "root", "split", "limit",
                                        "order", "seed", "command", "fingerprint")},
        "video_protocol": video,
        "n": n, "n_ok": len(ok), "rr": (len(ok) / n) if n else None,
        "n_missing": missing, "n_stale": stale, "metrics": metrics,
        "seconds_predict": stats([finite((r.get("seconds") or {}).get("predict"))
                                   for r in ok]),
        "failures": [{"id": r.get("id"), "phase": r.get("phase"), "reason": r.get("reason")}
                     for r in results if r not in ok],
    }
    if missing or stale:
        log.warning("eval: %d selected frame(s) have no record%s; re-run to finish them",
                    missing + stale, f" ({stale} of another configuration)" if stale else "")
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def format_tables(summary: Mapping[str, Any], *, stat: str = "mean") -> str:
    """The summary as Markdown in the paper's layout, one row per method:
    ``| method | CD (cm^2) ↓ | F5 ↑ | F10 ↑ | IV (cm^3) ↓ | RR ↑ |`` with the ``stat``
    (``"mean"`` / ``"median"``) over the frames that succeeded and RR with ``(n_ok/n)``;
    with the video protocol a second table ``| method | F@5% ↑ | F@10% ↑ | CD (cm) ↓ |``."""
    if stat not in _STATS:
        raise ValueError(f"format_tables: expected stat in {_STATS}, got {stat!r}")
    name = (summary.get("run") or {}).get("method_name") or "method"
    m = summary.get("metrics") or {}
    rr = summary.get("rr")
    rr_cell = "–" if rr is None else f"{rr:.2f} ({summary.get('n_ok', 0)}/{summary.get('n', 0)})"

    def table(metrics: Sequence[tuple[str, str, int]], with_rr: bool) -> list[str]:
        head = ["method"] + [h for _, h, _ in metrics] + (["RR ↑"] if with_rr else [])
        cells = [str(name)] + [format_number((m.get(k) or {}).get(stat), d) for k, _, d in metrics]
        if with_rr:
            cells.append(rr_cell)
        return ["| " + " | ".join(head) + " |",
                "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
                "| " + " | ".join(cells) + " |"]

    lines = table(PAPER_METRICS, True)
    if summary.get("video_protocol"):
        lines += [""] + table(VIDEO_METRICS, False)
    return "\n".join(lines) + "\n"


def _markdown(summary: Mapping[str, Any]) -> str:
    run = summary.get("run") or {}
    lines = [
        f"# hoiguide eval: {run.get('dataset')}",
        "",
        f"- frames: {summary.get('n')} ({run.get('split') or 'random selection'}, limit "
        f"{run.get('limit')}, order {run.get('order')}, seed {run.get('seed')})",
        f"- method: {run.get('method_name')}",
        f"- command: `{run.get('command') or '?'}`",
        "- protocol (paper): predicted hand aligned to the ground-truth hand by a similarity, "
        "applied to the object; CD = Chamfer distance (cm^2, sum of the two mean squared "
        "nearest-neighbour distances), F5/F10 = F-score at 5/10 mm, IV = intersection volume "
        "of the aligned hand and object (cm^3, 0.5 cm voxels); metrics over reconstructed "
        "frames only, RR = reconstructed / attempted (failures count).",
    ]
    if summary.get("video_protocol"):
        lines.append("- video protocol (ForeHOI): predicted object aligned to the true object "
                     "by a similarity; F@5%/F@10% = F-score at 5/10 % of the true object's "
                     "bounding-box diagonal; CD (cm) = half the sum of the two mean "
                     "nearest-neighbour distances.")
    if summary.get("n_missing") or summary.get("n_stale"):
        lines.append(f"- incomplete: {summary.get('n_missing', 0)} selected frame(s) without "
                     f"a record, {summary.get('n_stale', 0)} of another configuration")
    lines += ["", "## Mean over frames", "", format_tables(summary, stat="mean"),
              "## Median over frames", "", format_tables(summary, stat="median")]
    fails = summary.get("failures") or []
    if fails:
        lines += ["## Failures", ""]
        lines += [f"- {f['id']} ({f['phase']}): {f['reason']}" for f in fails]
        lines.append("")
    return "\n".join(lines)
