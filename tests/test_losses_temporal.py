"""The temporal terms of clip guidance: float64 gradient checks, what descent on each does
(a jittery trajectory gets smoother; a hand drifting off the object returns), and input
validation."""

from __future__ import annotations

import math

import pytest
import torch

from hoiguide.losses import contact_consistency, trajectory_smoothness


def _arc(T: int = 12, N: int = 5) -> torch.Tensor:
    """``(T, N, 3)`` points turning on a 5 cm arc (smooth, constant angular speed)."""
    g = torch.Generator().manual_seed(0)
    offsets = 0.01 * torch.randn(N, 3, generator=g, dtype=torch.float64)
    ang = torch.linspace(0, math.pi / 2, T, dtype=torch.float64)
    centre = torch.stack([0.05 * torch.cos(ang), 0.05 * torch.sin(ang),
                          0.3 + 0 * ang], -1)
    return centre[:, None, :] + offsets[None]


def test_smoothness_is_the_second_difference():
    p = _arc(6, 3)
    acc = p[2:] - 2 * p[1:-1] + p[:-2]
    assert torch.allclose(trajectory_smoothness(p), acc.pow(2).sum(-1).mean())
    # evenly spaced times (any unit): the same value
    t = torch.arange(6, dtype=torch.float64) / 30
    assert torch.allclose(trajectory_smoothness(p, times=t), trajectory_smoothness(p))
    # a straight line at constant speed has no acceleration
    line = torch.linspace(0, 1, 7, dtype=torch.float64)[:, None, None] * torch.ones(1, 2, 3)
    assert float(trajectory_smoothness(line)) < 1e-28
    # and with uneven times, points moving at constant velocity have none either
    tt = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.6], dtype=torch.float64)
    assert float(trajectory_smoothness(tt[:, None, None] * torch.ones(1, 2, 3),
                                       times=tt)) < 1e-28
    assert float(trajectory_smoothness(tt[:, None, None] * torch.ones(1, 2, 3))) > 1e-4


def test_smoothness_counts_only_triples_of_valid_frames():
    p = _arc(6, 3)
    bad = p.clone()
    bad[3] += 1.0                      # a wild frame ...
    valid = torch.tensor([True, True, True, False, True, True])
    # ... that is invalid: only the triple (0, 1, 2) counts (frames 4, 5 have no triple)
    acc = p[2] - 2 * p[1] + p[0]
    assert torch.allclose(trajectory_smoothness(bad, valid), acc.pow(2).sum(-1).mean())
    none = torch.tensor([True, False, True, False, True, False])
    out = trajectory_smoothness(bad.requires_grad_(), none)
    assert float(out) == 0.0 and not out.requires_grad
    assert float(trajectory_smoothness(p[:2])) == 0.0


def test_smoothness_gradcheck_float64():
    p = (_arc(6, 2) + 1e-3 * torch.randn(6, 2, 3, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(1)))
    p.requires_grad_(True)
    valid = torch.tensor([True, True, True, True, False, True])
    times = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.25, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: trajectory_smoothness(x, valid, times), (p,))
    assert torch.autograd.gradcheck(lambda x: trajectory_smoothness(x), (p,))


def test_descent_smooths_a_jittery_trajectory():
    """Observed points = the smooth arc + 2 mm jitter; minimising
    |p - observed|^2 + 10 * smoothness by gradient descent brings the points at least 2x
    closer to the smooth truth and cuts the mean squared acceleration at least 20x."""
    truth = _arc(16, 4)
    g = torch.Generator().manual_seed(3)
    observed = truth + 0.002 * torch.randn(truth.shape, generator=g, dtype=torch.float64)
    p = observed.clone().requires_grad_(True)
    opt = torch.optim.SGD([p], lr=0.02)
    for _ in range(400):
        opt.zero_grad()
        loss = (p - observed).pow(2).sum(-1).mean() + 10.0 * trajectory_smoothness(p)
        loss.backward()
        opt.step()
    err0 = float((observed - truth).norm(dim=-1).mean())
    err1 = float((p.detach() - truth).norm(dim=-1).mean())
    acc0, acc1 = float(trajectory_smoothness(observed)), float(trajectory_smoothness(p.detach()))
    assert err1 * 2 <= err0, (err0, err1)
    assert acc1 * 20 <= acc0, (acc0, acc1)


def _grasp(T: int = 5, Nh: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand vertices in the object frame: the same grasp in every frame; half the vertices
    are in contact."""
    g = torch.Generator().manual_seed(2)
    v = 0.03 * torch.randn(Nh, 3, generator=g, dtype=torch.float64)
    contact = torch.arange(Nh) % 2 == 0
    return v[None].repeat(T, 1, 1), contact


def test_contact_consistency_values():
    h, contact = _grasp()
    assert float(contact_consistency(h, contact)) < 1e-30
    moved = h.clone()
    moved[2, contact] += torch.tensor([0.004, 0.0, 0.0], dtype=torch.float64)
    # mean anchor: frame 2 is 4 mm * 4/5 from the mean, the others 4 mm / 5
    expect = ((0.0032 ** 2) + 4 * (0.0008 ** 2)) / 5
    assert math.isclose(float(contact_consistency(moved, contact)), expect, rel_tol=1e-9)
    # reference anchor: only the moved frame deviates (4 frames count besides the reference)
    assert math.isclose(float(contact_consistency(moved, contact, reference=0)),
                        0.004 ** 2 / 4, rel_tol=1e-9)
    # vertices not in contact, or not visible where they moved, do not count
    free = h.clone()
    free[2, ~contact] += 0.01
    assert float(contact_consistency(free, contact)) < 1e-30
    visible = torch.ones(h.shape[:2], dtype=torch.bool)
    visible[2] = False
    assert float(contact_consistency(moved, contact, visible)) < 1e-30
    # per-frame contact sets: the grasp released in frame 2 -> no deviation
    per_frame = contact[None].repeat(5, 1)
    per_frame[2] = False
    assert float(contact_consistency(moved, per_frame)) < 1e-30


def test_contact_consistency_gradcheck_float64():
    h, contact = _grasp(4, 12)
    h = (h + 1e-3 * torch.randn(h.shape, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(5))).requires_grad_()
    visible = torch.rand(4, 12, generator=torch.Generator().manual_seed(6)) > 0.3
    assert torch.autograd.gradcheck(lambda x: contact_consistency(x, contact, visible), (h,))
    # with a reference frame, that frame is the fixed anchor: a function of the others
    ref = h[1:2].detach()
    assert torch.autograd.gradcheck(
        lambda x: contact_consistency(torch.cat([x[:1], ref, x[1:]]), contact, visible, 1),
        (torch.cat([h[:1], h[2:]]).detach().requires_grad_(),))


def test_a_hand_drifting_off_the_object_returns():
    """Frames 3 and 4 of the grasp slide 5 and 10 mm off the object (in its frame);
    descent on contact_consistency over per-frame hand translations brings them back:
    to within 0.1 mm of the grasp with the reference anchor, and with the default mean
    anchor the frames agree again to 0.1 mm (all meet at the mean position)."""
    h, contact = _grasp()
    drift = torch.zeros(5, 1, 3, dtype=torch.float64)
    drift[3, 0, 2], drift[4, 0, 2] = 0.005, 0.010
    for reference in (0, None):
        shift = drift.clone().requires_grad_(True)
        opt = torch.optim.SGD([shift], lr=1.0)
        for _ in range(100):
            opt.zero_grad()
            contact_consistency(h + shift, contact, reference=reference).backward()
            opt.step()
        final = (h + shift.detach())[:, contact]
        if reference == 0:
            assert float((final - h[:, contact]).norm(dim=-1).max()) < 1e-4
        else:
            spread = (final - final.mean(0, keepdim=True)).norm(dim=-1).max()
            assert float(spread) < 1e-4
            start = (h + drift)[:, contact]
            assert float((start - start.mean(0, keepdim=True)).norm(dim=-1).max()) > 5e-3


@pytest.mark.parametrize("call, match", [
    (lambda: trajectory_smoothness(torch.zeros(4, 3)), "points"),
    (lambda: trajectory_smoothness(torch.zeros(4, 2, 3), torch.ones(3, dtype=torch.bool)),
     "valid"),
    (lambda: trajectory_smoothness(torch.zeros(4, 2, 3), times=torch.zeros(4)), "times"),
    (lambda: contact_consistency(torch.zeros(3, 5, 3), torch.ones(4, dtype=torch.bool)),
     "contact"),
    (lambda: contact_consistency(torch.zeros(3, 5, 3), torch.ones(5, dtype=torch.bool),
                                 torch.ones(3, 4, dtype=torch.bool)), "visible"),
    (lambda: contact_consistency(torch.zeros(3, 5, 3), torch.ones(5, dtype=torch.bool),
                                 reference=3), "reference"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
