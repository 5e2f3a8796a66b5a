"""DexYCB (Chao et al., CVPR 2021) in the layout of its release and of ``dex-ycb-toolkit``.

Files read (``ROOT`` is the dataset folder, the toolkit's ``DEX_YCB_DIR``)::

    ROOT/<subject>/<sequence>/meta.yml              serials, num_frames, ycb_ids,
                                                    ycb_grasp_ind, mano_sides, mano_calib
    ROOT/<subject>/<sequence>/<serial>/color_NNNNNN.jpg
    ROOT/<subject>/<sequence>/<serial>/labels_NNNNNN.npz
                                                    pose_y (objects, 3, 4) object poses,
                                                    pose_m (1, 51) MANO PCA pose + translation,
                                                    joint_3d (1, 21, 3), joint_2d (1, 21, 2)
    ROOT/calibration/intrinsics/<serial>_<W>x<H>.yml    color: fx, fy, ppx, ppy
    ROOT/calibration/mano_<mano_calib>/mano.yml         betas (10)
    ROOT/models/<ycb name>/textured_simple.obj          YCB object models (metres)

Ground truth, as the toolkit poses it: the grasped object is ``ycb_ids[ycb_grasp_ind]`` with
camera-frame pose ``pose_y[ycb_grasp_ind] = [R | t]`` (OpenCV camera frame, metres); the
hand is MANO of side ``mano_sides[0]`` with 45 PCA components, the mean pose added
(manopth's ``flat_hand_mean=False``), ``pose_m[0, :3]`` the global rotation, ``pose_m[0,
3:48]`` the PCA coefficients, ``pose_m[0, 48:51]`` the translation (metres) and the subject's
calibrated betas. Frames whose ``pose_m`` (or grasped object pose) is all zeros have no
annotation and are skipped by random selections.

Frame ids: ``<subject>__<sequence>__<serial>__<NNNNNN>``, e.g.
``20200709-subject-01__20200709_153148__840412060917__000060``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from hoiguide.datasets.base import (
    Dataset,
    DatasetError,
    Sample,
    camera_from_opencv,
    read_rgb,
)
from hoiguide.datasets.meshes import load_object_mesh, posed_mesh
from hoiguide.datasets.splits import path_tail
from hoiguide.io import load_yaml

__all__ = ["DexYCB", "YCB_CLASSES"]

log = logging.getLogger(__name__)

#: DexYCB object ids (``meta.yml`` ``ycb_ids``) -> YCB model folder names
YCB_CLASSES = {
    1: "002_master_chef_can", 2: "003_cracker_box", 3: "004_sugar_box",
    4: "005_tomato_soup_can", 5: "006_mustard_bottle", 6: "007_tuna_fish_can",
    7: "008_pudding_box", 8: "009_gelatin_box", 9: "010_potted_meat_can", 10: "011_banana",
    11: "019_pitcher_base", 12: "021_bleach_cleanser", 13: "024_bowl", 14: "025_mug",
    15: "035_power_drill", 16: "036_wood_block", 17: "037_scissors", 18: "040_large_marker",
    19: "051_large_clamp", 20: "052_extra_large_clamp", 21: "061_foam_brick",
}

_SKIP_DIRS = {"calibration", "models", "bop"}


class DexYCB(Dataset):
    """DexYCB frames with their MANO hand and grasped YCB object (see the module docstring
    for the files read and the frame ids)."""

    name = "dexycb"
    layout = ("ROOT/<subject>/<sequence>/{meta.yml,<serial>/color_NNNNNN.jpg,"
              "<serial>/labels_NNNNNN.npz}, ROOT/calibration/intrinsics/<serial>_<W>x<H>.yml, "
              "ROOT/calibration/mano_<calib>/mano.yml, ROOT/models/<ycb>/textured_simple.obj "
              "(DexYCB release / dex-ycb-toolkit)")

    def __init__(self, root: Any, *, mano_dir: Any = None) -> None:
        super().__init__(root, mano_dir=mano_dir)
        self.require(self.root / "calibration", "calibration folder")
        self._meta: dict[Path, dict] = {}
        self._betas: dict[str, np.ndarray] = {}
        self._intr: dict[Path, dict] = {}

    # files ---------------------------------------------------------------------------------
    def _yaml(self, path: Path, what: str) -> Any:

        self.require(path, what)
        try:
            return load_yaml(path)
        except ValueError as exc:
            raise self.error(f"{what} {path} is not valid YAML ({exc})") from None

    def meta(self, subject: str, sequence: str) -> dict:
        path = self.root / subject / sequence / "meta.yml"
        if path not in self._meta:
            m = self._yaml(path, "sequence meta file")
            need = ("num_frames", "ycb_ids", "ycb_grasp_ind", "mano_sides", "mano_calib")
            miss = [k for k in need if not isinstance(m, dict) or k not in m]
            if miss:
                raise self.error(f"{path} has no {', '.join(miss)}")
            self._meta[path] = m
        return self._meta[path]

    def _serials(self, subject: str, sequence: str) -> list[str]:
        m = self.meta(subject, sequence)
        if m.get("serials"):
            return [str(s) for s in m["serials"]]
        d = self.root / subject / sequence
        return sorted(p.name for p in d.iterdir() if p.is_dir())

    def betas(self, calib: str) -> np.ndarray:
        if calib not in self._betas:
            path = self.root / "calibration" / f"mano_{calib}" / "mano.yml"
            data = self._yaml(path, "MANO shape calibration")
            b = np.asarray((data or {}).get("betas", []), np.float64).reshape(-1)
            if b.size != 10:
                raise self.error(f"{path}: expected 10 betas, got {b.size}")
            self._betas[calib] = b
        return self._betas[calib]

    def intrinsics(self, serial: str, width: int, height: int) -> np.ndarray:
        d = self.root / "calibration" / "intrinsics"
        path = d / f"{serial}_{width}x{height}.yml"
        if not path.is_file():
            others = sorted(d.glob(f"{serial}_*.yml")) if d.is_dir() else []
            if len(others) != 1:
                raise self.error(f"missing camera intrinsics {path}")
            path = others[0]
        if path not in self._intr:
            data = self._yaml(path, "camera intrinsics")
            c = (data or {}).get("color") if isinstance(data, dict) else None
            if not isinstance(c, dict) or not all(k in c for k in ("fx", "fy", "ppx", "ppy")):
                raise self.error(f"{path}: expected a 'color' entry with fx, fy, ppx, ppy")
            self._intr[path] = c
        c = self._intr[path]
        return np.array([[c["fx"], 0, c["ppx"]], [0, c["fy"], c["ppy"]], [0, 0, 1]], float)

    # ids -----------------------------------------------------------------------------------
    @staticmethod
    def _split_id(frame_id: str) -> tuple[str, str, str, int]:
        parts = frame_id.split("__")
        if len(parts) != 4 or not parts[3].isdigit():
            raise DatasetError(f"dexycb: expected a frame id <subject>__<sequence>__<serial>__"
                               f"<NNNNNN>, got {frame_id!r}")
        return parts[0], parts[1], parts[2], int(parts[3])

    def frame_ids(self) -> list[str]:
        ids = []
        for subj in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if subj.name in _SKIP_DIRS:
                continue
            for seq in sorted(p for p in subj.iterdir() if (p / "meta.yml").is_file()):
                m = self.meta(subj.name, seq.name)
                for serial in self._serials(subj.name, seq.name):
                    ids += [f"{subj.name}__{seq.name}__{serial}__{f:06d}"
                            for f in range(int(m["num_frames"]))]
        return ids

    def id_from_path(self, img_path: str) -> str:
        parts = path_tail(img_path, 4)
        name = parts[-1] if parts else ""
        if len(parts) < 4 or not (name.startswith("color_") and name[6:-4].isdigit()):
            raise DatasetError(f"dexycb: cannot read a frame from the image path {img_path!r} "
                               f"(expected .../<subject>/<sequence>/<serial>/color_NNNNNN.jpg)")
        return f"{parts[0]}__{parts[1]}__{parts[2]}__{int(name[6:-4]):06d}"

    # ground truth ----------------------------------------------------------------------------
    def _files(self, frame_id: str) -> tuple[Path, Path]:
        subj, seq, serial, f = self._split_id(frame_id)
        d = self.root / subj / seq / serial
        return d / f"color_{f:06d}.jpg", d / f"labels_{f:06d}.npz"

    def _labels(self, path: Path) -> dict[str, np.ndarray]:
        self.require(path, "label file")
        try:
            with np.load(path, allow_pickle=False) as z:
                lab = {k: np.asarray(z[k]) for k in z.files if k != "seg"}
        except (OSError, ValueError) as exc:
            raise self.error(f"cannot read the label file {path} ({exc})") from None
        for k in ("pose_y", "pose_m"):
            if k not in lab:
                raise self.error(f"the label file {path} has no '{k}'")
        return lab

    def has_ground_truth(self, frame_id: str) -> bool:
        try:
            subj, seq, _, _ = self._split_id(frame_id)
            lab = self._labels(self._files(frame_id)[1])
            grasp = int(self.meta(subj, seq)["ycb_grasp_ind"])
            return bool(np.any(lab["pose_m"] != 0) and np.any(lab["pose_y"][grasp] != 0))
        except DatasetError:
            return False

    def get(self, frame_id: str, row: Optional[Mapping[str, str]] = None) -> Sample:
        subj, seq, serial, frame = self._split_id(frame_id)
        image_path, label_path = self._files(frame_id)
        meta = self.meta(subj, seq)
        lab = self._labels(label_path)
        self.require(image_path, "image")
        image = read_rgb(image_path)
        H, W = image.shape[:2]
        camera = camera_from_opencv(self.intrinsics(serial, W, H), W, H)

        pose_m = np.asarray(lab["pose_m"], np.float64).reshape(-1)
        if pose_m.size != 51:
            raise self.error(f"{label_path}: expected pose_m of 51 values, got {pose_m.size}")
        if not np.any(pose_m != 0):
            raise self.error(f"{label_path}: pose_m is all zeros (no hand annotation in this "
                             f"frame)")
        side = str(meta["mano_sides"][0]).lower()
        if side not in ("right", "left"):
            raise self.error(f"{image_path.parent.parent / 'meta.yml'}: mano_sides[0] must be "
                             f"right or left, got {side!r}")
        betas = self.betas(str(meta["mano_calib"][0]))
        hand, kp3 = self.pose_mano(side, global_orient=pose_m[:3], hand_pose=pose_m[3:48],
                                   betas=betas, transl=pose_m[48:51], use_pca=True,
                                   num_pca_comps=45, flat_hand_mean=False)

        ycb_ids = [int(i) for i in meta["ycb_ids"]]
        grasp = int(meta["ycb_grasp_ind"])
        pose_y = np.asarray(lab["pose_y"], np.float64)
        if pose_y.ndim != 3 or pose_y.shape[1:] != (3, 4) or not 0 <= grasp < len(pose_y) \
                or grasp >= len(ycb_ids):
            raise self.error(f"{label_path}: pose_y of shape {pose_y.shape} has no pose for "
                             f"the grasped object (ycb_grasp_ind {grasp})")
        if not np.any(pose_y[grasp] != 0):
            raise self.error(f"{label_path}: the grasped object's pose is all zeros (not "
                             f"annotated in this frame)")
        obj_name = YCB_CLASSES.get(ycb_ids[grasp])
        if obj_name is None:
            raise self.error(f"unknown YCB id {ycb_ids[grasp]} in {subj}/{seq}/meta.yml")
        model = self.root / "models" / obj_name / "textured_simple.obj"
        try:
            canon = load_object_mesh(model, what="YCB object model")
        except (FileNotFoundError, ValueError) as exc:
            raise self.error(str(exc)) from None
        obj = posed_mesh(canon, pose_y[grasp][:, :3], pose_y[grasp][:, 3])

        kp2 = None
        if "joint_3d" in lab:
            j3 = np.asarray(lab["joint_3d"], np.float64).reshape(-1, 3)
            if j3.shape == (21, 3) and not np.all(j3 == -1):
                kp3 = j3
        if "joint_2d" in lab:
            j2 = np.asarray(lab["joint_2d"], np.float64).reshape(-1, 2)
            if j2.shape == (21, 2) and not np.all(j2 == -1):
                kp2 = j2 + 0.5
        return Sample(
            id=frame_id, dataset=self.name, image=image, camera=camera, hand_mesh=hand,
            object_mesh=obj, object_name=obj_name, is_right=side == "right",
            keypoints_2d=kp2, keypoints_3d=kp3, image_path=image_path,
            metadata={"subject": subj, "sequence": seq, "serial": serial, "frame": frame,
                      "label_file": str(label_path), "object_model": str(model),
                      "split_row": dict(row) if row else None})
