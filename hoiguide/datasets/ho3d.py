"""HO-3D (Hampali et al., CVPR 2020), versions 2 and 3, in the layout of its release.

Files read (``ROOT`` is the dataset folder holding ``train/`` and ``evaluation/``)::

    ROOT/<subset>/<sequence>/rgb/NNNN.png    (v2) or NNNN.jpg (v3)
    ROOT/<subset>/<sequence>/meta/NNNN.pkl   per-frame annotation (a pickle of numpy arrays):
                                             handPose (48,) full MANO pose, handBeta (10,),
                                             handTrans (3,), objRot (3,) axis-angle,
                                             objTrans (3,), objName, camMat (3, 3),
                                             handJoints3D (21, 3)
    YCB/<objName>/textured_simple.obj        YCB object models (``ycb_dir``; a folder with
                                             ``models/<objName>/...`` works too)

The meta files are pickles: they are read with a restricted unpickler that only rebuilds
numpy arrays (:func:`hoiguide.datasets.base.read_pickle`), never with ``pickle.load``.

Ground truth, as the HO-3D scripts pose it: the hand is the right MANO model with the full
48-value pose (global rotation + 45 joint rotations, no mean pose added:
``flat_hand_mean=True``), ``handBeta`` and ``handTrans``; the object is the YCB model rotated
by ``objRot`` and moved by ``objTrans``. Both are stored in the OpenGL camera frame (the hand
along -z); the loader flips y and z into the OpenCV frame. ``handJoints3D`` is in MANO joint
order with HO-3D's fingertip vertices (744, 333, 444, 555, 672) appended; the loader reorders
it to OpenPose order. The ``evaluation`` subset only annotates the wrist, so use ``train``
(``subset``, default ``train``).

Frame ids: ``<subset>__<sequence>__<NNNN>``, e.g. ``train__ABF10__0000``.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from hoiguide.datasets.base import (
    MANO_TO_OPENPOSE,
    Dataset,
    DatasetError,
    Sample,
    camera_from_opencv,
    read_pickle,
    read_rgb,
)
from hoiguide.datasets.meshes import load_object_mesh, posed_mesh
from hoiguide.datasets.splits import path_tail
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.types import Mesh

__all__ = ["HO3D", "HO3D_TIP_IDS", "OPENGL_TO_OPENCV"]

log = logging.getLogger(__name__)

#: HO-3D's fingertip vertices (thumb, index, middle, ring, pinky) of its 21 joints
HO3D_TIP_IDS = (744, 333, 444, 555, 672)
#: the OpenGL camera frame (y up, -z forward) -> the OpenCV camera frame (y down, +z forward)
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


class HO3D(Dataset):
    """HO-3D frames with their MANO hand and YCB object (see the module docstring).

    Args:
        root, mano_dir: see :class:`hoiguide.datasets.base.Dataset`.
        subset: the folder under ``root`` (``"train"``; ``"evaluation"`` has no hand pose).
        ycb_dir: the YCB models folder (``<objName>/textured_simple.obj``); default
            ``root/models``.
    """

    name = "ho3d"
    layout = ("ROOT/<subset>/<sequence>/{rgb/NNNN.png|jpg,meta/NNNN.pkl} and "
              "YCB_DIR/<objName>/textured_simple.obj (HO-3D v2/v3 release)")

    def __init__(self, root: Any, *, mano_dir: Any = None, subset: str = "train",
                 ycb_dir: Any = None) -> None:
        super().__init__(root, mano_dir=mano_dir)
        self.subset = str(subset)
        self.require(self.root / self.subset, f"'{self.subset}' folder")
        self.ycb_dir = Path(ycb_dir).expanduser() if ycb_dir is not None else \
            self.root / "models"
        self._metas: dict[Path, dict] = {}

    def _split_id(self, frame_id: str) -> tuple[str, str, str]:
        parts = frame_id.split("__")
        if len(parts) != 3:
            raise DatasetError(f"ho3d: expected a frame id <subset>__<sequence>__<NNNN>, got "
                               f"{frame_id!r}")
        return parts[0], parts[1], parts[2]

    def frame_ids(self) -> list[str]:
        d = self.root / self.subset
        ids = []
        for seq in sorted(p for p in d.iterdir() if (p / "meta").is_dir()):
            ids += [f"{self.subset}__{seq.name}__{m.stem}"
                    for m in sorted((seq / "meta").glob("*.pkl"))]
        return ids

    def id_from_path(self, img_path: str) -> str:
        parts = path_tail(img_path, 4)
        if len(parts) < 4 or parts[2] != "rgb":
            raise DatasetError(f"ho3d: cannot read a frame from the image path {img_path!r} "
                               f"(expected .../<subset>/<sequence>/rgb/NNNN.png|jpg)")
        return f"{parts[0]}__{parts[1]}__{Path(parts[3]).stem}"

    def meta(self, frame_id: str) -> dict:
        subset, seq, stem = self._split_id(frame_id)
        path = self.root / subset / seq / "meta" / f"{stem}.pkl"
        if path not in self._metas:
            self.require(path, "annotation file")
            try:
                m = read_pickle(path)
            except pickle.UnpicklingError as exc:
                raise self.error(str(exc).splitlines()[0]) from None
            if not isinstance(m, dict):
                raise self.error(f"{path}: expected a dict, got {type(m).__name__}")
            if len(self._metas) > 256:
                self._metas.clear()
            self._metas[path] = m
        return self._metas[path]

    def has_ground_truth(self, frame_id: str) -> bool:
        try:
            m = self.meta(frame_id)
        except DatasetError:
            return False
        return all(m.get(k) is not None for k in ("handPose", "handTrans", "objRot",
                                                   "objTrans", "camMat"))

    def _array(self, m: dict, key: str, size: int, path: Path) -> np.ndarray:
        v = m.get(key)
        if v is None:
            hint = " (the evaluation subset only annotates the wrist: use subset=train)" \
                if key.startswith("hand") else ""
            raise self.error(f"{path} has no {key}{hint}")
        a = np.asarray(v, np.float64).reshape(-1)
        if a.size != size:
            raise self.error(f"{path}: expected {key} of {size} values, got {a.size}")
        return a

    def get(self, frame_id: str, row: Optional[Mapping[str, str]] = None) -> Sample:

        subset, seq, stem = self._split_id(frame_id)
        seq_dir = self.root / subset / seq
        meta_path = seq_dir / "meta" / f"{stem}.pkl"
        m = self.meta(frame_id)
        image_path = next((p for p in (seq_dir / "rgb" / f"{stem}.jpg",
                                       seq_dir / "rgb" / f"{stem}.png") if p.is_file()), None)
        if image_path is None:
            raise self.error(f"missing image {seq_dir / 'rgb' / stem}.png|jpg")
        image = read_rgb(image_path)
        H, W = image.shape[:2]
        K = self._array(m, "camMat", 9, meta_path).reshape(3, 3)
        camera = camera_from_opencv(K, W, H)

        pose = self._array(m, "handPose", 48, meta_path)
        beta = self._array(m, "handBeta", 10, meta_path)
        trans = self._array(m, "handTrans", 3, meta_path)
        hand_gl, kp3_gl = self.pose_mano("right", global_orient=pose[:3], hand_pose=pose[3:],
                                         betas=beta, transl=trans, flat_hand_mean=True,
                                         fingertip_vertex_ids=HO3D_TIP_IDS)
        flip = torch.as_tensor(OPENGL_TO_OPENCV)
        hand = Mesh(hand_gl.vertices.double() @ flip, hand_gl.faces)
        kp3 = kp3_gl @ OPENGL_TO_OPENCV
        joints = m.get("handJoints3D")
        if joints is not None and np.asarray(joints).size == 63:
            kp3 = np.asarray(joints, np.float64).reshape(21, 3)[list(MANO_TO_OPENPOSE)] \
                @ OPENGL_TO_OPENCV

        obj_name = str(m.get("objName") or "")
        if not obj_name:
            raise self.error(f"{meta_path} has no objName")
        rot = self._array(m, "objRot", 3, meta_path)
        tra = self._array(m, "objTrans", 3, meta_path)
        model = next((p for p in (self.ycb_dir / obj_name / "textured_simple.obj",
                                  self.ycb_dir / "models" / obj_name / "textured_simple.obj")
                      if p.is_file()), None)
        if model is None:
            raise DatasetError(
                f"ho3d: missing YCB object model {self.ycb_dir / obj_name / 'textured_simple.obj'}"
                f" (pass ycb_dir / --dataset-option ycb_dir=DIR: the folder of the YCB-Video "
                f"models, <objName>/textured_simple.obj)")
        R = axis_angle_to_matrix(torch.as_tensor(rot)).numpy()
        obj = posed_mesh(load_object_mesh(model, what="YCB object model"),
                         OPENGL_TO_OPENCV @ R, OPENGL_TO_OPENCV @ tra)
        kp2 = np.asarray(camera.project(kp3), np.float64)
        return Sample(
            id=frame_id, dataset=self.name, image=image, camera=camera, hand_mesh=hand,
            object_mesh=obj, object_name=obj_name, is_right=True, keypoints_2d=kp2,
            keypoints_3d=kp3, image_path=image_path,
            metadata={"subset": subset, "sequence": seq, "frame": stem,
                      "meta_file": str(meta_path), "object_model": str(model),
                      "split_row": dict(row) if row else None})
