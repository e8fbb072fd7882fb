"""The patch-whitening first layer: it whitens the patches it was set from, is set once, and the trainer sets it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import cli, latest_run
from trainer.models.small_resnet import SmallResNet
from trainer.models.whitening import PatchWhitening
from test_vision_cli import TINY_FASHION, fashion_dir  # noqa: F401  (a fixture)


def correlated_images(n: int = 64, size: int = 16) -> torch.Tensor:
    """Smoothed noise: neighbouring pixels strongly correlated, as in real images."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 1, size + 4, size + 4, generator=g)
    return F.avg_pool2d(noise, 5, stride=1) * 3 + 1


def test_the_filters_whiten_the_patches_they_were_set_from():
    x = correlated_images()
    layer = PatchWhitening(1, patch=3, eps=1e-6)
    layer.init_from_data(x)
    assert layer.out_channels == 18 and bool(layer.initialised)
    out = F.conv2d(x, layer.weight[:9])  # the positive half, over the patches without padding
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(9, -1).double())
    assert torch.allclose(cov, torch.eye(9, dtype=torch.float64), atol=1e-3)
    raw = torch.cov(F.unfold(x, 3).transpose(1, 2).reshape(-1, 9).T.double())
    assert raw[0, 1] > 0.5 * raw[0, 0]  # the input was far from white
    assert torch.equal(layer.weight[9:], -layer.weight[:9])


def test_set_once_and_carried_by_the_state_dict():
    layer = PatchWhitening(1, patch=3)
    layer.init_from_data(correlated_images())
    first = layer.weight.clone()
    layer.init_from_data(torch.randn(8, 1, 16, 16))  # a second call must not move it
    assert torch.equal(layer.weight, first)
    fresh = PatchWhitening(1, patch=3)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialised) and torch.equal(fresh.weight, first)
    assert [n for n, _ in fresh.named_parameters()] == ["bias"]  # the filters are never trained


def test_a_whitened_net_needs_data_init_until_set_or_loaded():
    net = SmallResNet(whiten=3, widths=(8,), res_blocks=(0,), channels_last=False)
    assert net.needs_data_init and not SmallResNet(widths=(8,), res_blocks=(0,)).needs_data_init
    net.init_from_data(correlated_images())
    assert not net.needs_data_init
    loaded = SmallResNet(whiten=3, widths=(8,), res_blocks=(0,), channels_last=False)
    loaded.load_state_dict(net.state_dict())  # a resume or a stage's init: never set again from data
    assert not loaded.needs_data_init and torch.equal(loaded.whitening.weight, net.whitening.weight)
    assert sum(k.endswith("initialised") for k in net.state_dict()) == 1  # registered once, as features.0


def test_even_patch_takes_one_pixel_off_like_airbench():
    net = SmallResNet(whiten=2, widths=(8, 8), res_blocks=(0, 0), pool_first=True, act="gelu", channels_last=False)
    net.init_from_data(correlated_images(size=28))
    assert net.whitening.out_channels == 8
    assert net.whitening(torch.randn(2, 1, 28, 28)).shape == (2, 8, 27, 27)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_the_trainer_sets_the_whitening_from_training_data(workdir, fashion_dir):  # noqa: F811
    cli(workdir, "task=fashion_mnist", *TINY_FASHION, "model.whiten=3", "model.pool_first=true", "model.act=gelu")
    state = torch.load(latest_run(workdir, "fashion_mnist") / "checkpoints" / "best.pt", weights_only=False)["net"]
    assert bool(state["model.features.0.initialised"])
    weight = state["model.features.0.weight"]
    assert weight.shape == (18, 1, 3, 3) and weight.abs().sum() > 0


def test_tta_views_are_the_shifted_and_mirrored_images():
    net = SmallResNet(widths=(8,), res_blocks=(0,), flip_tta=True, tta_shift=1, channels_last=False)
    x = torch.randn(3, 1, 28, 28)
    views = net.tta_views(x)
    assert len(views) == 6
    assert torch.equal(views[1][..., 1:, 1:], x[..., :-1, :-1]) and torch.equal(views[2][..., :-1, :-1], x[..., 1:, 1:])
    assert torch.equal(views[3], x.flip(-1)) and torch.equal(views[4], views[1].flip(-1))
    net.eval()
    expected = torch.stack([net.logits(v) for v in views]).mean(0)
    assert torch.allclose(net(x), expected, atol=1e-6)
    net.tta_shift = 0
    assert torch.allclose(net(x), 0.5 * (net.logits(x) + net.logits(x.flip(-1))), atol=1e-6)


def _conv_bn_keys(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    bn = {f"{prefix}.1.{name}": (cout,) for name in ("weight", "bias", "running_mean", "running_var")}
    return {f"{prefix}.0.weight": (cout, cin, 3, 3), **bn, f"{prefix}.1.num_batches_tracked": ()}


def test_the_default_layout_is_unchanged_so_earlier_checkpoints_load():
    # the layout before the whitening/pool-first options (commit 8396e24): stem, conv, pool, residual, conv, pool
    net = SmallResNet(stem=4, widths=(8, 8), res_blocks=(1, 0))
    expected = {**_conv_bn_keys("features.0", 1, 4), **_conv_bn_keys("features.1", 4, 8),
                **_conv_bn_keys("features.3.body.0", 8, 8), **_conv_bn_keys("features.3.body.1", 8, 8),
                **_conv_bn_keys("features.4", 8, 8), "classifier.weight": (10, 8), "classifier.bias": (10,)}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
