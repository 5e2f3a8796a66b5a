"""ARCTIC (Fan et al., CVPR 2023) in the layout of its release (``arctic_data/data``).

Files read (``ROOT`` is ``arctic_data/data``; a folder holding ``arctic_data/data`` or
``data/arctic_data/data`` is accepted too)::

    ROOT/raw_seqs/<sid>/<seq>.mano.npy         per frame, both hands in the world frame:
                                               {right, left}: rot (F, 3), pose (F, 45),
                                               trans (F, 3), shape (10,)
    ROOT/raw_seqs/<sid>/<seq>.object.npy       (F, 7): articulation (radians), rotation
                                               (axis-angle), translation (mm), world frame
    ROOT/raw_seqs/<sid>/<seq>.egocam.dist.npy  egocentric camera (view 0): R_k_cam_np (F, 3, 3),
                                               T_k_cam_np (F, 3, 1), intrinsics (3, 3), dist8
    ROOT/meta/misc.json                        per subject: world2cam (8, 4, 4) and intris_mat
                                               (8, 3, 3) of the allocentric views 1..8,
                                               ioi_offset, image_size (9 x [w, h])
    ROOT/meta/object_vtemplates/<object>/mesh.obj, parts.json
                                               object template (mm) and per-vertex part
    ROOT/cropped_images/<sid>/<seq>/<view>/NNNNN.jpg   or  ROOT/images/<sid>/<seq>/<view>/...
    ROOT/processed_seqs/<sid>/<seq>.npy        (optional) the toolkit's processed sequence:
                                               its ``bbox`` gives the exact crop box

The ``.npy`` files holding dicts are pickles inside ``.npy``; they are read with the
numpy-only unpickler (:func:`hoiguide.datasets.base.read_npy`), never with
``allow_pickle=True``.

Ground truth, as the toolkit builds it: frame ``t = NNNNN - ioi_offset``; MANO
(smplx-style, axis-angle pose relative to the mean pose, ``flat_hand_mean=False``) posed
in the world frame for each hand; the object template in metres (mm / 1000), the vertices
whose ``parts.json`` entry is 0 rotated by the articulation angle about the template's -z
axis (what ARCTIC's ``object_tensors.py`` does), then rotated and translated (mm / 1000) into
the world frame; both mapped into the camera by ``world2cam`` (views 1..8) or the
egocentric pose of frame ``t`` (view 0).

Images: ``images`` holds the full-resolution frames; ``cropped_images`` holds the
toolkit's crops: allocentric views cropped around the object (a square of side
``1.5 * 200 * bbox_scale`` centred on the bounding box of the projected object, the box
rounded to whole pixels and padded with black outside the frame) and resized to
1000 x 1000; the egocentric view resized by 0.3. The crop box is read from
``processed_seqs`` when present, else recomputed from the posed object with the toolkit's
rule (identical up to float32 round-off). The egocentric view is distorted (OpenCV's
rational model, ``dist8``); the loader undistorts the image so the sample's camera is a
pinhole with the view's intrinsics.

Hands: ARCTIC has both hands; ``hand="auto"`` (default) evaluates the one closer to the
object, ``"right"`` / ``"left"`` force one.

Frame ids: ``<sid>__<seq>__<view>__<NNNNN>``, e.g. ``s01__box_grab_01__2__00082``.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from hoiguide.datasets.base import (
    Dataset,
    DatasetError,
    Sample,
    camera_from_opencv,
    read_npy,
    read_rgb,
)
from hoiguide.datasets.meshes import load_object_mesh
from hoiguide.datasets.splits import path_tail
from hoiguide.hands import MANO_TIP_IDS_SMPLX
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.types import Camera, Mesh

__all__ = ["ARCTIC", "crop_box", "undistort_image", "articulate"]

log = logging.getLogger(__name__)

EGO_IMAGE_SCALE = 0.3        # the toolkit's egocentric crop: a resize by 0.3
CROP_SIZE = 1000             # allocentric crops are resized to 1000 x 1000
BBOX_LOOSE = 1.5             # crop side = 1.5 x the object box
MIN_BBOX_SCALE = 3.0         # at least 600 px before loosening


def articulate(vertices: np.ndarray, parts: np.ndarray, angle: float) -> np.ndarray:
    """ARCTIC's articulation: vertices whose part label is 0 are rotated by ``angle``
    radians about the template's -z axis; the others stay (template frame, any unit)."""
    c, s = math.cos(-angle), math.sin(-angle)
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    out = np.array(vertices, np.float64, copy=True)
    moving = np.asarray(parts).reshape(-1) == 0
    out[moving] = out[moving] @ Rz.T
    return out


def object_bbox(points_2d: np.ndarray) -> tuple[float, float, float]:
    """The toolkit's square box around projected object vertices (OpenCV pixels):
    ``(cx, cy, scale)`` with side ``200 * scale`` = 1.1 x the larger side of their bounding
    box + 0.6 x that side, at least 600 px (allocentric views)."""
    p = np.asarray(points_2d, np.float64)
    lo, hi = p.min(0), p.max(0)
    w, h = hi - lo
    c = lo + 0.5 * np.array([w, h])
    side = max(w, h)
    dim = side * 1.1 + side * 0.6
    return float(c[0]), float(c[1]), max(dim / 200.0, MIN_BBOX_SCALE)


def crop_box(bbox: Sequence[float]) -> tuple[int, int, int, int]:
    """The pixel box of the toolkit's allocentric crop for ``bbox = (cx, cy, scale)``:
    side ``1.5 * 200 * scale`` centred at ``(cx, cy)``, each coordinate rounded as
    ``PIL.Image.crop`` rounds it. Returns ``(x0, y0, x1, y1)``."""
    cx, cy, scale = (float(b) for b in bbox)
    dim = scale * BBOX_LOOSE * 200.0
    return tuple(int(round(v)) for v in (cx - dim / 2, cy - dim / 2, cx + dim / 2,
                                         cy + dim / 2))


def distort_normalized(x: np.ndarray, y: np.ndarray, d: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's rational + tangential distortion of normalised image coordinates with
    ``d = (k1, k2, p1, p2, k3, k4, k5, k6)`` (the model of ARCTIC's egocentric camera)."""
    r2 = x * x + y * y
    radial = (1 + d[0] * r2 + d[1] * r2 ** 2 + d[4] * r2 ** 3) / \
        (1 + d[5] * r2 + d[6] * r2 ** 2 + d[7] * r2 ** 3)
    xd = x * radial + 2 * d[2] * x * y + d[3] * (r2 + 2 * x * x)
    yd = y * radial + 2 * d[3] * x * y + d[2] * (r2 + 2 * y * y)
    return xd, yd


def undistort_image(image: np.ndarray, camera: Camera, dist: Sequence[float]) -> np.ndarray:
    """The pinhole image of ``camera`` seen through a lens with distortion ``dist`` (8
    OpenCV rational-model coefficients): every output pixel centre is mapped through the
    distortion and sampled bilinearly from ``image`` (black outside). Same size and
    intrinsics as ``image``."""
    from scipy.ndimage import map_coordinates

    d = np.zeros(8)
    d[:len(dist)] = np.asarray(dist, np.float64).reshape(-1)[:8]
    H, W = image.shape[:2]
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    xd, yd = distort_normalized((u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, d)
    col = xd * camera.fx + camera.cx - 0.5
    row = yd * camera.fy + camera.cy - 0.5
    out = np.stack([map_coordinates(image[..., c].astype(np.float64), [row, col], order=1,
                                    mode="constant", cval=0.0) for c in range(3)], -1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


class ARCTIC(Dataset):
    """ARCTIC frames with one MANO hand and the articulated object (see the module
    docstring).

    Args:
        root, mano_dir: see :class:`hoiguide.datasets.base.Dataset`.
        images: ``"cropped"`` (``cropped_images``), ``"full"`` (``images``) or ``"auto"``
            (the folder a split file names; else ``cropped_images`` when present).
        hand: ``"auto"``, ``"right"`` or ``"left"``.
        views: the views (0 = egocentric, 1..8 allocentric) a split-less selection draws
            from.
    """

    name = "arctic"
    layout = ("ROOT=arctic_data/data with raw_seqs/<sid>/<seq>.{mano,object,egocam.dist}.npy, "
              "meta/misc.json, meta/object_vtemplates/<object>/{mesh.obj,parts.json}, "
              "cropped_images|images/<sid>/<seq>/<view>/NNNNN.jpg (ARCTIC release)")

    def __init__(self, root: Any, *, mano_dir: Any = None, images: str = "auto",
                 hand: str = "auto", views: Sequence[int] = tuple(range(9))) -> None:
        base = Path(root).expanduser()
        for cand in (base, base / "arctic_data" / "data", base / "data" / "arctic_data" / "data"):
            if (cand / "raw_seqs").is_dir() or (cand / "meta" / "misc.json").is_file():
                base = cand
                break
        super().__init__(base, mano_dir=mano_dir)
        if images not in ("auto", "cropped", "full"):
            raise DatasetError(f"arctic: images must be auto, cropped or full, got {images!r}")
        if hand not in ("auto", "right", "left"):
            raise DatasetError(f"arctic: hand must be auto, right or left, got {hand!r}")
        self.images, self.hand = images, hand
        self.views = tuple(int(v) for v in views)
        if not self.views or any(not 0 <= v <= 8 for v in self.views):
            raise DatasetError(f"arctic: views must be in 0..8, got {views!r}")
        self.require(self.root / "raw_seqs", "ground-truth folder")
        self.require(self.root / "meta" / "misc.json", "camera file")
        self._misc: Optional[dict] = None
        self._cache: dict[tuple, Any] = {}
        self._kind: dict[str, str] = {}

    # files ---------------------------------------------------------------------------------
    def misc(self, sid: str) -> dict:
        if self._misc is None:
            path = self.root / "meta" / "misc.json"
            try:
                self._misc = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise self.error(f"cannot read {path} ({exc})") from None
        m = self._misc.get(sid)
        need = ("world2cam", "intris_mat", "ioi_offset", "image_size")
        if not isinstance(m, dict) or any(k not in m for k in need):
            raise self.error(f"{self.root / 'meta' / 'misc.json'} has no {need} for subject "
                             f"{sid}")
        return m

    def _cached(self, key: tuple, load: Any) -> Any:
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = load()
        return self._cache[key]

    def _npy(self, path: Path, what: str) -> Any:
        self.require(path, what)
        try:
            return self._cached(("npy", path), lambda: read_npy(path))
        except (pickle.UnpicklingError, ValueError) as exc:
            raise self.error(str(exc).splitlines()[0]) from None

    def object_params(self, sid: str, seq: str) -> np.ndarray:
        path = self.root / "raw_seqs" / sid / f"{seq}.object.npy"
        a = np.asarray(self._npy(path, "object pose file"), np.float64)
        if a.ndim != 2 or a.shape[1] != 7:
            raise self.error(f"{path}: expected (frames, 7), got {a.shape}")
        return a

    def template(self, obj: str) -> tuple[Mesh, np.ndarray]:
        d = self.root / "meta" / "object_vtemplates" / obj
        mesh = load_object_mesh(self.require(d / "mesh.obj", "object template"), scale=0.001,
                                what="object template")
        path = self.require(d / "parts.json", "object parts file")
        parts = self._cached(("parts", path), lambda: np.asarray(json.loads(path.read_text())))
        if parts.reshape(-1).shape[0] != mesh.num_vertices:
            raise self.error(f"{path}: {parts.size} part labels for {mesh.num_vertices} "
                             f"template vertices")
        return mesh, parts.reshape(-1).astype(np.int64)

    # ids ---------------------------------------------------------------------------------
    @staticmethod
    def _split_id(frame_id: str) -> tuple[str, str, int, int]:
        parts = frame_id.split("__")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            raise DatasetError(f"arctic: expected a frame id <sid>__<seq>__<view>__<NNNNN>, "
                               f"got {frame_id!r}")
        return parts[0], parts[1], int(parts[2]), int(parts[3])

    def frame_ids(self) -> list[str]:
        ids = []
        for sd in sorted(p for p in (self.root / "raw_seqs").iterdir() if p.is_dir()):
            try:
                off = int(self.misc(sd.name)["ioi_offset"])
            except DatasetError:
                log.warning("arctic: no cameras for subject %s in meta/misc.json; skipped",
                            sd.name)
                continue
            for f in sorted(sd.glob("*.object.npy")):
                seq = f.name[:-len(".object.npy")]
                n = np.load(f, mmap_mode="r", allow_pickle=False).shape[0]
                ids += [f"{sd.name}__{seq}__{v}__{t + off:05d}"
                        for v in self.views for t in range(n)]
        return ids

    def id_from_path(self, img_path: str) -> str:
        parts = path_tail(img_path, 5)
        stem = Path(parts[-1]).stem if parts else ""
        if len(parts) < 4 or not parts[-2].isdigit() or not stem.isdigit():
            raise DatasetError(f"arctic: cannot read a frame from the image path {img_path!r} "
                               f"(expected .../cropped_images|images/<sid>/<seq>/<view>/"
                               f"NNNNN.jpg)")
        fid = f"{parts[-4]}__{parts[-3]}__{int(parts[-2])}__{int(stem):05d}"
        if len(parts) == 5 and parts[0] in ("cropped_images", "images"):
            self._kind[fid] = "cropped" if parts[0] == "cropped_images" else "full"
        return fid

    def _image_path(self, frame_id: str) -> tuple[Path, str]:
        sid, seq, view, num = self._split_id(frame_id)
        kind = self.images if self.images != "auto" else self._kind.get(frame_id)
        rel = Path(sid) / seq / str(view) / f"{num:05d}.jpg"
        if kind is None:
            crop = self.root / "cropped_images" / rel
            kind = "cropped" if crop.is_file() or not (self.root / "images" / rel).is_file() \
                else "full"
        folder = "cropped_images" if kind == "cropped" else "images"
        return self.root / folder / rel, kind

    def has_ground_truth(self, frame_id: str) -> bool:
        try:
            sid, seq, view, num = self._split_id(frame_id)
            t = num - int(self.misc(sid)["ioi_offset"])
            n = self.object_params(sid, seq).shape[0]
            return 0 <= t < n and self._image_path(frame_id)[0].is_file()
        except DatasetError:
            return False

    # ground truth --------------------------------------------------------------------------
    def _hand_world(self, mano: dict, side: str, t: int, path: Path) -> tuple[Mesh, np.ndarray]:

        h = mano.get(side) if isinstance(mano, dict) else None
        if not isinstance(h, dict) or any(k not in h for k in ("rot", "pose", "trans", "shape")):
            raise self.error(f"{path}: expected {side}: {{rot, pose, trans, shape}}")
        try:
            rot, pose = np.asarray(h["rot"])[t], np.asarray(h["pose"])[t]
            trans = np.asarray(h["trans"])[t]
        except IndexError:
            raise self.error(f"{path}: no {side}-hand parameters for frame {t}") from None
        shape = np.asarray(h["shape"], np.float64)
        shape = shape[t] if shape.ndim == 2 else shape
        return self.pose_mano(side, global_orient=rot, hand_pose=pose, betas=shape,
                              transl=trans, flat_hand_mean=False,
                              fingertip_vertex_ids=MANO_TIP_IDS_SMPLX)

    def get(self, frame_id: str, row: Optional[Mapping[str, str]] = None) -> Sample:
        from scipy.spatial import cKDTree


        sid, seq, view, num = self._split_id(frame_id)
        if not 0 <= view <= 8:
            raise self.error(f"frame {frame_id}: view must be 0..8")
        misc = self.misc(sid)
        t = num - int(misc["ioi_offset"])
        params = self.object_params(sid, seq)
        if not 0 <= t < len(params):
            raise self.error(f"frame {frame_id}: image {num} is ground-truth frame {t} "
                             f"(ioi_offset {misc['ioi_offset']}), outside 0..{len(params) - 1}")
        mano_path = self.root / "raw_seqs" / sid / f"{seq}.mano.npy"
        mano = self._npy(mano_path, "MANO parameter file")

        # the object in the world frame
        obj_name = seq.split("_")[0]
        tmpl, parts = self.template(obj_name)
        arti, rot, trans = params[t, 0], params[t, 1:4], params[t, 4:7] / 1000.0
        R = axis_angle_to_matrix(torch.as_tensor(rot)).numpy()
        v_world = articulate(tmpl.vertices.numpy(), parts, float(arti)) @ R.T + trans

        # the hand(s) in the world frame
        hands = {}
        for side in (("right", "left") if self.hand == "auto" else (self.hand,)):
            hands[side] = self._hand_world(mano, side, t, mano_path)
        if len(hands) > 1:
            tree = cKDTree(v_world)
            gaps = {s: float(tree.query(m.vertices.numpy())[0].min()) for s, (m, _) in
                    hands.items()}
            side = min(gaps, key=gaps.get)
        else:
            gaps, side = {}, next(iter(hands))
        hand_w, kp_w = hands[side]

        # world -> camera, and the camera of the image
        image_path, kind = self._image_path(frame_id)
        self.require(image_path, "image")
        image = read_rgb(image_path)
        h, w = image.shape[:2]
        sizes = np.asarray(misc["image_size"], np.float64).reshape(-1, 2)
        if view == 0:
            ego = self._npy(self.root / "raw_seqs" / sid / f"{seq}.egocam.dist.npy",
                            "egocentric camera file")
            try:
                Rc = np.asarray(ego["R_k_cam_np"], np.float64)[t].reshape(3, 3)
                Tc = np.asarray(ego["T_k_cam_np"], np.float64)[t].reshape(3)
                K = np.asarray(ego["intrinsics"], np.float64).reshape(3, 3)
                dist = np.asarray(ego["dist8"], np.float64).reshape(-1)
            except (KeyError, IndexError, TypeError, ValueError):
                raise self.error(f"{self.root / 'raw_seqs' / sid}/{seq}.egocam.dist.npy: "
                                 f"expected R_k_cam_np, T_k_cam_np, intrinsics, dist8 for "
                                 f"frame {t}") from None
            W0, H0 = (int(x) for x in sizes[0])
            camera = camera_from_opencv(K, W0, H0)
            if (w, h) != (W0, H0):
                camera = camera.resized(w, h)
            image = undistort_image(image, camera, dist)
        else:
            M = np.asarray(misc["world2cam"], np.float64).reshape(-1, 4, 4)[view - 1]
            Rc, Tc = M[:3, :3], M[:3, 3]
            K = np.asarray(misc["intris_mat"], np.float64).reshape(-1, 3, 3)[view - 1]
            W0, H0 = (int(x) for x in sizes[view])
            camera = camera_from_opencv(K, W0, H0)
        v_obj = v_world @ Rc.T + Tc
        if view != 0 and kind == "cropped":
            bbox = self._processed_bbox(sid, seq, t, view)
            if bbox is None:
                uv = v_obj[:, :2] / v_obj[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
                bbox = object_bbox(uv)
            x0, y0, x1, y1 = crop_box(bbox)
            camera = camera.cropped(x0, y0, x1 - x0, y1 - y0, w, h)
        elif (w, h) != (camera.width, camera.height):
            raise self.error(f"{image_path}: the image is {w}x{h}, meta/misc.json says "
                             f"{camera.width}x{camera.height}")
        obj = Mesh(torch.as_tensor(v_obj), tmpl.faces)
        hand = Mesh(torch.as_tensor(hand_w.vertices.double().numpy() @ Rc.T + Tc),
                    hand_w.faces)
        kp3 = kp_w @ Rc.T + Tc
        kp2 = np.asarray(camera.project(kp3), np.float64)
        return Sample(
            id=frame_id, dataset=self.name, image=image, camera=camera, hand_mesh=hand,
            object_mesh=obj, object_name=obj_name, is_right=side == "right",
            keypoints_2d=kp2, keypoints_3d=kp3, image_path=image_path,
            metadata={"subject": sid, "sequence": seq, "view": view, "image_number": num,
                      "frame": t, "images": kind, "hand": side,
                      "hand_object_gap_m": gaps or None,
                      "undistorted": view == 0,
                      "split_row": dict(row) if row else None})

    def _processed_bbox(self, sid: str, seq: str, t: int, view: int
                        ) -> Optional[tuple[float, float, float]]:
        path = self.root / "processed_seqs" / sid / f"{seq}.npy"
        if not path.is_file():
            return None
        data = self._npy(path, "processed sequence")
        try:
            b = np.asarray(data["bbox"], np.float64)[t, view]
        except (KeyError, IndexError, TypeError):
            log.warning("arctic: %s has no bbox for frame %d view %d; recomputing it", path,
                        t, view)
            return None
        return float(b[0]), float(b[1]), float(b[2])
