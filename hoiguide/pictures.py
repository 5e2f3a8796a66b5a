"""Pictures of a reconstruction: an overlay on the input image, a turntable strip and a
loss-curve plot.

Frames and units: meshes are in the image-aligned OpenCV camera frame of ``camera`` (+x
right, +y down, +z forward, metres); images are ``(H, W, 3)`` uint8 RGB; colours are RGB in
``[0, 1]``.

Shading: every picture renders the meshes with :func:`hoiguide.render.render` (visible mesh
and smooth normals per pixel) at ``supersample`` times the size and lights each mesh's flat
tint with simple Lambert shading (ambient + a light above-left of the camera + a head
light); the supersampled colours and the hard mask are box-filtered down, which gives
antialiased colours and a fractional coverage used as alpha. (The photo-like
:func:`hoiguide.synth.appearance.shade` composites its own background and returns no
coverage, so an overlay could not keep the input pixels exactly; these pictures use the
renderer directly.)

:func:`loss_plot` needs matplotlib (``pip install 'hoiguide[bench]'``); it draws with the Agg
canvas directly and never touches pyplot's global state.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hoiguide.render import render
from hoiguide.types import Camera, Mesh

__all__ = ["overlay", "turntable", "loss_plot", "side_by_side", "label", "PALETTE"]

log = logging.getLogger(__name__)

PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.93, 0.72, 0.60),   # hand (the colour Reconstruction.save gives the hand)
    (0.30, 0.55, 0.90),   # object
    (0.45, 0.80, 0.45),
    (0.90, 0.45, 0.40),
    (0.70, 0.55, 0.85),
)
"""Default tints, one per mesh in order (hand first, then object, as in ``[hand, object]``)."""

_AMBIENT = 0.30
_KEY = (0.55, np.array([-0.35, -0.60, -0.72]))     # towards the light: above-left, camera side
_HEAD = 0.25                                       # light at the camera


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def _check_image(image: Any, fn: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8 or \
            min(img.shape[:2]) < 1:
        raise ValueError(f"{fn}: expected image as (H, W, 3) uint8, got {img.shape} "
                         f"{img.dtype}")
    return np.ascontiguousarray(img[..., :3])


def _check_meshes(meshes: Any, fn: str) -> list[Mesh]:
    items = [meshes] if isinstance(meshes, Mesh) else list(meshes)
    if not items:
        raise ValueError(f"{fn}: expected at least one mesh, got none")
    for i, m in enumerate(items):
        if not isinstance(m, Mesh):
            raise TypeError(f"{fn}: expected meshes[{i}] to be a hoiguide Mesh, got "
                            f"{type(m).__name__}")
    return [m.detach().to(device="cpu", dtype=torch.float64) for m in items]


def _check_colors(colors: Any, n: int, fn: str) -> np.ndarray:
    if colors is None:
        return np.array([PALETTE[i % len(PALETTE)] for i in range(n)], np.float64)
    arr = np.asarray(colors, np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] not in (3, 4):
        raise ValueError(f"{fn}: expected one RGB colour per mesh ({n}, 3) in [0, 1], got "
                         f"shape {arr.shape}")
    arr = arr[:, :3]
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{fn}: expected colours in [0, 1], got range "
                         f"[{arr.min():.3g}, {arr.max():.3g}]")
    return arr


def _check_supersample(ss: Any, fn: str) -> int:
    if isinstance(ss, bool) or int(ss) != ss or int(ss) < 1:
        raise ValueError(f"{fn}: expected supersample to be an integer >= 1, got {ss!r}")
    return int(ss)


# --------------------------------------------------------------------------------------
# shading
# --------------------------------------------------------------------------------------


@torch.no_grad()
def _shade(meshes: list[Mesh], camera: Camera, colors: np.ndarray, H: int, W: int,
           ss: int) -> tuple[np.ndarray, np.ndarray]:
    """Lambert-shaded tints and coverage at ``(H, W)``: ``(rgb (H, W, 3) in [0, 1], cov (H, W)
    in [0, 1])``; ``rgb`` is not premultiplied (0 where ``cov == 0``)."""

    rgb = np.zeros((H, W, 3))
    cov = np.zeros((H, W))
    if all(m.is_empty for m in meshes):
        return rgb, cov
    Hs, Ws = H * ss, W * ss
    out = render(meshes, camera, size=(Hs, Ws), smooth_normals=True)
    mesh_id = out.mesh_id.numpy()
    hit = mesh_id >= 0
    if not hit.any():
        return rgb, cov
    n = out.normals.detach().double().numpy()
    view = -out.camera.pixel_rays(dtype=torch.float64).numpy()
    view /= np.linalg.norm(view, axis=-1, keepdims=True)
    # show the side facing the viewer (inside of an open surface, flipped windings)
    n = np.where(((n * view).sum(-1) < 0)[..., None], -n, n)
    key = _KEY[1] / np.linalg.norm(_KEY[1])
    light = _AMBIENT + _KEY[0] * np.clip(n @ key, 0, None) + \
        _HEAD * np.clip((n * view).sum(-1), 0, None)
    light = np.where(np.linalg.norm(n, axis=-1) > 0, light, _AMBIENT + _KEY[0] + _HEAD)
    col = colors[np.clip(mesh_id, 0, None)] * light[..., None]
    col = np.where(hit[..., None], np.clip(col, 0, 1), 0.0)
    cov = hit.astype(np.float64).reshape(H, ss, W, ss).mean(axis=(1, 3))
    acc = col.reshape(H, ss, W, ss, 3).mean(axis=(1, 3))
    rgb = np.where(cov[..., None] > 0, acc / np.maximum(cov, 1e-12)[..., None], 0.0)
    return rgb, cov


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# public pictures
# --------------------------------------------------------------------------------------


def overlay(image: Any, meshes: Union[Mesh, Sequence[Mesh]], camera: Camera,
            colors: Optional[Sequence[Sequence[float]]] = None, alpha: float = 0.65, *,
            supersample: int = 2) -> np.ndarray:
    """Meshes rendered over an image (alpha-blended, shaded, one tint per mesh).

    Args:
        image: ``(H, W, 3)`` (or ``(H, W, 4)``, alpha ignored) uint8 RGB, the view of
            ``camera``.
        meshes: one mesh or a sequence (e.g. ``[hand, object]``) in the image-aligned camera
            frame of ``camera`` (OpenCV, metres); they occlude each other; empty meshes draw
            nothing.
        camera: the image's pinhole camera; when its size differs from the image's it is
            rescaled to the image (:meth:`Camera.resized`).
        colors: one RGB tint in ``[0, 1]`` per mesh (default :data:`PALETTE`).
        alpha: opacity of the meshes in ``[0, 1]``.
        supersample: render at this many times the size and box-filter down (antialiasing).

    Returns:
        ``(H, W, 3)`` uint8: ``image * (1 - a) + shaded * a`` with ``a = alpha * coverage``;
        pixels no mesh covers are the input's, unchanged.
    """
    fn = "overlay"
    img = _check_image(image, fn)
    mesh_list = _check_meshes(meshes, fn)
    cols = _check_colors(colors, len(mesh_list), fn)
    if not isinstance(camera, Camera):
        raise TypeError(f"{fn}: expected a hoiguide Camera, got {type(camera).__name__}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"{fn}: expected alpha in [0, 1], got {alpha!r}")
    ss = _check_supersample(supersample, fn)
    H, W = img.shape[:2]
    cam = camera if camera.size == (H, W) else camera.resized(W, H)
    rgb, cov = _shade(mesh_list, cam, cols, H, W, ss)
    a = (float(alpha) * cov)[..., None]
    blended = img.astype(np.float64) * (1.0 - a) + rgb * 255.0 * a
    out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    out[cov == 0] = img[cov == 0]
    return out


def _rotation_to_z(d: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the unit vector ``d`` to +z."""
    z = np.array([0.0, 0.0, 1.0])
    c = float(d @ z)
    axis = np.cross(d, z)
    s = float(np.linalg.norm(axis))
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    ang = math.atan2(s, c)
    return np.eye(3) + math.sin(ang) * K + (1 - math.cos(ang)) * K @ K


def turntable_frame(meshes: Union[Mesh, Sequence[Mesh]]) -> tuple[np.ndarray, float]:
    """Default orbit centre and radius of :func:`turntable`: the centre of the bounding box
    of all non-empty meshes and the largest vertex distance from it (camera frame, metres).
    ``(zeros, 0.0)`` when every mesh is empty."""
    mesh_list = _check_meshes(meshes, "turntable_frame")
    parts = [m.vertices.numpy() for m in mesh_list if not m.is_empty]
    if not parts:
        return np.zeros(3), 0.0
    v = np.concatenate(parts)
    c = 0.5 * (v.min(0) + v.max(0))
    return c, float(np.linalg.norm(v - c, axis=1).max())


def turntable(meshes: Union[Mesh, Sequence[Mesh]], camera: Camera, n: int = 8,
              size: int = 160, *, colors: Optional[Sequence[Sequence[float]]] = None,
              center: Optional[Sequence[float]] = None, radius: Optional[float] = None,
              background: Sequence[float] = (1.0, 1.0, 1.0), supersample: int = 1
              ) -> np.ndarray:
    """A strip of ``n`` views orbiting the meshes about the camera's vertical axis.

    View ``k`` turns the meshes by ``360 k / n`` degrees about the vertical (+y) axis of
    ``camera`` through ``center`` (after turning the line of sight to ``center`` onto the
    optical axis, so view 0 shows what the input camera sees) and looks at them from a
    distance where a sphere of ``radius`` about ``center`` fills the tile (camera with the
    horizontal field of view of ``camera``). Pass the same ``center``/``radius`` to frame two
    strips identically (e.g. a prediction aligned to the ground truth and the ground truth).

    Args:
        meshes: one mesh or a sequence (e.g. ``[hand, object]``), camera frame, metres.
        camera: the input camera (its axes and field of view).
        n: number of views (>= 1).
        size: side of each square tile in pixels.
        colors: one RGB tint in ``[0, 1]`` per mesh (default :data:`PALETTE`).
        center: orbit centre (camera frame, metres); default :func:`turntable_frame`.
        radius: framing radius (metres); default :func:`turntable_frame`.
        background: RGB in ``[0, 1]`` where no mesh is.
        supersample: antialiasing factor.

    Returns:
        ``(size, n * size, 3)`` uint8, views left to right; all background when every mesh
        is empty.
    """
    fn = "turntable"
    mesh_list = _check_meshes(meshes, fn)
    cols = _check_colors(colors, len(mesh_list), fn)
    if not isinstance(camera, Camera):
        raise TypeError(f"{fn}: expected a hoiguide Camera, got {type(camera).__name__}")
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"{fn}: expected n >= 1 views, got {n!r}")
    if isinstance(size, bool) or int(size) != size or int(size) < 8:
        raise ValueError(f"{fn}: expected size >= 8 pixels, got {size!r}")
    n, size = int(n), int(size)
    ss = _check_supersample(supersample, fn)
    bg = np.asarray(background, np.float64)
    if bg.shape != (3,) or not np.isfinite(bg).all() or bg.min() < 0 or bg.max() > 1:
        raise ValueError(f"{fn}: expected background RGB (3,) in [0, 1], got {bg!r}")
    c0, r0 = turntable_frame(mesh_list)
    c = c0 if center is None else np.asarray(center, np.float64).reshape(-1)
    if c.shape != (3,) or not np.isfinite(c).all():
        raise ValueError(f"{fn}: expected center as 3 finite numbers, got {center!r}")
    r = r0 if radius is None else float(radius)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"{fn}: expected radius >= 0 metres, got {radius!r}")
    strip = np.broadcast_to(_to_uint8(bg), (size, n * size, 3)).copy()
    if r == 0 or all(m.is_empty for m in mesh_list):
        return strip
    fov = 2 * math.atan(0.5 * camera.width / camera.fx)
    tile_cam = Camera.from_fov(math.degrees(fov), size, size)
    dist = 1.08 * r / math.sin(0.5 * fov)
    norm_c = float(np.linalg.norm(c))
    R0 = _rotation_to_z(c / norm_c) if norm_c > 1e-9 else np.eye(3)
    for k in range(n):
        t = 2 * math.pi * k / n
        Ry = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
        M = torch.as_tensor(Ry @ R0)
        off = torch.as_tensor([0.0, 0.0, dist], dtype=torch.float64)
        cc = torch.as_tensor(c)
        moved = [m if m.is_empty else m.with_vertices((m.vertices - cc) @ M.T + off)
                 for m in mesh_list]
        rgb, cov = _shade(moved, tile_cam, cols, size, size, ss)
        tile = rgb * cov[..., None] + bg * (1 - cov[..., None])
        strip[:, k * size:(k + 1) * size] = _to_uint8(tile)
    return strip


def side_by_side(images: Sequence[np.ndarray], *, gap: int = 4,
                 fill: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """Images (``(H_i, W_i, 3)`` uint8) left to right, ``gap`` pixels apart, top-aligned;
    shorter ones padded with ``fill``."""
    ims = [_check_image(im, "side_by_side") for im in images]
    if not ims:
        raise ValueError("side_by_side: expected at least one image, got none")
    H = max(im.shape[0] for im in ims)
    W = sum(im.shape[1] for im in ims) + gap * (len(ims) - 1)
    out = np.empty((H, W, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    x = 0
    for im in ims:
        out[:im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


def label(image: np.ndarray, text: str, *, xy: tuple[int, int] = (4, 3),
          color: Sequence[int] = (20, 20, 20)) -> np.ndarray:
    """A copy of ``image`` with ``text`` written at ``xy`` (pixels, top-left) in PIL's default
    font."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(_check_image(image, "label"))
    ImageDraw.Draw(im).text(xy, str(text), fill=tuple(int(c) for c in color))
    return np.asarray(im)


# --------------------------------------------------------------------------------------
# loss curves
# --------------------------------------------------------------------------------------


def _history_records(history: Any) -> list[dict[str, Any]]:
    if hasattr(history, "to_list"):
        history = history.to_list()
    if isinstance(history, Mapping) or not isinstance(history, Iterable):
        raise TypeError(f"loss_plot: expected a hoiguide.guidance.History or a list of "
                        f"records (history.json), got {type(history).__name__}")
    out = []
    for i, r in enumerate(history):
        if hasattr(r, "to_dict"):
            r = r.to_dict()
        if not isinstance(r, Mapping) or "phase" not in r:
            raise ValueError(f"loss_plot: record {i}: expected a mapping with 'phase', "
                             f"'step', 'values' and 'total', got {r!r:.80}")
        out.append(dict(r))
    return out


def _as_float(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def main_terms(records: Sequence[Mapping[str, Any]], max_terms: int = 6) -> list[str]:
    """The terms :func:`loss_plot` draws: the primary terms (labels without ``@``) that are
    non-zero somewhere, the most often evaluated first (ties: first seen), at most
    ``max_terms``."""
    count: dict[str, int] = {}
    nonzero: set[str] = set()
    for r in records:
        for k, v in (r.get("values") or {}).items():
            count[k] = count.get(k, 0) + 1
            f = _as_float(v)
            if math.isfinite(f) and f > 0:
                nonzero.add(k)
    order = list(count)
    names = [k for k in order if "@" not in k and k in nonzero]
    names.sort(key=lambda k: (-count[k], order.index(k)))
    return names[:max_terms]


def loss_plot(history: Any, path: Union[str, Path], *, terms: Optional[Sequence[str]] = None,
              max_terms: int = 6, title: Optional[str] = None, dpi: int = 100) -> Path:
    """Plot the loss of every inner iteration: the weighted total (top) and the main
    unweighted terms (bottom, log scale), phases shaded and labelled, flow steps separated
    by dotted lines.

    Args:
        history: :class:`hoiguide.guidance.History` (``Reconstruction.history``) or the list
            of records in ``history.json``.
        path: PNG file to write (parent folders created).
        terms: term labels to draw (default :func:`main_terms`).
        max_terms: how many terms by default.
        title: figure title.
        dpi: resolution (the figure is 8 x 5.5 inches).

    Returns:
        ``path``.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'hoiguide[bench]'``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("loss_plot needs matplotlib: pip install matplotlib (or "
                          "'hoiguide[bench]')") from exc
    records = _history_records(history)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(terms) if terms is not None else main_terms(records, max_terms)
    fig = Figure(figsize=(8, 5.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_t, ax_v = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(records))
    if not records:
        for ax in (ax_t, ax_v):
            ax.text(0.5, 0.5, "no guidance iterations", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
            ax.set_yticks([])
    else:
        total = np.array([_as_float(r.get("total")) for r in records])
        runs = _draw_phases(records, (ax_t, ax_v))
        marker = "." if len(x) < 60 else None

        def draw(ax: Any, y: np.ndarray, name: str, color: Any) -> None:
            # one line per phase run: weights and masks change between phases
            for i, (_, a, b) in enumerate(runs):
                ax.plot(x[a:b + 1], y[a:b + 1], color=color, lw=1.1, marker=marker,
                        label=name if i == 0 else None)

        pos = total[np.isfinite(total)]
        draw(ax_t, total, "total (weighted)", "black")
        if len(pos) and pos.min() > 0:
            ax_t.set_yscale("log")
        ax_t.set_ylabel("total loss")
        drawn = 0
        for name in names:
            y = np.array([_as_float((r.get("values") or {}).get(name)) for r in records])
            y = np.where(y > 0, y, np.nan)
            if not np.isfinite(y).any():
                continue
            draw(ax_v, y, name, f"C{drawn % 10}")
            drawn += 1
        if drawn:
            ax_v.set_yscale("log")
            ax_v.legend(fontsize=7, ncol=3, loc="best")
        ax_v.set_ylabel("terms (unweighted)")
        skipped = [i for i, r in enumerate(records) if r.get("skipped")]
        if skipped:
            ax_t.plot(skipped, [np.nanmin(total) if np.isfinite(total).any() else 0] *
                      len(skipped), "x", color="red", ms=4, label="skipped")
        ax_t.legend(fontsize=7, loc="upper right")
    ax_v.set_xlabel("inner iteration")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    log.debug("loss_plot: wrote %s (%d iterations, terms %s)", path, len(records), names)
    return path


def _draw_phases(records: Sequence[Mapping[str, Any]], axes: Sequence[Any]
                 ) -> list[tuple[str, int, int]]:
    """Shade each run of consecutive iterations of one phase; dotted lines between steps.
    Returns the runs ``(phase, first, last)``."""
    shades = ("#dbe9f6", "#fbe3cf", "#dcefd9", "#efdff2", "#f6f1c7")
    phase_index: dict[str, int] = {}
    runs: list[tuple[str, int, int]] = []
    for i, r in enumerate(records):
        p = str(r.get("phase"))
        if runs and runs[-1][0] == p:
            runs[-1] = (p, runs[-1][1], i)
        else:
            runs.append((p, i, i))
        phase_index.setdefault(p, len(phase_index))
    for p, a, b in runs:
        color = shades[phase_index[p] % len(shades)]
        for ax in axes:
            ax.axvspan(a - 0.5, b + 0.5, color=color, alpha=0.8, lw=0, zorder=0)
        axes[0].text((a + b) / 2, 1.01, p, transform=axes[0].get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=8)
    for i in range(1, len(records)):
        if records[i].get("step") != records[i - 1].get("step") and \
                records[i].get("phase") == records[i - 1].get("phase"):
            for ax in axes:
                ax.axvline(i - 0.5, color="0.5", lw=0.6, ls=":", zorder=1)
    return runs
