"""hoiguide.adapters.segmentation with tiny randomly initialised GroundingDINO + SAM models of
the real transformers classes (CPU, no downloads), and the lang_sam path against a fake with
lang_sam's documented output format."""

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from hoiguide.adapters import SegmentationResult, TextSegmenter, WeightsNotFoundError  # noqa: E402
from hoiguide.adapters.segmentation import (grounding_dino_detections,  # noqa: E402
                                            normalize_prompt)


def _scene(H=80, W=96):
    """A rendered picture: a skin-coloured ellipse (hand) over a blue box (object)."""
    img = np.full((H, W, 3), 235, np.uint8)
    yy, xx = np.mgrid[:H, :W]
    img[20:70, 40:70] = (40, 90, 200)
    img[((xx - 35) / 18.0) ** 2 + ((yy - 40) / 12.0) ** 2 < 1] = (220, 170, 140)
    return img


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (the CI machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return TextSegmenter.from_config(seed=0, box_threshold=0.0, text_threshold=0.0)


def test_segment_end_to_end_contract(tiny):
    img = _scene()
    dets = tiny.detect(img, "Hand")
    assert len(dets) > 0
    scores = [d[1] for d in dets]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for (x0, y0, x1, y1), _, label in dets:
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 80 and isinstance(label, str)
    res = tiny.segment(img, "hand")
    assert isinstance(res, SegmentationResult)
    assert res.mask.shape == (80, 80 + 16) and res.mask.dtype == bool
    assert res.box == dets[0][0] and res.score == pytest.approx(dets[0][1])
    assert res.prompt == "hand." and np.isfinite(res.mask_score)


def test_mask_matches_a_hand_run_of_the_same_models(tiny):
    """Naive reference: run the detector and SAM by hand on the best box."""
    from PIL import Image

    img = _scene()
    pil = Image.fromarray(img)
    inputs = tiny.detector_processor(images=pil, text="object.", return_tensors="pt")
    with torch.no_grad():
        out = tiny.detector(**inputs)
    logits = out.logits.sigmoid()[0]                       # (queries, text tokens)
    best = int(logits.max(-1).values.argmax())
    cx, cy, w, h = out.pred_boxes[0, best].tolist()
    box = [(cx - w / 2) * 96, (cy - h / 2) * 80, (cx + w / 2) * 96, (cy + h / 2) * 80]
    box = [min(max(box[0], 0), 96), min(max(box[1], 0), 80), min(max(box[2], 0), 96),
           min(max(box[3], 0), 80)]
    res = tiny.segment(img, "object")
    np.testing.assert_allclose(res.box, box, atol=1e-3)
    sin = tiny.sam_processor(images=pil, input_boxes=[[box]], return_tensors="pt")
    with torch.no_grad():
        so = tiny.sam(pixel_values=sin["pixel_values"], input_boxes=sin["input_boxes"].float(),
                      multimask_output=False)
    m = tiny.sam_processor.image_processor.post_process_masks(
        so.pred_masks, sin["original_sizes"], sin["reshaped_input_sizes"])[0][0, 0].numpy()
    assert (m != res.mask).mean() < 0.002


def test_empty_detection_and_fallback(monkeypatch):
    seg = TextSegmenter.from_config(seed=0, box_threshold=1.01)   # nothing can pass
    calls = []
    orig = seg.detect

    def spy(image, prompt):
        calls.append(prompt)
        return orig(image, prompt)

    monkeypatch.setattr(seg, "detect", spy)
    res = seg.segment(_scene(), "bottle", fallback_prompt="manipulated object")
    assert calls == ["bottle.", "manipulated object."]
    assert res.box is None and res.score == 0.0 and res.label == "" and not res.found
    assert res.mask.shape == (80, 96) and res.mask.dtype == bool and not res.mask.any()


def test_seed_determines_weights():
    a = TextSegmenter.from_config(seed=3)
    b = TextSegmenter.from_config(seed=3)
    c = TextSegmenter.from_config(seed=4)
    pa = torch.cat([p.flatten() for p in a.sam.parameters()])
    assert torch.equal(pa, torch.cat([p.flatten() for p in b.sam.parameters()]))
    assert not torch.equal(pa, torch.cat([p.flatten() for p in c.sam.parameters()]))


def test_loads_saved_folders_offline(tiny, tmp_path):
    """The real from_pretrained code path, on local folders written by save_pretrained."""
    det_dir, sam_dir = tmp_path / "gdino", tmp_path / "sam"
    tiny.detector.save_pretrained(det_dir)
    tiny.detector_processor.save_pretrained(det_dir)
    tiny.sam.save_pretrained(sam_dir)
    tiny.sam_processor.save_pretrained(sam_dir)
    seg = TextSegmenter.from_pretrained(str(det_dir), str(sam_dir), device="cpu",
                                        local_files_only=True, backend="auto",
                                        box_threshold=0.0, text_threshold=0.0)
    assert seg.backend == "transformers"
    img = _scene()
    assert seg.detect(img, "hand")[0][0] == pytest.approx(tiny.detect(img, "hand")[0][0])


def test_missing_weights_say_where_we_looked(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no such file or folder.*hf download"):
        TextSegmenter.from_pretrained(str(tmp_path / "nowhere"), backend="transformers")
    with pytest.raises(WeightsNotFoundError, match=r"cache \(offline mode\).*hoiguide-tests/"):
        TextSegmenter.from_pretrained("hoiguide-tests/no-such-detector", local_files_only=True,
                                      backend="transformers")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"hoiguide\[segment\]"):
        TextSegmenter.from_config()


# -- lang_sam: a fake with the documented output format ----------------------------------


class _FakeGDINO:
    def __init__(self, result):
        self.result = result

    def predict(self, images_pil, texts_prompt, box_threshold, text_threshold):
        assert texts_prompt[0].endswith(".")
        return [self.result]


class _FakeLangSAM:
    """``LangSAM().predict(images, prompts)`` -> per image {boxes, scores, labels, masks
    (N, H, W), mask_scores}; nothing found -> empty masks."""

    instances = []

    def __init__(self, sam_type="sam2.1_hiera_small", device=None, **kw):
        self.sam_type, self.device = sam_type, device
        H, W = 80, 96
        masks = np.zeros((2, H, W), np.float32)
        masks[0, 10:20, 10:20] = 1
        masks[1, 30:60, 40:70] = 1
        self.found = {"boxes": np.array([[10, 10, 20, 20], [40, 30, 70, 60]], np.float32),
                      "scores": np.array([0.4, 0.8], np.float32),
                      "labels": ["bottle", "bottle"], "masks": masks,
                      "mask_scores": np.array([0.9, 0.7], np.float32)}
        self.nothing = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0),
                        "labels": [], "masks": [], "mask_scores": []}
        self.gdino = _FakeGDINO(self.found)
        _FakeLangSAM.instances.append(self)

    def predict(self, images_pil, texts_prompt, box_threshold=0.3, text_threshold=0.25):
        return [self.found if texts_prompt[0] == "bottle." else self.nothing]


def test_lang_sam_backend_is_used_when_installed(monkeypatch):
    mod = types.ModuleType("lang_sam")
    mod.__spec__ = importlib.machinery.ModuleSpec("lang_sam", None)
    mod.LangSAM = _FakeLangSAM
    monkeypatch.setitem(sys.modules, "lang_sam", mod)
    seg = TextSegmenter.from_pretrained(device="cpu")
    assert seg.backend == "lang_sam" and _FakeLangSAM.instances[-1].sam_type.startswith("sam2")
    img = _scene()
    res = seg.segment(img, "Bottle")
    assert res.box == (40.0, 30.0, 70.0, 60.0) and res.score == pytest.approx(0.8)
    assert res.mask.dtype == bool and res.mask.sum() == 30 * 30 and res.label == "bottle"
    assert res.mask_score == pytest.approx(0.7)
    dets = seg.detect(img, "bottle")
    assert [d[1] for d in dets] == pytest.approx([0.8, 0.4])
    empty = seg.segment(img, "mug")
    assert not empty.found and empty.mask.shape == (80, 96) and empty.score == 0.0
    # non-default models go through transformers even when lang_sam is installed
    with pytest.raises(WeightsNotFoundError):
        TextSegmenter.from_pretrained(detector="/no/such/folder")


def test_helpers_and_bad_input(tiny):
    assert normalize_prompt(" Red Mug ") == "red mug."
    with pytest.raises(ValueError, match="non-empty"):
        normalize_prompt("  ")
    dets = grounding_dino_detections({"boxes": torch.tensor([[0., 0, 2, 2], [1, 1, 3, 4]]),
                                      "scores": torch.tensor([0.2, 0.9]),
                                      "text_labels": ["a", "b"]})
    assert [d[2] for d in dets] == ["b", "a"]
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        tiny.segment(np.zeros((80, 96), np.uint8), "hand")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        tiny.detect(np.zeros((80, 96, 3), np.float32), "hand")
    with pytest.raises(ValueError, match="expected detector"):
        TextSegmenter(detector=tiny.detector)
