"""Graspable objects for synthetic hand-object scenes.

Two families of objects:

* **Procedural shapes** (:data:`PROCEDURAL_KINDS`): boxes with rounded edges, cylinders,
  spheres, bottles, mugs with a handle, tori, cones, capsules, ellipsoids, cans, bowls and
  cups. Each call draws random proportions from the caller's ``numpy.random.Generator``.
  They are built directly as closed triangle meshes (surfaces of revolution,
  superellipsoids, a swept tube for the mug handle) and need only numpy and trimesh.
* **Meshes shipped in pybullet_data**: the 1000 ``random_urdfs/NNN`` objects and a few
  named household meshes (:data:`NAMED_OBJECTS`). Indices ``000-699``
  (:data:`DEV_INDICES`) are for development; ``700-999`` (:data:`EVAL_INDICES`) and every
  named object are reserved for evaluation: never tune anything on them. These need the
  ``synth`` extra (``pip install 'hoiguide[synth]'``: ``pybullet`` for the data files and
  ``manifold3d`` for exact mesh booleans).

Object frame and units (what :func:`load_object` returns): metres, the bounding-box centre at
the origin, the longest bounding-box side drawn uniformly from ``size_range``; the object's
own axes (a procedural shape's axis of revolution is +z). No random orientation is applied:
the grasp code places the object.

How a pybullet mesh becomes a closed surface: the ``random_urdfs`` OBJ files (and the teddy)
are convex decompositions (one ``o convex_k`` part per convex piece; the pieces touch but
barely overlap). Each piece is replaced by its convex hull pushed outward by 0.02 % of the
object's bounding-box diagonal, so that touching pieces overlap, and the pieces are united
with an exact mesh boolean; specks of less than 1 % of the volume are dropped. Other meshes
are cleaned (vertices merged, degenerate faces dropped), split into bodies, holes filled,
each body oriented outward, and the bodies united. When that still does not give a closed
surface the cleaned mesh is kept with ``metadata["watertight"] = False``. Large flat faces are
split (midpoint subdivision) so that vertex-colour patterns and shading have enough vertices,
up to the face budget.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hoiguide.types import Mesh

log = logging.getLogger(__name__)

__all__ = [
    "PROCEDURAL_KINDS", "DEV_INDICES", "EVAL_INDICES", "NAMED_OBJECTS", "BROKEN_INDICES",
    "ObjectSource", "parse_object_spec", "load_object", "pybullet_data_path",
]

PROCEDURAL_KINDS: tuple[str, ...] = (
    "box", "cylinder", "sphere", "bottle", "mug", "torus", "cone", "capsule", "ellipsoid",
    "can", "bowl", "cup",
)
"""Procedural shape kinds accepted by ``procedural:KIND``."""

DEV_INDICES = range(0, 700)
"""``random_urdfs`` indices for development (tuning allowed)."""

EVAL_INDICES = range(700, 1000)
"""``random_urdfs`` indices reserved for evaluation (never tune on them)."""

NAMED_OBJECTS: dict[str, str] = {
    "duck": "duck.obj",
    "bunny": "bunny.obj",
    "teddy": "teddy2_VHACD_CHs.obj",
    "mug": "objects/mug.obj",
    "lego": "lego/lego.obj",
    "jenga": "jenga/jenga.obj",
    "domino": "domino/domino.obj",
    "torus": "torus/torus_textured.obj",
    "soccerball": "soccerball.obj",
    "sphere": "sphere_smooth.obj",
    "cube": "cube.obj",
    "toy_cube": "toys/cube.obj",
    "toy_cylinder": "toys/cylinder.obj",
    "toy_prism": "toys/prism.obj",
    "shape_sorter": "toys/shape_sorter.obj",
    "stone": "stone.obj",
    "cone": "racecar/meshes/cone.obj",
}
"""Named graspable meshes in ``pybullet_data`` (name -> OBJ path relative to
``pybullet_data.getDataPath()``). All of them are evaluation objects."""

_NAMED_AXIS_SCALE: dict[str, tuple[float, float, float]] = {
    # the URDF scales these unit meshes anisotropically; keep the object's real proportions
    "jenga": (0.15, 0.05, 0.03),
}

BROKEN_INDICES: frozenset[int] = frozenset({168})
"""``random_urdfs`` indices whose OBJ holds no usable geometry (all vertices NaN); ranges in
:func:`parse_object_spec` skip them and naming one explicitly is an error."""

_KINDS = ("procedural", "pybullet")
_SPLITS = ("dev", "eval", "procedural")
_DEFAULT_MAX_FACES = 20_000
_DILATE_REL = 2.0e-4  # convex pieces are pushed out by this fraction of the bbox diagonal
_MIN_COMPONENT_FRACTION = 0.01  # united components smaller than this (of the volume) dropped
_SUBDIVIDE_EDGE_REL = 1.0 / 14.0  # split faces until edges are below this x the longest side
_SUBDIVIDE_MAX_FACES = 8_000  # ... or until another split would pass this many faces
_SYNTH_HINT = "pip install 'hoiguide[synth]'"


# --------------------------------------------------------------------------------------
# object sources and the --objects spec
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSource:
    """One object: ``kind`` ("procedural" | "pybullet"), ``name`` (a procedural kind such as
    ``"mug"``, a zero-padded ``random_urdfs`` index such as ``"012"``, or a named pybullet
    object such as ``"duck"``) and ``split`` ("dev" | "eval" | "procedural")."""

    kind: str
    name: str
    split: str

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"ObjectSource.kind: expected one of {_KINDS}, got {self.kind!r}")
        if self.split not in _SPLITS:
            raise ValueError(f"ObjectSource.split: expected one of {_SPLITS}, got "
                             f"{self.split!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def index(self) -> int | None:
        """The ``random_urdfs`` index, or None for procedural and named objects."""
        return int(self.name) if self.kind == "pybullet" and self.name.isdigit() else None

    @classmethod
    def procedural(cls, kind: str) -> "ObjectSource":
        if kind not in PROCEDURAL_KINDS:
            raise ValueError(_unknown("procedural kind", kind, PROCEDURAL_KINDS))
        return cls("procedural", kind, "procedural")

    @classmethod
    def pybullet_index(cls, index: int) -> "ObjectSource":
        if not 0 <= int(index) <= 999:
            raise ValueError(f"pybullet random_urdfs index must be in 0-999, got {index}")
        index = int(index)
        return cls("pybullet", f"{index:03d}", "dev" if index in DEV_INDICES else "eval")

    @classmethod
    def pybullet_named(cls, name: str) -> "ObjectSource":
        if name not in NAMED_OBJECTS:
            raise ValueError(_unknown("pybullet object name", name, tuple(NAMED_OBJECTS)))
        return cls("pybullet", name, "eval")


def _unknown(what: str, got: str, valid: tuple[str, ...] | list[str]) -> str:
    near = difflib.get_close_matches(got, list(valid), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown {what} {got!r}.{hint} Valid: {', '.join(valid)}"


_RANGE_RE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def _parse_pybullet_item(item: str, part: str) -> list[ObjectSource]:
    low = item.lower()
    if low in ("dev", "eval", "named", "all"):
        idx = {"dev": list(DEV_INDICES), "eval": list(EVAL_INDICES), "named": [],
               "all": list(range(1000))}[low]
        out = [ObjectSource.pybullet_index(i) for i in idx if i not in BROKEN_INDICES]
        if low in ("eval", "named", "all"):
            out += [ObjectSource.pybullet_named(n) for n in NAMED_OBJECTS]
        return out
    m = _RANGE_RE.match(item)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if not (0 <= a <= 999 and 0 <= b <= 999):
            raise ValueError(f"parse_object_spec: range {item!r} in {part!r} is outside the "
                             "random_urdfs indices 0-999")
        if a > b:
            raise ValueError(f"parse_object_spec: range {item!r} in {part!r} is reversed "
                             f"(start {a} > end {b})")
        skipped = [i for i in range(a, b + 1) if i in BROKEN_INDICES]
        if skipped:
            log.info("parse_object_spec: skipping broken random_urdfs %s", skipped)
        return [ObjectSource.pybullet_index(i) for i in range(a, b + 1)
                if i not in BROKEN_INDICES]
    if item.isdigit():
        i = int(item)
        if not 0 <= i <= 999:
            raise ValueError(f"parse_object_spec: index {item!r} in {part!r} is outside the "
                             "random_urdfs indices 0-999")
        if i in BROKEN_INDICES:
            raise ValueError(f"parse_object_spec: random_urdfs {i:03d} has no usable "
                             "geometry (its OBJ vertices are all NaN); pick another index")
        return [ObjectSource.pybullet_index(i)]
    if item in NAMED_OBJECTS:
        return [ObjectSource.pybullet_named(item)]
    raise ValueError(f"parse_object_spec: in {part!r}: "
                     + _unknown("pybullet object name", item, tuple(NAMED_OBJECTS))
                     + " (or an index 0-999, a range START-END, 'dev', 'eval', 'named', "
                       "'all')")


def parse_object_spec(spec: str) -> list[ObjectSource]:
    """Parse an ``--objects`` specification into a list of object sources.

    Grammar: one or more parts joined by ``+``; each part is ``KIND:ITEM,ITEM,...`` with KIND
    ``pybullet`` or ``procedural``:

    * ``pybullet:START-END`` (inclusive, e.g. ``0-699`` or ``000-010``), ``pybullet:12``,
      ``pybullet:duck,bunny`` (see :data:`NAMED_OBJECTS`), and the groups ``dev`` (0-699),
      ``eval`` (700-999 and the named objects), ``named`` and ``all``;
    * ``procedural:box,mug`` (see :data:`PROCEDURAL_KINDS`) or ``procedural:all``.

    Duplicates are dropped (first occurrence kept); known-broken indices
    (:data:`BROKEN_INDICES`) are skipped in ranges. Objects 700-999 and named ones get
    ``split == "eval"``, 0-699 ``"dev"``, procedural ones ``"procedural"``.

    Raises:
        ValueError: naming the bad part, listing the valid kinds or names and suggesting the
            nearest ones.
    """
    if not isinstance(spec, str):
        raise TypeError(f"parse_object_spec: expected a string, got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError("parse_object_spec: empty object specification; expected e.g. "
                         "'pybullet:0-699', 'pybullet:duck,bunny' or 'procedural:box,mug'")
    out: list[ObjectSource] = []
    seen: set[ObjectSource] = set()
    for part in spec.split("+"):
        part = part.strip()
        if ":" not in part:
            raise ValueError(f"parse_object_spec: part {part!r} has no 'KIND:' prefix; expected "
                             f"one of {', '.join(k + ':...' for k in _KINDS)}")
        kind, rest = (s.strip() for s in part.split(":", 1))
        kind = kind.lower()
        if kind not in _KINDS:
            raise ValueError(f"parse_object_spec: in {part!r}: " + _unknown("object kind",
                                                                            kind, _KINDS))
        items = [s.strip() for s in rest.split(",")]
        if not rest.strip() or any(not s for s in items):
            raise ValueError(f"parse_object_spec: part {part!r} has an empty item; expected "
                             f"{kind}:ITEM[,ITEM...]")
        for item in items:
            if kind == "procedural":
                if item.lower() == "all":
                    srcs = [ObjectSource.procedural(k) for k in PROCEDURAL_KINDS]
                elif item.lower() in PROCEDURAL_KINDS:
                    srcs = [ObjectSource.procedural(item.lower())]
                else:
                    raise ValueError(f"parse_object_spec: in {part!r}: "
                                     + _unknown("procedural kind", item, PROCEDURAL_KINDS)
                                     + " (or 'all')")
            else:
                srcs = _parse_pybullet_item(item, part)
            for s in srcs:
                if s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


# --------------------------------------------------------------------------------------
# optional dependencies
# --------------------------------------------------------------------------------------


def pybullet_data_path() -> Path:
    """The ``pybullet_data`` folder (from the ``pybullet`` package)."""
    try:
        import pybullet_data
    except ImportError as e:
        raise ImportError("pybullet objects need the pybullet_data files shipped with pybullet: "
                          f"{_SYNTH_HINT}") from e
    return Path(pybullet_data.getDataPath())


def _manifold():
    try:
        import manifold3d
    except ImportError as e:
        raise ImportError("exact mesh booleans for synthetic objects need manifold3d: "
                          f"{_SYNTH_HINT}") from e
    return manifold3d


def _has_manifold() -> bool:
    try:
        _manifold()
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------
# mesh helpers (numpy)
# --------------------------------------------------------------------------------------


def _signed_volume(V: np.ndarray, F: np.ndarray) -> float:
    t = V[F]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


def _orient_outward(V: np.ndarray, F: np.ndarray) -> np.ndarray:
    return F[:, ::-1].copy() if _signed_volume(V, F) < 0 else F


def _is_closed(F: np.ndarray) -> bool:
    """Every undirected edge used by exactly two faces, in opposite directions."""
    if len(F) == 0:
        return False
    e = np.stack([F, np.roll(F, -1, axis=1)], -1).reshape(-1, 2)
    key = np.sort(e, axis=1)
    _, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    if not np.all(cnt == 2):
        return False
    forward = e[:, 0] < e[:, 1]
    s = np.zeros(cnt.shape[0], np.int64)
    np.add.at(s, inv.reshape(-1), np.where(forward, 1, -1))
    return bool(np.all(s == 0))


def _subdivide(V: np.ndarray, F: np.ndarray, max_edge: float, max_faces: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Uniform 1-to-4 midpoint subdivision while some edge is longer than ``max_edge`` and
    the result stays within ``max_faces`` (keeps the surface and closedness exactly)."""
    while len(F) * 4 <= max_faces:
        t = V[F]
        longest = np.linalg.norm(t - np.roll(t, -1, axis=1), axis=-1).max()
        if longest <= max_edge:
            break
        e = np.sort(np.stack([F, np.roll(F, -1, axis=1)], -1).reshape(-1, 2), axis=1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        mid = len(V) + inv.reshape(-1, 3)  # midpoint of edge (k, k+1) of each face
        V = np.concatenate([V, 0.5 * (V[uniq[:, 0]] + V[uniq[:, 1]])])
        a, b, c = F[:, 0], F[:, 1], F[:, 2]
        ab, bc, ca = mid[:, 0], mid[:, 1], mid[:, 2]
        F = np.concatenate([np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1),
                            np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)])
    return V, F


def _pole_grid(rings: np.ndarray, pole0: np.ndarray, pole1: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """A closed sphere-like mesh from ``rings (R, S, 3)`` (each ring a closed loop of S
    points, in order from ``pole0`` to ``pole1``). Winding is fixed afterwards."""
    R, S = rings.shape[:2]
    V = np.concatenate([pole0[None], rings.reshape(-1, 3), pole1[None]])
    idx = 1 + np.arange(R * S).reshape(R, S)
    j = np.arange(S)
    jn = (j + 1) % S
    faces = [np.stack([np.zeros(S, np.int64), idx[0, jn], idx[0, j]], 1)]
    for i in range(R - 1):
        a, b, c, d = idx[i, j], idx[i, jn], idx[i + 1, jn], idx[i + 1, j]
        faces += [np.stack([a, b, c], 1), np.stack([a, c, d], 1)]
    top = len(V) - 1
    faces.append(np.stack([np.full(S, top), idx[R - 1, j], idx[R - 1, jn]], 1))
    F = np.concatenate(faces).astype(np.int64)
    return V, _orient_outward(V, F)


def _resample_polyline(points: np.ndarray, spacing: float) -> np.ndarray:
    """Insert points so that no segment is longer than ``spacing`` (keeps every corner)."""
    out = [points[:1]]
    for p, q in zip(points[:-1], points[1:]):
        n = max(1, int(math.ceil(np.linalg.norm(q - p) / spacing)))
        s = (np.arange(1, n + 1) / n)[:, None]
        out.append(p + s * (q - p))
    return np.concatenate(out)


def _arc(center: tuple[float, float], radius: float, a0: float, a1: float,
         n: int = 8) -> np.ndarray:
    """Points ``(n + 1, 2)`` on a circular arc, angles in radians, (r, z) plane."""
    a = np.linspace(a0, a1, n + 1)
    return np.stack([center[0] + radius * np.cos(a), center[1] + radius * np.sin(a)], 1)


def _lathe(profile: np.ndarray, segments: int = 64, spacing: float | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about +z of a profile ``(n, 2)`` of ``(r, z)`` points that starts
    and ends on the axis (``r = 0``); closed and outward-wound."""
    prof = np.asarray(profile, np.float64)
    if spacing is not None:
        prof = _resample_polyline(prof, spacing)
    # drop consecutive duplicates
    keep = np.ones(len(prof), bool)
    keep[1:] = np.linalg.norm(np.diff(prof, axis=0), axis=1) > 1e-9
    prof = prof[keep]
    if abs(prof[0, 0]) > 1e-12 or abs(prof[-1, 0]) > 1e-12 or np.any(prof[1:-1, 0] <= 0):
        raise AssertionError("lathe profile must start and end on the axis")
    ang = 2 * np.pi * np.arange(segments) / segments
    r, z = prof[1:-1, 0:1], prof[1:-1, 1:2]
    rings = np.stack([r * np.cos(ang), r * np.sin(ang), np.broadcast_to(z, r.shape[:1] +
                                                                         ang.shape)], -1)
    return _pole_grid(rings, np.array([0, 0, prof[0, 1]]), np.array([0, 0, prof[-1, 1]]))


def _arclength_params(curve: Callable[[np.ndarray], np.ndarray], t0: float, t1: float,
                      n: int, endpoint: bool) -> np.ndarray:
    """Parameters giving ``n`` points evenly spaced by arc length along ``curve`` on
    ``[t0, t1]`` (``endpoint=False`` for a closed curve)."""
    t = np.linspace(t0, t1, 16385)
    p = curve(t)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    target = np.linspace(0, s[-1], n + (0 if endpoint else 1))
    if not endpoint:
        target = target[:-1]
    return np.interp(target, s, t)


def _superellipsoid(a: float, b: float, c: float, e1: float, e2: float,
                    rings: int = 40, segments: int = 72) -> tuple[np.ndarray, np.ndarray]:
    """Closed superellipsoid ``((|x/a|^(2/e2) + |y/b|^(2/e2))^(e2/e1) + |z/c|^(2/e1) = 1``
    (``e = 1``: ellipsoid; ``e ~ 0.2``: a box with rounded edges). Vertices are the radial
    projections of a latitude-longitude grid of directions whose angles are chosen so that
    the points are evenly spaced by arc length along the equator and a meridian (so flat
    faces get as many vertices as curved edges)."""

    def polar(p: float, q: float, e: float, t: np.ndarray) -> np.ndarray:
        ct, st = np.cos(t), np.sin(t)
        r = (np.abs(ct / p) ** (2 / e) + np.abs(st / q) ** (2 / e)) ** (-e / 2)
        return np.stack([r * ct, r * st], 1)

    phi = _arclength_params(lambda t: polar(a, b, e2, t), 0.0, 2 * np.pi, segments,
                            endpoint=False)
    m = max(a, b)
    psi = _arclength_params(lambda t: polar(m, c, e1, t), -np.pi / 2, np.pi / 2, rings + 1,
                            endpoint=True)[1:-1]
    d = np.stack([np.cos(psi)[:, None] * np.cos(phi)[None],
                  np.cos(psi)[:, None] * np.sin(phi)[None],
                  np.broadcast_to(np.sin(psi)[:, None], (len(psi), len(phi)))], -1)
    Fd = ((np.abs(d[..., 0] / a) ** (2 / e2) + np.abs(d[..., 1] / b) ** (2 / e2))
          ** (e2 / e1) + np.abs(d[..., 2] / c) ** (2 / e1))
    ring = d * (Fd ** (-e1 / 2))[..., None]
    return _pole_grid(ring, np.array([0.0, 0.0, -c]), np.array([0.0, 0.0, c]))


def _torus(R: float, r: float, segments: int = 72, tube: int = 28
           ) -> tuple[np.ndarray, np.ndarray]:
    u = 2 * np.pi * np.arange(segments) / segments
    v = 2 * np.pi * np.arange(tube) / tube
    uu, vv = np.meshgrid(u, v, indexing="ij")
    V = np.stack([(R + r * np.cos(vv)) * np.cos(uu), (R + r * np.cos(vv)) * np.sin(uu),
                  r * np.sin(vv)], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(segments), np.arange(tube), indexing="ij")
    a = (i * tube + j)
    b = (((i + 1) % segments) * tube + j)
    c = (((i + 1) % segments) * tube + (j + 1) % tube)
    d = (i * tube + (j + 1) % tube)
    F = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                        np.stack([a, c, d], -1).reshape(-1, 3)]).astype(np.int64)
    return V, _orient_outward(V, F)


def _sweep_tube(path: np.ndarray, radius: float, sides: int = 20
                ) -> tuple[np.ndarray, np.ndarray]:
    """Closed tube of circular section swept along a planar path in the x-z plane (the
    section's frame: y and the in-plane normal), capped at both ends."""
    tang = np.gradient(path, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    y = np.array([0.0, 1.0, 0.0])
    nrm = np.cross(tang, y)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    a = 2 * np.pi * np.arange(sides) / sides
    rings = (path[:, None] + radius * (np.cos(a)[None, :, None] * nrm[:, None]
                                       + np.sin(a)[None, :, None] * y[None, None]))
    return _pole_grid(rings, path[0], path[-1])


# --------------------------------------------------------------------------------------
# procedural shapes (random proportions; any units, rescaled by load_object)
# --------------------------------------------------------------------------------------


def _fillet_box_profile(R: float, z0: float, z1: float, rb: float, rt: float) -> list:
    """Closed-cylinder profile from the bottom pole to the top pole with fillets."""
    return [np.array([[0.0, z0]]), _arc((R - rb, z0 + rb), rb, -np.pi / 2, 0.0, 6),
            _arc((R - rt, z1 - rt), rt, 0.0, np.pi / 2, 6), np.array([[0.0, z1]])]


def _make_box(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ext = np.sort(np.concatenate([[1.0], rng.uniform(0.25, 1.0, 2)]))[::-1]
    ext = ext[rng.permutation(3)]
    e = float(rng.uniform(0.08, 0.25))
    return _superellipsoid(ext[0], ext[1], ext[2], e, e, rings=48, segments=96)


def _make_sphere(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _superellipsoid(1.0, 1.0, 1.0, 1.0, 1.0, rings=32, segments=64)


def _make_ellipsoid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    b, c = rng.uniform(0.35, 0.9, 2)
    return _superellipsoid(1.0, float(b), float(c), 1.0, 1.0, rings=36, segments=64)


def _make_cylinder(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R, h = 1.0, float(rng.uniform(0.4, 3.0))
    rb = 0.08 * min(R, h)
    prof = np.concatenate(_fillet_box_profile(R, -h, h, rb, rb))
    return _lathe(prof, 64, spacing=0.08)


def _make_can(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R, h = 1.0, float(rng.uniform(0.9, 2.2))
    prof = np.concatenate([
        np.array([[0.0, -h + 0.08]]),
        np.array([[0.75, -h + 0.02]]),
        _arc((0.85, -h + 0.1), 0.1, -np.pi / 2, 0.0, 4)[1:],  # bottom chime
        np.array([[0.93, -h + 0.12], [R, -h + 0.25]]),
        np.array([[R, h - 0.25], [0.9, h - 0.1]]),
        _arc((0.92, h - 0.03), 0.04, -np.pi * 0.6, np.pi / 2, 6),  # top rim (rolled lip)
        np.array([[0.84, h - 0.02], [0.82, h - 0.08], [0.0, h - 0.08]]),
    ])
    return _lathe(prof, 64, spacing=0.08)


def _make_bottle(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R = 1.0
    body = float(rng.uniform(1.6, 3.0))  # body height
    shoulder = float(rng.uniform(0.5, 1.2))
    rn = float(rng.uniform(0.28, 0.45))
    neck = float(rng.uniform(0.5, 1.2))
    cap_h, rc = 0.35 * neck + 0.15, 1.15 * rn
    z0, zs = 0.0, body
    s = np.linspace(0, 1, 12)[1:]
    sh = np.stack([rn + (R - rn) * 0.5 * (1 + np.cos(np.pi * s)), zs + shoulder * s], 1)
    zn = zs + shoulder
    zc = zn + neck
    prof = np.concatenate([
        np.array([[0.0, z0]]), _arc((R - 0.15, z0 + 0.15), 0.15, -np.pi / 2, 0.0, 6),
        np.array([[R, zs]]), sh,
        np.array([[rn, zc - cap_h], [rc, zc - cap_h]]),
        _arc((rc - 0.06, zc - 0.06), 0.06, 0.0, np.pi / 2, 4), np.array([[0.0, zc]]),
    ])
    return _lathe(prof, 64, spacing=0.1)


def _make_cone(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R, H = 1.0, float(rng.uniform(0.8, 2.5))
    rb, rt = 0.08, 0.06
    L = math.hypot(R, H)
    side_normal = math.atan2(R, H)  # angle of the side's outward normal in the (r, z) plane
    # fillets tangent to the base and the side (centre at distance rb from both), and to
    # the side at the tip (centre on the axis)
    base_c = (R - rb * (R + L) / H, rb)
    tip_c = (0.0, H - rt * L / R)
    prof = np.concatenate([
        np.array([[0.0, 0.0]]), _arc(base_c, rb, -np.pi / 2, side_normal, 6),
        _arc(tip_c, rt, side_normal, np.pi / 2, 5)])
    return _lathe(prof, 64, spacing=0.08)


def _make_capsule(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R, l = 1.0, float(rng.uniform(0.4, 2.0))
    prof = np.concatenate([_arc((0.0, -l), R, -np.pi / 2, 0.0, 12),
                           _arc((0.0, l), R, 0.0, np.pi / 2, 12)])
    return _lathe(prof, 64, spacing=0.1)


def _make_torus(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _torus(1.0, float(rng.uniform(0.15, 0.45)))


def _hollow_profile(outer: np.ndarray, inner: np.ndarray, t: float) -> np.ndarray:
    """Profile of an open vessel: ``outer`` (bottom pole -> rim, (r, z) points) and
    ``inner`` (rim -> inner floor pole) joined by a rounded rim of diameter ``t``."""
    (ro, zo), (ri, zi) = outer[-1], inner[0]
    c = (0.5 * (ro + ri), 0.5 * (zo + zi))
    rim = _arc(c, 0.5 * math.hypot(ro - ri, zo - zi),
               math.atan2(zo - c[1], ro - c[0]), math.atan2(zi - c[1], ri - c[0]) + 0.0, 8)
    if rim[4, 1] < c[1]:  # go over the top, not under
        rim = _arc(c, 0.5 * math.hypot(ro - ri, zo - zi), math.atan2(zo - c[1], ro - c[0]),
                   math.atan2(zi - c[1], ri - c[0]) + 2 * np.pi, 8)
    return np.concatenate([outer, rim[1:-1], inner])


def _mug_body(R: float, H: float, t: float, f: float) -> tuple[np.ndarray, np.ndarray]:
    rb, ri = 0.12 * R, 0.15 * R
    outer = np.concatenate([np.array([[0.0, 0.0]]),
                            _arc((R - rb, rb), rb, -np.pi / 2, 0.0, 6),
                            np.array([[R, H - t / 2]])])
    inner = np.concatenate([np.array([[R - t, H - t / 2]]),
                            _arc((R - t - ri, f + ri), ri, 0.0, -np.pi / 2, 6),
                            np.array([[0.0, f]])])
    return _lathe(_hollow_profile(outer, inner, t), 72, spacing=0.07 * R)


def _make_mug(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R = 1.0
    H = float(rng.uniform(1.6, 2.6))
    t = float(rng.uniform(0.07, 0.11))
    V, F = _mug_body(R, H, t, f=0.12)
    # handle: a tube along a half-ellipse outside the wall, its straight ends buried in the
    # wall (x in (R - t, R)), so the union with the body is a single closed surface
    rh = float(rng.uniform(0.08, 0.12))
    hh = float(rng.uniform(0.24, 0.32)) * H
    zc = 0.5 * H + float(rng.uniform(-0.03, 0.03)) * H
    w = float(rng.uniform(0.35, 0.6)) + rh
    x_end = R - 0.5 * t
    th = np.linspace(np.pi / 2, -np.pi / 2, 25)
    arc_pts = np.stack([R + w * np.cos(th), np.zeros_like(th), zc + hh * np.sin(th)], 1)
    lead = np.linspace(x_end, R, 4)[:-1]
    top = np.stack([lead, np.zeros_like(lead), np.full_like(lead, zc + hh)], 1)
    bot = np.stack([lead[::-1], np.zeros_like(lead), np.full_like(lead, zc - hh)], 1)
    path = np.concatenate([top, arc_pts, bot])
    Vh, Fh = _sweep_tube(path, rh, sides=20)
    return _union_or_concat([(V, F), (Vh, Fh)], "procedural mug")


def _make_bowl(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R = 1.0
    H = float(rng.uniform(0.45, 0.85))
    t = float(rng.uniform(0.06, 0.1))
    Rf = float(rng.uniform(0.35, 0.55))
    th = np.linspace(0, np.pi / 2, 16)
    outer = np.concatenate([np.array([[0.0, 0.0]]),
                            np.stack([Rf + (R - Rf) * np.sin(th),
                                      (H - t / 2) * (1 - np.cos(th))], 1)])
    inner = np.concatenate([np.stack([(Rf - t) + (R - Rf) * np.sin(th[::-1]),
                                      t + (H - t / 2 - t) * (1 - np.cos(th[::-1]))], 1),
                            np.array([[0.0, t]])])
    inner[0] = [R - t, H - t / 2]
    return _lathe(_hollow_profile(outer, inner, t), 72, spacing=0.06)


def _make_cup(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    R = 1.0
    H = float(rng.uniform(1.5, 2.6))
    Rb = float(rng.uniform(0.6, 0.85)) * R
    t = float(rng.uniform(0.05, 0.08))
    rb = 0.1
    outer = np.concatenate([np.array([[0.0, 0.0]]), _arc((Rb - rb, rb), rb, -np.pi / 2,
                                                         0.0, 5), np.array([[R, H - t / 2]])])
    f = 0.1
    inner = np.array([[R - t, H - t / 2], [Rb - t - 0.02, f + 0.03], [Rb - t - 0.1, f],
                      [0.0, f]])
    return _lathe(_hollow_profile(outer, inner, t), 72, spacing=0.08)


_PROCEDURAL_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "box": _make_box, "cylinder": _make_cylinder, "sphere": _make_sphere,
    "bottle": _make_bottle, "mug": _make_mug, "torus": _make_torus, "cone": _make_cone,
    "capsule": _make_capsule, "ellipsoid": _make_ellipsoid, "can": _make_can,
    "bowl": _make_bowl, "cup": _make_cup,
}
assert tuple(_PROCEDURAL_BUILDERS) == PROCEDURAL_KINDS


# --------------------------------------------------------------------------------------
# booleans
# --------------------------------------------------------------------------------------


def _to_manifold(V: np.ndarray, F: np.ndarray):
    mf = _manifold()
    mesh = mf.Mesh64(vert_properties=np.array(V, np.float64, order="C", copy=True),
                     tri_verts=np.array(F, np.uint64, order="C", copy=True))
    return mf.Manifold(mesh)


def _from_manifold(m) -> tuple[np.ndarray, np.ndarray]:
    mesh = m.to_mesh64()
    V = np.asarray(mesh.vert_properties, np.float64)[:, :3].copy()
    F = np.asarray(mesh.tri_verts).astype(np.int64).reshape(-1, 3)
    return V, F


def _union(manifolds: list) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact union; components below ``_MIN_COMPONENT_FRACTION`` of the volume dropped.
    Returns ``(V, F, number of components kept)``."""
    mf = _manifold()
    u = mf.Manifold.batch_boolean(manifolds, mf.OpType.Add) if len(manifolds) > 1 \
        else manifolds[0]
    if u.status() != mf.Error.NoError or u.is_empty():
        raise RuntimeError(f"mesh union failed ({u.status()})")
    comps = u.decompose()
    vols = np.array([c.volume() for c in comps])
    keep = [c for c, v in zip(comps, vols) if v >= _MIN_COMPONENT_FRACTION * vols.sum()]
    if len(keep) < len(comps):
        log.debug("dropped %d specks (%.3g%% of the volume)", len(comps) - len(keep),
                  100 * (1 - sum(c.volume() for c in keep) / vols.sum()))
    u = mf.Manifold.batch_boolean(keep, mf.OpType.Add) if len(keep) > 1 else keep[0]
    V, F = _from_manifold(u)
    return V, F, len(keep)


def _union_or_concat(parts: list[tuple[np.ndarray, np.ndarray]], what: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Union of closed parts with manifold3d; without it, the parts are concatenated (each
    is closed, but they intersect each other) and a warning is logged."""
    if _has_manifold():
        V, F, _ = _union([_to_manifold(v, f) for v, f in parts])
        return V, _orient_outward(V, F)
    log.warning("%s: manifold3d is not installed, its parts are kept as separate "
                "intersecting closed surfaces (%s)", what, _SYNTH_HINT)
    off = np.cumsum([0] + [len(v) for v, _ in parts])
    return (np.concatenate([v for v, _ in parts]),
            np.concatenate([f + o for (_, f), o in zip(parts, off)]))


# --------------------------------------------------------------------------------------
# pybullet meshes
# --------------------------------------------------------------------------------------


def _read_obj(path: Path) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Vertices ``(N, 3)`` and the triangulated faces of each ``o``/``g`` group."""
    verts: list[list[float]] = []
    groups: dict[str, list[tuple[int, int, int]]] = {}
    cur = "default"
    with open(path, "r", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                vals = line.split()[1:4]
                try:
                    verts.append([float(x) for x in vals])
                except ValueError:
                    verts.append([math.nan] * 3)
            elif line.startswith(("o ", "g ")):
                tok = line.split(maxsplit=1)
                cur = tok[1].strip() if len(tok) > 1 else "default"
            elif line.startswith("f "):
                idx = []
                for tok in line.split()[1:]:
                    i = int(tok.split("/")[0])
                    idx.append(i - 1 if i > 0 else len(verts) + i)
                g = groups.setdefault(cur, [])
                for k in range(1, len(idx) - 1):
                    g.append((idx[0], idx[k], idx[k + 1]))
    V = np.asarray(verts, np.float64).reshape(-1, 3)
    out = [(k, np.asarray(f, np.int64).reshape(-1, 3)) for k, f in groups.items() if f]
    return V, out


def _clean(V: np.ndarray, F: np.ndarray):
    """A trimesh with finite vertices, vertices merged, degenerate and duplicate faces and
    unreferenced vertices removed."""
    import trimesh

    ok = np.isfinite(V).all(1)
    F = F[ok[F].all(1)]
    tm = trimesh.Trimesh(V, F, process=False)
    tm.merge_vertices()
    tm.update_faces(tm.nondegenerate_faces(height=1e-12))
    tm.update_faces(tm.unique_faces())
    tm.remove_unreferenced_vertices()
    return tm


def _fill_holes(tm):
    """Cap every simple boundary loop of a trimesh with a fan around the loop's centroid
    (oriented to match the surrounding faces). Returns a new trimesh, or the input when the
    boundary is not made of simple loops."""
    import trimesh

    F = np.asarray(tm.faces, np.int64)
    V = np.asarray(tm.vertices, np.float64)
    he = np.stack([F, np.roll(F, -1, axis=1)], -1).reshape(-1, 2)
    key = he[:, 0] * (len(V) + 1) + he[:, 1]
    rev = he[:, 1] * (len(V) + 1) + he[:, 0]
    border = he[~np.isin(rev, key)]
    if len(border) == 0:
        return tm
    starts, counts = np.unique(border[:, 0], return_counts=True)
    if np.any(counts > 1):
        return tm
    nxt = dict(zip(border[:, 0].tolist(), border[:, 1].tolist()))
    newV, newF = [V], [F]
    nv = len(V)
    seen: set[int] = set()
    for s in starts.tolist():
        if s in seen:
            continue
        loop = [s]
        seen.add(s)
        while nxt.get(loop[-1]) is not None and nxt[loop[-1]] != s:
            loop.append(nxt[loop[-1]])
            if loop[-1] in seen:
                return tm
            seen.add(loop[-1])
        if nxt.get(loop[-1]) != s:
            return tm
        c = V[loop].mean(0)
        newV.append(c[None])
        a = np.asarray(loop)
        b = np.roll(a, -1)
        newF.append(np.stack([b, a, np.full_like(a, nv)], 1))
        nv += 1
    return trimesh.Trimesh(np.concatenate(newV), np.concatenate(newF), process=False)


def _is_convex_piece(tm) -> bool:
    import trimesh

    if len(tm.vertices) < 4:
        return False
    try:
        hull = trimesh.convex.convex_hull(tm.vertices)
    except Exception:  # coplanar or degenerate
        return False
    return bool(tm.is_watertight and hull.volume > 0
                and abs(abs(tm.volume) - hull.volume) <= 0.02 * hull.volume)


def _dilated_hull(P: np.ndarray, eps: float):
    """Convex hull of ``P`` with every face pushed outward by ``eps`` (a manifold)."""
    mf = _manifold()
    h = mf.Manifold.hull_points(np.ascontiguousarray(P, np.float64))
    if h.is_empty() or eps <= 0:
        return h
    V, F = _from_manifold(h)
    tri = V[F]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    return mf.Manifold.hull_points((tri + eps * n[:, None]).reshape(-1, 3))


def _process_pybullet(path: Path, axis_scale: tuple[float, float, float] | None
                      ) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """``(V, F, watertight, components)`` in the file's units (not yet rescaled)."""
    import trimesh

    V, groups = _read_obj(path)
    if axis_scale is not None:
        V = V * np.asarray(axis_scale, np.float64)
    finite = np.isfinite(V).all(1)
    if not groups or not finite.any():
        raise ValueError(f"{path.name}: no usable geometry (no faces or all vertices NaN)")
    used = np.unique(np.concatenate([f.reshape(-1) for _, f in groups]))
    used = used[finite[used]]
    if len(used) < 4:
        raise ValueError(f"{path.name}: no usable geometry (fewer than 4 finite vertices)")
    diag = float(np.linalg.norm(V[used].max(0) - V[used].min(0)))
    pieces = [_clean(V, F) for _, F in groups]
    pieces = [p for p in pieces if len(p.faces)]
    convex_decomp = len(pieces) > 1 and all(_is_convex_piece(p) for p in pieces)
    if convex_decomp:
        hulls = [_dilated_hull(np.asarray(p.vertices), _DILATE_REL * diag) for p in pieces]
        hulls = [h for h in hulls if not h.is_empty()]
        Vu, Fu, ncomp = _union(hulls)
        return Vu, _orient_outward(Vu, Fu), True, ncomp
    # general mesh: bodies, holes filled, oriented outward, united
    tm = trimesh.util.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    tm = _clean(np.asarray(tm.vertices), np.asarray(tm.faces))
    bodies = tm.split(only_watertight=False)
    total_area = float(tm.area)
    closed, open_ = [], []
    for b in bodies:
        if b.area < 1e-4 * total_area:
            continue  # stray triangles
        if not b.is_watertight:
            b = _fill_holes(b)
        if b.is_watertight and b.is_winding_consistent:
            trimesh.repair.fix_normals(b)
            if b.volume > 0:
                closed.append(b)
                continue
        open_.append(b)
    if closed and not open_ and _has_manifold():
        try:
            Vu, Fu, ncomp = _union([_to_manifold(np.asarray(b.vertices), np.asarray(b.faces))
                                    for b in closed])
            return Vu, _orient_outward(Vu, Fu), True, ncomp
        except RuntimeError as e:
            log.debug("%s: union failed (%s); keeping the bodies as they are", path.name, e)
    if closed and not open_ and len(closed) == 1:
        b = closed[0]
        return np.asarray(b.vertices), np.asarray(b.faces, np.int64), True, 1
    keep = closed + open_
    tm = trimesh.util.concatenate(keep) if len(keep) > 1 else keep[0]
    trimesh.repair.fix_normals(tm, multibody=True)
    watertight = bool(tm.is_watertight and tm.is_winding_consistent and tm.volume > 0)
    if not watertight:
        log.info("%s: could not make a closed surface (%d open bodies); kept as is, "
                 "metadata['watertight'] = False", path.name, len(open_))
    return (np.asarray(tm.vertices), np.asarray(tm.faces, np.int64), watertight,
            len(tm.split(only_watertight=False)))


def _pybullet_file(source: ObjectSource) -> tuple[Path, tuple[float, float, float] | None]:
    root = pybullet_data_path()
    if source.index is not None:
        return root / "random_urdfs" / source.name / f"{source.name}.obj", None
    if source.name not in NAMED_OBJECTS:
        raise ValueError(_unknown("pybullet object name", source.name, tuple(NAMED_OBJECTS)))
    return root / NAMED_OBJECTS[source.name], _NAMED_AXIS_SCALE.get(source.name)


@functools.lru_cache(maxsize=128)
def _pybullet_base(name: str) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Processed mesh of one pybullet object, centred, longest side 1 (cached, read-only)."""
    src = ObjectSource.pybullet_index(int(name)) if name.isdigit() else \
        ObjectSource.pybullet_named(name)
    if src.index is not None and src.index in BROKEN_INDICES:
        raise ValueError(f"pybullet:{name}: random_urdfs {name} has no usable geometry "
                         "(its OBJ vertices are all NaN)")
    path, axis_scale = _pybullet_file(src)
    if not path.is_file():
        raise FileNotFoundError(f"pybullet:{name}: missing mesh file {path}")
    V, F, watertight, ncomp = _process_pybullet(path, axis_scale)
    V, F = _normalise(V, F)
    for a in (V, F):
        a.setflags(write=False)
    return V, F, watertight, ncomp


# --------------------------------------------------------------------------------------
# public entry
# --------------------------------------------------------------------------------------


def _normalise(V: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unreferenced vertices, centre at the bbox centre, longest side 1."""
    used = np.unique(F)
    remap = np.full(len(V), -1, np.int64)
    remap[used] = np.arange(len(used))
    V, F = V[used], remap[F]
    lo, hi = V.min(0), V.max(0)
    return (V - 0.5 * (lo + hi)) / float((hi - lo).max()), F


def _cap_faces(V: np.ndarray, F: np.ndarray, max_faces: int, watertight: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """Simplify to at most ``max_faces`` faces: manifold3d's shape-preserving simplification
    (tolerance up to 1 % of the longest side, keeps the surface closed) first, then quadric
    decimation through trimesh when ``fast_simplification`` is installed; otherwise the mesh
    is kept as it is and a warning is logged. ``V`` is normalised (longest side 1)."""
    if len(F) <= max_faces:
        return V, F
    if watertight and _has_manifold():
        m = _to_manifold(V, F)
        tol = 1e-4
        while tol <= 0.01:
            Vs, Fs = _from_manifold(m.simplify(tol))
            if len(Fs) <= max_faces:
                return Vs, _orient_outward(Vs, Fs)
            tol *= 2
        V, F = Vs, _orient_outward(Vs, Fs)
    try:
        import trimesh

        tm = trimesh.Trimesh(V, F, process=False).simplify_quadric_decimation(
            face_count=max_faces)
        Vd, Fd = np.asarray(tm.vertices), np.asarray(tm.faces, np.int64)
        if watertight and not _is_closed(Fd):
            log.warning("decimation to %d faces opened the surface; keeping %d faces",
                        max_faces, len(F))
            return V, F
        return Vd, Fd
    except Exception as e:  # fast_simplification missing
        log.warning("could not decimate a %d-face mesh to %d faces (%s); kept as is",
                    len(F), max_faces, e)
        return V, F


def load_object(source: ObjectSource | str, *, rng: np.random.Generator,
                size_range: tuple[float, float] = (0.05, 0.20),
                max_faces: int = _DEFAULT_MAX_FACES, dtype: torch.dtype = torch.float32
                ) -> Mesh:
    """Build or load one object as a closed mesh in its own frame.

    Args:
        source: an :class:`ObjectSource` (or a one-object spec string such as
            ``"procedural:mug"`` or ``"pybullet:012"``).
        rng: the random generator; procedural proportions and the size are drawn from it,
            so the same generator state gives the same mesh.
        size_range: ``(min, max)`` metres for the longest bounding-box side (drawn
            uniformly).
        max_faces: face budget (large meshes are simplified, small ones subdivided up to it).
        dtype: vertex dtype.

    Returns:
        A :class:`~hoiguide.types.Mesh` in metres, bounding-box centre at the origin, faces
        wound counter-clockwise seen from outside, no colours. ``metadata``: ``"source"``
        (``str(source)``), ``"split"``, ``"watertight"`` (closed, consistently wound, positive
        volume), ``"components"`` (connected bodies), ``"size"`` (longest side, metres) and
        ``"self_intersecting"`` (True only for a procedural mug built without manifold3d).

    Raises:
        ValueError: unknown object or bad ``size_range``; ImportError: pybullet objects
        without the ``synth`` extra.
    """
    if isinstance(source, str):
        parsed = parse_object_spec(source)
        if len(parsed) != 1:
            raise ValueError(f"load_object: expected a spec naming one object, got {source!r} "
                             f"({len(parsed)} objects)")
        source = parsed[0]
    if not isinstance(source, ObjectSource):
        raise TypeError(f"load_object: expected ObjectSource or str, got "
                        f"{type(source).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"load_object: expected rng to be a numpy.random.Generator, got "
                        f"{type(rng).__name__}")
    lo, hi = (float(x) for x in size_range)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"load_object: expected 0 < size_range[0] <= size_range[1], got "
                         f"{tuple(size_range)}")
    if int(max_faces) < 100:
        raise ValueError(f"load_object: expected max_faces >= 100, got {max_faces}")
    meta: dict = {"source": str(source), "split": source.split}
    if source.kind == "procedural":
        if source.name not in _PROCEDURAL_BUILDERS:
            raise ValueError("load_object: " + _unknown("procedural kind", source.name,
                                                        PROCEDURAL_KINDS))
        V, F = _PROCEDURAL_BUILDERS[source.name](rng)
        V, F = _normalise(V, F)
        closed = _is_closed(F)
        mug_concat = source.name == "mug" and not _has_manifold()
        meta["self_intersecting"] = mug_concat
        meta["components"] = 2 if mug_concat else 1
        watertight = closed
    else:
        Vb, Fb, watertight, ncomp = _pybullet_base(source.name)
        V, F = Vb.copy(), Fb.copy()
        meta["components"] = ncomp
    size = float(rng.uniform(lo, hi))
    if len(F) > int(max_faces):
        V, F = _normalise(*_cap_faces(V, F, int(max_faces), watertight))
    if source.kind == "pybullet":  # procedural shapes are built finely tessellated
        V, F = _subdivide(V, F, _SUBDIVIDE_EDGE_REL, min(int(max_faces), _SUBDIVIDE_MAX_FACES))
    V = V * size
    if watertight:
        watertight = _is_closed(F) and _signed_volume(V, F) > 0
    meta["watertight"] = bool(watertight)
    meta["size"] = size
    return Mesh(torch.as_tensor(V, dtype=dtype), torch.as_tensor(F, dtype=torch.long),
                None, meta)
