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

__all__ = ["Reconstruction", "HAND_COLOR", "OBJECT_COLOR", "RESULT_KIND"]

log = logging.getLogger(__name__)

RESULT_KIND = "hoiguide.reconstruction"
"""``result.json``'s ``kind`` for a folder written by :meth:`Reconstruction.save`."""

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
