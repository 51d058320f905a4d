"""The style statistic: early convolutions' per-channel mean and log spread, from one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from piston import arch
from piston.arch import Embedder
from piston.style import SPREAD_FLOOR, STYLE_CONVS, channel_stats, style_layers, tapped


def test_the_statistic_is_each_channels_mean_and_log_spread_averaged_over_views() -> None:
    maps = torch.from_numpy(np.random.default_rng(0).normal(1, 2, (6, 4, 5, 7)).astype(
        np.float32))  # 2 views of 3 images
    stats = channel_stats(maps, 3).numpy()
    x = maps.numpy().reshape(2, 3, 4, 35)
    expected = np.concatenate([x.mean(3), np.log(x.std(3) + SPREAD_FLOOR)], 2).mean(0)
    assert stats.shape == (3, 8)
    np.testing.assert_allclose(stats, expected, rtol=1e-5, atol=1e-5)


def test_a_blank_map_has_a_finite_statistic() -> None:
    stats = channel_stats(torch.zeros(2, 3, 4, 4), 2)
    assert torch.isfinite(stats).all() and stats[0, 3] == pytest.approx(np.log(SPREAD_FLOOR))


@pytest.mark.parametrize(("name", "params"), [
    ("bn_cnn", {"tta": "dihedral", "standardize": True}), ("seed_cnn", {}),
    ("ensemble", {"tta": "hflip"})])
def test_the_tap_reads_the_chosen_convolutions_of_the_pass_that_gives_the_logits(
        name: str, params: dict[str, object]) -> None:
    torch.manual_seed(0)
    module = arch.build(name, 3, 32, 32, **params).eval()
    layers = style_layers(module)
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    wanted = sorted({min(i, len(convs) - 1) for i in STYLE_CONVS})
    assert layers == [convs[i] for i in wanted] and len(layers) == min(len(convs), len(STYLE_CONVS))
    embedder = Embedder(module)
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        (logits, _), style = tapped(module, layers, lambda: embedder(x), 5)
        plain, _ = embedder(x)
    assert torch.equal(logits, plain)  # the hooks change nothing, and are gone after
    assert all(not m._forward_hooks for m in module.modules())
    seen: list[torch.Tensor] = []
    hook = module.get_submodule(layers[0]).register_forward_hook(
        lambda _m, _a, out: seen.append(out))
    with torch.inference_mode():
        embedder(x)
    hook.remove()
    width = seen[0].shape[1]
    assert style.shape[0] == 5 and torch.allclose(style[:, :2 * width],
                                                  channel_stats(seen[0], 5))
