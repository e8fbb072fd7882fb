"""NoiseShapeDropout against torch.nn.Dropout: keep rate, scaling, expectation, variance; and the mask sharing.

The statistical checks use fixed seeds and tolerances of 5 standard errors of the quantity tested (a false alarm
rate below 1e-6 per check), with sample sizes that make those tolerances tight: a wrong keep rate (p instead of
1 - p), a missing 1/(1-p) scale, or a mask drawn once per batch instead of per element all fail by tens of
standard errors.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.models.dropout import NoiseShapeDropout

N = 400_000


def _sample(module: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    module.train()
    return module(x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7])
def test_keep_rate_and_scale_match_torch_dropout(p):
    x = torch.ones(N)
    ours, theirs = _sample(NoiseShapeDropout(p), x, 0), _sample(nn.Dropout(p), x, 1)
    se = math.sqrt(p * (1 - p) / N)
    for out in (ours, theirs):
        kept = out != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 5 * se
        assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))  # kept values scaled by 1/(1-p)
    # the two keep rates agree with each other (two-proportion test)
    diff = (ours != 0).float().mean() - (theirs != 0).float().mean()
    assert abs(diff.item()) < 5 * math.sqrt(2) * se


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_expectation_and_variance_match_torch_dropout(p):
    x = torch.randn(N, generator=torch.Generator().manual_seed(3))
    # E[out] = x and Var[out | x] = x^2 p / (1 - p), for both implementations
    expected_var = (x.pow(2) * p / (1 - p)).mean().item()
    for module, seed in ((NoiseShapeDropout(p), 4), (nn.Dropout(p), 5)):
        noise = _sample(module, x, seed) - x
        se_mean = math.sqrt(expected_var / N)
        assert abs(noise.mean().item()) < 5 * se_mean
        # the standard error of a mean of noise^2 (fourth moment of a scaled Bernoulli times x^4)
        se_var = math.sqrt((x.pow(4) * p / (1 - p) ** 3).mean().item() / N)
        assert abs(noise.pow(2).mean().item() - expected_var) < 5 * se_var


def test_elementwise_masks_are_independent():
    torch.manual_seed(6)
    out = NoiseShapeDropout(0.5).train()(torch.ones(2000, 200))
    m = (out != 0).float()
    a, b = m[:, :-1].flatten(), m[:, 1:].flatten()  # neighbouring features
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(a.numel())
    rows = torch.corrcoef(torch.stack([m[:-1].flatten(), m[1:].flatten()]))[0, 1].item()  # neighbouring samples
    assert abs(rows) < 5 / math.sqrt(a.numel())


def test_noise_shape_b_l_1_drops_whole_time_steps():
    p, (b, l, d) = 0.4, (64, 50, 16)
    torch.manual_seed(7)
    out = NoiseShapeDropout(p, noise_shape=(None, None, 1)).train()(torch.ones(b, l, d))
    per_step = out[..., 0:1]
    assert torch.equal(out, per_step.expand_as(out))  # every feature of a step shares its mask
    dropped = (per_step == 0).float().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / (b * l))
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)))


def test_noise_shape_1_leading_shares_one_mask_across_the_batch():
    torch.manual_seed(8)
    x = torch.rand(32, 10, 8) + 0.5
    out = NoiseShapeDropout(0.5, noise_shape=[1, None, None]).train()(x)
    mask = out / x
    assert torch.allclose(mask, mask[0:1].expand_as(mask))
    assert 0 < (mask[0] == 0).float().mean() < 1


def test_noise_shape_with_the_input_sizes_is_elementwise():
    torch.manual_seed(9)
    full = NoiseShapeDropout(0.5, noise_shape=[64, 32]).train()(torch.ones(64, 32))
    torch.manual_seed(9)
    plain = NoiseShapeDropout(0.5).train()(torch.ones(64, 32))
    assert torch.equal(full, plain)


def test_eval_mode_and_p_zero_are_identity_p_one_zeroes():
    x = torch.randn(5, 7)
    assert torch.equal(NoiseShapeDropout(0.9).eval()(x), x)
    assert torch.equal(NoiseShapeDropout(0.0).train()(x), x)
    assert torch.equal(NoiseShapeDropout(1.0).train()(x), torch.zeros_like(x))


def test_gradient_is_the_scaled_mask():
    x = torch.ones(1000, requires_grad=True)
    torch.manual_seed(10)
    out = NoiseShapeDropout(0.25).train()(x)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # d(x * m / (1-p)) / dx = m / (1-p) = out when x = 1


def test_same_seed_same_mask():
    x = torch.ones(100)
    assert torch.equal(_sample(NoiseShapeDropout(0.5), x, 11), _sample(NoiseShapeDropout(0.5), x, 11))


@pytest.mark.parametrize("kwargs, shape, words", [
    ({"p": 1.5}, None, "must be in [0, 1]"),
    ({"p": 0.5, "noise_shape": [0, None]}, None, "None or >= 1"),
    ({"p": 0.5, "noise_shape": [None, 1]}, (4, 3, 2), "has 2 axes"),
    ({"p": 0.5, "noise_shape": [None, 2]}, (4, 3), "axis 1 must be 1, None or 3"),
])
def test_bad_arguments(kwargs, shape, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        NoiseShapeDropout(**kwargs).train()(torch.ones(shape))
