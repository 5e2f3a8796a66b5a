"""The flow-update rules against their formulas, without running a sampler."""

import pytest
import torch

from hoiguide.guidance import EulerUpdate, RenoiseUpdate, flow_update
from hoiguide.guidance.flow import TimeConvention

G = torch.Generator().manual_seed(0)
X = torch.randn(2, 5, 3, generator=G, dtype=torch.float64)
V = torch.randn(2, 5, 3, generator=G, dtype=torch.float64)
X0 = torch.randn(2, 5, 3, generator=G, dtype=torch.float64)
V0 = torch.randn(2, 5, 3, generator=G, dtype=torch.float64)


@pytest.mark.parametrize("conv", ["data_at_1", "data_at_0"])
def test_euler_is_x_plus_dt_v(conv):
    up = flow_update("euler", conv)
    assert isinstance(up, EulerUpdate)
    torch.testing.assert_close(up.step(X, V, 0.3, 0.45), X + 0.15 * V, rtol=0, atol=1e-15)
    assert not up.moves(0.7, 0.7) and up.moves(0.3, 0.45)


def test_renoise_keeps_the_optimised_clean_estimate_data_at_1():
    up = flow_update("renoise", TimeConvention.DATA_AT_1)
    assert isinstance(up, RenoiseUpdate)
    s, s2 = 0.3, 0.45
    clean = X + (1 - s) * V                 # optimised clean estimate
    eps = X0 - s * V0                       # the model's own noise estimate
    expect = s2 * clean + (1 - s2) * eps
    torch.testing.assert_close(up.step(X, V, s, s2, x_model=X0, v_model=V0), expect,
                               rtol=0, atol=1e-14)
    assert up.moves(0.5, 0.5)               # a zero-length step still swaps the noise


def test_renoise_data_at_0_formula():
    up = flow_update("renoise", "data_at_0")
    s, s2 = 0.8, 0.6
    clean = X - s * V
    eps = X0 + (1 - s) * V0
    torch.testing.assert_close(up.step(X, V, s, s2, x_model=X0, v_model=V0),
                               (1 - s2) * clean + s2 * eps, rtol=0, atol=1e-14)


def test_renoise_of_the_unoptimised_model_is_euler_on_a_straight_line():
    """Without optimisation (x_model = x, v_model = v) and an exact straight-line velocity,
    re-noising lands where the Euler step does."""
    s, s2 = 0.25, 0.5
    data, noise = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    x = s * data + (1 - s) * noise
    v = data - noise
    e = flow_update("euler", "data_at_1").step(x, v, s, s2)
    r = flow_update("renoise", "data_at_1").step(x, v, s, s2)
    torch.testing.assert_close(e, r, rtol=0, atol=1e-14)


@pytest.mark.parametrize("conv", ["data_at_1", "data_at_0"])
def test_back_keeps_the_data_weight_and_the_noise_level(conv):
    """Going back from s_next to s: E[x] = (a(s)/a(s_next)) x_next, std as the formula says."""
    up = flow_update("euler", conv)
    s, s2 = (0.4, 0.6) if conv == "data_at_1" else (0.6, 0.4)
    a = (lambda t: t) if conv == "data_at_1" else (lambda t: 1 - t)
    b = (lambda t: 1 - t) if conv == "data_at_1" else (lambda t: t)
    x_next = torch.full((200_000,), 0.7, dtype=torch.float64)
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    back = up.back(x_next, s2, s, noise)
    k = a(s) / a(s2)
    std = (b(s) ** 2 - (k * b(s2)) ** 2) ** 0.5
    torch.testing.assert_close(back, k * x_next + std * noise, rtol=0, atol=1e-14)
    assert abs(float(back.mean()) - k * 0.7) < 5 * std / 200_000 ** 0.5


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="euler, renoise"):
        flow_update("heun", "data_at_1")
