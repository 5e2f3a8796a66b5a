"""Tests of hoiguide.losses: every loss against a naive reference written here, float64
gradient checks, shape errors, the registry, and the behaviour the guidance relies on
(intersection pushes meshes apart, OT pulls non-overlapping masks together)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from hoiguide.losses import (
    LOSSES,
    LossContext,
    Option,
    disparity_loss,
    edge_length_loss,
    evaluate_terms,
    intersection_loss,
    keypoints_2d_loss,
    mask_ot_loss,
    normal_loss,
    proximity_loss,
    register_loss,
    required_fields,
    silhouette_loss,
    sinkhorn_divergence_2d,
    translation_loss,
    vertex_l2_loss,
)
from hoiguide.losses.regularizers import unique_edges
from hoiguide.types import Camera, Mesh

D = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the CI machine's 2 cores are shared; small ops are faster single-threaded
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _box(half: float = 0.02, center=(0.0, 0.0, 0.3)) -> Mesh:
    tm = trimesh.creation.box(extents=[2 * half] * 3)
    tm.apply_translation(center)
    return Mesh(torch.as_tensor(tm.vertices, dtype=D), torch.as_tensor(tm.faces))


def _sphere(radius: float, center, subdivisions: int = 3) -> Mesh:
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    tm.apply_translation(center)
    return Mesh(torch.as_tensor(tm.vertices, dtype=D), torch.as_tensor(tm.faces))


def _box_sdf(p: np.ndarray, half: float, center) -> np.ndarray:
    """Exact signed distance to an axis-aligned cube (negative inside)."""
    q = np.abs(p - np.asarray(center)) - half
    outside = np.linalg.norm(np.maximum(q, 0), axis=-1)
    inside = np.minimum(q.max(-1), 0)
    return outside + inside


# --------------------------------------------------------------------------------------
# normal
# --------------------------------------------------------------------------------------


def test_normal_loss_matches_naive_loop():
    g = _gen(1)
    pred = torch.randn(5, 6, 3, generator=g, dtype=D)
    target = torch.randn(5, 6, 3, generator=g, dtype=D)
    mask = torch.rand(5, 6, generator=g, dtype=D) > 0.4
    got = normal_loss(pred, target, mask)
    total, count = 0.0, 0
    for i in range(5):
        for j in range(6):
            if mask[i, j]:
                a, b = pred[i, j].numpy(), target[i, j].numpy()
                total += 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                count += 1
    assert float(got) == pytest.approx(total / count, rel=1e-12)
    # identical normals -> 0, opposite -> 2
    assert float(normal_loss(pred, pred * 3, mask)) == pytest.approx(0, abs=1e-12)
    assert float(normal_loss(pred, -pred, mask)) == pytest.approx(2, abs=1e-12)


def test_normal_loss_gradcheck_and_edge_cases():
    g = _gen(2)
    pred = torch.randn(3, 4, 3, generator=g, dtype=D, requires_grad=True)
    target = torch.randn(3, 4, 3, generator=g, dtype=D)
    w = torch.rand(3, 4, generator=g, dtype=D)
    assert torch.autograd.gradcheck(lambda p: normal_loss(p, target, w), (pred,))
    # empty mask: zero, still differentiable (backward works, zero gradient)
    z = normal_loss(pred, target, torch.zeros(3, 4, dtype=torch.bool))
    z.backward()
    assert float(z.detach()) == 0 and torch.all(pred.grad == 0)
    # a zero (unrendered) normal gives cos = 0 and no gradient (no direction to turn)
    p0 = torch.zeros(1, 1, 3, dtype=D, requires_grad=True)
    v = normal_loss(p0, torch.tensor([[[0, 0, -1.0]]], dtype=D))
    v.backward()
    assert float(v.detach()) == 1 and torch.all(p0.grad == 0)


def test_normal_loss_shape_errors():
    with pytest.raises(ValueError, match=r"normal_loss: expected pred \(H, W, 3\), got \(4, 4\)"):
        normal_loss(torch.zeros(4, 4), torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match=r"expected target \(4, 4, 3\), got \(4, 5, 3\)"):
        normal_loss(torch.zeros(4, 4, 3), torch.zeros(4, 5, 3))
    with pytest.raises(ValueError, match=r"expected mask \(4, 4\), got \(3, 4\)"):
        normal_loss(torch.zeros(4, 4, 3), torch.zeros(4, 4, 3), torch.ones(3, 4))


# --------------------------------------------------------------------------------------
# disparity
# --------------------------------------------------------------------------------------


_DISP_METHODS = ("median", "median_mad", "minmax", "image_minmax", "none")


def _naive_disparity(pred, target, valid, method):
    p, t, v = pred.numpy(), target.numpy(), valid.numpy()

    def norm(d):
        vals = d.ravel() if method == "image_minmax" else d[v]
        if method == "median":
            srt = np.sort(vals)
            return d / srt[(len(srt) - 1) // 2]
        if method == "median_mad":
            srt = np.sort(vals)
            med = srt[(len(srt) - 1) // 2]  # torch.median: the lower middle value
            s = np.mean(np.abs(vals - med))
            return (d - med) / max(s, 1e-3 * abs(med) + 1e-12)
        if method in ("minmax", "image_minmax"):
            return (d - vals.min()) / max(vals.max() - vals.min(), 1e-3 * abs(np.median(vals)))
        return d

    return np.abs(norm(p) - norm(t))[v].mean()


@pytest.mark.parametrize("method", _DISP_METHODS)
def test_disparity_loss_matches_naive(method):
    g = _gen(3)
    pred = torch.rand(6, 7, generator=g, dtype=D) + 1
    target = torch.rand(6, 7, generator=g, dtype=D) + 2
    valid = torch.rand(6, 7, generator=g) > 0.3
    got = disparity_loss(pred, target, valid, method)
    assert float(got) == pytest.approx(_naive_disparity(pred, target, valid, method), rel=1e-10)


def test_disparity_loss_is_scale_and_shift_invariant():
    g = _gen(4)
    pred = torch.rand(6, 7, generator=g, dtype=D) + 1
    valid = torch.rand(6, 7, generator=g) > 0.3
    for method in ("median_mad", "minmax"):
        assert float(disparity_loss(pred, 3.7 * pred + 0.2, valid, method)) < 1e-12
    assert float(disparity_loss(pred, 3.7 * pred, valid, "median")) < 1e-12
    assert float(disparity_loss(pred, 3.7 * pred + 0.2, valid, "median")) > 1e-3
    # the background (0 outside the mask) does not enter the statistics...
    bg = torch.where(valid, pred, torch.zeros_like(pred))
    for method in ("median", "median_mad", "minmax"):
        assert float(disparity_loss(bg, 2 * pred, valid, method)) < 1e-12
    # ...except for the reference's image-wide min-max, where it is the minimum
    assert float(disparity_loss(bg, 2 * pred, valid, "image_minmax")) > 0.1
    assert float(disparity_loss(pred, 2 * pred, valid, "none")) > 0.5


def test_disparity_loss_gradcheck_and_errors():
    g = _gen(5)
    pred = (torch.rand(4, 5, generator=g, dtype=D) + 1).requires_grad_(True)
    target = torch.rand(4, 5, generator=g, dtype=D) + 1
    w = (torch.rand(4, 5, generator=g, dtype=D) > 0.2).to(D) * 0.5
    for method in _DISP_METHODS:
        assert torch.autograd.gradcheck(lambda p: disparity_loss(p, target, w, method), (pred,))
    # fewer than 2 pixels -> 0 in the graph
    one = torch.zeros(4, 5, dtype=torch.bool)
    one[0, 0] = True
    assert float(disparity_loss(pred, target, one).detach()) == 0
    with pytest.raises(ValueError, match=r"disparity_loss: expected pred \(H, W\), got \(4, 5, 1\)"):
        disparity_loss(torch.zeros(4, 5, 1), target)
    with pytest.raises(ValueError, match="normalization"):
        disparity_loss(pred, target, w, "mad")


# --------------------------------------------------------------------------------------
# silhouette
# --------------------------------------------------------------------------------------


def test_silhouette_loss_matches_naive_and_gradcheck():
    g = _gen(6)
    pred = (torch.rand(5, 5, generator=g, dtype=D) * 0.9 + 0.05).requires_grad_(True)
    target = (torch.rand(5, 5, generator=g) > 0.5).to(D)
    weight = torch.rand(5, 5, generator=g, dtype=D)
    got = silhouette_loss(pred, target, weight)
    num = den = 0.0
    for i in range(5):
        for j in range(5):
            p, y, w = float(pred[i, j].detach()), float(target[i, j]), float(weight[i, j])
            num += w * -(y * math.log(p) + (1 - y) * math.log(1 - p))
            den += w
    assert float(got.detach()) == pytest.approx(num / den, rel=1e-12)
    assert torch.autograd.gradcheck(lambda p: silhouette_loss(p, target, weight), (pred,))


def test_silhouette_loss_ignores_zero_weight_and_checks_inputs():
    pred = torch.full((4, 4), 0.9, dtype=D)
    target = torch.ones(4, 4, dtype=D)
    w = torch.ones(4, 4, dtype=D)
    bad = pred.clone()
    bad[0] = 0.01  # a wrong row...
    w0 = w.clone()
    w0[0] = 0      # ...that is ignored
    assert float(silhouette_loss(bad, target, w0)) == pytest.approx(
        float(silhouette_loss(pred, target, w)))
    with pytest.raises(ValueError, match=r"expected target in \[0, 1\]"):
        silhouette_loss(pred, target * 2)
    with pytest.raises(ValueError, match=r"silhouette_loss: expected target \(4, 4\), got \(4,\)"):
        silhouette_loss(pred, torch.ones(4))


# --------------------------------------------------------------------------------------
# 2D keypoints
# --------------------------------------------------------------------------------------


def test_keypoints_2d_loss_matches_naive_and_gradcheck():
    cam = Camera(500.0, 480.0, 128.0, 120.0, 256, 240)
    g = _gen(7)
    pts = (torch.rand(21, 3, generator=g, dtype=D) - 0.5) * 0.1 + torch.tensor([0, 0, 0.5], dtype=D)
    kp = torch.rand(21, 2, generator=g, dtype=D) * 200
    conf = torch.rand(21, generator=g, dtype=D)
    got = keypoints_2d_loss(pts, kp, cam, conf)
    num = den = 0.0
    for k in range(21):
        x, y, z = pts[k].tolist()
        u, v = cam.fx * x / z + cam.cx, cam.fy * y / z + cam.cy
        num += float(conf[k]) * ((u - float(kp[k, 0])) ** 2 + (v - float(kp[k, 1])) ** 2)
        den += float(conf[k])
    assert float(got) == pytest.approx(num / (2 * den), rel=1e-12)
    # no confidence: torch's mse_loss convention
    uv = cam.project(pts)
    assert float(keypoints_2d_loss(pts, kp, cam)) == pytest.approx(
        float(torch.nn.functional.mse_loss(uv, kp)), rel=1e-12)
    p = pts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: keypoints_2d_loss(x, kp, cam, conf), (p,))


def test_keypoints_2d_loss_errors():
    cam = Camera.from_fov(60, 64, 64)
    with pytest.raises(ValueError, match=r"expected keypoints_2d \(21, 2\), got \(20, 2\)"):
        keypoints_2d_loss(torch.ones(21, 3), torch.ones(20, 2), cam)
    with pytest.raises(ValueError, match=r"expected points_3d \(K, 3\), got \(21, 2\)"):
        keypoints_2d_loss(torch.ones(21, 2), torch.ones(21, 2), cam)
    with pytest.raises(ValueError, match=r"expected confidence \(21,\)"):
        keypoints_2d_loss(torch.ones(21, 3), torch.ones(21, 2), cam, torch.ones(21, 1))
    behind = torch.ones(21, 3)
    behind[0, 2] = -1  # behind the camera: NaN on purpose, the engine reports it by name
    assert torch.isnan(keypoints_2d_loss(behind, torch.ones(21, 2), cam))


# --------------------------------------------------------------------------------------
# optimal-transport mask loss
# --------------------------------------------------------------------------------------


def _naive_sinkhorn_divergence(a: np.ndarray, b: np.ndarray, blur: float) -> float:
    """Dense-cost log-domain Sinkhorn, many plain iterations, debiased."""
    from scipy.special import logsumexp

    h, w = a.shape
    side = max(h, w)
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / side, (np.arange(w) + 0.5) / side,
                         indexing="ij")
    pts = np.stack([ys.ravel(), xs.ravel()], 1)
    C = ((pts[:, None] - pts[None]) ** 2).sum(-1) / 2
    eps = blur ** 2

    def ot(p, q):
        f, g = np.zeros(len(p)), np.zeros(len(q))
        for _ in range(800):
            f = -eps * logsumexp(np.log(q)[None] + (g[None] - C) / eps, axis=1)
            g = -eps * logsumexp(np.log(p)[:, None] + (f[:, None] - C) / eps, axis=0)
        return f @ p + g @ q

    p, q = a.ravel() / a.sum(), b.ravel() / b.sum()
    return ot(p, q) - ot(p, p) / 2 - ot(q, q) / 2


def test_sinkhorn_divergence_matches_dense_reference():
    g = _gen(8)
    a = torch.rand(4, 5, generator=g, dtype=D) + 0.05
    b = torch.rand(4, 5, generator=g, dtype=D) + 0.05
    got = sinkhorn_divergence_2d(a, b, blur=0.2, iterations=300)
    assert float(got) == pytest.approx(_naive_sinkhorn_divergence(a.numpy(), b.numpy(), 0.2),
                                       rel=1e-8)
    assert float(sinkhorn_divergence_2d(a, a, blur=0.2)) == pytest.approx(0, abs=1e-12)


def test_sinkhorn_divergence_gradcheck():
    # the gradient is the converged dual potential (envelope theorem); converged tightly, it
    # matches finite differences of the full solve
    g = _gen(9)
    a = (torch.rand(3, 4, generator=g, dtype=D) + 0.1).requires_grad_(True)
    b = torch.rand(3, 4, generator=g, dtype=D) + 0.1
    assert torch.autograd.gradcheck(
        lambda x: sinkhorn_divergence_2d(x, b, blur=0.3, iterations=150), (a,),
        eps=1e-6, atol=1e-7)


def test_mask_ot_separated_squares_value_and_pull():
    # two unit-mass squares 30 px apart along both axes on a 64 px image: the divergence
    # tends to the transport cost |shift|^2 / 2 (in units of the image side) for small blur
    H = 64
    t = torch.zeros(H, H, dtype=D)
    t[40:50, 40:50] = 1
    p = torch.zeros(H, H, dtype=D)
    p[10:20, 10:20] = 1
    p.requires_grad_(True)
    loss = mask_ot_loss(p, t, size=64, blur=0.02)
    assert float(loss.detach()) == pytest.approx(0.5 * 2 * (30 / 64) ** 2, rel=1e-3)
    loss.backward()
    # no overlap, yet the gradient favours pixels towards the target: the descent direction
    # (-grad) is larger on the square's lower-right edge than on its upper-left edge
    gr = -p.grad
    assert float(gr[19, 10:20].mean()) > float(gr[10, 10:20].mean())
    assert float(gr[10:20, 19].mean()) > float(gr[10:20, 10].mean())
    # and it is zero-overlap, so BCE/IoU would give nothing comparable: moving the square
    # one pixel towards the target lowers the loss
    p2 = torch.zeros(H, H, dtype=D)
    p2[11:21, 11:21] = 1
    assert float(mask_ot_loss(p2, t, size=64, blur=0.02)) < float(loss.detach())


def test_mask_ot_gradient_moves_a_blob_to_the_target():
    # gradient descent on the centre of a soft disc, driven only by mask_ot, reaches the
    # target disc that it does not overlap at the start
    H = 48
    yy, xx = torch.meshgrid(torch.arange(H, dtype=D) + 0.5, torch.arange(H, dtype=D) + 0.5,
                            indexing="ij")

    def disc(cx, cy):
        return torch.sigmoid((6 - torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)) / 1.0)

    target = disc(torch.tensor(34.0, dtype=D), torch.tensor(30.0, dtype=D)).detach()
    # S ~ |shift|^2 / (2 H^2), so its gradient is shift / H^2: a step of H^2 / 2 halves the
    # distance each iteration
    c = torch.tensor([12.0, 14.0], dtype=D, requires_grad=True)
    opt = torch.optim.SGD([c], lr=0.5 * H * H)
    for _ in range(12):
        opt.zero_grad()
        mask_ot_loss(disc(c[0], c[1]), target, size=48, blur=0.05).backward()
        opt.step()
    assert torch.linalg.norm(c.detach() - torch.tensor([34.0, 30.0], dtype=D)) < 0.5


def test_mask_ot_errors_and_empty_prediction():
    with pytest.raises(ValueError, match="target mask is empty"):
        mask_ot_loss(torch.ones(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"mask_ot_loss: expected target \(8, 8\), got \(8, 9\)"):
        mask_ot_loss(torch.ones(8, 8), torch.zeros(8, 9))
    p = torch.zeros(8, 8, requires_grad=True)
    v = mask_ot_loss(p, torch.ones(8, 8))
    v.backward()
    assert float(v.detach()) == 0


# --------------------------------------------------------------------------------------
# regularisers
# --------------------------------------------------------------------------------------


def test_regularisers_match_naive_and_gradcheck():
    t = torch.tensor([0.1, -0.2, 0.3], dtype=D, requires_grad=True)
    assert float(translation_loss(t).detach()) == pytest.approx(0.14)
    assert torch.autograd.gradcheck(translation_loss, (t,))
    box = _box(0.5, (0, 0, 0))   # unit cube: 12 edges of 1, 6 face diagonals of sqrt(2)
    assert float(edge_length_loss(box)) == pytest.approx((12 * 1 + 6 * 2) / 18)
    v = box.vertices.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: edge_length_loss(box.with_vertices(x)), (v,))
    sph = _sphere(1.0, (0, 0, 0), subdivisions=2)
    naive = {tuple(sorted((int(f[i]), int(f[(i + 1) % 3])))) for f in sph.faces for i in range(3)}
    assert {tuple(e) for e in unique_edges(sph.faces).tolist()} == naive
    vv = torch.randn(7, 3, generator=_gen(10), dtype=D, requires_grad=True)
    naive = np.mean([np.sum(r ** 2) for r in vv.detach().numpy()])
    assert float(vertex_l2_loss(vv.detach())) == pytest.approx(naive)
    centred = vv.detach().numpy() - vv.detach().numpy().mean(0)
    assert float(vertex_l2_loss(vv.detach(), center=True)) == pytest.approx(np.mean((centred ** 2).sum(1)))
    assert torch.autograd.gradcheck(lambda x: vertex_l2_loss(x, True), (vv,))
    with pytest.raises(ValueError, match=r"translation_loss: expected translation \(3,\), got \(1, 3\)"):
        translation_loss(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="needs a non-empty mesh"):
        edge_length_loss(Mesh.empty())
    with pytest.raises(ValueError, match=r"vertex_l2_loss: expected vertices \(V, 3\)"):
        vertex_l2_loss(torch.zeros(4, 2))


# --------------------------------------------------------------------------------------
# contact: proximity and intersection
# --------------------------------------------------------------------------------------

HALF, CENTER = 0.02, (0.0, 0.0, 0.3)


def test_proximity_matches_analytic_box_distance():
    box = _box(HALF, CENTER)
    g = _gen(11)
    pts = torch.tensor(CENTER, dtype=D) + (torch.rand(40, 3, generator=g, dtype=D) - 0.5) * 0.12
    got = proximity_loss(pts, box, margin=0.005)
    d = np.maximum(_box_sdf(pts.numpy(), HALF, CENTER), 0)
    naive = np.mean(np.maximum(d - 0.005, 0) ** 2)
    assert float(got) == pytest.approx(naive, rel=1e-9)
    # points within the margin (or inside) cost nothing
    near = torch.tensor([[0.0, 0.0, 0.3 - HALF - 0.004], [0.0, 0.0, 0.3]], dtype=D)
    assert float(proximity_loss(near, box, margin=0.005)) == 0


def test_proximity_gradcheck_points_and_vertices():
    box = _box(HALF, CENTER)
    pts = torch.tensor([[0.031, 0.007, 0.303], [-0.004, 0.045, 0.29], [0.01, -0.012, 0.36]],
                       dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: proximity_loss(p, box, 0.005), (pts,))
    v = box.vertices.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: proximity_loss(pts.detach(), box.with_vertices(x), 0.005), (v,))


def test_intersection_matches_analytic_penetration_depth():
    a = _box(HALF, CENTER)
    b = _box(0.015, (0.025, 0.004, 0.302))  # overlaps a along x
    got = intersection_loss(a, b)
    da = np.maximum(-_box_sdf(a.vertices.numpy(), 0.015, (0.025, 0.004, 0.302)), 0)
    db = np.maximum(-_box_sdf(b.vertices.numpy(), HALF, CENTER), 0)
    assert float(got) == pytest.approx(da.mean() + db.mean(), rel=1e-9)
    assert float(got) > 0
    one_way = intersection_loss(a, b, both_ways=False, power=2)
    assert float(one_way) == pytest.approx((da ** 2).mean(), rel=1e-9)
    # face centroids as extra samples
    pa = np.concatenate([a.vertices.numpy(), a.vertices[a.faces].mean(1).numpy()])
    pb = np.concatenate([b.vertices.numpy(), b.vertices[b.faces].mean(1).numpy()])
    ca = np.maximum(-_box_sdf(pa, 0.015, (0.025, 0.004, 0.302)), 0)
    cb = np.maximum(-_box_sdf(pb, HALF, CENTER), 0)
    assert float(intersection_loss(a, b, face_centroids=True)) == pytest.approx(
        ca.mean() + cb.mean(), rel=1e-9)
    # apart -> 0
    assert float(intersection_loss(a, _box(0.01, (0.1, 0, 0.3)))) == 0


def test_intersection_gradcheck():
    a = _box(HALF, CENTER)
    b = _box(0.015, (0.025, 0.004, 0.302))
    t = torch.tensor([0.001, -0.002, 0.0015], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: intersection_loss(a, b.with_vertices(b.vertices + x)), (t,))
    va = a.vertices.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: intersection_loss(a.with_vertices(x), b), (va,))


def test_minimising_intersection_alone_separates_meshes_and_volume_falls():
    from hoiguide.eval import intersection_volume

    # an open "hand-like" cylinder (no caps, like MANO's open wrist) sunk into a sphere
    hand_tm = trimesh.creation.cylinder(radius=0.012, height=0.08, sections=24)
    keep = np.abs(hand_tm.face_normals[:, 2]) < 0.5           # drop both caps
    v, f = trimesh.remesh.subdivide_to_size(hand_tm.vertices, hand_tm.faces[keep], 0.006)
    hand_tm = trimesh.Trimesh(v, f, process=False)   # dense, like a MANO hand
    hand_tm.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    hand_tm.apply_translation([0.03, 0.0, 0.4])
    hand = Mesh(torch.as_tensor(hand_tm.vertices, dtype=D), torch.as_tensor(hand_tm.faces))
    obj = _sphere(0.03, (0.0, 0.0, 0.4), subdivisions=2)
    # the cylinder is open: volume still defined through the winding number
    v0 = intersection_volume(hand, obj, voxel=0.004)
    assert v0 > 1.0   # cm^3
    t = torch.zeros(3, dtype=D, requires_grad=True)
    opt = torch.optim.Adam([t], lr=2e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = intersection_loss(hand.with_vertices(hand.vertices + t), obj)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    moved = hand.with_vertices(hand.vertices + t.detach())
    v1 = intersection_volume(moved, obj, voxel=0.004)
    assert losses[-1] < 0.2 * losses[0]
    assert float(t[0].detach()) > 0.01          # pushed out along +x, away from the sphere
    assert v1 < 0.3 * v0


def test_contact_errors():
    box = _box()
    with pytest.raises(ValueError, match=r"proximity_loss: expected points \(N, 3\)"):
        proximity_loss(torch.zeros(3, 2, dtype=D), box)
    with pytest.raises(ValueError, match="non-empty mesh"):
        proximity_loss(torch.zeros(3, 3, dtype=D), Mesh.empty(D))
    with pytest.raises(ValueError, match="margin >= 0"):
        proximity_loss(torch.zeros(3, 3, dtype=D), box, margin=-0.01)
    with pytest.raises(ValueError, match="power 1 or 2"):
        intersection_loss(box, box, power=3)


# --------------------------------------------------------------------------------------
# registry and terms
# --------------------------------------------------------------------------------------

BUILTINS = {"normal", "disparity", "silhouette", "keypoints_2d", "translation", "edge_length",
            "vertex_l2", "proximity", "intersection", "mask_ot"}


def test_registry_names_and_errors():
    assert BUILTINS <= set(LOSSES)
    with pytest.raises(KeyError, match="did you mean silhouette"):
        LOSSES["silhuette"]
    with pytest.raises(ValueError, match="already registered"):
        register_loss("normal")(lambda ctx: torch.zeros(()))
    with pytest.raises(ValueError, match="letters, digits"):
        register_loss("normal@x")


def _fake_render(H=6, W=8, seed=12):
    """A stand-in RenderOutput: hand on the left columns, object on the right."""
    g = _gen(seed)
    mesh_id = torch.full((H, W), -1, dtype=torch.long)
    mesh_id[1:5, 1:4] = 0
    mesh_id[1:5, 4:7] = 1
    mask = mesh_id >= 0
    n = torch.nn.functional.normalize(torch.randn(H, W, 3, generator=g, dtype=D), dim=-1)
    n = torch.where(mask[..., None], n, torch.zeros_like(n))
    disp = torch.where(mask, torch.rand(H, W, generator=g, dtype=D) + 2, torch.zeros(H, W, dtype=D))
    sil = torch.rand(2, H, W, generator=g, dtype=D) * 0.9 + 0.05
    amodal = torch.rand(2, H, W, generator=g, dtype=D) * 0.9 + 0.05
    return SimpleNamespace(normals=n, disparity=disp, depth=disp, mask=mask, mesh_id=mesh_id,
                           face_id=mesh_id, silhouette=sil, coverage=sil.max(0).values,
                           amodal=amodal)


def _ctx(seed=13, **kw):
    r = _fake_render()
    H, W = r.mask.shape
    g = _gen(seed)
    hand = torch.zeros(H, W, dtype=torch.bool)
    hand[0:5, 0:4] = True
    objm = torch.zeros(H, W, dtype=torch.bool)
    objm[1:6, 4:8] = True
    fields = dict(render=r, target_normals=torch.randn(H, W, 3, generator=g, dtype=D),
                  target_disparity=torch.rand(H, W, generator=g, dtype=D) + 1,
                  target_valid=torch.rand(H, W, generator=g) > 0.1, mask_hand=hand,
                  mask_object=objm, mask_union=hand | objm,
                  hand_translation=torch.tensor([0.1, 0, 0], dtype=D),
                  object_translation=torch.tensor([0, 0.2, 0], dtype=D), phase="joint", step=12)
    fields.update(kw)
    return LossContext(**fields)


def test_normal_and_disparity_terms_use_the_matching_mesh_pixels():
    ctx = _ctx()
    r = ctx.render
    for mask, hit, m in (("hand", r.mesh_id == 0, ctx.mask_hand),
                         ("object", r.mesh_id == 1, ctx.mask_object),
                         ("union", r.mask, ctx.mask_union)):
        w = (m & hit & ctx.target_valid).to(D)
        assert float(LOSSES["normal"](ctx, mask=mask)) == pytest.approx(
            float(normal_loss(r.normals, ctx.target_normals, w)))
        assert float(LOSSES["disparity"](ctx, mask=mask)) == pytest.approx(
            float(disparity_loss(r.disparity, ctx.target_disparity, w)))
    # default is the union mask
    assert float(LOSSES["normal"](ctx)) == float(LOSSES["normal"](ctx, mask="union"))
    # zero targets mean "no measurement": those pixels are left out
    tn, td = ctx.target_normals.clone(), ctx.target_disparity.clone()
    tn[2, 5] = 0
    td[2, 5] = 0
    w = (ctx.mask_union & r.mask & ctx.target_valid).to(D)
    w[2, 5] = 0
    c0 = ctx.replace(target_normals=tn, target_disparity=td)
    assert float(LOSSES["normal"](c0)) == pytest.approx(
        float(normal_loss(r.normals, tn, w)))
    assert float(LOSSES["disparity"](c0)) == pytest.approx(
        float(disparity_loss(r.disparity, td, w)))
    # a render of the object alone cannot be used with per-mesh masks
    one = SimpleNamespace(**{**vars(r), "silhouette": r.silhouette[:1]})
    with pytest.raises(ValueError, match=r"expected a render of \[hand, object\]"):
        LOSSES["normal"](ctx.replace(render=one), mask="hand")


def test_object_silhouette_does_not_punish_the_hidden_part():
    ctx = _ctx()
    r = ctx.render
    got = LOSSES["silhouette"](ctx, which="object")
    want = silhouette_loss(r.amodal[1], ctx.mask_object.to(D), 1 - ctx.mask_hand.to(D))
    assert float(got) == pytest.approx(float(want))
    # rendering the object under the hand (its hidden part) changes nothing...
    amodal = r.amodal.clone()
    amodal[1][ctx.mask_hand] = 0.99
    ctx2 = ctx.replace(render=SimpleNamespace(**{**vars(r), "amodal": amodal}))
    assert float(LOSSES["silhouette"](ctx2, which="object")) == pytest.approx(float(got))
    # ...whereas the reference's choice (ignore_hand=False) punishes it
    assert float(LOSSES["silhouette"](ctx2, which="object", ignore_hand=False)) > \
        float(LOSSES["silhouette"](ctx, which="object", ignore_hand=False))
    # hand / union variants
    assert float(LOSSES["silhouette"](ctx, which="hand")) == pytest.approx(
        float(silhouette_loss(r.silhouette[0], ctx.mask_hand.to(D))))
    assert float(LOSSES["silhouette"](ctx, which="union")) == pytest.approx(
        float(silhouette_loss(r.coverage, ctx.mask_union.to(D))))
    # amodal needs an amodal mask
    with pytest.raises(ValueError, match=r"needs ctx.mask_object_amodal, which is None \(phase 'joint', step 12\)"):
        LOSSES["silhouette"](ctx, which="object_amodal")
    full = ctx.mask_object | ctx.mask_hand
    assert float(LOSSES["silhouette"](ctx.replace(mask_object_amodal=full),
                                      which="object_amodal")) == pytest.approx(
        float(silhouette_loss(r.amodal[1], full.to(D))))


def test_terms_report_missing_fields_and_bad_options():
    ctx = _ctx(target_normals=None)
    with pytest.raises(ValueError, match=r"loss 'normal' needs ctx.target_normals, which is None \(phase 'joint', step 12\)"):
        LOSSES["normal"](ctx)
    assert LOSSES["normal"].missing(ctx) == ["target_normals"]
    with pytest.raises(ValueError, match="unknown option of loss 'proximity'.*did you mean margin"):
        LOSSES["proximity"](ctx, margn=0.01)
    with pytest.raises(ValueError, match=r"which: expected one of \['hand', 'object', 'object_amodal', 'union'\], got 'objet'; did you mean object"):
        LOSSES["silhouette"](ctx, which="objet")
    with pytest.raises(ValueError, match="margin: expected a value >= 0"):
        LOSSES["proximity"](ctx, margin=-1.0)
    with pytest.raises(ValueError, match=r"expected ctx.mask_hand of size \(6, 8\)"):
        LOSSES["silhouette"](ctx.replace(mask_hand=torch.ones(5, 5, dtype=torch.bool)),
                             which="hand")


def test_required_fields_and_evaluate_terms():
    need = required_fields([("silhouette", 1.0, {"which": "object"}), ("translation", 0.5)])
    assert {"render", "render.amodal", "mask_object", "mask_hand",
            "object_translation"} <= need
    assert "render.amodal" not in required_fields([("silhouette", 1.0, {"which": "union"})])
    ctx = _ctx()
    total, values = evaluate_terms(
        [{"label": "t_h", "loss": "translation", "weight": 2.0, "options": {"which": "hand"}},
         ("translation", 3.0), ("normal", 0.0)], ctx)
    assert set(values) == {"t_h", "translation"}   # zero weight: not evaluated
    assert float(values["t_h"]) == pytest.approx(0.01)
    assert float(total) == pytest.approx(2 * 0.01 + 3 * 0.04)


def test_register_custom_loss_and_use_it():
    name = "test_object_height"

    @register_loss(name, needs=("object_mesh",),
                   options={"target": Option(0.1, minimum=0.0, doc="metres")},
                   overwrite=True)
    def _height(ctx, target):
        """Squared error of the object's y extent."""
        v = ctx.object_mesh.vertices
        return (v[:, 1].max() - v[:, 1].min() - target) ** 2

    try:
        ctx = LossContext(object_mesh=_box(0.02))
        assert float(LOSSES[name](ctx, target=0.05)) == pytest.approx(0.01 ** 2)
        assert LOSSES[name].doc == "Squared error of the object's y extent."
        with pytest.raises(ValueError, match="needs ctx.object_mesh"):
            LOSSES[name](LossContext())
    finally:
        LOSSES._remove(name)


def test_contact_terms_and_keypoint_term():
    hand = _sphere(0.01, (0.035, 0, 0.3), subdivisions=1)
    box = _box(HALF, CENTER)
    ctx = LossContext(hand_mesh=hand, object_mesh=box)
    assert float(LOSSES["proximity"](ctx, margin=0.002)) == pytest.approx(
        float(proximity_loss(hand.vertices, box, 0.002)))
    ids = [0, 3, 5]
    assert float(LOSSES["proximity"](ctx, margin=0.0, vertex_ids=ids)) == pytest.approx(
        float(proximity_loss(hand.vertices[ids], box, 0.0)))
    with pytest.raises(ValueError, match="vertex_ids must be"):
        LOSSES["proximity"](ctx, vertex_ids=[10_000])
    assert float(LOSSES["intersection"](ctx)) == pytest.approx(
        float(intersection_loss(hand, box)))
    cam = Camera.from_fov(60, 64, 64)
    kp3 = torch.tensor([[0.0, 0.0, 0.5]] * 21, dtype=D)
    kctx = LossContext(camera=cam, hand_keypoints_3d=kp3,
                       keypoints_2d=torch.full((21, 2), 34.0, dtype=D),
                       keypoint_confidence=torch.ones(21, dtype=D))
    assert float(LOSSES["keypoints_2d"](kctx)) == pytest.approx(4.0)


def test_terms_with_the_real_renderer_give_the_right_gradients():
    """Normal/disparity of a render against itself vanish; the object silhouette and the OT
    term pull a misplaced sphere towards its mask."""
    from hoiguide.render import render

    cam = Camera.from_fov(50, 64, 64)
    hand = _sphere(0.02, (-0.05, 0.0, 0.4), subdivisions=2)
    obj = _sphere(0.03, (0.03, 0.0, 0.4), subdivisions=3)
    ref = render([hand, obj], cam, amodal=True)
    targets = dict(target_normals=ref.normals.detach(), target_disparity=ref.disparity.detach(),
                   mask_hand=ref.mesh_id == 0, mask_object=ref.mesh_id == 1,
                   mask_union=ref.mask, camera=cam)
    ctx = LossContext(render=ref, hand_mesh=hand, object_mesh=obj, **targets)
    for mask in ("hand", "object", "union"):
        assert float(LOSSES["normal"](ctx, mask=mask)) < 1e-6
        assert float(LOSSES["disparity"](ctx, mask=mask)) < 1e-6
    t = torch.tensor([0.012, 0.0, 0.0], dtype=D, requires_grad=True)  # object too far right
    moved = obj.with_vertices(obj.vertices + t)
    r = render([hand, moved], cam, amodal=True)
    c2 = LossContext(render=r, hand_mesh=hand, object_mesh=moved, **targets)
    for label, value in (("silhouette", LOSSES["silhouette"](c2, which="object")),
                         ("mask_ot", LOSSES["mask_ot"](c2, which="object"))):
        (gx,) = torch.autograd.grad(value, t, retain_graph=True)
        assert float(gx[0]) > 0, label   # descent moves the object back to the left
