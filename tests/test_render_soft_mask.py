"""soft_mask: a hard mask's outline drawn with the renderer's soft edge (the silhouette
terms' ``target: soft``)."""

import pytest
import torch
import torch.nn.functional as F

from hoiguide.losses.image import silhouette_loss
from hoiguide.render import render, soft_mask
from hoiguide.testing import make_scene, similarity_about


@pytest.fixture(scope="module")
def scene():
    return make_scene(size=128)


@pytest.mark.parametrize("size", [128, 64])
def test_soft_mask_matches_the_rendered_soft_silhouette(scene, size):
    """On the outline band the soft target is within a few percent of what the renderer draws
    for the same shape; the area-resampled hard mask is several times further off."""
    hard = render([scene.hand_true, scene.object_true], scene.camera, amodal=True).amodal[1] > 0.5
    cam = scene.camera if size == 128 else scene.camera.resized(size, size)
    pred = render([scene.hand_true, scene.object_true], cam, amodal=True).amodal[1].double()
    soft = soft_mask(hard, (size, size), 1.0).double()
    area = F.interpolate(hard.double()[None, None], size=(size, size), mode="area")[0, 0]
    band = (pred > 0.01) & (pred < 0.99)
    err_soft = float((pred - soft).abs()[band].mean())
    err_area = float((pred - area).abs()[band].mean())
    assert err_soft < 0.07 and err_soft < 0.5 * err_area
    assert soft.shape == (size, size) and 0 <= float(soft.min()) and float(soft.max()) <= 1
    # away from the outline it is the hard mask
    far = (pred < 1e-6) | (pred > 1 - 1e-6)
    assert torch.equal(soft[far] > 0.5, pred[far] > 0.5)


def test_soft_target_is_not_biased_toward_shrinking(scene):
    """Scaling the true object about its centre: the BCE against the soft target is lowest
    within 1 % of the true size (the hard target's optimum is smaller)."""
    obs = scene.observations
    hard_t, w = obs.mask_object.double(), 1 - obs.mask_hand.double()
    soft_t = soft_mask(obs.mask_object, (128, 128), 1.0, obs.mask_hand).double()
    c = scene.object_true.vertices.mean(0)
    scales = [0.96, 0.98, 0.99, 1.0, 1.01, 1.02, 1.04]
    soft_l, hard_l = [], []
    for s in scales:
        o = scene.object_true.transformed(similarity_about(c, scale=s))
        p = render([scene.hand_true, o], scene.camera, amodal=True).amodal[1].double()
        soft_l.append(float(silhouette_loss(p, soft_t, w)))
        hard_l.append(float(silhouette_loss(p, hard_t, w)))
    best = scales[min(range(len(scales)), key=soft_l.__getitem__)]
    assert abs(best - 1.0) <= 0.011
    assert min(soft_l) < soft_l[0] and min(soft_l) < soft_l[-1]


def test_soft_mask_edge_cases():
    full = torch.ones(8, 8, dtype=torch.bool)
    assert torch.equal(soft_mask(full, (4, 4), 1.0), torch.ones(4, 4))
    assert torch.equal(soft_mask(~full, (4, 4), 1.0), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="soft_mask"):
        soft_mask(torch.ones(2, 2, 2), (2, 2), 1.0)


def test_silhouette_term_soft_target_needs_the_engines_soft_masks(scene):
    from hoiguide.guidance.targets import prepare_targets
    from hoiguide.losses import LossContext
    from hoiguide.losses.registry import LOSSES

    obs = scene.observations
    t = prepare_targets(obs, 64, torch.float64, torch.device("cpu"), edge_sigma=1.0)
    assert set(t.soft_masks) >= {"mask_hand", "mask_object", "mask_union"}
    r = render([scene.hand_true, scene.object_true], t.camera, amodal=True)
    ctx = LossContext(render=r, hand_mesh=scene.hand_true, object_mesh=scene.object_true,
                      camera=t.camera, mask_hand=t.mask_hand, mask_object=t.mask_object,
                      mask_union=t.mask_union, soft_masks=t.soft_masks)
    term = LOSSES["silhouette"]
    soft = term.fn(ctx, which="object", ignore_hand=True, target="soft")
    hard = term.fn(ctx, which="object", ignore_hand=True, target="hard")
    assert torch.isfinite(soft) and torch.isfinite(hard) and float(soft) != float(hard)
    ctx.soft_masks = None
    with pytest.raises(ValueError, match="target: soft"):
        term.fn(ctx, which="object", ignore_hand=True, target="soft")
