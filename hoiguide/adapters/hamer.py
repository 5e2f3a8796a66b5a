"""HaMeR hand mesh recovery (the reference's hand model).

HaMeR (not on PyPI) regresses MANO parameters
  and a weak-perspective camera for a square patch around the hand box. Native frame: a right
  MANO hand in a camera of focal ``EXTRA.FOCAL_LENGTH`` (5000) on the ``MODEL.IMAGE_SIZE``
  (256) patch, translation ``pred_cam = (s, tx, ty)``; left hands are run on the mirrored
  patch. :func:`hamer_to_hand_estimate` moves this into the given image camera (HaMeR's
  ``cam_crop_to_full`` with our camera's focal length and principal point instead of its
  ``5000 / 256 * max(H, W)`` guess) and un-mirrors left hands (``x -> -x``). HaMeR's rotation
  matrices are absolute (no mean pose is added), so the MANO layer that reproduces its mesh
  is ``ManoLayer(..., flat_hand_mean=True, fingertip_vertex_ids=MANO_TIP_IDS_SMPLX)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hoiguide.adapters._util import (
    WeightsNotFoundError,
    check_box,
    check_image,
    default_device,
    import_optional,
)
from hoiguide.adapters.crop import resample_box
from hoiguide.adapters.hand import HandEstimate, as_tensor
from hoiguide.hands import MANO_TIP_IDS_SMPLX, ManoLayer
from hoiguide.rotations import matrix_to_axis_angle
from hoiguide.types import Camera

__all__ = ["HaMeREstimator", "hamer_to_hand_estimate"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# HaMeR
# --------------------------------------------------------------------------------------


def _first(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to("cpu", torch.float64)


def hamer_to_hand_estimate(output: Mapping[str, Any], *, box_center: Sequence[float],
                           box_size: float, camera: Camera, side: str = "right",
                           mano: Any | None = None, faces: Any | None = None,
                           focal_length: float = 5000.0, image_size: int = 256
                           ) -> HandEstimate:
    """HaMeR's output for one hand -> :class:`HandEstimate` in ``camera``'s frame.

    Args:
        output: HaMeR's forward output (batch 1 or unbatched): ``pred_cam`` (3,) = ``(s, tx,
            ty)``; ``pred_mano_params`` {``global_orient`` (1, 3, 3), ``hand_pose`` (15, 3, 3),
            ``betas`` (10,)}; ``pred_vertices`` (778, 3); ``pred_keypoints_3d`` (21, 3);
            ``pred_keypoints_2d`` (21, 2) in patch units (``[-0.5, 0.5]``). For a left hand
            these describe the mirrored (right-hand) patch, as HaMeR returns them.
        box_center, box_size: the square patch in pixels of ``camera``'s image.
        camera: the image's camera (its focal length replaces HaMeR's
            ``5000 / 256 * max(H, W)``, its principal point the image centre).
        side: the hand's side.
        mano: optional MANO layer (right hand, ``flat_hand_mean=True``, smplx tip ids): the
            mesh is recomputed from the parameters (and gives the faces).
        faces: the faces when no ``mano`` is given.
        focal_length, image_size: HaMeR's ``EXTRA.FOCAL_LENGTH`` and ``MODEL.IMAGE_SIZE``.
    """

    if side not in ("right", "left"):
        raise ValueError(f"hamer_to_hand_estimate: expected side 'right' or 'left', got {side!r}")
    for key in ("pred_cam", "pred_mano_params"):
        if key not in output:
            raise ValueError(f"hamer_to_hand_estimate: expected HaMeR's output with "
                             f"'pred_cam' and 'pred_mano_params', got keys {sorted(output)}")
    cam = _first(output["pred_cam"]).reshape(-1)[:3]
    mp = output["pred_mano_params"]
    go_m = _first(mp["global_orient"]).reshape(-1, 3, 3)[:1]
    hp_m = _first(mp["hand_pose"]).reshape(-1, 3, 3)[-15:]
    betas = _first(mp["betas"]).reshape(-1)
    if go_m.shape != (1, 3, 3) or hp_m.shape != (15, 3, 3):
        raise ValueError(f"hamer_to_hand_estimate: expected global_orient (1, 3, 3) and "
                         f"hand_pose (15, 3, 3) rotation matrices, got {tuple(go_m.shape)} and "
                         f"{tuple(hp_m.shape)}")
    go = matrix_to_axis_angle(go_m).reshape(3)
    hp = matrix_to_axis_angle(hp_m).reshape(45)
    if mano is not None:
        nb = int(getattr(mano, "num_betas", 10))
        bb = torch.zeros(nb, dtype=torch.float64)
        bb[:min(nb, len(betas))] = betas[:nb]
        dev = mano.faces.device
        with torch.no_grad():
            out = mano(global_orient=go[None].to(dev), hand_pose=hp[None].to(dev),
                       betas=bb[None].to(dev))
        V = out.vertices[0].to("cpu", torch.float64)
        K3 = out.keypoints[0].to("cpu", torch.float64)
        F = out.faces.to("cpu")
        betas = bb
    else:
        if "pred_vertices" not in output or "pred_keypoints_3d" not in output or faces is None:
            raise ValueError("hamer_to_hand_estimate: without a MANO layer, expected "
                             "'pred_vertices', 'pred_keypoints_3d' and faces")
        V = _first(output["pred_vertices"]).reshape(-1, 3)
        K3 = _first(output["pred_keypoints_3d"]).reshape(-1, 3)[:21]
        F = as_tensor(faces, torch.long)
    s, tx, ty = (float(v) for v in cam)
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    if side == "left":                      # HaMeR saw the mirrored patch: undo
        tx = -tx
        V, K3 = V * mirror, K3 * mirror
        F = F[:, [0, 2, 1]]
    cx_b, cy_b = (float(v) for v in box_center)
    bs = float(box_size) * s + 1e-9
    tz = 2.0 * camera.fx / bs
    transl = torch.tensor([tx + (cx_b - camera.cx) * tz / camera.fx,
                           ty + (cy_b - camera.cy) * tz / camera.fy, tz], dtype=torch.float64)
    if not torch.isfinite(transl).all() or tz <= 0:
        raise ValueError(f"hamer_to_hand_estimate: invalid camera prediction pred_cam="
                         f"{cam.tolist()} (scale must be positive)")
    if "pred_keypoints_2d" in output:
        k2 = _first(output["pred_keypoints_2d"]).reshape(-1, 2)[:21].clone()
        if side == "left":
            k2[:, 0] = -k2[:, 0]
        kp2 = k2 * float(box_size) + torch.tensor([cx_b, cy_b], dtype=torch.float64)
    else:
        kp2 = camera.project(K3 + transl)
    params = {"global_orient": go.float(), "hand_pose": hp.float(), "betas": betas.float(),
              "transl": transl.float(), "mirrored": side == "left",
              "pred_cam": cam.float(), "box_center": (cx_b, cy_b), "box_size": float(box_size)}
    return HandEstimate(vertices=(V + transl).float(), faces=F, keypoints_3d=(K3 + transl).float(),
                        keypoints_2d=kp2.float(), keypoint_confidence=torch.ones(21),
                        side=side, model="mano", params=params, camera=camera)


def _expand_to_aspect(w: float, h: float, target: Sequence[float] | None) -> tuple[float, float]:
    """Grow ``(w, h)`` to the aspect ratio ``target = (w_t, h_t)`` (HaMeR's box rule)."""
    if target is None:
        return w, h
    wt, ht = float(target[0]), float(target[1])
    if h / w < ht / wt:
        return w, max(w * ht / wt, h)
    return max(h * wt / ht, w), h


class HaMeREstimator:
    """HaMeR hand mesh recovery for a given hand box.

    Args:
        model: the HaMeR network (``model({"img": (B, 3, S, S)})`` -> output dict).
        mano: MANO layer (right hand, ``flat_hand_mean=True``, smplx tips) giving faces and
            re-posing the mesh; or None with ``faces``.
        faces: mesh faces when ``mano`` is None.
        image_size, focal_length: HaMeR's ``MODEL.IMAGE_SIZE`` / ``EXTRA.FOCAL_LENGTH``.
        rescale_factor: the box is enlarged by this (HaMeR's demo: 2.0).
        bbox_shape: HaMeR's ``MODEL.BBOX_SHAPE`` ``(w, h)`` aspect of the patch (ViT: 192x256).
        mean, std: input normalisation (ImageNet's, in ``[0, 1]`` units).
        device: where the network runs.
    """

    native_frame = ("HaMeR: right MANO hand, camera of focal 5000 px on the 256 px patch "
                    "around the box, weak-perspective pred_cam (s, tx, ty); left hands run "
                    "on the mirrored patch")

    def __init__(self, model: Any, *, mano: Any | None = None, faces: Any | None = None,
                 image_size: int = 256, focal_length: float = 5000.0,
                 rescale_factor: float = 2.0,
                 bbox_shape: Sequence[float] | None = (192, 256),
                 mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225),
                 device: torch.device | str | None = None) -> None:
        if mano is None and faces is None:
            raise ValueError("HaMeREstimator: expected a MANO layer (mano=) or faces")
        self.device = default_device(device)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        self.mano = mano
        self.faces = faces
        self.image_size = int(image_size)
        self.focal_length = float(focal_length)
        self.rescale_factor = float(rescale_factor)
        self.bbox_shape = None if bbox_shape is None else tuple(float(x) for x in bbox_shape)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1)

    def __repr__(self) -> str:
        return (f"HaMeREstimator(image_size={self.image_size}, focal={self.focal_length:g}, "
                f"rescale={self.rescale_factor:g})")

    @classmethod
    def from_pretrained(cls, checkpoint_path: str | os.PathLike,
                        mano_path: str | os.PathLike, *, device: torch.device | str | None = None,
                        rescale_factor: float = 2.0) -> "HaMeREstimator":
        """Load HaMeR from its checkpoint and the user's MANO right-hand file.

        Args:
            checkpoint_path: ``.../hamer_ckpts/checkpoints/hamer.ckpt`` (its
                ``../../model_config.yaml`` must exist; both come with HaMeR's demo data,
                ``bash fetch_demo_data.sh`` in its repository).
            mano_path: ``MANO_RIGHT.pkl`` or the folder holding it (register at
                https://mano.is.tue.mpg.de; it may not be redistributed).

        Raises:
            WeightsNotFoundError: a file is missing (lists what was looked for).
            ImportError: HaMeR is not installed (not on PyPI; the message has the command).
        """

        ckpt = Path(checkpoint_path).expanduser()
        cfg_path = ckpt.parent.parent / "model_config.yaml"
        mano_file = Path(mano_path).expanduser()
        if mano_file.is_dir():
            mano_file = mano_file / "MANO_RIGHT.pkl"
        missing = [f"{p} ({what})" for p, what in (
            (ckpt, "HaMeR checkpoint"), (cfg_path, "HaMeR model_config.yaml, two folders above "
                                                  "the checkpoint"),
            (mano_file, "MANO right-hand model")) if not p.is_file()]
        if missing:
            raise WeightsNotFoundError(
                "HaMeREstimator: missing files:\n" + "\n".join(f"  - {m}" for m in missing) +
                "\nTo fix: get HaMeR's checkpoint with its `bash fetch_demo_data.sh` (it "
                "unpacks _DATA/hamer_ckpts/checkpoints/hamer.ckpt and model_config.yaml) and "
                "MANO_RIGHT.pkl from https://mano.is.tue.mpg.de (registration), then pass "
                "HaMeREstimator.from_pretrained('/path/hamer.ckpt', '/path/MANO_RIGHT.pkl').")
        hamer_models = import_optional("hamer.models", "HaMeREstimator", "hamer", "hamer")
        hamer_configs = import_optional("hamer.configs", "HaMeREstimator", "hamer", "hamer")
        cfg = hamer_configs.get_config(str(cfg_path), update_cachedir=True)
        cfg.defrost()
        cfg.MANO.MODEL_PATH = str(mano_file.parent)
        if cfg.MODEL.BACKBONE.TYPE == "vit" and "BBOX_SHAPE" not in cfg.MODEL:
            cfg.MODEL.BBOX_SHAPE = [192, 256]
        if "PRETRAINED_WEIGHTS" in cfg.MODEL.BACKBONE:
            cfg.MODEL.BACKBONE.pop("PRETRAINED_WEIGHTS")
        mean_params = Path(str(cfg.MANO.get("MEAN_PARAMS", "")))
        cfg.freeze()
        if mean_params.name and not mean_params.is_file():
            raise WeightsNotFoundError(
                f"HaMeREstimator: HaMeR's MANO mean parameters {mean_params} are missing (they "
                f"come with HaMeR's demo data, `bash fetch_demo_data.sh`; run from the folder "
                f"holding _DATA or fix MANO.MEAN_PARAMS in {cfg_path}).")
        model = hamer_models.HAMER.load_from_checkpoint(str(ckpt), strict=False, cfg=cfg)
        mano = ManoLayer(mano_file, side="right", flat_hand_mean=True,
                         fingertip_vertex_ids=MANO_TIP_IDS_SMPLX)
        return cls(model, mano=mano, image_size=int(cfg.MODEL.IMAGE_SIZE),
                   focal_length=float(cfg.EXTRA.FOCAL_LENGTH), rescale_factor=rescale_factor,
                   bbox_shape=cfg.MODEL.get("BBOX_SHAPE", None),
                   mean=tuple(cfg.MODEL.IMAGE_MEAN), std=tuple(cfg.MODEL.IMAGE_STD),
                   device=device)

    def patch_box(self, hand_box: Any) -> tuple[tuple[float, float], float]:
        """HaMeR's square patch for a hand box: ``(center (x, y), size)`` in pixels (the box
        enlarged by ``rescale_factor``, grown to ``bbox_shape``'s aspect, its longer side)."""
        x0, y0, x1, y1 = check_box(hand_box, "HaMeREstimator: hand_box")
        w, h = _expand_to_aspect(self.rescale_factor * (x1 - x0),
                                 self.rescale_factor * (y1 - y0), self.bbox_shape)
        return ((x0 + x1) / 2, (y0 + y1) / 2), max(w, h)

    def preprocess(self, image: np.ndarray, hand_box: Any, side: str = "right"
                   ) -> tuple[torch.Tensor, tuple[float, float], float]:
        """The network input: ``(1, 3, S, S)`` normalised RGB patch (mirrored for a left
        hand), its centre and size in pixels."""

        img = check_image(image, "HaMeREstimator")
        (cx, cy), size = self.patch_box(hand_box)
        box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        patch = resample_box(img, box, self.image_size, fill=0, mirror=(side == "left"))
        x = torch.from_numpy(patch).permute(2, 0, 1).float().div(255.0)
        x = (x - self.mean) / self.std
        return x[None], (cx, cy), size

    def __call__(self, image: np.ndarray, hand_box: Any, side: str = "right",
                 camera: Camera | None = None) -> HandEstimate:
        """Estimate the hand in ``hand_box``.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (the crop).
            hand_box: ``(x0, y0, x1, y1)`` pixels.
            side: ``"right"`` (the crop mirrors left hands already) or ``"left"``.
            camera: the image's camera; default HaMeR's own assumption (focal
                ``focal_length / image_size * max(H, W)``, principal point at the centre).
        """
        if side not in ("right", "left"):
            raise ValueError(f"HaMeREstimator: expected side 'right' or 'left', got {side!r}")
        x, center, size = self.preprocess(image, hand_box, side)
        H, W = np.asarray(image).shape[:2]
        if camera is None:
            f = self.focal_length / self.image_size * max(H, W)
            camera = Camera(f, f, W / 2, H / 2, W, H)
        elif (camera.width, camera.height) != (W, H):
            raise ValueError(f"HaMeREstimator: the camera is {camera.width}x{camera.height}, the "
                             f"image {W}x{H}")
        with torch.inference_mode():
            out = self.model({"img": x.to(self.device)})
        if not isinstance(out, Mapping):
            raise TypeError(f"HaMeREstimator: expected the model to return a dict, got "
                            f"{type(out).__name__}")
        return hamer_to_hand_estimate(out, box_center=center, box_size=size, camera=camera,
                                      side=side, mano=self.mano, faces=self.faces,
                                      focal_length=self.focal_length,
                                      image_size=self.image_size)
