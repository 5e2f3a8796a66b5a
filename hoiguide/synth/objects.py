"""Graspable objects for synthetic hand-object scenes.

Two sources of objects:

* **Procedural families** (:data:`FAMILIES`, names in :data:`PROCEDURAL_KINDS`): the
  categories of hand-object datasets (YCB / OakInk / DexYCB style) -- mug with a handle,
  cup, bowl, bottle with neck and cap, can, box, gable-top carton, phone-like slab, kitchen
  knife, spatula, screwdriver, pen with clip, marker, banana, trigger spray bottle -- and
  the simple solids cylinder, sphere, ellipsoid, cone, capsule and torus. Each family draws
  its proportions from documented ranges and its longest side from a real-world size range
  (:class:`Family`). They are built directly as closed triangle meshes (surfaces of
  revolution, lofts of superellipse sections, superellipsoids, swept tubes; mug, knife, pen
  and spray bottle are unions of such parts, which needs manifold3d) and need only numpy
  and trimesh otherwise.
* **Meshes shipped in pybullet_data**: the 1000 ``random_urdfs/NNN`` objects and a few
  named household meshes (:data:`NAMED_OBJECTS`). Indices ``000-699``
  (:data:`DEV_INDICES`) are for development; ``700-999`` (:data:`EVAL_INDICES`) and every
  named object are reserved for evaluation: never tune anything on them. These need the
  ``synth`` extra (``pip install 'hoiguide[synth]'``: ``pybullet`` for the data files and
  ``manifold3d`` for exact mesh booleans).

Procedural instances and their split. ``procedural:mug`` is a fresh random mug each time
(drawn from the caller's random generator). ``procedural:mug@SEED`` is one fixed mug: its
proportions and size come from ``(family, SEED)`` alone. Seeds are split like the pybullet
indices:

=========  ======================  ==================================================
split      seeds                   use
=========  ======================  ==================================================
train      0-9999                  training a generator (:data:`TRAIN_SEEDS`)
val        10000-10999             validation, development and tuning (:data:`VAL_SEEDS`)
eval       20000-20999             evaluation only, never tuned on (:data:`EVAL_SEEDS`)
=========  ======================  ==================================================

Seeds 11000-19999 and from 21000 on are unassigned (refused). A bundled generator is
trained on ``random_urdfs`` :data:`GENERATOR_TRAIN_INDICES` (0-599) and training seeds, and
validated on :data:`GENERATOR_VAL_INDICES` (600-699) and validation seeds;
:attr:`ObjectSource.generator_split` tells which part an object belongs to. Specs:
``procedural:knife@10003``, ``procedural:knife@10000-10019``, ``procedural:all@val``,
``procedural:pen@eval`` (see :func:`parse_object_spec`).

Object frame and units (what :func:`load_object` returns): metres, the bounding-box centre at
the origin, the longest bounding-box side drawn uniformly from ``size_range`` (default: the
family's real-world range for ``procedural:KIND@SEED``; ``(0.05, 0.20)`` for pybullet objects
and for ``procedural:KIND`` without a seed, which keeps older scenes unchanged); the
object's own axes: a
procedural shape's axis of revolution or long axis is +z (a tool's handle at -z), a mug's
handle and a spray bottle's nozzle point along +x, a phone is thin along y. No random
orientation is applied: the grasp code places the object.

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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hoiguide.types import Mesh

log = logging.getLogger(__name__)

__all__ = [
    "PROCEDURAL_KINDS", "FAMILIES", "Family", "DEV_INDICES", "EVAL_INDICES",
    "GENERATOR_TRAIN_INDICES", "GENERATOR_VAL_INDICES", "TRAIN_SEEDS", "VAL_SEEDS",
    "EVAL_SEEDS", "SEED_SPLITS", "seed_split", "NAMED_OBJECTS", "BROKEN_INDICES",
    "ObjectSource", "parse_object_spec", "load_object", "pybullet_data_path",
]

PROCEDURAL_KINDS: tuple[str, ...] = (
    "box", "cylinder", "sphere", "bottle", "mug", "torus", "cone", "capsule", "ellipsoid",
    "can", "bowl", "cup",
    "carton", "phone", "knife", "spatula", "screwdriver", "pen", "marker", "banana",
    "spray_bottle",
)
"""Procedural families accepted by ``procedural:KIND`` (see :data:`FAMILIES`)."""

DEV_INDICES = range(0, 700)
"""``random_urdfs`` indices for development (tuning allowed)."""

EVAL_INDICES = range(700, 1000)
"""``random_urdfs`` indices reserved for evaluation (never tune on them)."""

GENERATOR_TRAIN_INDICES = range(0, 600)
"""``random_urdfs`` indices a bundled generator may be trained on."""

GENERATOR_VAL_INDICES = range(600, 700)
"""``random_urdfs`` indices a bundled generator is validated on (never trained on)."""

TRAIN_SEEDS = range(0, 10_000)
"""Procedural instance seeds for training (``procedural:KIND@SEED``)."""

VAL_SEEDS = range(10_000, 11_000)
"""Procedural instance seeds for validation and development (tuning allowed)."""

EVAL_SEEDS = range(20_000, 21_000)
"""Procedural instance seeds reserved for evaluation (never tune on them)."""

SEED_SPLITS: dict[str, range] = {"train": TRAIN_SEEDS, "val": VAL_SEEDS, "eval": EVAL_SEEDS}
"""The instance-seed ranges by name, as accepted by ``procedural:KIND@NAME``."""


def seed_split(seed: int) -> str:
    """``"train"``, ``"val"`` or ``"eval"``: the split of a procedural instance seed.

    Raises:
        ValueError: the seed is in none of :data:`SEED_SPLITS` (11000-19999 and from 21000
            on are unassigned).
    """
    for name, r in SEED_SPLITS.items():
        if int(seed) in r:
            return name
    raise ValueError(f"procedural instance seed {seed} is in no split; use "
                     + ", ".join(f"{n} {r.start}-{r.stop - 1}" for n, r in SEED_SPLITS.items()))


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
_DEFAULT_SIZE_RANGE = (0.05, 0.20)  # longest side (metres) unless the object has its own
_UNION_FAMILIES = {"mug": 2, "knife": 2, "pen": 2, "spray_bottle": 4}  # families built by union


# --------------------------------------------------------------------------------------
# object sources and the --objects spec
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSource:
    """One object: ``kind`` ("procedural" | "pybullet"), ``name`` (a procedural kind such as
    ``"mug"``, a zero-padded ``random_urdfs`` index such as ``"012"``, or a named pybullet
    object such as ``"duck"``), ``split`` ("dev" | "eval" | "procedural") and, for a fixed
    procedural instance, its ``seed`` (``procedural:mug@12``; see :data:`SEED_SPLITS`).

    Splits: ``"eval"`` objects are reserved for evaluation (``random_urdfs`` 700-999, the
    named ones, procedural instances with evaluation seeds), ``"dev"`` ones may be used for
    development (0-699, procedural training and validation seeds); ``"procedural"`` is a
    procedural object without a seed, drawn from the caller's random generator.
    :attr:`generator_split` says which objects a bundled generator may have been trained on.
    """

    kind: str
    name: str
    split: str
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"ObjectSource.kind: expected one of {_KINDS}, got {self.kind!r}")
        if self.split not in _SPLITS:
            raise ValueError(f"ObjectSource.split: expected one of {_SPLITS}, got "
                             f"{self.split!r}")
        if self.seed is not None:
            if self.kind != "procedural":
                raise ValueError(f"ObjectSource.seed: only procedural objects have an instance "
                                 f"seed, got kind {self.kind!r}")
            want = "eval" if seed_split(self.seed) == "eval" else "dev"
            if self.split != want:
                raise ValueError(f"ObjectSource: seed {self.seed} belongs to split {want!r}, "
                                 f"got {self.split!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"@{self.seed}" if self.seed is not None else "")

    @property
    def index(self) -> int | None:
        """The ``random_urdfs`` index, or None for procedural and named objects."""
        return int(self.name) if self.kind == "pybullet" and self.name.isdigit() else None

    @property
    def generator_split(self) -> str | None:
        """``"train"``, ``"val"`` or ``"eval"`` in the split used to train and validate the
        bundled generators (``random_urdfs`` :data:`GENERATOR_TRAIN_INDICES` /
        :data:`GENERATOR_VAL_INDICES` / 700-999 and the named objects; procedural instances by
        their seed); None for a procedural object without a seed (a fresh random instance of
        a family the generator was trained on)."""
        if self.kind == "procedural":
            return None if self.seed is None else seed_split(self.seed)
        i = self.index
        if i is None or i in EVAL_INDICES:
            return "eval"
        return "train" if i in GENERATOR_TRAIN_INDICES else "val"

    @classmethod
    def procedural(cls, kind: str, seed: int | None = None) -> "ObjectSource":
        """A procedural family; with ``seed`` the fixed instance ``procedural:KIND@SEED``."""
        if kind not in PROCEDURAL_KINDS:
            raise ValueError(_unknown("procedural kind", kind, PROCEDURAL_KINDS))
        if seed is None:
            return cls("procedural", kind, "procedural")
        seed = int(seed)
        return cls("procedural", kind, "eval" if seed_split(seed) == "eval" else "dev", seed)

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


def _parse_seeds(text: str, item: str, part: str) -> list[int]:
    low = text.strip().lower()
    if low in SEED_SPLITS:
        return list(SEED_SPLITS[low])
    m = _RANGE_RE.match(low)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if a > b:
            raise ValueError(f"parse_object_spec: seed range {text!r} in {part!r} is reversed "
                             f"(start {a} > end {b})")
        seeds = list(range(a, b + 1))
    elif low.isdigit():
        seeds = [int(low)]
    else:
        raise ValueError(f"parse_object_spec: in {part!r}: after '@' in {item!r} expected a "
                         "seed, a range START-END or one of " + ", ".join(SEED_SPLITS))
    for sd in (seeds[0], seeds[-1]):
        try:
            seed_split(sd)
        except ValueError as e:
            raise ValueError(f"parse_object_spec: in {part!r}: {e}") from None
    gaps = [sd for sd in seeds if not any(sd in r for r in SEED_SPLITS.values())]
    if gaps:
        raise ValueError(f"parse_object_spec: in {part!r}: seeds {gaps[0]}-{gaps[-1]} are in "
                         "no split; use " + ", ".join(f"{n} {r.start}-{r.stop - 1}"
                                                     for n, r in SEED_SPLITS.items()))
    return seeds


def _parse_procedural_item(item: str, part: str) -> list[ObjectSource]:
    name, _, seeds = item.partition("@")
    name = name.strip().lower()
    if name == "all":
        kinds = list(PROCEDURAL_KINDS)
    elif name in PROCEDURAL_KINDS:
        kinds = [name]
    else:
        raise ValueError(f"parse_object_spec: in {part!r}: "
                         + _unknown("procedural kind", name, PROCEDURAL_KINDS)
                         + " (or 'all'; KIND@SEEDS for fixed instances)")
    if not _:
        return [ObjectSource.procedural(k) for k in kinds]
    return [ObjectSource.procedural(k, sd) for k in kinds
            for sd in _parse_seeds(seeds, item, part)]


def parse_object_spec(spec: str) -> list[ObjectSource]:
    """Parse an ``--objects`` specification into a list of object sources.

    Grammar: one or more parts joined by ``+``; each part is ``KIND:ITEM,ITEM,...`` with KIND
    ``pybullet`` or ``procedural``:

    * ``pybullet:START-END`` (inclusive, e.g. ``0-699`` or ``000-010``), ``pybullet:12``,
      ``pybullet:duck,bunny`` (see :data:`NAMED_OBJECTS`), and the groups ``dev`` (0-699),
      ``eval`` (700-999 and the named objects), ``named`` and ``all``;
    * ``procedural:box,mug`` (see :data:`PROCEDURAL_KINDS`) or ``procedural:all``: a fresh
      random instance of the family each time an object is loaded (from the caller's
      random generator);
    * ``procedural:KIND@SEEDS`` (``KIND`` may be ``all``): fixed instances by seed, SEEDS
      one seed (``mug@10003``), an inclusive range (``mug@10000-10019``) or a whole split
      (``knife@val``, ``all@eval``; see :data:`SEED_SPLITS`).

    Duplicates are dropped (first occurrence kept); known-broken indices
    (:data:`BROKEN_INDICES`) are skipped in ranges. Objects 700-999, named ones and
    procedural evaluation seeds get ``split == "eval"``, 0-699 and the other seeds
    ``"dev"``, procedural ones without a seed ``"procedural"``.

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
                srcs = _parse_procedural_item(item, part)
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


# --------------------------------------------------------------------------------------
# hand-held object families (lofts, lathes, sweeps and unions of them)
# --------------------------------------------------------------------------------------


def _superellipse_ring(cx: float, a: float, b: float, n: float, z: float, S: int
                       ) -> np.ndarray:
    """``S`` points ``(S, 3)`` on the superellipse ``|x/a|^n + |y/b|^n = 1`` at height ``z``,
    centre ``(cx, 0)``, counter-clockwise from +x, evenly spaced by arc length."""
    def curve(t: np.ndarray) -> np.ndarray:
        c, s = np.cos(t), np.sin(t)
        return np.stack([a * np.sign(c) * np.abs(c) ** (2.0 / n),
                         b * np.sign(s) * np.abs(s) ** (2.0 / n)], 1)

    t = _arclength_params(curve, 0.0, 2 * np.pi, S, endpoint=False)
    p = curve(t)
    return np.stack([cx + p[:, 0], p[:, 1], np.full(S, z)], 1)


def _loft(sections: list[tuple[float, float, float, float, float]], segments: int = 64
          ) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface through superellipse cross-sections ``(z, cx, a, b, n)`` (height,
    centre x, half-widths along x and y, exponent), from a pole under the first section to a
    pole over the last one. ``z`` must not decrease; equal ``z`` with growing ``a, b`` makes a
    flat annulus (a flat end with vertices on it)."""
    secs = np.asarray(sections, np.float64)
    if np.any(np.diff(secs[:, 0]) < -1e-12):
        raise AssertionError("loft sections must go up in z")
    rings = np.stack([_superellipse_ring(cx, a, b, n, z, segments) for z, cx, a, b, n in secs])
    p0 = np.array([secs[0, 1], 0.0, secs[0, 0]])
    p1 = np.array([secs[-1, 1], 0.0, secs[-1, 0]])
    return _pole_grid(rings, p0, p1)


def _flat_end(z: float, cx: float, a: float, b: float, n: float, k: int = 4, top: bool = False
              ) -> list[tuple[float, float, float, float, float]]:
    """Concentric sections of a flat end at height ``z`` (``k`` rings, outermost last for a
    bottom end, first for a top end)."""
    out = [(z, cx, a * f, b * f, n) for f in np.linspace(1.0 / k, 1.0, k)]
    return out[::-1] if top else out


def _round_end(z: float, cx: float, a: float, b: float, n: float, length: float, k: int = 6,
               top: bool = False) -> list[tuple[float, float, float, float, float]]:
    """Sections of a rounded (elliptic) end of the given length ending at height ``z``."""
    phi = np.linspace(0.0, np.pi / 2, k + 1)[1:]     # from the tip towards the full section
    out = [(z + (1 - np.cos(p)) * length if not top else z - (1 - np.cos(p)) * length,
            cx, a * max(np.sin(p), 0.08), b * max(np.sin(p), 0.08), n) for p in phi]
    return out if not top else out[::-1]


def _transform(V: np.ndarray, R: np.ndarray | None = None, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    return (V @ R.T if R is not None else V) + np.asarray(t, np.float64)


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _make_carton(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gable-top carton (milk / juice): a rounded-square prism, a two-slope roof and a fin."""
    a = 1.0                                       # half width (x: across the roof's ridge)
    b = a * float(rng.uniform(0.8, 1.0))          # half depth (y: along the ridge)
    H = 2 * a * float(rng.uniform(1.6, 3.2))      # body height
    G = 2 * a * float(rng.uniform(0.3, 0.45))     # roof height
    fin = 2 * a * float(rng.uniform(0.08, 0.14))
    t = 0.03 * a                                  # fin half thickness
    n = 10.0
    secs = _flat_end(0.0, 0.0, a, b, n, 5)
    secs += [(z, 0.0, a, b, n) for z in np.linspace(0.0, H, 12)[1:]]
    secs += [(H + G * f, 0.0, max(a * (1 - f), t), b, n) for f in np.linspace(0, 1, 8)[1:]]
    secs += _flat_end(H + G + fin, 0.0, t, b, n, 3, top=True)
    return _loft(secs, 96)


def _make_phone(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Phone / remote-like slab: rounded-rectangle outline (x width, z length), thin along y."""
    c = float(rng.uniform(1.9, 2.25))             # half length / half width
    b = float(rng.uniform(0.09, 0.14))            # half thickness / half width
    e1 = float(rng.uniform(0.15, 0.3))            # outline corners
    e2 = float(rng.uniform(0.35, 0.7))            # edge rounding
    return _superellipsoid(1.0, b, c, e1, e2, rings=64, segments=96)


def _make_knife(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Kitchen knife along +z: a rounded handle (z < 0) and a thin blade whose spine is
    straight and whose edge curves up to the tip; the blade starts inside the handle."""
    L = 1.0
    Lh = L * float(rng.uniform(0.36, 0.46))       # handle length
    hw = L * float(rng.uniform(0.035, 0.05))      # handle half width (x)
    ht = hw * float(rng.uniform(0.6, 0.8))        # handle half thickness (y)
    W = L * float(rng.uniform(0.08, 0.16))        # blade width
    bt = L * float(rng.uniform(0.006, 0.009))     # blade half thickness
    tip = float(rng.uniform(0.25, 0.5))           # fraction of the blade that curves to the tip
    n_h = float(rng.uniform(2.5, 4.0))
    hs = _round_end(-Lh, 0.0, hw, ht, n_h, 0.6 * ht)
    hs += [(z, 0.0, hw, ht, n_h) for z in np.linspace(-Lh + 0.6 * ht, -0.02 * L, 10)[1:]]
    hs += _round_end(-0.02 * L + 0.5 * ht, 0.0, hw, ht, n_h, 0.5 * ht, top=True)[1:]
    handle = _loft(hs, 48)
    Lb = L - Lh
    z0 = -0.08 * L                                # blade root, inside the handle
    xs = hw * 0.9                                 # spine at the handle's top side
    secs = []
    zs = np.concatenate([np.linspace(z0, 0.0, 3), np.linspace(0.0, Lb, 40)[1:]])
    for z in zs:
        u = max(z, 0.0) / Lb                      # 0 at the bolster, 1 at the tip
        if z < 0.0:
            width = 0.8 * min(W, 2 * hw)
        elif u < 1 - tip:
            width = W * (0.85 + 0.15 * min(1.0, u / 0.08))
        else:
            v = (u - (1 - tip)) / tip
            width = W * math.sqrt(max(1 - v * v, 0.0))
        width = max(width, 0.004 * L)
        thick = bt * (1.0 if u < 0.85 else max(0.35, 1 - (u - 0.85) / 0.15 * 0.65))
        secs.append((z, xs - width / 2, width / 2, thick, 2.0))
    blade = _loft(secs, 48)
    return _union_or_concat([(handle[0], handle[1]), blade], "procedural knife")


def _make_spatula(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spatula / turner along +z: a rounded handle, a narrow neck and a flat paddle with
    rounded corners, one closed loft."""
    L = 1.0
    Lh = L * float(rng.uniform(0.45, 0.55))       # handle
    Ln = L * float(rng.uniform(0.06, 0.12))       # neck
    hw = L * float(rng.uniform(0.025, 0.035))     # handle half width
    ht = hw * float(rng.uniform(0.55, 0.8))
    W = L * float(rng.uniform(0.18, 0.28))        # paddle width
    pt = L * float(rng.uniform(0.006, 0.01))      # paddle half thickness
    r = W * float(rng.uniform(0.15, 0.35))        # paddle corner radius
    zp = Lh + Ln
    secs = _round_end(0.0, 0.0, hw, ht, 2.5, 0.8 * ht)
    secs += [(z, 0.0, hw, ht, 2.5) for z in np.linspace(0.8 * ht, Lh, 12)[1:]]
    for f in np.linspace(0, 1, 7)[1:]:            # neck: thinner and flatter
        secs.append((Lh + f * Ln, 0.0, hw * (1 - 0.3 * f), ht + (pt - ht) * f, 2.5 + 1.5 * f))
    for z in np.linspace(zp, L, 24)[1:]:
        u = (z - zp) / (L - zp)
        half = 0.7 * hw + (W / 2 - 0.7 * hw) * min(1.0, u / 0.25) ** 0.7
        if z > L - r:                             # rounded corners at the far end
            dz = z - (L - r)
            half = W / 2 - r + math.sqrt(max(r * r - dz * dz, 0.0))
        secs.append((z, 0.0, max(half, 0.01 * L), pt, 4.0))
    return _loft(secs, 64)


def _make_screwdriver(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Screwdriver along +z: a bulged handle, a ferrule, a thin shaft and a pointed tip."""
    L = 1.0
    Lh = L * float(rng.uniform(0.38, 0.5))
    Rh = L * float(rng.uniform(0.06, 0.09))
    rs = L * float(rng.uniform(0.014, 0.022))
    Lt = L * float(rng.uniform(0.03, 0.06))
    z = np.linspace(0.0, Lh, 14)
    bulge = Rh * (0.88 + 0.12 * np.sin(np.pi * z / Lh))
    prof = [np.array([[0.0, 0.0]]), _arc((bulge[0] - 0.3 * Rh, 0.3 * Rh), 0.3 * Rh,
                                         -np.pi / 2, 0.0, 5)[1:],
            np.stack([bulge[2:], z[2:]], 1),
            np.array([[0.55 * Rh, Lh + 0.04 * L], [1.6 * rs, Lh + 0.08 * L],
                      [rs, Lh + 0.1 * L], [rs, L - Lt], [0.35 * rs, L - 0.002],
                      [0.0, L]])]
    return _lathe(np.concatenate(prof), 48, spacing=0.02)


def _make_pen(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ballpoint pen along +z: a slim barrel, a conical writing tip, a cap over the back end
    with a pocket clip along +x."""
    L = 1.0
    r = L * float(rng.uniform(0.03, 0.042))
    tip = L * float(rng.uniform(0.08, 0.13))
    cap = L * float(rng.uniform(0.35, 0.45))
    rc = r * float(rng.uniform(1.08, 1.18))
    prof = np.array([[0.0, 0.0], [0.2 * r, 0.004], [0.35 * r, 0.25 * tip], [r, tip],
                     [r, L - cap], [rc, L - cap], [rc, L - 0.6 * rc]])
    prof = np.concatenate([prof, _arc((0.0, L - 0.6 * rc), rc, 0.0, np.pi / 2, 8)[1:]])
    body = _lathe(prof, 40, spacing=0.015)
    # clip: a thin strip along the cap at +x, its ends buried in the cap
    cl = cap * float(rng.uniform(0.6, 0.8))
    cw, ct = 0.5 * rc, 0.25 * rc
    secs = [(L - 0.08 * cap - cl, rc + 0.3 * ct, 0.6 * ct, 0.6 * cw, 4.0)]
    secs += [(z, rc + ct * (0.8 if z > L - 0.08 * cap - 0.85 * cl else 0.5), ct, cw, 4.0)
             for z in np.linspace(L - 0.08 * cap - cl, L - 0.08 * cap, 10)]
    secs += [(L - 0.08 * cap, rc - 0.5 * ct, ct, cw, 4.0)]
    clip = _loft(secs, 24)
    return _union_or_concat([body, clip], "procedural pen")


def _make_marker(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Marker along +z: a thick barrel with a flat rounded end and a wider cap."""
    L = 1.0
    r = L * float(rng.uniform(0.06, 0.085))
    cap = L * float(rng.uniform(0.3, 0.42))
    rc = r * float(rng.uniform(1.06, 1.14))
    e = 0.25 * r
    prof = np.concatenate([
        np.array([[0.0, 0.0]]), _arc((r - e, e), e, -np.pi / 2, 0.0, 4)[1:],
        np.array([[r, L - cap], [rc, L - cap + 0.01]]),
        _arc((rc - 1.2 * e, L - 1.2 * e), 1.2 * e, 0.0, np.pi / 2, 5), np.array([[0.0, L]])])
    return _lathe(prof, 48, spacing=0.02)


def _tube(path: np.ndarray, radii: np.ndarray, sides: int = 24, lobes: int = 0,
          lobe_depth: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed tube along a planar path in the x-z plane with a radius per path point (the
    ends close at the first and last path points); ``lobes`` > 0 gives the section that many
    flat-ish sides (a banana's ridges)."""
    tang = np.gradient(path, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    y = np.array([0.0, 1.0, 0.0])
    nrm = np.cross(tang, y)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    a = 2 * np.pi * np.arange(sides) / sides
    mod = 1.0 + lobe_depth * np.cos(lobes * a) if lobes else np.ones_like(a)
    rr = radii[1:-1, None] * mod[None]
    rings = (path[1:-1, None] + rr[..., None] * (np.cos(a)[None, :, None] * nrm[1:-1, None]
                                                  + np.sin(a)[None, :, None] * y[None, None]))
    return _pole_grid(rings, path[0], path[-1])


def _make_banana(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Banana: a bent, ridged capsule along a circular arc in the x-z plane, tapering to a
    short stem at one end and a blunt tip at the other."""
    Ls = 1.0                                       # arc length
    ang = math.radians(float(rng.uniform(35, 75)))
    Rc = Ls / ang
    r = Ls * float(rng.uniform(0.08, 0.11))
    stem = float(rng.uniform(0.07, 0.11))          # fraction of the length
    t = np.linspace(0.0, 1.0, 60)
    th = -ang / 2 + ang * t
    path = np.stack([Rc * (1 - np.cos(th)) - Rc * (1 - math.cos(ang / 2)), np.zeros_like(t),
                     Rc * np.sin(th)], 1)
    body = np.clip((t - stem) / (1 - stem), 0.0, 1.0)
    prof = np.sin(np.pi * np.clip(body, 0.0, 1.0)) ** 0.55
    radii = r * np.maximum(prof, 0.0)
    radii = np.where(t < stem, 0.22 * r, np.maximum(radii, 0.22 * r * (body < 0.15)))
    radii[-1] = 0.0
    radii[-2] = max(radii[-2], 0.25 * r)
    radii[0] = 0.0
    return _tube(path, radii, 28, lobes=5, lobe_depth=0.05)


def _make_spray_bottle(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Trigger spray bottle: a round bottle body with shoulder and neck, a trigger head on
    the neck reaching forward (+x) with a nozzle, and a trigger below the head's front."""
    R = 1.0
    Hb = R * float(rng.uniform(2.4, 3.4))          # body height
    sh = R * float(rng.uniform(0.3, 0.6))          # shoulder height
    rn = R * float(rng.uniform(0.38, 0.5))          # neck radius
    hn = R * float(rng.uniform(0.25, 0.4))          # neck height
    body = _lathe(np.concatenate([
        np.array([[0.0, 0.0]]), _arc((R - 0.15, 0.15), 0.15, -np.pi / 2, 0.0, 5)[1:],
        np.array([[R, Hb]]),
        np.stack([rn + (R - rn) * 0.5 * (1 + np.cos(np.pi * np.linspace(0, 1, 9)[1:])),
                  Hb + sh * np.linspace(0, 1, 9)[1:]], 1),
        np.array([[rn, Hb + sh + hn + 0.2], [0.0, Hb + sh + hn + 0.2]])]), 48, spacing=0.12)
    z_head = Hb + sh + hn                          # head bottom
    hl = R * float(rng.uniform(1.5, 2.0))           # head length (x)
    hh = R * float(rng.uniform(0.7, 1.0))           # head height
    hw = rn * float(rng.uniform(1.2, 1.5))          # head half width
    Vh, Fh = _superellipsoid(hl / 2, hw, hh / 2, 0.35, 0.5, rings=24, segments=48)
    Vh = _transform(Vh, t=(hl / 2 - 1.3 * rn, 0.0, z_head + hh / 2))
    x_front = hl - 1.3 * rn
    nz_r = 0.22 * hh
    nozzle = _lathe(np.array([[0.0, -0.2], [nz_r, -0.2], [nz_r, 0.35 * R],
                              [0.7 * nz_r, 0.42 * R], [0.0, 0.42 * R]]), 24, spacing=0.05)
    Vn = _transform(nozzle[0], _rot_y(np.pi / 2), (x_front, 0.0, z_head + 0.6 * hh))
    tl = R * float(rng.uniform(0.8, 1.2))           # trigger length
    trig = _superellipsoid(0.14 * R, 0.6 * hw, tl / 2, 0.5, 0.5, rings=16, segments=24)
    Vt = _transform(trig[0], _rot_y(math.radians(-20)),
                    (x_front - 0.45 * R, 0.0, z_head - 0.35 * tl + 0.15 * hh))
    return _union_or_concat([body, (Vh, Fh), (Vn, nozzle[1]), (Vt, trig[1])],
                            "procedural spray bottle")


@dataclass(frozen=True)
class Family:
    """One procedural family: ``size`` is the range of the longest bounding-box side in
    metres (real-world sizes for the hand-held families), ``aspect`` the ranges of the
    bounding-box extents sorted from longest to shortest, as ratios ``(middle / longest,
    shortest / longest)``, that its random proportions give (measured over seeds and
    checked by the tests). ``build(rng)`` returns ``(V, F)`` in arbitrary units, axis +z."""

    name: str
    size: tuple[float, float]
    aspect: tuple[tuple[float, float], tuple[float, float]]
    description: str
    build: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


_FAMILY_LIST: tuple[Family, ...] = (
    # the original kinds
    Family("box", (0.06, 0.25), ((0.25, 1.0), (0.25, 1.0)),
           "box with rounded edges (cracker / sugar / gelatin box)", _make_box),
    Family("cylinder", (0.05, 0.20), ((0.33, 1.0), (0.33, 1.0)),
           "cylinder with filleted rims", _make_cylinder),
    Family("sphere", (0.04, 0.12), ((0.99, 1.0), (0.99, 1.0)), "ball", _make_sphere),
    Family("bottle", (0.15, 0.30), ((0.35, 0.8), (0.35, 0.8)),
           "bottle with shoulder, neck and cap", _make_bottle),
    Family("mug", (0.09, 0.14), ((0.65, 1.0), (0.55, 0.82)),
           "mug with a handle along +x", _make_mug),
    Family("torus", (0.05, 0.15), ((0.99, 1.0), (0.13, 0.32)), "ring / tape roll", _make_torus),
    Family("cone", (0.05, 0.20), ((0.8, 1.0), (0.4, 1.0)), "cone with rounded tip and rim",
           _make_cone),
    Family("capsule", (0.05, 0.20), ((0.33, 0.72), (0.33, 0.72)), "capsule", _make_capsule),
    Family("ellipsoid", (0.05, 0.20), ((0.35, 0.9), (0.35, 0.9)), "ellipsoid (egg, potato)",
           _make_ellipsoid),
    Family("can", (0.07, 0.17), ((0.45, 1.0), (0.45, 1.0)),
           "food / soda can with chimes and a rolled lip", _make_can),
    Family("bowl", (0.10, 0.20), ((0.99, 1.0), (0.22, 0.43)), "open bowl", _make_bowl),
    Family("cup", (0.07, 0.13), ((0.75, 1.0), (0.75, 1.0)), "tapered open cup", _make_cup),
    # hand-held object families
    Family("carton", (0.12, 0.26), ((0.25, 0.5), (0.2, 0.5)),
           "gable-top carton (milk, juice)", _make_carton),
    Family("phone", (0.12, 0.17), ((0.43, 0.54), (0.04, 0.075)),
           "phone / remote-like slab", _make_phone),
    Family("knife", (0.18, 0.32), ((0.08, 0.17), (0.04, 0.082)),
           "kitchen knife: handle and blade", _make_knife),
    Family("spatula", (0.22, 0.34), ((0.17, 0.29), (0.025, 0.06)),
           "spatula / turner: handle, neck and flat paddle", _make_spatula),
    Family("screwdriver", (0.14, 0.26), ((0.11, 0.19), (0.11, 0.19)),
           "screwdriver: handle, shaft, tip", _make_screwdriver),
    Family("pen", (0.12, 0.15), ((0.075, 0.125), (0.06, 0.1)),
           "ballpoint pen with cap and clip", _make_pen),
    Family("marker", (0.11, 0.15), ((0.12, 0.2), (0.12, 0.2)), "marker with cap",
           _make_marker),
    Family("banana", (0.15, 0.23), ((0.17, 0.31), (0.15, 0.25)),
           "banana: bent ridged capsule with a stem", _make_banana),
    Family("spray_bottle", (0.18, 0.30), ((0.44, 0.7), (0.37, 0.55)),
           "trigger spray bottle", _make_spray_bottle),
)

FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILY_LIST}
"""The procedural families by name (the same names as :data:`PROCEDURAL_KINDS`)."""

assert tuple(FAMILIES) == PROCEDURAL_KINDS


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
                size_range: tuple[float, float] | None = None,
                max_faces: int = _DEFAULT_MAX_FACES, dtype: torch.dtype = torch.float32
                ) -> Mesh:
    """Build or load one object as a closed mesh in its own frame.

    Args:
        source: an :class:`ObjectSource` (or a one-object spec string such as
            ``"procedural:mug"``, ``"procedural:knife@10003"`` or ``"pybullet:012"``).
        rng: the random generator; procedural proportions and the size are drawn from it,
            so the same generator state gives the same mesh. A procedural instance with a
            seed (``procedural:KIND@SEED``) does not use it: its proportions and size come
            from the seed alone, so the spec names one fixed object.
        size_range: ``(min, max)`` metres for the longest bounding-box side (drawn
            uniformly). Default: the family's real-world range (:attr:`Family.size`) for a
            procedural instance with a seed; ``(0.05, 0.20)`` for a pybullet object and for
            a procedural object without a seed (as before the families had sizes, so that
            existing scenes stay the same).
        max_faces: face budget (large meshes are simplified, small ones subdivided up to it).
        dtype: vertex dtype.

    Returns:
        A :class:`~hoiguide.types.Mesh` in metres, bounding-box centre at the origin, faces
        wound counter-clockwise seen from outside, no colours. ``metadata``: ``"source"``
        (``str(source)``), ``"split"``, ``"watertight"`` (closed, consistently wound, positive
        volume), ``"components"`` (connected bodies), ``"size"`` (longest side, metres) and
        ``"self_intersecting"`` (True only for a procedural object made of several parts --
        mug, knife, pen, spray bottle -- built without manifold3d).

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
    if source.kind == "procedural" and source.name not in FAMILIES:
        raise ValueError("load_object: " + _unknown("procedural kind", source.name,
                                                    PROCEDURAL_KINDS))
    if size_range is None:
        size_range = FAMILIES[source.name].size if source.seed is not None else \
            _DEFAULT_SIZE_RANGE
    lo, hi = (float(x) for x in size_range)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"load_object: expected 0 < size_range[0] <= size_range[1], got "
                         f"{tuple(size_range)}")
    if int(max_faces) < 100:
        raise ValueError(f"load_object: expected max_faces >= 100, got {max_faces}")
    meta: dict = {"source": str(source), "split": source.split}
    if source.kind == "procedural":
        if source.seed is not None:
            rng = np.random.default_rng([zlib.crc32(source.name.encode()), int(source.seed)])
        V, F = FAMILIES[source.name].build(rng)
        V, F = _normalise(V, F)
        closed = _is_closed(F)
        concat = source.name in _UNION_FAMILIES and not _has_manifold()
        meta["self_intersecting"] = concat
        meta["components"] = _UNION_FAMILIES.get(source.name, 1) if concat else 1
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
