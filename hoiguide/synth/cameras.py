"""Cameras for synthetic scenes: a look-at transform and photo-like viewpoints.

Frames: the camera frame is OpenCV's (+x right, +y down, +z forward, metres, camera centre at
the origin); the world frame is whatever the scene uses, with its "up" direction given by
``up`` (default ``(0, -1, 0)``: a y-down world, so that with the default the camera frame
and an unrotated world agree). Every returned transform is WORLD -> CAMERA, rigid (scale 1),
as a :class:`hoiguide.types.Similarity` ``x_cam = R x_world + t``.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch

from hoiguide.types import Camera, Similarity

log = logging.getLogger(__name__)

__all__ = ["STYLES", "look_at", "place_camera"]

STYLES: tuple[str, ...] = ("egocentric", "third_person", "random")


def _vec3(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, np.float64)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected a finite 3-vector, got shape {a.shape}")
    return a


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotation_look(forward: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rows x, y, z of the world->camera rotation for a unit ``forward`` (+z) with the image
    "up" (-y) as close as possible to ``up``."""
    z = _normalize(forward)
    u = _normalize(up)
    x = np.cross(z, u)
    if np.linalg.norm(x) < 1e-6:  # looking straight along up: any image orientation works
        alt = np.eye(3)[int(np.argmin(np.abs(z)))]
        x = np.cross(z, alt)
    x = _normalize(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def look_at(eye: Sequence[float] | np.ndarray | torch.Tensor,
            target: Sequence[float] | np.ndarray | torch.Tensor,
            up: Sequence[float] | np.ndarray | torch.Tensor = (0.0, -1.0, 0.0)) -> Similarity:
    """WORLD -> CAMERA rigid transform of a camera at ``eye`` looking at ``target``.

    Args:
        eye, target: ``(3,)`` world points (metres), distinct.
        up: ``(3,)`` world direction that should appear "up" in the image (towards -y of the
            OpenCV camera). Default ``(0, -1, 0)``. When it is parallel to the viewing
            direction some perpendicular direction is used instead.

    Returns:
        ``Similarity(scale=1, R, t)`` with ``R`` rows the camera's x (right), y (down) and
        z (forward) axes in world coordinates and ``t = -R eye``: ``eye`` maps to the origin
        and ``target`` to ``(0, 0, |target - eye|)``.
    """
    e = _vec3(eye, "look_at: eye")
    tgt = _vec3(target, "look_at: target")
    u = _vec3(up, "look_at: up")
    if np.linalg.norm(tgt - e) < 1e-12:
        raise ValueError(f"look_at: eye and target coincide ({e.tolist()})")
    if np.linalg.norm(u) < 1e-12:
        raise ValueError("look_at: up must be non-zero")
    R = _rotation_look(tgt - e, u)
    return Similarity(torch.ones((), dtype=torch.float64), torch.as_tensor(R),
                      torch.as_tensor(-R @ e))


def _random_perpendicular(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=3)
    a -= (a @ v) * v
    n = np.linalg.norm(a)
    return a / n if n > 1e-9 else _normalize(np.cross(v, np.eye(3)[int(np.argmin(np.abs(v)))]))


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about unit ``axis``."""
    return (v * math.cos(angle) + np.cross(axis, v) * math.sin(angle)
            + axis * (axis @ v) * (1 - math.cos(angle)))


def _horizontal(v: np.ndarray | None, up: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``v`` projected on the plane normal to ``up`` (unit), or a random horizontal unit
    vector when ``v`` is None or (nearly) vertical."""
    if v is not None:
        h = v - (v @ up) * up
        if np.linalg.norm(h) > 1e-3 * max(np.linalg.norm(v), 1e-12):
            return _normalize(h)
    return _random_perpendicular(up, rng)


def _view_direction(style: str, rng: np.random.Generator, up: np.ndarray,
                    forward: np.ndarray | None, palm_normal: np.ndarray | None
                    ) -> tuple[np.ndarray, float]:
    """Unit direction from the target to the camera, and the roll jitter (radians)."""
    if style == "egocentric":
        back = _horizontal(None if forward is None else -forward, up, rng)
        back = _rotate(back, up, math.radians(rng.uniform(-30, 30)))
        elev = math.radians(rng.uniform(30, 65))
        return _normalize(math.cos(elev) * back + math.sin(elev) * up), \
            math.radians(rng.uniform(-10, 10))
    if style == "third_person":
        if palm_normal is not None:
            side = 1.0 if rng.uniform() < 0.6 else -1.0  # face the palm or the back
            base = side * _normalize(palm_normal)
            axis = _random_perpendicular(base, rng)
            d = _rotate(base, axis, math.radians(rng.uniform(0, 35)))
        else:
            h = _random_perpendicular(up, rng)
            elev = math.radians(rng.uniform(-10, 40))
            d = math.cos(elev) * h + math.sin(elev) * up
        return _normalize(d), math.radians(rng.uniform(-10, 10))
    # random
    d = rng.normal(size=3)
    return _normalize(d), math.radians(rng.uniform(-180, 180))


def place_camera(points_world: np.ndarray | torch.Tensor, rng: np.random.Generator, *,
                 style: str = "egocentric", image_size: int = 256,
                 fov_deg_range: tuple[float, float] = (40.0, 60.0),
                 fill: tuple[float, float] = (0.45, 0.75),
                 forward: Sequence[float] | np.ndarray | torch.Tensor | None = None,
                 palm_normal: Sequence[float] | np.ndarray | torch.Tensor | None = None,
                 up: Sequence[float] | np.ndarray | torch.Tensor = (0.0, -1.0, 0.0),
                 max_offset: float = 0.06) -> tuple[Camera, Similarity]:
    """Choose a photo-like viewpoint of a set of world points (e.g. hand + object vertices).

    The viewing direction depends on ``style``:

    * ``"egocentric"``: like a head-mounted camera, behind the wrist (``-forward`` projected
      on the horizontal plane, +-30 degrees) and 30-65 degrees above the horizon, looking
      down-forward;
    * ``"third_person"``: facing the palm (60 %) or the back of the hand, up to 35 degrees
      off ``palm_normal`` (without ``palm_normal``: any horizontal direction, -10 to 40
      degrees elevation);
    * ``"random"``: any direction and roll.

    The image "up" follows the world ``up`` (up to +-10 degrees of roll). The horizontal
    field of view is drawn from ``fov_deg_range``; then the camera is moved along and across
    its axis so that the projected bounding box of the points spans a fraction ``fill``
    (drawn uniformly) of the image side (the larger of its width and height) and its centre
    sits within ``max_offset`` (fraction of the side) of the image centre, all points in
    front of the camera and inside the image. The distance follows from the fill (for a hand
    holding an object, ~0.3-0.6 m at the defaults).

    Args:
        points_world: ``(N, 3)`` world points, metres, spanning a non-zero extent.
        rng: random generator (all choices come from it: deterministic per state).
        style: one of :data:`STYLES`.
        image_size: square image side in pixels.
        fov_deg_range: horizontal field of view range, degrees, within (0, 180).
        fill: ``(min, max)`` fraction of the image side, within (0, 1).
        forward: ``(3,)`` world direction wrist -> fingers (optional).
        palm_normal: ``(3,)`` world direction out of the palm (optional).
        up: ``(3,)`` world up direction.
        max_offset: largest offset of the box centre from the image centre (fraction).

    Returns:
        ``(camera, world_to_camera)``: a square pinhole :class:`Camera` with the principal
        point at the image centre and the rigid WORLD -> CAMERA :class:`Similarity`.
    """
    if style not in STYLES:
        raise ValueError(f"place_camera: expected style in {STYLES}, got {style!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"place_camera: expected rng to be a numpy.random.Generator, got "
                        f"{type(rng).__name__}")
    X = points_world.detach().cpu().double().numpy() if isinstance(points_world, torch.Tensor) \
        else np.asarray(points_world, np.float64)
    if X.ndim != 2 or X.shape[1] != 3 or len(X) == 0:
        raise ValueError(f"place_camera: expected points of shape (N, 3) with N >= 1, got "
                         f"{X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("place_camera: points contain NaN or inf")
    lo, hi = X.min(0), X.max(0)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    if radius < 1e-9:
        raise ValueError("place_camera: the points span no extent (a single point?); the "
                         "fill cannot be set")
    W = int(image_size)
    if W != image_size or W < 8:
        raise ValueError(f"place_camera: expected an integer image_size >= 8, got {image_size}")
    f_lo, f_hi = (float(x) for x in fill)
    if not 0 < f_lo <= f_hi < 1:
        raise ValueError(f"place_camera: expected 0 < fill[0] <= fill[1] < 1, got {fill}")
    a_lo, a_hi = (float(x) for x in fov_deg_range)
    if not 0 < a_lo <= a_hi < 180:
        raise ValueError(f"place_camera: expected 0 < fov_deg_range[0] <= fov_deg_range[1] "
                         f"< 180, got {fov_deg_range}")
    if not 0 <= max_offset < 0.5:
        raise ValueError(f"place_camera: expected 0 <= max_offset < 0.5, got {max_offset}")
    u = _vec3(up, "place_camera: up")
    if np.linalg.norm(u) < 1e-12:
        raise ValueError("place_camera: up must be non-zero")
    u = _normalize(u)
    fwd = None if forward is None else _vec3(forward, "place_camera: forward")
    palm = None if palm_normal is None else _vec3(palm_normal, "place_camera: palm_normal")
    if palm is not None and np.linalg.norm(palm) < 1e-12:
        palm = None

    d, roll = _view_direction(style, rng, u, fwd, palm)
    fov = math.radians(rng.uniform(a_lo, a_hi))
    target_fill = float(rng.uniform(f_lo, f_hi))
    off_max = max(0.0, min(max_offset, 0.5 * (1 - target_fill) - 0.02))
    off = rng.uniform(-off_max, off_max, 2) * W
    focal = 0.5 * W / math.tan(0.5 * fov)
    cam = Camera(focal, focal, W / 2, W / 2, W, W)

    c = 0.5 * (lo + hi)
    R = _rotation_look(-d, u)
    if roll:
        cr, sr = math.cos(roll), math.sin(roll)
        R = np.array([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]]) @ R
    # initial distance: the bounding sphere spans the target fill
    dist = radius / (target_fill * math.tan(0.5 * fov)) + radius
    t = -R @ c + np.array([0.0, 0.0, dist])
    goal = np.array([W / 2 + off[0], W / 2 + off[1]])
    Xc = X @ R.T
    for _ in range(100):
        Q = Xc + t
        zmin = Q[:, 2].min()
        if zmin <= 0.05 * radius:  # keep everything well in front first
            t[2] += 0.05 * radius - zmin + radius
            continue
        uv = cam.project(Q)
        bmin, bmax = uv.min(0), uv.max(0)
        cur = float((bmax - bmin).max()) / W
        centre = 0.5 * (bmin + bmax)
        zc = float((R @ c + t)[2])
        err_c = goal - centre
        if abs(cur - target_fill) < 1e-5 and np.abs(err_c).max() < 1e-3:
            break
        new_zc = zc * cur / target_fill
        t[2] += new_zc - zc
        t[0] += err_c[0] * new_zc / focal
        t[1] += err_c[1] * new_zc / focal
    Q = Xc + t
    uv = cam.project(Q)
    if not (np.all(Q[:, 2] > 0) and np.all(uv >= 0) and np.all(uv <= W)):
        raise RuntimeError("place_camera: could not fit the points in the image "
                           f"(fill {target_fill:.3f}); use a smaller fill")
    log.debug("place_camera: %s, fov %.1f deg, fill %.3f, distance %.3f m", style,
              math.degrees(fov), target_fill, float((R @ c + t)[2]))
    w2c = Similarity(torch.ones((), dtype=torch.float64), torch.as_tensor(R),
                     torch.as_tensor(t))
    return cam, w2c
