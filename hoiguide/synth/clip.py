"""Synthetic hand-object CLIPS with ground truth: one grasp over ``T`` frames while the hand
turns the object in front of a static camera (an in-hand inspection), and simulated
observers whose errors are correlated in time.

How a clip is made (:func:`make_clip`):

1. :func:`hoiguide.synth.make_scene` makes the grasp, the camera and the object exactly as
   for a single-image scene (same ``seed`` / ``index`` -> same object, grasp and camera).
   Its view is the middle of the motion (up to the drift ``B`` and the framing shift ``s``
   below).
2. Hand and object move TOGETHER (the grasp holds) by a rigid motion in the camera frame
   ``P_t(x) = R_t (x - c) + c + d_t + s``: ``R_t`` turns about an axis through the object's
   centre ``c`` that is roughly perpendicular to the line of sight (within 15 degrees),
   by ``rotation_deg * (u_t - 1/2)`` with ``u_t = t / (T - 1)`` (so frames 0 and ``T - 1``
   are ``rotation_deg`` apart, at a constant angular speed); ``d_t = A (u_t - 1/2) + B
   sin(pi u_t)`` is a small smooth drift (``|A| = translation_m``, ``|B| = translation_m /
   4``, mostly across the image); ``s`` is one constant shift (zero unless needed) that keeps
   the hand and the object inside the image in every frame. Of ``axis_candidates`` random
   axes, the one whose frames show the most of the object (low-resolution renders) is kept.
3. Optional finger motion (``finger_motion=True``): the fingers that are NOT in contact in
   the grasp open and close smoothly (``curl_t = max(curl - a_f (1 - cos(2 pi u_t +
   phi_f)) / 2, 0)``, ``a_f`` up to 0.3 of the joint's flexion range): they only ever
   open from the grasp's pose, away from the object, and the contact fingers keep their pose,
   so contact holds. A grasp whose five fingers all touch gets no finger motion (recorded).
4. Every frame is rendered like a single-image scene (:func:`hoiguide.render.render` with
   amodal masks, then :func:`hoiguide.synth.appearance.shade` with one material, skin tone
   and lighting for the whole clip; lights are fixed to the camera) into a
   :class:`hoiguide.synth.Scene`. Frames where the hand hides the whole object are kept
   (``object_hidden`` in ``clip.json``).

Frames: every 3D quantity of frame ``t`` is in the (static) OpenCV camera frame (+x right,
+y down, +z forward, metres, camera at the origin). The **object frame** is the frame the
object was loaded in (metres, bounding-box centre at the origin;
:func:`hoiguide.synth.objects.load_object`); its **generator frame** is the object frame
scaled so its longest side is 1.8 (:data:`hoiguide.synth.generate.GEN_BOX_SIDE`).

On disk a clip is one folder (format ``hoiguide-synth-clip``, version :data:`CLIP_VERSION`)::

    clip.json          format, version, clip id, fps, frame times (seconds), reference frame,
                       per frame: folder, time, object_to_camera and gen_to_camera
                       (similarities: object / generator frame -> camera frame), the hand
                       model's parameters in the camera frame (hand_params), visible object
                       pixels and fraction, object_hidden, angle from the middle view;
                       motion (axis, centre, angles, drift, shift, finger motion);
                       provenance (object spec, seed, index, image size, grasp type)
    object.ply         the ground-truth object in its OBJECT frame (metres)
    frame_000/ ...     one scene folder per frame (format hoiguide-synth-scene, see
                       :mod:`hoiguide.synth.scene`): image, masks, depth, normals, GT meshes
                       in the camera frame, keypoints

A clips set is a folder of clip folders plus ``manifest.json`` with format
``hoiguide-synth-clips`` (the layout of :func:`hoiguide.synth.scene.write_manifest`, with
``clips`` / ``num_clips`` in place of ``scenes`` / ``num_scenes``), so tools tell clip sets
from scene sets by the manifest's format (:func:`is_clips_set`).

Observers (:func:`simulate_clip_observations`): the single-image observers of
:mod:`hoiguide.synth.observers` run on every frame (segmentation, monocular geometry, hand
recovery, inpainting, coarse hand-object geometry, then the alignment chain), but their
random numbers are **temporally correlated**: every random draw an observer makes in frame
``t`` continues the same draw of frame ``t - 1`` as an AR(1) process in standard-normal space,
``z_t = rho z_{t-1} + sqrt(1 - rho^2) e_t`` (``rho = temporal_correlation``, default 0.9;
uniform and integer draws go through the normal CDF, a Gaussian copula). So the mask
boundary wobble field, the depth scale and tilt, the hand's joint noise and its global
rotation / scale / translation error each follow a smooth random walk with lag-1
correlation ``rho`` and the single-image marginal strengths of :class:`ObserverNoise`
(``rho = 0``: independent frames). With a generator backbone, the coarse object sample is
drawn ONCE (on the reference frame's object image: the object is rigid) and placed in
every frame by that frame's ICP to its partial points (``gen_to_image``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hoiguide.io import read_json, write_json
from hoiguide.render import render
from hoiguide.synth.appearance import (
    Texture,
    random_lighting,
    random_material,
    random_skin_tone,
    vertex_colors,
)
from hoiguide.synth.generate import (
    default_hand,
    look_metadata,
    make_scene,
    matrix_to_rotvec,
    render_frame,
    rotvec_to_matrix,
)
from hoiguide.synth.objects import ObjectSource, parse_object_spec
from hoiguide.synth.observers import (
    ObserverNoise,
    ObserverOutputs,
    align_observer_outputs,
    coarse_object_sample,
    run_observers,
    stable_seed,
)
from hoiguide.synth.scene import Scene, SceneFormatError
from hoiguide.types import ClipObservations, Mesh, Similarity

log = logging.getLogger(__name__)

__all__ = ["Clip", "make_clip", "load_clip", "generate_clips", "simulate_clip_observations",
           "CorrelatedDraws", "write_clips_manifest", "read_clips_manifest", "list_clips",
           "is_clips_set", "CLIP_FORMAT", "CLIP_VERSION", "CLIPS_MANIFEST_FORMAT"]

CLIP_FORMAT = "hoiguide-synth-clip"
CLIP_VERSION = 1
CLIPS_MANIFEST_FORMAT = "hoiguide-synth-clips"
CLIPS_MANIFEST_VERSION = 1
MAX_FRAMES = 240

_F64 = torch.float64


# ---------------------------------------------------------------------------------- Clip
@dataclass
class Clip:
    """A synthetic clip with ground truth (see the module docstring).

    Attributes:
        clip_id: unique name (also the folder name).
        frames: ``T`` :class:`~hoiguide.synth.Scene` (each in the static camera frame).
        times: ``(T,)`` float64 frame times in seconds.
        object_to_camera: ``T`` rigid similarities, object frame -> camera frame (metres).
        gen_to_camera: ``T`` similarities, generator frame -> camera frame.
        reference: the frame with the most visible object pixels (ties: the earliest).
        object_mesh: the ground-truth object in its object frame (metres).
        object_source: the object's spec, e.g. ``"procedural:mug@10003"``.
        metadata: motion, provenance and per-frame visibility (JSON-ready).
    """

    clip_id: str
    frames: list
    times: np.ndarray
    object_to_camera: list
    gen_to_camera: list
    reference: int
    object_mesh: Mesh
    object_source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        T = len(self.frames)
        if T < 1:
            raise SceneFormatError("Clip.frames: expected at least one frame")
        self.times = np.asarray(self.times, np.float64).reshape(-1)
        for name in ("times", "object_to_camera", "gen_to_camera"):
            if len(getattr(self, name)) != T:
                raise SceneFormatError(f"Clip.{name}: expected {T} entries (one per frame), "
                                       f"got {len(getattr(self, name))}")
        if not 0 <= int(self.reference) < T:
            raise SceneFormatError(f"Clip.reference: expected a frame index in [0, {T - 1}], "
                                   f"got {self.reference}")
        self.reference = int(self.reference)

    @property
    def num_frames(self) -> int:
        """``T``."""
        return len(self.frames)

    @property
    def hand_params(self) -> list:
        """Per frame, the hand model's parameters in the camera frame (``side``,
        ``global_orient``, ``hand_pose``, ``betas``, ``transl``; axis-angle radians, metres)."""
        return [f.hand_params for f in self.frames]

    @property
    def object_pixels(self) -> list:
        """Visible object pixels per frame (0: the object is hidden)."""
        return [int(f.mask_object.sum()) for f in self.frames]

    def save(self, directory: str | Path) -> Path:
        """Write the clip folder (see the module docstring); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        width = max(3, len(str(self.num_frames - 1)))
        entries = []
        vis = self.metadata.get("frames") or [{} for _ in self.frames]
        for t, sc in enumerate(self.frames):
            name = f"frame_{t:0{width}d}"
            sc.save(d / name)
            entries.append({"index": t, "path": name, "time": float(self.times[t]),
                            "object_to_camera": self.object_to_camera[t].to_dict(),
                            "gen_to_camera": self.gen_to_camera[t].to_dict(),
                            "hand_params": sc.hand_params, **(vis[t] if t < len(vis) else {})})
        self.object_mesh.export(d / "object.ply")
        meta = {k: v for k, v in self.metadata.items() if k != "frames"}
        write_json(d / "clip.json", {
            "format": CLIP_FORMAT, "version": CLIP_VERSION, "clip_id": self.clip_id,
            "num_frames": self.num_frames, "times": self.times.tolist(),
            "reference": self.reference, "object_source": self.object_source,
            "object_mesh": "object.ply", "frames": entries, "metadata": meta})
        return d


def load_clip(directory: str | Path) -> Clip:
    """Read a clip folder written by :meth:`Clip.save` / ``hoiguide synth --frames T``.

    Raises:
        SceneFormatError: not a clip folder, an unknown format or a newer version, missing
            frames, or a malformed ``clip.json`` (one line naming the file and the problem).
    """
    d = Path(directory)
    p = d / "clip.json"
    if not p.is_file():
        hint = " (it is a single scene; read it with Scene.load)" if \
            (d / "scene.json").is_file() else ""
        raise SceneFormatError(f"{d}: not a clip folder (no clip.json){hint}")
    try:
        info = read_json(p)
    except ValueError as exc:
        raise SceneFormatError(str(exc).splitlines()[0]) from None
    if not isinstance(info, dict) or info.get("format") != CLIP_FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise SceneFormatError(f"{p}: format {got!r}, expected {CLIP_FORMAT!r}")
    if int(info.get("version", 0)) > CLIP_VERSION:
        raise SceneFormatError(f"{p}: version {info.get('version')} is newer than this "
                               f"hoiguide reads ({CLIP_VERSION}); upgrade hoiguide")
    missing = [k for k in ("clip_id", "times", "reference", "frames") if k not in info]
    if missing:
        raise SceneFormatError(f"{p}: missing {', '.join(missing)} (re-make the clip with "
                               "'hoiguide synth --frames T')")
    try:
        entries = list(info["frames"])
        frames = [Scene.load(d / str(e["path"])) for e in entries]
        o2c = [Similarity.from_dict(e["object_to_camera"]) for e in entries]
        g2c = [Similarity.from_dict(e["gen_to_camera"]) for e in entries]
        obj_path = d / str(info.get("object_mesh", "object.ply"))
        if not obj_path.is_file():
            raise SceneFormatError(f"{d}: missing {obj_path.name}")
        obj = Mesh.load(obj_path)
        meta = dict(info.get("metadata") or {})
        keep = ("visible_object_pixels", "visible_object_fraction", "object_hidden",
                "angle_deg")
        meta["frames"] = [{k: e[k] for k in keep if k in e} for e in entries]
        return Clip(clip_id=str(info["clip_id"]), frames=frames, times=info["times"],
                    object_to_camera=o2c, gen_to_camera=g2c, reference=int(info["reference"]),
                    object_mesh=obj, object_source=str(info.get("object_source", "")),
                    metadata=meta)
    except SceneFormatError as exc:
        raise SceneFormatError(f"{d}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SceneFormatError(f"{p}: cannot read the clip ({type(exc).__name__}: {exc})"
                               ) from None


# ---------------------------------------------------------------------------- the motion
def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    return rotvec_to_matrix(np.asarray(axis, np.float64) * float(angle))


def _perpendicular_basis(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = v / np.linalg.norm(v)
    a = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(v, a)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(v, e1)


def _motion_params(centre: np.ndarray, rng: np.random.Generator, translation_m: float
                   ) -> dict[str, np.ndarray]:
    """A random axis roughly perpendicular to the line of sight and the drift vectors."""
    view = centre / max(np.linalg.norm(centre), 1e-9)
    e1, e2 = _perpendicular_basis(view)
    phi = rng.uniform(0, 2 * math.pi)
    tilt = math.radians(rng.uniform(-15.0, 15.0))
    axis = math.cos(tilt) * (math.cos(phi) * e1 + math.sin(phi) * e2) + math.sin(tilt) * view
    axis /= np.linalg.norm(axis)

    def drift(length: float) -> np.ndarray:
        a = rng.uniform(0, 2 * math.pi)
        return length * (math.cos(a) * e1 + math.sin(a) * e2 + rng.uniform(-0.3, 0.3) * view)

    return {"axis": axis, "A": drift(translation_m), "B": drift(0.25 * translation_m)}


def _poses(num_frames: int, rotation_deg: float, centre: np.ndarray, params: dict,
           shift: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per frame ``(R_t, t_t)`` of ``P_t(x) = R_t x + t_t`` (camera frame) and the angles."""
    T = num_frames
    u = np.arange(T) / (T - 1) if T > 1 else np.full(1, 0.5)
    ang = math.radians(rotation_deg) * (u - 0.5)
    Rs, ts = [], []
    for k in range(T):
        R = _rotation(params["axis"], ang[k])
        d = params["A"] * (u[k] - 0.5) + params["B"] * math.sin(math.pi * u[k])
        Rs.append(R)
        ts.append(centre - R @ centre + d + shift)
    return Rs, ts, np.degrees(ang)


def _fit_shift(points: np.ndarray, Rs: list, ts: list, cam: Any, margin: float = 0.03
               ) -> np.ndarray:
    """A constant camera-frame shift that brings every frame's points inside the image
    (with ``margin`` of the side) and in front of the camera; zero when they already are."""
    W, H = cam.width, cam.height
    shift = np.zeros(3)
    for _ in range(20):
        Q = np.concatenate([points @ R.T + t + shift for R, t in zip(Rs, ts)])
        if Q[:, 2].min() <= 0.05:
            shift[2] += 0.05 - Q[:, 2].min() + 0.05
            continue
        uv = np.asarray(cam.project(Q))
        lo, hi = uv.min(0), uv.max(0)
        if lo[0] >= margin * W and lo[1] >= margin * H and hi[0] <= (1 - margin) * W and \
                hi[1] <= (1 - margin) * H:
            break
        zc = float(Q[:, 2].mean())
        need = max((hi[0] - lo[0]) / ((1 - 2 * margin) * W),
                   (hi[1] - lo[1]) / ((1 - 2 * margin) * H))
        new_z = zc * max(need, 1.0) * (1.02 if need > 1.0 else 1.0)
        centre_px = 0.5 * (lo + hi)
        shift[0] += (cam.cx - centre_px[0]) * new_z / cam.fx
        shift[1] += (cam.cy - centre_px[1]) * new_z / cam.fy
        shift[2] += new_z - zc
    return shift


def _visibility_score(hand: Mesh, obj: Mesh, Rs: list, ts: list, cam: Any) -> float:
    """Mean over frames of the object's visible fraction (capped at 0.35 -> 1) at 64 px."""
    small = cam.resized(64, 64)
    score = 0.0
    for R, t in zip(Rs, ts):
        S = Similarity(torch.tensor(1.0, dtype=_F64), torch.as_tensor(R), torch.as_tensor(t))
        r = render([hand.transformed(S), obj.transformed(S)], small, amodal=True)
        amodal = float((r.amodal[1] > 0.5).sum())
        vis = float((r.mesh_id == 1).sum())
        score += min(vis / max(amodal, 1.0) / 0.35, 1.0) if amodal > 0 else 0.0
    return score / len(Rs)


# ---------------------------------------------------------------------------- make_clip
def _check_positive_int(x: Any, name: str, fn: str, maximum: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or int(x) < 1:
        raise ValueError(f"{fn}: expected {name} to be a positive integer, got {x!r}")
    if maximum is not None and int(x) > maximum:
        raise ValueError(f"{fn}: expected {name} <= {maximum}, got {x!r}")
    return int(x)


def _check_number(x: Any, name: str, fn: str, lo: float, hi: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: expected {name} to be a number, got {x!r}") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{fn}: expected {name} in [{lo:g}, {hi:g}], got {x!r}")
    return v


def make_clip(source: ObjectSource | str | Mesh, *, seed: int = 0, index: int = 0,
              num_frames: int = 8, rotation_deg: float = 90.0, image_size: int = 256,
              finger_motion: bool = False, fps: float = 30.0, translation_m: float = 0.03,
              finger_amplitude: float = 0.3, axis_candidates: int = 3,
              clip_id: str | None = None, hand_model: Any = None,
              **scene_options: Any) -> Clip:
    """Make one synthetic clip (see the module docstring for the motion and the rendering).

    Args:
        source: the object: an :class:`~hoiguide.synth.objects.ObjectSource`, a spec naming
            ONE object (``"procedural:mug@10003"``, ``"pybullet:612"``) or a :class:`Mesh`
            (object frame, metres).
        seed, index: the clip's random stream; the middle view is
            ``make_scene(source, seed=seed, index=index)``'s.
        num_frames: ``T`` (1 to 240).
        rotation_deg: rotation between the first and the last frame, degrees (0 to 360).
        image_size: square image side in pixels.
        finger_motion: open and close the non-contact fingers smoothly.
        fps: frames per second (frame times ``t / fps`` seconds).
        translation_m: the drift's amplitude ``|A|`` in metres (``|B| = |A| / 4``).
        finger_amplitude: largest opening of a moving finger, fraction of its flexion range.
        axis_candidates: random rotation axes tried (the most visible object wins).
        clip_id: folder name (default ``f"{index:04d}"``).
        hand_model: the hand (default the procedural right hand); finger motion needs its
            ``flexion_pose``.
        **scene_options: passed to :func:`~hoiguide.synth.make_scene` (``grasp_type``,
            ``camera_style``, ...).

    Returns:
        The :class:`Clip`; frame ``t``'s scene id is ``f"{clip_id}_f{t:03d}"``.

    Raises:
        ValueError: a bad argument (one line naming it).
        hoiguide.synth.grasp.GraspError, hoiguide.synth.generate.VisibilityError: as
            :func:`~hoiguide.synth.make_scene`.
    """
    fn = "make_clip"
    T = _check_positive_int(num_frames, "num_frames", fn, MAX_FRAMES)
    rot = _check_number(rotation_deg, "rotation_deg", fn, 0.0, 360.0)
    fps = _check_number(fps, "fps", fn, 1e-6, 1e6)
    translation_m = _check_number(translation_m, "translation_m", fn, 0.0, 0.5)
    finger_amplitude = _check_number(finger_amplitude, "finger_amplitude", fn, 0.0, 1.0)
    ncand = _check_positive_int(axis_candidates, "axis_candidates", fn, 64)
    cid = clip_id or f"{int(index):04d}"
    t_start = time.perf_counter()
    model = hand_model if hand_model is not None else default_hand()
    base = make_scene(source, seed=seed, index=index, image_size=image_size, scene_id=cid,
                      hand_model=model, **scene_options)
    rng = np.random.default_rng([int(seed), int(index), 0xC11B])
    cam = base.camera
    w2c = Similarity.from_dict(base.metadata["world_to_camera"]).to(dtype=_F64)
    g2c0 = Similarity.from_dict(base.metadata["gen_to_camera"]).to(dtype=_F64)
    obj_c = base.object_mesh.to(dtype=_F64)
    obj_w = obj_c.transformed(w2c.inverse())              # object frame
    hand_c = base.hand_mesh.to(dtype=_F64)
    centre = obj_c.bbox_center().numpy()

    # hand parameters (camera frame) of the middle view and the model's rest wrist
    hp = dict(base.hand_params)
    R_hand = rotvec_to_matrix(np.asarray(hp["global_orient"]))
    betas = torch.as_tensor(hp["betas"], dtype=_F64)[None]
    pose0 = torch.as_tensor(hp["hand_pose"], dtype=_F64).reshape(1, -1)
    with torch.no_grad():
        rest = model(betas=betas)
    wrist_rest = rest.joints[0, 0].numpy()
    wrist_c = np.asarray(hp["transl"], np.float64) + wrist_rest

    # choose the axis: the one whose frames show the most of the object
    pts = torch.cat([hand_c.vertices, obj_c.vertices]).numpy()
    best = None
    for _ in range(ncand):
        params = _motion_params(centre, rng, translation_m)
        Rs, ts, _ = _poses(T, rot, centre, params, np.zeros(3))
        shift = _fit_shift(pts, Rs, ts, cam)
        Rs, ts, _ = _poses(T, rot, centre, params, shift)
        score = _visibility_score(hand_c, obj_c, Rs, ts, cam) if ncand > 1 else 1.0
        if best is None or score > best[0] + 1e-9:
            best = (score, params, shift)
    score, params, shift = best
    Rs, ts, angles = _poses(T, rot, centre, params, shift)

    # finger motion: the fingers not in contact open smoothly from the grasp's pose
    grasp = base.metadata.get("grasp") or {}
    moving: list[int] = []
    curl0 = None
    amps = phases = np.zeros(5)
    if finger_motion:
        if not hasattr(model, "flexion_pose"):
            raise ValueError(f"{fn}: finger_motion needs a hand model with flexion_pose "
                             f"(the procedural hand), got {type(model).__name__}")
        curl0 = np.asarray(grasp.get("curl"), np.float64).reshape(5, 3)
        contact = {int(f) for f in grasp.get("contact_fingers", [])}
        moving = [f for f in range(5) if f not in contact]
        amps = finger_amplitude * rng.uniform(0.5, 1.0, size=5)
        phases = rng.uniform(-0.5, 0.5, size=5)
        if not moving:
            log.info("make_clip %s: every finger touches the object; no finger motion", cid)
    u = np.arange(T) / (T - 1) if T > 1 else np.full(1, 0.5)

    # one look for the whole clip
    mat = random_material(rng)
    skin = random_skin_tone(rng)
    light = random_lighting(rng)
    tex = Texture.of(obj_w, mat)
    hand_colors = vertex_colors(hand_c.transformed(w2c.inverse()), skin)

    frames: list[Scene] = []
    o2c_list: list[Similarity] = []
    g2c_list: list[Similarity] = []
    vis_info: list[dict[str, Any]] = []
    for k in range(T):
        S = Similarity(torch.tensor(1.0, dtype=_F64), torch.as_tensor(Rs[k]),
                       torch.as_tensor(ts[k]))
        pose = pose0
        if moving:
            curl = curl0.copy()
            for f in moving:
                w = 0.5 * (1 - math.cos(2 * math.pi * (u[k] + phases[f])))
                curl[f] = np.maximum(curl0[f] - amps[f] * w, 0.0)
            pose = model.flexion_pose(torch.as_tensor(curl, dtype=_F64)[None])
        R_k = Rs[k] @ R_hand
        wrist_k = Rs[k] @ wrist_c + ts[k]
        transl_k = wrist_k - wrist_rest
        with torch.no_grad():
            out = model(global_orient=torch.as_tensor(matrix_to_rotvec(R_k), dtype=_F64)[None],
                        hand_pose=pose.to(_F64), betas=betas,
                        transl=torch.as_tensor(transl_k, dtype=_F64)[None])
        hand_k = out.mesh(0).to(dtype=_F64)
        obj_k = obj_c.transformed(S)
        kp3 = out.keypoints[0].to(_F64)
        frng = np.random.default_rng([int(seed), int(index), 0xC11B, k])
        maps = render_frame(hand_k, obj_k, cam, hand_colors=hand_colors, object_colors=tex,
                            lighting=light, rng=frng)
        n_vis = int(maps["mask_object"].sum())
        frac = n_vis / max(int(maps["mask_object_amodal"].sum()), 1)
        o2c = S.compose(w2c)
        g2c = S.compose(g2c0)
        params_k = dict(hp)
        params_k.update(global_orient=matrix_to_rotvec(R_k).tolist(), transl=transl_k.tolist(),
                        hand_pose=pose.reshape(-1).tolist())
        meta = dict(base.metadata)
        meta.update({"clip": cid, "frame": k, "time": k / fps,
                     "visible_object_fraction": round(frac, 4),
                     "gen_to_camera": g2c.to_dict(), "world_to_camera": o2c.to_dict(),
                     **look_metadata(mat, skin, light)})
        hand_k.metadata.clear()
        obj_k.metadata.clear()
        frames.append(Scene(
            scene_id=f"{cid}_f{k:03d}", camera=cam, **maps,
            hand_mesh=hand_k.to(dtype=torch.float32), object_mesh=obj_k.to(dtype=torch.float32),
            hand_keypoints_3d=kp3.numpy(), keypoints_2d=cam.project(kp3).numpy(),
            hand_params=params_k, object_source=base.object_source, metadata=meta))
        o2c_list.append(o2c)
        g2c_list.append(g2c)
        vis_info.append({"visible_object_pixels": n_vis,
                         "visible_object_fraction": round(frac, 4),
                         "object_hidden": n_vis == 0, "angle_deg": float(angles[k])})
    pix = [v["visible_object_pixels"] for v in vis_info]
    reference = int(np.argmax(pix))
    hidden = [k for k, v in enumerate(vis_info) if v["object_hidden"]]
    if hidden:
        log.info("make_clip %s: the object is hidden in frame(s) %s", cid, hidden)
    obj_w32 = obj_w.to(dtype=torch.float32)
    obj_w32.metadata.clear()
    meta = {
        "seed": int(seed), "index": int(index), "image_size": int(image_size), "fps": fps,
        "object": base.object_source, "grasp_type": base.metadata.get("grasp_type"),
        "camera_style": base.metadata.get("camera_style"),
        "motion": {"kind": "in-hand inspection", "rotation_deg": rot,
                   "axis_camera": params["axis"].tolist(), "centre_camera": centre.tolist(),
                   "drift_A_m": params["A"].tolist(), "drift_B_m": params["B"].tolist(),
                   "shift_m": shift.tolist(), "translation_m": translation_m,
                   "axis_candidates": ncand, "visibility_score": round(float(score), 4)},
        "finger_motion": {"enabled": bool(finger_motion), "moving_fingers": moving,
                          "amplitude": [float(a) for a in amps[moving]] if moving else [],
                          "finger_order": "thumb, index, middle, ring, pinky"},
        "hidden_frames": hidden,
        "middle_view": {"scene_seed": int(seed), "scene_index": int(index)},
        "seconds": round(time.perf_counter() - t_start, 3),
        "frames": vis_info,
    }
    return Clip(clip_id=cid, frames=frames, times=np.arange(T) / fps,
                object_to_camera=o2c_list, gen_to_camera=g2c_list, reference=reference,
                object_mesh=obj_w32, object_source=base.object_source, metadata=meta)


# ---------------------------------------------------------------------------- clip sets
def write_clips_manifest(directory: str | Path, clips: list[dict[str, Any]],
                         failed: list[dict[str, Any]] | None = None, **info: Any) -> Path:
    """Write ``directory/manifest.json`` of a clips set (format ``hoiguide-synth-clips``):
    ``clips`` entries need ``id`` and ``path`` (relative); ``failed`` entries ``id`` and
    ``reason``; ``info`` is provenance (seed, objects, frames, command, ...)."""
    for c in clips:
        if "id" not in c or "path" not in c:
            raise ValueError(f"clips manifest entry needs 'id' and 'path', got {sorted(c)}")
    doc = {"format": CLIPS_MANIFEST_FORMAT, "version": CLIPS_MANIFEST_VERSION,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info,
           "num_clips": len(clips), "clips": list(clips), "failed": list(failed or [])}
    return write_json(Path(directory) / "manifest.json", doc)


def read_clips_manifest(directory: str | Path) -> dict[str, Any]:
    """Read a clips set's ``manifest.json``.

    Raises:
        SceneFormatError: no manifest, another format (e.g. a scene set) or a newer version.
    """
    p = Path(directory) / "manifest.json"
    if not p.is_file():
        raise SceneFormatError(f"{directory}: no manifest.json (make clips with "
                               "`hoiguide synth OUT --frames T`)")
    try:
        doc = read_json(p)
    except ValueError as exc:
        raise SceneFormatError(str(exc).splitlines()[0]) from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != CLIPS_MANIFEST_FORMAT:
        raise SceneFormatError(f"{p}: format {fmt!r}, expected {CLIPS_MANIFEST_FORMAT!r} (a "
                               "clips set)")
    if int(doc.get("version", 0)) > CLIPS_MANIFEST_VERSION:
        raise SceneFormatError(f"{p}: version {doc.get('version')} is newer than this "
                               f"hoiguide reads ({CLIPS_MANIFEST_VERSION})")
    return doc


def is_clips_set(directory: str | Path) -> bool:
    """Whether ``directory`` is a clips set (its manifest's format) or one clip folder."""
    d = Path(directory)
    if (d / "clip.json").is_file():
        return True
    p = d / "manifest.json"
    if not p.is_file():
        return False
    doc = read_json(p, default=None)
    return isinstance(doc, dict) and doc.get("format") == CLIPS_MANIFEST_FORMAT


def list_clips(directory: str | Path) -> list[tuple[str, Path]]:
    """``(clip_id, folder)`` of every clip of a clips set (manifest order), or of one clip
    folder, or of the sorted sub-folders holding a ``clip.json``.

    Raises:
        SceneFormatError: no clips.
    """
    d = Path(directory)
    if (d / "clip.json").is_file():
        info = read_json(d / "clip.json", default={}) or {}
        return [(str(info.get("clip_id", d.name)), d)]
    if (d / "manifest.json").is_file():
        doc = read_clips_manifest(d)
        return [(str(c.get("id", Path(c["path"]).name)), d / c["path"]) for c in doc["clips"]]
    found = sorted(p.parent for p in d.glob("*/clip.json"))
    if not found:
        raise SceneFormatError(f"{d}: no clips (no manifest.json and no */clip.json)")
    return [(p.name, p) for p in found]


def _clip_entry(clip: Clip, cid: str) -> dict[str, Any]:
    return {"id": cid, "path": cid, "object": clip.object_source,
            "num_frames": clip.num_frames, "reference": clip.reference,
            "grasp_type": clip.metadata.get("grasp_type"),
            "camera_style": clip.metadata.get("camera_style"),
            "hidden_frames": clip.metadata.get("hidden_frames", []),
            "finger_motion": clip.metadata.get("finger_motion", {}).get("moving_fingers", [])}


def generate_clips(n: int, out: str | Path, *, objects: str = "pybullet:600-699",
                   seed: int = 0, num_frames: int = 8, rotation_deg: float = 90.0,
                   image_size: int = 256, finger_motion: bool = False, fps: float = 30.0,
                   overwrite: bool = False, progress: bool = True, max_tries: int = 3,
                   command: str | None = None) -> dict[str, Any]:
    """Write ``n`` clips to ``out/<id>/`` and ``out/manifest.json`` (a clips set).

    Objects are drawn (with replacement, seeded) from ``objects``
    (:func:`hoiguide.synth.objects.parse_object_spec`). A clip whose grasp or camera fails is
    retried with another object up to ``max_tries`` times, then recorded under ``failed``.
    Each clip is written to a temporary folder and renamed when complete (never half a
    clip); existing clip folders are kept unless ``overwrite``. The manifest is rewritten
    after every clip, so an interrupted run keeps what it finished.

    Returns:
        The manifest as a dict.
    """
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"generate_clips: expected n >= 1, got {n!r}")
    _check_positive_int(num_frames, "num_frames", "generate_clips", MAX_FRAMES)
    sources = parse_object_spec(objects)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    it: Any = range(int(n))
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="synth clips", unit="clip")
        except ImportError:
            pass
    info = {"seed": int(seed), "objects": objects, "image_size": int(image_size),
            "num_frames": int(num_frames), "rotation_deg": float(rotation_deg),
            "finger_motion": bool(finger_motion), "fps": float(fps), "requested": int(n),
            "command": command}
    for i in it:
        cid = f"{i:04d}"
        folder = out / cid
        if (folder / "clip.json").is_file() and not overwrite:
            try:
                entries.append(_clip_entry(load_clip(folder), cid))
                continue
            except SceneFormatError as e:
                log.warning("clip %s: existing folder unreadable (%s); regenerating", cid, e)
        rng = np.random.default_rng([int(seed), i, 0xC11B5])
        reasons = []
        for t in range(int(max_tries)):
            src = sources[int(rng.integers(len(sources)))]
            try:
                clip = make_clip(src, seed=seed, index=i * 16 + t, num_frames=num_frames,
                                 rotation_deg=rotation_deg, image_size=image_size,
                                 finger_motion=finger_motion, fps=fps, clip_id=cid)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - record and try another object
                reasons.append(f"{src}: {type(e).__name__}: {e}")
                log.warning("clip %s: %s failed (%s: %s)", cid, src, type(e).__name__, e)
                log.debug("%s", traceback.format_exc())
                continue
            tmp = out / f".{cid}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            clip.save(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
            entries.append(_clip_entry(clip, cid))
            break
        else:
            failed.append({"id": cid, "reason": "; ".join(reasons)})
        write_clips_manifest(out, entries, failed, **info)
    write_clips_manifest(out, entries, failed, **info)
    log.info("synth: %d clips written to %s, %d failed", len(entries), out, len(failed))
    return read_clips_manifest(out)


# ---------------------------------------------------------------------------- observers
class CorrelatedDraws:
    """Random numbers that are AR(1)-correlated from one frame to the next.

    Duck-types the parts of :class:`numpy.random.Generator` the observers use
    (``standard_normal``, ``normal``, ``uniform``, ``random``, ``integers``). Within a frame,
    draws are keyed by ``(method, shape, occurrence)``; the k-th such draw of frame ``t`` is
    ``z_t = rho z_{t-1} + sqrt(1 - rho^2) e_t`` in standard-normal space (``e_t`` fresh),
    mapped through the normal CDF for uniform / integer draws. Call :meth:`next_frame`
    between frames. Marginally every draw has the distribution it asks for.
    """

    def __init__(self, seed: int, rho: float) -> None:
        if not (math.isfinite(float(rho)) and 0.0 <= float(rho) <= 1.0):
            raise ValueError(f"temporal_correlation: expected a number in [0, 1], got {rho!r}")
        self.rho = float(rho)
        self._rng = np.random.default_rng(int(seed))
        self._prev: dict = {}
        self._cur: dict = {}
        self._count: dict = {}

    def next_frame(self) -> None:
        """Start the next frame (its draws continue this frame's)."""
        self._prev, self._cur, self._count = self._cur, {}, {}

    def _z(self, method: str, size: Any) -> np.ndarray:
        shape = () if size is None else tuple(np.atleast_1d(np.asarray(size, np.int64)))
        key = (method, shape)
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        e = self._rng.standard_normal(shape)
        prev = self._prev.get((key, n))
        z = e if prev is None else self.rho * prev + math.sqrt(1 - self.rho ** 2) * e
        self._cur[(key, n)] = z
        return z

    @staticmethod
    def _out(x: np.ndarray) -> Any:
        return x.item() if np.ndim(x) == 0 else x

    def standard_normal(self, size: Any = None) -> Any:
        return self._out(self._z("normal", size))

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> Any:
        return self._out(loc + scale * self._z("normal", size))

    def _unit(self, method: str, size: Any) -> np.ndarray:
        from scipy.special import ndtr

        return np.clip(ndtr(self._z(method, size)), 0.0, 1.0 - 1e-12)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None) -> Any:
        return self._out(low + (high - low) * self._unit("uniform", size))

    def random(self, size: Any = None) -> Any:
        return self._out(self._unit("random", size))

    def integers(self, low: int, high: int | None = None, size: Any = None) -> Any:
        if high is None:
            low, high = 0, low
        v = low + np.floor((high - low) * self._unit("integers", size)).astype(np.int64)
        return self._out(np.minimum(v, high - 1))


def simulate_clip_observations(clip: Clip, *, backbone: Any = None,
                               noise: "str | float | ObserverNoise" = "default", seed: int = 0,
                               temporal_correlation: float = 0.9, alignment: Any = None,
                               object_image_size: int = 256) -> ClipObservations:
    """Run the simulated observers on every frame of ``clip`` with temporally correlated
    errors, and the alignment chain per frame (see the module docstring).

    Args:
        clip: a synthetic clip (its ground truth only simulates the observers).
        backbone: as :func:`hoiguide.synth.simulate_observations`: the coarse hand-object
            mesh per frame is its sample on the frame's union crop, and ONE object sample (on
            the reference frame's object image) is placed per frame by ICP c.
        noise: ``"default"``, ``"none"``, a strength multiplier or an :class:`ObserverNoise`
            (the per-frame marginal strengths).
        seed: seeds every observer (same seed, same observations).
        temporal_correlation: lag-1 correlation ``rho`` in ``[0, 1]`` of every observer error
            between consecutive frames (0: independent frames).
        alignment: :class:`hoiguide.alignment.AlignmentOptions`.
        object_image_size: side of the square object images (pixels).

    Returns:
        :class:`~hoiguide.types.ClipObservations` with the clip's times and reference frame,
        each frame in the (static) image-aligned camera frame, metres; a frame whose
        observers fail (e.g. the object is out of view) is ``None`` and its reason is in
        ``metadata["frame_failures"]``. Per-frame ``metadata`` holds what
        :func:`simulate_observations` records (``gen_to_image_true`` etc.) plus ``frame``.
    """
    nz = ObserverNoise.preset(noise)
    draws = CorrelatedDraws(stable_seed("observe-clip", clip.clip_id, seed),
                            temporal_correlation)
    T = clip.num_frames
    raw: list[ObserverOutputs | None] = [None] * T
    failures: dict[int, str] = {}
    for k, sc in enumerate(clip.frames):
        if k:
            draws.next_frame()
        try:
            raw[k] = run_observers(sc, nz, draws, backbone=backbone, seed=seed,
                                   object_image_size=object_image_size)
        except Exception as exc:  # noqa: BLE001 - the frame is unobserved, the clip goes on
            failures[k] = f"observe: {type(exc).__name__}: {exc}"
            log.warning("clip %s frame %d: observers failed (%s); frame left unobserved",
                        clip.clip_id, k, failures[k])
    ref = clip.reference if raw[clip.reference] is not None else None
    if ref is None:
        seen = [k for k in range(T) if raw[k] is not None]
        if not seen:
            raise ValueError(f"simulate_clip_observations: every frame of clip {clip.clip_id} "
                             f"failed ({'; '.join(failures.values())})")
        ref = max(seen, key=lambda k: (int(raw[k].masks["mask_object"].sum()), -k))
    coarse_object = None
    if backbone is not None:
        # the object is rigid: one sample, on the reference frame's object image
        coarse_object = coarse_object_sample(backbone, raw[ref].object_image, seed=seed)
    frames: list[Any] = [None] * T
    for k, sc in enumerate(clip.frames):
        if raw[k] is None:
            continue
        try:
            frames[k] = align_observer_outputs(
                sc, raw[k], noise=nz, seed=seed, alignment=alignment,
                coarse_object=coarse_object,
                metadata={"clip_id": clip.clip_id, "frame": k,
                          "temporal_correlation": draws.rho})
        except Exception as exc:  # noqa: BLE001 - the frame is unobserved, the clip goes on
            failures[k] = f"alignment: {type(exc).__name__}: {exc}"
            log.warning("clip %s frame %d: alignment failed (%s); frame left unobserved",
                        clip.clip_id, k, failures[k])
    if frames[ref] is None:
        seen = [k for k in range(T) if frames[k] is not None]
        if not seen:
            raise ValueError(f"simulate_clip_observations: no frame of clip {clip.clip_id} "
                             f"could be observed ({'; '.join(failures.values())})")
        ref = None
    return ClipObservations(
        tuple(frames), torch.as_tensor(clip.times, dtype=_F64), ref,
        {"clip_id": clip.clip_id, "observer_noise": nz.to_dict(),
         "temporal_correlation": draws.rho, "seed": int(seed),
         "frame_failures": {str(k): v for k, v in failures.items()},
         "object_source": clip.object_source})
