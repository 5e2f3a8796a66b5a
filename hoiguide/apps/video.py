"""``hoiguide reconstruct-video``: a clip (video file or folder of frames) -> foundation models
per frame -> one guided reconstruction of the object over the whole clip -> files.

The library parts are :func:`hoiguide.videoio.read_frames` (decoding),
:func:`hoiguide.adapters.clip.clip_observations_from_frames` (the image chain per frame, the
hand box tracked) and :func:`hoiguide.guided_reconstruct_video` (clip guidance); this module
adds writing the results into a folder that appears complete or not at all.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

import hoiguide.api as _api
from hoiguide.adapters.clip import clip_observations_from_frames, clip_to_full_frame
from hoiguide.adapters.pipeline import (
    PipelineError,
    PipelineOptions,
    check_camera,
)
from hoiguide.apps.outputs import OUTPUT_FILES as _DRAWN
from hoiguide.apps.outputs import write_outputs
from hoiguide.apps.photo import _options_dict, check_run_arguments
from hoiguide.backbones.spec import load_backbone
from hoiguide.io import check_output_folder, commit_folder, write_json
from hoiguide.result import HAND_COLOR, OBJECT_COLOR, ClipReconstruction
from hoiguide.types import Camera
from hoiguide.videoio import read_frames

__all__ = ["reconstruct_video", "RESULT_KIND", "OUTPUT_FILES", "DEFAULT_VIDEO_SCHEDULE",
           "GIF_MAX_SIDE"]

log = logging.getLogger(__name__)

RESULT_KIND = "hoiguide-reconstruct-video"
"""``result.json["kind"]`` of :func:`reconstruct_video` (an existing output folder with this
marker may be replaced by a new run)."""

DEFAULT_VIDEO_SCHEDULE = "video_fast"
"""The schedule :func:`reconstruct_video` uses unless told otherwise."""

OUTPUT_FILES = tuple(sorted(set(_DRAWN) | {"object_generator.ply", "hands", "poses.json",
                                           "overlay.gif", "result.json"}))
"""What :func:`reconstruct_video` may write (a failed run writes only ``result.json``)."""

GIF_MAX_SIDE = 256
"""``overlay.gif`` frames are drawn at most this many pixels wide or high (without
supersampling: one render per frame, the GIF is a preview)."""

PICTURE_MAX_SIDE = 1024
"""``input.png`` / ``overlay.png`` (the reference frame) at most this many pixels."""


# --------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------


def _overlay_gif(path: Path, frames: Sequence[np.ndarray], rec: ClipReconstruction,
                 camera: Camera, times: Sequence[float], max_side: int = GIF_MAX_SIDE
                 ) -> None:
    """``overlay.gif``: every frame with the reconstruction (hand and object of that frame)
    rendered over it, played at the clip's pace."""
    from PIL import Image

    import hoiguide.pictures as pics

    H, W = frames[0].shape[:2]
    k = min(1.0, max_side / max(H, W))
    w, h = max(16, round(W * k)), max(16, round(H * k))
    cam = camera.resized(w, h)
    colors = [HAND_COLOR[:3], OBJECT_COLOR[:3]]
    out = []
    for t, img in enumerate(frames):
        small = img if (w, h) == (W, H) else \
            np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        drawn = pics.overlay(small, [rec.hand_meshes[t], rec.object_mesh(t)], cam,
                             colors=colors, supersample=1)
        note = "" if rec.observed[t] else " (interpolated)"
        drawn = pics.label(drawn, f"frame {t}{note}")
        out.append(Image.fromarray(drawn).convert("P", palette=Image.Palette.ADAPTIVE,
                                                  colors=255))
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 0.1
    ms = int(min(1000, max(40, round(1000 * dt))))
    out[0].save(path, save_all=True, append_images=out[1:], duration=ms, loop=0,
                optimize=False, disposal=1)


def _poses(rec: ClipReconstruction, frame_indices: Sequence[int], chain: Sequence[Mapping],
           hand_files: Sequence[str]) -> dict[str, Any]:
    frames = []
    for t in range(rec.num_frames):
        T = rec.object_transforms[t]
        c = chain[t] if t < len(chain) else {}
        frames.append({
            "index": t, "source_frame": int(frame_indices[t]) if t < len(frame_indices)
            else None,
            "time": float(rec.times[t]), "observed": bool(rec.observed[t]),
            "chain_status": c.get("status"),
            "object_transform": T.to_dict(), "object_matrix": T.matrix().tolist(),
            "hand_similarity": rec.hand_similarities[t].to_dict(),
            "hand_mesh": hand_files[t] if t < len(hand_files) else None,
            "hand_box": c.get("hand_box"), "hand_box_source": c.get("hand_box_source")})
    return {"kind": "hoiguide-video-poses", "version": 1, "reference": rec.reference,
            "object_scale": float(rec.object_transforms[rec.reference].scale),
            "object_mesh": "object_generator.ply",
            "frame": ("per frame: the video's OpenCV camera frame (+x right, +y down, +z "
                      "forward), metres; object_transform / object_matrix map "
                      "object_generator.ply (generator frame) into frame t; hand_mesh is "
                      "frame t's hand in that frame; hand_similarity was applied to the "
                      "observed hand (crop frame, mirrored for a left hand); boxes in "
                      "pixels"),
            "frames": frames}


# --------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------


def reconstruct_video(clip: Union[str, Path], out_dir: Union[str, Path], *,
                      models: Any = None, backbone: Any = None,
                      schedule: Any = DEFAULT_VIDEO_SCHEDULE, seed: int = 0, every: int = 1,
                      max_frames: Optional[int] = None, fps: Optional[float] = None,
                      object_name: str = "object", camera: Any = None,
                      left_hand: Optional[bool] = None,
                      options: Union[PipelineOptions, Mapping[str, Any], None] = None,
                      guidance_options: Any = None, device: Optional[str] = None,
                      progress: bool = False, pictures: bool = True,
                      turntable_views: int = 8, turntable_size: int = 160) -> dict[str, Any]:
    """Reconstruct the object a hand holds in a clip (and the hand in every frame) and write
    the results.

    Writes, into ``out_dir``::

        object.glb / .ply           the object in the REFERENCE frame (the video's OpenCV
                                    camera frame: +x right, +y down, +z forward), metres
        object_generator.ply        the object in the generator frame (poses.json places it)
        hands/hand_<t>.ply          the hand of frame t (frame t's camera frame), metres
        hand.glb / .ply, scene.glb  the reference frame's hand, and hand + object
        poses.json                  per frame: source frame index, time (s), object
                                    transform (generator -> frame t) and 4x4 matrix, hand
                                    similarity, hand mesh file, hand box and its source
        overlay.gif                 every frame with the reconstruction drawn over it
        history.json                every loss term of every inner iteration
        input.png, overlay.png, turntable.png / .gif, losses.png, report.html
                                    the reference frame's pictures and the report
        result.json                 see below

    Everything is written into a temporary sibling folder renamed to ``out_dir`` at the end:
    ``out_dir`` is complete or holds only ``result.json`` (a failed run: ``status``,
    ``stage``, ``reason``). An existing ``out_dir`` must be empty or an earlier output of this
    function (it is replaced).

    Args:
        clip: a video file or a folder of frames (:func:`hoiguide.videoio.read_frames`).
        out_dir: the output folder.
        models: :class:`~hoiguide.adapters.models.Models`, a models YAML path or mapping,
            ``"offline"``, or ``None`` / ``"default"``. Every role is built once, before
            anything is written.
        backbone: the generator instead of the models' (a backbone object or a spec:
            ``tiny``, ``hunyuan:PATH``, ``python:module:callable``).
        schedule: phase schedule (preset name, YAML path, mapping or PhaseSchedule); default
            :data:`DEFAULT_VIDEO_SCHEDULE`.
        seed: the generator's noise (coarse runs and the guided run), the alignment sampling.
        every, max_frames, fps: which frames (:func:`read_frames`: every N-th frame, at most
            ``max_frames`` evenly spread, default 64; ``fps`` of a frame folder).
        object_name, camera, left_hand, options: see
            :func:`hoiguide.adapters.clip.clip_observations_from_frames`.
        guidance_options: :class:`hoiguide.GuidanceOptions` or a mapping of its fields.
        device: torch device of the models.
        progress: progress bars over frames and flow steps.
        pictures: draw the pictures (``overlay.gif``, PNGs).
        turntable_views, turntable_size: the reference frame's turntable.

    Returns:
        The dict written to ``result.json``: ``kind`` (:data:`RESULT_KIND`), ``status``
        (``"ok"`` or why not), ``stage``, ``reason``, ``clip`` (what was read: source,
        size, fps, frame indices, times, subsampling), ``camera`` and ``camera_source``,
        ``frames`` (per frame: the chain's status, boxes and their source),
        ``tracking``, ``models``, the reconstruction's summary (without the per-frame poses,
        which are in ``poses.json``), ``seconds``, ``seconds_parts``, ``files``,
        ``warnings``.

    Raises (nothing is written in these cases):
        FileNotFoundError, hoiguide.videoio.VideoError: the clip cannot be read (unreadable,
            zero-length, frames of different sizes, too large, bad ``every``).
        ImportError: a video file without PyAV (``pip install 'hoiguide[video]'``).
        FileExistsError: ``out_dir`` holds unrelated files.
        ValueError, TypeError, hoiguide.ScheduleError: bad arguments.
        hoiguide.adapters.models.ModelLoadError: a model cannot be built.
    """
    t_start = time.perf_counter()
    out = Path(out_dir).expanduser()
    mdl, opts, sched, gopts = check_run_arguments(
        models, options, schedule, guidance_options, object_name, seed, left_hand,
        turntable_views, turntable_size)
    check_output_folder(out, RESULT_KIND, OUTPUT_FILES)
    t = time.perf_counter()
    frames, clip_info = read_frames(clip, every=every, max_frames=max_frames,
                                    max_megapixels=opts.max_megapixels, fps=fps)
    parts: dict[str, float] = {"read": time.perf_counter() - t}
    H, W = frames[0].shape[:2]
    if camera is not None:
        camera = check_camera(camera, W, H)
    t = time.perf_counter()
    if device is not None:
        mdl = mdl.with_device(device)
    if backbone is not None:
        mdl = mdl.replace(backbone=load_backbone(backbone, device))
    mdl.build()
    parts["models"] = time.perf_counter() - t

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    result: dict[str, Any] = {
        "kind": RESULT_KIND, "version": 1, "status": "failed", "stage": None, "reason": None,
        "reconstruction_status": None, "clip": clip_info, "object_name": object_name.strip(),
        "left_hand": bool(left_hand), "seed": int(seed), "preset": sched.name,
        "models": mdl.describe(), "pipeline_options": _options_dict(opts),
        "frame": "the video's OpenCV camera frame (+x right, +y down, +z forward), metres",
    }
    stage = "observations"
    warn: list[str] = []
    try:
        try:
            t = time.perf_counter()
            clip_obs, crops = clip_observations_from_frames(
                frames, mdl, object_name=object_name, camera=camera, seed=int(seed),
                left_hand=left_hand, options=opts, progress=progress,
                times=clip_info["times"], metadata={"clip": clip_info["source"]})
            parts["observations"] = time.perf_counter() - t
            meta = clip_obs.metadata
            cam_full = Camera.from_dict(meta["camera"])
            result.update(camera=meta["camera"], camera_source=meta["camera_source"],
                          frames=meta["frames"], tracking=meta["tracking"],
                          observed_frames=len(clip_obs.observed),
                          reference=clip_obs.reference)
            warn += [f"frame {r['index']}: {r['status']} ({r['stage']}: {r['reason']})"
                     for r in meta["frames"] if r["status"] != "ok"]
            stage = "reconstruct"
            t = time.perf_counter()
            rec = _api.guided_reconstruct_video(clip_obs, backbone=mdl.backbone,
                                                schedule=sched, seed=int(seed),
                                                progress=progress, options=gopts)
            parts["reconstruct"] = time.perf_counter() - t
            if not isinstance(rec, ClipReconstruction):
                raise TypeError(f"guided_reconstruct_video returned {type(rec).__name__}; "
                                f"expected a ClipReconstruction")
            rec = clip_to_full_frame(rec, crops)
            summary = rec.summary()
            for k in ("status", "frame", "frames"):
                summary.pop(k, None)
            result.update(summary)
            result["reconstruction_status"] = rec.status
            if not rec.ok:
                raise PipelineError("reconstruct", f"the guided reconstruction ended with "
                                                   f"status {rec.status!r}", status=rec.status)
            stage = "save"
            t = time.perf_counter()
            result.update(status="ok", stage=None, reason=None)
            rec.save(tmp)
            hand_files = sorted(f"hands/{p.name}" for p in (tmp / "hands").iterdir())
            write_json(tmp / "poses.json", _poses(rec, clip_info["frame_indices"],
                                                  meta["frames"], hand_files))
            if pictures:
                try:
                    _overlay_gif(tmp / "overlay.gif", frames, rec, cam_full,
                                 clip_info["times"])
                except Exception as exc:  # noqa: BLE001 -- a picture is only a warning
                    log.warning("reconstruct-video: could not draw overlay.gif", exc_info=exc)
                    warn.append(f"overlay.gif: {type(exc).__name__}: {exc}")
            written = write_outputs(
                tmp, rec.frame_reconstruction(rec.reference), image=frames[rec.reference],
                camera=cam_full, result=result, pictures=pictures, meshes=False,
                title=f"{sched.name} on {Path(str(clip_info['source'])).name} (reference "
                      f"frame {rec.reference} of {rec.num_frames})",
                turntable_views=int(turntable_views), turntable_size=int(turntable_size),
                picture_max_side=PICTURE_MAX_SIDE)
            warn += written["warnings"]
            warn += [f"{name}: skipped ({why})" for name, why in written["skipped"].items()]
            parts["save"] = time.perf_counter() - t
        except PipelineError as exc:
            result.update(status=exc.status, stage=exc.stage, reason=exc.message)
            if exc.__cause__ is not None:
                result["traceback"] = "".join(traceback.format_exception(
                    type(exc.__cause__), exc.__cause__, exc.__cause__.__traceback__))[-4000:]
            log.warning("reconstruct-video: %s (%s: %s)", exc.status, exc.stage, exc.message)
        except Exception as exc:  # noqa: BLE001 -- recorded in result.json
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result.update(status=f"{stage} failed", stage=stage,
                          reason=f"{type(exc).__name__}: {msg}"[:500],
                          traceback="".join(traceback.format_exception(
                              type(exc), exc, exc.__traceback__))[-4000:])
            log.warning("reconstruct-video: failed while %s", stage, exc_info=exc)
        if result["status"] != "ok":
            shutil.rmtree(tmp)                   # a failed run leaves only result.json
            tmp.mkdir()
        result["seconds_parts"] = parts
        result["seconds"] = time.perf_counter() - t_start
        result["files"] = sorted({p.name for p in tmp.iterdir()} | {"result.json"})
        result["warnings"] = warn
        write_json(tmp / "result.json", result)
        commit_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if result["status"] == "ok":
        log.info("reconstruct-video: ok in %.1f s; wrote %s", result["seconds"], out)
    return result

