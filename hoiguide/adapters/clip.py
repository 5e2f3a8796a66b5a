"""Many frames of one clip -> :class:`~hoiguide.types.ClipObservations` (the image chain per
frame, with the hand box tracked between frames).

:func:`clip_observations_from_frames` runs the single-image chain
(:func:`hoiguide.adapters.pipeline.run_chain`: detect, crop, segment, inpaint, geometry,
hand, coarse mesh, alignment) on every frame with ONE set of models, and adds what a clip
needs:

* **Box tracking.** First every frame's hand boxes (prompt ``hand``) and object boxes (the
  object prompt, else the fallback prompt) are detected. Per frame the most confident box is
  compared with the median of the boxes of its neighbours (``window`` frames each side): a
  box whose centre lies farther than ``gate`` box sizes (``sqrt(w h)``) from that median,
  or whose size is off by more than 2x, is an outlier. The track is the inlier boxes,
  linearly interpolated over frames without one (held at the clip's ends). Each frame then
  uses its detection nearest the track when it lies within the gate, else the track's box
  (``hand_box_source``: ``detected``, ``interpolated``, ``held`` or ``replaced`` -- a
  detection rejected as a jump). So a frame where the detector misses the hand, or jumps to
  another one, still gets a crop; a frame where the chain fails anyway (no hand mask, the
  object cut off by the border, ...) becomes ``None`` in the clip with its reason in
  ``metadata["frames"][t]``.
* **One camera.** Every frame uses the same full-frame intrinsics: ``camera`` when given,
  else those of the first frame the chain succeeds on (the monocular-geometry model's, or
  :func:`hoiguide.adapters.crop.default_camera`), passed to every later frame. So every
  frame's observations live in the same 3D frame when the camera does not move.
* **One hand side.** ``left_hand`` holds for the whole clip (the crops of a left hand are
  mirrored, as for a photo; handedness is not detected).

Frames: each frame's :class:`~hoiguide.types.Observations` is in that frame's crop camera
frame = the full frame's OpenCV camera frame (+x right, +y down, +z forward, metres),
mirrored ``x -> -x`` for a left hand; :func:`clip_to_full_frame` brings a
:class:`~hoiguide.result.ClipReconstruction` back to the video's (unmirrored) frame.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hoiguide.adapters.models import Models
from hoiguide.adapters.options import PipelineOptions
from hoiguide.adapters.pipeline import (
    PipelineError,
    _best_box,
    check_camera,
    check_chain_arguments,
    mirror_mesh,
    run_chain,
)
from hoiguide.io import ImageError, load_image
from hoiguide.result import ClipReconstruction
from hoiguide.types import Camera, ClipObservations, Similarity
from hoiguide.videoio import VideoError

__all__ = ["clip_observations_from_frames", "clip_to_full_frame", "track_boxes",
           "TRACK_GATE", "TRACK_WINDOW"]

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

TRACK_GATE = 1.0
"""A detection whose centre lies farther than this many box sizes (``sqrt(w h)``) from the
track (the median of its neighbours' boxes) is rejected as a jump."""

TRACK_WINDOW = 2
"""Frames on each side whose boxes make the median a detection is compared with."""


# --------------------------------------------------------------------------------------
# box tracking
# --------------------------------------------------------------------------------------


def _centre_size(b: Sequence[float]) -> tuple[np.ndarray, float]:
    x0, y0, x1, y1 = b
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), float(np.sqrt((x1 - x0) * (y1 - y0)))


def _near(box: Sequence[float], ref: Sequence[float], gate: float) -> bool:
    c, s = _centre_size(box)
    cr, sr = _centre_size(ref)
    return bool(np.linalg.norm(c - cr) <= gate * sr and 0.5 <= s / max(sr, 1e-9) <= 2.0)


def track_boxes(candidates: Sequence[Sequence[tuple[Sequence[float], float]]], *,
                gate: float = TRACK_GATE, window: int = TRACK_WINDOW
                ) -> tuple[list[Optional[Box]], list[str]]:
    """One box per frame from each frame's detections (see the module docstring).

    Args:
        candidates: per frame, the detections ``[(box, score), ...]``, boxes ``(x0, y0, x1,
            y1)`` in full-image pixels (may be empty).
        gate: :data:`TRACK_GATE`.
        window: :data:`TRACK_WINDOW`.

    Returns:
        ``(boxes, sources)``: per frame the box used (``None`` only when no frame has a
        detection) and where it came from: ``"detected"``, ``"interpolated"`` (between the
        track's neighbours), ``"held"`` (before the first / after the last tracked frame),
        ``"replaced"`` (detections rejected as jumps) or ``"none"``.
    """
    T = len(candidates)
    cands = [[(tuple(float(x) for x in b), float(s)) for b, s in c] for c in candidates]
    best = [max(c, key=lambda d: d[1])[0] if c else None for c in cands]
    have = [t for t in range(T) if best[t] is not None]
    if not have:
        return [None] * T, ["none"] * T
    inliers = []
    for t in have:
        near = [best[u] for u in range(max(0, t - window), min(T, t + window + 1))
                if best[u] is not None]
        if len(near) < 3:
            inliers.append(t)
            continue
        cs = [_centre_size(b) for b in near]
        med_c = np.median(np.stack([c for c, _ in cs]), axis=0)
        med_s = float(np.median([s for _, s in cs]))
        half = med_s / 2
        if _near(best[t], (med_c[0] - half, med_c[1] - half, med_c[0] + half,
                           med_c[1] + half), gate):
            inliers.append(t)
    if not inliers:
        inliers = have
    anchors = np.array(inliers)
    anchor_boxes = np.array([best[t] for t in inliers], np.float64)

    def predicted(t: int) -> tuple[Box, str]:
        if t <= anchors[0] or t >= anchors[-1]:
            j = 0 if t <= anchors[0] else len(anchors) - 1
            return tuple(anchor_boxes[j]), ("held" if t != anchors[j] else "detected")
        k = int(np.searchsorted(anchors, t))
        if anchors[k] == t:
            return tuple(anchor_boxes[k]), "detected"
        a, b = anchors[k - 1], anchors[k]
        w = (t - a) / (b - a)
        return tuple((1 - w) * anchor_boxes[k - 1] + w * anchor_boxes[k]), "interpolated"

    boxes: list[Optional[Box]] = []
    sources: list[str] = []
    for t in range(T):
        pred, how = predicted(t)
        ok = [b for b, _ in cands[t] if _near(b, pred, gate)]
        if ok:
            c0, _ = _centre_size(pred)
            boxes.append(min(ok, key=lambda b: float(np.linalg.norm(_centre_size(b)[0] - c0))))
            sources.append("detected")
        else:
            boxes.append(tuple(float(x) for x in pred))
            sources.append("replaced" if cands[t] else ("held" if how == "held" else
                                                        "interpolated"))
    return boxes, sources


class _TrackedSegmenter:
    """The segmenter with its hand and object detections replaced by the clip's tracked
    boxes (set per frame); everything else goes to the real segmenter."""

    def __init__(self, segmenter: Any, hand_prompt: str, object_prompts: Sequence[str]) -> None:
        self.segmenter = segmenter
        self.hand_prompt = hand_prompt
        self.object_prompts = set(object_prompts)
        self.hand: Optional[tuple[Box, float]] = None
        self.object: Optional[tuple[Box, float]] = None

    def detect(self, image: Any, prompt: str) -> list[tuple[Box, float, str]]:
        if prompt == self.hand_prompt:
            return [] if self.hand is None else [(self.hand[0], self.hand[1], prompt)]
        if prompt in self.object_prompts:
            return [] if self.object is None else [(self.object[0], self.object[1], prompt)]
        return self.segmenter.detect(image, prompt)

    def segment(self, *args: Any, **kwargs: Any) -> Any:
        return self.segmenter.segment(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.segmenter, name)


def _detections(seg: Any, img: np.ndarray, prompt: str) -> list[tuple[Box, float]]:
    """Every valid box the detector returns for ``prompt`` (a detector that found nothing
    returns ``[]``)."""
    try:
        dets = seg.detect(img, prompt)
    except Exception as exc:  # noqa: BLE001 -- NoDetectionError: nothing found
        if type(exc).__name__ == "NoDetectionError":
            return []
        raise
    out = []
    for d in dets or ():
        b = _best_box([d])
        if b is not None:
            out.append(b)
    return out


# --------------------------------------------------------------------------------------
# the clip
# --------------------------------------------------------------------------------------


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="frames", unit="frame", leave=False)


def clip_observations_from_frames(
        frames: Sequence[Any], models: Any, *, object_name: str = "object",
        camera: Any = None, seed: int = 0, left_hand: Optional[bool] = None,
        options: Union[PipelineOptions, Mapping[str, Any], None] = None,
        progress: bool = True, times: Optional[Sequence[float]] = None, fps: float = 30.0,
        metadata: Optional[Mapping[str, Any]] = None
) -> tuple[ClipObservations, list[Any]]:
    """The image chain on every frame of a clip, the hand box tracked between frames (see
    the module docstring).

    Args:
        frames: ``T`` frames of one size: ``(H, W, 3|4)`` / ``(H, W)`` arrays (or anything
            :func:`hoiguide.io.load_image` takes), e.g. from :func:`hoiguide.videoio.read_frames`.
        models: a :class:`~hoiguide.adapters.models.Models` (or anything ``Models.load``
            accepts); every role is built once, before the first frame.
        object_name: what the hand holds, in words (the detection and inpainting prompt).
        camera: the video's intrinsics (a Camera, or ``(fx, fy, cx, cy)`` in pixels of the
            frames); ``None``: those of the first frame the chain succeeds on.
        seed: the coarse generator runs' noise and the alignment's sampling (every frame).
        left_hand: ``True``: a left hand in the whole clip (the crops are mirrored).
        options: :class:`PipelineOptions` or a mapping of its fields (default: the models'
            ``pipeline`` section).
        progress: a progress bar over the frames (tqdm, if installed; else a log line per
            frame).
        times: ``(T,)`` frame times in seconds, strictly increasing (default ``t / fps``).
        fps: frames per second when ``times`` is not given.
        metadata: added to the clip's metadata (e.g. the video's ``read_frames`` info).

    Returns:
        ``(clip, crops)``: the :class:`~hoiguide.types.ClipObservations` (a frame the chain
        failed on is ``None``; ``metadata`` has ``camera`` (full-frame intrinsics, pixels),
        ``camera_source``, ``left_hand``, ``object_name``, ``tracking`` (counts per box
        source) and ``frames``: per frame ``status`` (``"ok"`` or the chain's status),
        ``stage``, ``reason``, ``hand_box`` / ``object_box`` (full-frame pixels) with their
        ``*_source``, ``crop`` and ``seconds``), and per frame its
        :class:`~hoiguide.adapters.crop.Crop` (``None`` for a failed frame).

    Raises:
        PipelineError: no frame shows a hand (``status`` ``"no hand detected"``), or the
            chain failed on every frame (the most common status; the message counts them).
        hoiguide.videoio.VideoError: no frames, frames of different sizes, bad times.
        ValueError, TypeError: bad arguments.
        hoiguide.adapters.models.ModelLoadError: a model cannot be built.
    """
    t_start = time.perf_counter()
    check_chain_arguments(object_name, seed, left_hand)
    name = object_name.strip()
    mdl = Models.load(models)
    if options is None:
        options = mdl.pipeline_options or None
    opts = PipelineOptions.coerce(options)
    frames = list(frames)
    T = len(frames)
    if T == 0:
        raise VideoError("clip: no frames given; expected at least one frame")
    imgs: list[np.ndarray] = []
    infos: list[dict[str, Any]] = []
    for t, f in enumerate(frames):
        try:
            img, info = load_image(f, max_megapixels=opts.max_megapixels)
        except ImageError as exc:
            raise VideoError(f"clip frame {t}: {str(exc).splitlines()[0]}") from None
        if imgs and img.shape != imgs[0].shape:
            raise VideoError(f"clip: frames of different sizes: frame 0 is {imgs[0].shape[1]}x"
                             f"{imgs[0].shape[0]} but frame {t} is {img.shape[1]}x"
                             f"{img.shape[0]}; give frames of one size")
        info = dict(info, source=f"frame {t}")
        imgs.append(img)
        infos.append(info)
    H, W = imgs[0].shape[:2]
    if times is None:
        if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0):
            raise VideoError(f"fps: expected a positive number, got {fps!r}")
        times_t = torch.arange(T, dtype=torch.float64) / float(fps)
    else:
        times_t = torch.as_tensor(np.asarray(times, np.float64)).reshape(-1)
        if times_t.shape[0] != T:
            raise VideoError(f"times: expected {T} frame times (one per frame), got "
                             f"{times_t.shape[0]}")
    cam: Optional[Camera] = check_camera(camera, W, H) if camera is not None else None
    cam_source = "given" if cam is not None else None
    mdl.build()

    # 1. detect and track the boxes ----------------------------------------------------------
    seg = mdl.segmenter
    t0 = time.perf_counter()
    hand_c: list[list[tuple[Box, float]]] = []
    obj_c: list[list[tuple[Box, float]]] = []
    obj_prompt: list[Optional[str]] = []
    detect_errors: list[str] = []
    for t, img in enumerate(imgs):
        try:
            hand_c.append(_detections(seg, img, opts.hand_prompt))
            oc = _detections(seg, img, name)
            used: Optional[str] = name
            if not oc and opts.fallback_prompt != name:
                oc = _detections(seg, img, opts.fallback_prompt)
                used = opts.fallback_prompt
            obj_c.append(oc)
            obj_prompt.append(used if oc else None)
        except Exception as exc:  # noqa: BLE001 -- recorded per frame
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            detect_errors.append(f"frame {t}: {type(exc).__name__}: {msg}"[:300])
            hand_c.append([])
            obj_c.append([])
            obj_prompt.append(None)
    detect_seconds = time.perf_counter() - t0
    if len(detect_errors) == T:
        raise PipelineError("detect", f"the detector failed on every frame of the clip "
                                      f"({detect_errors[0]})", status="detect failed")
    hand_boxes, hand_src = track_boxes(hand_c)
    if all(b is None for b in hand_boxes):
        raise PipelineError("detect", f"no frame of the {T}-frame clip shows a hand: the "
                                      f"detector found no box for {opts.hand_prompt!r} in "
                                      f"any frame", status="no hand detected")
    obj_boxes, obj_src = track_boxes(obj_c)
    hand_score = [max((s for b, s in hand_c[t] if b == hand_boxes[t]), default=0.0)
                  for t in range(T)]
    obj_score = [max((s for b, s in obj_c[t] if b == obj_boxes[t]), default=0.0)
                 for t in range(T)]
    log.info("clip: hand box %s; object box %s", dict(Counter(hand_src)),
             dict(Counter(obj_src)))

    # 2. the chain, frame by frame -----------------------------------------------------------
    tracked = _TrackedSegmenter(seg, opts.hand_prompt, {name, opts.fallback_prompt})
    mdl_t = mdl.replace(segmenter=tracked)
    out: list[Any] = [None] * T
    crops: list[Any] = [None] * T
    per_frame: list[dict[str, Any]] = []
    bar = _bar(T, progress)
    try:
        for t in range(T):
            tracked.hand = None if hand_boxes[t] is None else (hand_boxes[t], hand_score[t])
            tracked.object = None if obj_boxes[t] is None else (obj_boxes[t], obj_score[t])
            rec: dict[str, Any] = {
                "index": t, "hand_box": hand_boxes[t], "hand_box_source": hand_src[t],
                "object_box": obj_boxes[t], "object_box_source": obj_src[t],
                "object_prompt": obj_prompt[t]}
            ts = time.perf_counter()
            try:
                obs, crop, info = run_chain(imgs[t], infos[t], mdl_t, name, cam, int(seed),
                                            bool(left_hand), opts)
            except PipelineError as exc:
                rec.update(status=exc.status, stage=exc.stage, reason=exc.message)
                log.info("clip: frame %d/%d: %s (%s: %s)", t + 1, T, exc.status, exc.stage,
                         exc.message)
            else:
                out[t], crops[t] = obs, crop
                rec.update(status="ok", stage=None, reason=None, crop=info.get("crop"),
                           masks=info.get("masks"), warnings=info.get("warnings"))
                if cam is None:
                    cam = Camera.from_dict(info["camera"])
                    cam_source = f"{info.get('camera_source')} (frame {t})"
                    log.info("clip: camera from frame %d (%s), used for every frame", t,
                             info.get("camera_source"))
                log.debug("clip: frame %d/%d ok", t + 1, T)
            rec["seconds"] = time.perf_counter() - ts
            per_frame.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"frame {t}: {rec['status']}")
            elif progress:
                log.info("clip: frame %d/%d: %s", t + 1, T, rec["status"])
    finally:
        if bar is not None:
            bar.close()

    ok = [t for t in range(T) if out[t] is not None]
    if not ok:
        counts = Counter((r["status"], r["stage"]) for r in per_frame)
        (status, stage), _ = counts.most_common(1)[0]
        listed = ", ".join(f"{n} x {s} ({g})" for (s, g), n in counts.most_common())
        raise PipelineError(stage or "clip", f"the image chain failed on every frame of the "
                                             f"{T}-frame clip: {listed}", status=status)
    meta: dict[str, Any] = dict(metadata or {})
    meta.update({
        "source": "hoiguide.adapters.clip", "object_name": name, "left_hand": bool(left_hand),
        "camera": cam.to_dict() if cam is not None else None, "camera_source": cam_source,
        "frames": per_frame,
        "tracking": {"hand": dict(Counter(hand_src)), "object": dict(Counter(obj_src)),
                     "gate": TRACK_GATE, "window": TRACK_WINDOW},
        "detect_errors": detect_errors,
        "seconds": {"detect": detect_seconds, "total": time.perf_counter() - t_start},
    })
    clip = ClipObservations(tuple(out), times_t, None, meta)
    log.info("clip: %d of %d frames usable; reference frame %d", len(ok), T, clip.reference)
    return clip, crops


# --------------------------------------------------------------------------------------
# back to the video's frame
# --------------------------------------------------------------------------------------

_MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))


def _mirror_similarity(T: Similarity) -> Similarity:
    """``M T M`` with ``M = diag(-1, 1, 1)``: maps the mirrored generator mesh to the mirror
    image of ``T``'s target (a proper rotation again)."""
    M = _MIRROR.to(dtype=T.rotation.dtype, device=T.rotation.device)
    return Similarity(T.scale, M @ T.rotation @ M, M @ T.translation)


def clip_to_full_frame(rec: ClipReconstruction, crops: Sequence[Any]) -> ClipReconstruction:
    """A :class:`~hoiguide.result.ClipReconstruction` from the crops' frame to the video's
    camera frame (OpenCV, metres): unchanged for a right hand; for a left hand (any crop
    ``mirrored``) the hand meshes are mirrored back (``x -> -x``), the generator-frame
    object mesh is mirrored and each object transform ``T`` becomes ``M T M`` (``M`` the
    mirror), so ``object_mesh(t)`` is the mirror image of the crop-frame one. The hand
    similarities stay in the (mirrored) crop frame, as for a photo
    (:func:`hoiguide.adapters.pipeline.to_full_frame`); ``latent`` decodes the unmirrored
    generator mesh."""
    mirrored = {bool(getattr(c, "mirrored", False)) for c in crops if c is not None}
    if len(mirrored) > 1:
        raise ValueError("clip_to_full_frame: the crops disagree on mirroring (one clip has "
                         "one hand side)")
    if not mirrored or not mirrored.pop():
        return rec
    return dataclasses.replace(
        rec, object_mesh_generator=mirror_mesh(rec.object_mesh_generator),
        object_transforms=[_mirror_similarity(T) for T in rec.object_transforms],
        hand_meshes=[mirror_mesh(m) for m in rec.hand_meshes])
