"""The public entry point: :func:`guided_reconstruct` and its result, :class:`Reconstruction`.

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

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from hoiguide.types import Mesh, Observations, Similarity

__all__ = ["guided_reconstruct", "Reconstruction"]

log = logging.getLogger(__name__)

HAND_COLOR = (0.93, 0.72, 0.60, 1.0)
OBJECT_COLOR = (0.30, 0.55, 0.90, 1.0)


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """The result of :func:`guided_reconstruct`.

    Attributes:
        object_mesh: the object in the image-aligned frame (OpenCV camera frame, metres);
            empty when the generator produced no surface (see ``status``).
        hand_mesh: the hand in the image-aligned frame (after its optimised similarity).
        object_similarity: the optimised correction applied AFTER ``gen_to_image``
            (image frame); ``object_transform`` is the full generator -> image map.
        hand_similarity: the optimised similarity applied to the observed hand (image frame).
        gen_to_image: the observations' generator -> image similarity.
        latent: the final latent ``(1, *latent_shape)``.
        history: every loss term of every inner iteration (:class:`hoiguide.guidance.History`).
        timings: seconds: ``total``, ``phases`` (per phase, plus ``sampling`` and
            ``final_decode``) and ``parts`` (decode, isosurface, render, losses, backward, step).
        schedule: ``{"name", "num_steps", "resolved": table text, "phases": [...],
            "definition": the full schedule as data}``.
        seed: the noise seed.
        status: ``"ok"`` or the failure reason (e.g. ``"guidance stopped: ..."``,
            ``"empty object mesh"``).
        counters: ``iterations``, ``skipped_empty_surface``, ``skipped_nonfinite``,
            ``guidance_stopped``, ``components_raw`` / ``components`` (connected components of
            the final object mesh before / after floater removal).
        hand_keypoints_3d: the hand keypoints after the hand similarity (or ``None``).
        object_mesh_generator: the object in the generator frame.
    """

    object_mesh: Mesh
    hand_mesh: Mesh
    object_similarity: Similarity
    hand_similarity: Similarity
    gen_to_image: Similarity
    latent: torch.Tensor
    history: Any
    timings: dict[str, Any]
    schedule: dict[str, Any]
    seed: int
    status: str
    counters: dict[str, int]
    hand_keypoints_3d: Optional[torch.Tensor] = None
    object_mesh_generator: Optional[Mesh] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def object_transform(self) -> Similarity:
        """Generator frame -> image frame: ``object_similarity ∘ gen_to_image``."""
        return self.object_similarity.compose(self.gen_to_image)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (what ``result.json`` holds)."""
        return {
            "status": self.status,
            "seed": self.seed,
            "schedule": {k: v for k, v in self.schedule.items() if k != "definition"},
            "schedule_definition": self.schedule.get("definition"),
            "object_similarity": self.object_similarity.to_dict(),
            "hand_similarity": self.hand_similarity.to_dict(),
            "gen_to_image": self.gen_to_image.to_dict(),
            "object_transform": self.object_transform.to_dict(),
            "counters": dict(self.counters),
            "timings": self.timings,
            "object_mesh": {"vertices": self.object_mesh.num_vertices,
                            "faces": self.object_mesh.num_faces},
            "hand_mesh": {"vertices": self.hand_mesh.num_vertices,
                          "faces": self.hand_mesh.num_faces},
            "frame": "image-aligned OpenCV camera frame (+x right, +y down, +z forward), metres",
        }

    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``object.glb``/``object.ply`` (if the object is not empty), ``hand.glb``/
        ``hand.ply``, ``scene.glb`` (hand and object coloured), ``result.json`` (see
        :meth:`summary`) and ``history.json`` (every inner iteration) into ``directory``
        (created). Meshes are in the image-aligned frame, metres. Returns the directory."""
        from hoiguide.outputs import write_meshes

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_meshes(out, self, suffixes=("glb", "ply"))
        (out / "result.json").write_text(json.dumps(self.summary(), indent=2, default=str))
        return out

    def __repr__(self) -> str:
        return (f"Reconstruction(status={self.status!r}, object={self.object_mesh!r}, "
                f"hand={self.hand_mesh!r}, schedule={self.schedule.get('name')!r}, "
                f"seed={self.seed}, iterations={self.counters.get('iterations')})")


def guided_reconstruct(image: Any = None, *, observations: Optional[Observations] = None,
                       backbone: Any = None, schedule: Any = "followmyhold", seed: int = 0,
                       device: Union[str, torch.device, None] = None, progress: bool = True,
                       callbacks: Sequence[Callable[[Any], Any]] = (),
                       options: Union[Mapping[str, Any], Any, None] = None,
                       models: Any = None, object_name: str = "object",
                       camera: Any = None, left_hand: Optional[bool] = None,
                       pipeline_options: Any = None) -> Reconstruction:
    """Reconstruct the hand-held object (and the hand) by guided rectified-flow sampling.

    Args:
        image: the photo (a path, a PIL image or an ``(H, W, 3|4)`` uint8 array) when no
            ``observations`` are given: the foundation-model chain
            (:func:`hoiguide.adapters.pipeline.observations_from_image`: detection, crop,
            masks, inpainting, monocular geometry, hand, coarse mesh, both ICPs) builds them
            with ``models``; the result is then in the PHOTO's camera frame (mirrored back
            for ``left_hand``). When both are given, ``image`` is ignored (the generator is
            conditioned on ``observations.object_image``).
        observations: :class:`hoiguide.Observations` in the image-aligned frame (from the
            adapters, a synthetic scene, or built from your own data).
        backbone: a :class:`hoiguide.FlowBackbone` (e.g.
            ``hoiguide.backbones.HunyuanBackbone.from_pretrained(...)``).
        schedule: a preset name (``hoiguide.phases.available_presets()``), a YAML path, a
            mapping, or a :class:`hoiguide.phases.PhaseSchedule`.
        seed: initial-noise seed (same seed and machine -> same result).
        device: must be the backbone's device when given (the engine runs where the
            backbone is; move the backbone yourself).
        progress: show a progress bar over flow steps (tqdm, if installed).
        callbacks: ``callback(state: hoiguide.guidance.StepState)`` before each Euler step.
        options: :class:`hoiguide.guidance.GuidanceOptions` or a mapping of its fields
            (``num_steps``, ``grid_resolution``, ``render_size``, ``max_iterations``, ...).
        models: (``image`` only) :class:`hoiguide.adapters.models.Models`, a models YAML
            path or mapping; default ``Models.default()`` (the reference's models). A given
            ``backbone`` replaces its generator.
        object_name, camera, left_hand, pipeline_options: (``image`` only) see
            :func:`hoiguide.adapters.pipeline.observations_from_image` (what the hand holds,
            the photo's intrinsics if known, a left hand, :class:`PipelineOptions`).

    Returns:
        :class:`Reconstruction` (meshes in the image-aligned frame, metres).

    Raises:
        NotImplementedError: neither ``image`` nor ``observations`` given; ``observations``
            without ``backbone``.
        hoiguide.adapters.pipeline.PipelineError: (``image``) a stage of the chain failed
            (``.stage``, ``.status``, e.g. ``"no hand detected"``).
        hoiguide.adapters.models.ModelLoadError: (``image``) a model cannot be built.
        hoiguide.ScheduleError: an invalid schedule.
        hoiguide.guidance.NonFiniteLossError: a NaN/inf loss with ``on_nonfinite: raise``.
    """
    from hoiguide.guidance.engine import GuidedSampler
    from hoiguide.phases import load_schedule

    crop = None
    if observations is None:
        if image is None:
            raise NotImplementedError(
                "guided_reconstruct: pass image or observations (an image runs the "
                "foundation-model chain with models=...; observations=hoiguide.Observations"
                "(...) can be built from your own data or a synthetic scene)")
        from hoiguide.adapters.models import Models
        from hoiguide.adapters.pipeline import observations_from_image

        mdl = Models.load(models)
        if backbone is not None:
            mdl = mdl.replace(backbone=backbone)
        backbone = mdl.backbone
        if device is not None and torch.device(device) != torch.device(backbone.device):
            raise ValueError(f"guided_reconstruct: device={device!r} but the backbone is on "
                             f"{backbone.device}; move the backbone (the engine runs on its "
                             f"device)")
        observations, crop, _ = observations_from_image(
            image, mdl, object_name=object_name, camera=camera, seed=seed,
            left_hand=left_hand, options=pipeline_options)
        image = None
    if not isinstance(observations, Observations):
        raise TypeError(f"guided_reconstruct: expected observations as hoiguide.Observations, "
                        f"got {type(observations).__name__}")
    if backbone is None:
        raise NotImplementedError(
            "guided_reconstruct: pass backbone=... (any hoiguide.FlowBackbone, e.g. "
            "hoiguide.backbones.HunyuanBackbone.from_pretrained(path)); a bundled tiny "
            "generator for CPU demos arrives with a later issue")
    if image is not None:
        log.info("guided_reconstruct: image is ignored when observations are given")
    if device is not None and torch.device(device) != torch.device(backbone.device):
        raise ValueError(f"guided_reconstruct: device={device!r} but the backbone is on "
                         f"{backbone.device}; move the backbone (the engine runs on its device)")
    sched = load_schedule(schedule)
    sampler = GuidedSampler(backbone, sched, options)
    res = sampler.run(observations, seed=seed, progress=progress, callbacks=callbacks)
    resolved = sampler.resolved
    sched_info = {
        "name": sched.name,
        "source": sched.source,
        "num_steps": res.num_steps,
        "resolved": resolved.table(),
        "phases": [{"name": p.name, "steps": list(p.steps), "after_sampling": p.after_sampling,
                    "iterations": p.iterations, "learning_rates": dict(p.learning_rates)}
                   for p in resolved],
        "definition": sched.to_dict(),
    }
    rec = Reconstruction(
        object_mesh=res.object_mesh, hand_mesh=res.hand_mesh,
        object_similarity=res.object_similarity, hand_similarity=res.hand_similarity,
        gen_to_image=res.gen_to_image, latent=res.latent, history=res.history,
        timings=res.timings, schedule=sched_info, seed=int(seed), status=res.status,
        counters=res.counters, hand_keypoints_3d=res.hand_keypoints_3d,
        object_mesh_generator=res.object_mesh_generator)
    if crop is not None:
        from hoiguide.adapters.pipeline import to_full_frame

        rec = to_full_frame(rec, crop)
    return rec
