"""A minimal stand-in for the few ``torchvision.transforms`` that ``hy3dgen`` imports.

Why this exists: ``hy3dgen.shapegen`` does ``from torchvision import transforms`` (in its image
conditioner) to build one ``Compose([Resize, CenterCrop, Normalize])``. No torchvision build
works with the CPU torch wheels we support, and installing torchvision from the registry
replaces torch with a CUDA build. So while (and only while) ``hy3dgen`` is imported, and only
when no working torchvision can be imported, :func:`torchvision_stand_in` places this small
module under the names ``torchvision`` and ``torchvision.transforms`` in ``sys.modules`` and
removes them again afterwards. hy3dgen's modules keep their reference to the stand-in; user code
that later does ``import torchvision`` sees exactly what it would have seen without us.

Only tensor images are supported (``(..., C, H, W)``, float or integer); the semantics follow the
documented torchvision behaviour for tensors:

* ``Resize(size: int)`` resizes the *shorter* side to ``size`` keeping the aspect ratio (the
  longer side becomes ``int(size * long / short)``); a ``(h, w)`` size is used as is; an image
  already at the output size is returned unchanged; bilinear/bicubic use
  ``torch.nn.functional.interpolate(align_corners=False, antialias=antialias)``; images that are
  not float32/float64 (integers, half precision) are resized in float32 and cast back (integers
  rounded first).
* ``CenterCrop(size)`` crops ``(h, w)`` around the centre with top
  ``int(round((H - h) / 2))`` and left ``int(round((W - w) / 2))`` (Python rounding); an image
  smaller than the crop is first zero-padded (extra pixel of an odd padding at the bottom/right).
* ``Normalize(mean, std)`` computes ``(x - mean[c]) / std[c]`` per channel on float tensors.
* ``Compose(transforms)`` applies the transforms in order.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import types
from enum import Enum
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = [
    "InterpolationMode",
    "Compose",
    "Resize",
    "CenterCrop",
    "Normalize",
    "resized_output_size",
    "torchvision_stand_in",
    "working_torchvision_available",
    "pymeshlab_stand_in",
    "hy3dgen_import_stand_ins",
]


class InterpolationMode(Enum):
    """Interpolation modes, with the same names and string values as torchvision's."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_TENSOR_MODES = {InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT,
                 InterpolationMode.BILINEAR, InterpolationMode.BICUBIC}


def _check_image(img: Any, who: str) -> torch.Tensor:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{who} (hoiguide's torchvision stand-in) supports torch tensors "
                        f"(..., C, H, W) only, got {type(img).__name__}")
    if img.ndim < 2:
        raise ValueError(f"{who}: expected an image tensor (..., H, W), got shape "
                         f"{tuple(img.shape)}")
    return img


def resized_output_size(height: int, width: int, size: int | Sequence[int],
                        max_size: int | None = None) -> tuple[int, int]:
    """Output ``(height, width)`` of torchvision's ``Resize(size, max_size=max_size)``.

    An int (or one-element sequence) sets the shorter side and keeps the aspect ratio, the longer
    side is truncated: ``int(size * long / short)``; ``max_size`` then caps the longer side. A
    two-element sequence is ``(h, w)``.
    """
    if isinstance(size, int):
        size = [size]
    size = list(size)
    if len(size) == 2:
        if max_size is not None:
            raise ValueError("Resize: max_size is only allowed when size sets the shorter side")
        return int(size[0]), int(size[1])
    if len(size) != 1:
        raise ValueError(f"Resize: size must be an int or a 1/2-element sequence, got {size}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(size[0]), int(int(size[0]) * long / short)
    if max_size is not None:
        if max_size <= new_short:
            raise ValueError(f"Resize: max_size={max_size} must be larger than the requested "
                             f"shorter side {new_short}")
        if new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if width <= height else (new_short, new_long)


class Compose:
    """Apply a list of transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


class Resize:
    """Resize a tensor image ``(..., C, H, W)``; see the module docstring for the semantics."""

    def __init__(self, size: int | Sequence[int],
                 interpolation: InterpolationMode | str = InterpolationMode.BILINEAR,
                 max_size: int | None = None, antialias: bool | None = True) -> None:
        if isinstance(interpolation, str):
            interpolation = InterpolationMode(interpolation)
        if not isinstance(interpolation, InterpolationMode):
            raise TypeError(f"Resize: interpolation must be an InterpolationMode, got "
                            f"{type(interpolation).__name__}")
        if interpolation not in _TENSOR_MODES:
            raise ValueError(f"Resize: {interpolation} is not supported for tensors; use one of "
                             f"{sorted(m.value for m in _TENSOR_MODES)}")
        self.size = size
        self.interpolation = interpolation
        self.max_size = max_size
        self.antialias = bool(antialias) if antialias is not None else False

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = _check_image(img, "Resize")
        h, w = int(img.shape[-2]), int(img.shape[-1])
        out_h, out_w = resized_output_size(h, w, self.size, self.max_size)
        if (out_h, out_w) == (h, w):
            return img
        mode = self.interpolation.value
        antialias = self.antialias and mode in ("bilinear", "bicubic")
        lead = img.shape[:-2]
        x = img.reshape(-1, 1, h, w) if img.ndim == 2 else img.reshape(-1, *img.shape[-3:])
        out_dtype = x.dtype
        if out_dtype not in (torch.float32, torch.float64):  # as torchvision: compute in fp32
            x = x.to(torch.float32)
        align = False if mode in ("bilinear", "bicubic") else None
        y = F.interpolate(x, size=(out_h, out_w), mode=mode, align_corners=align,
                          antialias=antialias)
        if mode == "bicubic" and out_dtype == torch.uint8:
            y = y.clamp(0, 255)
        if not out_dtype.is_floating_point:
            y = torch.round(y)
        y = y.to(out_dtype)
        return y.reshape(*lead, out_h, out_w)

    forward = __call__

    def __repr__(self) -> str:
        return (f"Resize(size={self.size}, interpolation={self.interpolation.value}, "
                f"max_size={self.max_size}, antialias={self.antialias})")


class CenterCrop:
    """Crop the centre ``(h, w)`` of a tensor image, zero-padding first when it is smaller."""

    def __init__(self, size: int | Sequence[int]) -> None:
        if isinstance(size, (int, float)):
            size = (int(size), int(size))
        size = tuple(int(s) for s in size)
        if len(size) == 1:
            size = (size[0], size[0])
        if len(size) != 2:
            raise ValueError(f"CenterCrop: size must be an int or (h, w), got {size}")
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = _check_image(img, "CenterCrop")
        ch, cw = self.size
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if ch > h or cw > w:
            left = (cw - w) // 2 if cw > w else 0
            top = (ch - h) // 2 if ch > h else 0
            right = (cw - w + 1) // 2 if cw > w else 0
            bottom = (ch - h + 1) // 2 if ch > h else 0
            img = F.pad(img, [left, right, top, bottom], value=0)
            h, w = int(img.shape[-2]), int(img.shape[-1])
            if (ch, cw) == (h, w):
                return img
        top = int(round((h - ch) / 2.0))
        left = int(round((w - cw) / 2.0))
        return img[..., top:top + ch, left:left + cw]

    forward = __call__

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class Normalize:
    """Per-channel ``(x - mean[c]) / std[c]`` on a float tensor image ``(..., C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        self.mean = list(mean)
        self.std = list(std)
        self.inplace = inplace

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = _check_image(img, "Normalize")
        if not img.is_floating_point():
            raise TypeError(f"Normalize: expected a float tensor, got {img.dtype}")
        if img.ndim < 3:
            raise ValueError(f"Normalize: expected a tensor image (..., C, H, W), got shape "
                             f"{tuple(img.shape)}")
        mean = torch.as_tensor(self.mean, dtype=img.dtype, device=img.device)
        std = torch.as_tensor(self.std, dtype=img.dtype, device=img.device)
        if bool((std == 0).any()):
            raise ValueError(f"Normalize: std evaluated to zero, got {self.std}")
        if mean.ndim == 1:
            mean = mean.view(-1, 1, 1)
        if std.ndim == 1:
            std = std.view(-1, 1, 1)
        if not self.inplace:
            img = img.clone()
        return img.sub_(mean).div_(std)

    forward = __call__

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def _make_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """Fresh ``torchvision`` and ``torchvision.transforms`` module objects for the stand-in."""
    tv = types.ModuleType("torchvision", "hoiguide's minimal torchvision stand-in (see "
                                         "hoiguide.backbones._torchvision_shim)")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    tv.__path__ = []  # a package, so "torchvision.transforms" resolves through sys.modules
    tv.__version__ = "0.0.0+hoiguide.stand_in"
    tv.__hoiguide_stand_in__ = True
    tr = types.ModuleType("torchvision.transforms")
    tr.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    for name in ("InterpolationMode", "Compose", "Resize", "CenterCrop", "Normalize"):
        setattr(tr, name, globals()[name])
    tr.__hoiguide_stand_in__ = True
    tv.transforms = tr
    return tv, tr


def working_torchvision_available() -> bool:
    """Whether a real torchvision whose ``transforms`` import without error is installed.

    A failed attempt leaves no partial ``torchvision`` modules behind in ``sys.modules``.
    """
    mod = sys.modules.get("torchvision")
    if mod is not None:
        return not getattr(mod, "__hoiguide_stand_in__", False)
    try:
        if importlib.util.find_spec("torchvision") is None:
            return False
    except (ImportError, ValueError):
        return False
    before = set(sys.modules)
    try:
        importlib.import_module("torchvision.transforms")
        return True
    except Exception as exc:  # a broken build raises all sorts of errors (RuntimeError, OSError)
        log.info("torchvision is installed but does not import (%s: %s); using hoiguide's "
                 "stand-in for hy3dgen", type(exc).__name__, exc)
        for name in set(sys.modules) - before:
            if name == "torchvision" or name.startswith("torchvision."):
                sys.modules.pop(name, None)
        return False


@contextlib.contextmanager
def torchvision_stand_in() -> Iterator[bool]:
    """Context manager: provide the stand-in as ``torchvision`` inside the block if needed.

    Yields True when the stand-in was installed, False when a working torchvision exists (then
    nothing is changed). On exit the ``sys.modules`` entries are restored to what they were.
    """
    if working_torchvision_available():
        yield False
        return
    names = ("torchvision", "torchvision.transforms")
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    tv, tr = _make_modules()
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = tr
    try:
        yield True
    finally:
        for n in names:
            if sys.modules.get(n) in (tv, tr):
                del sys.modules[n]
        sys.modules.update(saved)



# --------------------------------------------------------------------------------------
# pymeshlab: hy3dgen.shapegen's package __init__ imports its mesh post-processors, which do
# ``import pymeshlab`` at module level and use ``pymeshlab.MeshSet`` in annotations. hoiguide
# never calls those post-processors, so when pymeshlab is missing a placeholder module is
# provided during the import; using anything from it raises an ImportError that says so.
# --------------------------------------------------------------------------------------

_PYMESHLAB_MSG = ("pymeshlab is not installed: hy3dgen's mesh post-processors (FloaterRemover, "
                  "FaceReducer, DegenerateFaceRemover, MeshSimplifier) need it "
                  "(`pip install pymeshlab`); hoiguide itself does not use them")


class _MissingMeshSet:
    """Placeholder for ``pymeshlab.MeshSet``; instantiating it raises ImportError."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError(_PYMESHLAB_MSG)


def _make_pymeshlab() -> types.ModuleType:
    mod = types.ModuleType("pymeshlab", "hoiguide placeholder: pymeshlab is not installed")
    mod.__spec__ = importlib.machinery.ModuleSpec("pymeshlab", None)
    mod.MeshSet = _MissingMeshSet
    mod.__hoiguide_stand_in__ = True

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(_PYMESHLAB_MSG)

    mod.__getattr__ = __getattr__
    return mod


@contextlib.contextmanager
def pymeshlab_stand_in() -> Iterator[bool]:
    """Context manager: a placeholder ``pymeshlab`` inside the block when it is not installed.

    Yields True when the placeholder was installed; restores ``sys.modules`` on exit.
    """
    if "pymeshlab" in sys.modules or importlib.util.find_spec("pymeshlab") is not None:
        yield False
        return
    mod = _make_pymeshlab()
    sys.modules["pymeshlab"] = mod
    try:
        yield True
    finally:
        if sys.modules.get("pymeshlab") is mod:
            del sys.modules["pymeshlab"]


@contextlib.contextmanager
def hy3dgen_import_stand_ins() -> Iterator[dict[str, bool]]:
    """Both stand-ins (torchvision, pymeshlab), each only where the real package is unusable.

    Yields ``{"torchvision": used, "pymeshlab": used}``.
    """
    with torchvision_stand_in() as tv, pymeshlab_stand_in() as pm:
        yield {"torchvision": tv, "pymeshlab": pm}
