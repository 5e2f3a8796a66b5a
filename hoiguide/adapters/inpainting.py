"""Inpainting (docs/method.md section 1, step 3): remove the hand, complete the object, cut the
object out as the generator's condition image.

* :class:`FluxKontextInpainter`: FLUX.1 Kontext [dev] through diffusers (extra ``[inpaint]``),
  the reference's model: prompt "Remove hands but keep the {object}.", guidance 2.5, 28 steps.
  Its weights are gated and non-commercial (accept the licence on the Hugging Face hub).
* :class:`OpenCVInpainter`: OpenCV's Telea / Navier-Stokes inpainting of the (dilated) hand
  mask: milliseconds, offline, no weights; fills the hand region from its surroundings (it does
  not invent hidden object parts).

Both follow the :class:`Inpainter` protocol: ``(image (H, W, 3) uint8, mask_hand (H, W) bool,
object_name) -> (H, W, 3) uint8`` in the pixels of the input image (native frame: the image;
Kontext works at its own resolution and its output is resized back here).
:func:`object_image` then cuts the object out (RGBA, square, white background).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from hoiguide.adapters._util import (
    check_image,
    check_mask,
    default_device,
    import_optional,
    load_pretrained,
    seeded,
)

__all__ = ["Inpainter", "OpenCVInpainter", "FluxKontextInpainter", "object_image",
           "DEFAULT_KONTEXT", "KONTEXT_PROMPT"]

log = logging.getLogger(__name__)

DEFAULT_KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"
KONTEXT_PROMPT = "Remove hands but keep the {object}."


@runtime_checkable
class Inpainter(Protocol):
    """Removes the hand from an image.

    ``__call__(image, mask_hand, object_name) -> inpainted``: ``image`` ``(H, W, 3)`` uint8
    RGB, ``mask_hand`` ``(H, W)`` bool, ``object_name`` a short noun ("mug"); returns
    ``(H, W, 3)`` uint8 RGB in the same pixels.
    """

    def __call__(self, image: np.ndarray, mask_hand: np.ndarray,
                 object_name: str) -> np.ndarray: ...


def _cv2() -> Any:
    return import_optional("cv2", "Inpainting", "opencv-python-headless", "opencv")


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=int(px))


class OpenCVInpainter:
    """OpenCV inpainting of the hand region (offline fallback).

    Args:
        radius: inpainting neighbourhood radius in pixels.
        method: ``"telea"`` or ``"ns"`` (Navier-Stokes).
        dilate_px: the hand mask is grown by this many pixels first (mask edges are rarely
            exact; a thin hand-coloured rim would otherwise bleed into the fill).
    """

    native_frame = "input image pixels"

    def __init__(self, radius: float = 5, method: str = "telea", dilate_px: int = 3) -> None:
        if method not in ("telea", "ns"):
            raise ValueError(f"OpenCVInpainter: expected method 'telea' or 'ns', got {method!r}")
        if not radius > 0:
            raise ValueError(f"OpenCVInpainter: expected radius > 0, got {radius!r}")
        if int(dilate_px) != dilate_px or dilate_px < 0:
            raise ValueError(f"OpenCVInpainter: expected an integer dilate_px >= 0, got "
                             f"{dilate_px!r}")
        self.radius, self.method, self.dilate_px = float(radius), method, int(dilate_px)

    def __repr__(self) -> str:
        return (f"OpenCVInpainter(radius={self.radius:g}, method={self.method!r}, "
                f"dilate_px={self.dilate_px})")

    def __call__(self, image: np.ndarray, mask_hand: np.ndarray,
                 object_name: str = "object") -> np.ndarray:
        """Fill the (dilated) hand region; ``object_name`` is not used. Returns ``(H, W, 3)``
        uint8."""
        cv2 = _cv2()
        img = check_image(image, "OpenCVInpainter")
        hole = _dilate(check_mask(mask_hand, img.shape[:2], "OpenCVInpainter: mask_hand"),
                       self.dilate_px)
        if not hole.any():
            return img.copy()
        flag = cv2.INPAINT_TELEA if self.method == "telea" else cv2.INPAINT_NS
        return cv2.inpaint(img, hole.astype(np.uint8) * 255, self.radius, flag)


# --------------------------------------------------------------------------------------
# FLUX.1 Kontext
# --------------------------------------------------------------------------------------


def _tiny_tokenizer(max_length: int) -> Any:
    """A word-level tokenizer built in memory (CLIP / T5 stand-in for tiny models)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<s>", "</s>"] + \
        "remove hands hand but keep the a an . object bottle mug cup".split()
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=int(max_length),
                                   pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


class FluxKontextInpainter:
    """FLUX.1 Kontext removes the hand by instruction (the reference's inpainter).

    Args:
        pipeline: a diffusers ``FluxKontextPipeline``.
        num_inference_steps, guidance_scale: reference 28 and 2.5.
        prompt: template with ``{object}``.
        seed: the generator seed (same seed, same image).
        composite: keep the input pixels outside the (dilated) hand mask and take Kontext's
            only inside it. Off by default, as the reference (Kontext may relight or shift
            the object slightly; compositing avoids that but can leave seams).
        dilate_px: dilation of the hand mask used by ``composite``.
        auto_resize: let the pipeline resize the input to a preferred Kontext resolution
            (~1 MP; the reference). False keeps the input size (needed by tiny test models;
            the size must be a multiple of 16 for real ones).
        max_sequence_length: T5 prompt length (512 for the real model).
    """

    native_frame = "input image pixels (Kontext runs at its own resolution; resized back)"

    def __init__(self, pipeline: Any, *, num_inference_steps: int = 28,
                 guidance_scale: float = 2.5, prompt: str = KONTEXT_PROMPT, seed: int = 0,
                 composite: bool = False, dilate_px: int = 8, auto_resize: bool = True,
                 max_sequence_length: int = 512) -> None:
        if "{object}" not in prompt:
            raise ValueError(f"FluxKontextInpainter: expected the prompt template to contain "
                             f"'{{object}}', got {prompt!r}")
        if int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
            raise ValueError(f"FluxKontextInpainter: expected num_inference_steps >= 1, got "
                             f"{num_inference_steps!r}")
        self.pipeline = pipeline
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.prompt_template = prompt
        self.seed = int(seed)
        self.composite = bool(composite)
        self.dilate_px = int(dilate_px)
        self.auto_resize = bool(auto_resize)
        self.max_sequence_length = int(max_sequence_length)
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)

    def __repr__(self) -> str:
        return (f"FluxKontextInpainter(steps={self.num_inference_steps}, "
                f"guidance={self.guidance_scale:g}, composite={self.composite})")

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_KONTEXT, *,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, local_files_only: bool | None = None,
                        cpu_offload: bool = False, **kwargs: Any) -> "FluxKontextInpainter":
        """Load FLUX.1 Kontext (hub id or local folder in diffusers layout).

        Args:
            device: default CUDA when available (on CPU the 12B model is impractically slow).
            dtype: default bfloat16 on CUDA, float32 on CPU.
            local_files_only: only the local Hugging Face cache (also ``HF_HUB_OFFLINE=1``).
            cpu_offload: ``enable_model_cpu_offload()`` (for GPUs with < ~40 GB).
            kwargs: passed to the constructor (steps, guidance, seed, composite, ...).

        Raises:
            ImportError: diffusers missing (extra ``[inpaint]``).
            WeightsNotFoundError: weights not found (gated: log in and accept the licence).
        """
        diffusers = import_optional("diffusers", "FluxKontextInpainter", "diffusers>=0.34",
                                    "inpaint")
        dev = default_device(device)
        dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        if dev.type == "cpu":
            log.warning("FluxKontextInpainter on CPU: the 12B-parameter model needs ~50 GB of "
                        "memory and minutes per step; use a GPU or OpenCVInpainter")
        def loader(name: str, off: bool) -> Any:
            with warnings.catch_warnings():   # newer diffusers renamed torch_dtype to dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*",
                                        category=FutureWarning)
                return diffusers.FluxKontextPipeline.from_pretrained(name, torch_dtype=dt,
                                                                     local_files_only=off)

        pipe = load_pretrained(
            loader,
            model, what="FLUX.1 Kontext inpainter",
            download=(f"accept the licence at https://huggingface.co/{DEFAULT_KONTEXT}, then "
                      f"`hf auth login` and `hf download {DEFAULT_KONTEXT}`"),
            point_to="FluxKontextInpainter.from_pretrained('/path/to/FLUX.1-Kontext-dev')",
            local_files_only=local_files_only)
        if cpu_offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe = pipe.to(dev)
        return cls(pipe, **kwargs)

    @staticmethod
    def tiny_config() -> dict[str, dict[str, Any]]:
        """Component configs of a tiny Kontext pipeline (random weights; CPU tests)."""
        return {
            "transformer": {"patch_size": 1, "in_channels": 4, "num_layers": 1,
                            "num_single_layers": 1, "attention_head_dim": 8,
                            "num_attention_heads": 2, "joint_attention_dim": 16,
                            "pooled_projection_dim": 16, "guidance_embeds": True,
                            "axes_dims_rope": [2, 2, 4]},
            "vae": {"in_channels": 3, "out_channels": 3,
                    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
                    "block_out_channels": [8, 8], "layers_per_block": 1, "latent_channels": 1,
                    "norm_num_groups": 4, "sample_size": 32, "use_quant_conv": False,
                    "use_post_quant_conv": False, "shift_factor": 0.0609,
                    "scaling_factor": 1.5035},
            "text_encoder": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                             "num_hidden_layers": 1, "num_attention_heads": 2,
                             "max_position_embeddings": 16, "projection_dim": 16,
                             "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0},
            "text_encoder_2": {"vocab_size": 64, "d_model": 16, "d_kv": 8, "d_ff": 32,
                               "num_layers": 1, "num_heads": 2,
                               "relative_attention_num_buckets": 8, "pad_token_id": 0,
                               "eos_token_id": 3, "decoder_start_token_id": 0},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Mapping[str, Any]] | None = None, *, seed: int = 0,
                    tokenizer_max_length: int = 16, **kwargs: Any) -> "FluxKontextInpainter":
        """A ``FluxKontextPipeline`` of the real classes with random weights from component
        configs (default :meth:`tiny_config`) and word-level tokenizers built in memory;
        nothing is downloaded. ``auto_resize`` defaults to False here."""
        diffusers = import_optional("diffusers", "FluxKontextInpainter", "diffusers>=0.34",
                                    "inpaint")
        tf = import_optional("transformers", "FluxKontextInpainter", "transformers",
                             "inpaint")
        cfg = dict(cls.tiny_config())
        cfg.update(config or {})
        with seeded(seed):
            transformer = diffusers.FluxTransformer2DModel(**cfg["transformer"])
            vae = diffusers.AutoencoderKL(**cfg["vae"])
            te = tf.CLIPTextModel(tf.CLIPTextConfig(**cfg["text_encoder"]))
            te2 = tf.T5EncoderModel(tf.T5Config(**cfg["text_encoder_2"]))
        for m in (transformer, vae, te, te2):
            m.eval()                      # built in training mode: T5's dropout would be on
        pipe = diffusers.FluxKontextPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=te,
            tokenizer=_tiny_tokenizer(tokenizer_max_length), text_encoder_2=te2,
            tokenizer_2=_tiny_tokenizer(tokenizer_max_length), transformer=transformer)
        kwargs.setdefault("auto_resize", False)
        kwargs.setdefault("max_sequence_length", tokenizer_max_length)
        return cls(pipe, **kwargs)

    def prompt(self, object_name: str) -> str:
        """The instruction for ``object_name`` (reference: "Remove hands but keep the
        {object}.")."""
        if not isinstance(object_name, str) or not object_name.strip():
            raise ValueError(f"FluxKontextInpainter: expected a non-empty object name, got "
                             f"{object_name!r}")
        return self.prompt_template.format(object=object_name.strip())

    def __call__(self, image: np.ndarray, mask_hand: np.ndarray,
                 object_name: str = "object") -> np.ndarray:
        """Remove the hand. Returns ``(H, W, 3)`` uint8 at the input's size."""
        from PIL import Image

        img = check_image(image, "FluxKontextInpainter")
        H, W = img.shape[:2]
        mask = check_mask(mask_hand, (H, W), "FluxKontextInpainter: mask_hand")
        prompt = self.prompt(object_name)
        extra: dict[str, Any] = {}
        if not self.auto_resize:
            extra = {"max_area": H * W, "_auto_resize": False, "height": H, "width": W}
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        out = self.pipeline(image=Image.fromarray(img), prompt=prompt,
                            guidance_scale=self.guidance_scale,
                            num_inference_steps=self.num_inference_steps, generator=gen,
                            max_sequence_length=self.max_sequence_length, output_type="np",
                            **extra)
        res = np.asarray(out.images[0], dtype=np.float32)
        res = np.clip(np.rint(res * 255.0), 0, 255).astype(np.uint8)
        if res.shape[:2] != (H, W):
            res = np.asarray(Image.fromarray(res).resize((W, H), Image.Resampling.BICUBIC))
        if self.composite:
            hole = _dilate(mask, self.dilate_px)
            res = np.where(hole[..., None], res, img)
        return np.ascontiguousarray(res)


# --------------------------------------------------------------------------------------
# the condition image
# --------------------------------------------------------------------------------------


def object_image(inpainted: np.ndarray, object_mask: np.ndarray, *, size: int = 512,
                 margin: float = 0.1) -> np.ndarray:
    """The object alone, as the generator's condition: ``(size, size, 4)`` uint8 RGBA.

    The object is cut out with ``object_mask`` (alpha 255 inside, 0 outside; RGB white
    outside), then cropped to a square around the mask's bounding box with ``margin`` (a
    fraction of the box's longer side) on each side (white, transparent where the square
    leaves the image), and resized to ``size`` (area interpolation). This is the crop rule of
    :func:`hoiguide.synth.observers.inpaint_object`.

    Args:
        inpainted: ``(H, W, 3)`` uint8 (the hand removed).
        object_mask: ``(H, W)`` bool (the visible or completed object).
    """
    cv2 = _cv2()
    img = check_image(inpainted, "object_image")
    alpha = check_mask(object_mask, img.shape[:2], "object_image: object_mask")
    if int(size) != size or size < 1:
        raise ValueError(f"object_image: expected a positive integer size, got {size!r}")
    if not (margin >= 0):
        raise ValueError(f"object_image: expected margin >= 0, got {margin!r}")
    if not alpha.any():
        raise ValueError("object_image: the object mask is empty")
    rgba = np.concatenate([np.where(alpha[..., None], img, 255),
                           alpha[..., None].astype(np.uint8) * 255], -1).astype(np.uint8)
    ii, jj = np.nonzero(alpha)
    cy, cx = (ii.min() + ii.max() + 1) / 2, (jj.min() + jj.max() + 1) / 2
    half = max(ii.max() + 1 - ii.min(), jj.max() + 1 - jj.min()) * (0.5 + margin)
    y0, x0 = int(math.floor(cy - half)), int(math.floor(cx - half))
    n = int(math.ceil(2 * half))
    canvas = np.zeros((n, n, 4), np.uint8)
    canvas[..., :3] = 255
    H, W = alpha.shape
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + n, H), min(x0 + n, W)
    canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgba[sy0:sy1, sx0:sx1]
    return cv2.resize(canvas, (int(size), int(size)), interpolation=cv2.INTER_AREA)
