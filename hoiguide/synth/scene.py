"""A synthetic hand-object scene with its ground truth, and its on-disk format.

A :class:`Scene` is everything a renderer knows about one picture: the RGB image, the
visible and amodal masks of the hand and of the object, the depth and normal maps, the
ground-truth hand and object meshes and the hand keypoints. Every 3D quantity is in the
OpenCV camera frame of ``camera`` (+x right, +y down, +z forward), in metres; every 2D
quantity is in pixels of ``camera`` (pixel centres at +0.5).

On disk a scene is one folder (format ``hoiguide-synth-scene``, version
:data:`SCENE_VERSION`)::

    scene.json              camera, keypoints, hand parameters, provenance, file list
    image.png               RGB, uint8
    mask_hand.png           visible hand (0/255)
    mask_object.png         visible object
    mask_hand_amodal.png    the whole hand, as if the object were absent
    mask_object_amodal.png  the whole object, as if the hand were absent
    depth.npy               float32 (H, W) z in metres, 0 where empty
    normals.npy             float32 (H, W, 3) unit camera-frame normals, 0 where empty
    hand.ply, object.ply    ground-truth meshes, camera frame, metres

A set of scenes is a folder with one sub-folder per scene and ``manifest.json``
(:func:`write_manifest`, :func:`read_manifest`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hoiguide.types import Camera, Mesh

log = logging.getLogger(__name__)

SCENE_FORMAT = "hoiguide-synth-scene"
SCENE_VERSION = 1
MANIFEST_FORMAT = "hoiguide-synth"
MANIFEST_VERSION = 1

_MASKS = ("mask_hand", "mask_object", "mask_hand_amodal", "mask_object_amodal")


_REQUIRED_KEYS = ("scene_id", "camera", "files", "hand_keypoints_3d", "keypoints_2d")
_FILE_KEYS = ("image", "depth", "normals", "hand_mesh", "object_mesh")


class SceneFormatError(ValueError):
    """A scene folder or manifest is missing, malformed or of an unknown version."""


def _as_numpy(x: Any, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class Scene:
    """One synthetic hand-object picture with ground truth (see the module docstring).

    Attributes:
        scene_id: unique name (also the folder name).
        camera: intrinsics in pixels; ``H x W = camera.height x camera.width``.
        image: ``(H, W, 3)`` uint8 RGB photo-like render.
        mask_hand, mask_object: ``(H, W)`` bool visible masks.
        mask_hand_amodal, mask_object_amodal: ``(H, W)`` bool full extents.
        depth: ``(H, W)`` float32 z of the visible surface, metres, 0 where empty.
        normals: ``(H, W, 3)`` float32 unit normals (camera frame), 0 where empty.
        hand_mesh, object_mesh: ground truth, camera frame, metres.
        hand_keypoints_3d: ``(21, 3)`` float32, camera frame, OpenPose order.
        keypoints_2d: ``(21, 2)`` float32 projections in pixels.
        hand_params: the hand model's parameters in the camera frame (``side``,
            ``global_orient``, ``hand_pose``, ``betas``, ``transl`` as lists).
        object_source: where the object came from, e.g. ``"pybullet:012"``.
        metadata: provenance (seed, grasp type, camera style, lighting, materials, contact
            statistics, ...), JSON-serialisable.
    """

    scene_id: str
    camera: Camera
    image: np.ndarray
    mask_hand: np.ndarray
    mask_object: np.ndarray
    mask_hand_amodal: np.ndarray
    mask_object_amodal: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    hand_mesh: Mesh
    object_mesh: Mesh
    hand_keypoints_3d: np.ndarray
    keypoints_2d: np.ndarray
    hand_params: dict[str, Any] = field(default_factory=dict)
    object_source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        H, W = self.camera.height, self.camera.width
        self.image = _as_numpy(self.image, np.uint8)
        if self.image.shape != (H, W, 3):
            raise SceneFormatError(f"Scene.image: expected ({H}, {W}, 3) uint8, got "
                                   f"{self.image.shape}")
        for k in _MASKS:
            m = _as_numpy(getattr(self, k), bool)
            if m.shape != (H, W):
                raise SceneFormatError(f"Scene.{k}: expected ({H}, {W}), got {m.shape}")
            setattr(self, k, m)
        self.depth = _as_numpy(self.depth, np.float32)
        self.normals = _as_numpy(self.normals, np.float32)
        if self.depth.shape != (H, W):
            raise SceneFormatError(f"Scene.depth: expected ({H}, {W}), got {self.depth.shape}")
        if self.normals.shape != (H, W, 3):
            raise SceneFormatError(f"Scene.normals: expected ({H}, {W}, 3), got "
                                   f"{self.normals.shape}")
        self.hand_keypoints_3d = _as_numpy(self.hand_keypoints_3d, np.float32)
        self.keypoints_2d = _as_numpy(self.keypoints_2d, np.float32)
        if self.hand_keypoints_3d.shape != (21, 3):
            raise SceneFormatError(f"Scene.hand_keypoints_3d: expected (21, 3), got "
                                   f"{self.hand_keypoints_3d.shape}")
        if self.keypoints_2d.shape != (21, 2):
            raise SceneFormatError(f"Scene.keypoints_2d: expected (21, 2), got "
                                   f"{self.keypoints_2d.shape}")
        for k in ("hand_mesh", "object_mesh"):
            if not isinstance(getattr(self, k), Mesh):
                raise SceneFormatError(f"Scene.{k}: expected Mesh, got "
                                       f"{type(getattr(self, k)).__name__}")

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return self.camera.height, self.camera.width

    # ------------------------------------------------------------------ disk
    def save(self, directory: str | Path) -> Path:
        """Write the scene to ``directory`` (created). Returns the folder."""
        from PIL import Image

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.image).save(d / "image.png")
        for k in _MASKS:
            Image.fromarray((getattr(self, k).astype(np.uint8) * 255)).save(d / f"{k}.png")
        np.save(d / "depth.npy", self.depth)
        np.save(d / "normals.npy", self.normals)
        self.hand_mesh.export(d / "hand.ply")
        self.object_mesh.export(d / "object.ply")
        info = {
            "format": SCENE_FORMAT,
            "version": SCENE_VERSION,
            "scene_id": self.scene_id,
            "camera": self.camera.to_dict(),
            "hand_keypoints_3d": self.hand_keypoints_3d.tolist(),
            "keypoints_2d": self.keypoints_2d.tolist(),
            "hand_params": self.hand_params,
            "object_source": self.object_source,
            "metadata": self.metadata,
            "files": {"image": "image.png", **{k: f"{k}.png" for k in _MASKS},
                      "depth": "depth.npy", "normals": "normals.npy",
                      "hand_mesh": "hand.ply", "object_mesh": "object.ply"},
        }
        (d / "scene.json").write_text(json.dumps(info, indent=1))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Scene":
        """Read a scene folder written by :meth:`save`.

        Raises:
            SceneFormatError: missing files, an unknown format or a newer version.
        """
        from PIL import Image

        d = Path(directory)
        meta_path = d / "scene.json"
        if not meta_path.is_file():
            raise SceneFormatError(f"{d}: not a scene folder (no scene.json)")
        try:
            info = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise SceneFormatError(f"{meta_path}: invalid JSON ({e})") from None
        if info.get("format") != SCENE_FORMAT:
            raise SceneFormatError(f"{meta_path}: format {info.get('format')!r}, expected "
                                   f"{SCENE_FORMAT!r}")
        if int(info.get("version", 0)) > SCENE_VERSION:
            raise SceneFormatError(f"{meta_path}: version {info.get('version')} is newer than "
                                   f"this hoiguide reads ({SCENE_VERSION}); upgrade hoiguide")
        missing = [k for k in _REQUIRED_KEYS if k not in info]
        missing += [f"files.{k}" for k in _FILE_KEYS if k not in (info.get("files") or {})]
        if missing:
            raise SceneFormatError(f"{meta_path}: missing {', '.join(missing)} (re-make the "
                                   f"scene with 'hoiguide synth')")
        files = info["files"]

        def path(key: str) -> Path:
            p = d / files[key]
            if not p.is_file():
                raise SceneFormatError(f"{d}: missing {files[key]}")
            return p

        try:
            masks = {k: np.asarray(Image.open(path(k))) > 127 for k in _MASKS}
            hand = Mesh.load(path("hand_mesh"))
            obj = Mesh.load(path("object_mesh"))
            return cls(
                scene_id=str(info["scene_id"]),
                camera=Camera.from_dict(info["camera"]),
                image=np.asarray(Image.open(path("image")).convert("RGB")),
                depth=np.load(path("depth"), allow_pickle=False),
                normals=np.load(path("normals"), allow_pickle=False),
                hand_mesh=hand, object_mesh=obj,
                hand_keypoints_3d=np.asarray(info["hand_keypoints_3d"], np.float32),
                keypoints_2d=np.asarray(info["keypoints_2d"], np.float32),
                hand_params=dict(info.get("hand_params", {})),
                object_source=str(info.get("object_source", "")),
                metadata=dict(info.get("metadata", {})),
                **masks)
        except SceneFormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SceneFormatError(f"{d}: cannot read the scene ({type(exc).__name__}: "
                                   f"{exc})") from None


# ---------------------------------------------------------------------- manifest
def write_manifest(directory: str | Path, scenes: list[dict[str, Any]],
                   failed: list[dict[str, Any]] | None = None, **info: Any) -> Path:
    """Write ``directory/manifest.json`` listing the scene sub-folders.

    Args:
        directory: the scene-set folder.
        scenes: one entry per written scene, each with at least ``id`` and ``path``
            (relative to ``directory``).
        failed: scenes that could not be made, each with ``id`` and ``reason``.
        **info: provenance stored at the top level (seed, object spec, command, ...).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        if "id" not in s or "path" not in s:
            raise ValueError(f"manifest entry needs 'id' and 'path', got {sorted(s)}")
    doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info,
           "num_scenes": len(scenes), "scenes": scenes, "failed": list(failed or [])}
    p = d / "manifest.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
    tmp.replace(p)
    return p


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read ``directory/manifest.json``.

    Raises:
        SceneFormatError: no manifest, wrong format or a newer version.
    """
    p = Path(directory) / "manifest.json"
    if not p.is_file():
        raise SceneFormatError(f"{directory}: no manifest.json (make scenes with "
                               "`hoiguide synth --out DIR`)")
    doc = json.loads(p.read_text())
    if doc.get("format") != MANIFEST_FORMAT:
        raise SceneFormatError(f"{p}: format {doc.get('format')!r}, expected "
                               f"{MANIFEST_FORMAT!r}")
    if int(doc.get("version", 0)) > MANIFEST_VERSION:
        raise SceneFormatError(f"{p}: version {doc.get('version')} is newer than this "
                               f"hoiguide reads ({MANIFEST_VERSION})")
    return doc


def list_scenes(directory: str | Path) -> list[Path]:
    """Scene folders of a scene set, in manifest order (or sorted sub-folders holding a
    ``scene.json`` when there is no manifest)."""
    d = Path(directory)
    if (d / "manifest.json").is_file():
        return [d / s["path"] for s in read_manifest(d)["scenes"]]
    if (d / "scene.json").is_file():
        return [d]
    found = sorted(p.parent for p in d.glob("*/scene.json"))
    if not found:
        raise SceneFormatError(f"{d}: no scenes (no manifest.json and no */scene.json)")
    return found


def contact_sheet(directory: str | Path, path: str | Path, *, columns: int = 4,
                  limit: int = 16, tile: int = 192, overlay: bool = False) -> Path:
    """Save a grid of scene images (PNG) for looking at a scene set.

    With ``overlay`` each tile shows the image with the visible hand (red) and object
    (blue) mask outlines and the 2D keypoints (yellow dots).
    """
    from PIL import Image, ImageDraw

    dirs = list_scenes(directory)[:int(limit)]
    if not dirs:
        raise SceneFormatError(f"{directory}: no scenes")
    rows = (len(dirs) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * tile), (255, 255, 255))
    for k, d in enumerate(dirs):
        sc = Scene.load(d)
        im = sc.image.copy()
        if overlay:
            from scipy.ndimage import binary_erosion

            for m, col in ((sc.mask_hand, (255, 0, 0)), (sc.mask_object, (0, 80, 255))):
                im[m & ~binary_erosion(m)] = col
        pil = Image.fromarray(im)
        if overlay:
            dr = ImageDraw.Draw(pil)
            for u, v in sc.keypoints_2d:
                dr.ellipse([u - 1.5, v - 1.5, u + 1.5, v + 1.5], fill=(255, 230, 0))
        pil = pil.resize((tile, tile), Image.LANCZOS)
        sheet.paste(pil, ((k % columns) * tile, (k // columns) * tile))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
