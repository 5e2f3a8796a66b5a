"""Appearance for synthetic scenes: materials, skin tones, lighting and a photo-like shader.

Colours are sRGB values in ``[0, 1]`` (what a picture stores); shading is computed in
linear light (sRGB decoded with gamma 2.2) and encoded back at the end.

Frames: :func:`vertex_colors` evaluates patterns in the mesh's **own** coordinates (call it
on the object before placing it, so the pattern sticks to the surface when the mesh moves);
:func:`shade` takes meshes in the image-aligned OpenCV camera frame (+x right, +y down,
+z forward, metres) and :class:`Lighting` directions in that same camera frame.

The shader (:func:`shade`) renders with :func:`hoiguide.render.render` at ``supersample``
times the output size, takes the visible mesh and face per pixel and the depth, recovers the
3D hit point with :meth:`Camera.unproject`, interpolates the vertex colours and normals
barycentrically inside the hit face (or evaluates a :class:`Texture` at the object-frame hit
point, for patterns crisper than the tessellation), lights it with ambient + Lambert + Blinn-Phong
directional lights, composites a background (plain, gradient or a soft "table" texture),
box-filters down to the output size (antialiasing), adds mild sensor noise and encodes to
8-bit sRGB. Normals are smooth across edges whose dihedral angle is below
:data:`CREASE_ANGLE_DEG` and crisp across sharper ones, so a box looks like a box and a
hand looks smooth. There are no cast shadows.
"""

from __future__ import annotations

import colorsys
import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from hoiguide.render import render
from hoiguide.types import Camera, Mesh

log = logging.getLogger(__name__)

__all__ = [
    "PATTERNS", "BACKGROUNDS", "CREASE_ANGLE_DEG", "Material", "Lighting", "Texture",
    "random_material",
    "random_skin_tone", "random_lighting", "vertex_colors", "shade", "SKIN_TONES",
]

PATTERNS: tuple[str, ...] = ("plain", "stripes", "checker", "noise", "two_tone")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "table")
CREASE_ANGLE_DEG = 40.0
"""Edges with a dihedral angle above this are shaded sharp, below it smooth."""

GAMMA = 2.2

SKIN_TONES = np.array([  # sRGB anchors from very light to very dark skin
    [0.97, 0.86, 0.78],
    [0.93, 0.77, 0.66],
    [0.86, 0.66, 0.52],
    [0.75, 0.53, 0.38],
    [0.58, 0.39, 0.26],
    [0.42, 0.27, 0.18],
    [0.28, 0.18, 0.13],
])
"""Skin colour anchors (sRGB, light to dark) that :func:`random_skin_tone` interpolates."""


def _rgb(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected an RGB triple, got {np.asarray(x).shape}")
    if a.min() < 0 or a.max() > 1:
        raise ValueError(f"{name}: expected values in [0, 1], got {a.tolist()}")
    return a


def _same(a, b) -> bool:
    """Equality that compares numpy arrays by value (also inside lists and tuples)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and \
            a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _dataclass_eq(self, other) -> bool:
    if type(self) is not type(other):
        return NotImplemented
    return all(_same(getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__)


def _unit(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.linalg.norm(a) < 1e-12:
        raise ValueError(f"{name}: expected a non-zero 3-vector, got {np.asarray(x).tolist()}")
    return a / np.linalg.norm(a)


# --------------------------------------------------------------------------------------
# materials and lighting
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Material:
    """A surface's look.

    Attributes:
        base_color: ``(3,)`` sRGB in ``[0, 1]``.
        pattern: one of :data:`PATTERNS`: "plain", "stripes", "checker", "noise" or
            "two_tone" (the part beyond the plane through the mesh's bbox centre normal to
            ``pattern_axis`` gets ``pattern_color``).
        pattern_color: ``(3,)`` sRGB, the pattern's second colour.
        pattern_scale: period of stripes / checker cells / noise features, metres.
        specular: strength of the Blinn-Phong highlight in ``[0, 1]``.
        roughness: ``[0.05, 1]``; the highlight exponent is ``2 / roughness^2``.
        pattern_axis: ``(3,)`` direction (object frame) of stripes and of the two-tone split.
        pattern_seed: seed of the "noise" pattern.
    """

    base_color: np.ndarray
    pattern: str = "plain"
    pattern_color: np.ndarray = field(default_factory=lambda: np.array([1.0, 1.0, 1.0]))
    pattern_scale: float = 0.02
    specular: float = 0.2
    roughness: float = 0.5
    pattern_axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        self.base_color = _rgb(self.base_color, "Material.base_color")
        self.pattern_color = _rgb(self.pattern_color, "Material.pattern_color")
        self.pattern_axis = _unit(self.pattern_axis, "Material.pattern_axis")
        if self.pattern not in PATTERNS:
            raise ValueError(f"Material.pattern: expected one of {PATTERNS}, got "
                             f"{self.pattern!r}")
        if not (math.isfinite(self.pattern_scale) and self.pattern_scale > 0):
            raise ValueError(f"Material.pattern_scale: expected > 0 metres, got "
                             f"{self.pattern_scale}")
        if not 0 <= self.specular <= 1:
            raise ValueError(f"Material.specular: expected in [0, 1], got {self.specular}")
        if not 0.05 <= self.roughness <= 1:
            raise ValueError(f"Material.roughness: expected in [0.05, 1], got {self.roughness}")
        self.pattern_scale = float(self.pattern_scale)
        self.specular = float(self.specular)
        self.roughness = float(self.roughness)
        self.pattern_seed = int(self.pattern_seed)

    __eq__ = _dataclass_eq


@dataclass(eq=False)
class Lighting:
    """Directional lights plus ambient, and the background.

    Attributes:
        ambient: ambient intensity (linear, >= 0), multiplied by ``ambient_color``.
        lights: list of ``(direction, color, intensity)``: ``direction`` a ``(3,)`` unit
            vector in the camera frame pointing FROM the surface TO the light (a light at
            the camera is ``(0, 0, -1)``; "from above" has negative y), ``color`` ``(3,)`` in
            ``[0, 1]``, ``intensity`` >= 0 (linear).
        background: "plain", "gradient" (top to bottom), "table" (soft noise texture), an
            sRGB colour ``(3,)`` or an image ``(H, W, 3)`` (uint8, or float in ``[0, 1]``).
        background_colors: ``(2, 3)`` sRGB colours the background kinds use.
        ambient_color: ``(3,)``.
        noise: standard deviation of the sensor noise, in sRGB units (0.01 ~ 2.5 / 255).
        seed: seed of the background texture and of the default noise generator.
    """

    ambient: float
    lights: list = field(default_factory=list)
    background: str | np.ndarray = "plain"
    background_colors: np.ndarray = field(
        default_factory=lambda: np.array([[0.85, 0.85, 0.85], [0.65, 0.65, 0.65]]))
    ambient_color: np.ndarray = field(default_factory=lambda: np.ones(3))
    noise: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ambient) and self.ambient >= 0):
            raise ValueError(f"Lighting.ambient: expected >= 0, got {self.ambient}")
        lights = []
        for i, light in enumerate(self.lights):
            try:
                d, c, s = light
            except (TypeError, ValueError):
                raise ValueError(f"Lighting.lights[{i}]: expected (direction, color, "
                                 f"intensity), got {light!r}") from None
            if not (math.isfinite(float(s)) and float(s) >= 0):
                raise ValueError(f"Lighting.lights[{i}]: intensity must be >= 0, got {s}")
            lights.append((_unit(d, f"Lighting.lights[{i}].direction"),
                           _rgb(c, f"Lighting.lights[{i}].color"), float(s)))
        self.lights = lights
        bc = np.asarray(self.background_colors, np.float64)
        if bc.shape != (2, 3) or bc.min() < 0 or bc.max() > 1:
            raise ValueError(f"Lighting.background_colors: expected (2, 3) in [0, 1], got "
                             f"{bc.shape}")
        self.background_colors = bc
        self.ambient_color = _rgb(self.ambient_color, "Lighting.ambient_color")
        if isinstance(self.background, str):
            if self.background not in BACKGROUNDS:
                raise ValueError(f"Lighting.background: expected one of {BACKGROUNDS}, a "
                                 f"colour or an image, got {self.background!r}")
        else:
            _check_background_array(np.asarray(self.background), "Lighting.background")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"Lighting.noise: expected >= 0, got {self.noise}")
        self.seed = int(self.seed)

    __eq__ = _dataclass_eq


def _check_background_array(a: np.ndarray, name: str) -> None:
    if a.shape == (3,) or (a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) > 0):
        return
    raise ValueError(f"{name}: expected an RGB colour (3,) or an image (H, W, 3), got "
                     f"{a.shape}")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)),
                                        float(np.clip(v, 0, 1))))


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / max(np.linalg.norm(v), 1e-12)


def random_material(rng: np.random.Generator) -> Material:
    """A random object material: any hue, from greyish to saturated, mid to light values;
    plain (40 %) or a stripes / checker / noise / two-tone pattern in a contrasting
    colour; from matte to glossy."""
    h = float(rng.uniform())
    s = float(rng.uniform(0.0, 0.25)) if rng.uniform() < 0.2 else float(rng.uniform(0.3, 0.9))
    v = float(rng.uniform(0.3, 0.95))
    base = _hsv(h, s, v)
    pattern = str(rng.choice(PATTERNS, p=[0.4, 0.15, 0.15, 0.15, 0.15]))
    if rng.uniform() < 0.5:  # contrasting hue
        pc = _hsv(h + float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.3, 0.9)),
                  float(rng.uniform(0.4, 1.0)))
    else:  # lighter / darker shade of the same hue
        pc = _hsv(h, s * float(rng.uniform(0.2, 1.0)),
                  v * 0.35 if v > 0.6 else min(1.0, v + 0.45))
    return Material(base_color=base, pattern=pattern, pattern_color=pc,
                    pattern_scale=float(rng.uniform(0.015, 0.05)),
                    specular=float(rng.uniform(0.0, 0.6)),
                    roughness=float(rng.uniform(0.15, 0.9)),
                    pattern_axis=_random_unit(rng),
                    pattern_seed=int(rng.integers(0, 2**31 - 1)))


def random_skin_tone(rng: np.random.Generator) -> Material:
    """A random human skin material across the whole range of skin tones (interpolated
    between :data:`SKIN_TONES`, light to dark, uniformly), slightly jittered, matte with a
    faint sheen, plain or with a faint mottling ("noise" in a slightly redder, darker
    shade)."""
    t = float(rng.uniform(0, len(SKIN_TONES) - 1))
    i = min(int(t), len(SKIN_TONES) - 2)
    base = (1 - (t - i)) * SKIN_TONES[i] + (t - i) * SKIN_TONES[i + 1]
    base = np.clip(base * float(rng.uniform(0.95, 1.05)) + rng.normal(0, 0.012, 3), 0, 1)
    mottled = rng.uniform() < 0.5
    pc = np.clip(base * np.array([0.97, 0.9, 0.88]), 0, 1)
    return Material(base_color=base, pattern="noise" if mottled else "plain",
                    pattern_color=pc, pattern_scale=float(rng.uniform(0.008, 0.02)),
                    specular=float(rng.uniform(0.04, 0.15)),
                    roughness=float(rng.uniform(0.55, 0.85)),
                    pattern_axis=_random_unit(rng),
                    pattern_seed=int(rng.integers(0, 2**31 - 1)))


def _light_color(rng: np.random.Generator, spread: float) -> np.ndarray:
    """White light tinted warm or cool by up to ``spread``."""
    a = float(rng.uniform(-spread, spread))
    c = np.array([1.0, 1.0 - 0.35 * abs(a), 1.0 - 0.7 * abs(a)]) if a >= 0 else \
        np.array([1.0 - 0.7 * abs(a), 1.0 - 0.35 * abs(a), 1.0])
    return c


def random_lighting(rng: np.random.Generator) -> Lighting:
    """Random indoor-photo lighting: ambient 0.15-0.4, a key light from the front-above
    (camera side, up to ~60 degrees off), a weaker fill from the other side, sometimes a
    rim light from behind; warm or cool tints; a plain, gradient or table-like background
    in muted colours; sensor noise 0.3-2 % ."""
    ambient = float(rng.uniform(0.15, 0.4))
    kx = float(rng.uniform(-0.9, 0.9))
    key = np.array([kx, rng.uniform(-1.0, -0.1), rng.uniform(-1.3, -0.5)])
    lights = [(key, _light_color(rng, 0.25), float(rng.uniform(0.7, 1.1)))]
    fill = np.array([-np.sign(kx) * rng.uniform(0.3, 1.0), rng.uniform(-0.3, 0.5),
                     rng.uniform(-1.2, -0.4)])
    lights.append((fill, _light_color(rng, 0.3), float(rng.uniform(0.15, 0.4))))
    if rng.uniform() < 0.35:
        rim = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.2), rng.uniform(0.3, 1.0)])
        lights.append((rim, _light_color(rng, 0.2), float(rng.uniform(0.2, 0.5))))
    kind = str(rng.choice(BACKGROUNDS, p=[0.3, 0.35, 0.35]))
    h = float(rng.uniform())
    c0 = _hsv(h, float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.35, 0.95)))
    c1 = _hsv(h + float(rng.uniform(-0.1, 0.1)), float(rng.uniform(0.0, 0.4)),
              float(rng.uniform(0.2, 0.8)))
    return Lighting(ambient=ambient, lights=lights, background=kind,
                    background_colors=np.stack([c0, c1]),
                    ambient_color=_light_color(rng, 0.1),
                    noise=float(rng.uniform(0.003, 0.02)),
                    seed=int(rng.integers(0, 2**31 - 1)))


# --------------------------------------------------------------------------------------
# vertex colours
# --------------------------------------------------------------------------------------


def _smooth_noise(p: np.ndarray, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Smooth 3D noise in ``[0, 1]``: random plane waves (features ~``scale`` metres)."""
    g = np.random.default_rng(seed)
    acc = np.zeros(len(p))
    amp_total = 0.0
    for o in range(octaves):
        k = 2 * np.pi / (scale / (1.8 ** o))
        for _ in range(4):
            d = g.normal(size=3)
            d /= np.linalg.norm(d)
            acc += (0.55 ** o) * np.sin(k * p @ d + g.uniform(0, 2 * np.pi))
            amp_total += 0.55 ** o
    return 0.5 + 0.5 * acc / math.sqrt(amp_total * 2.0) * 1.6


def _pattern_colors(p: np.ndarray, material: Material, ref: np.ndarray) -> np.ndarray:
    """sRGB ``(N, 3)`` of ``material`` at object-frame points ``p``; ``ref`` are the mesh's
    vertices (the two-tone split goes through the middle of their extent)."""
    s = material.pattern_scale
    if material.pattern == "plain":
        w = np.zeros(len(p))
    elif material.pattern == "stripes":
        w = 0.5 + 0.5 * np.tanh(4.0 * np.sin(2 * np.pi * (p @ material.pattern_axis) / s))
    elif material.pattern == "checker":
        q = np.sin(np.pi * p / s)  # sign flips every s metres along each axis
        w = 0.5 + 0.5 * np.tanh(6.0 * np.cbrt(q[:, 0] * q[:, 1] * q[:, 2]))
    elif material.pattern == "noise":
        w = np.clip(_smooth_noise(p, s * 2.0, material.pattern_seed), 0, 1)
    else:  # two_tone
        t = ref @ material.pattern_axis
        mid = 0.5 * (t.min() + t.max()) if len(t) else 0.0
        w = 0.5 + 0.5 * np.tanh((p @ material.pattern_axis - mid) / (0.05 * s))
    c = (1 - w)[:, None] * material.base_color + w[:, None] * material.pattern_color
    return np.clip(c, 0, 1)


def vertex_colors(mesh: Mesh, material: Material) -> torch.Tensor:
    """Per-vertex sRGB colours ``(V, 3)`` float32 in ``[0, 1]`` for ``material`` on ``mesh``.

    Patterns are evaluated at the vertices in the mesh's own coordinates (metres), with
    soft edges, so they stay attached to the surface when the mesh is moved afterwards.
    Their detail is limited by the tessellation (colours are interpolated between vertices);
    for crisp patterns on coarse meshes pass a :class:`Texture` to :func:`shade` instead.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"vertex_colors: expected a Mesh, got {type(mesh).__name__}")
    if not isinstance(material, Material):
        raise TypeError(f"vertex_colors: expected a Material, got {type(material).__name__}")
    p = mesh.vertices.detach().cpu().double().numpy()
    if len(p) == 0:
        return torch.zeros(0, 3, dtype=torch.float32, device=mesh.device)
    return torch.as_tensor(_pattern_colors(p, material, p), dtype=torch.float32,
                           device=mesh.device)


@dataclass(eq=False)
class Texture:
    """A material evaluated per pixel (crisp patterns whatever the tessellation).

    Attributes:
        material: the :class:`Material`.
        object_vertices: ``(V, 3)`` the mesh's vertices in the frame where the pattern is
            defined (its own object frame, metres), in the same order as the mesh given to
            :func:`shade`. Build it with :meth:`Texture.of` before moving the mesh.
    """

    material: Material
    object_vertices: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.material, Material):
            raise TypeError(f"Texture.material: expected a Material, got "
                            f"{type(self.material).__name__}")
        v = self.object_vertices
        v = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else \
            np.asarray(v, np.float64)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"Texture.object_vertices: expected (V, 3), got {v.shape}")
        self.object_vertices = v

    @classmethod
    def of(cls, mesh: Mesh, material: Material) -> "Texture":
        """The texture of ``material`` on ``mesh`` in the mesh's current coordinates."""
        return cls(material, mesh.vertices.detach().cpu().double().numpy().copy())

    def colors_at(self, points: np.ndarray) -> np.ndarray:
        """sRGB ``(N, 3)`` at object-frame points ``(N, 3)``."""
        return _pattern_colors(np.asarray(points, np.float64), self.material,
                               self.object_vertices)


# --------------------------------------------------------------------------------------
# shading
# --------------------------------------------------------------------------------------


def _corner_normals(V: np.ndarray, F: np.ndarray, crease_deg: float) -> np.ndarray:
    """``(F, 3, 3)`` unit normals per face corner: area-weighted average of the normals of
    the faces around the corner's vertex whose normal is within ``crease_deg`` of this
    face's normal."""
    fa = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])  # 2 * area * normal
    fl = np.linalg.norm(fa, axis=1, keepdims=True)
    fn = np.where(fl > 0, fa / np.maximum(fl, 1e-300), 0.0)
    vid = F.reshape(-1)
    order = np.argsort(vid, kind="stable")
    sv = vid[order]
    starts = np.searchsorted(sv, sv, "left")
    cnt = np.searchsorted(sv, sv, "right") - starts
    rep = np.repeat(np.arange(len(sv)), cnt)
    offs = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    c1 = order[rep]
    c2 = order[starts[rep] + offs]
    f1, f2 = c1 // 3, c2 // 3
    ok = np.einsum("ij,ij->i", fn[f1], fn[f2]) >= math.cos(math.radians(crease_deg))
    acc = np.stack([np.bincount(c1[ok], weights=fa[f2[ok], k], minlength=len(vid))
                    for k in range(3)], 1)
    n = np.linalg.norm(acc, axis=1, keepdims=True)
    cn = np.where(n > 0, acc / np.maximum(n, 1e-300), np.repeat(fn, 3, axis=0))
    return cn.reshape(-1, 3, 3)


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.clip(c, 0, 1) ** GAMMA


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    return np.clip(c, 0, 1) ** (1.0 / GAMMA)


def _value_noise(H: int, W: int, cells: int, g: np.random.Generator) -> np.ndarray:
    """Smooth noise ``(H, W)`` in ``[0, 1]``: a random ``cells x cells`` grid, bicubic-ish
    (smoothstep) interpolated."""
    grid = g.uniform(size=(cells + 1, cells + 1))
    y = np.linspace(0, cells, H, endpoint=False) + 0.5 * cells / H
    x = np.linspace(0, cells, W, endpoint=False) + 0.5 * cells / W
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    ty, tx = y - y0, x - x0
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    a = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    b = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    return a * (1 - ty)[:, None] + b * ty[:, None]


def _background(kind, colors: np.ndarray, H: int, W: int, seed: int) -> np.ndarray:
    """Background ``(H, W, 3)`` sRGB in ``[0, 1]``."""
    if not isinstance(kind, str):
        a = np.asarray(kind)
        _check_background_array(a, "shade: background")
        a = a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)
        if a.shape == (3,):
            return np.broadcast_to(np.clip(a, 0, 1), (H, W, 3)).copy()
        t = torch.as_tensor(a, dtype=torch.float32).permute(2, 0, 1)[None]
        t = torch.nn.functional.interpolate(t, size=(H, W), mode="bilinear",
                                            align_corners=False)
        return np.clip(t[0].permute(1, 2, 0).numpy().astype(np.float64), 0, 1)
    c0, c1 = colors
    if kind == "plain":
        return np.broadcast_to(c0, (H, W, 3)).copy()
    g = np.random.default_rng(seed)
    v = (np.arange(H) + 0.5) / H
    if kind == "gradient":
        u = (np.arange(W) + 0.5) / W
        tilt = g.uniform(-0.3, 0.3)
        t = np.clip(v[:, None] + tilt * (u[None] - 0.5), 0, 1)
        return (1 - t)[..., None] * c0 + t[..., None] * c1
    # table: a soft horizon between a wall (c0) and a table top (c1) with low-frequency
    # blotches and a fine grain
    horizon = g.uniform(0.05, 0.45)
    t = 0.5 + 0.5 * np.tanh((v - horizon) / 0.03)
    img = (1 - t)[:, None, None] * c0 + t[:, None, None] * c1
    img = np.broadcast_to(img, (H, W, 3)).copy()
    blotch = _value_noise(H, W, int(g.integers(3, 7)), g) - 0.5
    grain = _value_noise(H, W, max(8, min(H, W) // 6), g) - 0.5
    shade_ = 1 + 0.25 * blotch + 0.08 * grain
    img *= shade_[..., None]
    return np.clip(img, 0, 1)


def _resolve_out_size(camera: Camera, size) -> tuple[int, int]:
    if size is None:
        return camera.height, camera.width
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size), int(size)
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise TypeError(f"shade: expected size None, an int or (H, W), got {size!r}") from None
    return H, W


def _spec_params(specular, n: int) -> list[tuple[float, float]]:
    if specular is None:
        return [(0.15, 0.5)] * n
    if isinstance(specular, Material):
        specular = [specular] * n
    specular = list(specular)
    if len(specular) != n:
        raise ValueError(f"shade: expected {n} specular entries (one per mesh), got "
                         f"{len(specular)}")
    out = []
    for i, s in enumerate(specular):
        if s is None:
            out.append((0.15, 0.5))
        elif isinstance(s, Material):
            out.append((s.specular, s.roughness))
        else:
            try:
                k, r = (float(x) for x in s)
            except (TypeError, ValueError):
                raise ValueError(f"shade: specular[{i}] must be a Material, None or "
                                 f"(strength, roughness), got {s!r}") from None
            out.append((k, min(max(r, 0.05), 1.0)))
    return out


@torch.no_grad()
def shade(meshes: Sequence[Mesh], colors: Sequence[torch.Tensor | Texture], camera: Camera,
          lighting: Lighting, *, size: int | Sequence[int] | None = None,
          supersample: int = 2, background=None, rng: np.random.Generator | None = None,
          specular=None) -> np.ndarray:
    """Render a photo-like RGB image of coloured meshes.

    Args:
        meshes: meshes in the image-aligned OpenCV camera frame (+x right, +y down,
            +z forward, metres); they occlude each other. Empty meshes are skipped.
        colors: per mesh, either a ``(V_i, 3)`` (or ``(V_i, 4)``, alpha ignored) sRGB tensor
            in ``[0, 1]`` (e.g. from :func:`vertex_colors`), interpolated in each face, or a
            :class:`Texture`, evaluated per pixel at the object-frame hit point.
        camera: pinhole camera; ``size`` ``None`` renders at its size, an int or ``(H, W)``
            rescales it (``camera.resized``).
        lighting: ambient, directional lights (camera frame) and background.
        supersample: render at this many times the size and box-filter down (>= 1).
        background: overrides ``lighting.background`` (a kind name, colour or image).
        rng: generator of the sensor noise; None uses one seeded with ``lighting.seed``
            (deterministic output).
        specular: per-mesh highlight: a :class:`Material`, ``(strength, roughness)`` or
            None (0.15, 0.5); or one Material for all.

    Returns:
        ``(H, W, 3)`` uint8 sRGB image.
    """

    if isinstance(meshes, Mesh):
        meshes = [meshes]
    meshes = list(meshes)
    colors = [colors] if isinstance(colors, (torch.Tensor, Texture)) else list(colors)
    if not meshes:
        raise ValueError("shade: expected at least one mesh, got none")
    if len(colors) != len(meshes):
        raise ValueError(f"shade: expected one colour tensor per mesh ({len(meshes)}), got "
                         f"{len(colors)}")
    cols_np: list = []
    for i, (m, c) in enumerate(zip(meshes, colors)):
        if not isinstance(m, Mesh):
            raise TypeError(f"shade: meshes[{i}] must be a Mesh, got {type(m).__name__}")
        if isinstance(c, Texture):
            if c.object_vertices.shape[0] != m.num_vertices:
                raise ValueError(f"shade: colors[{i}] is a Texture of "
                                 f"{c.object_vertices.shape[0]} vertices but the mesh has "
                                 f"{m.num_vertices}")
            cols_np.append(c)
            continue
        c = torch.as_tensor(c) if not isinstance(c, torch.Tensor) else c
        if c.ndim != 2 or c.shape[0] != m.num_vertices or c.shape[1] not in (3, 4):
            raise ValueError(f"shade: colors[{i}] must be ({m.num_vertices}, 3), got "
                             f"{tuple(c.shape)}")
        c = c.detach().cpu()
        c = (c.double() / 255.0 if c.dtype == torch.uint8 else c.double()).numpy()[:, :3]
        cols_np.append(_srgb_to_linear(c))
    if not isinstance(camera, Camera):
        raise TypeError(f"shade: expected a Camera, got {type(camera).__name__}")
    if not isinstance(lighting, Lighting):
        raise TypeError(f"shade: expected a Lighting, got {type(lighting).__name__}")
    if int(supersample) != supersample or supersample < 1:
        raise ValueError(f"shade: expected supersample to be an integer >= 1, got "
                         f"{supersample!r}")
    ss = int(supersample)
    H, W = _resolve_out_size(camera, size)
    if H <= 0 or W <= 0:
        raise ValueError(f"shade: expected a positive size, got ({H}, {W})")
    spec = _spec_params(specular, len(meshes))
    Hs, Ws = H * ss, W * ss

    bg_kind = lighting.background if background is None else background
    img = _srgb_to_linear(_background(bg_kind, lighting.background_colors, Hs, Ws,
                                      lighting.seed))
    rmeshes = [m.detach().to("cpu") for m in meshes]
    if any(not m.is_empty for m in rmeshes):
        out = render(rmeshes, camera, size=(Hs, Ws), smooth_normals=False, amodal=False)
        cam = out.camera
        mesh_id = out.mesh_id.numpy().reshape(-1)
        face_id = out.face_id.numpy().reshape(-1)
        depth = out.depth.detach().double().numpy().reshape(-1)
        pix = np.nonzero(mesh_id >= 0)[0]
        if len(pix):
            rows, colsx = pix // Ws, pix % Ws
            uv = np.stack([colsx + 0.5, rows + 0.5], 1)
            P = cam.unproject(uv, depth[pix])  # (N, 3) camera frame
            albedo = np.zeros((len(pix), 3))
            normal = np.zeros((len(pix), 3))
            geo_n = np.zeros((len(pix), 3))
            ks = np.zeros(len(pix))
            shin = np.zeros(len(pix))
            for k, m in enumerate(rmeshes):
                sel = np.nonzero(mesh_id[pix] == k)[0]
                if len(sel) == 0:
                    continue
                Vk, Fk = m.numpy()
                f = face_id[pix[sel]]
                tri = Vk[Fk[f]]  # (n, 3, 3)
                a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
                d = P[sel] - a
                d00, d01, d11 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
                d20, d21 = (d * e1).sum(1), (d * e2).sum(1)
                den = d00 * d11 - d01 * d01
                ok = np.abs(den) > 1e-30
                safe = np.where(ok, den, 1.0)
                b1 = np.where(ok, (d11 * d20 - d01 * d21) / safe, 1 / 3)
                b2 = np.where(ok, (d00 * d21 - d01 * d20) / safe, 1 / 3)
                bary = np.clip(np.stack([1 - b1 - b2, b1, b2], 1), 0, 1)
                bary /= np.maximum(bary.sum(1, keepdims=True), 1e-12)
                if isinstance(cols_np[k], Texture):
                    tex = cols_np[k]
                    p_obj = np.einsum("nk,nkc->nc", bary, tex.object_vertices[Fk[f]])
                    albedo[sel] = _srgb_to_linear(tex.colors_at(p_obj))
                else:
                    albedo[sel] = np.einsum("nk,nkc->nc", bary, cols_np[k][Fk[f]])
                cn = _corner_normals(Vk, Fk, CREASE_ANGLE_DEG)[f]
                normal[sel] = np.einsum("nk,nkc->nc", bary, cn)
                geo_n[sel] = np.cross(e1, e2)
                ks[sel] = spec[k][0]
                shin[sel] = min(max(2.0 / spec[k][1] ** 2, 2.0), 400.0)
            view = -P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
            # seeing a back face (inside of an open surface): shade its other side
            back = (geo_n * view).sum(1) < 0
            normal[back] *= -1
            normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
            # interpolated normals turned slightly away near silhouettes: nudge to the view
            nv = (normal * view).sum(1, keepdims=True)
            normal = np.where(nv < 0.02, normal + (0.02 - nv) * view, normal)
            normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
            diffuse = np.broadcast_to(lighting.ambient * _srgb_to_linear(
                lighting.ambient_color), (len(pix), 3)).copy()
            highlight = np.zeros((len(pix), 3))
            for direction, color, intensity in lighting.lights:
                lc = intensity * _srgb_to_linear(color)
                ndl = np.clip(normal @ direction, 0, None)
                diffuse += ndl[:, None] * lc
                h = view + direction
                h /= np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
                ndh = np.clip((normal * h).sum(1), 0, None)
                sp = ks * ndh ** shin * (ndl > 0) * (shin + 8) / 8 * 0.25
                highlight += sp[:, None] * lc
            rgb = albedo * diffuse + highlight
            img.reshape(-1, 3)[pix] = np.clip(rgb, 0, 1)
    if ss > 1:
        img = img.reshape(H, ss, W, ss, 3).mean(axis=(1, 3))
    out_img = _linear_to_srgb(img)
    if lighting.noise > 0:
        g = rng if rng is not None else np.random.default_rng(lighting.seed)
        out_img = out_img + g.normal(0.0, lighting.noise, out_img.shape)
    return np.clip(np.round(out_img * 255.0), 0, 255).astype(np.uint8)
