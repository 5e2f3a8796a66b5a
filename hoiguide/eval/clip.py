"""Metrics of a reconstructed CLIP (one object over ``T`` frames, a hand per frame) against the
ground truth.

Inputs per frame ``t``: a predicted hand and object mesh (or ``None`` where that method made
no prediction, e.g. a single-image method outside its frame) and the ground-truth hand and
object meshes, each frame's meshes in that frame's camera frame (OpenCV: +x right, +y down,
+z forward, metres; a static camera makes it one frame for the whole clip). Outputs in the
paper's units (cm^2, cm^3) and mm/frame^2 for the jitter.

Definitions (:func:`clip_metrics`):

* **Per-frame object metrics**: the paper's hand-aligned protocol
  (:func:`hoiguide.eval.hand_aligned_metrics`) in every predicted frame: the predicted hand
  is aligned to that frame's true hand by a similarity, the same similarity moves the
  predicted object, then Chamfer distance (``cd_cm2``), F-score at 5 / 10 mm (``f5``,
  ``f10``) and the intersection volume of the aligned predicted hand and object
  (``iv_cm3``). The clip's value is the mean over the predicted frames; ``reference_*`` is
  the reference frame's value.
* **Hidden side** (``hidden_cd_cm2``, ``hidden_f10``, ``hidden_fraction``): "hidden" means
  not seen in ANY frame: ``num_samples`` surface samples of the true object in the
  reference frame are carried into every frame by the true object's motion (vertex
  correspondence of the true meshes: one closed-form similarity per frame) and a sample is
  hidden when :func:`hoiguide.eval.protocol.hidden_surface_mask` calls it hidden in every
  frame (behind the object itself, behind the hand, or outside the image; by the frame's
  rendered depth). Per frame, with the hand-aligned predicted object's samples ``P`` and the
  true samples ``G`` of that frame: ``hidden_cd_cm2 = mean_{g in G hidden} d(g, P)^2 +
  mean_{p in P whose nearest true sample is hidden} d(p, G)^2`` (cm^2) and ``hidden_f10`` =
  fraction of hidden true samples within 10 mm of the prediction (as the single-image
  protocol, with the clip's hidden set); averaged over the predicted frames.
* **Temporal jitter** (``object_jitter_mm``, ``hand_jitter_mm``, and ``gt_*`` for the
  truth; mm/frame^2): the mean magnitude of the second difference ``x_{t+1} - 2 x_t +
  x_{t-1}`` of tracked points over every three consecutive predicted frames, in the camera
  frame (no alignment; a perfectly smooth constant-velocity motion scores 0, the truth's
  own acceleration is its ``gt_*`` value). Hand: the hand mesh's vertices (one topology in
  every frame). Object: ``jitter_points`` surface samples of the first frame's object of a
  run of consecutive predicted frames, carried from frame to frame by the similarity that
  maps each frame's object onto the next: closed form from vertex correspondence when
  the two meshes share their faces (one shape placed per frame, as a clip
  reconstruction and the truth give, so the points are exactly the shape's surface points),
  else trimmed ICP with scale between the two meshes (per-frame independent
  reconstructions: the tracked points then follow the best rigid-plus-scale explanation of
  how the surface moved, so a surface that changes shape or jumps between frames jitters).
  ``object_jitter_ratio`` = ``object_jitter_mm / gt_object_jitter_mm``. With ``fps`` the same
  values are also given in m/s^2.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from hoiguide.eval.metrics import check_count, geometry_points, nn_distances
from hoiguide.eval.protocol import hand_aligned_metrics, hidden_surface_mask
from hoiguide.geometry import fit_similarity, icp
from hoiguide.types import Camera, Mesh, Similarity

__all__ = ["clip_metrics", "clip_hidden_mask", "trajectory_jitter", "object_tracks"]

log = logging.getLogger(__name__)

_PER_FRAME = ("cd_cm2", "f5", "f10", "iv_cm3", "hidden_cd_cm2", "hidden_f10")


def _usable(m: Any) -> bool:
    return isinstance(m, Mesh) and not m.is_empty


def _check_lists(fn: str, **lists: Sequence) -> int:
    T = None
    for name, xs in lists.items():
        if isinstance(xs, (str, bytes, Mesh)) or not hasattr(xs, "__len__"):
            raise TypeError(f"{fn}: expected {name} to be a list with one entry per frame, got "
                            f"{type(xs).__name__}")
        if T is None:
            T = len(xs)
        elif len(xs) != T:
            raise ValueError(f"{fn}: expected one entry per frame in every list; {name} has "
                             f"{len(xs)}, the first list {T}")
    if not T:
        raise ValueError(f"{fn}: expected at least one frame, got none")
    return int(T)


def _gt_motion(gt_objects: Sequence[Mesh], reference: int, fn: str) -> list[Similarity]:
    """Per frame, the similarity moving the reference frame's true object onto frame t's
    (vertex correspondence; the true meshes share a topology)."""
    ref = gt_objects[reference]
    out = []
    for t, g in enumerate(gt_objects):
        if g.num_vertices != ref.num_vertices:
            raise ValueError(f"{fn}: the ground-truth object of frame {t} has "
                             f"{g.num_vertices} vertices, the reference's {ref.num_vertices}; "
                             "the true meshes must be one mesh moved per frame")
        out.append(Similarity.identity() if t == reference else
                   fit_similarity(ref.vertices.detach(), g.vertices.detach()))
    return out


def clip_hidden_mask(gt_objects: Sequence[Mesh], cameras: Sequence[Camera],
                     depths: Sequence[np.ndarray], *, reference: int = 0,
                     num_samples: int = 10000, seed: int = 0,
                     tolerance: float = 0.01) -> tuple[np.ndarray, np.ndarray, list]:
    """Which true object surface points are seen in NO frame.

    Args:
        gt_objects: per frame the true object (camera frame, metres), one mesh moved.
        cameras, depths: per frame the camera and the rendered scene depth (metres, 0 =
            empty; :attr:`hoiguide.synth.Scene.depth`).
        reference: the frame whose object is sampled.
        num_samples, seed: surface samples of the reference frame's true object.
        tolerance: metres, as :func:`hoiguide.eval.protocol.hidden_surface_mask`.

    Returns:
        ``(samples, hidden, motions)``: ``(N, 3)`` samples in the reference frame,
        ``(N,)`` bool hidden in every frame, and per frame the similarity carrying the
        reference samples into that frame.
    """
    fn = "clip_hidden_mask"
    T = _check_lists(fn, gt_objects=gt_objects, cameras=cameras, depths=depths)
    if not 0 <= int(reference) < T:
        raise ValueError(f"{fn}: reference {reference} is not a frame index (0-{T - 1})")
    motions = _gt_motion(gt_objects, int(reference), fn)
    g_ref = geometry_points(gt_objects[int(reference)], "gt_objects[reference]", fn,
                            check_count(num_samples, "num_samples", fn), seed)
    hidden = np.ones(len(g_ref), bool)
    for t in range(T):
        g_t = np.asarray(motions[t].apply(g_ref))
        hidden &= hidden_surface_mask(g_t, cameras[t], depths[t], tolerance=tolerance)
    return g_ref, hidden, motions


def trajectory_jitter(points: Sequence[Optional[np.ndarray]]) -> Optional[float]:
    """Mean second-difference magnitude (mm/frame^2) of tracked points.

    ``points[t]`` is ``(N, 3)`` metres (the same N points in every frame) or ``None`` for an
    untracked frame; every three consecutive tracked frames ``t-1, t, t+1`` contribute
    ``mean_i |x_i(t+1) - 2 x_i(t) + x_i(t-1)|``. ``None`` when no such triple exists."""
    vals = []
    for t in range(1, len(points) - 1):
        a, b, c = points[t - 1], points[t], points[t + 1]
        if a is None or b is None or c is None:
            continue
        acc = np.asarray(c, np.float64) - 2 * np.asarray(b, np.float64) + np.asarray(a, np.float64)
        vals.append(float(np.linalg.norm(acc, axis=1).mean()))
    return 1000.0 * float(np.mean(vals)) if vals else None


def _step(a: Mesh, b: Mesh, seed: int, num_samples: int) -> Similarity:
    """The similarity mapping mesh ``a`` onto mesh ``b`` (consecutive frames)."""
    va, vb = a.vertices.detach().double(), b.vertices.detach().double()
    if a.num_vertices == b.num_vertices and a.num_faces == b.num_faces and \
            torch.equal(a.faces.cpu(), b.faces.cpu()):
        try:
            return fit_similarity(va, vb)
        except ValueError:
            pass
    init = Similarity(torch.tensor(1.0, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                      (vb.mean(0) - va.mean(0)))
    return icp(a.detach().to(dtype=torch.float64), b.detach().to(dtype=torch.float64),
               init=init, trim=0.1, scale_range=(0.8, 1.25), num_samples=num_samples,
               seed=seed)


def object_tracks(objects: Sequence[Optional[Mesh]], *, num_points: int = 512, seed: int = 0,
                  icp_samples: int = 3000) -> list[Optional[np.ndarray]]:
    """Tracked object surface points per frame (see the module docstring, "jitter"):
    ``(num_points, 3)`` metres per frame with an object, ``None`` elsewhere."""
    out: list[Optional[np.ndarray]] = [None] * len(objects)
    prev_mesh, pts = None, None
    for t, m in enumerate(objects):
        if not _usable(m):
            prev_mesh, pts = None, None
            continue
        if prev_mesh is None:
            pts = geometry_points(m.detach().to(dtype=torch.float64), "object", "object_tracks",
                                  num_points, seed)
        else:
            S = _step(prev_mesh, m, seed, icp_samples)
            pts = np.asarray(S.apply(pts))
        out[t] = pts
        prev_mesh = m
    return out


def _hand_tracks(hands: Sequence[Optional[Mesh]]) -> list[Optional[np.ndarray]]:
    out: list[Optional[np.ndarray]] = []
    n = None
    for h in hands:
        if not _usable(h):
            out.append(None)
            continue
        v = h.vertices.detach().double().cpu().numpy()
        if n is not None and len(v) != n:
            raise ValueError("clip_metrics: the hand meshes have different vertex counts "
                             f"({n} and {len(v)}); hand jitter needs one topology")
        n = len(v)
        out.append(v)
    return out


def _hidden_side(obj_aligned: Mesh, g_t: np.ndarray, hidden: np.ndarray, num_samples: int,
                 seed: int) -> tuple[float, float]:
    """hidden CD (cm^2) and hidden F10 of one frame (see the module docstring)."""
    from scipy.spatial import cKDTree

    p = geometry_points(obj_aligned, "aligned pred_object", "clip_metrics", num_samples, seed)
    d_pg, d_gp = nn_distances(p, g_t)
    if not hidden.any():
        return 0.0, 1.0
    d_comp = d_gp[hidden]
    nn = cKDTree(g_t).query(p)[1]
    d_acc = d_pg[hidden[nn]]
    acc = float(np.mean(d_acc ** 2)) if len(d_acc) else 0.0
    return 1e4 * (float(np.mean(d_comp ** 2)) + acc), float(np.mean(d_comp <= 0.010))


def _mean(xs: list) -> Optional[float]:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if vals else None


def clip_metrics(pred_hands: Sequence[Optional[Mesh]], pred_objects: Sequence[Optional[Mesh]],
                 gt_hands: Sequence[Mesh], gt_objects: Sequence[Mesh], *,
                 cameras: Optional[Sequence[Camera]] = None,
                 depths: Optional[Sequence[np.ndarray]] = None, reference: int = 0,
                 fps: Optional[float] = None, num_samples: int = 10000, seed: int = 0,
                 voxel: float = 0.005, jitter_points: int = 512) -> dict[str, Any]:
    """Object and hand metrics of a reconstructed clip (definitions in the module docstring).

    Args:
        pred_hands, pred_objects: per frame the predicted hand and object (camera frame of
            that frame, metres) or ``None`` (not predicted: that frame is left out of the
            per-frame means and breaks the jitter's triples).
        gt_hands, gt_objects: per frame the ground truth (camera frame, metres); the true
            object is one mesh moved per frame, the true hand one topology.
        cameras, depths: per frame the camera and the rendered scene depth (metres, 0 =
            empty): with both, the hidden-side metrics (hidden = seen in no frame).
        reference: the reference frame (``reference_*`` values, hidden-set samples).
        fps: frames per second; when given, jitters are also reported in m/s^2.
        num_samples: surface samples per mesh (Chamfer, F-score, hidden side).
        seed: sampling seed.
        voxel: intersection-volume voxel, metres (paper: 0.005).
        jitter_points: tracked object surface points for the object jitter.

    Returns:
        ``num_frames``, ``reference``, ``frames_scored`` (indices), the per-frame means
        ``cd_cm2`` (cm^2), ``f5``, ``f10``, ``iv_cm3`` (cm^3), ``hidden_cd_cm2``,
        ``hidden_f10``; ``reference_<metric>`` (``None`` when the reference frame has no
        prediction); ``hidden_fraction``; ``object_jitter_mm``, ``hand_jitter_mm``,
        ``gt_object_jitter_mm``, ``gt_hand_jitter_mm`` (mm/frame^2; ``None`` without three
        consecutive predicted frames) and ``object_jitter_ratio`` / ``hand_jitter_ratio``
        (prediction / truth); with ``fps`` also ``*_jitter_m_s2``; ``per_frame`` (a dict
        of the metrics per frame, ``None`` for unpredicted frames).

    Raises:
        ValueError / TypeError: lists of different lengths, a bad reference, missing or
            empty ground truth (one line naming the input).
    """
    fn = "clip_metrics"
    T = _check_lists(fn, pred_hands=pred_hands, pred_objects=pred_objects, gt_hands=gt_hands,
                     gt_objects=gt_objects)
    ref = int(reference)
    if isinstance(reference, bool) or not 0 <= ref < T:
        raise ValueError(f"{fn}: reference {reference!r} is not a frame index (0-{T - 1})")
    for name, xs in (("gt_hands", gt_hands), ("gt_objects", gt_objects)):
        for t, m in enumerate(xs):
            if not _usable(m):
                raise ValueError(f"{fn}: {name}[{t}] must be a non-empty hoiguide Mesh")
    num_samples = check_count(num_samples, "num_samples", fn)
    if (cameras is None) != (depths is None):
        raise ValueError(f"{fn}: give both cameras and depths (hidden-side metrics) or neither")
    hidden_info = None
    if cameras is not None:
        _check_lists(fn, gt_objects=gt_objects, cameras=cameras, depths=depths)
        g_ref, hidden, motions = clip_hidden_mask(gt_objects, cameras, depths, reference=ref,
                                                  num_samples=num_samples, seed=seed)
        hidden_info = (g_ref, hidden, motions)

    per_frame: list[Optional[dict[str, Any]]] = []
    for t in range(T):
        ph, po = pred_hands[t], pred_objects[t]
        if not (_usable(ph) and _usable(po)):
            per_frame.append(None)
            continue
        m = hand_aligned_metrics(ph, po, gt_hands[t], gt_objects[t], num_samples=num_samples,
                                 seed=seed, voxel=voxel)
        rec = {k: float(m[k]) for k in ("cd_cm2", "f5", "f10", "iv_cm3")}
        rec["alignment"] = m["alignment"].to_dict()
        if hidden_info is not None:
            g_ref, hidden, motions = hidden_info
            g_t = np.asarray(motions[t].apply(g_ref))
            obj_al = po.detach().to(dtype=torch.float64).transformed(m["alignment"])
            rec["hidden_cd_cm2"], rec["hidden_f10"] = _hidden_side(obj_al, g_t, hidden,
                                                                   num_samples, seed)
        per_frame.append(rec)

    scored = [t for t in range(T) if per_frame[t] is not None]
    out: dict[str, Any] = {"num_frames": T, "reference": ref, "frames_scored": scored}
    for k in _PER_FRAME:
        out[k] = _mean([per_frame[t].get(k) for t in scored])
        out[f"reference_{k}"] = per_frame[ref].get(k) if per_frame[ref] is not None else None
    out["hidden_fraction"] = float(hidden_info[1].mean()) if hidden_info is not None else None

    obj_tr = object_tracks(list(pred_objects), num_points=jitter_points, seed=seed)
    gt_tr = object_tracks(list(gt_objects), num_points=jitter_points, seed=seed)
    out["object_jitter_mm"] = trajectory_jitter(obj_tr)
    out["gt_object_jitter_mm"] = trajectory_jitter(gt_tr)
    out["hand_jitter_mm"] = trajectory_jitter(_hand_tracks(pred_hands))
    out["gt_hand_jitter_mm"] = trajectory_jitter(_hand_tracks(gt_hands))
    for what in ("object", "hand"):
        p, g = out[f"{what}_jitter_mm"], out[f"gt_{what}_jitter_mm"]
        out[f"{what}_jitter_ratio"] = (p / g) if (p is not None and g) else None
    if fps is not None:
        f = float(fps)
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"{fn}: expected fps to be a positive number, got {fps!r}")
        for k in ("object_jitter", "hand_jitter", "gt_object_jitter", "gt_hand_jitter"):
            v = out[f"{k}_mm"]
            out[f"{k}_m_s2"] = None if v is None else v * 1e-3 * f * f
    out["per_frame"] = per_frame
    return out
