"""One RGB photo -> :class:`~hoiguide.types.Observations` -> meshes (REFERENCE.md section 1).

:func:`observations_from_image` runs steps 1-8 of the reference pipeline with the models of a
:class:`~hoiguide.adapters.models.Models`:

1. **detect** (``segmenter.detect`` on the full image): the best box for the object prompt
   (fallback ``"manipulated object"``) and for ``"hand"``;
2. **crop** (:func:`hoiguide.adapters.crop.make_crop`): union of the boxes, padded, square,
   x1.25, resized to ``crop_size``; a left hand is mirrored so everything after sees a right
   hand;
3. **segment** (``segmenter.segment`` on the crop): hand and object masks; the visible object
   mask excludes the hand; an object that touches the photo's border is refused (it is cut
   off: the generator would complete a truncated shape);
4. **inpaint** (``inpainter``): the hand removed; the *object image* (the generator's
   condition) is cut out with the object mask found again on the inpainted crop (amodal);
5. **geometry** (``geometry`` on the crop whitened outside the union mask): the point map.
   When the photo's intrinsics are given, the crop's camera is passed to the model (when it
   takes ``camera=``, as ``MoGeEstimator`` does); when not, the point map's camera becomes
   the crop's;
6. **hand** (``hand``): the hand mesh in the crop's camera frame;
7. **coarse** hand-object mesh: the generator's unguided sample on the union-masked crop
   (RGBA) (:func:`hoiguide.guidance.sampler.sample` + ``latent_to_mesh``), and its sample of
   the object image alone (for ICP c);
8. **alignment**: :func:`hoiguide.alignment.build_observations` (partial points, target
   maps, ICP a, ICP b and ICP c).

Every failure is a :class:`PipelineError` with the ``stage`` and a short ``status``
(``"no hand detected"``, ``"no object mask"``, ``"object touches the image border"``, ...).

:func:`reconstruct_image` adds loading the photo safely (:func:`load_image`), the guided
reconstruction and writing the results; its output folder appears complete or not at all
(a failed run leaves only ``result.json``).

Frames: the observations live in the crop's camera frame (OpenCV, metres), which is the full
photo's camera frame (a crop changes intrinsics, not the 3D frame), mirrored (``x -> -x``)
when the hand is a left hand. :func:`to_full_frame` brings results back to the photo's frame.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from hoiguide.types import Camera, Mesh, Observations

__all__ = ["PipelineError", "ImageError", "PipelineOptions", "load_image",
           "observations_from_image", "reconstruct_image", "to_full_frame", "mirror_mesh",
           "uncrop_camera", "RESULT_KIND", "OUTPUT_FILES"]

log = logging.getLogger(__name__)

RESULT_KIND = "hoiguide-reconstruct"
"""``result.json["kind"]`` of :func:`reconstruct_image` (an existing output folder with this
marker may be replaced by a new run)."""

OUTPUT_FILES = ("object.glb", "object.ply", "object.obj", "hand.glb", "hand.ply", "hand.obj",
                "scene.glb", "history.json", "input.png", "observations.png", "overlay.png",
                "turntable.png", "turntable.gif", "losses.png", "report.html", "result.json")
"""What :func:`reconstruct_image` may write (a failed run writes only ``result.json``)."""

PICTURE_MAX_SIDE = 1024
"""``input.png`` / ``overlay.png`` are drawn at most this many pixels wide or high."""


# ---------------------------------------------------------------------- errors and options
class PipelineError(RuntimeError):
    """A stage of the image chain failed.

    Attributes:
        stage: ``"detect"``, ``"crop"``, ``"segment"``, ``"inpaint"``, ``"geometry"``,
            ``"hand"``, ``"coarse"`` or ``"alignment"``.
        status: a short status (``"no hand detected"``) for ``result.json``.
        message: the full explanation.
    """

    def __init__(self, stage: str, message: str, status: Optional[str] = None) -> None:
        self.stage = stage
        self.message = message
        self.status = status or message
        super().__init__(f"{stage}: {message}")


class ImageError(ValueError):
    """The input image cannot be used (unreadable, too large, wrong array shape/dtype)."""


@dataclass(frozen=True)
class PipelineOptions:
    """Settings of the image chain (not of the models, not of the guidance).

    Attributes:
        crop_size: side of the square crop in pixels (reference: 512).
        pad_px, enlarge: crop padding (full-image pixels) and enlargement (reference: 10,
            1.25).
        object_image_size, object_margin: the object image's side (pixels) and margin (as a
            fraction of the object's size) (:func:`hoiguide.adapters.inpainting.object_image`).
        fallback_prompt: object prompt used when ``object_name`` finds nothing.
        hand_prompt: the hand prompt.
        amodal_from_inpainting: cut the object image out with the object mask found again on
            the inpainted crop (the completed object, ``mask_object_amodal``); else with the
            visible mask.
        coarse_steps, coarse_guidance_scale, coarse_resolution: the unguided generator run
            for the coarse hand-object mesh (steps, CFG weight, decode grid points per axis;
            ``None``: ``min(backbone.default_resolution, 129)``).
        min_mask_pixels: masks with fewer crop pixels count as empty.
        border_px: an object mask reaching within this many full-image pixels of the photo's
            border is "touching the border".
        allow_truncated_object: go on (with a warning) when the object touches the border.
        max_megapixels: larger photos are refused (:func:`load_image`).
        alignment: :class:`hoiguide.alignment.AlignmentOptions` or a mapping of its fields.
    """

    crop_size: int = 512
    pad_px: float = 10.0
    enlarge: float = 1.25
    object_image_size: int = 512
    object_margin: float = 0.1
    fallback_prompt: str = "manipulated object"
    hand_prompt: str = "hand"
    amodal_from_inpainting: bool = True
    coarse_steps: int = 20
    coarse_guidance_scale: float = 5.0
    coarse_resolution: Optional[int] = None
    min_mask_pixels: int = 16
    border_px: float = 1.0
    allow_truncated_object: bool = False
    max_megapixels: float = 40.0
    alignment: Any = None

    def __post_init__(self) -> None:
        from hoiguide.alignment import AlignmentOptions

        def pos_int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"PipelineOptions.{name}: expected an integer >= {lo}, got "
                                 f"{v!r}")

        pos_int("crop_size", 16)
        pos_int("object_image_size", 16)
        pos_int("coarse_steps", 1)
        pos_int("min_mask_pixels", 1)
        if self.coarse_resolution is not None:
            pos_int("coarse_resolution", 8)
        for name, lo in (("pad_px", 0.0), ("border_px", 0.0), ("object_margin", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < lo:
                raise ValueError(f"PipelineOptions.{name}: expected a number >= {lo}, got "
                                 f"{v!r}")
        for name in ("enlarge", "max_megapixels", "coarse_guidance_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ValueError(f"PipelineOptions.{name}: expected a number > 0, got {v!r}")
        for name in ("fallback_prompt", "hand_prompt"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"PipelineOptions.{name}: expected a non-empty string, got "
                                 f"{v!r}")
        a = self.alignment
        if a is None or isinstance(a, AlignmentOptions):
            return
        if isinstance(a, Mapping):
            names = {f.name for f in dataclasses.fields(AlignmentOptions)}
            bad = [k for k in a if k not in names]
            if bad:
                raise ValueError(f"PipelineOptions.alignment: unknown AlignmentOptions field "
                                 f"{bad[0]!r} (fields: {', '.join(sorted(names))})")
            vals = {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}
            object.__setattr__(self, "alignment", AlignmentOptions(**vals))
            return
        raise TypeError(f"PipelineOptions.alignment: expected AlignmentOptions, a mapping or "
                        f"None, got {type(a).__name__}")

    @classmethod
    def coerce(cls, options: Union["PipelineOptions", Mapping[str, Any], None]
               ) -> "PipelineOptions":
        """``None`` -> defaults; a mapping -> validated options (unknown keys named)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, Mapping):
            import difflib

            names = [f.name for f in dataclasses.fields(cls)]
            bad = [k for k in options if k not in names]
            if bad:
                close = difflib.get_close_matches(str(bad[0]), names, n=1)
                raise ValueError(f"PipelineOptions: unknown option {bad[0]!r}"
                                 f"{'; did you mean ' + close[0] + '?' if close else ''} "
                                 f"(options: {', '.join(names)})")
            return cls(**dict(options))
        raise TypeError(f"options: expected PipelineOptions, a mapping or None, got "
                        f"{type(options).__name__}")


# ---------------------------------------------------------------------- the photo
def load_image(source: Any, *, max_megapixels: float = 40.0,
               min_side: int = 16) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a photo safely into ``(H, W, 3)`` uint8 RGB.

    Accepts a file path, a ``PIL.Image`` or an ``(H, W)``, ``(H, W, 1|3|4)`` uint8 array.
    Grayscale becomes RGB; an alpha channel is composited onto white (the models expect
    opaque photos); 16-bit and float images are scaled to 8 bits; the EXIF orientation is
    applied (a phone photo comes out the way it is seen). The size is checked from the
    file's header BEFORE decoding, so a huge file is refused without being read.

    Returns:
        ``(image, info)``; ``info`` has ``source``, ``width``, ``height``, ``mode`` (the
        original), ``conversions`` (what was done, as text).

    Raises:
        FileNotFoundError: no such file.
        ImageError: unreadable / not an image, more than ``max_megapixels`` million pixels,
            a side under ``min_side`` pixels, or an array of the wrong shape or dtype.
    """
    from PIL import Image, UnidentifiedImageError

    info: dict[str, Any] = {"source": None, "conversions": []}
    limit = float(max_megapixels) * 1e6

    def check_size(w: int, h: int) -> None:
        if w * h > limit:
            raise ImageError(f"the image is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit "
                             f"is {max_megapixels:g} MP (PipelineOptions.max_megapixels): "
                             f"downscale it (the models work at {512} px anyway)")
        if min(w, h) < min_side:
            raise ImageError(f"the image is {w}x{h} pixels; expected at least {min_side} "
                             f"pixels on each side")

    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        info["source"] = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
                check_size(*im.size)
                im = _exif_upright(im, info)
                im.load()
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: refused as too large ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"cannot read {path} as an image ({type(exc).__name__}: "
                             f"{exc})") from None
        arr, mode = _pil_to_rgb(im, info)
    elif isinstance(source, Image.Image):
        check_size(*source.size)
        arr, mode = _pil_to_rgb(_exif_upright(source, info), info)
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        a = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
            raise ImageError(f"expected an image array of shape (H, W), (H, W, 1), (H, W, 3) "
                             f"or (H, W, 4), got {a.shape}")
        if a.dtype != np.uint8:
            raise ImageError(f"expected a uint8 image array (0..255), got {a.dtype}; convert "
                             f"with (x * 255).round().astype(np.uint8) for floats in [0, 1]")
        check_size(a.shape[1], a.shape[0])
        mode = "L" if a.ndim == 2 else ("RGBA" if a.shape[2] == 4 else "RGB")
        arr = _array_to_rgb(a, info)
        info["source"] = "array"
    else:
        raise ImageError(f"expected an image path, a PIL image or a uint8 array, got "
                         f"{type(source).__name__}")
    info.update(width=int(arr.shape[1]), height=int(arr.shape[0]), mode=mode)
    for c in info["conversions"]:
        log.info("load_image: %s", c)
    return np.ascontiguousarray(arr), info


def _array_to_rgb(a: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    if a.ndim == 2:
        info["conversions"].append("grayscale -> RGB")
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        info["conversions"].append("RGBA composited onto white")
        alpha = a[..., 3:4].astype(np.float64) / 255.0
        rgb = a[..., :3].astype(np.float64) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return a


def _exif_upright(im: Any, info: dict[str, Any]) -> Any:
    """The image turned as its EXIF orientation tag says (the tag is then dropped)."""
    from PIL import ImageOps

    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 -- a broken EXIF block is ignored
        return im
    if orientation == 1:
        return im
    out = ImageOps.exif_transpose(im)
    info["conversions"].append(f"EXIF orientation {orientation} applied")
    return out if out is not None else im


def _pil_to_rgb(im: Any, info: dict[str, Any]) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        info["conversions"].append(f"{mode} scaled to 8 bits")
        return _array_to_rgb(np.clip(np.round(a / top * 255), 0, 255).astype(np.uint8),
                             info), mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or \
        (mode == "P" and "transparency" in im.info)
    if has_alpha:
        return _array_to_rgb(np.asarray(im.convert("RGBA")), info), mode
    if mode in ("L", "1"):
        return _array_to_rgb(np.asarray(im.convert("L")), info), mode
    if mode != "RGB":
        info["conversions"].append(f"{mode} -> RGB")
    return np.asarray(im.convert("RGB")), mode


# ---------------------------------------------------------------------- frames
def mirror_mesh(mesh: Mesh) -> Mesh:
    """The mesh mirrored in the camera frame (``x -> -x``), faces re-wound so they still
    face outward (CCW seen from outside)."""
    if mesh.is_empty:
        return mesh
    v = mesh.vertices.clone()
    v[:, 0] = -v[:, 0]
    faces = mesh.faces[:, [0, 2, 1]]
    colors = getattr(mesh, "vertex_colors", None)
    kwargs = {}
    if colors is not None:
        kwargs["vertex_colors"] = colors
    try:
        return Mesh(v, faces, **kwargs)
    except TypeError:
        return Mesh(v, faces)


def _mirror_points(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if p is None:
        return None
    q = p.clone()
    q[..., 0] = -q[..., 0]
    return q


def uncrop_camera(crop_camera: Camera, box: tuple[float, float, float, float], size: int,
                  mirrored: bool, width: int, height: int) -> Camera:
    """The full photo's camera from a crop's camera (the inverse of ``Camera.cropped``).

    Args:
        crop_camera: intrinsics (pixels) of the ``size x size`` crop, of the mirrored crop
            when ``mirrored``.
        box: ``(x0, y0, x1, y1)`` of the crop in full-image pixels.
        width, height: the full photo's size in pixels.
    """
    x0, y0, x1, y1 = map(float, box)
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    cx = (size - crop_camera.cx) if mirrored else crop_camera.cx
    return Camera(crop_camera.fx / sx, crop_camera.fy / sy, cx / sx + x0,
                  crop_camera.cy / sy + y0, int(width), int(height))


def to_full_frame(rec: Any, crop: Any) -> Any:
    """A :class:`hoiguide.Reconstruction` from the crop's frame to the full photo's camera
    frame: the same for a right hand; for a left hand (``crop.mirrored``) the hand and object
    meshes and the hand keypoints are mirrored back (``x -> -x``). The similarities stay in
    the (mirrored) crop frame."""
    if not bool(getattr(crop, "mirrored", False)):
        return rec
    return dataclasses.replace(rec, object_mesh=mirror_mesh(rec.object_mesh),
                               hand_mesh=mirror_mesh(rec.hand_mesh),
                               hand_keypoints_3d=_mirror_points(rec.hand_keypoints_3d))


def _crop_pixel_footprints(crop: Any, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Full-image x and y of every crop pixel centre, and the half-size of a crop pixel in
    full-image pixels (x, y)."""
    x0, y0, x1, y1 = map(float, crop.box)
    S_h, S_w = shape
    sx, sy = (x1 - x0) / S_w, (y1 - y0) / S_h
    u = np.arange(S_w) + 0.5
    if crop.mirrored:
        u = S_w - u
    xs = x0 + u * sx
    ys = y0 + (np.arange(S_h) + 0.5) * sy
    return xs, ys, 0.5 * sx, 0.5 * sy


def _touches_border(mask: np.ndarray, crop: Any, width: int, height: int,
                    border_px: float) -> bool:
    """Whether a crop mask reaches within ``border_px`` full-image pixels of the photo's
    border (or beyond it)."""
    xs, ys, hx, hy = _crop_pixel_footprints(crop, mask.shape)
    bad_x = (xs - hx < border_px) | (xs + hx > width - border_px)
    bad_y = (ys - hy < border_px) | (ys + hy > height - border_px)
    return bool((mask & (bad_y[:, None] | bad_x[None, :])).any())


# ---------------------------------------------------------------------- chain helpers
def _best_box(dets: Any) -> Optional[tuple[tuple[float, float, float, float], float]]:
    best = None
    for d in dets or ():
        box, score = d[0], float(d[1])
        b = tuple(float(x) for x in np.asarray(box, np.float64).reshape(-1)[:4])
        if len(b) != 4 or not all(math.isfinite(x) for x in b) or b[2] <= b[0] or b[3] <= b[1]:
            continue
        if best is None or score > best[1]:
            best = (b, score)
    return best


def _mask_of(result: Any, shape: tuple[int, int], what: str, stage: str) -> np.ndarray:
    m = getattr(result, "mask", result)
    if m is None:
        return np.zeros(shape, bool)
    m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
    if m.shape != shape:
        raise PipelineError(stage, f"the segmenter returned a {what} mask of shape {m.shape}; "
                                   f"expected {shape} (the crop)",
                            status=f"{stage} failed: bad {what} mask shape")
    return m.astype(bool)


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    ii, jj = np.nonzero(mask)
    return float(jj.min()), float(ii.min()), float(jj.max() + 1), float(ii.max() + 1)


def _takes(fn: Any, name: str) -> bool:
    """Whether the callable ``fn`` has a parameter ``name``."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _estimate_hand(estimator: Any, image: np.ndarray, hand_box: tuple[float, ...],
                   camera: Camera) -> Any:
    """Call a hand estimator with the arguments its ``__call__`` takes: HaMeR style
    ``(image, hand_box, side)`` or MediaPipe style ``(image, camera)``."""
    import inspect

    try:
        params = inspect.signature(estimator).parameters
    except (TypeError, ValueError):
        params = {}
    kw: dict[str, Any] = {}
    if "hand_box" in params:
        kw["hand_box"] = hand_box
    if "side" in params:
        kw["side"] = "right"
    if "camera" in params:
        kw["camera"] = camera
    if not kw:
        raise TypeError(f"the hand model {type(estimator).__name__} takes neither hand_box "
                        f"(HaMeR style) nor camera (MediaPipe style)")
    return estimator(image, **kw)


def _as_tensor(x: Any, dtype: torch.dtype) -> Optional[torch.Tensor]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _check_camera(camera: Any, width: int, height: int) -> Camera:
    if isinstance(camera, (tuple, list)) and len(camera) == 4 and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in camera):
        return Camera(float(camera[0]), float(camera[1]), float(camera[2]), float(camera[3]),
                      width, height)
    if not isinstance(camera, Camera):
        raise TypeError(f"camera: expected a hoiguide.Camera, (fx, fy, cx, cy) in pixels of "
                        f"the photo, or None, got {type(camera).__name__}")
    if camera.size == (height, width):
        return camera
    if abs(camera.width / camera.height - width / height) < 0.01 * width / height:
        log.info("camera: %dx%d intrinsics rescaled to the image's %dx%d", camera.width,
                 camera.height, width, height)
        return camera.resized(width, height)
    raise ValueError(f"camera: expected intrinsics of the {width}x{height} image, got a "
                     f"{camera.width}x{camera.height} camera of another aspect ratio")


_NOTHING_FOUND = {"detect": "nothing detected", "segment": "no mask found",
                  "hand": "no hand detected by the hand model", "geometry": "no geometry"}


class _Stages:
    """Times the stages and turns an unexpected exception into a PipelineError."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = "input"

    def run(self, stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.current = stage
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except PipelineError:
            raise
        except Exception as exc:  # noqa: BLE001 -- re-raised as a PipelineError
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if type(exc).__name__ == "NoDetectionError":   # a model ran and found nothing
                status = _NOTHING_FOUND.get(stage, f"nothing found ({stage})")
            else:
                status = f"{stage} failed"
            raise PipelineError(stage, f"{type(exc).__name__}: {msg}"[:500],
                                status=status) from exc
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t


# ---------------------------------------------------------------------- the chain
def _check_call(object_name: Any, seed: Any, left_hand: Any) -> None:
    """The arguments :func:`observations_from_image` and :func:`reconstruct_image` share."""
    if not isinstance(object_name, str) or not object_name.strip():
        raise ValueError(f"object_name: expected a non-empty string, got {object_name!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an integer, got {seed!r}")
    if left_hand not in (None, True, False):
        raise TypeError(f"left_hand: expected True, False or None, got {left_hand!r}")


def observations_from_image(image: Any, models: Any, *, object_name: str = "object",
                            camera: Any = None, seed: int = 0,
                            left_hand: Optional[bool] = None,
                            options: Union[PipelineOptions, Mapping[str, Any], None] = None
                            ) -> tuple[Observations, Any, dict[str, Any]]:
    """The reference pipeline's steps 1-8 (see the module docstring): one photo ->
    :class:`~hoiguide.types.Observations` in the crop's camera frame.

    Args:
        image: the photo: a path, a PIL image or an ``(H, W, 3|4)`` / ``(H, W)`` uint8 array
            (see :func:`load_image`).
        models: a :class:`~hoiguide.adapters.models.Models` (or anything
            ``Models.load`` accepts: a YAML path, a mapping, ``None`` for the defaults).
        object_name: what the hand holds, in words (the object prompt and the inpainting
            prompt).
        camera: the photo's intrinsics (a Camera, or ``(fx, fy, cx, cy)`` in pixels of the
            upright photo) when known; ``None``: the
            monocular-geometry model's intrinsics (or, if it gives none,
            :func:`hoiguide.adapters.crop.default_camera`).
        seed: the coarse generator run's noise and the alignment's sampling.
        left_hand: ``True`` for a left hand (the crop is mirrored so the models see a right
            hand); ``None`` or ``False``: a right hand (handedness is not detected).
        options: :class:`PipelineOptions` or a mapping of its fields (default: the models'
            ``pipeline`` section).

    Returns:
        ``(observations, crop, info)``: the observations (crop camera frame, metres; for a
        left hand the MIRRORED crop's frame), the :class:`~hoiguide.adapters.crop.Crop` and a
        JSON-serialisable ``info`` dict (boxes and scores in full-image pixels, the crop,
        the full and crop cameras and where the intrinsics came from, mask sizes, the coarse
        mesh, seconds per stage, warnings).

    Raises:
        PipelineError: a stage failed (``.stage``, ``.status``).
        ImageError, FileNotFoundError: the photo cannot be used.
        hoiguide.adapters.models.ModelLoadError: a model cannot be built.
    """
    from hoiguide.adapters.models import Models

    mdl = Models.load(models)
    if options is None:
        options = mdl.pipeline_options or None
    opts = PipelineOptions.coerce(options)
    _check_call(object_name, seed, left_hand)
    img, img_info = load_image(image, max_megapixels=opts.max_megapixels)
    H, W = img.shape[:2]
    if camera is not None:
        camera = _check_camera(camera, W, H)
    return _chain(img, img_info, mdl, object_name.strip(), camera, int(seed),
                  bool(left_hand), opts)


def _chain(img: np.ndarray, img_info: dict[str, Any], mdl: Any, object_name: str,
           camera: Optional[Camera], seed: int, left: bool, opts: PipelineOptions
           ) -> tuple[Observations, Any, dict[str, Any]]:
    import hoiguide.adapters.crop as crop_mod

    H, W = img.shape[:2]
    st = _Stages()
    warn: list[str] = []
    info: dict[str, Any] = {"image": {k: v for k, v in img_info.items()},
                            "object_name": object_name, "left_hand": left, "warnings": warn,
                            "seconds": st.seconds}

    # 1. detect -------------------------------------------------------------------------
    seg = mdl.segmenter
    hand_det = _best_box(st.run("detect", seg.detect, img, opts.hand_prompt))
    if hand_det is None:
        raise PipelineError("detect", f"the detector found no box for {opts.hand_prompt!r} in "
                                      f"the {W}x{H} image", status="no hand detected")
    obj_det = _best_box(st.run("detect", seg.detect, img, object_name))
    prompt_used = object_name
    if obj_det is None and opts.fallback_prompt != object_name:
        log.info("pipeline: nothing found for %r; trying %r", object_name, opts.fallback_prompt)
        obj_det = _best_box(st.run("detect", seg.detect, img, opts.fallback_prompt))
        prompt_used = opts.fallback_prompt
    if obj_det is None:
        raise PipelineError("detect", f"the detector found no box for {object_name!r} nor "
                                      f"{opts.fallback_prompt!r}", status="no object detected")
    info["boxes"] = {"hand": list(hand_det[0]), "hand_score": hand_det[1],
                     "object": list(obj_det[0]), "object_score": obj_det[1],
                     "object_prompt": prompt_used, "frame": "full-image pixels x0 y0 x1 y1"}

    # 2. crop ---------------------------------------------------------------------------
    if camera is not None:
        cam_full, cam_source = camera, "given"
    else:
        cam_full = st.run("crop", crop_mod.default_camera, W, H)
        cam_source = "default"
    crop = st.run("crop", crop_mod.make_crop, hand_det[0], obj_det[0], (H, W), cam_full,
                  pad_px=opts.pad_px, enlarge=opts.enlarge, size=opts.crop_size,
                  left_hand=left)
    crop_img = np.ascontiguousarray(st.run("crop", crop.apply, img))
    S = int(crop.size)
    if crop_img.shape[:2] != (S, S) or crop_img.dtype != np.uint8:
        raise PipelineError("crop", f"Crop.apply returned {crop_img.shape} {crop_img.dtype}; "
                                    f"expected ({S}, {S}, 3) uint8", status="crop failed")
    crop_img = crop_img[..., :3]
    crop_cam = crop.camera
    info["crop"] = {"box": [float(x) for x in crop.box], "size": S,
                    "mirrored": bool(crop.mirrored)}

    # 3. segment ------------------------------------------------------------------------
    r_obj = st.run("segment", seg.segment, crop_img, object_name,
                   fallback_prompt=opts.fallback_prompt)
    r_hand = st.run("segment", seg.segment, crop_img, opts.hand_prompt)
    mask_hand = _mask_of(r_hand, (S, S), "hand", "segment")
    mask_obj_full = _mask_of(r_obj, (S, S), "object", "segment")
    mask_obj = mask_obj_full & ~mask_hand
    info["masks"] = {"hand_pixels": int(mask_hand.sum()), "object_pixels": int(mask_obj.sum()),
                     "hand_score": float(getattr(r_hand, "score", float("nan"))),
                     "object_score": float(getattr(r_obj, "score", float("nan")))}
    if mask_hand.sum() < opts.min_mask_pixels:
        raise PipelineError("segment", f"the hand mask on the crop has {int(mask_hand.sum())} "
                                       f"pixels (< {opts.min_mask_pixels})",
                            status="no hand mask")
    if mask_obj.sum() < opts.min_mask_pixels:
        raise PipelineError("segment", f"the visible object mask on the crop has "
                                       f"{int(mask_obj.sum())} pixels (< "
                                       f"{opts.min_mask_pixels}) for {object_name!r}",
                            status="no object mask")
    if _touches_border(mask_obj, crop, W, H, opts.border_px):
        msg = ("the object mask reaches the photo's border: the object is cut off by the "
               "frame (set PipelineOptions.allow_truncated_object to go on anyway)")
        if not opts.allow_truncated_object:
            raise PipelineError("segment", msg, status="object touches the image border")
        warn.append(msg)
    if _touches_border(mask_obj, _FullCropBorder(crop), S, S, 0.0):
        warn.append("the object mask reaches the crop's border: the detected box may be too "
                    "small")
    union = mask_hand | mask_obj

    # 4. inpaint -> object image ----------------------------------------------------------
    from hoiguide.adapters.inpainting import object_image as make_object_image

    inpainted = st.run("inpaint", mdl.inpainter, crop_img, mask_hand, object_name)
    inpainted = np.asarray(inpainted)
    if inpainted.shape != (S, S, 3) or inpainted.dtype != np.uint8:
        raise PipelineError("inpaint", f"the inpainter returned {inpainted.shape} "
                                       f"{inpainted.dtype}; expected ({S}, {S}, 3) uint8",
                            status="inpaint failed")
    amodal = mask_obj_full | mask_obj
    if opts.amodal_from_inpainting:
        r_am = st.run("inpaint", seg.segment, inpainted, object_name,
                      fallback_prompt=opts.fallback_prompt)
        m_am = _mask_of(r_am, (S, S), "amodal object", "inpaint")
        if m_am.sum() >= opts.min_mask_pixels and (m_am & mask_obj).sum() >= \
                0.5 * mask_obj.sum():
            amodal = m_am | mask_obj
        else:
            warn.append("the object was not found again on the inpainted crop; the object "
                        "image uses the visible mask")
    obj_img = st.run("inpaint", make_object_image, inpainted, amodal,
                     size=opts.object_image_size, margin=opts.object_margin)
    obj_img = np.asarray(obj_img)

    # 5. geometry -------------------------------------------------------------------------
    whitened = np.where(union[..., None], crop_img, 255).astype(np.uint8)
    geo = mdl.geometry
    geo_kw = {"camera": crop_cam} if camera is not None and _takes(geo, "camera") else {}
    pm = st.run("geometry", geo, whitened, **geo_kw)
    points = _as_tensor(getattr(pm, "points", None), torch.float64)
    valid = _as_tensor(getattr(pm, "valid", None), torch.bool)
    if points is None or tuple(points.shape) != (S, S, 3) or valid is None or \
            tuple(valid.shape) != (S, S):
        got_p = None if points is None else tuple(points.shape)
        got_v = None if valid is None else tuple(valid.shape)
        raise PipelineError("geometry", f"the geometry model returned points {got_p} and "
                                        f"valid {got_v}; expected ({S}, {S}, 3) and ({S}, {S})",
                            status="geometry failed")
    valid = valid & torch.isfinite(points).all(-1)
    n_valid = int((valid & torch.as_tensor(union)).sum())
    info["geometry"] = {"valid_pixels_in_union": n_valid}
    if n_valid < 10:
        raise PipelineError("geometry", f"only {n_valid} valid monocular-geometry pixels under "
                                        f"the hand and object masks", status="no geometry")
    pm_cam = getattr(pm, "camera", None)
    if camera is None and isinstance(pm_cam, Camera):
        if pm_cam.size != (S, S):
            pm_cam = pm_cam.resized(S, S)
        crop_cam = pm_cam
        cam_full = uncrop_camera(pm_cam, crop.box, S, bool(crop.mirrored), W, H)
        cam_source = "geometry"
    info["camera"] = cam_full.to_dict()
    info["camera_source"] = cam_source
    info["crop"]["camera"] = crop_cam.to_dict()

    # 6. hand ---------------------------------------------------------------------------
    est = st.run("hand", _estimate_hand, mdl.hand, crop_img, _box_of(mask_hand), crop_cam)
    if est is None:
        raise PipelineError("hand", "the hand model found no hand on the crop",
                            status="no hand detected by the hand model")
    verts = _as_tensor(getattr(est, "vertices", None), torch.float32)
    faces = _as_tensor(getattr(est, "faces", None), torch.long)
    if verts is None or faces is None or verts.ndim != 2 or verts.shape[-1] != 3 or \
            len(verts) < 4 or not bool(torch.isfinite(verts).all()):
        raise PipelineError("hand", f"the hand model returned vertices "
                                    f"{None if verts is None else tuple(verts.shape)}; expected "
                                    f"(V, 3) finite", status="hand failed")
    hand_mesh = Mesh(verts, faces)
    kp3 = _as_tensor(getattr(est, "keypoints_3d", None), torch.float32)
    kp2 = _as_tensor(getattr(est, "keypoints_2d", None), torch.float32)
    kpc = _as_tensor(getattr(est, "keypoint_confidence", None), torch.float32)
    info["hand"] = {"model": getattr(est, "model", None), "side": getattr(est, "side", None),
                    "vertices": int(len(verts))}

    # 7. coarse hand-object mesh ----------------------------------------------------------
    from hoiguide.guidance.sampler import latent_to_mesh, sample

    backbone = mdl.backbone
    rgba = np.concatenate([whitened, union[..., None].astype(np.uint8) * 255], -1)
    res = opts.coarse_resolution or min(int(backbone.default_resolution), 129)
    latent = st.run("coarse", sample, backbone, rgba, num_steps=opts.coarse_steps,
                    guidance_scale=opts.coarse_guidance_scale, seed=seed)
    coarse = st.run("coarse", latent_to_mesh, backbone, latent, res)
    info["coarse"] = {"vertices": coarse.num_vertices, "faces": coarse.num_faces,
                      "resolution": res, "steps": opts.coarse_steps}
    if coarse.is_empty:
        raise PipelineError("coarse", "the generator's unguided sample of the hand-object crop "
                                      "has no surface", status="empty coarse mesh")
    # the object alone, as guidance will generate it: ICP c places the object with it
    coarse_object = None
    if (opts.alignment is None or opts.alignment.object_icp == "object_sample"):
        lat_o = st.run("coarse", sample, backbone, obj_img, num_steps=opts.coarse_steps,
                       guidance_scale=opts.coarse_guidance_scale, seed=seed)
        coarse_object = st.run("coarse", latent_to_mesh, backbone, lat_o, res)
        info["coarse_object"] = {"vertices": coarse_object.num_vertices,
                                 "faces": coarse_object.num_faces}
        coarse_object = None if coarse_object.is_empty else coarse_object.to(
            dtype=torch.float64)

    # 8. alignment -> observations ----------------------------------------------------------
    from hoiguide.alignment import build_observations

    meta = {"source": "hoiguide.adapters.pipeline", "object_name": object_name,
            "crop_box": info["crop"]["box"], "mirrored": bool(crop.mirrored),
            "camera_full": cam_full.to_dict(), "camera_source": cam_source,
            "models": mdl.describe()}
    obs = st.run("alignment", build_observations, camera=crop_cam, image=crop_img,
                 mask_hand=mask_hand, mask_object=mask_obj, object_image=obj_img,
                 point_map=points, point_valid=valid, hand_mesh=hand_mesh,
                 coarse_hoi=coarse.to(dtype=torch.float64),
                 hand_keypoints_3d=kp3 if kp3 is not None and kp3.shape == (21, 3) else None,
                 keypoints_2d=kp2 if kp2 is not None and kp2.shape == (21, 2) else None,
                 keypoint_confidence=kpc if kpc is not None and kpc.shape == (21,) else None,
                 mask_object_amodal=amodal, options=opts.alignment, seed=seed, metadata=meta,
                 coarse_object=coarse_object)
    info["alignment"] = obs.metadata.get("alignment")
    log.info("pipeline: observations ready (%s)", ", ".join(
        f"{k} {v:.2f} s" for k, v in st.seconds.items()))
    return obs, crop, info


class _FullCropBorder:
    """A stand-in crop whose 'full image' is the crop itself (to test the crop's border)."""

    def __init__(self, crop: Any) -> None:
        self.box = (0.0, 0.0, float(crop.size), float(crop.size))
        self.mirrored = False


# ---------------------------------------------------------------------- to files
def _check_out_dir(out: Path) -> None:
    """Refuse an existing folder that is neither empty nor an earlier reconstruction."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a folder")
    if not out.is_dir():
        return
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return
    marker = out / "result.json"
    try:
        kind = json.loads(marker.read_text()).get("kind") if marker.is_file() else None
    except (OSError, ValueError):
        kind = None
    foreign = [n for n in entries if n not in OUTPUT_FILES]
    if kind != RESULT_KIND or foreign:
        raise FileExistsError(
            f"output folder {out} exists and holds other files "
            f"({', '.join(sorted(foreign or entries)[:5])}); give a new or empty folder (an "
            f"earlier 'hoiguide reconstruct' output is replaced)")


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to ``out`` (replacing an earlier output)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        old.rmdir()
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def _observations_picture(tmp: Path, obs: Any) -> list[str]:
    """observations.png: the crop, its masks and the object image (returns what went
    wrong)."""
    try:
        import hoiguide.pictures as pics

        crop = np.asarray(obs.image)
        S = crop.shape[0]
        tint = crop.astype(np.float64).copy()
        mh, mo = obs.mask_hand.numpy(), obs.mask_object.numpy()
        tint[mh] = 0.5 * tint[mh] + 0.5 * np.array([255, 150, 80])
        tint[mo] = 0.5 * tint[mo] + 0.5 * np.array([60, 120, 255])
        oi = np.asarray(obs.object_image)
        if oi.shape[2] == 4:
            a = oi[..., 3:4] / 255.0
            oi = (oi[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
        from PIL import Image

        oi = np.asarray(Image.fromarray(oi).resize((S, S), Image.BILINEAR))
        _save_png(tmp / "observations.png", pics.side_by_side([
            pics.label(crop, "crop"), pics.label(tint.astype(np.uint8), "masks"),
            pics.label(oi, "object image")]))
    except ImportError as exc:
        return [f"observations.png: skipped ({exc})"]
    except Exception as exc:  # noqa: BLE001 -- reported in result.json
        log.warning("reconstruct: could not draw observations.png", exc_info=exc)
        return [f"observations.png: {type(exc).__name__}: {exc}"]
    return []


def reconstruct_image(image: Any, out_dir: Union[str, Path], *, models: Any = None,
                      schedule: Any = "fast", seed: int = 0, object_name: str = "object",
                      camera: Any = None, left_hand: Optional[bool] = None,
                      options: Union[PipelineOptions, Mapping[str, Any], None] = None,
                      guidance_options: Any = None, progress: bool = False,
                      pictures: bool = True, turntable_views: int = 8,
                      turntable_size: int = 160) -> dict[str, Any]:
    """Reconstruct the hand and the object it holds from one photo and write the results.

    Writes, into ``out_dir`` (the same files as ``hoiguide demo`` minus the ground-truth
    metrics, through :func:`hoiguide.outputs.write_outputs`)::

        object.glb / .ply / .obj    the object, the PHOTO's camera frame (OpenCV: +x right,
        hand.glb / .ply / .obj      +y down, +z forward), metres (mirrored back for a left
        scene.glb                   hand); scene.glb holds both, coloured
        history.json                every loss term of every inner iteration
        input.png                   the photo as read (EXIF orientation applied)
        observations.png            the crop, its masks and the object image
        overlay.png                 photo | reconstruction rendered over it
        turntable.png / .gif        8 views orbiting the reconstruction (strip, animation)
        losses.png                  loss curves (needs matplotlib)
        report.html                 everything on one self-contained page
        result.json                 see below

    Everything is written into a temporary sibling folder that is renamed to ``out_dir`` at
    the end, so ``out_dir`` is complete or holds only ``result.json``: when a stage fails
    (or the reconstruction's status is not ``"ok"``) ONLY ``result.json`` is written, with
    ``status`` (e.g. ``"no hand detected"``), ``stage`` and ``reason``. An existing
    ``out_dir`` must be empty or an earlier output of this function (it is replaced).

    Args:
        image: a path, a PIL image or a uint8 array (:func:`load_image`).
        out_dir: the output folder.
        models: :class:`~hoiguide.adapters.models.Models`, a models YAML path or mapping, or
            ``None`` for ``Models.default()``. All roles are built before anything is
            written.
        schedule: phase schedule (preset name, YAML path, mapping or PhaseSchedule).
        seed: the generator's noise (coarse run and guided run) and the alignment sampling.
        object_name, camera, left_hand, options: see :func:`observations_from_image`.
        guidance_options: :class:`hoiguide.GuidanceOptions` or a mapping of its fields.
        progress: progress bars over the flow steps.
        pictures: draw the PNGs.
        turntable_views, turntable_size: views in ``turntable.png`` and their side (pixels).

    Returns:
        The dict written to ``result.json``: ``kind`` (:data:`RESULT_KIND`), ``status``
        (``"ok"`` or why not), ``stage`` and ``reason`` (``None`` when ok), ``image``
        (source, size, conversions), ``camera`` (the photo's intrinsics) and
        ``camera_source`` (``given``/``geometry``/``default``), ``crop``, ``boxes``,
        ``masks``, ``models``, the reconstruction's summary
        (:meth:`hoiguide.Reconstruction.summary`: similarities in the crop frame, mirrored
        for a left hand; schedule; counters; timings), ``seconds`` and ``seconds_parts``,
        ``files``, ``warnings``.

    Raises (nothing is written in these cases):
        FileNotFoundError, ImageError: the photo cannot be read or is too large.
        FileExistsError: ``out_dir`` holds unrelated files.
        ValueError, TypeError, hoiguide.ScheduleError: bad arguments.
        hoiguide.adapters.models.ModelLoadError: a model cannot be built.
    """
    from hoiguide.adapters.models import Models
    from hoiguide.api import guided_reconstruct
    from hoiguide.eval.bench import _write_json
    from hoiguide.guidance.engine import GuidanceOptions
    from hoiguide.phases import load_schedule

    t_start = time.perf_counter()
    out = Path(out_dir).expanduser()
    mdl = Models.load(models)
    if options is None:
        options = mdl.pipeline_options or None
    opts = PipelineOptions.coerce(options)
    sched = load_schedule(schedule)
    gopts = GuidanceOptions.coerce(guidance_options)
    _check_call(object_name, seed, left_hand)
    for name, v, lo in (("turntable_views", turntable_views, 1),
                        ("turntable_size", turntable_size, 8)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    _check_out_dir(out)
    img, img_info = load_image(image, max_megapixels=opts.max_megapixels)
    H, W = img.shape[:2]
    if camera is not None:
        camera = _check_camera(camera, W, H)
    t = time.perf_counter()
    mdl.build()
    parts: dict[str, float] = {"models": time.perf_counter() - t}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    result: dict[str, Any] = {
        "kind": RESULT_KIND, "version": 1, "status": "failed", "stage": None, "reason": None,
        "reconstruction_status": None, "image": img_info, "object_name": object_name.strip(),
        "left_hand": bool(left_hand), "seed": int(seed), "preset": sched.name,
        "models": mdl.describe(), "pipeline_options": _options_dict(opts),
        "frame": "the photo's OpenCV camera frame (+x right, +y down, +z forward), metres",
    }
    stage = "observations"
    rec = obs = None
    try:
        try:
            t = time.perf_counter()
            obs, crop, info = _chain(img, img_info, mdl, object_name.strip(), camera,
                                     int(seed), bool(left_hand), opts)
            parts["observations"] = time.perf_counter() - t
            parts.update({f"observations.{k}": v for k, v in info["seconds"].items()})
            cam_full = Camera.from_dict(info["camera"])
            for k in ("boxes", "crop", "masks", "geometry", "hand", "coarse", "alignment",
                      "camera", "camera_source"):
                result[k] = info.get(k)
            warn = list(info["warnings"])
            stage = "reconstruct"
            t = time.perf_counter()
            rec = guided_reconstruct(observations=obs, backbone=mdl.backbone, schedule=sched,
                                     seed=int(seed), progress=progress, options=gopts)
            parts["reconstruct"] = time.perf_counter() - t
            rec = to_full_frame(rec, crop)
            summary = rec.summary()
            summary.pop("status", None)
            summary.pop("frame", None)
            result.update(summary)
            result["transforms_frame"] = (
                "the similarities map into the crop's camera frame, which is the photo's "
                "camera frame" + (" mirrored (x -> -x): the hand was a left hand"
                                  if crop.mirrored else ""))
            result["reconstruction_status"] = rec.status
            if not rec.ok:
                raise PipelineError("reconstruct", f"the guided reconstruction ended with "
                                                   f"status {rec.status!r}", status=rec.status)
            stage = "save"
            t = time.perf_counter()
            result.update(status="ok", stage=None, reason=None)
            if pictures:
                warn += _observations_picture(tmp, obs)
            from hoiguide.outputs import write_outputs

            written = write_outputs(
                tmp, rec, image=img, camera=cam_full, result=result, pictures=pictures,
                title=f"{sched.name} on {Path(str(img_info.get('source'))).name}",
                turntable_views=int(turntable_views), turntable_size=int(turntable_size),
                picture_max_side=PICTURE_MAX_SIDE)
            warn += written["warnings"]
            warn += [f"{name}: skipped ({why})" for name, why in written["skipped"].items()]
            parts["save"] = time.perf_counter() - t
            result.update(warnings=warn)
        except PipelineError as exc:
            result.update(status=exc.status, stage=exc.stage, reason=exc.message)
            if exc.__cause__ is not None:
                result["traceback"] = "".join(traceback.format_exception(
                    type(exc.__cause__), exc.__cause__, exc.__cause__.__traceback__))[-4000:]
            log.warning("reconstruct: %s (%s: %s)", exc.status, exc.stage, exc.message)
        except Exception as exc:  # noqa: BLE001 -- recorded in result.json
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result.update(status=f"{stage} failed", stage=stage,
                          reason=f"{type(exc).__name__}: {msg}"[:500],
                          traceback="".join(traceback.format_exception(
                              type(exc), exc, exc.__traceback__))[-4000:])
            log.warning("reconstruct: failed while %s", stage, exc_info=exc)
        if result["status"] != "ok":
            # a failed run leaves only result.json
            shutil.rmtree(tmp)
            tmp.mkdir()
        result["seconds_parts"] = parts
        result["seconds"] = time.perf_counter() - t_start
        result["files"] = sorted(p.name for p in tmp.iterdir()) + ["result.json"]
        result["files"] = sorted(set(result["files"]))
        result.setdefault("warnings", [])
        _write_json(tmp / "result.json", result)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if result["status"] == "ok":
        log.info("reconstruct: ok in %.1f s; wrote %s", result["seconds"], out)
    return result


def _options_dict(opts: PipelineOptions) -> dict[str, Any]:
    d = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "alignment"}
    d["alignment"] = None if opts.alignment is None else dataclasses.asdict(opts.alignment)
    return d
