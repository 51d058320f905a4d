"""The style statistic: per-channel mean and log spread of early convolutional feature maps.

A defect classifier learns features that ignore the background texture, so its head features
see a different grey texture without a defect as familiar (fabric against brushed metal:
docs/evaluation.md, "Across data sets"). An early layer's maps still describe the texture
itself: the mean and spread of each channel over the image are the statistics style transfer
matches. They are taken from the same forward pass as the logits, by forward hooks on the
named `nn.Conv2d` layers, and averaged over the test-time views like the head features.
Imports torch: only the torch runtime, the exporter and training use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

SPREAD_FLOOR = 1e-3  # added to a channel's spread before the log: a blank map is finite
# Which convolutions (by position among the module's `nn.Conv2d`, in module order): the
# second and third, measured on four models (docs/evaluation.md, "The style check")
STYLE_CONVS = (1, 2)

T = TypeVar("T")


def style_layers(module: nn.Module) -> list[str]:
    """Names of the convolutions the style check reads (`STYLE_CONVS`; on a net with fewer
    convolutions its last ones, none on a net without one)."""
    convs = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    return [convs[i] for i in sorted({min(i, len(convs) - 1) for i in STYLE_CONVS})
            ] if convs else []


def channel_stats(maps: torch.Tensor, n: int) -> torch.Tensor:
    """(V*N, C, H, W) maps of N images in V views -> (N, 2C): each channel's mean and log
    spread over the image, averaged over the views."""
    mean = maps.mean((2, 3), keepdim=True)
    centred = maps - mean
    spread = torch.sqrt((centred * centred).mean((2, 3)))
    stats = torch.cat([mean.flatten(1), torch.log(spread + SPREAD_FLOOR)], 1)
    return stats.reshape(-1, n, stats.shape[1]).mean(0)


def tapped(module: nn.Module, layers: Sequence[str], call: Callable[[], T], n: int
           ) -> tuple[T, torch.Tensor]:
    """`call()` (a forward pass of N = `n` images through a net holding `module`) and the
    style statistic of its `layers` (N, S), from the same pass."""
    seen: dict[int, torch.Tensor] = {}

    def keeper(k: int) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def keep(_m: nn.Module, _args: object, out: torch.Tensor) -> None:
            seen[k] = out

        return keep

    hooks = [module.get_submodule(name).register_forward_hook(keeper(k))
             for k, name in enumerate(layers)]
    try:
        result = call()
    finally:
        for hook in hooks:
            hook.remove()
    return result, torch.cat([channel_stats(seen[k], n) for k in range(len(layers))], 1)
