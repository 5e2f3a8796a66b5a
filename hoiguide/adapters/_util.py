"""Shared plumbing of the foundation-model adapters: input checks, optional imports, weight
look-ups with errors that say where we looked and how to fix it."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

#: pip commands per optional feature (the extras are declared in pyproject.toml)
INSTALL_HINTS: dict[str, str] = {
    "segment": 'pip install "hoiguide[segment]"',
    "inpaint": 'pip install "hoiguide[inpaint]"',
    "opencv": 'pip install "hoiguide[inpaint]"  (or: pip install opencv-python-headless)',
    "moge": "pip install git+https://github.com/microsoft/MoGe.git  (MoGe is not on PyPI)",
    "hamer": ("pip install git+https://github.com/geopavlakos/hamer.git  (HaMeR is not on PyPI; "
              "see its README for its own dependencies)"),
    "mediapipe": ("pip install --no-deps mediapipe==0.10.21 absl-py attrs flatbuffers "
                  "'protobuf<5' sounddevice  (0.10.21 is the last wheel that bundles the hand "
                  "models; --no-deps keeps its opencv-contrib and numpy<2 pins out)"),
    "lang_sam": "pip install git+https://github.com/luca-medeiros/lang-segment-anything.git",
}


class WeightsNotFoundError(FileNotFoundError):
    """A model's weights (or a file it needs) were not found; the message lists every place
    that was searched and how to point hoiguide at local files."""


class NoDetectionError(RuntimeError):
    """A detector ran but found nothing (e.g. no hand in the image)."""


def missing_package(feature: str, package: str, hint_key: str,
                    exc: BaseException | None = None) -> ImportError:
    """An ``ImportError`` naming the optional package, the feature that needs it and the pip
    command (``INSTALL_HINTS[hint_key]``)."""
    msg = (f"{feature} needs the optional package `{package}`, which could not be imported. "
           f"Install it with: {INSTALL_HINTS[hint_key]}")
    if exc is not None:
        msg += f"\n(import failed with: {type(exc).__name__}: {exc})"
    return ImportError(msg)


def import_optional(module: str, feature: str, package: str, hint_key: str) -> Any:
    """``importlib.import_module(module)`` or :func:`missing_package`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_package(feature, package, hint_key, exc) from exc


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_offline(local_files_only: bool | None) -> bool:
    """Offline mode: ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``
    (``local_files_only=False`` forces online look-ups)."""
    if local_files_only is not None:
        return bool(local_files_only)
    return env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``owner/name``)."""
    p = Path(name).expanduser()
    return p.exists() or os.path.isabs(name) or name.startswith((".", "~")) or \
        name.count("/") != 1 or "\\" in name


def load_pretrained(loader: Callable[[str, bool], T], name: str | os.PathLike, *, what: str,
                    download: str, point_to: str, local_files_only: bool | None = None) -> T:
    """Call ``loader(name_or_path, offline)`` and turn "not found" failures (``OSError``, which
    covers transformers', diffusers' and huggingface_hub's) into :class:`WeightsNotFoundError`
    listing where we looked and how to fix it.

    Args:
        loader: e.g. ``lambda n, off: Model.from_pretrained(n, local_files_only=off)``.
        name: hub id or local folder.
        what: the model, for messages ("GroundingDINO detector").
        download: how to fetch the weights (a command).
        point_to: how to use local files instead (an example call).
    """
    name = os.fspath(name)
    offline = is_offline(local_files_only)
    if looks_like_path(name):
        p = Path(name).expanduser()
        if not p.exists():
            raise WeightsNotFoundError(
                f"{what}: no such file or folder: {p}. To fix: {download}, then {point_to}.")
        name = str(p)
    try:
        return loader(name, offline)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = (f"local folder {name}" if looks_like_path(name) else
                 f"the Hugging Face {'cache (offline mode)' if offline else 'cache and hub'} "
                 f"for {name!r} (cache: $HF_HOME, default ~/.cache/huggingface)")
        raise WeightsNotFoundError(
            f"{what}: could not load weights. Looked in: {where}: {type(exc).__name__}: {first}\n"
            f"To fix: {download}; or {point_to}. Offline mode (HF_HUB_OFFLINE=1 or "
            f"local_files_only=True) only reads the local cache.") from exc


def default_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------------------
# input checks (raised at the API boundary, "expected X, got Y")
# --------------------------------------------------------------------------------------


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None:
        return f"shape {tuple(shape)} dtype {dtype}"
    return f"{type(x).__name__}"


def check_image(image: Any, where: str, *, channels: Sequence[int] = (3,)) -> np.ndarray:
    """An ``(H, W, C)`` uint8 numpy image with ``C`` in ``channels``. PIL images are converted
    (to RGB, or RGBA when 4 channels are allowed and the image has alpha)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        mode = "RGBA" if (4 in channels and "A" in image.getbands()) else "RGB"
        image = np.asarray(image.convert(mode))
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{where}: expected a numpy (H, W, {'|'.join(map(str, channels))}) uint8 "
                        f"image, got a torch tensor ({_describe(image)})")
    arr = np.asarray(image) if not isinstance(image, np.ndarray) else image
    if arr.ndim != 3 or arr.shape[2] not in tuple(channels) or arr.dtype != np.uint8 or \
            arr.shape[0] < 1 or arr.shape[1] < 1:
        want = "|".join(str(c) for c in channels)
        raise ValueError(f"{where}: expected an (H, W, {want}) uint8 image, got "
                         f"{_describe(arr)}" + ("; convert grayscale/RGBA images to RGB first"
                                                if arr.ndim in (2, 3) else ""))
    return np.ascontiguousarray(arr)


def check_mask(mask: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    """An ``(H, W)`` bool mask of the given shape (numbers: ``> 0.5``; torch tensors accepted)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{where}: expected a mask of shape {tuple(shape)} (the image's), got "
                         f"{_describe(m)}")
    if m.dtype == bool:
        return m
    if not (np.issubdtype(m.dtype, np.number)):
        raise ValueError(f"{where}: expected a bool or numeric mask, got dtype {m.dtype}")
    return m > 0.5


def check_box(box: Any, where: str) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` pixels, finite, ``x1 > x0`` and ``y1 > y0``."""
    if isinstance(box, torch.Tensor):
        box = box.detach().cpu().numpy()
    b = np.asarray(box, dtype=np.float64).reshape(-1) if box is not None else None
    if b is None or b.shape != (4,):
        raise ValueError(f"{where}: expected a box (x0, y0, x1, y1) in pixels, got {box!r}")
    if not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"{where}: expected a finite box (x0, y0, x1, y1) with x1 > x0 and "
                         f"y1 > y0, got {tuple(float(v) for v in b)}")
    return float(b[0]), float(b[1]), float(b[2]), float(b[3])


def seeded(seed: int) -> Any:
    """Context manager: torch's global RNG seeded with ``seed`` inside, restored after."""
    class _Ctx:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(int(seed))
            return self

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Ctx()
