"""Model architectures, by name, so recipes can add their own beside the seed recipe."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piston.errors import ConfigError

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
        raise ConfigError(f"unknown architecture {name!r} (known: {known})") from None
    tta = params.pop("tta", None)
    if tta not in TTA_FLIPS:
        known = ", ".join(map(str, TTA_FLIPS))
        raise ConfigError(f"bad tta {tta!r} for {name}: use one of {known}")
    try:
        module = builder(num_classes, height, width, **params)
    except TypeError as err:
        raise ConfigError(f"bad arch_params for {name}: {err}") from None
    return FlipAverage(module, TTA_FLIPS[tta]) if tta else module


TTA_FLIPS: dict[str | None, list[tuple[int, ...]]] = {
    None: [],
    "hflip": [(-1,)],  # left-right: a turning part seen from the side
    "flips": [(-1,), (-2,), (-2, -1)],  # every flip: parts seen from above
}


class FlipAverage(nn.Module):
    """Test-time augmentation inside the model: in eval mode, average the logits of the image
    and its flips. Inside the model so that serving and batch scoring get it for free."""

    def __init__(self, net: nn.Module, flips: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.net = net
        self.flips = flips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.net(x)
        views = torch.cat([x, *(x.flip(dims) for dims in self.flips)])
        return self.net(views).view(len(self.flips) + 1, len(x), -1).mean(0)


def load_pretrained(module: nn.Module, path: str | Path) -> int:
    """Copy the tensors of a local state_dict whose names and shapes match (the classifier head,
    sized for another class count, is left fresh). Returns how many tensors were loaded."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ConfigError(f"cannot read pretrained weights {path}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = module.state_dict()
    prefix = "net." if isinstance(module, FlipAverage) else ""
    matched = {
        prefix + k: v for k, v in state.items()
        if prefix + k in own and own[prefix + k].shape == getattr(v, "shape", None)
    }
    if not matched:
        raise ConfigError(f"pretrained weights {path} share no tensor with this architecture")
    module.load_state_dict(matched, strict=False)
    return len(matched)


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


@register("bn_cnn")
def bn_cnn(
    num_classes: int, height: int, width: int, widths: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.2, stem_pool: bool = False,
) -> nn.Module:
    """A small CNN with batch norm and global average pooling: a stride-2 stem, then one
    conv-BN-ReLU + max-pool stage per width. Pooling makes it indifferent to the input size,
    and it has ~100k parameters against the seed recipe's 3M."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    if stem_pool:  # a quarter of the compute: the later stages run at half the resolution
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    for before, after in itertools.pairwise(widths):
        layers += [
            nn.Conv2d(before, after, 3, padding=1, bias=False),
            nn.BatchNorm2d(after),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
               nn.Linear(widths[-1], num_classes)]
    return nn.Sequential(*layers)


@register("resnet18")
def resnet18(num_classes: int, height: int, width: int) -> nn.Module:
    """torchvision's ResNet-18, from scratch (pretrained weights come from a local file)."""
    from torchvision.models import resnet18 as build_resnet18

    return build_resnet18(weights=None, num_classes=num_classes)


@register("mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int, height: int, width: int) -> nn.Module:
    """torchvision's MobileNetV3-small, from scratch (pretrained weights from a local file)."""
    from torchvision.models import mobilenet_v3_small as build_mobilenet

    return build_mobilenet(weights=None, num_classes=num_classes)
