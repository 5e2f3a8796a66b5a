"""Simulated foundation models: turn a synthetic :class:`~hoiguide.synth.scene.Scene` into
:class:`~hoiguide.types.Observations` with errors that look like the real models' errors.

Each observer has a documented error model whose strengths live in :class:`ObserverNoise`
(``ObserverNoise.preset("default")``, ``"none"`` or a number that scales every default
strength). After the observers, the reference's alignment chain runs for real
(:func:`hoiguide.alignment.build_observations`: partial points, target maps, ICP a and b).

Error models (per scene, drawn from a seeded generator):

- **Segmentation** (LangSAM): the mask boundary moves by a smooth random field with standard
  deviation ``mask_boundary_px`` pixels (signed-distance perturbation, so the outline wobbles
  instead of speckling); with probability ``mask_hole_rate`` a small elliptical hole
  (3-8 % of the mask's size) is cut. The object mask never covers the hand mask.
- **Monocular geometry** (MoGe-2): the true depth times a global scale ``exp(N(0,
  depth_scale))`` (metric-scale error), times ``1 + `` a smooth relative noise of standard
  deviation ``depth_noise`` and a linear tilt of up to ``depth_tilt`` across the image
  (low-frequency distortion). Points come from the true intrinsics. Depth edges are then
  removed by the alignment step as in the reference.
- **Hand recovery** (HaMeR): the true hand re-posed with per-joint axis-angle noise of
  ``hand_pose_deg`` degrees (clamped to the joint limits) and shape noise ``hand_shape``,
  then a global error about its centroid: rotation ``hand_rotation_deg`` degrees, scale
  ``exp(N(0, hand_scale))``, translation ``hand_translation_m`` sideways and
  ``hand_depth_m`` along the optical axis (monocular depth is the weak direction). 2D
  keypoints are the true projections plus ``keypoint_px`` pixels of noise.
- **Inpainting** (FLUX Kontext + background removal): OpenCV's Telea inpainting of the
  (dilated by ``inpaint_dilate_px``) observed hand region, cut out with a noisy version of
  the amodal object mask (the model is asked to complete the object, and background removal
  then finds its outline), cropped square with a margin: a real, imperfect algorithm.
- **Coarse hand-object mesh** (the generator on the union crop): with a ``backbone``, its
  unguided sample on the union-masked crop; without one, "noisy union geometry": surface
  samples of the true hand and object in the object's generator frame, with Gaussian noise
  of ``coarse_noise`` (generator units, the [-1, 1] box) and a random affine distortion of
  ``coarse_affine`` (relative).

:func:`simulate_observations` is two steps, public for callers that need something between
them: :func:`run_observers` (every observer, drawing from one random stream) and
:func:`align_observer_outputs` (the alignment chain). The clip observers
(:func:`hoiguide.synth.clip.simulate_clip_observations`) run the first on every frame with
temporally correlated draws, sample the generator's object once on the reference frame, then
run the second per frame.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hoiguide.adapters.inpainting import OpenCVInpainter, object_image
from hoiguide.alignment import build_observations
from hoiguide.geometry import point_map_from_depth, sample_surface
from hoiguide.guidance.sampler import latent_to_mesh, sample
from hoiguide.hands import ProceduralHand
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.synth.scene import Scene
from hoiguide.types import Mesh, Observations, Similarity

log = logging.getLogger(__name__)

__all__ = ["ObserverNoise", "simulate_observations", "ObserverOutputs", "run_observers",
           "align_observer_outputs", "observe_masks", "observe_depth", "observe_hand",
           "inpaint_object", "coarse_hoi_geometry", "coarse_object_sample", "union_image",
           "scene_gen_to_camera", "stable_seed"]


@dataclass(frozen=True)
class ObserverNoise:
    """Strengths of the simulated observers' errors (see the module docstring).

    The defaults are our estimate of the real models' typical errors at a 256-512 px crop:
    a pixel or two of mask boundary error, a few % of metric scale error for MoGe-2, HaMeR's
    ~6-8 mm PA-MPJPE (about 6 degrees per joint) and centimetre-level placement error.
    """

    mask_boundary_px: float = 1.0
    mask_hole_rate: float = 0.1
    depth_scale: float = 0.05
    depth_noise: float = 0.004
    depth_tilt: float = 0.02
    hand_pose_deg: float = 6.0
    hand_shape: float = 0.3
    hand_rotation_deg: float = 5.0
    hand_scale: float = 0.05
    hand_translation_m: float = 0.01
    hand_depth_m: float = 0.03
    keypoint_px: float = 2.0
    inpaint_dilate_px: int = 3
    coarse_noise: float = 0.02
    coarse_affine: float = 0.05

    @classmethod
    def preset(cls, spec: "str | float | ObserverNoise") -> "ObserverNoise":
        """``"default"``, ``"none"`` (every error 0) or a number ``k`` (every default strength
        times ``k``; ``inpaint_dilate_px`` is kept, it is not an error)."""
        if isinstance(spec, ObserverNoise):
            return spec
        if isinstance(spec, str):
            s = spec.strip().lower()
            if s == "default":
                return cls()
            if s == "none":
                return cls().scaled(0.0)
            try:
                spec = float(s)
            except ValueError:
                raise ValueError(f"observer noise: expected 'default', 'none' or a number, got "
                                 f"{spec!r}") from None
        k = float(spec)
        if not (math.isfinite(k) and k >= 0):
            raise ValueError(f"observer noise: expected a finite strength >= 0, got {spec!r}")
        return cls().scaled(k)

    def scaled(self, k: float) -> "ObserverNoise":
        """Every strength times ``k`` (the inpainting dilation is kept)."""
        vals = {f.name: getattr(self, f.name) * k for f in dataclasses.fields(self)
                if f.name != "inpaint_dilate_px"}
        return dataclasses.replace(self, **vals)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def stable_seed(*parts: Any) -> int:
    """A seed from strings/numbers that is the same in every process (unlike ``hash``)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


# ---------------------------------------------------------------------- segmentation
def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / max(float(f.std()), 1e-12)


def _noisy_mask(mask: np.ndarray, px: float, hole_rate: float,
                rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    m = mask.astype(bool)
    if not m.any() or (px <= 0 and hole_rate <= 0):
        return m.copy()
    if px > 0:
        sd = distance_transform_edt(~m) - distance_transform_edt(m)   # > 0 outside
        sigma = max(2.0, 0.03 * max(m.shape))
        out = sd - px * _smooth_field(m.shape, sigma, rng) < 0.0
    else:
        out = m.copy()
    if hole_rate > 0 and rng.random() < hole_rate:
        ii, jj = np.nonzero(out)
        k = rng.integers(len(ii))
        extent = max(np.ptp(ii), np.ptp(jj), 1)
        ry, rx = extent * rng.uniform(0.03, 0.08, size=2)
        yy, xx = np.ogrid[:m.shape[0], :m.shape[1]]
        out &= ((yy - ii[k]) / ry) ** 2 + ((xx - jj[k]) / rx) ** 2 > 1.0
    return out


def observe_masks(scene: Scene, noise: ObserverNoise, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
    """Segmentation observer: noisy visible hand and object masks and a noisy amodal object
    mask (``(H, W)`` bool each); the object masks exclude the observed hand."""
    hand = _noisy_mask(scene.mask_hand, noise.mask_boundary_px, noise.mask_hole_rate, rng)
    obj = _noisy_mask(scene.mask_object, noise.mask_boundary_px, noise.mask_hole_rate, rng)
    amodal = _noisy_mask(scene.mask_object_amodal, noise.mask_boundary_px, 0.0, rng)
    return {"mask_hand": hand, "mask_object": obj & ~hand, "mask_object_amodal": amodal}


# ---------------------------------------------------------------------- monocular geometry
def observe_depth(scene: Scene, noise: ObserverNoise, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Monocular-geometry observer: ``(point_map (H, W, 3), valid (H, W), global_scale)``.

    Points are in the camera frame (metres, at the observer's wrong metric scale); only
    pixels of the hand or the object are valid (the reference whitens everything else).
    """

    H, W = scene.size
    d = scene.depth.astype(np.float64)
    valid = (d > 0) & (scene.mask_hand | scene.mask_object)
    s = float(math.exp(rng.normal(0.0, noise.depth_scale))) if noise.depth_scale > 0 else 1.0
    rel = np.ones((H, W))
    if noise.depth_noise > 0:
        rel += noise.depth_noise * _smooth_field((H, W), 1.5, rng)
    if noise.depth_tilt > 0:
        a, b = rng.uniform(-1, 1, size=2) * noise.depth_tilt
        u = (np.arange(W) + 0.5) / W - 0.5
        v = (np.arange(H) + 0.5) / H - 0.5
        rel += a * u[None, :] + b * v[:, None]
    dn = np.where(valid, s * d * rel, 0.0)
    return point_map_from_depth(dn, scene.camera), valid, s


# ---------------------------------------------------------------------- hand recovery
@functools.lru_cache(maxsize=4)
def _procedural_hand(side: str):

    return ProceduralHand(side=side)


def _random_rotation(deg: float, rng: np.random.Generator) -> torch.Tensor:

    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    ang = math.radians(abs(rng.normal(0.0, deg))) if deg > 0 else 0.0
    return axis_angle_to_matrix(torch.as_tensor(axis * ang, dtype=torch.float64))


def observe_hand(scene: Scene, noise: ObserverNoise, rng: np.random.Generator
                 ) -> tuple[Mesh, torch.Tensor, torch.Tensor]:
    """Hand-recovery observer: ``(hand_mesh, keypoints_3d (21, 3), keypoints_2d (21, 2))``.

    The mesh and 3D keypoints are in the observer's camera frame (metres); the 2D keypoints
    in pixels. When the scene records procedural-hand parameters the hand is re-posed with
    joint noise; otherwise only the global error is applied.
    """
    hp = scene.hand_params or {}
    verts = scene.hand_mesh.vertices.to(torch.float64)
    faces = scene.hand_mesh.faces
    kp3 = torch.as_tensor(scene.hand_keypoints_3d, dtype=torch.float64)
    if hp.get("model") == "procedural" and "hand_pose" in hp:
        model = _procedural_hand(hp.get("side", "right"))
        pose = torch.as_tensor(hp["hand_pose"], dtype=torch.float64).reshape(1, 45)
        betas = torch.as_tensor(hp.get("betas", [0.0] * model.num_betas),
                                dtype=torch.float64).reshape(1, -1)
        if noise.hand_pose_deg > 0:
            pose = pose + torch.as_tensor(rng.normal(0, math.radians(noise.hand_pose_deg),
                                                     size=(1, 45)))
            pose = model.clamp_pose(pose)
        if noise.hand_shape > 0:
            betas = betas + torch.as_tensor(rng.normal(0, noise.hand_shape, betas.shape))
        with torch.no_grad():
            out = model(global_orient=torch.as_tensor(hp["global_orient"],
                                                      dtype=torch.float64).reshape(1, 3),
                        hand_pose=pose, betas=betas,
                        transl=torch.as_tensor(hp["transl"], dtype=torch.float64).reshape(1, 3))
        verts, faces, kp3 = out.vertices[0], out.faces, out.keypoints[0]
    c = verts.mean(0)
    R = _random_rotation(noise.hand_rotation_deg, rng)
    sc = math.exp(rng.normal(0, noise.hand_scale)) if noise.hand_scale > 0 else 1.0
    t = torch.as_tensor([rng.normal(0, noise.hand_translation_m),
                         rng.normal(0, noise.hand_translation_m),
                         rng.normal(0, noise.hand_depth_m)], dtype=torch.float64)
    T = Similarity.about(c, sc, R, t)
    mesh = Mesh(T.apply(verts), faces)
    kp2 = scene.camera.project(torch.as_tensor(scene.hand_keypoints_3d, dtype=torch.float64))
    if noise.keypoint_px > 0:
        kp2 = kp2 + torch.as_tensor(rng.normal(0, noise.keypoint_px, size=(21, 2)))
    return mesh, T.apply(kp3), kp2.float()


# ---------------------------------------------------------------------- inpainting
def inpaint_object(image: np.ndarray, mask_hand: np.ndarray, mask_object_amodal: np.ndarray,
                   *, dilate_px: int = 3, size: int = 256, margin: float = 0.1) -> np.ndarray:
    """Inpainting observer: the object alone, ``(size, size, 4)`` uint8 RGBA.

    The real offline inpainter of :mod:`hoiguide.adapters.inpainting`: the hand region
    (dilated by ``dilate_px``) is filled by OpenCV's Telea inpainting, then
    :func:`~hoiguide.adapters.inpainting.object_image` cuts the object out with
    ``mask_object_amodal`` on white and crops a square with ``margin`` on each side.
    """

    if not np.asarray(mask_object_amodal, bool).any():
        raise ValueError("inpaint_object: the object mask is empty")
    filled = OpenCVInpainter(radius=5, method="telea", dilate_px=dilate_px)(
        np.ascontiguousarray(np.asarray(image)[..., :3], dtype=np.uint8),
        np.asarray(mask_hand, bool), "object")
    return object_image(filled, np.asarray(mask_object_amodal, bool), size=size, margin=margin)


# ---------------------------------------------------------------------- coarse HOI mesh
def scene_gen_to_camera(scene: Scene) -> Similarity:
    """The object's generator frame -> camera frame (recorded by the scene generator as
    ``metadata["gen_to_camera"]``; else: the object's bounding box centred and its longest
    side scaled to 1.8, axes of the camera)."""
    g = scene.metadata.get("gen_to_camera")
    if g is not None:
        return Similarity.from_dict(g)
    b = scene.object_mesh.bounds().to(torch.float64)
    c = b.mean(0)
    s = float((b[1] - b[0]).max()) / 1.8
    return Similarity(torch.tensor(s, dtype=torch.float64), torch.eye(3, dtype=torch.float64), c)


def coarse_hoi_geometry(scene: Scene, noise: ObserverNoise, rng: np.random.Generator, *,
                        backbone: Any = None, union_image: np.ndarray | None = None,
                        num_points: int = 8000, num_steps: int = 20, resolution: int = 65,
                        seed: int = 0) -> tuple[Mesh | np.ndarray, str]:
    """Coarse hand-object geometry in the generator frame and where it came from
    (``"generator"`` or ``"noisy_union"``; see the module docstring)."""
    if backbone is not None:
        from hoiguide.guidance.sampler import latent_to_mesh, sample

        if union_image is None:
            raise ValueError("coarse_hoi_geometry: a backbone needs union_image")
        latent = sample(backbone, union_image, num_steps=num_steps, seed=seed)
        mesh = latent_to_mesh(backbone, latent, resolution)
        if not mesh.is_empty:
            return mesh.to(dtype=torch.float64), "generator"
        log.warning("coarse HOI: the generator gave no surface; using the noisy union "
                    "geometry instead")

    both = Mesh.concatenate([scene.hand_mesh.to(dtype=torch.float64),
                             scene.object_mesh.to(dtype=torch.float64)])
    pts_cam = sample_surface(both, num_points, seed=int(rng.integers(2**31)))
    g2c = scene_gen_to_camera(scene)
    pts = np.asarray(g2c.inverse().apply(np.asarray(pts_cam, np.float64)))
    A = np.eye(3) + rng.normal(0, noise.coarse_affine, size=(3, 3)) if noise.coarse_affine > 0 \
        else np.eye(3)
    c = pts.mean(0)
    pts = (pts - c) @ A.T + c
    if noise.coarse_noise > 0:
        pts = pts + rng.normal(0, noise.coarse_noise, size=pts.shape)
    return pts, "noisy_union"


def coarse_object_sample(backbone: Any, object_image: np.ndarray, *, num_steps: int = 20,
                         resolution: int = 65, seed: int = 0) -> Mesh | None:
    """The generator's unguided sample of the object alone (generator frame), for ICP c
    (:func:`hoiguide.alignment.place_object`); ``None`` when it has no surface."""

    latent = sample(backbone, object_image, num_steps=num_steps, seed=seed)
    mesh = latent_to_mesh(backbone, latent, resolution)
    if mesh.is_empty:
        log.warning("coarse object: the generator gave no surface; the object keeps the "
                    "hand-object transform")
        return None
    return mesh.to(dtype=torch.float64)


def union_image(image: np.ndarray, union: np.ndarray) -> np.ndarray:
    """The generator's input for the coarse hand-object mesh: ``image`` (``(H, W, 3|4)``
    uint8) with every pixel outside the ``(H, W)`` bool ``union`` mask whitened, as
    ``(H, W, 4)`` uint8 RGBA (alpha 255 inside the union)."""
    rgb = np.where(union[..., None], image[..., :3], 255).astype(np.uint8)
    return np.concatenate([rgb, union[..., None].astype(np.uint8) * 255], -1)


# ---------------------------------------------------------------------- all together
@dataclass
class ObserverOutputs:
    """What the simulated observers report for one scene, before the alignment chain.

    Attributes:
        masks: ``mask_hand``, ``mask_object`` (visible, without the hand) and
            ``mask_object_amodal``: ``(H, W)`` bool each (:func:`observe_masks`).
        point_map: ``(H, W, 3)`` camera-frame points at the observer's metric scale
            (metres); ``point_valid`` ``(H, W)`` bool; ``depth_scale`` the drawn global scale
            (:func:`observe_depth`).
        hand_mesh, hand_keypoints_3d, keypoints_2d: the observed hand in the camera frame
            (metres) and its keypoints (``(21, 3)`` metres, ``(21, 2)`` pixels;
            :func:`observe_hand`).
        coarse_hoi, coarse_kind: the coarse hand-object geometry in the generator frame and
            where it came from (:func:`coarse_hoi_geometry`).
        object_image: the inpainted object, ``(s, s, 4)`` uint8 (:func:`inpaint_object`).
    """

    masks: dict[str, np.ndarray]
    point_map: np.ndarray
    point_valid: np.ndarray
    depth_scale: float
    hand_mesh: Mesh
    hand_keypoints_3d: torch.Tensor
    keypoints_2d: torch.Tensor
    coarse_hoi: Any
    coarse_kind: str
    object_image: np.ndarray


def run_observers(scene: Scene, noise: ObserverNoise, rng: Any, *, backbone: Any = None,
                  seed: int = 0, object_image_size: int = 256) -> ObserverOutputs:
    """Run every simulated observer on ``scene`` (segmentation, monocular geometry, hand
    recovery, coarse hand-object geometry, inpainting, in that order), drawing from ``rng``.

    Args:
        scene: a synthetic scene (its ground truth only simulates the observers).
        noise: the error strengths.
        rng: a :class:`numpy.random.Generator` or anything with the same ``normal`` /
            ``standard_normal`` / ``uniform`` / ``random`` / ``integers`` methods (e.g.
            :class:`hoiguide.synth.clip.CorrelatedDraws`); the same state gives the same
            outputs.
        backbone: when given, the coarse hand-object mesh is its unguided sample on the union
            crop (seeded by ``seed``); else noisy ground-truth geometry.
        seed: the backbone sample's seed.
        object_image_size: side of the square object image (pixels).

    Raises:
        ValueError: the observed object mask is empty (nothing to inpaint).
    """
    masks = observe_masks(scene, noise, rng)
    point_map, valid, depth_scale = observe_depth(scene, noise, rng)
    hand_mesh, kp3, kp2 = observe_hand(scene, noise, rng)
    union = masks["mask_hand"] | masks["mask_object"]
    coarse, coarse_kind = coarse_hoi_geometry(scene, noise, rng, backbone=backbone,
                                              union_image=union_image(scene.image, union),
                                              seed=seed)
    obj_img = inpaint_object(scene.image, masks["mask_hand"], masks["mask_object_amodal"],
                             dilate_px=noise.inpaint_dilate_px, size=object_image_size)
    return ObserverOutputs(masks=masks, point_map=point_map, point_valid=valid,
                           depth_scale=depth_scale, hand_mesh=hand_mesh, hand_keypoints_3d=kp3,
                           keypoints_2d=kp2, coarse_hoi=coarse, coarse_kind=coarse_kind,
                           object_image=obj_img)


def align_observer_outputs(scene: Scene, outputs: ObserverOutputs, *, noise: ObserverNoise,
                           seed: int = 0, alignment: Any = None, coarse_object: Mesh | None = None,
                           metadata: dict[str, Any] | None = None) -> Observations:
    """The alignment chain (:func:`hoiguide.alignment.build_observations`) on the observers'
    outputs for ``scene``: partial points, target maps, ICP a and b, and ICP c when
    ``coarse_object`` (the generator's object sample, generator frame) is given.

    ``metadata`` (e.g. a clip's id and frame index) is recorded beside the scene id, the noise
    strengths, the drawn depth scale, the coarse mesh's kind, ``seed`` and
    ``gen_to_image_true`` (the generator -> image similarity a perfect alignment would give:
    the observer's depth scale times the scene's generator -> camera map; diagnostics only).

    Returns:
        :class:`~hoiguide.types.Observations` in the image-aligned frame (metres).
    """
    g2c = scene_gen_to_camera(scene)
    g2i_true = Similarity(torch.tensor(outputs.depth_scale, dtype=torch.float64),
                          torch.eye(3, dtype=torch.float64),
                          torch.zeros(3, dtype=torch.float64)).compose(g2c)
    meta = {"scene_id": scene.scene_id, **(metadata or {}), "observer_noise": noise.to_dict(),
            "depth_scale": outputs.depth_scale, "coarse_hoi": outputs.coarse_kind,
            "seed": int(seed), "gen_to_image_true": g2i_true.to_dict()}
    m = outputs.masks
    return build_observations(
        camera=scene.camera, image=scene.image, mask_hand=m["mask_hand"],
        mask_object=m["mask_object"], object_image=outputs.object_image,
        point_map=outputs.point_map, point_valid=outputs.point_valid,
        hand_mesh=outputs.hand_mesh, coarse_hoi=outputs.coarse_hoi,
        hand_keypoints_3d=outputs.hand_keypoints_3d, keypoints_2d=outputs.keypoints_2d,
        mask_object_amodal=m["mask_object_amodal"], options=alignment, seed=seed,
        metadata=meta, coarse_object=coarse_object)


def simulate_observations(scene: Scene, *, backbone: Any = None,
                          noise: "str | float | ObserverNoise" = "default", seed: int = 0,
                          alignment: Any = None, object_image_size: int = 256,
                          rng: Any = None) -> Observations:
    """Run every simulated observer on ``scene`` and the alignment chain
    (:func:`run_observers`, then :func:`align_observer_outputs`).

    Args:
        scene: a synthetic scene (ground truth is used only to simulate the observers).
        backbone: when given, the coarse hand-object mesh is the backbone's unguided sample
            on the union crop (as in the reference), and its sample on the object image
            places the object (ICP c, :func:`hoiguide.alignment.place_object`); else noisy
            ground-truth geometry.
        noise: ``"default"``, ``"none"``, a strength multiplier or an :class:`ObserverNoise`.
        seed: seeds every observer (same seed, same observations) unless ``rng`` is given;
            also seeds the backbone's samples and the alignment.
        alignment: :class:`hoiguide.alignment.AlignmentOptions`.
        object_image_size: side of the square object image (pixels).
        rng: the observers' random stream (a :class:`numpy.random.Generator` or a
            duck-typed one such as :class:`hoiguide.synth.clip.CorrelatedDraws`); default
            ``numpy.random.default_rng(stable_seed("observe", scene.scene_id, seed))``.

    Returns:
        :class:`~hoiguide.types.Observations` in the image-aligned frame; ``metadata`` has
        the scene id, the noise strengths, the drawn depth scale, where the coarse mesh came
        from, the alignment diagnostics and ``gen_to_image_true`` (the generator -> image
        similarity a perfect alignment would give, for diagnostics only).
    """

    nz = ObserverNoise.preset(noise)
    if rng is None:
        rng = np.random.default_rng(stable_seed("observe", scene.scene_id, seed))
    outputs = run_observers(scene, nz, rng, backbone=backbone, seed=seed,
                            object_image_size=object_image_size)
    coarse_object = None
    if backbone is not None:
        coarse_object = coarse_object_sample(backbone, outputs.object_image, seed=seed)
    return align_observer_outputs(scene, outputs, noise=nz, seed=seed, alignment=alignment,
                                  coarse_object=coarse_object)
