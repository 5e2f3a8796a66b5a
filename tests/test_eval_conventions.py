"""Our metric definitions against two peers' published evaluation code, on an analytic pair:
two concentric spheres of radii 5.0 cm (truth) and 4.3 cm (prediction), every surface point
of one 0.7 cm from the other. The peers' conventions are written out naively here from
their code (docs/datasets.md, "Metric conventions"):

* EasyHOI ``src/eval_mesh.py``: 30 000 trimesh surface samples per mesh, points in cm,
  ``CD = (mean d^2 (gt->pred) + mean d^2 (pred->gt)) / 10``, F-score at 0.5 / 1.0 cm
  (strict ``<``), the prediction first aligned to the truth object by translation + scale
  only (no rotation; started by matching centroids and RMS radii), no intersection volume
  (and, in aggregation, frames whose F@5mm is 0 left out of the means).
* ForeHOI ``eval/ho3d_metrics_cm.py``: ``CD = 0.5 (mean d (pred->gt) + mean d (gt->pred))``
  (unsquared, cm), F-score at 5 % / 10 % of the truth's bounding-box diagonal, after a rigid
  alignment at the truth's scale.

Ours (hoiguide.eval): CD = sum of the two mean squared distances in cm^2, F at 5 / 10 mm,
after the hand-aligned similarity (the prediction's hand onto the true hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from hoiguide.apps.evaluate import object_aligned_metrics
from hoiguide.eval import chamfer_distance, fscore, hand_aligned_metrics, sample_surface
from hoiguide.types import Mesh

R_GT, R_PRED = 0.050, 0.043          # metres
GAP_CM = (R_GT - R_PRED) * 100       # 0.7 cm everywhere


def sphere(r: float, centre=(0.0, 0.0, 0.0)) -> Mesh:
    m = trimesh.creation.icosphere(subdivisions=4, radius=r)
    return Mesh(torch.as_tensor(m.vertices + np.asarray(centre)), torch.as_tensor(m.faces))


# ----------------------------------------------------------------- the peers, naively
def easyhoi_cd_f(pred_m: np.ndarray, gt_m: np.ndarray) -> tuple[float, float, float]:
    """EasyHOI's obj_metric after its registration, on given points (metres in)."""
    p, g = pred_m * 100.0, gt_m * 100.0
    d_gp = cKDTree(p).query(g)[0]
    d_pg = cKDTree(g).query(p)[0]
    cd = (np.mean(d_gp ** 2) + np.mean(d_pg ** 2)) / 10.0

    def f(t):
        a, b = np.mean(d_gp < t), np.mean(d_pg < t)
        return 2 * a * b / (a + b + 1e-7)
    return float(cd), float(f(0.5)), float(f(1.0))


def easyhoi_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The start of EasyHOI's translation + scale ICP (centroids and RMS radii matched);
    for concentric spheres it is already the optimum."""
    po, go = pred.mean(0), gt.mean(0)
    ps = np.sqrt(((pred - po) ** 2).sum() / len(pred))
    gs = np.sqrt(((gt - go) ** 2).sum() / len(gt))
    return (pred - po) / ps * gs + go


def forehoi_cd(pred_m: np.ndarray, gt_m: np.ndarray) -> float:
    d_pg = cKDTree(gt_m).query(pred_m)[0]
    d_gp = cKDTree(pred_m).query(gt_m)[0]
    return float(0.5 * (d_pg.mean() + d_gp.mean()) * 100.0)


# ----------------------------------------------------------------- the comparison
@pytest.fixture(scope="module")
def pair():
    gt, pred = sphere(R_GT), sphere(R_PRED)
    return {"gt": gt, "pred": pred, "G": sample_surface(gt, 30000, 0),
            "P": sample_surface(pred, 30000, 1)}


def test_chamfer_units_and_squaring(pair):
    P, G = pair["P"], pair["G"]
    ours = chamfer_distance(P, G)                       # cm^2, sum of two mean squares
    assert ours == pytest.approx(2 * GAP_CM ** 2, rel=0.03)          # 0.98 cm^2
    e_cd, _, _ = easyhoi_cd_f(P, G)
    assert ours / e_cd == pytest.approx(10.0, rel=1e-9)              # EasyHOI divides by 10
    f_cd = forehoi_cd(P, G)                               # cm, unsquared, halved
    assert f_cd == pytest.approx(GAP_CM, rel=0.03)
    assert ours == pytest.approx(2 * f_cd ** 2, rel=0.05)            # for a uniform gap


def test_fscore_thresholds(pair):
    P, G = pair["P"], pair["G"]
    _, e_f5, e_f10 = easyhoi_cd_f(P, G)
    assert fscore(P, G, 0.005) == e_f5 == 0.0               # 7 mm > 5 mm
    assert fscore(P, G, 0.010) == pytest.approx(e_f10, abs=1e-6) and e_f10 > 0.999
    # ForeHOI: thresholds relative to the truth's box diagonal (17.3 cm): 5 % = 8.7 mm
    diag = float(pair["gt"].bbox_diagonal())
    assert fscore(P, G, 0.05 * diag) > 0.999


def test_point_counts_only_change_sampling_noise(pair):
    ours_10k = chamfer_distance(pair["pred"], pair["gt"], num_samples=10000, seed=3)
    e_cd_30k, _, _ = easyhoi_cd_f(pair["P"], pair["G"])
    assert ours_10k == pytest.approx(10 * e_cd_30k, rel=0.02)


def test_alignment_is_where_the_protocols_differ(pair):
    """The same pair: EasyHOI and ForeHOI align the object to the truth (here: a perfect
    fit, CD ~ 0); the paper's protocol aligns the HAND, so a wrongly sized object keeps its
    error."""
    P, G = pair["P"], pair["G"]
    e_cd, e_f5, _ = easyhoi_cd_f(easyhoi_align(P, G), G)
    assert e_cd < 1e-3 and e_f5 > 0.999
    hand = sphere(0.01, centre=(0.2, 0.0, 0.0))           # identical hands: identity fit
    ours = hand_aligned_metrics(hand, pair["pred"], hand, pair["gt"], num_samples=20000)
    assert float(ours["alignment"].scale) == pytest.approx(1.0, abs=1e-9)
    assert ours["cd_cm2"] == pytest.approx(2 * GAP_CM ** 2, rel=0.03)
    assert ours["f5"] == 0.0
    video = object_aligned_metrics(pair["pred"], pair["gt"], num_samples=8000)
    assert float(video["alignment"].scale) == pytest.approx(R_GT / R_PRED, rel=0.01)
    assert video["cd_l1_cm"] < 0.05 and video["f5pct"] > 0.999
