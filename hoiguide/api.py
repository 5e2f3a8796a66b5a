"""The public entry point: :func:`guided_reconstruct` (its result is
:class:`hoiguide.Reconstruction`).

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
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hoiguide.adapters.models import Models
from hoiguide.adapters.pipeline import (
    PipelineOptions,
    check_chain_arguments,
    observations_from_image,
    to_full_frame,
)
from hoiguide.guidance.engine import GuidedSampler
from hoiguide.guidance.records import GuidanceOptions
from hoiguide.io import load_image
from hoiguide.phases import DEFAULT_SCHEDULE, load_schedule
from hoiguide.result import Reconstruction
from hoiguide.types import Observations

__all__ = ["guided_reconstruct", "Reconstruction"]

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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed: expected a non-negative integer, got {seed!r}")
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


def _check_device(device: Any, backbone: Any) -> None:
    if device is not None and torch.device(device) != torch.device(backbone.device):
        raise ValueError(f"guided_reconstruct: device={device!r} but the backbone is on "
                         f"{backbone.device}; move the backbone (the engine runs on its device)")
