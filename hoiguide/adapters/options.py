"""Options of the photo -> observations chain (:class:`PipelineOptions`), shared by the chain
(:mod:`hoiguide.adapters.pipeline`) and the models file (:mod:`hoiguide.adapters.models`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from hoiguide.alignment import AlignmentOptions
from hoiguide.io import coerce_options

__all__ = ["PipelineOptions"]


@dataclass(frozen=True)
class PipelineOptions:
    """Settings of the image chain (not of the models, not of the guidance).

    Attributes:
        crop_size: side of the square crop in pixels (reference: 512).
        pad_px, enlarge: crop padding (full-image pixels) and enlargement (reference: 10,
            1.25).
        object_image_size, object_margin: the object image's side (pixels) and margin (as a
            fraction of the object's size) (:func:`hoiguide.adapters.inpainting.object_image`).
        fallback_prompt: object prompt used when ``object_name`` finds nothing.
        hand_prompt: the hand prompt.
        amodal_from_inpainting: cut the object image out with the object mask found again on
            the inpainted crop (the completed object, ``mask_object_amodal``); else with the
            visible mask.
        coarse_steps, coarse_guidance_scale, coarse_resolution: the unguided generator run
            for the coarse hand-object mesh (steps, CFG weight, decode grid points per axis;
            ``None``: ``min(backbone.default_resolution, 129)``).
        min_mask_pixels: masks with fewer crop pixels count as empty.
        border_px: an object mask reaching within this many full-image pixels of the photo's
            border is "touching the border".
        allow_truncated_object: go on (with a warning) when the object touches the border.
        max_megapixels: larger photos are refused (:func:`load_image`).
        alignment: :class:`hoiguide.alignment.AlignmentOptions` or a mapping of its fields.
    """

    crop_size: int = 512
    pad_px: float = 10.0
    enlarge: float = 1.25
    object_image_size: int = 512
    object_margin: float = 0.1
    fallback_prompt: str = "manipulated object"
    hand_prompt: str = "hand"
    amodal_from_inpainting: bool = True
    coarse_steps: int = 20
    coarse_guidance_scale: float = 5.0
    coarse_resolution: Optional[int] = None
    min_mask_pixels: int = 16
    border_px: float = 1.0
    allow_truncated_object: bool = False
    max_megapixels: float = 40.0
    alignment: Any = None

    def __post_init__(self) -> None:

        def pos_int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"PipelineOptions.{name}: expected an integer >= {lo}, got "
                                 f"{v!r}")

        pos_int("crop_size", 16)
        pos_int("object_image_size", 16)
        pos_int("coarse_steps", 1)
        pos_int("min_mask_pixels", 1)
        if self.coarse_resolution is not None:
            pos_int("coarse_resolution", 8)
        for name, lo in (("pad_px", 0.0), ("border_px", 0.0), ("object_margin", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < lo:
                raise ValueError(f"PipelineOptions.{name}: expected a number >= {lo}, got "
                                 f"{v!r}")
        for name in ("enlarge", "max_megapixels", "coarse_guidance_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ValueError(f"PipelineOptions.{name}: expected a number > 0, got {v!r}")
        for name in ("fallback_prompt", "hand_prompt"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"PipelineOptions.{name}: expected a non-empty string, got "
                                 f"{v!r}")
        a = self.alignment
        if a is None or isinstance(a, AlignmentOptions):
            return
        if isinstance(a, Mapping):
            names = {f.name for f in dataclasses.fields(AlignmentOptions)}
            bad = [k for k in a if k not in names]
            if bad:
                raise ValueError(f"PipelineOptions.alignment: unknown AlignmentOptions field "
                                 f"{bad[0]!r} (fields: {', '.join(sorted(names))})")
            vals = {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}
            object.__setattr__(self, "alignment", AlignmentOptions(**vals))
            return
        raise TypeError(f"PipelineOptions.alignment: expected AlignmentOptions, a mapping or "
                        f"None, got {type(a).__name__}")

    @classmethod
    def coerce(cls, options: Union["PipelineOptions", Mapping[str, Any], None]) -> "PipelineOptions":
        """``None`` -> defaults; a mapping -> validated options (unknown keys named)."""
        return coerce_options(cls, options)
