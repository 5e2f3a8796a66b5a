"""Flow arithmetic for both time conventions (hoiguide.guidance.flow)."""

import pytest
import torch

from hoiguide.guidance import (TimeConvention, add_noise, euler_step, predict_clean,
                               predict_clean_derivative, predict_noise, velocity_from_clean)

CONVENTIONS = ["data_at_1", "data_at_0"]


def _pair(seed=0, shape=(3, 5, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype),
            torch.randn(shape, generator=g, dtype=dtype))


def _ideal_velocity(x_data, eps, convention):
    # straight line: v = dx/dsigma, written out independently of the library
    return x_data - eps if convention == "data_at_1" else eps - x_data


def _grid(convention, n):
    s = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    return s if convention == "data_at_1" else s.flip(0)


def test_time_convention_parsing_and_ends():
    assert TimeConvention.parse("data_at_1") is TimeConvention.DATA_AT_1
    assert TimeConvention("data_at_0") == "data_at_0"
    d1, d0 = TimeConvention.DATA_AT_1, TimeConvention.DATA_AT_0
    assert (d1.data_sigma, d1.noise_sigma) == (1.0, 0.0)
    assert (d0.data_sigma, d0.noise_sigma) == (0.0, 1.0)
    with pytest.raises(ValueError, match="data_at_1"):
        TimeConvention.parse("data_at_2")


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_add_noise_endpoints_and_formula(convention):
    x0, eps = _pair()
    c = TimeConvention(convention)
    torch.testing.assert_close(add_noise(x0, eps, c.data_sigma, convention), x0)
    torch.testing.assert_close(add_noise(x0, eps, c.noise_sigma, convention), eps)
    s = 0.3
    expect = s * x0 + (1 - s) * eps if convention == "data_at_1" else (1 - s) * x0 + s * eps
    torch.testing.assert_close(add_noise(x0, eps, s, convention), expect)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("sigma", [0.0, 0.17, 0.5, 0.93])
def test_clean_and_noise_estimates_are_exact_on_the_line(convention, sigma):
    x0, eps = _pair(1)
    x = add_noise(x0, eps, sigma, convention)
    v = _ideal_velocity(x0, eps, convention)
    torch.testing.assert_close(predict_clean(x, v, sigma, convention), x0)
    torch.testing.assert_close(predict_noise(x, v, sigma, convention), eps)
    if sigma != TimeConvention(convention).data_sigma:
        torch.testing.assert_close(velocity_from_clean(x, x0, sigma, convention), v)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_velocity_is_the_sigma_derivative(convention):
    x0, eps = _pair(2)
    s, h = 0.4, 1e-6
    fd = (add_noise(x0, eps, s + h, convention) - add_noise(x0, eps, s - h, convention)) / (2 * h)
    torch.testing.assert_close(fd, _ideal_velocity(x0, eps, convention), atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("num_steps", [1, 3, 20])
def test_ideal_velocity_lands_exactly_on_data(convention, num_steps):
    x0, eps = _pair(3)
    c = TimeConvention(convention)
    sig = _grid(convention, num_steps)
    x = eps.clone()
    assert float(sig[0]) == c.noise_sigma and float(sig[-1]) == c.data_sigma
    for i in range(num_steps):
        v = velocity_from_clean(x, x0, sig[i], convention)  # the ideal field towards x0
        torch.testing.assert_close(v, _ideal_velocity(x0, eps, convention))
        x = euler_step(x, v, sig[i], sig[i + 1])
        torch.testing.assert_close(x, add_noise(x0, eps, sig[i + 1], convention))
    torch.testing.assert_close(x, x0, atol=1e-12, rtol=0)


def test_euler_step_formula_and_per_batch_sigma():
    x, v = _pair(4)
    torch.testing.assert_close(euler_step(x, v, 0.25, 0.75), x + 0.5 * v)
    s = torch.tensor([0.0, 0.5, 0.9], dtype=torch.float64)
    sn = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    out = euler_step(x, v, s, sn)
    for b in range(3):
        torch.testing.assert_close(out[b], x[b] + (sn[b] - s[b]) * v[b])
    torch.testing.assert_close(out[1], x[1])  # zero-length step leaves the sample unchanged
    pc = predict_clean(x, v, s, "data_at_1")
    for b in range(3):
        torch.testing.assert_close(pc[b], x[b] + (1 - s[b]) * v[b])


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_predict_clean_derivative_matches_autograd(convention):
    x, v = _pair(5)
    v = v.requires_grad_(True)
    sigma = 0.35
    w = torch.randn_like(x)
    (predict_clean(x, v, sigma, convention) * w).sum().backward()
    torch.testing.assert_close(v.grad, predict_clean_derivative(sigma, convention) * w)
    expect = 1 - sigma if convention == "data_at_1" else -sigma
    assert predict_clean_derivative(sigma, convention) == pytest.approx(expect)


def test_half_precision_euler_matches_hy3dgen_scheduler_arithmetic():
    # hy3dgen: prev = (sample.float() + (sigma_next - sigma) * v_half).to(v_half.dtype)
    x, v = _pair(6, dtype=torch.float32)
    vh = v.half()
    s, sn = torch.tensor(0.25), torch.tensor(0.5)
    ref = (x.to(torch.float32) + (sn - s) * vh).to(vh.dtype)
    ours = euler_step(x.to(torch.float32), vh, s, sn).to(vh.dtype)
    assert torch.equal(ref, ours)


def test_bad_inputs_raise_clear_errors():
    x, v = _pair(7)
    with pytest.raises(ValueError, match="same shape"):
        euler_step(x, v[:2], 0.1, 0.2)
    with pytest.raises(ValueError, match="one per batch"):
        predict_clean(x, v, torch.zeros(4), "data_at_1")
    with pytest.raises(ValueError, match="data end"):
        velocity_from_clean(x, v, 1.0, "data_at_1")
    with pytest.raises(ValueError, match="unknown time convention"):
        predict_clean(x, v, 0.1, "noise_at_1")
