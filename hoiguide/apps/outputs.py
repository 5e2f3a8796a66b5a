"""Everything a reconstruction writes to its folder, in one function: :func:`write_outputs`.

``hoiguide demo`` (:func:`hoiguide.apps.scene.run_demo`), ``hoiguide reconstruct``
(:func:`hoiguide.apps.photo.reconstruct_image`), ``hoiguide batch`` and ``hoiguide
app`` all call it, so every reconstruction comes with the same files::

    object.glb / .ply / .obj    the object (image-aligned OpenCV camera frame: +x right, +y
                                down, +z forward; metres), blue vertex colours; not written
                                when the generator produced no surface
    hand.glb / .ply / .obj      the hand, same frame, skin-coloured
    scene.glb                   both in one file (nodes ``hand`` and ``object``), coloured
    history.json                every loss term of every inner iteration
    input.png                   the input image (at most ``picture_max_side`` pixels)
    overlay.png                 input | the reconstruction rendered over it
    turntable.png               views orbiting the meshes about the camera's vertical axis
                                (with a ground truth: the reconstruction aligned to it on
                                top, the ground truth below)
    turntable.gif               the same views as an animation (one view per frame)
    losses.png                  loss curves per inner iteration, phases shaded (matplotlib)
    report.html                 all of the above on one self-contained page: pictures
                                embedded as data URIs, metrics, schedule, timings, counters,
                                links to the mesh files; no script, no network resource

``result.json`` is the caller's (it knows the status, metrics and the final timings).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from hoiguide.io import json_text, save_png
from hoiguide.pictures import (
    label,
    loss_plot,
    overlay,
    side_by_side,
    turntable,
    turntable_frame,
)
from hoiguide.result import HAND_COLOR, OBJECT_COLOR
from hoiguide.types import Camera, Mesh, Similarity

__all__ = ["write_outputs", "write_meshes", "OUTPUT_FILES", "MESH_FILES", "PICTURE_FILES"]

log = logging.getLogger(__name__)

MESH_FILES = ("object.glb", "object.ply", "object.obj", "hand.glb", "hand.ply", "hand.obj",
              "scene.glb", "history.json")
"""What :func:`write_outputs` writes of a reconstruction's geometry and history."""

PICTURE_FILES = ("input.png", "overlay.png", "turntable.png", "turntable.gif", "losses.png")
"""The pictures :func:`write_outputs` draws."""

OUTPUT_FILES = MESH_FILES + PICTURE_FILES + ("report.html",)
"""Every file :func:`write_outputs` may write (``result.json`` is the caller's)."""

_REPORT_PICTURES = (
    ("overlay.png", "Input and the reconstruction rendered over it"),
    ("observations.png", "What the foundation models saw: the crop, its masks, the object "
                         "image"),
    ("turntable.gif", "Turntable (animated)"),
    ("turntable.png", "Turntable (every view)"),
    ("losses.png", "Loss curves per inner iteration (phases shaded)"),
)

_METRIC_ROWS = (
    ("status", "status", None), ("reason", "reason", None),
    ("cd_cm2", "Chamfer distance (cm²)", ".4f"), ("f5", "F-score @ 5 mm", ".3f"),
    ("f10", "F-score @ 10 mm", ".3f"), ("iv_cm3", "intersection volume (cm³)", ".3f"),
    ("preset", "preset", None), ("backbone", "backbone", None), ("seed", "seed", None),
    ("seconds_reconstruct", "guided reconstruction (s)", ".1f"),
    ("seconds", "whole run (s)", ".1f"),
)


def write_outputs(out: Union[str, Path], reconstruction: Any = None, *,
                  image: Any = None, camera: Any = None,
                  result: Optional[Mapping[str, Any]] = None,
                  truth: Optional[Sequence[Any]] = None,
                  truth_alignment: Any = None, title: Optional[str] = None,
                  turntable_views: int = 8, turntable_size: int = 160,
                  picture_max_side: Optional[int] = 1024, meshes: bool = True,
                  pictures: bool = True, report: bool = True,
                  gif_frame_ms: int = 350) -> dict[str, Any]:
    """Write the meshes, pictures and ``report.html`` of one reconstruction into ``out``.

    Args:
        out: the folder (created). Files of the same names are overwritten; nothing else in
            it is touched.
        reconstruction: a :class:`hoiguide.Reconstruction` (its ``object_mesh`` and
            ``hand_mesh`` in the image-aligned OpenCV camera frame of ``camera``, metres),
            or ``None`` when there is none (a failed run): then only ``input.png``,
            ``overlay.png`` (marked "no reconstruction") and, with ``truth``, a ground-truth
            ``turntable.png`` are drawn; no gif, no loss plot, no report.
        image: the input image, ``(H, W, 3)`` uint8 RGB (needed for ``input.png`` and
            ``overlay.png``; ``None`` skips them).
        camera: the image's :class:`hoiguide.Camera` (needed for the overlay and the
            turntables; its field of view and axes frame the turntable).
        result: what the caller will write to ``result.json`` so far (status, metrics,
            preset, backbone, seed, timings, ...): shown in the report.
        truth: ground-truth ``[hand, object]`` meshes (same frame) of a synthetic scene: the
            turntable then shows the reconstruction aligned to it (``truth_alignment``, or
            ``result["alignment"]``: a :class:`hoiguide.Similarity` or its ``to_dict()``)
            on top and the ground truth below, framed alike.
        truth_alignment: the prediction -> ground-truth similarity (default
            ``result["alignment"]``); ``None``: the reconstruction is shown unaligned.
        title: the report's and the loss plot's title.
        turntable_views, turntable_size: views in the turntable and the side of each
            (pixels).
        picture_max_side: ``input.png`` and ``overlay.png`` are drawn at most this many
            pixels wide or high (the camera is rescaled alike); ``None``: full size.
        meshes: write the mesh files and ``history.json``.
        pictures: draw the PNGs and the gif.
        report: write ``report.html``.
        gif_frame_ms: milliseconds per gif frame.

    Returns:
        ``{"files": names written (in :data:`OUTPUT_FILES` order), "warnings": pictures
        or the report that could not be drawn ("name: Type: message"), "skipped": {name:
        why not drawn}}``.

    Raises:
        TypeError, ValueError: bad arguments (checked before anything is written).
        OSError and what trimesh raises: a mesh file cannot be written (the meshes are the
            result; a picture that cannot be drawn is only a warning).
    """

    fn = "write_outputs"
    rec = reconstruction
    if rec is not None and not (isinstance(getattr(rec, "object_mesh", None), Mesh)
                                and isinstance(getattr(rec, "hand_mesh", None), Mesh)):
        raise TypeError(f"{fn}: expected a hoiguide Reconstruction (object_mesh, hand_mesh) "
                        f"or None, got {type(rec).__name__}")
    img = None
    if image is not None:
        img = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
        if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
            raise ValueError(f"{fn}: expected image as (H, W, 3) uint8, got {img.shape} "
                             f"{img.dtype}")
        img = np.ascontiguousarray(img[..., :3])
    if camera is not None and not isinstance(camera, Camera):
        raise TypeError(f"{fn}: expected camera to be a hoiguide Camera, got "
                        f"{type(camera).__name__}")
    if truth is not None:
        truth = list(truth)
        if len(truth) != 2 or not all(isinstance(m, Mesh) for m in truth):
            raise ValueError(f"{fn}: expected truth as [hand, object] hoiguide Meshes, got "
                             f"{[type(m).__name__ for m in truth]}")
    for name, v, lo in (("turntable_views", turntable_views, 1),
                        ("turntable_size", turntable_size, 8), ("gif_frame_ms", gif_frame_ms, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{fn}: expected {name} to be an integer >= {lo}, got {v!r}")
    if picture_max_side is not None and (isinstance(picture_max_side, bool) or
                                         int(picture_max_side) < 16):
        raise ValueError(f"{fn}: expected picture_max_side >= 16 pixels or None, got "
                         f"{picture_max_side!r}")
    res = dict(result or {})
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    skipped: dict[str, str] = {}

    if rec is not None and meshes:
        write_meshes(out, rec)
    if pictures:
        _draw_pictures(out, rec, img, camera, res, truth, truth_alignment, title,
                       int(turntable_views), int(turntable_size), picture_max_side,
                       int(gif_frame_ms), warnings, skipped)
    if rec is not None and report:
        try:
            _write_report(out, rec, res, title, warnings)
        except Exception as exc:  # noqa: BLE001 -- reported to the caller
            log.warning("write_outputs: could not write report.html", exc_info=exc)
            warnings.append(f"report.html: {type(exc).__name__}: {exc}")
    files = [n for n in OUTPUT_FILES if (out / n).is_file()]
    return {"files": files, "warnings": warnings, "skipped": skipped}


# --------------------------------------------------------------------------------------
# meshes
# --------------------------------------------------------------------------------------


def write_meshes(out: Path, rec: Any, suffixes: tuple[str, ...] = ("glb", "ply", "obj")
                 ) -> list[str]:
    """The reconstruction's meshes and history into ``out``
    (:meth:`hoiguide.Reconstruction.write_meshes`)."""
    return rec.write_meshes(out, suffixes=suffixes)


# --------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------


def _scaled(img: np.ndarray, camera: Any, max_side: Optional[int]) -> tuple[np.ndarray, Any]:
    H, W = img.shape[:2]
    if max_side is None or max(H, W) <= int(max_side):
        return img, camera
    from PIL import Image

    k = int(max_side) / max(H, W)
    w, h = max(1, round(W * k)), max(1, round(H * k))
    small = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    return small, (camera.resized(w, h) if camera is not None else None)


def _stack_rows(rows: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    strip = np.full((sum(r.shape[0] for r in rows) + gap * (len(rows) - 1),
                     max(r.shape[1] for r in rows), 3), 255, np.uint8)
    y = 0
    for r in rows:
        strip[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + gap
    return strip


def _draw_pictures(out: Path, rec: Any, img: Optional[np.ndarray], camera: Any,
                   res: dict[str, Any], truth: Optional[list[Any]], truth_alignment: Any,
                   title: Optional[str], n_views: int, tile: int,
                   max_side: Optional[int], frame_ms: int, warnings: list[str],
                   skipped: dict[str, str]) -> None:
    import torch


    colors = [HAND_COLOR[:3], OBJECT_COLOR[:3]]
    pred = [rec.hand_mesh, rec.object_mesh] if rec is not None else None
    for name in PICTURE_FILES:                  # no stale picture of an earlier run
        if (out / name).is_file():
            (out / name).unlink()

    def attempt(name: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 -- reported to the caller
            log.warning("write_outputs: could not draw %s", name, exc_info=exc)
            warnings.append(f"{name}: {type(exc).__name__}: {exc}")

    small = cam_small = None
    if img is not None:
        small, cam_small = _scaled(img, camera, max_side)

    def draw_input() -> None:
        save_png(out / "input.png", small)

    def draw_overlay() -> None:
        left = label(small, "input")
        if pred is None:
            right = label(small, "no reconstruction")
        else:
            right = label(overlay(small, pred, cam_small, colors=colors), "reconstruction")
        save_png(out / "overlay.png", side_by_side([left, right]))

    def draw_turntables() -> None:
        rows: list[tuple[np.ndarray, str, str]] = []      # (strip, long label, short label)
        if truth is not None:
            center, radius = turntable_frame(truth)
            if pred is not None:
                al = truth_alignment if truth_alignment is not None else res.get("alignment")
                if al is not None:
                    T = al if isinstance(al, Similarity) else Similarity.from_dict(al)
                    shown = [m if m.is_empty else
                             m.detach().to(dtype=torch.float64).transformed(T) for m in pred]
                    # frame both rows alike: wide enough for the aligned prediction too (up
                    # to 2.5x the ground truth, so a wild prediction does not shrink the
                    # truth away)
                    far = max((float(np.linalg.norm(m.vertices.numpy() - center,
                                                    axis=1).max())
                               for m in shown if not m.is_empty), default=0.0)
                    radius = min(max(radius, far), 2.5 * radius)
                    top = turntable(shown, camera, n_views, tile, colors=colors,
                                    center=center, radius=radius)
                    rows.append((top, "reconstruction (hand-aligned to the ground truth)",
                                 "reconstruction"))
                else:
                    top = turntable(pred, camera, n_views, tile, colors=colors)
                    rows.append((top, "reconstruction (not aligned: no metrics)",
                                 "reconstruction"))
            bottom = turntable(truth, camera, n_views, tile, colors=colors, center=center,
                               radius=radius)
            rows.append((bottom, "ground truth", "ground truth"))
            save_png(out / "turntable.png", _stack_rows([label(r, t) for r, t, _ in rows]))
        else:
            strip = turntable(pred, camera, n_views, tile, colors=colors)
            rows.append((strip, "", ""))
            save_png(out / "turntable.png", strip)
        if pred is None:
            return
        try:
            _save_gif(out / "turntable.gif", rows, n_views, tile, frame_ms)
        except Exception as exc:  # noqa: BLE001 -- reported to the caller
            log.warning("write_outputs: could not write turntable.gif", exc_info=exc)
            warnings.append(f"turntable.gif: {type(exc).__name__}: {exc}")

    def draw_losses() -> None:
        try:
            loss_plot(rec.history, out / "losses.png", title=title)
        except ImportError as exc:
            log.warning("write_outputs: losses.png skipped: %s", exc)
            skipped["losses.png"] = "matplotlib is not installed"

    if small is not None:
        attempt("input.png", draw_input)
        if pred is not None and camera is None:
            skipped["overlay.png"] = "no camera"
        else:
            attempt("overlay.png", draw_overlay)
    else:
        skipped["input.png"] = skipped["overlay.png"] = "no image"
    if camera is None:
        skipped["turntable.png"] = "no camera"
    elif pred is not None or truth is not None:
        attempt("turntable.png", draw_turntables)
    if rec is None:
        skipped["losses.png"] = "no reconstruction"
    else:
        attempt("losses.png", draw_losses)


def _save_gif(path: Path, rows: Sequence[tuple[np.ndarray, str, str]], n_views: int,
              tile: int, frame_ms: int) -> None:
    """One frame per view: that view of every row, stacked, each with its short label."""
    from PIL import Image


    frames = []
    for k in range(n_views):
        parts = [r[:, k * tile:(k + 1) * tile] for r, _, _ in rows]
        if len(rows) > 1:
            parts = [label(p, short) for p, (_, _, short) in zip(parts, rows)]
        frame = _stack_rows(parts)
        frames.append(Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE,
                                                     colors=255))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(frame_ms),
                   loop=0, optimize=False, disposal=1)


# --------------------------------------------------------------------------------------
# report.html
# --------------------------------------------------------------------------------------


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _display_width(path: Path) -> str:
    """A width attribute that shows small pictures (a 96-pixel scene) enlarged, up to 3x
    and at most 480 pixels wide; pictures wider than that keep their size."""
    from PIL import Image

    with Image.open(path) as im:
        w = im.size[0]
    shown = min(max(w, 480), 3 * w)
    return f' width="{shown}"' if shown != w else ""


def _fmt(v: Any, fmt: Optional[str]) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return format(v, fmt or ".4g")
    if isinstance(v, (dict, list)):
        return json_text(v, indent=None)
    return str(v)


def _table(rows: Sequence[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _timing_rows(timings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for k, v in timings.items():
        if isinstance(v, Mapping):
            rows += _timing_rows(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((f"{prefix}{k}", f"{float(v):.2f} s"))
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:1100px;color:#1c1c1c;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.1em;margin-top:1.6em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;font-size:.9em}
.status-ok{color:#17702a;font-weight:600}.status-failed{color:#a31515;font-weight:600}
table.kv{border-collapse:collapse;font-size:.92em}
table.kv th{text-align:left;font-weight:500;color:#444;padding:2px 14px 2px 0;
vertical-align:top}table.kv td{padding:2px 0;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e3e3e3;
image-rendering:auto}figcaption{color:#555;font-size:.9em;margin-top:.3em}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto;font-size:.85em}
ul.files li{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
.warn{color:#8a5a00}
"""


def _write_report(out: Path, rec: Any, res: Mapping[str, Any], title: Optional[str],
                  warnings: Sequence[str]) -> None:
    """report.html: one self-contained page (pictures as data URIs, no script, no
    network resource; the mesh files are linked relatively)."""
    import hoiguide

    status = str(res.get("status", getattr(rec, "status", "?")))
    head = title or "hoiguide reconstruction"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
             f"<title>{html.escape(head)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(head)}</h1>",
             f"<p class=\"meta\">hoiguide {html.escape(hoiguide.__version__)} · written "
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')} · status "
             f"<span class=\"status-{'ok' if status == 'ok' else 'failed'}\">"
             f"{html.escape(status)}</span></p>"]
    # ---- metrics
    rows = []
    for key, name, fmt in _METRIC_ROWS:
        if key in res and not (res.get(key) is None and key in ("reason", "seconds")):
            rows.append((name, _fmt(res.get(key), fmt)))
    scene = res.get("scene")
    if isinstance(scene, Mapping) and scene.get("id") is not None:
        rows.append(("scene", f"{scene.get('id')} ({scene.get('object_source')})"))
    img_info = res.get("image")
    if isinstance(img_info, Mapping) and img_info.get("source"):
        rows.append(("image", f"{img_info.get('source')} ({img_info.get('width')}x"
                              f"{img_info.get('height')})"))
    rows.append(("object mesh", f"{rec.object_mesh.num_vertices} vertices, "
                                f"{rec.object_mesh.num_faces} faces"))
    rows.append(("hand mesh", f"{rec.hand_mesh.num_vertices} vertices, "
                              f"{rec.hand_mesh.num_faces} faces"))
    parts.append("<h2>Result</h2>" + _table(rows))
    if any(k in res for k in ("cd_cm2", "f5")):
        parts.append("<p class=\"meta\">Metrics against the ground truth after the "
                     "hand-aligned similarity (the paper's protocol); meshes in the image's "
                     "OpenCV camera frame, metres.</p>")
    if warnings:
        parts.append("<p class=\"warn\">" + "<br>".join(html.escape(w) for w in warnings)
                     + "</p>")
    # ---- pictures
    parts.append("<h2>Pictures</h2>")
    for name, caption in _REPORT_PICTURES:
        p = out / name
        if p.is_file():
            parts.append(f"<figure><img alt=\"{html.escape(name)}\" src=\"{_data_uri(p)}\""
                         f"{_display_width(p)}>"
                         f"<figcaption>{html.escape(caption)} ({html.escape(name)})"
                         f"</figcaption></figure>")
    # ---- schedule
    sched = getattr(rec, "schedule", None) or {}
    if sched:
        parts.append(f"<h2>Schedule: {html.escape(str(sched.get('name')))} "
                     f"({html.escape(str(sched.get('num_steps')))} flow steps)</h2>")
        resolved = sched.get("resolved")
        if resolved:
            parts.append(f"<pre>{html.escape(str(resolved))}</pre>")
    # ---- timings and counters
    t_rows = _timing_rows(getattr(rec, "timings", None) or {})
    sp = res.get("seconds_parts")
    if isinstance(sp, Mapping):
        t_rows += _timing_rows(sp, "run.")
    if t_rows:
        parts.append("<h2>Timings</h2>" + _table(t_rows))
    counters = getattr(rec, "counters", None) or {}
    if counters:
        parts.append("<h2>Counters</h2>" + _table([(k, str(v)) for k, v in counters.items()]))
    # ---- files
    names = [n for n in OUTPUT_FILES if n != "report.html" and (out / n).is_file()]
    names += [n for n in ("observations.png",) if (out / n).is_file()]
    names.append("result.json")
    parts.append("<h2>Files</h2><ul class=\"files\">" + "".join(
        f"<li><a href=\"{html.escape(n)}\">{html.escape(n)}</a></li>" for n in names)
        + "</ul>")
    parts.append("<p class=\"meta\">Meshes: image-aligned OpenCV camera frame (+x right, "
                 "+y down, +z forward), metres; hand skin-coloured, object blue.</p>")
    parts.append("</body></html>\n")
    tmp = out / "report.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out / "report.html")

