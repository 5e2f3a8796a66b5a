"""``hoiguide reconstruct``: one photo -> foundation models -> guided reconstruction -> files.

The library part (photo -> :class:`hoiguide.Observations`) is
:func:`hoiguide.adapters.observations_from_image`; this module adds the guided reconstruction
and writing the results into a folder that appears complete or not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from hoiguide.adapters.models import Models
from hoiguide.adapters.pipeline import (
    PipelineError,
    PipelineOptions,
    check_camera,
    check_chain_arguments,
    run_chain,
    to_full_frame,
)
from hoiguide.apps.outputs import OUTPUT_FILES as _DRAWN
from hoiguide.apps.outputs import write_outputs
from hoiguide.guidance.engine import GuidedSampler
from hoiguide.guidance.records import GuidanceOptions
from hoiguide.io import (
    check_output_folder,
    commit_folder,
    load_image,
    save_png,
    write_json,
)
from hoiguide.phases import DEFAULT_SCHEDULE, load_schedule
from hoiguide.types import Camera

__all__ = ["reconstruct_image", "RESULT_KIND", "OUTPUT_FILES"]

log = logging.getLogger(__name__)

RESULT_KIND = "hoiguide-reconstruct"
"""``result.json["kind"]`` of :func:`reconstruct_image` (an existing output folder with this
marker may be replaced by a new run)."""

OUTPUT_FILES = tuple(sorted(set(_DRAWN) | {"observations.png", "result.json"}))
"""What :func:`reconstruct_image` may write (a failed run writes only ``result.json``)."""

PICTURE_MAX_SIDE = 1024
"""``input.png`` / ``overlay.png`` are drawn at most this many pixels wide or high."""


def _observations_picture(tmp: Path, obs: Any) -> list[str]:
    """observations.png: the crop, its masks and the object image (returns what went
    wrong)."""
    try:
        import hoiguide.pictures as pics

        crop = np.asarray(obs.image)
        S = crop.shape[0]
        tint = crop.astype(np.float64).copy()
        mh, mo = obs.mask_hand.numpy(), obs.mask_object.numpy()
        tint[mh] = 0.5 * tint[mh] + 0.5 * np.array([255, 150, 80])
        tint[mo] = 0.5 * tint[mo] + 0.5 * np.array([60, 120, 255])
        oi = np.asarray(obs.object_image)
        if oi.shape[2] == 4:
            a = oi[..., 3:4] / 255.0
            oi = (oi[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
        from PIL import Image

        oi = np.asarray(Image.fromarray(oi).resize((S, S), Image.BILINEAR))
        save_png(tmp / "observations.png", pics.side_by_side([
            pics.label(crop, "crop"), pics.label(tint.astype(np.uint8), "masks"),
            pics.label(oi, "object image")]))
    except ImportError as exc:
        return [f"observations.png: skipped ({exc})"]
    except Exception as exc:  # noqa: BLE001 -- reported in result.json
        log.warning("reconstruct: could not draw observations.png", exc_info=exc)
        return [f"observations.png: {type(exc).__name__}: {exc}"]
    return []


def check_run_arguments(models: Any, options: Any, schedule: Any, guidance_options: Any,
                        object_name: Any, seed: Any, left_hand: Any, turntable_views: Any,
                        turntable_size: Any) -> tuple[Any, Any, Any, Any]:
    """Check a photo or clip run's arguments before anything is read or written:
    ``(models, pipeline options, schedule, guidance options)``; the pipeline options default
    to the models file's. Raises ValueError / TypeError / ScheduleError naming the argument."""
    mdl = Models.load(models)
    if options is None:
        options = mdl.pipeline_options or None
    opts = PipelineOptions.coerce(options)
    sched = load_schedule(schedule)
    gopts = GuidanceOptions.coerce(guidance_options)
    check_chain_arguments(object_name, seed, left_hand)
    for name, v, lo in (("turntable_views", turntable_views, 1),
                        ("turntable_size", turntable_size, 8)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return mdl, opts, sched, gopts


def reconstruct_image(image: Any, out_dir: Union[str, Path], *, models: Any = None,
                      schedule: Any = DEFAULT_SCHEDULE, seed: int = 0, object_name: str = "object",
                      camera: Any = None, left_hand: Optional[bool] = None,
                      options: Union[PipelineOptions, Mapping[str, Any], None] = None,
                      guidance_options: Any = None, progress: bool = False,
                      pictures: bool = True, turntable_views: int = 8,
                      turntable_size: int = 160) -> dict[str, Any]:
    """Reconstruct the hand and the object it holds from one photo and write the results.

    Writes, into ``out_dir`` (the same files as ``hoiguide demo`` minus the ground-truth
    metrics, through :func:`hoiguide.apps.outputs.write_outputs`)::

        object.glb / .ply / .obj    the object, the PHOTO's camera frame (OpenCV: +x right,
        hand.glb / .ply / .obj      +y down, +z forward), metres (mirrored back for a left
        scene.glb                   hand); scene.glb holds both, coloured
        history.json                every loss term of every inner iteration
        input.png                   the photo as read (EXIF orientation applied)
        observations.png            the crop, its masks and the object image
        overlay.png                 photo | reconstruction rendered over it
        turntable.png / .gif        8 views orbiting the reconstruction (strip, animation)
        losses.png                  loss curves (needs matplotlib)
        report.html                 everything on one self-contained page
        result.json                 see below

    Everything is written into a temporary sibling folder that is renamed to ``out_dir`` at
    the end, so ``out_dir`` is complete or holds only ``result.json``: when a stage fails
    (or the reconstruction's status is not ``"ok"``) ONLY ``result.json`` is written, with
    ``status`` (e.g. ``"no hand detected"``), ``stage`` and ``reason``. An existing
    ``out_dir`` must be empty or an earlier output of this function (it is replaced).

    Args:
        image: a path, a PIL image or a uint8 array (:func:`load_image`).
        out_dir: the output folder.
        models: :class:`~hoiguide.adapters.models.Models`, a models YAML path or mapping, or
            ``None`` for ``Models.default()``. All roles are built before anything is
            written.
        schedule: phase schedule (preset name, YAML path, mapping or PhaseSchedule).
        seed: the generator's noise (coarse run and guided run) and the alignment sampling.
        object_name, camera, left_hand, options: see :func:`observations_from_image`.
        guidance_options: :class:`hoiguide.GuidanceOptions` or a mapping of its fields.
        progress: progress bars over the flow steps.
        pictures: draw the PNGs.
        turntable_views, turntable_size: views in ``turntable.png`` and their side (pixels).

    Returns:
        The dict written to ``result.json``: ``kind`` (:data:`RESULT_KIND`), ``status``
        (``"ok"`` or why not), ``stage`` and ``reason`` (``None`` when ok), ``image``
        (source, size, conversions), ``camera`` (the photo's intrinsics) and
        ``camera_source`` (``given``/``geometry``/``default``), ``crop``, ``boxes``,
        ``masks``, ``models``, the reconstruction's summary
        (:meth:`hoiguide.Reconstruction.summary`: similarities in the crop frame, mirrored
        for a left hand; schedule; counters; timings), ``seconds`` and ``seconds_parts``,
        ``files``, ``warnings``.

    Raises (nothing is written in these cases):
        FileNotFoundError, ImageError: the photo cannot be read or is too large.
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
    img, img_info = load_image(image, max_megapixels=opts.max_megapixels)
    H, W = img.shape[:2]
    if camera is not None:
        camera = check_camera(camera, W, H)
    t = time.perf_counter()
    mdl.build()
    parts: dict[str, float] = {"models": time.perf_counter() - t}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    result: dict[str, Any] = {
        "kind": RESULT_KIND, "version": 1, "status": "failed", "stage": None, "reason": None,
        "reconstruction_status": None, "image": img_info, "object_name": object_name.strip(),
        "left_hand": bool(left_hand), "seed": int(seed), "preset": sched.name,
        "models": mdl.describe(), "pipeline_options": _options_dict(opts),
        "frame": "the photo's OpenCV camera frame (+x right, +y down, +z forward), metres",
    }
    stage = "observations"
    rec = obs = None
    try:
        try:
            t = time.perf_counter()
            obs, crop, info = run_chain(img, img_info, mdl, object_name.strip(), camera,
                                     int(seed), bool(left_hand), opts)
            parts["observations"] = time.perf_counter() - t
            parts.update({f"observations.{k}": v for k, v in info["seconds"].items()})
            cam_full = Camera.from_dict(info["camera"])
            for k in ("boxes", "crop", "masks", "geometry", "hand", "coarse", "alignment",
                      "camera", "camera_source"):
                result[k] = info.get(k)
            warn = list(info["warnings"])
            stage = "reconstruct"
            t = time.perf_counter()
            rec = GuidedSampler(mdl.backbone, sched, gopts).run(obs, seed=int(seed),
                                                                progress=progress)
            parts["reconstruct"] = time.perf_counter() - t
            rec = to_full_frame(rec, crop)
            summary = rec.summary()
            summary.pop("status", None)
            summary.pop("frame", None)
            result.update(summary)
            result["transforms_frame"] = (
                "the similarities map into the crop's camera frame, which is the photo's "
                "camera frame" + (" mirrored (x -> -x): the hand was a left hand"
                                  if crop.mirrored else ""))
            result["reconstruction_status"] = rec.status
            if not rec.ok:
                raise PipelineError("reconstruct", f"the guided reconstruction ended with "
                                                   f"status {rec.status!r}", status=rec.status)
            stage = "save"
            t = time.perf_counter()
            result.update(status="ok", stage=None, reason=None)
            if pictures:
                warn += _observations_picture(tmp, obs)
            written = write_outputs(
                tmp, rec, image=img, camera=cam_full, result=result, pictures=pictures,
                title=f"{sched.name} on {Path(str(img_info.get('source'))).name}",
                turntable_views=int(turntable_views), turntable_size=int(turntable_size),
                picture_max_side=PICTURE_MAX_SIDE)
            warn += written["warnings"]
            warn += [f"{name}: skipped ({why})" for name, why in written["skipped"].items()]
            parts["save"] = time.perf_counter() - t
            result.update(warnings=warn)
        except PipelineError as exc:
            result.update(status=exc.status, stage=exc.stage, reason=exc.message)
            if exc.__cause__ is not None:
                result["traceback"] = "".join(traceback.format_exception(
                    type(exc.__cause__), exc.__cause__, exc.__cause__.__traceback__))[-4000:]
            log.warning("reconstruct: %s (%s: %s)", exc.status, exc.stage, exc.message)
        except Exception as exc:  # noqa: BLE001 -- recorded in result.json
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result.update(status=f"{stage} failed", stage=stage,
                          reason=f"{type(exc).__name__}: {msg}"[:500],
                          traceback="".join(traceback.format_exception(
                              type(exc), exc, exc.__traceback__))[-4000:])
            log.warning("reconstruct: failed while %s", stage, exc_info=exc)
        if result["status"] != "ok":
            # a failed run leaves only result.json
            shutil.rmtree(tmp)
            tmp.mkdir()
        result["seconds_parts"] = parts
        result["seconds"] = time.perf_counter() - t_start
        result["files"] = sorted(p.name for p in tmp.iterdir()) + ["result.json"]
        result["files"] = sorted(set(result["files"]))
        result.setdefault("warnings", [])
        write_json(tmp / "result.json", result)
        commit_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if result["status"] == "ok":
        log.info("reconstruct: ok in %.1f s; wrote %s", result["seconds"], out)
    return result


def _options_dict(opts: PipelineOptions) -> dict[str, Any]:
    d = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "alignment"}
    d["alignment"] = None if opts.alignment is None else dataclasses.asdict(opts.alignment)
    return d
