"""``hoiguide batch INPUT --out DIR``: many reconstructions, safely, on one machine or many.

:func:`run_batch` turns every item of ``INPUT`` into one output folder ``DIR/<item>/``:

* ``INPUT`` is a folder (each image file in it -- ``.png .jpg .jpeg .webp .bmp .tif .tiff``
  --, each scene folder in it -- a folder holding ``scene.json``, as ``hoiguide synth``
  writes them --, each video file in it -- ``.mp4 .mov .avi .mkv .webm ...``
  (:data:`hoiguide.videoio.VIDEO_SUFFIXES`) -- and each folder of frames in it -- a folder
  holding at least two image files and neither ``scene.json`` nor ``result.json`` -- is one
  item), a single scene folder, image or video file, or a list file (one path per line;
  blank lines and lines starting with ``#`` are ignored; relative paths are relative to the
  list file's folder; a line may name a folder of frames).
* A synthetic **scene** runs the demo path (:func:`hoiguide.apps.scene.run_demo`: simulated
  observers, guided reconstruction, metrics against the ground truth); an **image** runs the
  photo path (:func:`hoiguide.apps.photo.reconstruct_image` with the models of
  ``models``: a models YAML, ``"offline"`` or ``"default"``); a **clip** (video file or
  folder of frames) runs the video path (:func:`hoiguide.apps.video.reconstruct_video`
  with the same models, the ``clip_preset`` schedule, ``every`` and ``max_frames``).
* Item names are the folder names / file stems (characters outside ``[A-Za-z0-9._-]``
  become ``_``; a stem two images share gets its extension appended). Items are processed in
  sorted name order.
* Each item is computed in ``DIR/.hoiguide-tmp/<item>/`` and renamed to ``DIR/<item>/``
  when complete (one ``rename``), so a killed run never leaves a half-written item folder;
  its leftovers are removed by the next run.
* ``DIR/<item>/result.json`` always exists for a processed item: ``status`` is ``"ok"`` or
  ``"failed"`` with a ``reason`` (and, for photos, the pipeline's own status in
  ``pipeline_status``), plus ``batch`` (item, source, kind, attempts, worker, configuration
  fingerprint). A failing item never stops the others.
* Re-running resumes: items whose ``result.json`` says ``ok`` with the same configuration
  fingerprint are skipped; failed items and items of another configuration run again
  (``overwrite=True`` runs everything).
* ``DIR/batch_summary.json``: ``counts`` of ``ok`` / ``failed`` / ``skipped`` (and
  ``total``) for this run, one entry per item (``items``), what is on disk over all items
  (``on_disk``), the configuration and the timings.

Scaling out
-----------
* ``shard=(i, n)`` (``--shard i/n``, ``0 <= i < n``): this process takes items
  ``i, i + n, i + 2n, ...`` of the sorted list, so ``n`` processes that share ``DIR`` split
  the work without talking to each other. With a SLURM job array::

      #SBATCH --array=0-7
      hoiguide batch scenes/ --out out/ --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT

  Each shard writes ``DIR/batch_summary.shard-<i>-of-<n>.json``; ``DIR/batch_summary.json``
  merges the shard summaries present when each shard finishes.
* ``ray_address`` (``--ray [ADDRESS]``): the items run on a Ray cluster
  (``pip install 'hoiguide[batch]'``) as tasks of worker actors that each load the models
  once and take one GPU (when the cluster has GPUs) or one CPU. ``""`` connects as
  ``ray.init()`` does (``RAY_ADDRESS``, a cluster running on this machine, or a new local
  one); any other string is passed as ``ray.init(address=...)``; an already initialised
  Ray is used as it is. Results are collected as they finish. A worker that dies (killed,
  out of memory, node lost) is replaced and its item retried (``max_attempts`` in all), then
  recorded as failed; items that finished are already on disk. ``DIR`` must be on a file
  system every worker sees.

Models are loaded once per worker (the local process, or each Ray actor), on first use,
never per item.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import socket
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = ["run_batch", "discover_items", "parse_shard", "BatchItem", "BatchWorker",
           "BatchError", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "SUMMARY_NAME", "TMP_DIR"]

from hoiguide.apps.photo import reconstruct_image
from hoiguide.apps.scene import run_demo
from hoiguide.apps.video import DEFAULT_VIDEO_SCHEDULE, reconstruct_video
from hoiguide.backbones.spec import load_backbone
from hoiguide.guidance.engine import GuidanceOptions
from hoiguide.io import (
    commit_folder,
    failure_record,
    fingerprint,
    read_json,
    write_json,
)
from hoiguide.phases import load_schedule
from hoiguide.synth.observers import ObserverNoise
from hoiguide.videoio import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    is_frame_folder,
    is_video_file,
    select_indices,
)

log = logging.getLogger(__name__)

SUMMARY_NAME = "batch_summary.json"
"""The summary file in the output folder."""

TMP_DIR = ".hoiguide-tmp"
"""Where items are computed before being renamed into place (inside the output folder)."""

SUMMARY_FORMAT = "hoiguide-batch-summary"
FORMAT_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class BatchError(ValueError):
    """Bad batch input: no items, an unreadable list file, a bad shard spec."""


@dataclass(frozen=True)
class BatchItem:
    """One unit of work.

    Attributes:
        name: the output folder's name (unique in the batch).
        source: the absolute path of the image or scene folder.
        kind: ``"scene"``, ``"image"``, ``"clip"`` (a video file or a folder of frames) or
            ``"missing"`` (a list-file entry that names nothing usable: recorded as failed).
    """

    name: str
    source: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


def parse_shard(spec: Union[str, Sequence[int], None]) -> Optional[tuple[int, int]]:
    """``"i/n"`` (or ``(i, n)``) -> ``(i, n)`` with ``0 <= i < n``; ``None`` -> ``None``;
    ``"slurm"`` -> from the environment of a SLURM job array: ``SLURM_ARRAY_TASK_ID -
    SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``.

    Raises:
        BatchError: anything else (``"expected i/n with 0 <= i < n, got ..."``).
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "slurm":
        env = {k: os.environ.get(f"SLURM_ARRAY_TASK_{k}") for k in ("ID", "COUNT", "MIN")}
        if env["ID"] is None or env["COUNT"] is None:
            raise BatchError("--shard slurm: SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT "
                             "are not set (not inside a SLURM job array?)")
        try:
            spec = (int(env["ID"]) - int(env["MIN"] or 0), int(env["COUNT"]))
        except ValueError:
            raise BatchError(f"--shard slurm: non-numeric SLURM_ARRAY_TASK_* {env}") from None
    try:
        if isinstance(spec, str):
            a, sep, b = spec.strip().partition("/")
            if not sep:
                raise ValueError
            i, n = int(a), int(b)
        else:
            i, n = (int(x) for x in spec)
    except (TypeError, ValueError):
        raise BatchError(f"--shard: expected i/n with 0 <= i < n (e.g. 0/4, or "
                         f"$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BatchError(f"--shard: expected i/n with 0 <= i < n, got {i}/{n}")
    return i, n


def _kind_of(path: Path) -> str:
    if path.is_dir() and (path / "scene.json").is_file():
        return "scene"
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if is_video_file(path) or is_frame_folder(path):
        return "clip"
    return "missing"


def discover_items(input: Union[str, Path], *, exclude: Optional[Path] = None
                   ) -> list[BatchItem]:
    """The items of ``input`` (a folder, a scene folder, an image or a list file), sorted by
    name, with unique names (see the module docstring).

    Args:
        input: what ``hoiguide batch INPUT`` takes.
        exclude: a folder not to look into (the output folder, when it lies inside
            ``input``).

    Raises:
        FileNotFoundError: ``input`` does not exist.
        BatchError: a folder with no image and no scene folder; an empty list file.
    """
    src = Path(input).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"batch: no such folder or list file: {src}")
    ex = exclude.resolve() if exclude is not None else None
    paths: list[Path] = []
    if src.is_dir():
        if (src / "scene.json").is_file():
            paths = [src]
        else:
            for p in sorted(src.iterdir()):
                if p.name.startswith(".") or (ex is not None and p.resolve() == ex):
                    continue
                if _kind_of(p) != "missing":
                    paths.append(p)
            if not paths:
                raise BatchError(f"batch: {src} holds no image ({', '.join(IMAGE_SUFFIXES)}), "
                                 f"no scene folder (a folder with scene.json) and no clip (a "
                                 f"video file or a folder of frames)")
    elif src.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        paths = [src]
    else:
        try:
            lines = src.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BatchError(f"batch: cannot read the list file {src} ({exc})") from None
        for line in lines:
            t = line.strip()
            if not t or t.startswith("#"):
                continue
            p = Path(t).expanduser()
            paths.append(p if p.is_absolute() else src.parent / p)
        if not paths:
            raise BatchError(f"batch: the list file {src} names no path (one image or scene "
                             f"folder per line)")
    return _name_items([(p.resolve() if p.exists() else p.absolute(), _kind_of(p))
                        for p in paths])


def _name_items(found: Sequence[tuple[Path, str]]) -> list[BatchItem]:
    def base(p: Path, kind: str) -> str:
        stem = p.name if kind == "scene" or p.is_dir() else p.stem
        s = _SAFE.sub("_", stem).lstrip(".") or "item"
        return s

    names = [base(p, k) for p, k in found]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    names = [f"{n}_{_SAFE.sub('_', p.suffix.lstrip('.'))}" if counts[n] > 1 and p.suffix
             and k != "scene" and not p.is_dir() else n for n, (p, k) in zip(names, found)]
    seen: dict[str, int] = {}
    items = []
    order = sorted(range(len(found)), key=lambda j: (names[j], str(found[j][0])))
    for j in order:
        n = names[j]
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            n = f"{n}-{seen[n]}"
        items.append(BatchItem(n, str(found[j][0]), found[j][1]))
    return sorted(items, key=lambda it: it.name)


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclass
class _Config:
    """What every worker needs (plain data: it travels to Ray workers)."""

    out: str
    schedule: dict[str, Any]
    seed: int = 0
    noise: Any = "default"
    options: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 10000
    backbone: Any = None            # None, a --backbone spec, a factory or a backbone object
    models: Any = None              # None, a models YAML path, "offline", "default", mapping
    device: Optional[str] = None
    object_name: str = "object"
    turntable_views: int = 8
    turntable_size: int = 160
    pipeline_options: Optional[dict[str, Any]] = None
    clip_schedule: Optional[dict[str, Any]] = None     # clips: the video schedule's to_dict()
    every: int = 1                                     # clips: every N-th frame
    max_frames: Optional[int] = None                   # clips: at most this many frames

    def describe(self) -> dict[str, Any]:
        def name(x: Any) -> Any:
            if x is None or isinstance(x, (str, int, float, bool, dict, list)):
                return x
            if callable(x) and hasattr(x, "__qualname__"):
                return f"{getattr(x, '__module__', '')}.{x.__qualname__}"
            return f"{type(x).__module__}.{type(x).__qualname__}"

        return {"preset": self.schedule.get("name"), "seed": self.seed,
                "noise": self.noise, "options": self.options,
                "num_samples": self.num_samples, "backbone": name(self.backbone),
                "models": name(self.models), "device": self.device,
                "object_name": self.object_name, "turntable_views": self.turntable_views,
                "turntable_size": self.turntable_size,
                "pipeline_options": self.pipeline_options,
                "clip_preset": (self.clip_schedule or {}).get("name"), "every": self.every,
                "max_frames": self.max_frames}

    def fingerprint(self, item: BatchItem) -> str:
        """What decides whether a finished item can be skipped: the schedule's full
        definition, every setting that changes the result and the item's source (not the
        device, not the picture settings)."""
        keys = {"schedule": self.schedule, **self.describe(), "source": item.source,
                "kind": item.kind}
        for k in ("device", "turntable_views", "turntable_size"):   # not the result
            keys.pop(k, None)
        if item.kind == "clip":
            keys["schedule"] = self.clip_schedule
        else:                                        # the clip settings: clips only
            for k in ("clip_preset", "every", "max_frames"):
                keys.pop(k, None)
        if item.kind == "scene":
            for k in ("models", "object_name", "pipeline_options"):
                keys.pop(k, None)
        else:
            keys.pop("noise", None)
            keys.pop("num_samples", None)
        return fingerprint(keys)


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------


def _tmp_path(out: Path, item: BatchItem) -> Path:
    token = f"{_SAFE.sub('_', socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return out / TMP_DIR / item.name / token


def _is_done(out: Path, item: BatchItem, fingerprint: str) -> bool:
    data = _read_record(out / item.name / "result.json")
    return bool(data) and data.get("status") == "ok" and \
        (data.get("batch") or {}).get("fingerprint") == fingerprint


def _record_failure(out: Path, item: BatchItem, fingerprint: str, reason: str, *,
                    attempts: int, worker: str, extra: Optional[Mapping[str, Any]] = None
                    ) -> dict[str, Any]:
    """Write ``DIR/<item>/result.json`` with status failed (atomically)."""
    tmp = _tmp_path(out, item)
    tmp.mkdir(parents=True)
    result = {"status": "failed", "reason": reason, **dict(extra or {}),
              "batch": {"item": item.name, "source": item.source, "kind": item.kind,
                        "fingerprint": fingerprint, "attempts": attempts, "worker": worker}}
    result["files"] = ["result.json"]
    write_json(tmp / "result.json", result)
    commit_folder(tmp, out / item.name)
    return result


# --------------------------------------------------------------------------------------
# the worker: models loaded once, items run one after the other
# --------------------------------------------------------------------------------------


class BatchWorker:
    """Runs items; loads the backbone (and, for photos, the models) once, on first use.

    One lives in the local process (no Ray) or in each Ray actor. ``loads`` counts how often
    each was loaded (1 at most, by design).
    """

    def __init__(self, config: Union[_Config, Mapping[str, Any]]) -> None:
        self.cfg = config if isinstance(config, _Config) else _Config(**dict(config))
        self.out = Path(self.cfg.out)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.loads = {"backbone": 0, "models": 0}
        self._backbone: Any = None
        self._backbone_error: Optional[str] = None
        self._models: Any = None
        self._models_error: Optional[str] = None
        self._device = self.cfg.device
        if self._device is None:
            try:
                import torch

                if torch.cuda.is_available():
                    self._device = "cuda"
            except ImportError:  # pragma: no cover - torch is a dependency
                pass

    # ---- models ---------------------------------------------------------------------------
    def backbone(self) -> Any:
        """The generator of scene items (loaded once; a load error is remembered)."""
        if self._backbone is None and self._backbone_error is None:
            spec = self.cfg.backbone
            try:
                self.loads["backbone"] += 1
                self._backbone = load_backbone(spec, self._device)
                log.info("batch worker %s: backbone loaded", self.worker)
            except Exception as exc:  # noqa: BLE001 -- every scene item records it
                self._backbone_error = f"the backbone cannot be loaded: {failure_record(exc)['reason']}"
                log.error("batch worker %s: %s", self.worker, self._backbone_error)
        if self._backbone_error is not None:
            raise _ItemFailed(self._backbone_error)
        return self._backbone

    def models(self) -> Any:
        """The photo models (loaded and built once; a load error is remembered)."""
        if self._models is None and self._models_error is None:
            spec = self.cfg.models
            try:
                if spec is None:
                    raise _ItemFailed("an image or clip item needs models: --models "
                                      "FILE.yaml (or 'offline' / 'default'; see "
                                      "hoiguide.adapters.models)")
                self.loads["models"] += 1
                from hoiguide.adapters.models import Models

                m = Models.load(spec)
                if self._device is not None:
                    m = m.with_device(self._device)
                if self.cfg.backbone is not None:
                    m = m.replace(backbone=self.backbone())
                self._models = m.build()
                log.info("batch worker %s: models loaded", self.worker)
            except _ItemFailed as exc:
                self._models_error = str(exc)
            except Exception as exc:  # noqa: BLE001 -- every image item records it
                self._models_error = f"the models cannot be loaded: {failure_record(exc)['reason']}"
                log.error("batch worker %s: %s", self.worker, self._models_error)
        if self._models_error is not None:
            raise _ItemFailed(self._models_error)
        return self._models

    # ---- one item ---------------------------------------------------------------------------
    def run(self, item: Union[BatchItem, Mapping[str, str]], attempt: int = 1
            ) -> dict[str, Any]:
        """Process one item into ``DIR/<item>/`` (atomically) and return its summary entry
        (``item``, ``source``, ``kind``, ``status``, ``reason``, ``seconds``, ``attempts``,
        ``worker``). Never raises for a failing item: the failure is recorded."""
        it = item if isinstance(item, BatchItem) else BatchItem(**dict(item))
        t0 = time.perf_counter()
        fp = self.cfg.fingerprint(it)
        batch_info = {"item": it.name, "source": it.source, "kind": it.kind,
                      "fingerprint": fp, "attempts": int(attempt), "worker": self.worker,
                      "config": self.cfg.describe()}
        try:
            if it.kind == "missing":
                raise _ItemFailed(f"{it.source}: no such image or scene folder (images: "
                                  f"{', '.join(IMAGE_SUFFIXES)}; scenes: a folder with "
                                  f"scene.json; clips: a video file or a folder of frames)")
            tmp = _tmp_path(self.out, it)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                run = {"scene": self._scene, "clip": self._clip}.get(it.kind, self._image)
                result = run(it, tmp)
                result["batch"] = batch_info
                write_json(tmp / "result.json", result)
                commit_folder(tmp, self.out / it.name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            status, reason = result["status"], result.get("reason")
        except Exception as exc:  # noqa: BLE001 -- recorded, never stops the batch
            reason = str(exc) if isinstance(exc, _ItemFailed) else failure_record(exc)["reason"]
            extra = {} if isinstance(exc, _ItemFailed) else {
                "traceback": "".join(traceback.format_exception(
                    type(exc), exc, exc.__traceback__))[-4000:]}
            if not isinstance(exc, _ItemFailed):
                log.warning("batch: %s failed: %s", it.name, reason, exc_info=exc)
            _record_failure(self.out, it, fp, reason, attempts=attempt, worker=self.worker,
                            extra=extra)
            status = "failed"
        seconds = time.perf_counter() - t0
        log.info("batch: %s %s in %.1f s%s", it.name, status, seconds,
                 f" ({reason})" if status != "ok" else "")
        return {"item": it.name, "source": it.source, "kind": it.kind, "status": status,
                "reason": reason if status != "ok" else None, "seconds": seconds,
                "attempts": int(attempt), "worker": self.worker}

    def _scene(self, it: BatchItem, tmp: Path) -> dict[str, Any]:

        backbone = self.backbone()
        spec = self.cfg.backbone
        name = spec if isinstance(spec, str) else ("tiny" if spec is None else None)
        result = run_demo(tmp, preset=self.cfg.schedule, seed=self.cfg.seed, scene=it.source,
                          backbone=backbone, noise=self.cfg.noise, options=self.cfg.options,
                          progress=False, device=self._device,
                          num_samples=self.cfg.num_samples,
                          turntable_views=self.cfg.turntable_views,
                          turntable_size=self.cfg.turntable_size, backbone_name=name)
        if result.get("status") != "ok" and not result.get("reason"):
            result["reason"] = f"failed while {result.get('phase')}"
        return result

    def _image(self, it: BatchItem, tmp: Path) -> dict[str, Any]:

        models = self.models()
        result = reconstruct_image(it.source, tmp, models=models, schedule=self.cfg.schedule,
                                   seed=self.cfg.seed, object_name=self.cfg.object_name,
                                   options=self.cfg.pipeline_options,
                                   guidance_options=self.cfg.options or None, progress=False,
                                   turntable_views=self.cfg.turntable_views,
                                   turntable_size=self.cfg.turntable_size)
        return _pipeline_status(result)

    def _clip(self, it: BatchItem, tmp: Path) -> dict[str, Any]:

        models = self.models()
        result = reconstruct_video(it.source, tmp, models=models,
                                   schedule=self.cfg.clip_schedule or DEFAULT_VIDEO_SCHEDULE,
                                   seed=self.cfg.seed, every=self.cfg.every,
                                   max_frames=self.cfg.max_frames,
                                   object_name=self.cfg.object_name,
                                   options=self.cfg.pipeline_options,
                                   guidance_options=self.cfg.options or None, progress=False,
                                   turntable_views=self.cfg.turntable_views,
                                   turntable_size=self.cfg.turntable_size)
        return _pipeline_status(result)

    def ping(self) -> str:
        """The worker's name (Ray: a cheap call that tells the actor is up)."""
        return self.worker

    def load_counts(self) -> dict[str, int]:
        return dict(self.loads)


class _ItemFailed(Exception):
    """An item that cannot be done, with a reason for result.json (no traceback)."""


def _pipeline_status(result: dict[str, Any]) -> dict[str, Any]:
    """A photo's or clip's result with the batch's status: ``ok`` or ``failed`` (the app's
    own status then in ``pipeline_status``, the reason naming the stage)."""
    if result.get("status") != "ok":
        result["pipeline_status"] = result.get("status")
        result["status"] = "failed"
        result["reason"] = f"{result.get('pipeline_status')} (stage {result.get('stage')}" \
                           f"): {result.get('reason')}"
    return result


def run_batch(input: Union[str, Path], out: Union[str, Path], *,
              shard: Union[str, Sequence[int], None] = None,
              ray_address: Optional[str] = None, ray_workers: Optional[int] = None,
              preset: Any = "fast_posthoc_fit", seed: int = 0, backbone: Any = None,
              models: Any = None,
              options: Optional[Mapping[str, Any]] = None, noise: Any = "default",
              num_samples: int = 10000, device: Optional[str] = None,
              object_name: str = "object",
              pipeline_options: Optional[Mapping[str, Any]] = None,
              turntable_views: int = 8, turntable_size: int = 160, overwrite: bool = False,
              max_attempts: int = 2, progress: bool = True, command: Optional[str] = None,
              clip_preset: Any = DEFAULT_VIDEO_SCHEDULE, every: int = 1,
              max_frames: Optional[int] = None) -> dict[str, Any]:
    """Reconstruct every item of ``input`` into ``out/<item>/`` (see the module docstring).

    Args:
        input: a folder of images and/or scene folders, one scene folder or image, or a list
            file (one path per line).
        out: the output folder (created); ``out/<item>/result.json`` per item and
            ``out/batch_summary.json``.
        shard: ``"i/n"`` or ``(i, n)``: only items ``i, i + n, ...`` of the sorted list
            (SLURM: ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``).
        ray_address: ``None``: run here, one item after the other; a string: run on Ray
            (``""``: ``ray.init()``'s default; else ``ray.init(address=ray_address)``; an
            initialised Ray is used as it is).
        ray_workers: worker actors on Ray (default: one per GPU of the cluster, else one per
            CPU; never more than the items).
        preset: phase schedule (preset name, YAML path, mapping or PhaseSchedule).
        seed: the seed of every item (observers, flow noise, metric sampling).
        backbone: the generator: ``None`` (scenes: the bundled tiny generator; photos: the
            models' generator), a ``--backbone`` spec (``tiny``, ``hunyuan:PATH``,
            ``python:module:callable``), a factory, or a backbone object (local runs only).
        models: the photo models: a models YAML path, ``"offline"``, ``"default"`` or a
            mapping (:mod:`hoiguide.adapters.models`); ``None``: image items fail with a
            reason that says so.
        options: :class:`hoiguide.GuidanceOptions` fields.
        noise: observer noise of scene items (``"default"``, ``"none"`` or a multiplier).
        num_samples: surface samples per mesh for the scene metrics.
        device: torch device of the models (default: ``cuda`` where a worker has one).
        object_name: the detection/inpainting prompt of photo items.
        pipeline_options: :class:`hoiguide.adapters.pipeline.PipelineOptions` fields.
        turntable_views, turntable_size: the turntable pictures.
        clip_preset: the phase schedule of clip items (default
            :data:`hoiguide.apps.video.DEFAULT_VIDEO_SCHEDULE`; loaded only when there are
            clips).
        every, max_frames: clip items: every N-th frame, at most ``max_frames`` frames
            evenly spread (default :data:`hoiguide.videoio.DEFAULT_MAX_FRAMES`).
        overwrite: run finished items again.
        max_attempts: tries per item when its Ray worker dies (the item is then recorded as
            failed). A failure inside a healthy worker is recorded at once.
        progress: a progress bar over the items (tqdm, when installed).
        command: the command line, recorded in the summary.

    Returns:
        The summary written to ``out/batch_summary.json``: ``counts`` (``ok``, ``failed``,
        ``skipped``, ``total`` of this run), ``items`` (one entry per item of this run:
        ``item``, ``source``, ``kind``, ``status`` ok/failed/skipped, ``reason``,
        ``seconds``, ``attempts``, ``worker``), ``on_disk`` (``ok``, ``failed``, ``missing``
        over every item of ``input``, all shards), ``shard``, ``backend``, ``config``,
        ``seconds``.

    Raises:
        FileNotFoundError: ``input`` does not exist.
        BatchError: no items, a bad shard spec or list file.
        ValueError, hoiguide.ScheduleError: bad preset or options.
        ImportError: ``ray_address`` given and Ray is not installed.
    """

    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    shard_t = parse_shard(shard)
    out_p = Path(out).expanduser().absolute()
    items = discover_items(input, exclude=out_p)
    sched = load_schedule(preset)
    opts = dict(options or {})
    GuidanceOptions.coerce(opts)                    # ValueError naming a bad option
    if pipeline_options is not None:
        from hoiguide.adapters.options import PipelineOptions

        PipelineOptions.coerce(dict(pipeline_options))

    ObserverNoise.preset(noise)
    select_indices(1, every, max_frames)            # VideoError (a ValueError) naming them
    clip_sched = load_schedule(clip_preset).to_dict() if any(
        it.kind == "clip" for it in items) else None
    if isinstance(max_attempts, bool) or int(max_attempts) < 1:
        raise ValueError(f"max_attempts: expected an integer >= 1, got {max_attempts!r}")
    if ray_workers is not None and (isinstance(ray_workers, bool) or int(ray_workers) < 1):
        raise ValueError(f"ray_workers: expected an integer >= 1, got {ray_workers!r}")
    if ray_address is not None:
        _import_ray()                              # ImportError naming the extra, early
        if backbone is not None and not isinstance(backbone, str) and \
                hasattr(backbone, "velocity"):
            raise ValueError("batch: on Ray, pass the backbone as a spec (tiny, "
                             "hunyuan:PATH, python:module:callable) or a factory, not a "
                             "loaded backbone object (every worker loads its own)")
    cfg = _Config(out=str(out_p), schedule=sched.to_dict(), seed=int(seed), noise=noise,
                  options=opts, num_samples=int(num_samples), backbone=backbone,
                  models=str(models) if isinstance(models, Path) else models, device=device,
                  object_name=str(object_name), turntable_views=int(turntable_views),
                  turntable_size=int(turntable_size),
                  pipeline_options=dict(pipeline_options) if pipeline_options else None,
                  clip_schedule=clip_sched, every=int(every),
                  max_frames=None if max_frames is None else int(max_frames))
    mine = items if shard_t is None else items[shard_t[0]::shard_t[1]]
    out_p.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out_p, mine)
    fps = {it.name: cfg.fingerprint(it) for it in mine}
    entries: dict[str, dict[str, Any]] = {}
    todo = []
    for it in mine:
        if not overwrite and _is_done(out_p, it, fps[it.name]):
            entries[it.name] = {"item": it.name, "source": it.source, "kind": it.kind,
                                "status": "skipped", "reason": None, "seconds": 0.0,
                                "attempts": 0, "worker": None}
        else:
            todo.append(it)
    backend = "local" if ray_address is None else "ray"
    log.info("batch: %d item(s)%s: %d to run, %d already done; backend %s", len(mine),
             f" (shard {shard_t[0]}/{shard_t[1]} of {len(items)})" if shard_t else "",
             len(todo), len(mine) - len(todo), backend)
    bar = _bar(len(mine), progress, initial=len(mine) - len(todo))
    interrupted = False
    redirect = None
    if bar is not None:                  # log lines above the bar, not through it
        try:
            from tqdm.contrib.logging import logging_redirect_tqdm

            redirect = logging_redirect_tqdm()
            redirect.__enter__()
        except ImportError:
            redirect = None
    try:
        if todo:
            if ray_address is None:
                _run_local(cfg, todo, entries, bar)
            else:
                _run_ray(cfg, todo, entries, bar, ray_address, ray_workers,
                         int(max_attempts), fps)
    except BaseException:
        interrupted = True
        raise
    finally:
        if redirect is not None:
            redirect.__exit__(None, None, None)
        if bar is not None:
            bar.close()
        summary = _summarize(out_p, input, items, mine, entries, shard_t, backend, cfg,
                             started, time.perf_counter() - t_start, command, interrupted)
    _clean_leftovers(out_p, mine)                   # what dead Ray workers left behind
    c = summary["counts"]
    log.info("batch: %d ok, %d failed, %d skipped in %.1f s; wrote %s", c["ok"], c["failed"],
             c["skipped"], summary["seconds"], out_p / SUMMARY_NAME)
    return summary


def _bar(total: int, progress: bool, initial: int = 0) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="batch", unit="item", leave=True)


def _clean_leftovers(out: Path, mine: Sequence[BatchItem]) -> None:
    """Remove what killed runs (or dead workers) left of this run's items: their
    temporary folders (other shards' items are not touched)."""
    root = out / TMP_DIR
    if not root.is_dir():
        return
    for it in mine:
        d = root / it.name
        if d.exists():
            log.info("batch: removing unfinished work (a killed run or a dead worker): %s", d)
            shutil.rmtree(d, ignore_errors=True)
    try:
        root.rmdir()
    except OSError:
        pass


def _run_local(cfg: _Config, todo: Sequence[BatchItem], entries: dict[str, Any],
               bar: Any) -> None:
    worker = BatchWorker(cfg)
    for it in todo:
        entries[it.name] = worker.run(it, 1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{it.name}: {entries[it.name]['status']}")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("hoiguide batch --ray needs Ray: pip install 'hoiguide[batch]' "
                          f"(or pip install 'ray[default]') ({exc})") from exc
    return ray


def _run_ray(cfg: _Config, todo: Sequence[BatchItem], entries: dict[str, Any], bar: Any,
             address: str, n_workers: Optional[int], max_attempts: int,
             fps: Mapping[str, str]) -> None:
    """Items as tasks of worker actors (one GPU or one CPU each), collected as they finish;
    a dead worker is replaced and its item retried, then recorded as failed."""
    ray = _import_ray()
    from ray.exceptions import RayActorError, RayTaskError

    if not ray.is_initialized():
        ray.init(address=address or None, log_to_driver=log.isEnabledFor(logging.INFO))
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    n = n_workers or (gpus if gpus > 0 else max(1, int(resources.get("CPU", 1))))
    n = max(1, min(int(n), len(todo)))
    actor_cls = ray.remote(BatchWorker).options(
        num_cpus=1, num_gpus=1 if gpus > 0 else 0, max_restarts=0, max_task_retries=0)
    log.info("batch: %d Ray worker(s), one %s each", n, "GPU" if gpus > 0 else "CPU")
    cfg_d = dataclasses.asdict(cfg)
    queue = deque(todo)
    attempts: dict[str, int] = {}
    idle = [actor_cls.remote(cfg_d) for _ in range(n)]
    live = len(idle)
    pending: dict[Any, tuple[Any, BatchItem]] = {}
    driver = f"{socket.gethostname()}:{os.getpid()} (driver)"

    def finish(it: BatchItem, entry: dict[str, Any]) -> None:
        entries[it.name] = entry
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{it.name}: {entry['status']}")

    while queue or pending:
        while queue and idle:
            actor, it = idle.pop(), queue.popleft()
            attempts[it.name] = attempts.get(it.name, 0) + 1
            pending[actor.run.remote(it.to_dict(), attempts[it.name])] = (actor, it)
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        actor, it = pending.pop(ref)
        try:
            finish(it, ray.get(ref))
            idle.append(actor)
        except RayActorError as exc:
            live -= 1
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else "died"
            log.warning("batch: the worker running %s died (attempt %d of %d): %s", it.name,
                        attempts[it.name], max_attempts, why)
            if attempts[it.name] < max_attempts:
                queue.appendleft(it)
            else:
                reason = f"the worker died {attempts[it.name]} time(s) running this item " \
                         f"(last: {why})"
                _record_failure(Path(cfg.out), it, fps[it.name], reason,
                                attempts=attempts[it.name], worker=driver)
                finish(it, {"item": it.name, "source": it.source, "kind": it.kind,
                            "status": "failed", "reason": reason, "seconds": None,
                            "attempts": attempts[it.name], "worker": None})
            if queue and live < n:
                idle.append(actor_cls.remote(cfg_d))    # a fresh worker in its place
                live += 1
        except RayTaskError as exc:                     # BatchWorker.run raised (a bug)
            reason = failure_record(exc.cause if getattr(exc, "cause", None) else exc)["reason"]
            _record_failure(Path(cfg.out), it, fps[it.name], reason,
                            attempts=attempts[it.name], worker=driver)
            finish(it, {"item": it.name, "source": it.source, "kind": it.kind,
                        "status": "failed", "reason": reason, "seconds": None,
                        "attempts": attempts[it.name], "worker": None})
            idle.append(actor)
    for actor in idle:
        ray.kill(actor)


def _summarize(out: Path, input: Any, items: Sequence[BatchItem], mine: Sequence[BatchItem],
               entries: Mapping[str, Any], shard: Optional[tuple[int, int]], backend: str,
               cfg: _Config, started: str, seconds: float, command: Optional[str],
               interrupted: bool) -> dict[str, Any]:
    listed = [entries[it.name] for it in mine if it.name in entries]
    counts = {k: sum(1 for e in listed if e["status"] == k) for k in ("ok", "failed",
                                                                      "skipped")}
    counts["total"] = len(mine)
    counts["not_run"] = len(mine) - len(listed)
    on_disk = {"ok": 0, "failed": 0, "missing": 0, "total": len(items)}
    for it in items:
        data = _read_record(out / it.name / "result.json")
        key = "missing" if data is None else "ok" if data.get("status") == "ok" else "failed"
        on_disk[key] += 1
    summary = {
        "format": SUMMARY_FORMAT, "version": FORMAT_VERSION, "input": str(input),
        "out": str(out), "backend": backend,
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "counts": counts, "on_disk": on_disk, "items": listed,
        "config": cfg.describe(), "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds,
        "interrupted": interrupted, "command": command,
    }
    if shard is None:
        write_json(out / SUMMARY_NAME, summary)
        return summary
    write_json(out / f"batch_summary.shard-{shard[0]}-of-{shard[1]}.json", summary)
    write_json(out / SUMMARY_NAME, _merge_shards(out, shard[1], summary))
    return summary


def _merge_shards(out: Path, n: int, mine: Mapping[str, Any]) -> dict[str, Any]:
    """The shard summaries of ``n`` shards present on disk, merged into one."""
    parts = []
    for i in range(n):
        data = _read_record(out / f"batch_summary.shard-{i}-of-{n}.json")
        if data is not None:
            parts.append(data)
    merged = dict(mine)
    merged["shard"] = None
    merged["shards"] = [p.get("shard") for p in parts]
    merged["items"] = sorted((e for p in parts for e in p.get("items") or []),
                             key=lambda e: e["item"])
    merged["counts"] = {k: sum(int((p.get("counts") or {}).get(k, 0)) for p in parts)
                        for k in ("ok", "failed", "skipped", "total", "not_run")}
    merged["seconds"] = max(float(p.get("seconds") or 0) for p in parts)
    merged["interrupted"] = any(p.get("interrupted") for p in parts)
    return merged



def _read_record(path: Path) -> Optional[dict[str, Any]]:
    """A stored JSON record, or ``None`` when missing / unreadable / not an object."""
    data = read_json(path, default=None)
    return data if isinstance(data, dict) else None
