"""Reading a clip: a video file (PyAV, extra ``video``) or a folder of image frames, into a
list of ``(H, W, 3)`` uint8 RGB frames (:func:`read_frames`).

Rules (the same for both kinds of clip):

* ``every=N`` keeps source frames ``0, N, 2N, ...``.
* At most ``max_frames`` frames are kept (default :data:`DEFAULT_MAX_FRAMES` = 64): when
  more remain after ``every``, ``max_frames`` of them are taken evenly spread over the whole
  clip (first and last included) and a warning is logged; ``info["subsampled"]`` says so.
  A video is decoded as a stream and only the kept frames are held in memory, so a
  10,000-frame video costs the memory of ``max_frames`` frames.
* Every frame is read like a photo (:func:`hoiguide.io.load_image`): RGB, alpha composited
  onto white, 16-bit scaled by its type's range, EXIF orientation applied (frame files),
  larger than ``max_megapixels`` refused before decoding.
* All frames must have the same size.
* Frame files are ordered naturally (``frame2.png`` before ``frame10.png``); hidden files
  are ignored.

Frame times (seconds) are the video's timestamps (relative to its first frame), or
``index / fps`` for a frame folder (``fps`` default 30) and for videos without usable
timestamps.

Every problem with the input is a :class:`VideoError` (a ``ValueError``) whose message names
the input and what to do; a video file without PyAV installed is an ``ImportError`` naming
the extra.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from hoiguide.io import ImageError, load_image

__all__ = ["read_frames", "VideoError", "DEFAULT_MAX_FRAMES", "VIDEO_SUFFIXES",
           "IMAGE_SUFFIXES", "is_video_file", "is_frame_folder", "frame_files",
           "natural_key", "select_indices"]

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAMES = 64
"""Frames kept from a clip when ``max_frames`` is not given (evenly spread over the clip)."""

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                  ".wmv", ".flv")
"""File suffixes read as video files (case-insensitive)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""File suffixes of photos and of frame files (case-insensitive)."""

PathLike = Union[str, Path]


class VideoError(ValueError):
    """The clip cannot be used (unreadable, zero-length, frames of different sizes, no
    frames, bad arguments); the message names the input and what to do."""


# --------------------------------------------------------------------------------------
# what a path is
# --------------------------------------------------------------------------------------


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``f2`` before ``f10``."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts) + \
        ((2, 0, name),)


def is_video_file(path: PathLike) -> bool:
    """Whether ``path`` is a file with a video suffix (:data:`VIDEO_SUFFIXES`)."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES


def frame_files(folder: PathLike) -> list[Path]:
    """The image files directly in ``folder`` (:data:`IMAGE_SUFFIXES`, hidden files
    ignored), in natural order."""
    p = Path(folder)
    files = [q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")
             and q.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda q: natural_key(q.name))


def is_frame_folder(path: PathLike, min_frames: int = 2) -> bool:
    """Whether ``path`` looks like a folder of video frames: a folder with at least
    ``min_frames`` image files and neither ``scene.json`` (a synthetic scene) nor
    ``result.json`` (an output of hoiguide)."""
    p = Path(path)
    if not p.is_dir() or (p / "scene.json").exists() or (p / "result.json").exists():
        return False
    try:
        return len(frame_files(p)) >= int(min_frames)
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# which frames
# --------------------------------------------------------------------------------------


def _check_count(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise VideoError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def select_indices(n: int, every: int = 1, max_frames: Optional[int] = None
                   ) -> tuple[list[int], bool]:
    """Source frame indices kept of ``n`` frames: ``0, every, 2 every, ...``, then, when more
    than ``max_frames`` (default :data:`DEFAULT_MAX_FRAMES`) remain, ``max_frames`` of them
    evenly spread (first and last kept). Returns ``(indices, subsampled)``."""
    every = _check_count("every", every, 1)
    cap = DEFAULT_MAX_FRAMES if max_frames is None else _check_count("max_frames",
                                                                     max_frames, 1)
    kept = list(range(0, int(n), every))
    if len(kept) <= cap:
        return kept, False
    pick = np.unique(np.round(np.linspace(0, len(kept) - 1, cap)).astype(int))
    return [kept[i] for i in pick], True


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def read_frames(path: PathLike, *, every: int = 1, max_frames: Optional[int] = None,
                max_megapixels: float = 40.0, fps: Optional[float] = None
                ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Read a clip: a video file or a folder of image frames (see the module docstring).

    Args:
        path: a video file (any container FFmpeg reads; :data:`VIDEO_SUFFIXES` are the ones
            ``hoiguide batch`` recognises) or a folder of image files.
        every: keep every ``every``-th source frame (``>= 1``).
        max_frames: keep at most this many frames, evenly spread (default
            :data:`DEFAULT_MAX_FRAMES`).
        max_megapixels: a frame larger than this is refused (before decoding).
        fps: frames per second of a frame folder (default 30); for a video it overrides the
            stream's rate only when the video has no usable timestamps.

    Returns:
        ``(frames, info)``: ``frames`` a list of ``(H, W, 3)`` uint8 RGB arrays (the image's
        pixels, row 0 at the top); ``info`` a JSON-serialisable dict: ``source``, ``kind``
        (``"video"`` or ``"frames"``), ``width``, ``height``, ``fps``, ``source_frames``
        (frames in the source), ``frame_indices`` (source index of each kept frame),
        ``times`` (seconds of each kept frame, strictly increasing, 0 at the first source
        frame), ``every``, ``max_frames``, ``subsampled`` (``max_frames`` applied),
        ``files`` (frame folder: the kept file names), ``codec`` (video), ``conversions``.

    Raises:
        FileNotFoundError: no such file or folder.
        VideoError: unreadable, zero-length, no frames, frames of different sizes, too
            large, bad ``every`` / ``max_frames`` / ``fps``.
        ImportError: a video file and PyAV is not installed (``pip install
            'hoiguide[video]'``).
    """
    every = _check_count("every", every, 1)
    cap = DEFAULT_MAX_FRAMES if max_frames is None else _check_count("max_frames",
                                                                     max_frames, 1)
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or
                            not math.isfinite(fps) or fps <= 0):
        raise VideoError(f"fps: expected a positive number of frames per second, got {fps!r}")
    if isinstance(max_megapixels, bool) or not isinstance(max_megapixels, (int, float)) or \
            not max_megapixels > 0:
        raise VideoError(f"max_megapixels: expected a positive number, got {max_megapixels!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such video file or frame folder: {p}")
    if p.is_dir():
        frames, info = _read_folder(p, every, cap, float(max_megapixels), fps)
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        raise VideoError(f"{p}: is one image, not a clip: give a video file or a folder of "
                         f"frames ('hoiguide reconstruct' takes one photo)")
    else:
        frames, info = _read_video(p, every, cap, float(max_megapixels), fps)
    info.update(every=every, max_frames=cap)
    if info["subsampled"]:
        log.warning("clip %s: %d frames after every=%d exceed max_frames=%d: keeping %d frames "
                    "evenly spread over the clip (raise --max-frames or --every to choose)",
                    p.name, len(range(0, info["source_frames"], every)), every, cap,
                    len(frames))
    log.info("clip %s: %d frame(s) of %dx%d read (%s, %d source frames)", p.name, len(frames),
             info["width"], info["height"], info["kind"], info["source_frames"])
    return frames, info


MEMORY_WARNING_BYTES = 2 ** 30
"""Kept frames taking more memory than this (bytes, RGB uint8) log a warning."""


def _warn_memory(where: str, n: int, w: int, h: int) -> None:
    size = n * w * h * 3
    if size > MEMORY_WARNING_BYTES:
        log.warning("clip %s: keeping %d frames of %dx%d takes %.1f GiB of memory (and the "
                    "image chain more per frame): lower --max-frames, raise --every or "
                    "downscale the clip", where, n, w, h, size / 2 ** 30)


def _check_size(where: str, w: int, h: int, max_megapixels: float) -> None:
    if w * h > max_megapixels * 1e6:
        raise VideoError(f"{where}: frames are {w}x{h} = {w * h / 1e6:.1f} megapixels; the "
                         f"limit is {max_megapixels:g} MP: downscale the clip (the models "
                         f"work at 512 px anyway)")
    if min(w, h) < 16:
        raise VideoError(f"{where}: frames are {w}x{h} pixels; expected at least 16 pixels "
                         f"on each side")


def _read_folder(p: Path, every: int, cap: int, max_mp: float, fps: Optional[float]
                 ) -> tuple[list[np.ndarray], dict[str, Any]]:
    try:
        files = frame_files(p)
    except OSError as exc:
        raise VideoError(f"{p}: cannot list the folder ({exc.strerror or exc})") from None
    if not files:
        raise VideoError(f"{p}: the folder holds no image frames ({', '.join(IMAGE_SUFFIXES)}); "
                         f"give a folder of frames or a video file")
    idx, sub = select_indices(len(files), every, cap)
    frames: list[np.ndarray] = []
    conversions: set[str] = set()
    first: Optional[tuple[str, int, int]] = None
    for i in idx:
        f = files[i]
        try:
            img, info = load_image(f, max_megapixels=max_mp)
        except ImageError as exc:
            raise VideoError(f"{p}: frame {f.name}: {str(exc).splitlines()[0]}") from None
        conversions.update(info.get("conversions") or ())
        H, W = img.shape[:2]
        if first is None:
            first = (f.name, W, H)
            _warn_memory(p.name, len(idx), W, H)
        elif (W, H) != first[1:]:
            raise VideoError(f"{p}: frames of different sizes: {first[0]} is {first[1]}x"
                             f"{first[2]} but {f.name} is {W}x{H}; give frames of one size "
                             f"(resize them first)")
        frames.append(img)
    rate = 30.0 if fps is None else float(fps)
    assert first is not None
    return frames, {"source": str(p), "kind": "frames", "width": first[1], "height": first[2],
                    "fps": rate, "source_frames": len(files), "frame_indices": idx,
                    "times": [i / rate for i in idx], "subsampled": sub,
                    "files": [files[i].name for i in idx], "conversions": sorted(conversions)}


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise ImportError("reading a video file needs PyAV: pip install 'hoiguide[video]' (or "
                          "pip install av); or give a folder of frames instead "
                          f"({exc})") from exc
    return av


def _open(av: Any, p: Path) -> Any:
    try:
        container = av.open(str(p))
    except Exception as exc:  # noqa: BLE001 -- FFmpeg's errors, re-raised as one message
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = re.sub(r"^\[Errno -?\d+\]\s*", "", msg)
        raise VideoError(f"cannot read {p} as a video ({msg}); give a video file FFmpeg reads "
                         f"({', '.join(VIDEO_SUFFIXES)}) or a folder of frames") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{p}: holds no video stream (zero-length or audio only); give a "
                         f"video file with frames or a folder of frames")
    return container


def _upright(arr: np.ndarray, rotation: Any, conversions: list[str]) -> np.ndarray:
    """The decoded frame turned as the video's display matrix says (phone videos are stored
    sideways with a rotation to apply): ``rotation`` is the counter-clockwise angle in
    degrees; only multiples of 90 are applied."""
    try:
        r = float(rotation or 0)
    except (TypeError, ValueError):
        return arr
    k = int(round(r / 90.0))
    if abs(r - 90.0 * k) > 1e-3 or k % 4 == 0:
        return arr
    note = f"display rotation {r:g} degrees applied"
    if note not in conversions:
        conversions.append(note)
    return np.ascontiguousarray(np.rot90(arr, k % 4))


def _read_video(p: Path, every: int, cap: int, max_mp: float, fps: Optional[float]
                ) -> tuple[list[np.ndarray], dict[str, Any]]:
    av = _import_av()
    zero = (f"{p}: the video holds no frames (zero-length video); give a video with frames "
            f"or a folder of frames")
    container = _open(av, p)
    try:
        stream = container.streams.video[0]
        W, H = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if W and H:
            _check_size(str(p), W, H, max_mp)
        n = int(stream.frames or 0)
        if n <= 0:                       # no count in the header: count packets (no decoding)
            try:
                n = sum(1 for pkt in container.demux(stream) if pkt.size)
            except Exception as exc:  # noqa: BLE001 -- FFmpeg's errors
                raise VideoError(f"cannot read {p} as a video ({type(exc).__name__}: "
                                 f"{exc}); the file may be damaged") from None
            container.close()
            container = _open(av, p)
            stream = container.streams.video[0]
        if n <= 0:
            raise VideoError(zero)
        rate = stream.average_rate or stream.guessed_rate
        rate_f = float(rate) if rate else 0.0
        if not (math.isfinite(rate_f) and rate_f > 0):
            rate_f = 30.0 if fps is None else float(fps)
        idx, sub = select_indices(n, every, cap)
        if W and H:
            _warn_memory(p.name, len(idx), W, H)
        want = set(idx)
        last = idx[-1]
        frames: list[np.ndarray] = []
        got: list[int] = []
        stamps: list[Optional[float]] = []
        conversions: list[str] = []
        i = -1
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in want:
                    arr = _upright(frame.to_ndarray(format="rgb24"),
                                   getattr(frame, "rotation", 0), conversions)
                    if not frames:
                        _check_size(str(p), arr.shape[1], arr.shape[0], max_mp)
                    elif arr.shape != frames[0].shape:
                        raise VideoError(f"{p}: frames of different sizes ({frames[0].shape[1]}"
                                         f"x{frames[0].shape[0]} then {arr.shape[1]}x"
                                         f"{arr.shape[0]} at frame {i}); re-encode the video "
                                         f"at one size")
                    frames.append(np.ascontiguousarray(arr, dtype=np.uint8))
                    got.append(i)
                    stamps.append(None if frame.time is None else float(frame.time))
                if i >= last:
                    break
        except VideoError:
            raise
        except Exception as exc:  # noqa: BLE001 -- FFmpeg's decoding errors
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VideoError(f"{p}: decoding failed at frame {i + 1} ({msg}); the file may be "
                             f"damaged: re-encode it or give a folder of frames") from None
        codec = stream.codec_context.name
    finally:
        container.close()
    if not frames:
        raise VideoError(zero)
    if len(frames) < len(idx):
        log.warning("clip %s: the header announced %d frames but %d could be read; using %d",
                    p.name, n, i + 1, len(frames))
    first_t = stamps[0]
    times: Sequence[float]
    if all(s is not None for s in stamps) and \
            all(b > a for a, b in zip(stamps, stamps[1:])):   # type: ignore[operator]
        base = first_t if got[0] == 0 else 0.0
        times = [float(s) - float(base) for s in stamps]       # type: ignore[arg-type]
        if times[0] < 0:
            times = [t - times[0] for t in times]
    else:
        times = [g / rate_f for g in got]
    return frames, {"source": str(p), "kind": "video", "width": int(frames[0].shape[1]),
                    "height": int(frames[0].shape[0]), "fps": rate_f, "source_frames": n,
                    "frame_indices": got, "times": list(times), "subsampled": sub,
                    "codec": codec, "conversions": conversions}
