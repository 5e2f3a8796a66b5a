"""OakInk (Yang et al., CVPR 2022), image subset ``OakInk-Image`` (``stream_release_v2``),
in the layout of its release and of the ``oikit`` toolkit.

Files read (``ROOT`` is the dataset folder, the toolkit's ``OAKINK_DIR``)::

    ROOT/image/anno/seq_all.json                   every annotated frame:
                                                   [seq_id, hand_index, frame, view]
    ROOT/image/stream_release_v2/<seq_id>/<view>_color_<frame>.png
                                                   views north_east, south_east, north_west,
                                                   south_west (view index 0..3)
    ROOT/image/anno/cam_intr/<key>.pkl             (3, 3) intrinsics
    ROOT/image/anno/hand_v/<key>.pkl               (778, 3) MANO vertices, camera frame
    ROOT/image/anno/hand_j/<key>.pkl               (21, 3) joints, camera frame
    ROOT/image/anno/obj_transf/<key>.pkl           (4, 4) object pose, camera frame
    ROOT/image/obj/<obj_id>.obj | .ply             object models
    ROOT/shape/metaV2/object_id.json               (optional) object names

where ``<key>`` is ``<seq_id>__<hand_index>__<frame>__<view>`` with the ``/`` of ``seq_id``
(``<object>_<intent>_<subject>/<timestamp>``) replaced by ``__``. The annotation pickles
hold numpy arrays and are read with the numpy-only unpickler
(:func:`hoiguide.datasets.base.read_pickle`). Units are metres.

Ground truth, as the toolkit builds it: the hand is the annotated right-hand MANO mesh
``hand_v`` with the faces of the user's ``MANO_RIGHT.pkl``; the object is its model re-centred
on its bounding-box centre and moved by ``obj_transf`` (``R v + t``). In hand-over sequences
an image can have two annotated hands; the loader takes the one closer to the object (the
sample's metadata names it).

Frame ids: ``<object>_<intent>_<subject>__<timestamp>__<view>__<frame>``, e.g.
``A01023_0001_0002__2021-10-12-17-13-00__south_east__90``.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from scipy.spatial import cKDTree

from hoiguide.datasets.base import (
    Dataset,
    DatasetError,
    Sample,
    camera_from_opencv,
    read_pickle,
    read_rgb,
)
from hoiguide.datasets.meshes import load_object_mesh, posed_mesh
from hoiguide.datasets.splits import path_tail
from hoiguide.types import Mesh

__all__ = ["OakInk", "VIEWS"]

log = logging.getLogger(__name__)

#: the view names of the image file names, by view index
VIEWS = ("north_east", "south_east", "north_west", "south_west")


class OakInk(Dataset):
    """OakInk-Image frames with their MANO hand and object (see the module docstring)."""

    name = "oakink"
    layout = ("ROOT/image/{anno/seq_all.json,stream_release_v2/<seq>/<time>/<view>_color_N.png,"
              "anno/{cam_intr,hand_v,hand_j,obj_transf}/<key>.pkl,obj/<obj_id>.obj|ply} "
              "(OakInk-Image release, oikit)")

    def __init__(self, root: Any, *, mano_dir: Any = None) -> None:
        super().__init__(root, mano_dir=mano_dir)
        self.image_dir = self.require(self.root / "image", "image folder")
        self._index: Optional[dict[str, list[tuple[str, int, int, int]]]] = None
        self._names: Optional[dict[str, str]] = None

    # index -------------------------------------------------------------------------------
    def index(self) -> dict[str, list[tuple[str, int, int, int]]]:
        """frame id -> its ``seq_all.json`` entries (one per annotated hand)."""
        if self._index is None:
            path = self.require(self.image_dir / "anno" / "seq_all.json", "frame list")
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise self.error(f"cannot read {path} ({exc})") from None
            idx: dict[str, list] = {}
            for e in entries:
                if not (isinstance(e, list) and len(e) == 4):
                    raise self.error(f"{path}: expected entries [seq_id, hand, frame, view], "
                                     f"got {e!r:.80}")
                seq, hand, frame, view = str(e[0]), int(e[1]), int(e[2]), int(e[3])
                if not 0 <= view < len(VIEWS) or "/" not in seq:
                    raise self.error(f"{path}: bad entry {e!r:.80}")
                idx.setdefault(self._make_id(seq, VIEWS[view], frame), []).append(
                    (seq, hand, frame, view))
            self._index = idx
        return self._index

    @staticmethod
    def _make_id(seq: str, view: str, frame: int) -> str:
        cat, stamp = seq.split("/", 1)
        return f"{cat}__{stamp}__{view}__{frame}"

    def frame_ids(self) -> list[str]:
        return sorted(self.index())

    def id_from_path(self, img_path: str) -> str:
        parts = path_tail(img_path, 3)
        stem = Path(parts[-1]).stem if parts else ""
        view, _, frame = stem.rpartition("_color_")
        if len(parts) < 3 or view not in VIEWS or not frame.isdigit():
            raise DatasetError(f"oakink: cannot read a frame from the image path {img_path!r} "
                               f"(expected .../<object>_<intent>_<subject>/<timestamp>/"
                               f"<view>_color_<frame>.png)")
        return self._make_id(f"{parts[0]}/{parts[1]}", view, int(frame))

    def object_name(self, obj_id: str) -> str:
        if self._names is None:
            self._names = {}
            p = self.root / "shape" / "metaV2" / "object_id.json"
            if p.is_file():
                try:
                    data = json.loads(p.read_text())
                    self._names = {str(k): str(v.get("name", k)) for k, v in data.items()
                                   if isinstance(v, dict)}
                except (OSError, ValueError, AttributeError) as exc:
                    log.warning("oakink: ignoring unreadable %s (%s)", p, exc)
        return self._names.get(obj_id, obj_id)

    # annotations ---------------------------------------------------------------------------
    def _anno(self, kind: str, key: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.require(self.image_dir / "anno" / kind / f"{key}.pkl", f"{kind} annotation")
        try:
            a = np.asarray(read_pickle(path), np.float64)
        except (pickle.UnpicklingError, ValueError, TypeError) as exc:
            raise self.error(str(exc).splitlines()[0]) from None
        if a.shape != shape:
            raise self.error(f"{path}: expected an array of shape {shape}, got {a.shape}")
        return a

    def _object_model(self, obj_id: str) -> Path:
        for ext in (".obj", ".ply"):
            p = self.image_dir / "obj" / f"{obj_id}{ext}"
            if p.is_file():
                return p
        raise self.error(f"missing object model {self.image_dir / 'obj' / obj_id}.obj|ply")

    def has_ground_truth(self, frame_id: str) -> bool:
        try:
            entries = self.index().get(frame_id)
        except DatasetError:
            return False
        return bool(entries)

    def get(self, frame_id: str, row: Optional[Mapping[str, str]] = None) -> Sample:
        entries = self.index().get(frame_id)
        if not entries:
            raise self.error(f"frame {frame_id} is not listed in "
                             f"{self.image_dir / 'anno' / 'seq_all.json'}")
        seq, _, frame, view = entries[0]
        image_path = self.require(self.image_dir / "stream_release_v2" / seq /
                                  f"{VIEWS[view]}_color_{frame}.png", "image")
        image = read_rgb(image_path)
        H, W = image.shape[:2]
        obj_id = seq.split("/")[0].split("_")[0]
        canon = load_object_mesh(self._object_model(obj_id), recenter=True)
        faces = self.mano("right").faces
        best = None
        for seq_, hand_idx, frame_, view_ in entries:
            key = f"{seq_}__{hand_idx}__{frame_}__{view_}".replace("/", "__")
            K = self._anno("cam_intr", key, (3, 3))
            verts = self._anno("hand_v", key, (778, 3))
            joints = self._anno("hand_j", key, (21, 3))
            T = self._anno("obj_transf", key, (4, 4))
            diag = float(np.linalg.norm(verts.max(0) - verts.min(0)))
            if not 0.01 < diag < 2.0:
                raise self.error(f"{self.image_dir / 'anno' / 'hand_v' / key}.pkl: the hand is "
                                 f"{diag:.3g} units across; expected metres")
            obj = posed_mesh(canon, T[:3, :3], T[:3, 3])
            gap = float(cKDTree(obj.vertices.numpy()).query(verts)[0].min())
            if best is None or gap < best[0]:
                best = (gap, key, hand_idx, K, verts, joints, obj)
        gap, key, hand_idx, K, verts, joints, obj = best
        camera = camera_from_opencv(K, W, H)
        hand = Mesh(torch.as_tensor(verts), faces)
        kp2 = np.asarray(camera.project(joints), np.float64)
        return Sample(
            id=frame_id, dataset=self.name, image=image, camera=camera, hand_mesh=hand,
            object_mesh=obj, object_name=self.object_name(obj_id), is_right=True,
            keypoints_2d=kp2, keypoints_3d=joints, image_path=image_path,
            metadata={"sequence": seq, "view": VIEWS[view], "frame": frame,
                      "annotation_key": key, "hand_index": hand_idx,
                      "hands_annotated": len(entries), "object_id": obj_id,
                      "split_row": dict(row) if row else None})
