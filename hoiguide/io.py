"""Small file helpers every part of hoiguide shares: strict JSON, YAML, atomic folders, PNGs,
images, meshes, failure records and config fingerprints.

One implementation each, so every file hoiguide writes follows the same rules:

* JSON is strict (no ``NaN`` / ``Infinity`` tokens: non-finite numbers are written as
  ``null``), written atomically (temporary file + rename), and numpy / torch values become
  lists; :func:`read_json` says which file is broken instead of raising a decoder error.
* YAML is read with a ``SafeLoader`` (never runs code) that also reads ``1e-4`` as a number
  (plain PyYAML reads it as a string).
* A folder of outputs appears complete or not at all (:func:`commit_folder`), and a command
  only ever replaces a folder it wrote itself (:func:`check_output_folder`).
* Images are read into ``(H, W, 3)`` uint8 RGB with their type's range (:func:`load_image`).
* Pickles (MANO model files, dataset annotations) are read only through an allow-list of
  globals (:class:`RestrictedUnpickler`): a file can never run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import pickle
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import yaml

from hoiguide.types import Mesh

__all__ = ["to_jsonable", "write_json", "read_json", "json_text", "load_yaml", "fingerprint",
           "commit_folder", "check_output_folder", "OutputFolderError", "save_png",
           "load_image", "ImageError", "as_uint8_image", "write_mesh", "failure_record",
           "RESULT_FILE", "did_you_mean", "numpy_pickle_globals", "RestrictedUnpickler",
           "read_numpy_pickle"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

RESULT_FILE = "result.json"
"""The file every command that writes a folder puts in it, with ``"kind"`` saying which."""


# ---------------------------------------------------------------------------- JSON
def to_jsonable(x: Any) -> Any:
    """``x`` as plain JSON data: non-finite floats -> ``None``; numpy scalars / arrays and
    tensors -> numbers / lists; paths -> strings; objects with ``to_dict()`` -> that; other
    objects -> ``str``. Mapping keys become strings."""
    if x is None or isinstance(x, (bool, str, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return to_jsonable(x.item())
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, torch.Tensor):
        return to_jsonable(x.detach().cpu().tolist())
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "to_dict") and callable(x.to_dict):
        return to_jsonable(x.to_dict())
    return str(x)


def json_text(data: Any, *, indent: Optional[int] = 1, sort_keys: bool = False) -> str:
    """Strict JSON text of ``data`` (see :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(data), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: PathLike, data: Any, *, indent: Optional[int] = 1) -> Path:
    """Write ``data`` as strict JSON, atomically: a temporary file in the same folder is
    renamed over ``path``, so an interrupted run never leaves half a file that a re-run
    would trust. Creates the parent folder. Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json_text(data, indent=indent))
        tmp.replace(p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


_MISSING = object()


def read_json(path: PathLike, default: Any = _MISSING) -> Any:
    """Read a JSON file. Without ``default``, a missing or broken file raises ``ValueError``
    (``FileNotFoundError`` when missing) naming the file; with it, ``default`` is returned
    instead (and a broken file is logged)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        if default is not _MISSING:
            return default
        raise FileNotFoundError(f"{p}: no such file") from None
    except OSError as exc:
        if default is not _MISSING:
            log.warning("ignoring unreadable %s (%s)", p, exc)
            return default
        raise ValueError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if default is not _MISSING:
            log.warning("ignoring broken JSON in %s (%s)", p, exc)
            return default
        raise ValueError(f"{p}: not valid JSON ({exc})") from None


def fingerprint(config: Any) -> str:
    """A short stable hash (16 hex digits) of ``config`` as sorted strict JSON: equal
    settings give equal fingerprints (used to tell whether stored results are still valid)."""
    return hashlib.sha256(json_text(config, indent=None, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- YAML
def did_you_mean(name: Any, candidates: Any) -> str:
    """``"; did you mean X?"`` for the closest of ``candidates`` (difflib), or ``""``: the
    tail of every "unknown name" message."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1,
                                      cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` / ``5E3`` as floats (YAML 1.2 style)."""


_YamlLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(source: Union[PathLike, str], *, text: Optional[str] = None) -> Any:
    """Parse YAML safely (no object construction, so no code runs) with ``1e-4`` read as a
    number. ``source`` is a file path; or pass the document as ``text`` (``source`` then only
    names it in errors). Raises ``FileNotFoundError`` / ``ValueError`` naming the source."""
    name = str(source)
    if text is None:
        p = Path(source)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: cannot read as text ({exc})") from None
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{name}: not valid YAML ({exc})") from None


# ---------------------------------------------------------------------------- folders
class OutputFolderError(FileExistsError):
    """An output folder cannot be used (it holds files hoiguide did not write)."""


def check_output_folder(out: PathLike, kind: str, allowed: Sequence[str] = ()) -> Path:
    """The one rule for every command that writes a folder: ``out`` may be missing, empty, or
    an earlier output of the same ``kind`` (its ``result.json`` says ``"kind": kind`` and it
    holds only ``allowed`` names and ``result.json``), which is then replaced as a whole.
    Anything else is refused with :class:`OutputFolderError` before anything is written.
    Also refuses a path that is a file and a parent that cannot be written."""
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputFolderError(f"{p}: exists and is not a folder; give a new folder")
    parent = p.parent if p.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    import os

    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputFolderError(f"{p}: cannot write into {probe} (permission denied); give a "
                                f"folder you can write to")
    if not p.is_dir():
        return p
    entries = sorted(q.name for q in p.iterdir())
    if not entries:
        return p
    marker = read_json(p / RESULT_FILE, default=None)
    ours = isinstance(marker, dict) and marker.get("kind") == kind
    foreign = [n for n in entries if n != RESULT_FILE and n not in allowed]
    if not ours or foreign:
        shown = ", ".join((foreign or entries)[:5])
        raise OutputFolderError(
            f"{p}: the folder exists and holds files that are not an earlier '{kind}' output "
            f"({shown}); give a new or empty folder (an earlier '{kind}' output there is "
            f"replaced)")
    return p


def commit_folder(tmp: PathLike, final: PathLike) -> Path:
    """Put the finished folder ``tmp`` at ``final``, replacing an earlier one: the new folder
    appears complete with one rename; if that rename fails the earlier folder is put back."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(old)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None and not final.exists():
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def failure_record(exc: BaseException, *, stage: Optional[str] = None,
                   **fields: Any) -> dict[str, Any]:
    """What a run that failed writes: ``{"status": "failed", "reason": "Type: first line",
    "error": "Type", "stage": ..., **fields}`` (reason at most 500 characters)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = (f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)[:500]
    out: dict[str, Any] = {"status": "failed", "reason": reason, "error": type(exc).__name__}
    if stage is not None:
        out["stage"] = stage
    out.update(fields)
    return out


# ---------------------------------------------------------------------------- images
class ImageError(ValueError):
    """The input image cannot be used (unreadable, too large, wrong array shape/dtype)."""


def as_uint8_image(a: Any, *, name: str = "image") -> np.ndarray:
    """An image array scaled by its type's range to uint8: uint8 as is; other unsigned and
    signed integers by their type's maximum (a 16-bit image by 65535, whatever its content);
    floats are taken to be in [0, 1] (values outside are clipped). Shape unchanged."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        top = float(np.iinfo(a.dtype).max)
        return np.clip(np.round(a.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise ImageError(f"{name}: the float image holds NaN or infinite values")
        return np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
    raise ImageError(f"{name}: expected a numeric image array, got dtype {a.dtype}")


def save_png(path: PathLike, image: Any) -> Path:
    """Save an ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` image as PNG (non-uint8 arrays are
    scaled by :func:`as_uint8_image`)."""
    from PIL import Image

    p = Path(path)
    Image.fromarray(np.ascontiguousarray(as_uint8_image(image, name=str(p)))).save(p)
    return p


def load_image(source: Any, *, max_megapixels: float = 40.0,
               min_side: int = 16) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a photo safely into ``(H, W, 3)`` uint8 RGB.

    Accepts a file path, a ``PIL.Image`` or an ``(H, W)``, ``(H, W, 1|3|4)`` array (uint8;
    16-bit and other integers scaled by their type's maximum; floats in [0, 1]). Grayscale
    becomes RGB; an alpha channel is composited onto white (the models expect opaque
    photos); 16-bit, 32-bit and float files are scaled by their type's range, not by their
    content (a float TIFF in [0, 1] stays as bright as it is); the EXIF orientation is
    applied. The size is checked from the file's header BEFORE decoding, so a huge file is
    refused without being read.

    Returns:
        ``(image, info)``; ``info`` has ``source``, ``width``, ``height``, ``mode`` (the
        original), ``conversions`` (what was done, as text).

    Raises:
        FileNotFoundError: no such file.
        ImageError: a folder, unreadable / not an image, more than ``max_megapixels`` million
            pixels, a side under ``min_side`` pixels, or an array of the wrong shape or dtype.
    """
    from PIL import Image, UnidentifiedImageError

    info: dict[str, Any] = {"source": None, "conversions": []}
    limit = float(max_megapixels) * 1e6

    def check_size(w: int, h: int) -> None:
        if w * h > limit:
            raise ImageError(f"the image is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit "
                             f"is {max_megapixels:g} MP (max_megapixels): downscale it (the "
                             f"models work at 512 px anyway)")
        if min(w, h) < min_side:
            raise ImageError(f"the image is {w}x{h} pixels; expected at least {min_side} "
                             f"pixels on each side")

    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        info["source"] = str(path)
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file (give one image; "
                             f"'hoiguide batch' takes a folder)")
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
                check_size(*im.size)
                im = _exif_upright(im, info)
                im.load()
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: refused as too large ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"cannot read {path} as an image ({type(exc).__name__}: "
                             f"{exc})") from None
        arr, mode = _pil_to_rgb(im, info)
    elif isinstance(source, Image.Image):
        check_size(*source.size)
        arr, mode = _pil_to_rgb(_exif_upright(source, info), info)
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        a = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
            raise ImageError(f"expected an image array of shape (H, W), (H, W, 1), (H, W, 3) "
                             f"or (H, W, 4), got {a.shape}")
        if a.dtype != np.uint8:
            if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
                raise ImageError(f"expected a uint8 image array (0..255), got {a.dtype}")
            info["conversions"].append(f"{a.dtype} scaled to 8 bits by its type's range")
            a = as_uint8_image(a)
        check_size(a.shape[1], a.shape[0])
        mode = "L" if a.ndim == 2 else ("RGBA" if a.shape[2] == 4 else "RGB")
        arr = _array_to_rgb(a, info)
        info["source"] = "array"
    else:
        raise ImageError(f"expected an image path, a PIL image or an image array, got "
                         f"{type(source).__name__}")
    info.update(width=int(arr.shape[1]), height=int(arr.shape[0]), mode=mode)
    for c in info["conversions"]:
        log.info("load_image: %s", c)
    return np.ascontiguousarray(arr), info


def _array_to_rgb(a: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    if a.ndim == 2:
        info["conversions"].append("grayscale -> RGB")
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        info["conversions"].append("RGBA composited onto white")
        alpha = a[..., 3:4].astype(np.float64) / 255.0
        rgb = a[..., :3].astype(np.float64) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return a


def _exif_upright(im: Any, info: dict[str, Any]) -> Any:
    """The image turned as its EXIF orientation tag says (the tag is then dropped)."""
    from PIL import ImageOps

    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 -- a broken EXIF block is ignored
        return im
    if orientation == 1:
        return im
    out = ImageOps.exif_transpose(im)
    info["conversions"].append(f"EXIF orientation {orientation} applied")
    return out if out is not None else im


# PIL modes of integer / float single-channel images and the range of their type
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
               "I": float(2**31 - 1), "F": 1.0}


def _pil_to_rgb(im: Any, info: dict[str, Any]) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode in _WIDE_MODES:
        a = np.asarray(im).astype(np.float64)
        top = _WIDE_MODES[mode]
        if mode == "I" and a.max(initial=0) <= 65535 and a.min(initial=0) >= 0:
            top = 65535.0  # 16-bit PNGs open as mode I: their type's range is 16 bits
        if mode == "F" and not np.isfinite(a).all():
            raise ImageError("the float image holds NaN or infinite values")
        info["conversions"].append(f"{mode} scaled to 8 bits by the type's range "
                                   f"(0..{top:g})")
        return _array_to_rgb(np.clip(np.round(a / top * 255), 0, 255).astype(np.uint8),
                             info), mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or \
        (mode == "P" and "transparency" in im.info)
    if has_alpha:
        return _array_to_rgb(np.asarray(im.convert("RGBA")), info), mode
    if mode in ("L", "1"):
        return _array_to_rgb(np.asarray(im.convert("L")), info), mode
    if mode != "RGB":
        info["conversions"].append(f"{mode} -> RGB")
    return np.asarray(im.convert("RGB")), mode


# ---------------------------------------------------------------------------- meshes
def write_mesh(path: PathLike, mesh: Mesh, color: Optional[Sequence[float]] = None) -> Path:
    """Write one mesh (format from the suffix: ``.glb``, ``.ply``, ``.obj``, ...) in its own
    frame and units, with an RGBA ``color`` in [0, 1] on every vertex when given. An empty
    mesh raises ``ValueError`` (there is nothing to write)."""
    p = Path(path)
    if mesh.is_empty:
        raise ValueError(f"{p}: the mesh is empty; nothing to write")
    colors = None
    if color is not None:
        colors = torch.tensor(tuple(color), dtype=torch.float32).expand(mesh.num_vertices,
                                                                        4).clone()
    Mesh(mesh.vertices.detach().cpu(), mesh.faces.cpu(), colors).export(p)
    return p


# ---------------------------------------------------------------------------- pickles
def numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickle of numpy arrays and plain Python data needs: numpy's array /
    dtype / scalar reconstruction functions (numpy 1 and 2 module paths) and
    ``_codecs.encode`` (protocol-2 bytes). Nothing here can run other code."""
    import _codecs

    try:  # numpy >= 2
        from numpy._core import multiarray as ma
        from numpy._core import numeric as nu
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
        from numpy.core import numeric as nu  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                       ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): _codecs.encode}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = ma._reconstruct
        out[(mod, "scalar")] = ma.scalar
    if hasattr(nu, "_frombuffer"):
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            out[(mod, "_frombuffer")] = nu._frombuffer
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only an allow-list of globals (default
    :func:`numpy_pickle_globals`), so loading a file never runs code from it. Subclasses may
    map more names in :meth:`extra_class`; anything else raises ``pickle.UnpicklingError``
    naming the global and ``what`` (the file)."""

    refuse_hint = "only numpy arrays, numbers, strings, lists and dicts are read"

    def __init__(self, file: Any, what: str,
                 allowed: Optional[Mapping[tuple[str, str], Any]] = None) -> None:
        super().__init__(file, encoding="latin1")
        self._allowed = dict(numpy_pickle_globals() if allowed is None else allowed)
        self._what = what

    def extra_class(self, module: str, name: str) -> Any:
        """A stand-in for a global outside the allow-list, or ``None`` to refuse it."""
        return None

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._allowed:
            return self._allowed[key]
        extra = self.extra_class(module, name)
        if extra is not None:
            return extra
        raise pickle.UnpicklingError(f"{self._what}: refusing to load the global "
                                     f"'{module}.{name}': {self.refuse_hint}")


def read_numpy_pickle(path: PathLike) -> Any:
    """Read a pickle that holds only numpy arrays and plain Python data (e.g. dataset
    annotation files) without running code from it.

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file names anything outside numpy's reconstruction
            functions (the message names it and the file), or is not a pickle.
    """
    p = Path(path)
    data = p.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), str(p)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # noqa: BLE001 -- truncated / not a pickle
        raise pickle.UnpicklingError(f"{p}: not a readable pickle ({type(exc).__name__}: "
                                     f"{exc})") from None


# ---------------------------------------------------------------------------- configs
class ConfigError(ValueError):
    """An invalid configuration file or mapping. ``path`` is the offending YAML path
    (``phases[2].weights.x``, ``hand.kind``), ``source`` the file; both lead the message."""

    def __init__(self, message: str, path: str = "", source: Optional[str] = None) -> None:
        self.path = path
        self.source = source
        self.detail = message
        prefix = "".join(p + ": " for p in (source, path) if p)
        super().__init__(prefix + message)


def coerce_options(cls: Any, options: Any, what: Optional[str] = None) -> Any:
    """An options dataclass from ``None`` (defaults), an instance (itself) or a mapping of its
    fields (unknown keys raise ``ValueError`` with the nearest field name)."""
    import dataclasses

    what = what or cls.__name__
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    if isinstance(options, Mapping):
        names = [f.name for f in dataclasses.fields(cls)]
        bad = [k for k in options if k not in names]
        if bad:
            raise ValueError(f"{what}: unknown option {bad[0]!r}{did_you_mean(bad[0], names)} "
                             f"(options: {', '.join(names)})")
        return cls(**dict(options))
    raise TypeError(f"options: expected {what}, a mapping or None, got "
                    f"{type(options).__name__}")
