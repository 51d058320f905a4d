"""Model architectures, by name, so recipes can add their own beside the seed recipe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ArchBuilder = Callable[..., nn.Module]
ARCHITECTURES: dict[str, ArchBuilder] = {}


def register(name: str) -> Callable[[ArchBuilder], ArchBuilder]:
    """Add an architecture builder `(num_classes, height, width, **params) -> nn.Module`."""

    def add(builder: ArchBuilder) -> ArchBuilder:
        ARCHITECTURES[name] = builder
        return builder

    return add


def build(name: str, num_classes: int, height: int, width: int, **params: Any) -> nn.Module:
    """Instantiate a registered architecture for `num_classes` outputs (logits)."""
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise KeyError(f"unknown architecture {name!r} (known: {known})") from None
    return builder(num_classes, height, width, **params)


@register("seed_cnn")
def seed_cnn(num_classes: int, height: int, width: int, hidden: int = 128) -> nn.Module:
    """The seed recipe: Conv2d 3x3 stride 2 (16 maps), ReLU, Dense 128 ReLU, Dense N."""
    out_h, out_w = (height - 3) // 2 + 1, (width - 3) // 2 + 1
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * out_h * out_w, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
