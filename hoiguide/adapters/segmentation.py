"""Text-prompted segmentation ("LangSAM", docs/method.md section 1, step 2): GroundingDINO turns
a prompt into boxes, SAM turns the best box into a mask.

Two back ends:

* ``transformers`` (extra ``[segment]``): ``GroundingDinoForObjectDetection`` +
  ``GroundingDinoProcessor`` and ``SamModel`` + ``SamProcessor`` (SAM v1; its processor works
  without torchvision, SAM 2's does not);
* the ``lang_sam`` package (lang-segment-anything, GroundingDINO + SAM 2.1), used instead when
  it is installed and the default models are asked for.

Native frame: both return boxes ``(x0, y0, x1, y1)`` in pixels of the input image (continuous
coordinates, the image spans ``[0, W] x [0, H]``: our convention) and masks at the input
resolution, so no conversion is needed beyond reading their output formats
(:func:`grounding_dino_detections`).

Defaults follow the reference: box threshold 0.3, text threshold 0.25, prompts lower-cased
and ending with ".".
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from hoiguide.adapters._util import (
    WeightsNotFoundError,
    check_image,
    default_device,
    import_optional,
    load_pretrained,
    seeded,
)

__all__ = ["SegmentationResult", "TextSegmenter", "normalize_prompt",
           "grounding_dino_detections", "DEFAULT_DETECTOR", "DEFAULT_SAM"]

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-base"
DEFAULT_SAM = "facebook/sam-vit-base"
DEFAULT_LANG_SAM_TYPE = "sam2.1_hiera_small"

Detection = tuple[tuple[float, float, float, float], float, str]


@dataclass
class SegmentationResult:
    """The best mask for a prompt.

    Attributes:
        mask: ``(H, W)`` bool, pixels of the input image.
        box: the detection box ``(x0, y0, x1, y1)`` (pixels) the mask came from, or None.
        score: the detector's score of that box in ``[0, 1]`` (0 when nothing was found).
        label: the phrase the detector matched ("" when nothing was found).
        mask_score: SAM's predicted IoU of the mask (0 when nothing was found).
        prompt: the prompt that produced the result (the fallback, when it was used).
    """

    mask: np.ndarray
    box: tuple[float, float, float, float] | None
    score: float
    label: str
    mask_score: float = 0.0
    prompt: str = ""

    @property
    def found(self) -> bool:
        return self.box is not None and bool(self.mask.any())


def normalize_prompt(prompt: str) -> str:
    """GroundingDINO's prompt form: lower case, stripped, ending with ".". """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"expected a non-empty text prompt, got {prompt!r}")
    p = prompt.strip().lower()
    return p if p.endswith(".") else p + "."


def _labels(labels: Any, n: int) -> list[str]:
    if labels is None:
        out = []
    elif isinstance(labels, torch.Tensor):
        out = [str(int(x)) for x in labels.reshape(-1).tolist()]
    else:
        out = [str(x) for x in list(labels)]
    return (out + [""] * n)[:n]


def grounding_dino_detections(result: Mapping[str, Any]) -> list[Detection]:
    """One image's post-processed GroundingDINO output (``boxes`` ``(N, 4)`` xyxy pixels,
    ``scores`` ``(N,)``, ``text_labels`` or ``labels``; numpy or torch) -> detections sorted
    by decreasing score."""
    boxes = result.get("boxes")
    scores = result.get("scores")
    labels = result["text_labels"] if "text_labels" in result else result.get("labels")
    if boxes is None or scores is None:
        raise ValueError(f"grounding_dino_detections: expected 'boxes' and 'scores', got keys "
                         f"{sorted(result)}")
    b = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    s = np.asarray(s, np.float64).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"grounding_dino_detections: {len(b)} boxes but {len(s)} scores")
    labels = _labels(labels, len(b))
    dets = [((float(x0), float(y0), float(x1), float(y1)), float(sc), lab)
            for (x0, y0, x1, y1), sc, lab in zip(b, s, labels)
            if np.isfinite([x0, y0, x1, y1, sc]).all() and x1 > x0 and y1 > y0]
    return sorted(dets, key=lambda d: -d[1])


# --------------------------------------------------------------------------------------
# tiny processors built in memory (tests and demos; no downloads)
# --------------------------------------------------------------------------------------

_TINY_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."]
               + list("abcdefghijklmnopqrstuvwxyz0123456789")
               + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"])


def _tiny_bert_tokenizer(max_length: int) -> Any:
    """A character-level WordPiece tokenizer (BERT layout) built in memory."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = {t: i for i, t in enumerate(_TINY_VOCAB)}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return BertTokenizerFast(tokenizer_object=tk, model_max_length=int(max_length),
                             unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]")


def _cfg(config: Any, cls: Any) -> Any:
    if isinstance(config, Mapping):
        return cls(**config)
    if isinstance(config, cls):
        return config
    raise TypeError(f"expected a {cls.__name__} or a dict, got {type(config).__name__}")


# --------------------------------------------------------------------------------------
# the segmenter
# --------------------------------------------------------------------------------------


class TextSegmenter:
    """Text prompt -> boxes (GroundingDINO) -> best mask (SAM).

    Build with :meth:`from_pretrained` (real weights), :meth:`from_config` (random weights,
    any size: tests) or directly from model objects.

    Args:
        detector, detector_processor: a ``GroundingDinoForObjectDetection`` and its processor.
        sam, sam_processor: a ``SamModel`` and its ``SamProcessor``.
        lang_sam: alternatively a ``lang_sam.LangSAM`` instance (then the four above are None).
        device: where the models run.
        box_threshold, text_threshold: GroundingDINO thresholds (reference 0.3 / 0.25).
    """

    native_frame = "input image pixels (xyxy boxes, masks at the input resolution)"

    def __init__(self, detector: Any = None, detector_processor: Any = None, sam: Any = None,
                 sam_processor: Any = None, *, lang_sam: Any = None,
                 device: torch.device | str | None = None, box_threshold: float = 0.3,
                 text_threshold: float = 0.25) -> None:
        if lang_sam is None and any(x is None for x in (detector, detector_processor, sam,
                                                         sam_processor)):
            raise ValueError("TextSegmenter: expected detector, detector_processor, sam and "
                             "sam_processor (or lang_sam=LangSAM())")
        for name, v in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not float(v) >= 0:
                raise ValueError(f"TextSegmenter: expected {name} >= 0 (scores are in [0, 1]), "
                                 f"got {v!r}")
        self.device = default_device(device) if lang_sam is None else None
        self.detector = detector.to(self.device).eval() if detector is not None else None
        self.detector_processor = detector_processor
        self.sam = sam.to(self.device).eval() if sam is not None else None
        self.sam_processor = sam_processor
        self.lang_sam = lang_sam
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)

    @property
    def backend(self) -> str:
        return "lang_sam" if self.lang_sam is not None else "transformers"

    def __repr__(self) -> str:
        return (f"TextSegmenter(backend={self.backend!r}, box_threshold={self.box_threshold}, "
                f"text_threshold={self.text_threshold})")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, detector: str = DEFAULT_DETECTOR, sam: str = DEFAULT_SAM,
                        device: torch.device | str | None = None,
                        local_files_only: bool | None = None, *, backend: str = "auto",
                        lang_sam_type: str = DEFAULT_LANG_SAM_TYPE,
                        box_threshold: float = 0.3,
                        text_threshold: float = 0.25) -> "TextSegmenter":
        """Load GroundingDINO and SAM.

        Args:
            detector, sam: hub ids or local folders (``save_pretrained`` layout).
            device: default CUDA when available.
            local_files_only: only the local Hugging Face cache (also ``HF_HUB_OFFLINE=1``).
            backend: ``"auto"`` (``lang_sam`` when installed and ``detector``/``sam`` are the
                defaults, else ``transformers``), ``"transformers"`` or ``"lang_sam"``.
            lang_sam_type: SAM variant for the lang_sam back end.

        Raises:
            ImportError: transformers (extra ``[segment]``) or lang_sam missing.
            WeightsNotFoundError: weights not found (lists where we looked).
        """
        if backend not in ("auto", "transformers", "lang_sam"):
            raise ValueError(f"TextSegmenter.from_pretrained: expected backend 'auto', "
                             f"'transformers' or 'lang_sam', got {backend!r}")
        defaults = str(detector) == DEFAULT_DETECTOR and str(sam) == DEFAULT_SAM
        if backend == "lang_sam" or (backend == "auto" and defaults and
                                     importlib.util.find_spec("lang_sam") is not None):
            mod = import_optional("lang_sam", "TextSegmenter(backend='lang_sam')", "lang_sam",
                                  "lang_sam")
            dev = default_device(device)
            log.info("TextSegmenter: using lang_sam (GroundingDINO + %s) on %s", lang_sam_type,
                     dev)
            try:
                model = mod.LangSAM(sam_type=lang_sam_type, device=dev)
            except OSError as exc:
                raise WeightsNotFoundError(
                    f"lang_sam (GroundingDINO + {lang_sam_type}) could not load its weights "
                    f"(it downloads them itself, into the Hugging Face and torch hub caches): "
                    f"{type(exc).__name__}: {exc}. To fix: run once with network access, or "
                    f"use backend='transformers' with local folders.") from exc
            return cls(lang_sam=model, box_threshold=box_threshold,
                       text_threshold=text_threshold)
        tf = import_optional("transformers", "TextSegmenter", "transformers>=4.48", "segment")

        def det_loader(name: str, offline: bool) -> tuple[Any, Any]:
            proc = tf.AutoProcessor.from_pretrained(name, local_files_only=offline)
            model = tf.GroundingDinoForObjectDetection.from_pretrained(
                name, local_files_only=offline)
            return model, proc

        def sam_loader(name: str, offline: bool) -> tuple[Any, Any]:
            proc = tf.SamProcessor.from_pretrained(name, local_files_only=offline)
            model = tf.SamModel.from_pretrained(name, local_files_only=offline)
            return model, proc

        det, det_proc = load_pretrained(
            det_loader, detector, what="GroundingDINO detector",
            download=f"hf download {DEFAULT_DETECTOR}",
            point_to="TextSegmenter.from_pretrained(detector='/path/to/grounding-dino-folder')",
            local_files_only=local_files_only)
        sam_m, sam_proc = load_pretrained(
            sam_loader, sam, what="SAM mask model",
            download=f"hf download {DEFAULT_SAM}",
            point_to="TextSegmenter.from_pretrained(sam='/path/to/sam-folder')",
            local_files_only=local_files_only)
        return cls(det, det_proc, sam_m, sam_proc, device=device, box_threshold=box_threshold,
                   text_threshold=text_threshold)

    @staticmethod
    def tiny_detector_config() -> dict[str, Any]:
        """A GroundingDINO config small enough for CPU tests (random weights, 64 px)."""
        return {
            "backbone_config": {"model_type": "swin", "image_size": 64, "patch_size": 4,
                                "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1],
                                "window_size": 4, "out_features": ["stage1", "stage2"]},
            "text_config": {"model_type": "bert", "vocab_size": 80, "hidden_size": 32,
                            "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 37, "max_position_embeddings": 64},
            "num_queries": 10, "encoder_layers": 1, "encoder_ffn_dim": 32,
            "encoder_attention_heads": 2, "decoder_layers": 2, "decoder_ffn_dim": 32,
            "decoder_attention_heads": 2, "d_model": 32, "num_feature_levels": 2,
            "encoder_n_points": 2, "decoder_n_points": 2, "max_text_len": 32,
        }

    @staticmethod
    def tiny_sam_config() -> dict[str, Any]:
        """A SAM config small enough for CPU tests (random weights, 64 px)."""
        return {
            "vision_config": {"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "image_size": 64, "patch_size": 8,
                              "mlp_dim": 64, "window_size": 4, "global_attn_indexes": [0],
                              "num_pos_feats": 8},
            "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "patch_size": 8,
                                      "mask_input_channels": 4},
            "mask_decoder_config": {"hidden_size": 16, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "mlp_dim": 32,
                                    "iou_head_hidden_dim": 16},
        }

    @classmethod
    def from_config(cls, detector_config: Any = None, sam_config: Any = None, seed: int = 0, *,
                    device: torch.device | str | None = "cpu", box_threshold: float = 0.3,
                    text_threshold: float = 0.25) -> "TextSegmenter":
        """Randomly initialised models of the real classes from configs (dicts or config
        objects; None: :meth:`tiny_detector_config` / :meth:`tiny_sam_config`), with
        processors built in memory (a character-level BERT tokenizer; image processors sized
        from the configs). Nothing is downloaded. Weights depend only on ``seed``."""
        tf = import_optional("transformers", "TextSegmenter", "transformers>=4.48", "segment")
        dcfg = _cfg(detector_config or cls.tiny_detector_config(), tf.GroundingDinoConfig)
        scfg = _cfg(sam_config or cls.tiny_sam_config(), tf.SamConfig)
        if dcfg.text_config.vocab_size < len(_TINY_VOCAB):
            raise ValueError(f"TextSegmenter.from_config: the in-memory tokenizer has "
                             f"{len(_TINY_VOCAB)} tokens; expected text_config.vocab_size >= "
                             f"{len(_TINY_VOCAB)}, got {dcfg.text_config.vocab_size}")
        with seeded(seed):
            det = tf.GroundingDinoForObjectDetection(dcfg).eval()
            sam = tf.SamModel(scfg).eval()
        # transformers 5 names the torchvision-free processors "...Pil"; 4.x has only these
        gd_proc_cls = getattr(tf, "GroundingDinoImageProcessorPil",
                              tf.GroundingDinoImageProcessor)
        sam_proc_cls = getattr(tf, "SamImageProcessorPil", tf.SamImageProcessor)
        side = int(getattr(dcfg.backbone_config, "image_size", 64))
        dproc = tf.GroundingDinoProcessor(
            image_processor=gd_proc_cls(size={"shortest_edge": side, "longest_edge": side}),
            tokenizer=_tiny_bert_tokenizer(dcfg.max_text_len))
        sside = int(scfg.vision_config.image_size)
        msize = 4 * sside // int(scfg.vision_config.patch_size)
        sproc = tf.SamProcessor(image_processor=sam_proc_cls(
            size={"longest_edge": sside}, pad_size={"height": sside, "width": sside},
            mask_size={"longest_edge": msize}, mask_pad_size={"height": msize, "width": msize}))
        return cls(det, dproc, sam, sproc, device=device, box_threshold=box_threshold,
                   text_threshold=text_threshold)

    # ---------------------------------------------------------------- inference
    def _pil(self, image: Any, where: str) -> tuple[Any, np.ndarray]:
        from PIL import Image

        arr = check_image(image, where)
        return Image.fromarray(arr, "RGB"), arr

    def _post_detections(self, outputs: Any, input_ids: Any, size: tuple[int, int]) -> Any:
        import inspect

        post = self.detector_processor.post_process_grounded_object_detection
        params = inspect.signature(post).parameters
        kw = {"text_threshold": self.text_threshold, "target_sizes": [size]}
        kw["threshold" if "threshold" in params else "box_threshold"] = self.box_threshold
        return post(outputs, input_ids, **kw)[0]

    def detect(self, image: Any, prompt: str) -> list[Detection]:
        """Boxes for a text prompt.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (or a PIL image).
            prompt: e.g. ``"hand"`` (normalised by :func:`normalize_prompt`).

        Returns:
            ``[(box (x0, y0, x1, y1) in pixels of ``image``, score, label), ...]`` sorted by
            decreasing score, only those above the thresholds (possibly empty).
        """
        pil, arr = self._pil(image, "TextSegmenter.detect")
        text = normalize_prompt(prompt)
        H, W = arr.shape[:2]
        if self.lang_sam is not None:
            gd = getattr(self.lang_sam, "gdino", None)
            if gd is not None and hasattr(gd, "predict"):
                res = gd.predict([pil], [text], self.box_threshold, self.text_threshold)[0]
            else:
                res = self.lang_sam.predict([pil], [text], box_threshold=self.box_threshold,
                                            text_threshold=self.text_threshold)[0]
            return _clip_dets(grounding_dino_detections(res), W, H)
        inputs = self.detector_processor(images=pil, text=text, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            outputs = self.detector(**inputs)
        res = self._post_detections(outputs, inputs["input_ids"], (H, W))
        dets = _clip_dets(grounding_dino_detections(res), W, H)
        log.debug("detect %r: %d boxes (best %.3f)", text, len(dets), dets[0][1] if dets else 0)
        return dets

    def _sam_mask(self, pil: Any, box: tuple[float, float, float, float]
                  ) -> tuple[np.ndarray, float]:
        inputs = self.sam_processor(images=pil, input_boxes=[[list(box)]], return_tensors="pt")
        dtype = next(self.sam.parameters()).dtype
        model_in = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                    for k, v in inputs.items()
                    if k in ("pixel_values", "input_boxes") and isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            out = self.sam(**model_in, multimask_output=False)
        masks = self.sam_processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu())
        mask = np.asarray(masks[0][0, 0].numpy(), bool)
        return mask, float(out.iou_scores.reshape(-1)[0])

    def _segment_once(self, pil: Any, arr: np.ndarray, prompt: str) -> SegmentationResult:
        H, W = arr.shape[:2]
        text = normalize_prompt(prompt)
        empty = SegmentationResult(np.zeros((H, W), bool), None, 0.0, "", 0.0, text)
        if self.lang_sam is not None:
            res = self.lang_sam.predict([pil], [text], box_threshold=self.box_threshold,
                                        text_threshold=self.text_threshold)[0]
            return _lang_sam_best(res, W, H, text) or empty
        dets = self.detect(arr, text)
        if not dets:
            return empty
        box, score, label = dets[0]
        mask, mscore = self._sam_mask(pil, box)
        return SegmentationResult(mask, box, score, label, mscore, text)

    def segment(self, image: Any, prompt: str,
                fallback_prompt: str | None = None) -> SegmentationResult:
        """The best mask for ``prompt`` (the highest-scoring box, segmented by SAM).

        When nothing is detected and ``fallback_prompt`` is given (the reference uses
        "manipulated object"), it is tried next. When still nothing is found: an empty mask,
        ``box=None``, ``score=0``.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (or PIL).
        Returns:
            :class:`SegmentationResult` with an ``(H, W)`` bool mask.
        """
        pil, arr = self._pil(image, "TextSegmenter.segment")
        res = self._segment_once(pil, arr, prompt)
        if not res.found and fallback_prompt:
            log.info("segment: nothing for %r, trying %r", prompt, fallback_prompt)
            res = self._segment_once(pil, arr, fallback_prompt)
        return res


def _clip_dets(dets: list[Detection], W: int, H: int) -> list[Detection]:
    out = []
    for (x0, y0, x1, y1), s, lab in dets:
        b = (min(max(x0, 0.0), W), min(max(y0, 0.0), H), min(max(x1, 0.0), W),
             min(max(y1, 0.0), H))
        if b[2] > b[0] and b[3] > b[1]:
            out.append((b, s, lab))
    return out


def _lang_sam_best(res: Mapping[str, Any], W: int, H: int, prompt: str
                   ) -> SegmentationResult | None:
    """The best mask of one ``LangSAM.predict`` result (boxes xyxy px, scores, labels, masks
    ``(N, H, W)`` or ``(H, W)``, mask_scores)."""
    dets = grounding_dino_detections(res)
    masks = res.get("masks")
    if not dets or masks is None or len(np.asarray(masks).reshape(-1)) == 0:
        return None
    scores = np.asarray(res["scores"], np.float64).reshape(-1)
    k = int(np.argmax(scores))
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    m = m.reshape(-1, m.shape[-2], m.shape[-1])
    if m.shape[-2:] != (H, W):
        raise ValueError(f"lang_sam returned masks of shape {m.shape[-2:]}, expected {(H, W)}")
    ms = np.asarray(res.get("mask_scores", np.zeros(len(m))), np.float64).reshape(-1)
    b = tuple(float(v) for v in np.asarray(res["boxes"], np.float64).reshape(-1, 4)[k])
    labels = _labels(res["text_labels"] if "text_labels" in res else res.get("labels"),
                     len(scores))
    return SegmentationResult(m[k] > 0.5 if m.dtype != bool else m[k].copy(), b,
                              float(scores[k]), labels[k],
                              float(ms[k]) if k < len(ms) else 0.0, prompt)
