"""The result of a guided reconstruction: :class:`Reconstruction` (what
``hoiguide.guided_reconstruct`` and the guided sampler return)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from hoiguide.io import RESULT_FILE, write_json, write_mesh
from hoiguide.types import Mesh, Similarity

__all__ = ["Reconstruction", "ClipReconstruction", "HAND_COLOR", "OBJECT_COLOR", "RESULT_KIND",
           "CLIP_RESULT_KIND"]

log = logging.getLogger(__name__)

RESULT_KIND = "hoiguide.reconstruction"
"""``result.json``'s ``kind`` for a folder written by :meth:`Reconstruction.save`."""

CLIP_RESULT_KIND = "hoiguide.clip_reconstruction"
"""``result.json``'s ``kind`` for a folder written by :meth:`ClipReconstruction.save`."""

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
    def num_steps(self) -> int:
        """Flow steps the run took."""
        return int(self.schedule.get("num_steps", 0))

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
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.write_meshes(out, suffixes=("glb", "ply"))
        write_json(out / RESULT_FILE, {"kind": RESULT_KIND, **self.summary()}, indent=2)
        return out

    def write_meshes(self, out: Union[str, Path],
                     suffixes: tuple[str, ...] = ("glb", "ply", "obj")) -> list[str]:
        """Write ``object.<suffix>`` / ``hand.<suffix>`` for each suffix (vertex colours; an
        empty mesh is skipped with a warning), ``scene.glb`` (both, nodes ``hand`` and
        ``object``) and ``history.json`` into the existing folder ``out``; stale files of
        those names are removed first. Meshes stay in the image-aligned camera frame, metres.
        Returns the names written."""
        import trimesh

        out = Path(out)
        written: list[str] = []
        parts = []
        for name, mesh, color in (("hand", self.hand_mesh, HAND_COLOR),
                                  ("object", self.object_mesh, OBJECT_COLOR)):
            for suffix in suffixes:
                (out / f"{name}.{suffix}").unlink(missing_ok=True)
            if mesh.is_empty:
                log.warning("the %s mesh is empty; no %s.%s written", name, name,
                            "/.".join(suffixes))
                continue
            for suffix in suffixes:
                write_mesh(out / f"{name}.{suffix}", mesh, color)
                written.append(f"{name}.{suffix}")
            colored = Mesh(mesh.vertices.detach().cpu(), mesh.faces.cpu(),
                           torch.tensor(color).expand(mesh.num_vertices, 4).clone())
            parts.append((name, colored.to_trimesh()))
        scene_path = out / "scene.glb"
        scene_path.unlink(missing_ok=True)
        if parts:
            scene = trimesh.Scene()
            for name, tm in parts:
                scene.add_geometry(tm, node_name=name, geom_name=name)
            scene.export(str(scene_path), file_type="glb")
            written.append("scene.glb")
        write_json(out / "history.json", self.history.to_list()
                   if hasattr(self.history, "to_list") else [], indent=None)
        written.append("history.json")
        return written

    def __repr__(self) -> str:
        return (f"Reconstruction(status={self.status!r}, object={self.object_mesh!r}, "
                f"hand={self.hand_mesh!r}, schedule={self.schedule.get('name')!r}, "
                f"seed={self.seed}, iterations={self.counters.get('iterations')})")


@dataclass(frozen=True, eq=False)
class ClipReconstruction:
    """The result of :func:`hoiguide.guided_reconstruct_video`: one object shape for the
    whole clip, its pose in every frame, and the hand in every frame.

    Attributes:
        object_mesh_generator: the object in the generator frame (one shape for the clip;
            empty when the generator produced no surface, see ``status``).
        object_transforms: ``T`` generator -> image similarities, one per frame (frame
            ``t``'s image-aligned frame, metres; the scale is shared by every frame).
        hand_meshes: ``T`` hand meshes, each in its frame's image-aligned frame (an
            unobserved frame's hand is interpolated from its neighbours).
        hand_similarities: ``T`` optimised similarities applied to the observed hands.
        times: ``(T,)`` frame times in seconds.
        reference: the reference frame's index (the generator's condition).
        observed: per frame, whether it had observations.
        latent: the final latent ``(1, *latent_shape)``.
        history, timings, schedule, seed, status, counters: as in :class:`Reconstruction`
            (``counters`` also holds ``frame_visits``: inner-iteration evaluations per frame).
    """

    object_mesh_generator: Mesh
    object_transforms: list
    hand_meshes: list
    hand_similarities: list
    times: torch.Tensor
    reference: int
    observed: list
    latent: torch.Tensor
    history: Any
    timings: dict[str, Any]
    schedule: dict[str, Any]
    seed: int
    status: str
    counters: dict[str, Any]

    @property
    def num_frames(self) -> int:
        return len(self.object_transforms)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def object_mesh(self, frame: Optional[int] = None) -> Mesh:
        """The object placed in frame ``frame``'s image-aligned frame (default: the
        reference frame), metres."""
        t = self.reference if frame is None else int(frame)
        if not -self.num_frames <= t < self.num_frames:
            raise IndexError(f"frame {t} out of range for a clip of {self.num_frames} frames")
        if self.object_mesh_generator.is_empty:
            return self.object_mesh_generator
        return self.object_mesh_generator.transformed(self.object_transforms[t])

    @property
    def object_meshes(self) -> list:
        """The object placed in every frame (image-aligned frames, metres)."""
        return [self.object_mesh(t) for t in range(self.num_frames)]

    def frame_reconstruction(self, frame: Optional[int] = None) -> Reconstruction:
        """Frame ``frame`` (default: the reference frame) as a single-image
        :class:`Reconstruction`: the clip's object placed in that frame and that frame's hand,
        both in frame ``frame``'s image-aligned frame (OpenCV camera frame, metres).

        ``gen_to_image`` is the frame's ``object_transforms[frame]`` and ``object_similarity``
        the identity (so ``object_transform`` is the frame's generator -> image map);
        ``hand_similarity`` is the frame's; the latent, history, timings, schedule, seed,
        status and counters are the clip's (shared by every frame).

        Raises:
            IndexError: ``frame`` is not in ``[-T, T)``.
        """
        t = self.reference if frame is None else int(frame)
        if not -self.num_frames <= t < self.num_frames:
            raise IndexError(f"frame {t} out of range for a clip of {self.num_frames} frames")
        return Reconstruction(
            object_mesh=self.object_mesh(t), hand_mesh=self.hand_meshes[t],
            object_similarity=Similarity.identity(), hand_similarity=self.hand_similarities[t],
            gen_to_image=self.object_transforms[t], latent=self.latent, history=self.history,
            timings=self.timings, schedule=self.schedule, seed=self.seed, status=self.status,
            counters=dict(self.counters), object_mesh_generator=self.object_mesh_generator)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (what ``result.json`` holds; poses per frame)."""
        return {
            "status": self.status,
            "seed": self.seed,
            "num_frames": self.num_frames,
            "reference": self.reference,
            "schedule": {k: v for k, v in self.schedule.items() if k != "definition"},
            "schedule_definition": self.schedule.get("definition"),
            "counters": dict(self.counters),
            "timings": self.timings,
            "object_mesh_generator": {"vertices": self.object_mesh_generator.num_vertices,
                                      "faces": self.object_mesh_generator.num_faces},
            "frames": [{"index": t, "time": float(self.times[t]),
                        "observed": bool(self.observed[t]),
                        "object_transform": self.object_transforms[t].to_dict(),
                        "hand_similarity": self.hand_similarities[t].to_dict()}
                       for t in range(self.num_frames)],
            "frame": "per frame: that frame's image-aligned OpenCV camera frame (+x right, "
                     "+y down, +z forward), metres; object_transform maps the generator "
                     "frame into it",
        }

    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``object.glb``/``object.ply`` (the object in the REFERENCE frame's
        image-aligned frame), ``object_generator.ply`` (generator frame),
        ``hands/hand_<t>.ply`` (each frame's hand, its own frame), ``scene.glb`` (reference
        frame: hand and object), ``history.json`` and ``result.json`` (:meth:`summary`)
        into ``directory`` (created). Returns the directory."""
        out = Path(directory)
        (out / "hands").mkdir(parents=True, exist_ok=True)
        self.frame_reconstruction(self.reference).write_meshes(out, suffixes=("glb", "ply"))
        if not self.object_mesh_generator.is_empty:
            write_mesh(out / "object_generator.ply", self.object_mesh_generator, OBJECT_COLOR)
        width = max(3, len(str(self.num_frames - 1)))
        for t, mesh in enumerate(self.hand_meshes):
            write_mesh(out / "hands" / f"hand_{t:0{width}d}.ply", mesh, HAND_COLOR)
        write_json(out / RESULT_FILE, {"kind": CLIP_RESULT_KIND, **self.summary()}, indent=2)
        return out

    def __repr__(self) -> str:
        return (f"ClipReconstruction(status={self.status!r}, frames={self.num_frames}, "
                f"object={self.object_mesh_generator!r}, "
                f"schedule={self.schedule.get('name')!r}, seed={self.seed})")
