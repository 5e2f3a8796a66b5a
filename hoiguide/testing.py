"""Test scaffolding users and the test-suite share: analytic flow backbones and a synthetic
hand-object scene with a known answer. Everything runs in milliseconds on a CPU.

Two backbones, both passing the backbone contract tests (``tests/test_backbones_contract.py``),
one per time convention:

``GaussianGridBackbone`` (``data_at_1``, like Hunyuan3D-2): the latent is a coarse ``G^3`` grid of SDF values (divided by
``scale``) over ``bounds``; ``decode_sdf`` interpolates it trilinearly (analytic,
differentiable in the latent). The "data distribution" is Gaussian, ``N(mu, tau^2 I)`` with
``mu`` the grid of a generic sphere (conditioned: its radius changes by at most
``condition_strength`` with the object image's brightness; unconditional: radius ``radius``),
and the velocity is its EXACT rectified-flow velocity, combined by classifier-free guidance
(Hunyuan's ``data_at_1`` convention): the posterior mean of the data given ``x_sigma`` is
``D = mu + k (x - sigma mu)``, ``k = sigma tau^2 / (sigma^2 tau^2 + (1 - sigma)^2)``, and
``v = (D - x) / (1 - sigma)``. The image barely matters, so unguided sampling gives a bumpy
version of the generic sphere: the WRONG shape for the ellipsoid of the scene below.

``EllipsoidFlowBackbone`` (``data_at_0``, diffusers' convention): the latent parametrises an
ellipsoid directly; the velocity is the exact straight line to a target read off the image's
mean colour, so it depends on the image.

``make_scene``: an ellipsoid object (known generator-frame shape placed by a known
``gen_to_image``) held by a capsule-like "hand" (a stretched icosphere) that partly occludes
it, rendered with the library's renderer into masks, normals and disparity; 21 hand
keypoints are fixed hand vertices. Perturbations of the hand and of ``gen_to_image`` give the
engine something to recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hoiguide.backbones.base import TimeConvention
from hoiguide.geometry import extract_isosurface, grid_points
from hoiguide.render import render
from hoiguide.rotations import axis_angle_to_matrix
from hoiguide.types import Camera, Mesh, Observations, Similarity

BOUNDS = ((-1.1, -1.1, -1.1), (1.1, 1.1, 1.1))


def ellipsoid_sdf(p: torch.Tensor, axes, center=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """First-order distance estimate of an ellipsoid (negative inside), generator units."""
    a = torch.as_tensor(axes, dtype=p.dtype)
    q = (p - torch.as_tensor(center, dtype=p.dtype)) / a
    k0 = q.norm(dim=-1)
    k1 = (q / a).norm(dim=-1)
    return k0 * (k0 - 1.0) / k1.clamp_min(1e-9)


class GaussianGridBackbone:
    """See the module docstring."""

    dtype = torch.float64
    device = torch.device("cpu")
    time_convention = TimeConvention.DATA_AT_1
    bounds = BOUNDS
    default_resolution = 33

    def __init__(self, grid: int = 10, radius: float = 0.6, tau: float = 0.5,
                 scale: float = 0.1, condition_strength: float = 0.02) -> None:
        self.G = int(grid)
        self.latent_shape = (self.G, self.G, self.G)
        self.tau = float(tau)
        self.scale = float(scale)
        self.radius = float(radius)
        self.condition_strength = float(condition_strength)
        self.mu = self.encode_shape(lambda p: p.norm(dim=-1) - radius)

    def coarse_points(self) -> torch.Tensor:
        ax = torch.linspace(BOUNDS[0][0], BOUNDS[1][0], self.G, dtype=torch.float64)
        return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)

    def encode_shape(self, sdf_fn) -> torch.Tensor:
        """The latent of a shape given by its SDF function (generator frame)."""
        return (sdf_fn(self.coarse_points()) / self.scale)[None]

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, int(num_steps) + 1, dtype=torch.float64)

    def encode_condition(self, image):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"expected (H, W, 3|4), got {arr.shape}")
        # the condition: the sphere's radius grows with the object's mean brightness (by
        # condition_strength at most), so conditional and unconditional velocities differ
        rgb = arr[..., :3].astype(np.float64) / 255.0
        mask = arr[..., 3] > 0 if arr.shape[-1] == 4 else np.ones(arr.shape[:2], bool)
        bright = float(rgb[mask].mean()) if mask.any() else 0.5
        r = self.radius * (1.0 + self.condition_strength * (bright - 0.5))
        return {"mu": self.encode_shape(lambda p: p.norm(dim=-1) - r)}

    def clean(self, latent: torch.Tensor, sigma: float,
              mu: torch.Tensor | None = None) -> torch.Tensor:
        mu = self.mu if mu is None else mu
        s = float(sigma)
        k = s * self.tau ** 2 / (s * s * self.tau ** 2 + (1 - s) ** 2)
        return mu + k * (latent - s * mu)

    def velocity(self, latent, sigma, condition, guidance_scale=None):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        if s >= 1.0:
            raise ValueError("velocity undefined at sigma = 1")
        x = latent.to(torch.float64)
        mu_c = None if condition is None else condition["mu"]
        v_c = (self.clean(x, s, mu_c) - x) / (1.0 - s)
        if guidance_scale is None:
            return v_c
        v_u = (self.clean(x, s) - x) / (1.0 - s)
        return v_u + float(guidance_scale) * (v_c - v_u)

    def decode_sdf(self, latent: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        lat = latent.to(torch.float64)
        B = lat.shape[0]
        pts = points.to(torch.float64)
        if pts.ndim == 2:
            pts = pts[None].expand(B, -1, -1)
        lo, hi = BOUNDS[0][0], BOUNDS[1][0]
        g = (pts - lo) / (hi - lo) * 2 - 1  # [-1, 1], align_corners=True
        # grid_sample wants (x, y, z) -> (W, H, D) of an input (B, C, D, H, W)
        vol = lat.permute(0, 3, 2, 1)[:, None]  # latent[i, j, k] at (x_i, y_j, z_k)
        out = F.grid_sample(vol, g[:, :, None, None, :], mode="bilinear",
                            padding_mode="border", align_corners=True)
        return out.reshape(B, -1) * self.scale


class EllipsoidFlowBackbone:
    """Analytic flow backbone. Latent ``(2, 3)``: row 0 the centre, row 1 the log semi-axes.

    Time convention ``data_at_0`` (diffusers' default), sampling sigma 1 -> 0. The "model" is the
    exact straight-line velocity towards a target latent read off the image's mean colour:
    ``v = (x - x_target) / sigma``; the unconditional target is a centred sphere of radius 0.5.
    Its SDF is a scaled implicit ellipsoid, negative inside.
    """

    latent_shape = (2, 3)
    dtype = torch.float64
    device = torch.device("cpu")
    time_convention = TimeConvention.DATA_AT_0
    bounds = ((-1.2, -1.2, -1.2), (1.2, 1.2, 1.2))
    default_resolution = 33

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64)

    @staticmethod
    def target_from_rgb(rgb: torch.Tensor) -> torch.Tensor:
        centre = 0.2 * (rgb - 0.5)
        log_axes = torch.log(0.4 + 0.3 * rgb)
        return torch.stack([centre, log_axes])[None]

    def encode_condition(self, image):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"expected (H, W, 3|4), got {arr.shape}")
        mask = arr[..., 3] > 0 if arr.shape[-1] == 4 else np.ones(arr.shape[:2], bool)
        rgb = torch.as_tensor(arr[..., :3][mask].mean(0) / 255.0, dtype=torch.float64)
        uncond = torch.tensor([[[0.0, 0.0, 0.0], [math.log(0.5)] * 3]], dtype=torch.float64)
        return {"cond": self.target_from_rgb(rgb), "uncond": uncond}

    def velocity(self, latent, sigma, condition, guidance_scale=None):
        s = torch.as_tensor(sigma, dtype=torch.float64)
        if bool((s <= 0).any()):
            raise ValueError("the analytic velocity is undefined at the data end (sigma = 0)")
        s = s.reshape(-1, 1, 1) if s.ndim == 1 else s
        x = latent.to(torch.float64)
        v_c = (x - condition["cond"]) / s
        if guidance_scale is None:
            return v_c
        v_u = (x - condition["uncond"]) / s
        return v_u + guidance_scale * (v_c - v_u)

    def decode_sdf(self, latent, points):
        b = latent.shape[0]
        pts = points if points.ndim == 3 else points[None].expand(b, -1, -1)
        centre, axes = latent[:, 0, None, :], torch.exp(latent[:, 1, None, :])
        q = (pts.to(latent.dtype) - centre) / axes
        k = torch.sqrt((q * q).sum(-1) + 1e-12)
        return (k - 1.0) * axes.min(-1).values


# --------------------------------------------------------------------------------------
# synthetic scene
# --------------------------------------------------------------------------------------

OBJECT_AXES = (0.85, 0.45, 0.5)   # generator units (the generic sphere has radius 0.6)
KEYPOINT_IDS = tuple(range(0, 162, 8))[:21]


def hand_mesh_canonical() -> Mesh:
    """A capsule-like stand-in for a hand: an icosphere stretched to 8 x 3 x 1.6 cm (no symmetry axis)."""
    import trimesh

    tm = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    v = np.asarray(tm.vertices) * np.array([0.04, 0.015, 0.008])
    return Mesh(torch.as_tensor(v, dtype=torch.float32),
                torch.as_tensor(np.asarray(tm.faces), dtype=torch.long))


@dataclass
class Scene:
    camera: Camera
    object_true: Mesh          # image frame
    hand_true: Mesh            # image frame
    gen_to_image_true: Similarity
    observations: Observations
    hand_perturbation: Similarity   # applied to the true hand to give observations.hand_mesh


def similarity_about(center, scale=1.0, axis=(0.0, 0.0, 1.0), angle_deg=0.0,
                     translation=(0.0, 0.0, 0.0)) -> Similarity:
    ax = torch.tensor(axis, dtype=torch.float64)
    R = axis_angle_to_matrix(ax / ax.norm() * math.radians(angle_deg))
    return Similarity.about(torch.as_tensor(center, dtype=torch.float64), scale, R,
                            torch.tensor(translation, dtype=torch.float64))


def make_scene(size: int = 64, hand_offset=(0.0, 0.028, -0.012),
               hand_perturbation: Similarity | None = None,
               object_perturbation: Similarity | None = None) -> Scene:
    """The scene: camera at the origin looking at an ellipsoid at z = 0.3 m, a hand across
    its lower front. ``hand_offset`` places the hand's centre relative to the object's
    centre (metres). Perturbations act on the OBSERVED hand (``observations.hand_mesh``) and
    on the observed ``gen_to_image`` (composed after the true one)."""

    cam = Camera.from_fov(30.0, size, size)
    g2i = Similarity(torch.tensor(0.05, dtype=torch.float64),
                     axis_angle_to_matrix(torch.tensor([0.3, 0.5, 0.0], dtype=torch.float64)),
                     torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64))
    pts = grid_points(BOUNDS, 41, dtype=torch.float64)
    obj_gen = extract_isosurface(ellipsoid_sdf(pts, OBJECT_AXES), BOUNDS)
    obj = obj_gen.transformed(g2i)
    hand = hand_mesh_canonical().to(dtype=torch.float64)
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.35], dtype=torch.float64))
    hand_true = Mesh(hand.vertices @ R.T + g2i.translation +
                     torch.tensor(hand_offset, dtype=torch.float64), hand.faces)
    r = render([hand_true, obj], cam, amodal=True)
    mask_hand = r.mesh_id == 0
    mask_object = r.mesh_id == 1
    amodal = r.amodal[1] > 0.5
    kp_true = hand_true.vertices[list(KEYPOINT_IDS)]
    kp2d = cam.project(kp_true)
    hp = hand_perturbation or Similarity.identity()
    op = object_perturbation or Similarity.identity()
    hand_obs = hand_true.transformed(hp)
    obs = Observations(
        camera=cam,
        object_image=np.full((32, 32, 4), 200, np.uint8),
        mask_hand=mask_hand, mask_object=mask_object, mask_object_amodal=amodal,
        hand_mesh=hand_obs.to(dtype=torch.float32),
        hand_keypoints_3d=hand_obs.vertices[list(KEYPOINT_IDS)].float(),
        keypoints_2d=kp2d.float(),
        target_normals=r.normals.detach().float(),
        target_disparity=r.disparity.detach().float(),
        target_valid=r.mask,
        gen_to_image=op.compose(g2i))
    return Scene(cam, obj, hand_true, g2i, obs, hp)
