"""The public entry points: :func:`guided_reconstruct` (one image; its result is
:class:`hoiguide.Reconstruction`) and :func:`guided_reconstruct_video` (a clip; its result
is :class:`hoiguide.ClipReconstruction`).

Example (CPU; ``my_backbone`` is any :class:`hoiguide.FlowBackbone`, ``obs`` your
:class:`hoiguide.Observations`, see its docstring for how to build them from your own data)::

    import hoiguide

    schedule = hoiguide.load_schedule("fast")
    schedule.resolve(8)                             # which steps each phase covers
    rec = hoiguide.guided_reconstruct(observations=obs, backbone=my_backbone,
                                      schedule=schedule, seed=0,
                                      options={"grid_resolution": 33, "render_size": 64})
    rec.status, rec.timings["total"]                # "ok" and seconds
    rec.save("out/")                                # object/hand .glb/.ply, scene.glb, result.json

    clip = hoiguide.ClipObservations.from_frames([obs_0, obs_1, obs_2], fps=30)
    crec = hoiguide.guided_reconstruct_video(clip, backbone=my_backbone, schedule="video_fast")
    crec.object_mesh(1)                             # the one object, placed in frame 1
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hoiguide.adapters.clip import clip_observations_from_frames, clip_to_full_frame
from hoiguide.adapters.models import Models
from hoiguide.adapters.pipeline import (
    PipelineOptions,
    check_chain_arguments,
    observations_from_image,
    to_full_frame,
)
from hoiguide.guidance.clip import ClipGuidedSampler
from hoiguide.guidance.engine import GuidedSampler
from hoiguide.guidance.records import GuidanceOptions
from hoiguide.io import load_image
from hoiguide.phases import DEFAULT_SCHEDULE, load_schedule
from hoiguide.result import ClipReconstruction, Reconstruction
from hoiguide.types import ClipObservations, Observations
from hoiguide.videoio import read_frames

__all__ = ["guided_reconstruct", "guided_reconstruct_video", "Reconstruction",
           "ClipReconstruction"]

log = logging.getLogger(__name__)

_NEEDS = ("guided_reconstruct() missing 1 required argument: 'image' or 'observations' "
          "(an image runs the foundation-model chain with models=...; "
          "observations=hoiguide.Observations(...) can be built from your own data or a "
          "synthetic scene)")


def guided_reconstruct(image: Any = None, *, observations: Optional[Observations] = None,
                       backbone: Any = None, schedule: Any = DEFAULT_SCHEDULE, seed: int = 0,
                       device: Union[str, torch.device, None] = None, progress: bool = True,
                       callbacks: Sequence[Callable[[Any], Any]] = (),
                       options: Union[Mapping[str, Any], Any, None] = None,
                       models: Any = None, object_name: str = "object",
                       camera: Any = None, left_hand: Optional[bool] = None,
                       pipeline_options: Any = None) -> Reconstruction:
    """Reconstruct the hand-held object (and the hand) by guided rectified-flow sampling.

    Every argument is checked before any model is built or loaded.

    Args:
        image: the photo (a path, a PIL image or an ``(H, W, 3|4)`` array: uint8, or
            16-bit / float scaled by its type's range) when no ``observations`` are given:
            the foundation-model chain (:func:`hoiguide.adapters.observations_from_image`:
            detection, crop, masks, inpainting, monocular geometry, hand, coarse mesh, the
            ICPs) builds them with ``models``; the result is then in the PHOTO's camera frame
            (mirrored back for ``left_hand``). When both are given, ``image`` is ignored (the
            generator is conditioned on ``observations.object_image``).
        observations: :class:`hoiguide.Observations` in the image-aligned frame (from the
            adapters, a synthetic scene, or built from your own data).
        backbone: a :class:`hoiguide.FlowBackbone` (e.g. ``hoiguide.backbones.tiny()`` or
            ``hoiguide.backbones.HunyuanBackbone.from_pretrained(...)``); required with
            ``observations``; with ``image`` it replaces the models' generator.
        schedule: a preset name (``hoiguide.phases.available_presets()``), a YAML path, a
            mapping, or a :class:`hoiguide.phases.PhaseSchedule`; default
            ``hoiguide.phases.DEFAULT_SCHEDULE``.
        seed: initial-noise seed: the same seed, machine and torch thread count give a
            bit-identical result on CPU (on CUDA call
            ``torch.use_deterministic_algorithms(True)`` first).
        device: must be the backbone's device when given (the engine runs where the
            backbone is; move the backbone yourself).
        progress: progress bars over flow steps and inner iterations (tqdm, if installed).
        callbacks: ``callback(state: hoiguide.guidance.StepState)`` before each flow update.
        options: :class:`hoiguide.guidance.GuidanceOptions` or a mapping of its fields
            (``num_steps``, ``grid_resolution``, ``render_size``, ``max_iterations``, ...).
        models: (``image`` only) :class:`hoiguide.adapters.Models`, ``"default"`` (the
            reference's models), ``"offline"`` (no download), a models YAML path or mapping.
        object_name, camera, left_hand, pipeline_options: (``image`` only) see
            :func:`hoiguide.adapters.observations_from_image`.

    Returns:
        :class:`hoiguide.Reconstruction` (meshes in the image-aligned frame, metres).

    Raises:
        TypeError: neither ``image`` nor ``observations``; ``observations`` without
            ``backbone``; an argument of the wrong type.
        hoiguide.io.ImageError, FileNotFoundError: the photo cannot be used.
        hoiguide.adapters.PipelineError: (``image``) a stage of the chain failed
            (``.stage``, ``.status``, e.g. ``"no hand detected"``).
        hoiguide.adapters.ModelLoadError: (``image``) a model cannot be built.
        hoiguide.ScheduleError: an invalid schedule.
        hoiguide.guidance.NonFiniteLossError: a NaN/inf loss with ``on_nonfinite: raise``.
    """
    if observations is None and image is None:
        raise TypeError(_NEEDS)
    if observations is not None and not isinstance(observations, Observations):
        raise TypeError(f"guided_reconstruct: expected observations as hoiguide.Observations, "
                        f"got {type(observations).__name__}")
    if observations is not None and backbone is None:
        raise TypeError("guided_reconstruct() missing 1 required argument: 'backbone' (any "
                        "hoiguide.FlowBackbone, e.g. hoiguide.backbones.tiny() or "
                        "hoiguide.backbones.HunyuanBackbone.from_pretrained(path))")
    _check_seed(seed)
    sched = load_schedule(schedule)
    guidance_options = GuidanceOptions.coerce(options)
    crop = None
    if observations is None:
        popts = PipelineOptions.coerce(pipeline_options)
        check_chain_arguments(object_name, seed, left_hand)
        img, info = load_image(image, max_megapixels=popts.max_megapixels)  # before any model
        mdl = Models.load(models)
        if backbone is not None:
            mdl = mdl.replace(backbone=backbone)
        backbone = mdl.backbone
        _check_device(device, backbone)
        observations, crop, _ = observations_from_image(
            img, mdl, object_name=object_name, camera=camera, seed=seed,
            left_hand=left_hand, options=pipeline_options)
    elif image is not None:
        log.info("guided_reconstruct: image is ignored when observations are given")
    _check_device(device, backbone)
    sampler = GuidedSampler(backbone, sched, guidance_options)
    rec = sampler.run(observations, seed=int(seed), progress=progress, callbacks=callbacks)
    return rec if crop is None else to_full_frame(rec, crop)


def _check_device(device: Any, backbone: Any, fn: str = "guided_reconstruct") -> None:
    if device is not None and torch.device(device) != torch.device(backbone.device):
        raise ValueError(f"{fn}: device={device!r} but the backbone is on "
                         f"{backbone.device}; move the backbone (the engine runs on its device)")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed: expected a non-negative integer, got {seed!r}")


_NEEDS_FRAMES = ("guided_reconstruct_video: expected frames as hoiguide.ClipObservations, a "
                 "video file or folder of frames (path), or a sequence of images")


def guided_reconstruct_video(frames: Any, *, backbone: Any = None,
                             schedule: Any = "video_fast", seed: int = 0,
                             device: Union[str, torch.device, None] = None,
                             progress: bool = True,
                             callbacks: Sequence[Callable[[Any], Any]] = (),
                             options: Union[Mapping[str, Any], Any, None] = None,
                             models: Any = None, object_name: str = "object",
                             camera: Any = None, left_hand: Optional[bool] = None,
                             pipeline_options: Any = None, every: int = 1,
                             max_frames: Optional[int] = None) -> ClipReconstruction:
    """Reconstruct ONE hand-held object (and the hand in every frame) from a clip by guided
    rectified-flow sampling over its frames (:class:`hoiguide.guidance.clip.ClipGuidedSampler`:
    one latent, per-frame object poses with one shared scale, per-frame hands, image terms on
    a few frames per inner iteration plus temporal smoothness and contact consistency).

    Same conventions as :func:`guided_reconstruct`; every argument is checked before any
    model is built or loaded.

    Args:
        frames: a :class:`hoiguide.ClipObservations` (each frame's observations in its
            image-aligned frame, metres; requires ``backbone``), OR a video file / a folder
            of frame images (read by :func:`hoiguide.videoio.read_frames` with ``every`` and
            ``max_frames``), OR a sequence of images (paths, PIL images or ``(H, W, 3|4)``
            arrays of one size): those run the foundation-model chain on every frame with
            ``models`` (:func:`hoiguide.adapters.clip.clip_observations_from_frames`, the
            hand box tracked between frames) and the result is brought back to the video's
            camera frame (:func:`hoiguide.adapters.clip.clip_to_full_frame`).
        backbone: a :class:`hoiguide.FlowBackbone`; required with ClipObservations; with
            frames it replaces the models' generator.
        schedule: a preset (``"video_fast"``, the default, or ``"video"``), a YAML path, a
            mapping or a :class:`hoiguide.phases.PhaseSchedule`; its ``clip:`` block sets the
            frames per inner iteration, the condition and the temporal weights.
        seed: initial-noise seed (and the order frames are visited in): same seed, machine
            and thread count give a bit-identical result on CPU.
        device: must be the backbone's device when given.
        progress: progress bars over frames (the chain), flow steps and inner iterations.
        callbacks: ``callback(state: hoiguide.guidance.StepState)`` (reference frame) before
            each flow update.
        options: :class:`hoiguide.guidance.GuidanceOptions` or a mapping of its fields.
        models, object_name, camera, left_hand, pipeline_options: (frames only) as
            :func:`guided_reconstruct`; ``camera`` holds for every frame.
        every, max_frames: (a path only) keep every ``every``-th frame, at most
            ``max_frames`` of them (evenly spread).

    Returns:
        :class:`hoiguide.ClipReconstruction` (per frame: that frame's image-aligned frame,
        or the video's camera frame for frames; metres).

    Raises:
        TypeError: ``frames`` of another type; ClipObservations without ``backbone``; an
            argument of the wrong type.
        ValueError: ``device`` differs from the backbone's; an empty sequence of frames.
        hoiguide.videoio.VideoError, FileNotFoundError: the video cannot be read.
        hoiguide.adapters.PipelineError: (frames) no frame shows a hand, or the chain
            failed on every frame.
        hoiguide.adapters.ModelLoadError: (frames) a model cannot be built.
        hoiguide.ScheduleError: an invalid schedule.
        hoiguide.guidance.NonFiniteLossError: a NaN/inf loss with ``on_nonfinite: raise``.
    """
    if isinstance(frames, Observations):
        raise TypeError("guided_reconstruct_video: got one hoiguide.Observations; use "
                        "hoiguide.guided_reconstruct for a single frame, or "
                        "hoiguide.ClipObservations.from_frames([...]) for a clip")
    is_path = isinstance(frames, (str, Path))
    if not isinstance(frames, ClipObservations) and not is_path and (
            not isinstance(frames, (list, tuple, np.ndarray)) or
            (isinstance(frames, np.ndarray) and frames.ndim != 4)):
        raise TypeError(f"{_NEEDS_FRAMES}, got {type(frames).__name__}")
    if isinstance(frames, ClipObservations) and backbone is None:
        raise TypeError("guided_reconstruct_video() missing 1 required argument: 'backbone' "
                        "(any hoiguide.FlowBackbone, e.g. hoiguide.backbones.tiny() or "
                        "hoiguide.backbones.HunyuanBackbone.from_pretrained(path))")
    if not is_path and not isinstance(frames, ClipObservations) and len(frames) == 0:
        raise ValueError("guided_reconstruct_video: frames is empty; give at least one image")
    _check_seed(seed)
    for name, v in (("every", every), ("max_frames", max_frames)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              or v < 1):
            raise TypeError(f"{name}: expected a positive integer, got {v!r}")
    sched = load_schedule(schedule)
    guidance_options = GuidanceOptions.coerce(options)
    crops = None
    if isinstance(frames, ClipObservations):
        clip = frames
    else:
        PipelineOptions.coerce(pipeline_options)
        check_chain_arguments(object_name, seed, left_hand)
        info: dict[str, Any] = {}
        if is_path:
            images, info = read_frames(frames, every=int(every), max_frames=max_frames)
        else:
            images = list(frames)
        mdl = Models.load(models)
        if backbone is not None:
            mdl = mdl.replace(backbone=backbone)
        backbone = mdl.backbone
        _check_device(device, backbone, "guided_reconstruct_video")
        clip, crops = clip_observations_from_frames(
            images, mdl, object_name=object_name, camera=camera, seed=int(seed),
            left_hand=left_hand, options=pipeline_options, progress=progress,
            times=info.get("times"), metadata={"video": info} if info else None)
    _check_device(device, backbone, "guided_reconstruct_video")
    sampler = ClipGuidedSampler(backbone, sched, guidance_options)
    rec = sampler.run(clip, seed=int(seed), progress=progress, callbacks=callbacks)
    return rec if crops is None else clip_to_full_frame(rec, crops)
