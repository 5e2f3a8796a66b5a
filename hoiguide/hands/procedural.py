"""An open procedural hand: 21-keypoint skeleton, MANO-like parameters, a watertight skinned
mesh and an analytic signed distance function, all differentiable in torch.

No data file is needed: the rest hand is a smooth union of primitives (an extruded rounded
polygon for the palm, a rounded box for the wrist stub, one round cone per finger segment
and thumb segment) meshed once per process (dual contouring of the SDF on a grid, vertices
projected back onto the surface), rigged with linear blend skinning weights computed from
the distances to the parts, and posed like MANO.

Canonical frame (see :mod:`hoiguide.hands.base`): metres, wrist joint at the origin, fingers
along **-y**, palm facing **-z**, thumb on the **+x** side for the RIGHT hand (a right palm
seen from the front has its thumb on the viewer's right). The primitives are built as the
anatomical LEFT hand (thumb on -x) and the right hand is their mirror image ``x -> -x``
with MANO-mirrored parameters (``_MIRRORED_SIDE``); both sides take the same parameter
conventions as MANO's left and right layers.

Pose parameters: ``hand_pose`` holds 15 axis-angle triples (MANO joint order) expressed in
each joint's **anatomical frame**: component 0 is **flexion** about the joint's flexion
axis (positive curls the finger toward the palm), component 1 is **twist** about the bone,
component 2 is **abduction** in the palm plane (positive moves the finger toward the thumb
side for the right hand). For the four fingers the anatomical axes are the canonical axes
turned by the finger's small splay angle (flexion ~ about +x); the thumb's frame is turned
so that its flexion curls it across the palm. ``global_orient`` is a rotation in the
canonical frame about the wrist. :attr:`ProceduralHand.pose_limits` gives per joint, per
component bounds (radians); :meth:`ProceduralHand.flexion_pose` maps curl amounts to poses.

Shape parameters ``betas`` (``num_betas = 10``; each acts multiplicatively as
``exp(c * beta)``, so ``beta = +-1`` is a plausible adult variation and any value keeps the
hand valid):

====  ==================  =====================================================
 0    overall size        ``c = 0.06`` (all lengths)
 1    finger length       ``c = 0.06`` (the four fingers' phalanges)
 2    palm width          ``c = 0.05`` (palm and wrist across, finger spacing)
 3    thickness           ``c = 0.08`` (finger radii, palm and wrist thickness)
 4    palm length         ``c = 0.05`` (wrist to knuckles)
 5    thumb length        ``c = 0.06`` (the thumb's three segments)
6-9   unused              (reserved; no effect)
====  ==================  =====================================================

Mesh vertices follow the shape by blending per-part affine maps with the skinning weights;
the SDF uses the shaped primitives. At ``betas = 0`` and rest the mesh lies on the SDF's
zero level (vertices to ~1e-6 m). Posed by plain linear blend skinning (the default, like
MANO) the mesh departs from the rigidly posed primitives near bent joints: 0.2-0.5 mm on
average, 2-3 mm at the 99th percentile at 45-90 degrees of flexion (corners cut on the
extensor side, skin folded into the volume on the flexor side); points 1.5-4 mm off the
surface get the same inside/outside answer from both 97-99 % of the time.
``surface_projection=1`` adds one Newton step of every vertex onto the posed SDF (skin
buried deeper than 3 mm, a fold, is left alone; the step is differentiated exactly):
agreement >= 99.5 % except in self-penetrating poses, ~10x the cost of a forward pass.

Vertex ids depend on ``detail`` (and may change between library versions): use
:attr:`ProceduralHand.vertex_part`, :attr:`~ProceduralHand.fingertip_vertex_ids` and the
keypoints rather than hard-coded ids.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from hoiguide.geometry.isosurface import extract_isosurface, grid_points
from hoiguide.hands.base import (
    FINGER_JOINTS,
    FINGERS,
    MANO_PARENTS,
    HandModel,
    HandOutput,
    assemble_keypoints,
    kinematic_chain,
    mirror_axis_angle,
    mirror_points,
    mirror_transforms,
    skin,
    transforms_matrix,
)
from hoiguide.rotations import axis_angle_to_matrix

__all__ = ["ProceduralHand"]

log = logging.getLogger(__name__)

NUM_BETAS = 10
_MCP = [1, 4, 10, 7]  # index, middle, ring, pinky knuckles (MANO joint ids)
_BETA_RATES = (0.06, 0.06, 0.05, 0.08, 0.05, 0.06)

# --------------------------------------------------------------------------------------
# the rest hand (right, betas = 0), metres
# --------------------------------------------------------------------------------------

#: per finger (index, middle, ring, pinky): knuckle (MCP) position, splay angle in degrees
#: (positive toward the little finger, +x), phalanx lengths (MCP-PIP, PIP-DIP, DIP-tip
#: centre) and radii at MCP, PIP, DIP, tip.
_FINGER_SPEC = {
    "index": ((-0.0305, -0.0860, 0.0), -8.0, (0.0395, 0.0240, 0.0165),
              (0.0099, 0.0091, 0.0082, 0.0074)),
    "middle": ((-0.0100, -0.0890, 0.0), -1.5, (0.0430, 0.0270, 0.0175),
               (0.0102, 0.0094, 0.0084, 0.0076)),
    "ring": ((0.0105, -0.0865, 0.0), 6.0, (0.0400, 0.0260, 0.0170),
             (0.0096, 0.0088, 0.0079, 0.0072)),
    "pinky": ((0.0295, -0.0790, 0.0), 14.0, (0.0320, 0.0195, 0.0155),
              (0.0086, 0.0079, 0.0071, 0.0065)),
}
#: thumb: CMC (MANO thumb1) position, direction angles (degrees: in the palm plane from -y
#: toward -x, then out of the plane toward the palm), lengths (CMC-MCP, MCP-IP, IP-tip
#: centre), radii at CMC, MCP, IP, tip, and the direction its pad faces (before
#: orthogonalisation against the bone).
_THUMB_SPEC = ((-0.0170, -0.0250, -0.0080), (40.0, 22.0), (0.0420, 0.0310, 0.0200),
               (0.0140, 0.0116, 0.0104, 0.0092), (0.92, 0.05, -0.38))
#: palm: convex polygon in the x-y plane (inner outline; the surface is this polygon
#: extruded by +-half_thickness in z and rounded by ``rounding``), centre z.
_PALM_POLY = ((-0.0320, -0.0760), (-0.0200, -0.0805), (0.0000, -0.0825), (0.0190, -0.0800),
              (0.0310, -0.0720), (0.0290, -0.0300), (0.0200, 0.0030), (-0.0180, 0.0030),
              (-0.0290, -0.0380))
_PALM_HALF_THICKNESS = 0.0045
_PALM_ROUNDING = 0.0090
_PALM_Z = -0.0035
#: metacarpal heads (knuckles, part of the palm): offset from each finger's MCP joint and
#: radius as a fraction of the finger's radius there
_KNUCKLE_OFFSET = (0.0, 0.0030, 0.0025)
_KNUCKLE_RADIUS = 0.95
#: wrist/forearm stub: rounded box centre, half extents, rounding
_WRIST_BOX = ((0.0010, 0.0260, 0.0), (0.0130, 0.0200, 0.0015), 0.0125)
#: smooth-union radii (metres)
_K_WRIST, _K_THUMB, _K_KNUCKLE, _K_JOINT = 0.0200, 0.0120, 0.0060, 0.0020

#: pose limits (right hand), radians, per component (flexion, twist, abduction), for the
#: three joints of a finger and of the thumb
_LIMITS_FINGER = (((-0.30, 1.57), (-0.20, 0.20), (-0.35, 0.35)),     # MCP
                  ((-0.05, 1.75), (-0.05, 0.05), (-0.05, 0.05)),     # PIP
                  ((-0.15, 1.40), (-0.05, 0.05), (-0.05, 0.05)))     # DIP
_LIMITS_THUMB = (((-0.50, 0.70), (-0.40, 0.60), (-0.60, 0.60)),      # CMC
                 ((-0.25, 1.00), (-0.20, 0.20), (-0.20, 0.20)),      # MCP
                 ((-0.35, 1.40), (-0.05, 0.05), (-0.05, 0.05)))      # IP


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class _Skeleton:
    """The rest right hand, float64 numpy."""

    joints: np.ndarray      # (16, 3) MANO order
    ends: np.ndarray        # (16, 3) end of each segment (child joint or tip centre); row 0 unused
    radii: np.ndarray       # (16, 2) radius at the start and end of each segment; row 0 unused
    frames: np.ndarray      # (16, 3, 3) anatomical frames (columns: flexion axis, bone, palmar)
    length_group: np.ndarray  # (16,) 0 palm, 1 finger, 2 thumb (which length beta applies)
    palm_poly: np.ndarray   # (K, 2) counter-clockwise
    tip_dirs: np.ndarray    # (5, 3) distal direction of each finger, FINGERS order


def _skeleton() -> _Skeleton:
    joints = np.zeros((16, 3))
    ends = np.zeros((16, 3))
    radii = np.zeros((16, 2))
    frames = np.tile(np.eye(3), (16, 1, 1))
    group = np.zeros(16, np.int64)
    tip_dirs = np.zeros((5, 3))
    palmar = np.array([0.0, 0.0, -1.0])
    for fi, name in enumerate(FINGERS):
        ids = FINGER_JOINTS[fi]
        if name == "thumb":
            pos, (a_in, a_out), lengths, rad, pad = _THUMB_SPEC
            a_in, a_out = math.radians(a_in), math.radians(a_out)
            bone = np.array([-math.sin(a_in) * math.cos(a_out), -math.cos(a_in) * math.cos(a_out),
                             -math.sin(a_out)])
            pad = np.asarray(pad, np.float64)
            pal = _unit(pad - bone * (pad @ bone))
            g = 2
        else:
            pos, ang, lengths, rad = _FINGER_SPEC[name]
            ang = math.radians(ang)
            bone = np.array([math.sin(ang), -math.cos(ang), 0.0])
            pal = palmar
            g = 1
        bone = _unit(bone)
        flex = np.cross(bone, pal)
        A = np.stack([flex, bone, pal], 1)
        p = np.asarray(pos, np.float64)
        for k, j in enumerate(ids):
            joints[j] = p
            p = p + lengths[k] * bone
            ends[j] = p
            radii[j] = (rad[k], rad[k + 1])
            frames[j] = A
            group[j] = g
        tip_dirs[fi] = bone
    poly = np.asarray(_PALM_POLY, np.float64)
    area = 0.5 * np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    if area < 0:
        poly = poly[::-1].copy()
    e = np.roll(poly, -1, 0) - poly
    cross = e[:, 0] * np.roll(e, -1, 0)[:, 1] - e[:, 1] * np.roll(e, -1, 0)[:, 0]
    assert (cross > 0).all(), "palm polygon must be convex"
    return _Skeleton(joints, ends, radii, frames, group, poly, tip_dirs)


# --------------------------------------------------------------------------------------
# primitives (torch, differentiable)
# --------------------------------------------------------------------------------------


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x.clamp_min(1e-30 if x.dtype == torch.float64 else 1e-20))


def _round_cone(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r1: torch.Tensor,
                r2: torch.Tensor) -> torch.Tensor:
    """Exact distance to the convex hull of the spheres ``(a, r1)`` and ``(b, r2)``.

    ``p`` ``(..., N, 3)``; ``a, b`` ``(..., 1, 3)``; ``r1, r2`` ``(..., 1)``; returns
    ``(..., N)``. Needs ``|b - a| > |r1 - r2|``."""
    ba = b - a
    l2 = (ba * ba).sum(-1)
    rr = r1 - r2
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pa = p - a
    y = (pa * ba).sum(-1)
    z = y - l2
    q = pa * l2[..., None] - ba * y[..., None]
    x2 = (q * q).sum(-1)
    y2 = y * y * l2
    z2 = z * z * l2
    k = torch.sign(rr) * rr * rr * x2
    d_b = _safe_sqrt(x2 + z2) * il2 - r2
    d_a = _safe_sqrt(x2 + y2) * il2 - r1
    d_s = (_safe_sqrt(x2 * a2 * il2) + y * rr) * il2 - r1
    return torch.where(torch.sign(z) * a2 * z2 > k, d_b,
                       torch.where(torch.sign(y) * a2 * y2 < k, d_a, d_s))


def _polygon2d(q: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """Exact signed distance to a convex CCW polygon: ``q`` ``(B, N, 2)``, ``verts``
    ``(B, K, 2)`` -> ``(B, N)``, negative inside."""
    v0 = verts[:, None]                                     # (B, 1, K, 2)
    e = torch.roll(verts, -1, 1)[:, None] - v0              # (B, 1, K, 2)
    w = q[:, :, None] - v0                                  # (B, N, K, 2)
    t = ((w * e).sum(-1) / (e * e).sum(-1)).clamp(0.0, 1.0)
    diff = w - e * t[..., None]
    d2 = (diff * diff).sum(-1).min(-1).values
    cross = e[..., 0] * w[..., 1] - e[..., 1] * w[..., 0]    # > 0 on the inner side
    inside = (cross > 0).all(-1)
    d = _safe_sqrt(d2)
    return torch.where(inside, -d, d)


def _extruded(d2: torch.Tensor, z: torch.Tensor, half: torch.Tensor,
              rounding: torch.Tensor) -> torch.Tensor:
    """Extrude a 2D distance by ``+-half`` along z and round by ``rounding``."""
    wz = z.abs() - half
    outside = _safe_sqrt(d2.clamp_min(0) ** 2 + wz.clamp_min(0) ** 2)
    return outside + torch.maximum(d2, wz).clamp_max(0) - rounding


def _rounded_box(p: torch.Tensor, center: torch.Tensor, half: torch.Tensor,
                 rounding: torch.Tensor) -> torch.Tensor:
    """``p`` ``(B, N, 3)``; ``center, half`` ``(B, 1, 3)``; ``rounding`` ``(B, 1)``."""
    q = (p - center).abs() - half
    outside = _safe_sqrt((q.clamp_min(0) ** 2).sum(-1))
    return outside + q.max(-1).values.clamp_max(0) - rounding


def _smin(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Polynomial smooth minimum (blend radius ``k``; never above ``min(a, b)``, at most
    ``k / 4`` below it)."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1 - h)


# --------------------------------------------------------------------------------------
# shape and SDF of the right hand (module functions on a dict of rest tensors)
# --------------------------------------------------------------------------------------


def _rig_from_skeleton(sk: _Skeleton) -> dict[str, torch.Tensor]:
    f64 = torch.float64
    return {"J0": torch.tensor(sk.joints, dtype=f64), "E0": torch.tensor(sk.ends, dtype=f64),
            "radii0": torch.tensor(sk.radii, dtype=f64),
            "frames": torch.tensor(sk.frames, dtype=f64),
            "poly0": torch.tensor(sk.palm_poly, dtype=f64),
            "group": torch.tensor(sk.length_group, dtype=torch.long)}


def _shape(rig: dict[str, torch.Tensor], betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Shaped rest-hand parameters (right hand) for ``betas`` ``(B, 10)``."""
    dt, dev = betas.dtype, betas.device
    B = betas.shape[0]
    rates = torch.tensor(_BETA_RATES, dtype=dt, device=dev)
    f = torch.exp(betas[:, :len(_BETA_RATES)] * rates)           # (B, 6)
    s, fl, pw, th, pl, tl = f.unbind(-1)
    J0 = rig["J0"].to(dt)
    E0 = rig["E0"].to(dt)
    A = rig["frames"].to(dt)
    palm_scale = s[:, None] * torch.stack([pw, pl, th], -1)      # (B, 3)
    L = torch.stack([torch.ones_like(s), fl, tl], -1)[:, rig["group"]]  # (B, 16)
    joints: list[torch.Tensor] = []
    for j, p in enumerate(MANO_PARENTS):
        if p <= 0:
            joints.append(palm_scale * J0[j])
        else:
            joints.append(joints[p] + (s * L[:, p])[:, None] * (J0[j] - J0[p]))
    J = torch.stack(joints, 1)                                   # (B, 16, 3)
    E = J + (s[:, None] * L)[..., None] * (E0 - J0)              # (B, 16, 3)
    radii = rig["radii0"].to(dt) * (s * th)[:, None, None]       # (B, 16, 2)
    # per-part linear maps for the vertices: segments scale along the bone by their length
    # factor and across by the thickness; the palm part scales per axis
    thb = th[:, None].expand(B, 16)
    D = torch.stack([thb, L, thb], -1) * s[:, None, None]        # (B, 16, 3)
    M = A @ (D[..., None] * A.transpose(-1, -2))                 # (B, 16, 3, 3)
    M = torch.cat([torch.diag_embed(palm_scale)[:, None], M[:, 1:]], 1)
    poly = rig["poly0"].to(dt) * palm_scale[:, None, :2]         # (B, K, 2)
    tz = s * th
    c, half, rnd = _WRIST_BOX
    return {
        "J": J, "E": E, "radii": radii, "M": M, "poly": poly,
        "palm_half": (_PALM_HALF_THICKNESS * tz)[:, None],
        "palm_round": (_PALM_ROUNDING * tz)[:, None],
        "palm_z": (_PALM_Z * tz)[:, None],
        "box_c": (torch.tensor(c, dtype=dt, device=dev) * palm_scale)[:, None],
        "box_half": (torch.tensor(half, dtype=dt, device=dev) * palm_scale)[:, None],
        "box_round": (rnd * tz)[:, None],
        "knuckles": J[:, _MCP] + torch.tensor(_KNUCKLE_OFFSET, dtype=dt, device=dev) *
        palm_scale[:, None],
        "knuckle_r": _KNUCKLE_RADIUS * radii[:, _MCP, 0],
    }


def _part_distances(x: torch.Tensor, shp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Primitive distances for points ``x`` ``(B, 16, N, 3)`` given in the rest frame of each
    part (right hand): ``palm``, ``box`` ``(B, N)`` and ``cones`` ``(B, 15, N)``."""
    xp = x[:, 0]
    palm = _extruded(_polygon2d(xp[..., :2], shp["poly"]), xp[..., 2] - shp["palm_z"],
                     shp["palm_half"], shp["palm_round"])
    box = _rounded_box(xp, shp["box_c"], shp["box_half"], shp["box_round"])
    kn = xp[:, None] - shp["knuckles"][:, :, None]                   # (B, 4, N, 3)
    knuckles = (_safe_sqrt((kn * kn).sum(-1)) - shp["knuckle_r"][..., None]).min(1).values
    r = shp["radii"][:, 1:]
    cones = _round_cone(x[:, 1:], shp["J"][:, 1:, None], shp["E"][:, 1:, None],
                        r[..., :1], r[..., 1:])                  # (B, 15, N)
    return {"palm": palm, "box": box, "knuckles": knuckles, "cones": cones}


def _combine(d: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hand's SDF from its primitives (the blend structure)."""
    cones = d["cones"]                                           # (B, 15, N), MANO order
    body = _smin(_smin(d["palm"], d["knuckles"], _K_KNUCKLE), d["box"], _K_WRIST)
    body = _smin(body, cones[:, 12], _K_THUMB)                   # thumb metacarpal (thenar)
    prox = torch.stack([cones[:, j - 1] for j in (1, 4, 7, 10)], 0).min(0).values
    body = _smin(body, prox, _K_KNUCKLE)
    tails = [_smin(cones[:, a - 1], cones[:, b - 1], _K_JOINT)
             for a, b in ((2, 3), (5, 6), (8, 9), (11, 12), (14, 15))]
    tail = torch.stack(tails, 0).min(0).values
    return _smin(body, tail, _K_JOINT)


def _posed_sdf(points: torch.Tensor, G: torch.Tensor, P: torch.Tensor,
               shp: dict[str, torch.Tensor]) -> torch.Tensor:
    """SDF of the posed right hand: ``points`` ``(B, N, 3)``, joint rotations ``G``
    ``(B, 16, 3, 3)`` and positions ``P`` ``(B, 16, 3)``, shaped parameters ``shp``."""
    # rest-frame coordinates of every point for every part: G^T (x - P) + J
    x = torch.einsum("bjkl,bjnk->bjnl", G, points[:, None] - P[:, :, None]) + \
        shp["J"][:, :, None]
    return _combine(_part_distances(x, shp))


#: surface projection leaves skin buried deeper than this alone (folds on the flexor side
#: of a bent joint: pulling them out would turn faces inside out), fading in over 2 mm
_PROJECT_DEPTH = 0.003


def _newton_step(x: torch.Tensor, sdf: Any, depth: float | None = None) -> torch.Tensor:
    """One Newton step of points ``x`` ``(B, N, 3)`` onto the zero level of ``sdf``:
    ``x - f(x) g / |g|^2`` with ``g = grad f(x)``. When ``x`` carries a graph the step is
    differentiated exactly (the gradient ``g`` is built with ``create_graph``). With
    ``depth``, points deeper than ``depth`` inside are left where they are (the step fades
    out between ``depth`` and ``depth + 2 mm``)."""
    if x.requires_grad:
        f = sdf(x)
        (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    else:
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            fd = sdf(xd)
            (g,) = torch.autograd.grad(fd.sum(), xd)
        f = fd.detach()
    step = g / (g * g).sum(-1, keepdim=True).clamp_min(1e-6)
    if depth is not None:
        f = f * ((f + depth + 0.002) / 0.002).clamp(0.0, 1.0)
    return x - f[..., None] * step


def _rest_sdf(points: torch.Tensor, shp: dict[str, torch.Tensor]) -> torch.Tensor:
    """SDF of the unposed right hand at ``points`` ``(B, N, 3)``."""
    x = points[:, None].expand(-1, 16, -1, -1)
    return _combine(_part_distances(x, shp))


# --------------------------------------------------------------------------------------
# the template: mesh + skinning, built once per process
# --------------------------------------------------------------------------------------

#: grid spacing (metres) per detail level
_SPACING = {0: 0.0055, 1: 0.0042, 2: 0.0030, 3: 0.0021}


@dataclass(frozen=True)
class _Template:
    vertices: np.ndarray      # (V, 3) float64, right hand, rest, betas 0
    faces: np.ndarray         # (F, 3) int64
    weights: np.ndarray       # (V, 16) float64
    part: np.ndarray          # (V,) int64
    tip_ids: tuple[int, ...]  # thumb..pinky


class ProceduralHand(HandModel):
    """The open procedural hand (see the module docstring for frames and parameters).

    Args:
        side: ``"right"`` or ``"left"`` (mirror image, MANO-mirrored parameters).
        detail: mesh resolution (contouring grid spacing): 0 (5.5 mm, ~2.1k vertices),
            1 (default, 4.2 mm, ~3.7k), 2 (3 mm, ~7.2k), 3 (2.1 mm, ~15k). The mesh is built
            once per process and detail level (0.1-1 s) and shared by every instance.
        surface_projection: Newton steps of the skinned vertices onto the posed SDF (0:
            plain linear blend skinning, fast; 1: mesh and SDF agree to ~0.5 mm, ~10x
            slower). See the module docstring.

    Attributes:
        pose_limits: ``(lower, upper)``, each ``(15, 3)`` radians per joint (MANO order) and
            component (flexion, twist, abduction) of ``hand_pose``; mirrored for the left.
        vertex_part: ``(V,)`` int64: 0 palm (and wrist stub), 1..15 the finger segment moved
            by that MANO joint (1 = index proximal phalanx, ..., 13 = thumb metacarpal).
        skinning_weights: ``(V, 16)`` float64 linear-blend-skinning weights (rows sum to 1).
        template_vertices: ``(V, 3)`` float64 rest vertices of the right hand.
    """

    def __init__(self, side: str = "right", detail: int = 1, *,
                 surface_projection: int = 0) -> None:
        super().__init__()
        if int(surface_projection) != surface_projection or surface_projection < 0:
            raise ValueError(f"ProceduralHand: expected surface_projection to be an integer "
                             f">= 0, got {surface_projection!r}")
        self.surface_projection = int(surface_projection)
        if side not in ("right", "left"):
            raise ValueError(f"ProceduralHand: expected side 'right' or 'left', got {side!r}")
        if detail not in _SPACING:
            raise ValueError(f"ProceduralHand: expected detail in {sorted(_SPACING)}, got "
                             f"{detail!r}")
        self.side = side
        self.detail = int(detail)
        self.num_betas = NUM_BETAS
        sk = _skeleton()
        tpl = _template(self.detail)
        f64 = torch.float64
        self.register_buffer("template_vertices", torch.tensor(tpl.vertices, dtype=f64))
        faces = torch.tensor(tpl.faces, dtype=torch.long)
        self.register_buffer("faces", faces[:, [0, 2, 1]] if side == _MIRRORED_SIDE else faces)
        self.register_buffer("skinning_weights", torch.tensor(tpl.weights, dtype=f64))
        self.register_buffer("vertex_part", torch.tensor(tpl.part, dtype=torch.long))
        self.fingertip_vertex_ids = tpl.tip_ids
        self.register_buffer("rest_joints0", torch.tensor(sk.joints, dtype=f64))
        self.register_buffer("rest_ends0", torch.tensor(sk.ends, dtype=f64))
        self.register_buffer("radii0", torch.tensor(sk.radii, dtype=f64))
        self.register_buffer("frames", torch.tensor(sk.frames, dtype=f64))
        self.register_buffer("palm_poly0", torch.tensor(sk.palm_poly, dtype=f64))
        self.register_buffer("length_group", torch.tensor(sk.length_group, dtype=torch.long))
        lo, hi = _limits_right()
        if side == _MIRRORED_SIDE:
            lo, hi = _mirror_limits(lo, hi)
        self.register_buffer("_lower", lo)
        self.register_buffer("_upper", hi)
        self.register_buffer("_flex_upper", _limits_right()[1][:, 0].clone())

    # ------------------------------------------------------------------------------------
    @property
    def pose_limits(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self._lower, self._upper

    def _buffer_device(self) -> torch.device:
        return self.template_vertices.device

    def clamp_pose(self, hand_pose: torch.Tensor) -> torch.Tensor:
        """Clamp ``hand_pose`` ``(B, 45)`` (radians) component-wise into
        :attr:`pose_limits` (gradient zero where clamped)."""
        if not isinstance(hand_pose, torch.Tensor) or hand_pose.ndim != 2 or \
                hand_pose.shape[1] != 45:
            raise ValueError(f"ProceduralHand.clamp_pose: expected hand_pose of shape (B, 45), "
                             f"got {tuple(getattr(hand_pose, 'shape', ()))}")
        lo = self._lower.reshape(45).to(hand_pose)
        hi = self._upper.reshape(45).to(hand_pose)
        return torch.maximum(torch.minimum(hand_pose, hi), lo)

    def flexion_pose(self, amounts: torch.Tensor) -> torch.Tensor:
        """Curl amounts to a pose.

        Args:
            amounts: ``(B, 5, 3)``: per finger (thumb, index, middle, ring, pinky) and joint
                (proximal, middle, distal: for the thumb CMC, MCP, IP), how far to curl: 0 is
                the flat open hand, 1 the joint's flexion limit (a closed fist). Linear in
                between (and beyond, unclamped; use :meth:`clamp_pose`).

        Returns:
            ``(B, 45)`` ``hand_pose`` (MANO joint order) with only flexion components set;
            differentiable w.r.t. ``amounts``. The same values work for both sides.
        """
        if not isinstance(amounts, torch.Tensor) or amounts.ndim != 3 or \
                tuple(amounts.shape[1:]) != (5, 3):
            raise ValueError(f"ProceduralHand.flexion_pose: expected amounts of shape "
                             f"(B, 5, 3), got {tuple(getattr(amounts, 'shape', ()))}")
        if not amounts.is_floating_point():
            amounts = amounts.float()
        B = amounts.shape[0]
        order = torch.tensor([j - 1 for ids in FINGER_JOINTS for j in ids],
                             device=amounts.device)
        flex = torch.zeros(B, 15, dtype=amounts.dtype, device=amounts.device)
        flex = flex.index_copy(1, order, amounts.reshape(B, 15))
        flex = flex * self._flex_upper.to(amounts)
        zeros = torch.zeros_like(flex)
        return torch.stack([flex, zeros, zeros], -1).reshape(B, 45)

    def _rig(self) -> dict[str, torch.Tensor]:
        return {"J0": self.rest_joints0, "E0": self.rest_ends0, "radii0": self.radii0,
                "frames": self.frames, "poly0": self.palm_poly0, "group": self.length_group}

    def _shape(self, betas: torch.Tensor) -> dict[str, torch.Tensor]:
        return _shape(self._rig(), betas)

    # ------------------------------------------------------------------------------------
    def forward(self, global_orient: torch.Tensor | None = None,
                hand_pose: torch.Tensor | None = None, betas: torch.Tensor | None = None,
                transl: torch.Tensor | None = None) -> HandOutput:
        """Pose and shape the hand.

        Args:
            global_orient: ``(B, 3)`` axis-angle (radians) about the wrist, canonical frame.
            hand_pose: ``(B, 45)`` per-joint axis-angle in the joints' anatomical frames
                (flexion, twist, abduction), MANO joint order. Not clamped (see
                :meth:`clamp_pose`).
            betas: ``(B, 10)`` shape (module docstring).
            transl: ``(B, 3)`` metres.

        Returns:
            :class:`~hoiguide.hands.base.HandOutput` in the posed frame (metres); vertices
            by linear blend skinning, then :attr:`surface_projection` Newton steps onto
            the posed SDF when that is set.
        """
        given_betas = betas is not None
        go, hp, betas, transl = self._prepare(global_orient, hand_pose, betas, transl)
        if self.side == _MIRRORED_SIDE:
            go, hp, transl = mirror_axis_angle(go), mirror_axis_angle(hp), mirror_points(transl)
        dt = go.dtype
        B = go.shape[0]
        shp = self._shape(betas)
        J = shp["J"]
        v0 = self.template_vertices.to(dt)
        W = self.skinning_weights.to(dt)
        if given_betas:
            J0 = self.rest_joints0.to(dt)
            c = J - (shp["M"] @ J0[..., None])[..., 0]                       # (B, 16, 3)
            Mv = torch.einsum("vj,bjkl->bvkl", W, shp["M"])
            v_shaped = (Mv @ v0[..., None])[..., 0] + torch.einsum("vj,bjk->bvk", W, c)
        else:
            v_shaped = v0.expand(B, -1, -1)
        A = self.frames.to(dt)[1:]
        R = axis_angle_to_matrix(hp.reshape(B, 15, 3))
        local = A @ R @ A.transpose(-1, -2)
        local = torch.cat([axis_angle_to_matrix(go)[:, None], local], 1)
        G, P = kinematic_chain(local, J, MANO_PARENTS, transl)
        verts = skin(v_shaped, W, G, P, J)
        for _ in range(int(self.surface_projection)):
            verts = _newton_step(verts, lambda x: _posed_sdf(x, G, P, shp), _PROJECT_DEPTH)
        T = transforms_matrix(G, P)
        if self.side == _MIRRORED_SIDE:
            verts, P, J, T = mirror_points(verts), mirror_points(P), mirror_points(J), \
                mirror_transforms(T)
        kp = assemble_keypoints(P, verts, self.fingertip_vertex_ids)
        return HandOutput(vertices=verts, keypoints=kp, joints=P, transforms=T,
                          faces=self.faces, betas=betas, rest_joints=J)

    def sdf(self, points: torch.Tensor, output: HandOutput) -> torch.Tensor:
        """Signed distance of the posed hand ``output`` at ``points``.

        Args:
            points: ``(B, N, 3)`` in ``output``'s posed frame, metres (same ``B`` as
                ``output``).
            output: what :meth:`forward` of this model returned (its ``transforms`` and
                ``betas`` are used, so gradients flow to the pose and shape that made it).

        Returns:
            ``(B, N)`` metres, **negative inside**: a smooth union of the posed primitives
            (each part moves rigidly with its joint), in the promoted dtype of ``points``
            and ``output``. Differentiable w.r.t. ``points``, pose and shape; 1-Lipschitz,
            the exact distance near the hand outside the blends, a lower bound far away
            (short by at most the blends' allowance, ~1 cm at 0.5 m). Agrees with the
            mesh exactly at rest; posed, the skinned mesh departs from it near bent joints
            (see the module docstring and ``surface_projection``).
        """
        if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"ProceduralHand.sdf: expected points of shape (B, N, 3), got "
                             f"{tuple(getattr(points, 'shape', ()))}")
        T = output.transforms
        if T.ndim != 4 or tuple(T.shape[1:]) != (16, 4, 4):
            raise ValueError(f"ProceduralHand.sdf: expected output.transforms of shape "
                             f"(B, 16, 4, 4), got {tuple(T.shape)}")
        if points.shape[0] != T.shape[0]:
            raise ValueError(f"ProceduralHand.sdf: points have batch {points.shape[0]} but "
                             f"the hand output has batch {T.shape[0]}")
        if not points.is_floating_point():
            raise TypeError(f"ProceduralHand.sdf: expected floating points, got {points.dtype}")
        dt = torch.promote_types(points.dtype, T.dtype)
        points, T = points.to(dt), T.to(dt)
        betas = output.betas if output.betas is not None else torch.zeros(
            T.shape[0], NUM_BETAS, dtype=dt, device=T.device)
        if self.side == _MIRRORED_SIDE:
            points, T = mirror_points(points), mirror_transforms(T)
        shp = self._shape(betas.to(dt))
        return _posed_sdf(points, T[..., :3, :3], T[..., :3, 3], shp)

    def extra_repr(self) -> str:
        return (f"side={self.side!r}, detail={self.detail}, vertices="
                f"{self.template_vertices.shape[0]}, faces={self.faces.shape[0]}")


# --------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------


def _limits_right() -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.zeros(15, 3, dtype=torch.float64)
    hi = torch.zeros(15, 3, dtype=torch.float64)
    for fi, ids in enumerate(FINGER_JOINTS):
        table = _LIMITS_THUMB if FINGERS[fi] == "thumb" else _LIMITS_FINGER
        for k, j in enumerate(ids):
            for c in range(3):
                lo[j - 1, c], hi[j - 1, c] = table[k][c]
    return lo, hi


#: the side produced by mirroring the built (anatomically left) primitives
_MIRRORED_SIDE = "right"


def _mirror_limits(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Limits for MANO-mirrored parameters (components 1 and 2 change sign)."""
    lo2, hi2 = lo.clone(), hi.clone()
    lo2[:, 1:], hi2[:, 1:] = -hi[:, 1:], -lo[:, 1:]
    return lo2, hi2


# --------------------------------------------------------------------------------------
# template construction
# --------------------------------------------------------------------------------------


def _grid_bounds(sk: _Skeleton, margin: float) -> np.ndarray:
    """Axis-aligned box around the rest hand's primitives, ``(2, 3)``."""
    ends = sk.ends[1:]
    r = sk.radii[1:].max(1, keepdims=True)
    lo = np.minimum(sk.joints[1:] - r, ends - r).min(0)
    hi = np.maximum(sk.joints[1:] + r, ends + r).max(0)
    c, half, rnd = (np.asarray(x) for x in _WRIST_BOX)
    lo = np.minimum(lo, c - half - rnd)
    hi = np.maximum(hi, c + half + rnd)
    pal = _PALM_HALF_THICKNESS + _PALM_ROUNDING
    lo = np.minimum(lo, np.r_[sk.palm_poly.min(0) - _PALM_ROUNDING, _PALM_Z - pal])
    hi = np.maximum(hi, np.r_[sk.palm_poly.max(0) + _PALM_ROUNDING, _PALM_Z + pal])
    return np.stack([lo - margin, hi + margin])


def _sample_grid(sdf: Any, bounds: np.ndarray, h: float) -> tuple[torch.Tensor, np.ndarray]:
    """The SDF on a grid of spacing ``h`` (float32), computed exactly only near the surface:
    a grid of spacing ``2 h`` first, trilinearly interpolated, then exact values wherever the
    interpolant is within ``h + 2 sqrt(3) h`` of zero (the SDF is 1-Lipschitz, so signs
    elsewhere and the values at both ends of every sign-changing edge are exact)."""

    n_coarse = np.ceil((bounds[1] - bounds[0]) / (2 * h)).astype(int) + 1
    hi = bounds[0] + (n_coarse - 1) * 2 * h
    b = np.stack([bounds[0], hi])
    res_c = tuple(int(r) for r in n_coarse)
    res_f = tuple(2 * r - 1 for r in res_c)

    def evaluate(pts: torch.Tensor) -> torch.Tensor:
        return torch.cat([sdf(c) for c in torch.split(pts, 32768)]) if len(pts) else \
            pts.new_zeros(0)

    coarse = evaluate(grid_points(b, res_c).reshape(-1, 3)).reshape(res_c)
    fine = torch.nn.functional.interpolate(coarse[None, None], size=res_f, mode="trilinear",
                                           align_corners=True)[0, 0]
    band = (fine.abs() < (1 + 2 * math.sqrt(3)) * h).reshape(-1)
    pts = grid_points(b, res_f).reshape(-1, 3)
    flat = fine.reshape(-1).clone()
    flat[band] = evaluate(pts[band])
    return flat.reshape(res_f), b


@lru_cache(maxsize=None)
def _template(detail: int) -> _Template:
    """Mesh and rig the rest right hand (once per process and detail level)."""
    import time


    t0 = time.perf_counter()
    sk = _skeleton()
    rig = _rig_from_skeleton(sk)
    f64 = torch.float64
    h = _SPACING[detail]
    shp32 = _shape(rig, torch.zeros(1, NUM_BETAS))
    with torch.no_grad():
        grid, bounds = _sample_grid(lambda q: _rest_sdf(q[None], shp32)[0],
                                    _grid_bounds(sk, 2 * h), h)
    t1 = time.perf_counter()
    mesh = extract_isosurface(grid, bounds, method="auto")
    if mesh.metadata.get("touches_boundary"):
        raise RuntimeError("procedural hand: the grid does not contain the hand")
    v = mesh.vertices.detach().to(f64)
    f = mesh.faces.clone()
    v, f = _largest_component(v, f)
    t2 = time.perf_counter()
    nbr, deg = _neighbours(v.shape[0], f)
    # even out the contouring's vertices, then put them back on the surface
    v = (v + 0.5 * (_neighbour_mean(v, nbr, deg) - v)).float()
    v = _project(v, lambda q: _rest_sdf(q[None], shp32)[0], iters=2)
    t3 = time.perf_counter()
    with torch.no_grad():
        d = _part_distances(v[None, None].expand(1, 16, -1, -1), shp32)
    v = v.to(f64)
    w, part = _weights(d, nbr, deg)
    tips = _tip_ids(v.numpy(), part, sk)
    log.debug("procedural hand template (detail %d): %d vertices, %d faces; grid %.2f s, "
              "contour %.2f s, smooth %.2f s, rig %.2f s", detail, v.shape[0], f.shape[0],
              t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)
    return _Template(v.numpy(), f.numpy(), w, part, tips)


def _largest_component(v: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the largest connected component (label propagation over the edges)."""
    n = v.shape[0]
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    lab = torch.arange(n)
    while True:
        m = torch.minimum(lab[e[:, 0]], lab[e[:, 1]])
        new = lab.scatter_reduce(0, e[:, 0], m, "amin").scatter_reduce(0, e[:, 1], m, "amin")
        new = new[new]
        if torch.equal(new, lab):
            break
        lab = new
    uniq, counts = torch.unique(lab, return_counts=True)
    if len(uniq) == 1:
        return v, f
    keep = lab == uniq[counts.argmax()]
    remap = torch.cumsum(keep.long(), 0) - 1
    log.debug("procedural hand: dropped %d small mesh components", len(uniq) - 1)
    return v[keep], remap[f[keep[f[:, 0]]]]


def _neighbours(n: int, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed edge list ``(E, 2)`` (both directions, unique) and vertex degrees."""
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = torch.unique(torch.cat([e, e.flip(1)]), dim=0)
    deg = torch.bincount(e[:, 0], minlength=n).to(torch.float64)
    return e, deg


def _neighbour_mean(x: torch.Tensor, nbr: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x).index_add_(0, nbr[:, 0], x[nbr[:, 1]])
    return out / deg.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def _project(v: torch.Tensor, sdf: Any, iters: int = 3) -> torch.Tensor:
    """Newton steps onto the zero level: ``x <- x - f(x) grad f / |grad f|^2``."""
    for _ in range(iters):
        x = v.clone().requires_grad_(True)
        d = sdf(x)
        (g,) = torch.autograd.grad(d.sum(), x)
        with torch.no_grad():
            v = v - (d / (g * g).sum(-1).clamp_min(1e-6))[:, None] * g
    return v.detach()


def _weights(d: dict[str, torch.Tensor], nbr: torch.Tensor, deg: torch.Tensor,
             sigma: float = 0.0025, smooth_iters: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Skinning weights from distances to the 16 parts: a softmax of ``-distance / sigma``
    over the nearest part, its parent and its children, then smoothed over the mesh."""
    body = torch.minimum(torch.minimum(d["palm"], d["box"]), d["knuckles"])
    part_d = torch.cat([body[:, None], d["cones"]], 1)[0]
    D = part_d.T                                                 # (V, 16)
    part = D.argmin(1)
    # parts within two steps of each other in the kinematic tree (a vertex never takes
    # weight from a part of another finger, however close)
    adj = torch.eye(16, dtype=torch.float64)
    for j, p in enumerate(MANO_PARENTS):
        if p >= 0:
            adj[j, p] = adj[p, j] = 1.0
    allowed = (adj @ adj) > 0
    rel = D - D.min(1, keepdim=True).values
    w = torch.exp(-rel / sigma) * allowed[part]
    w = (w / w.sum(1, keepdim=True)).double()
    for _ in range(smooth_iters):
        w = 0.5 * w + 0.5 * _neighbour_mean(w, nbr, deg)
    w = torch.where(w < 1e-3, torch.zeros_like(w), w)
    w = w / w.sum(1, keepdim=True)
    return w.double().numpy(), part.numpy().astype(np.int64)


def _tip_ids(v: np.ndarray, part: np.ndarray, sk: _Skeleton) -> tuple[int, ...]:
    ids = []
    for fi, joints in enumerate(FINGER_JOINTS):
        j = joints[2]
        cand = np.nonzero(part == j)[0]
        proj = (v[cand] - sk.joints[j]) @ sk.tip_dirs[fi]
        ids.append(int(cand[proj.argmax()]))
    return tuple(ids)
