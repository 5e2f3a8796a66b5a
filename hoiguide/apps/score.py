"""Reconstruct and score one synthetic scene: the one function ``hoiguide demo``, ``hoiguide
bench`` and ``hoiguide batch`` share, so the same scene and seed give the same observations,
the same reconstruction and the same numbers in all three."""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import time
from typing import Any, Iterable, Optional

from hoiguide.eval.protocol import hand_aligned_metrics, object_aligned_metrics
from hoiguide.guidance.engine import GuidedSampler
from hoiguide.result import Reconstruction

__all__ = ["METRICS", "BUDGET", "scene_seed", "finite", "backbone_name", "reconstruct_and_score", "stats",
           "format_number", "progress_bar", "in_training_set"]

log = logging.getLogger(__name__)

#: the per-scene metrics, in table order (name in JSON, table header, digits)
METRICS = (("cd_cm2", "CD (cm^2) ↓", 3), ("f5", "F5 ↑", 3), ("f10", "F10 ↑", 3),
           ("iv_cm3", "IV (cm^3) ↓", 2), ("hidden_cd_cm2", "hidden CD (cm^2) ↓", 3),
           ("components", "parts ↓", 1))

#: the error budget (:func:`hoiguide.eval.object_aligned_metrics` on the hand-aligned object):
#: shape error after aligning the object to the truth, and that alignment's size / rotation /
#: translation (name in JSON, table header, digits)
BUDGET = (("shape_cd_cm2", "shape CD (cm^2) ↓", 3), ("placement_scale_pct", "size err (%) ↓", 1),
          ("placement_rotation_deg", "rotation err (°) ↓", 1),
          ("placement_translation_cm", "translation err (cm) ↓", 2))


def scene_seed(seed: int, scene_id: str) -> int:
    """The per-scene seed: a stable hash of ``(seed, scene_id)`` in ``[0, 2^31)``.

    Stable across runs, processes and machines (SHA-256, not Python's salted ``hash``).
    Used for the scene's simulated observations, the flow's initial noise and the metrics'
    surface sampling, so every preset (and every command) sees identical inputs."""
    digest = hashlib.sha256(f"{int(seed)}/{scene_id}".encode()).hexdigest()
    return int(digest[:8], 16) % (2 ** 31)


def finite(x: Any) -> Optional[float]:
    """``float(x)`` when it is a finite number, else ``None`` (what JSON records hold)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def backbone_name(backbone: Any) -> str:
    """A backbone's ``name`` attribute, or its class's dotted name."""
    name = getattr(backbone, "name", None)
    if isinstance(name, str) and name:
        return name
    cls = type(backbone)
    return f"{cls.__module__}.{cls.__qualname__}"


def reconstruct_and_score(scene: Any, obs: Any, schedule: Any, *, backbone: Any, seed: int,
                          options: Any = None, num_samples: int = 10_000,
                          progress: bool = False, record: Optional[dict[str, Any]] = None
                          ) -> tuple[Reconstruction, dict[str, Any]]:
    """Guided reconstruction of ``scene`` from ``obs`` and the paper's hand-aligned metrics.

    Args:
        scene: a :class:`hoiguide.synth.Scene` (ground truth in its camera frame, metres).
        obs: its :class:`hoiguide.Observations` (e.g. ``simulate_observations(scene, ...,
            seed=scene_seed(seed, scene.scene_id))``).
        schedule, options: the phase schedule and :class:`hoiguide.GuidanceOptions`.
        seed: the flow's initial noise and the metrics' surface sampling.
        record: a dict filled as the work goes (``record["phase"]`` is the part in progress,
            so a caller that catches an exception knows where it happened).

    Returns:
        ``(reconstruction, record)``; ``record`` has ``status`` (``"ok"``/``"failed"``),
        ``reason``, ``reconstruction_status``, ``seconds_reconstruct``, ``seconds_metrics``,
        ``counters``, ``timings``, ``num_steps``, ``object_mesh`` (sizes), ``metrics``
        (:data:`METRICS`, the error budget :data:`BUDGET`, ``hidden_f10``,
        ``hidden_fraction``, ``components_raw``; cm^2, cm^3, %, degrees, cm), ``alignment``
        (prediction -> truth similarity, by the hands) and ``object_alignment`` (the aligned
        prediction -> truth object similarity of the error budget).
    """
    res = record if record is not None else {}
    res["phase"] = "reconstruct"
    t0 = time.perf_counter()
    rec = GuidedSampler(backbone, schedule, options).run(obs, seed=int(seed), progress=progress)
    res["seconds_reconstruct"] = time.perf_counter() - t0
    res["reconstruction_status"] = rec.status
    res["counters"] = dict(rec.counters)
    res["timings"] = rec.timings
    res["num_steps"] = rec.num_steps
    res["object_mesh"] = {"vertices": rec.object_mesh.num_vertices,
                          "faces": rec.object_mesh.num_faces}
    res["metrics"] = None
    if not rec.ok or rec.object_mesh.is_empty:
        status = rec.status if not rec.ok else "empty object mesh"
        res.update(status="failed", reason=f"reconstruction status: {status}")
        return rec, res
    res["phase"] = "metrics"
    t1 = time.perf_counter()
    m = hand_aligned_metrics(rec.hand_mesh, rec.object_mesh, scene.hand_mesh,
                             scene.object_mesh, num_samples=int(num_samples), seed=int(seed),
                             camera=scene.camera, depth=scene.depth)
    m["components"] = rec.counters.get("components")
    budget = object_aligned_metrics(rec.object_mesh.transformed(m["alignment"]),
                                    scene.object_mesh, num_samples=int(num_samples),
                                    seed=int(seed))
    res["seconds_metrics"] = time.perf_counter() - t1
    metrics = {k: finite(m.get(k)) for k, _, _ in METRICS}
    for k in ("hidden_f10", "hidden_fraction"):
        metrics[k] = finite(m.get(k))
    metrics["components_raw"] = finite(rec.counters.get("components_raw"))
    metrics.update({k: finite(budget[k]) for k, _, _ in BUDGET})
    res["metrics"] = metrics
    res["alignment"] = m["alignment"].to_dict()
    res["object_alignment"] = budget["object_alignment"].to_dict()
    bad = [k for k in ("cd_cm2", "f5", "f10", "iv_cm3") if metrics[k] is None]
    if bad:
        res.update(status="failed", reason=f"non-finite metrics: {', '.join(bad)}")
        return rec, res
    res.update(status="ok", phase=None, reason=None)
    return rec, res


def stats(values: Iterable[Optional[float]]) -> dict[str, Optional[float]]:
    """``{"mean", "median"}`` of the values that are not ``None`` (both ``None`` if none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "median": None}
    return {"mean": float(statistics.fmean(vals)), "median": float(statistics.median(vals))}


def format_number(x: Optional[float], digits: int) -> str:
    """``x`` with ``digits`` decimals, or an en dash for a missing value (tables)."""
    return "–" if x is None else f"{x:.{digits}f}"


def progress_bar(total: int, enabled: bool, desc: str, unit: str) -> Any:
    """A tqdm bar over ``total`` items (``None`` when disabled or tqdm is missing)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, leave=True)


def in_training_set(source: Optional[str], patterns: Iterable[str]) -> bool:
    """Whether an object spec (a scene's ``object``: ``"pybullet:538"``,
    ``"procedural:mug"``, ``"procedural:mug@10003"``) matches one of a generator's
    training patterns (``"pybullet:0-599"``, ``"procedural:*"``, ``"procedural:mug"``,
    ``"procedural:mug@0-9999"``)."""
    if not source:
        return False
    kind, _, rest = str(source).partition(":")
    name, _, seed = rest.partition("@")
    for pat in patterns:
        pkind, _, prest = str(pat).partition(":")
        if pkind != kind:
            continue
        pname, _, pseed = prest.partition("@")
        if kind == "pybullet" and "-" in pname and name.isdigit():
            lo, hi = (int(x) for x in pname.split("-", 1))
            if lo <= int(name) <= hi:
                return True
            continue
        if pname not in ("*", name):
            continue
        if not pseed:
            return True
        if seed.isdigit() and "-" in pseed:
            lo, hi = (int(x) for x in pseed.split("-", 1))
            if lo <= int(seed) <= hi:
                return True
    return False
