"""One RGB photo -> :class:`~hoiguide.types.Observations` -> meshes (the method's pipeline, docs/method.md section 1).

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

:func:`hoiguide.apps.photo.reconstruct_image` adds the guided reconstruction and writing the
results (an application, not part of the library).

Frames: the observations live in the crop's camera frame (OpenCV, metres), which is the full
photo's camera frame (a crop changes intrinsics, not the 3D frame), mirrored (``x -> -x``)
when the hand is a left hand. :func:`to_full_frame` brings results back to the photo's frame.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from hoiguide.adapters.inpainting import object_image as make_object_image
from hoiguide.adapters.models import Models
from hoiguide.adapters.options import PipelineOptions
from hoiguide.alignment import build_observations
from hoiguide.guidance.sampler import latent_to_mesh, sample
from hoiguide.io import ImageError, load_image
from hoiguide.types import Camera, Mesh, Observations

__all__ = ["PipelineError", "ImageError", "PipelineOptions", "load_image",
           "observations_from_image", "run_chain", "check_chain_arguments", "to_full_frame",
           "mirror_mesh", "uncrop_camera"]

log = logging.getLogger(__name__)

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


def check_camera(camera: Any, width: int, height: int) -> Camera:
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
def check_chain_arguments(object_name: Any, seed: Any, left_hand: Any) -> None:
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

    mdl = Models.load(models)
    if options is None:
        options = mdl.pipeline_options or None
    opts = PipelineOptions.coerce(options)
    check_chain_arguments(object_name, seed, left_hand)
    img, img_info = load_image(image, max_megapixels=opts.max_megapixels)
    H, W = img.shape[:2]
    if camera is not None:
        camera = check_camera(camera, W, H)
    return run_chain(img, img_info, mdl, object_name.strip(), camera, int(seed),
                  bool(left_hand), opts)


def run_chain(img: np.ndarray, img_info: dict[str, Any], mdl: Any, object_name: str,
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
