"""Grasp synthesis: place a hand model against an object and close its fingers until contact.

Everything here is in the OBJECT frame (metres, the object as :func:`load_object` returns it,
centred at its bounding-box centre). The recipe, per attempt:

1. **Approach.** Pick a surface point ``p`` with outward normal ``n`` (area-weighted, biased
   toward the middle of the object's longest axis for power grasps). The palm will face
   ``-n``; the fingers point along a tangent direction: for ``power`` and ``hook`` grasps
   across the object's longest axis (so the fingers wrap around it, like holding a bottle),
   otherwise a random tangent. A random roll of up to 30 degrees is added.
2. **Pre-shape and contact.** The hand in a grasp-type pre-shape (fingers slightly curled)
   is rotated so its palm normal and finger direction match, then slid along ``-n`` until
   its closest vertex is ``clearance`` from the surface (bisection on the object's signed
   distance of the hand's vertices).
3. **Closing.** Each finger curls (its proximal, middle and distal joints together, with
   the grasp type's ratios) in small increments until one of its vertices is within
   ``contact`` of the surface; then its distal joints curl alone until the fingertip
   touches. A finger that would penetrate deeper than ``max_penetration`` stops at its
   previous state. Fingers a grasp type does not use curl to a relaxed pose without
   contact checks beyond penetration.
4. **Checks.** Penetration depth of hand vertices into the object and of object vertices
   into the hand (the hand model's analytic SDF) at most ``max_penetration`` (2 mm), and at
   least two fingers (one of them the thumb, except for ``hook``) in contact; otherwise
   another approach is tried.

The result :class:`Grasp` holds MANO-style parameters (``global_orient``, ``hand_pose``,
``betas``, ``transl``) in the object frame and contact statistics.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hoiguide.geometry import closest_points, sample_surface, signed_distance
from hoiguide.types import Mesh

log = logging.getLogger(__name__)

__all__ = ["GRASP_TYPES", "Grasp", "GraspError", "synthesize_grasp", "hand_frame"]

# per type: pre-shape curl (proximal, middle, distal), closing ratios per joint, fingers that
# must close onto the object (thumb, index, middle, ring, pinky), relaxed curl of the others
GRASP_TYPES: dict[str, dict[str, Any]] = {
    "power": {"preshape": 0.1, "ratios": (1.0, 0.9, 0.7), "active": (1, 1, 1, 1, 1),
              "relaxed": 0.0, "thumb_ratios": (0.6, 0.8, 0.8)},
    "precision": {"preshape": 0.05, "ratios": (0.8, 0.9, 0.6), "active": (1, 1, 1, 1, 0),
                  "relaxed": 0.35, "thumb_ratios": (0.7, 0.7, 0.7)},
    "pinch": {"preshape": 0.05, "ratios": (0.9, 0.9, 0.6), "active": (1, 1, 0, 0, 0),
              "relaxed": 0.5, "thumb_ratios": (0.8, 0.7, 0.6)},
    "hook": {"preshape": 0.15, "ratios": (0.7, 1.0, 0.9), "active": (0, 1, 1, 1, 1),
             "relaxed": 0.0, "thumb_ratios": (0.3, 0.3, 0.3)},
}


class GraspError(RuntimeError):
    """No acceptable grasp was found in the allowed attempts."""


@dataclass
class Grasp:
    """A hand pose holding an object (object frame, metres).

    Attributes:
        global_orient, hand_pose, betas, transl: the hand model's parameters (MANO layout:
            axis-angle radians, ``(3,)``, ``(45,)``, ``(num_betas,)``, ``(3,)`` metres).
        grasp_type: a key of :data:`GRASP_TYPES`.
        side: ``"right"`` or ``"left"``.
        stats: contact statistics: ``tip_distances_m`` (5 fingertip keypoints' unsigned
            distances to the surface, thumb..pinky), ``contact_fingers`` (fingers within
            ``contact``), ``median_contact_distance_m``, ``hand_penetration_m`` (deepest
            hand vertex inside the object), ``object_penetration_m`` (deepest object vertex
            inside the hand), ``attempts``.
    """

    global_orient: torch.Tensor
    hand_pose: torch.Tensor
    betas: torch.Tensor
    transl: torch.Tensor
    grasp_type: str
    side: str
    stats: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters (lists) with ``model``, ``side`` and ``grasp_type``."""
        return {"model": "procedural", "side": self.side, "grasp_type": self.grasp_type,
                "global_orient": self.global_orient.tolist(),
                "hand_pose": self.hand_pose.tolist(), "betas": self.betas.tolist(),
                "transl": self.transl.tolist()}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def hand_frame(model, betas: torch.Tensor) -> dict[str, np.ndarray]:
    """The rest hand's palm centre, finger direction (wrist -> middle knuckle) and palm normal
    (the side the fingers curl toward), in the model's canonical frame (no global rotation,
    no translation). Found from the model itself, so it works for any :class:`HandModel`."""
    with torch.no_grad():
        rest = model(betas=betas[None].to(torch.float64))
        curl = model(hand_pose=model.flexion_pose(torch.full((1, 5, 3), 0.5,
                                                             dtype=torch.float64)),
                     betas=betas[None].to(torch.float64))
    J = rest.joints[0].numpy()
    K = rest.keypoints[0].numpy()
    # OpenPose order: 0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring, 17-20 pinky
    wrist, mcp = K[0], K[[5, 9, 13, 17]]
    palm = 0.5 * (wrist + mcp.mean(0))
    fwd = _unit(K[9] - wrist)
    move = curl.keypoints[0].numpy()[[8, 12, 16, 20]] - K[[8, 12, 16, 20]]
    d = move.mean(0)
    normal = _unit(d - fwd * (d @ fwd))
    return {"palm": palm, "forward": fwd, "normal": normal, "joints": J}


def _rotation_from_frames(f0: np.ndarray, n0: np.ndarray, f1: np.ndarray,
                          n1: np.ndarray) -> np.ndarray:
    """Rotation R with R f0 = f1 and R n0 = n1 (each pair orthonormalised)."""
    def basis(f, n):
        f = _unit(f)
        n = _unit(n - f * (n @ f))
        return np.stack([f, n, np.cross(f, n)], 1)
    return basis(f1, n1) @ basis(f0, n0).T


def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


class _Evaluator:
    """Poses the hand and measures it against the object (object frame)."""

    def __init__(self, model, obj: Mesh, betas: torch.Tensor, side: str) -> None:
        self.model = model
        self.obj = obj.to(dtype=torch.float64)
        self.betas = betas.to(torch.float64)[None]
        self.part = model.vertex_part.cpu().numpy()
        # finger f (0 thumb .. 4 pinky) -> its three segment part ids (MANO joint order:
        # index 1-3, middle 4-6, pinky 7-9, ring 10-12, thumb 13-15)
        first = {0: 13, 1: 1, 2: 4, 3: 10, 4: 7}
        self.finger_parts = {f: (first[f], first[f] + 1, first[f] + 2) for f in range(5)}
        self.tip_ids = list(model.fingertip_vertex_ids)
        self.lo = self.obj.vertices.min(0).values
        self.hi = self.obj.vertices.max(0).values

    def forward(self, go: np.ndarray, curl: np.ndarray, transl: np.ndarray):
        pose = self.model.flexion_pose(torch.as_tensor(curl, dtype=torch.float64)[None])
        with torch.no_grad():
            return self.model(global_orient=torch.as_tensor(go, dtype=torch.float64)[None],
                              hand_pose=pose, betas=self.betas,
                              transl=torch.as_tensor(transl, dtype=torch.float64)[None])

    def sdf(self, points: torch.Tensor, band: float = 0.015) -> np.ndarray:
        """Signed distance to the object (metres, negative inside). Exact within ``band`` of
        the object's bounding box; farther points get their distance to the box (a lower
        bound, always larger than the contact thresholds), which skips most BVH queries."""

        p = points.to(torch.float64)
        gap = torch.maximum(self.lo - p, p - self.hi).clamp_min(0).norm(dim=-1)
        out = gap.clone()
        near = gap < band
        if bool(near.any()):
            out[near] = signed_distance(p[near], self.obj)
        return out.numpy()


def _approach(obj: Mesh, grasp_type: str, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface point, outward normal and finger direction for one attempt."""

    V = obj.vertices.detach().cpu().numpy().astype(np.float64)
    c = V.mean(0)
    cov = np.cov((V - c).T)
    w, E = np.linalg.eigh(cov)
    long_axis = E[:, -1]
    pts = sample_surface(obj, 400, seed=int(rng.integers(2**31)))
    pts = np.asarray(pts, np.float64)
    if grasp_type in ("power", "hook"):
        along = (pts - c) @ long_axis
        half = max(float(np.abs(along).max()), 1e-9)
        weight = np.exp(-0.5 * (along / (0.35 * half)) ** 2)
    else:
        weight = np.ones(len(pts))
    p = pts[rng.choice(len(pts), p=weight / weight.sum())]
    _, _, face = closest_points(torch.as_tensor(p[None]), obj.to(dtype=torch.float64))
    n = obj.to(dtype=torch.float64).face_normals()[int(face[0])].numpy()
    if grasp_type in ("power", "hook"):
        fdir = np.cross(n, long_axis)
        if np.linalg.norm(fdir) < 0.3:            # normal along the long axis: any tangent
            fdir = np.cross(n, E[:, 0])
    else:
        t = rng.standard_normal(3)
        fdir = t - n * (t @ n)
    fdir = _unit(fdir)
    roll = math.radians(rng.uniform(-30, 30))
    b = np.cross(n, fdir)
    fdir = _unit(math.cos(roll) * fdir + math.sin(roll) * b)
    if rng.random() < 0.5 and grasp_type in ("power", "hook"):
        fdir = -fdir
    return p, _unit(n), fdir


def synthesize_grasp(obj: Mesh, *, model=None, rng: np.random.Generator | None = None,
                     grasp_type: str | None = None, side: str = "right",
                     betas: torch.Tensor | None = None, clearance: float = 0.002,
                     contact: float = 0.003, max_penetration: float = 0.002,
                     max_attempts: int = 12, step: float = 0.04) -> Grasp:
    """Synthesise one grasp of ``obj`` (object frame, metres). See the module docstring.

    Args:
        obj: the object mesh (watertight preferred; signed distances use winding numbers).
        model: a :class:`hoiguide.hands.HandModel` with ``flexion_pose``, ``clamp_pose`` and
            ``vertex_part`` (default: ``ProceduralHand(side)``).
        rng: numpy generator (default: seeded 0).
        grasp_type: a key of :data:`GRASP_TYPES` (default: drawn by ``rng``).
        side: hand side for the default model.
        betas: hand shape (default: drawn by ``rng``, moderate).
        clearance: palm-to-surface gap after the approach, metres.
        contact: a finger is in contact within this distance, metres.
        max_penetration: allowed penetration depth, metres (issue: 2 mm).
        max_attempts: approaches tried before :class:`GraspError`.
        step: curl increment per closing iteration (fraction of the joint range).

    Raises:
        GraspError: no attempt met the checks.
    """
    if obj.is_empty:
        raise ValueError("synthesize_grasp: the object mesh is empty")
    rng = rng if rng is not None else np.random.default_rng(0)
    if model is None:
        from hoiguide.hands import ProceduralHand

        model = ProceduralHand(side=side)
    side = getattr(model, "side", side)
    if grasp_type is None:
        grasp_type = str(rng.choice(list(GRASP_TYPES), p=[0.45, 0.25, 0.2, 0.1]))
    if grasp_type not in GRASP_TYPES:
        raise ValueError(f"synthesize_grasp: unknown grasp type {grasp_type!r}; expected one "
                         f"of {sorted(GRASP_TYPES)}")
    if betas is None:
        betas = torch.zeros(model.num_betas, dtype=torch.float64)
        k = min(4, model.num_betas)
        betas[:k] = torch.as_tensor(rng.normal(0, 0.6, size=k))
    betas = torch.as_tensor(betas, dtype=torch.float64)
    spec = GRASP_TYPES[grasp_type]
    ev = _Evaluator(model, obj, betas, side)
    frame = hand_frame(model, betas)
    best: Grasp | None = None
    for attempt in range(1, max_attempts + 1):
        g = _attempt(ev, frame, obj, spec, grasp_type, side, betas, rng, clearance, contact,
                     max_penetration, step)
        if g is None:
            continue
        g.stats["attempts"] = attempt
        if g.stats["ok"]:
            return g
        if best is None or len(g.stats["contact_fingers"]) > len(best.stats["contact_fingers"]):
            best = g
    raise GraspError(f"no acceptable {grasp_type} grasp in {max_attempts} attempts"
                     + (f" (best: {len(best.stats['contact_fingers'])} fingers in contact, "
                        f"penetration {1000 * best.stats['hand_penetration_m']:.1f} mm hand into "
                        f"object, {1000 * best.stats['object_penetration_m']:.1f} mm object "
                        "into hand)"
                        if best else ""))


def _attempt(ev: _Evaluator, frame, obj: Mesh, spec, grasp_type: str, side: str,
             betas: torch.Tensor, rng: np.random.Generator, clearance: float, contact: float,
             max_penetration: float, step: float) -> Grasp | None:
    p, n, fdir = _approach(obj, grasp_type, rng)
    R = _rotation_from_frames(frame["forward"], frame["normal"], fdir, -n)
    go = _rotvec(R)
    # the model rotates about the wrist joint (its origin before transl): palm position
    wrist = frame["joints"][0]
    palm_rot = R @ (frame["palm"] - wrist) + wrist
    curl = np.full((5, 3), spec["preshape"])
    active = np.array(spec["active"], bool)
    curl[~active] = spec["relaxed"]

    def place(dist: float) -> np.ndarray:
        return p + n * dist - palm_rot

    # slide along -n until the closest vertex is `clearance` away (bisection)
    lo, hi = 0.0, 0.25
    out = ev.forward(go, curl, place(hi))
    if ev.sdf(out.vertices[0]).min() < clearance:
        return None                              # even far away it touches: bad approach
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        out = ev.forward(go, curl, place(mid))
        if ev.sdf(out.vertices[0]).min() < clearance:
            lo = mid
        else:
            hi = mid
    transl = place(hi)
    # close the fingers
    ratios = {f: np.asarray(spec["thumb_ratios"] if f == 0 else spec["ratios"]) for f in range(5)}
    done = ~active.copy()
    part = ev.part
    finger_mask = {f: np.isin(part, ev.finger_parts[f]) for f in range(5)}
    distal_mask = {f: np.isin(part, ev.finger_parts[f][1:]) for f in range(5)}
    stage = np.zeros(5, int)                      # 0: all joints, 1: distal joints, 2: done
    stage[done] = 2
    for _ in range(int(3 / step) + 2):
        if (stage == 2).all():
            break
        trial = curl.copy()
        for f in range(5):
            if stage[f] == 0:
                trial[f] = np.minimum(curl[f] + step * ratios[f], 1.0)
            elif stage[f] == 1:
                trial[f, 1:] = np.minimum(curl[f, 1:] + step, 1.0)
        out = ev.forward(go, trial, transl)
        d = ev.sdf(out.vertices[0])
        for f in range(5):
            if stage[f] == 2:
                continue
            m = finger_mask[f] if stage[f] == 0 else distal_mask[f]
            df = d[m]
            if df.min() < -0.6 * max_penetration:  # would penetrate: keep the previous state
                stage[f] = stage[f] + 1 if stage[f] == 0 else 2
                continue
            curl[f] = trial[f]
            if stage[f] == 0 and df.min() < contact:
                stage[f] = 1
            elif stage[f] == 1 and df.min() < contact and \
                    abs(d[ev.tip_ids[f]]) < contact + 0.002:
                stage[f] = 2
            if np.all(trial[f] >= 1.0) or (stage[f] == 1 and np.all(trial[f, 1:] >= 1.0)):
                stage[f] = 2
    # relaxed fingers must not penetrate either: open them until they do not
    out = ev.forward(go, curl, transl)
    d = ev.sdf(out.vertices[0])
    for f in np.nonzero(~active)[0]:
        while d[finger_mask[f]].min() < -max_penetration and curl[f].max() > 0:
            curl[f] = np.maximum(curl[f] - 0.1, 0.0)
            out = ev.forward(go, curl, transl)
            d = ev.sdf(out.vertices[0])
    # object vertices may still poke into the hand between its vertices: open the fingers
    # a little until they do not (the palm is `clearance` away already)
    obj_v = obj.vertices.to(torch.float64)[None]
    for _ in range(6):
        with torch.no_grad():
            deepest = -float(ev.model.sdf(obj_v, out)[0].min())
        if deepest <= max_penetration:
            break
        curl = np.maximum(curl - 0.25 * step, 0.0)
        out = ev.forward(go, curl, transl)
        d = ev.sdf(out.vertices[0])
    return _finish(ev, obj, go, curl, transl, betas, grasp_type, side, active, contact,
                   max_penetration, out, d)


def _finish(ev: _Evaluator, obj: Mesh, go, curl, transl, betas, grasp_type, side, active,
            contact, max_penetration, out, d) -> Grasp:
    tips = out.keypoints[0][[4, 8, 12, 16, 20]]
    tip_d = np.abs(ev.sdf(tips))
    fingers_close = []
    for f in range(5):
        m = np.isin(ev.part, ev.finger_parts[f])
        if d[m].min() < contact:
            fingers_close.append(f)
    obj_v = obj.vertices.to(torch.float64)[None]
    with torch.no_grad():
        hand_sdf = ev.model.sdf(obj_v, out)[0].numpy()
    hand_pen = float(max(0.0, -d.min()))
    obj_pen = float(max(0.0, -hand_sdf.min()))
    in_contact = [f for f in fingers_close]
    needs_thumb = bool(active[0])
    ok = (hand_pen <= max_penetration + 1e-4 and obj_pen <= max_penetration + 1e-4
          and len(in_contact) >= 2 and (0 in in_contact or not needs_thumb))
    contact_tips = [float(tip_d[f]) for f in in_contact]
    pose = ev.model.flexion_pose(torch.as_tensor(curl, dtype=torch.float64)[None])[0]
    stats = {"tip_distances_m": [float(x) for x in tip_d],
             "contact_fingers": in_contact,
             "median_contact_distance_m": float(np.median(contact_tips)) if contact_tips
             else float("nan"),
             "hand_penetration_m": hand_pen, "object_penetration_m": obj_pen,
             "curl": curl.tolist(), "ok": bool(ok)}
    return Grasp(global_orient=torch.as_tensor(go, dtype=torch.float64), hand_pose=pose,
                 betas=betas.clone(), transl=torch.as_tensor(transl, dtype=torch.float64),
                 grasp_type=grasp_type, side=side, stats=stats)
