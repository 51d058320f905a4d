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
    return with_views(module, tta)


def with_views(module: nn.Module, tta: str | None) -> nn.Module:
    """The module with its test-time views (`tta`: one of `TTA_FLIPS`), or as it is."""
    return FlipAverage(module, TTA_FLIPS[tta], tta == "dihedral") if tta else module


TTA_FLIPS: dict[str | None, list[tuple[int, ...]]] = {
    None: [],
    "hflip": [(-1,)],  # left-right: a turning part seen from the side
    "flips": [(-1,), (-2,), (-2, -1)],  # every flip: parts seen from above
    "dihedral": [(-1,), (-2,), (-2, -1)],  # every flip and, on square inputs, the transposes
}


class FlipAverage(nn.Module):
    """Test-time augmentation inside the model: in eval mode, average the logits of the image
    and its flips (and transposes). Inside the model so that serving and batch scoring get it
    for free."""

    def __init__(
        self, net: nn.Module, flips: list[tuple[int, ...]], transpose: bool = False
    ) -> None:
        super().__init__()
        self.net = net
        self.flips = flips
        self.transpose = transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.net(x)
        views = [x, *(x.flip(dims) for dims in self.flips)]
        if self.transpose and x.shape[-1] == x.shape[-2]:
            views += [v.transpose(-1, -2) for v in views]
        return self.net(torch.cat(views)).view(len(views), x.shape[0], -1).mean(0)


class Embedder(nn.Module):
    """(logits, features) of a classifier: the features are the input of its last linear
    layer, averaged over the test-time views like the logits (the head is linear, so the
    logits of the averaged features are the averaged logits). Any architecture whose output
    comes from a final `nn.Linear` works, wrapped in `FlipAverage` or not."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        heads = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise ConfigError("the architecture has no final linear layer to take features from")
        self.head = heads[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            logits = self.module(x)
        finally:
            hook.remove()
        features = seen[-1].flatten(1)
        return logits, features.reshape(-1, x.shape[0], features.shape[1]).mean(0)


def load_pretrained(module: nn.Module, path: str | Path) -> int:
    """Copy the tensors of a local state_dict whose names and shapes match (the classifier head,
    sized for another class count, is left fresh). Returns how many tensors were loaded."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except OSError as err:
        raise ConfigError(f"cannot read pretrained weights {path}: {err.strerror}") from None
    except Exception:  # pickle's and torch's messages quote the file's bytes: never echoed
        raise ConfigError(f"pretrained weights {path} are not a torch state_dict file") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return copy_matching(module, state, str(path))


def copy_matching(module: nn.Module, state: dict[str, Any], source: str) -> int:
    """Copy the tensors whose names (under any wrapper) and shapes match; return the count."""
    own = module.state_dict()
    prefixes = ("", "net.", "net.net.")
    matched = {}
    for key, value in state.items():
        for prefix in prefixes:
            if prefix + key in own and own[prefix + key].shape == getattr(value, "shape", None):
                matched[prefix + key] = value
                break
    if not matched:
        raise ConfigError(f"pretrained weights {source} share no tensor with this architecture")
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
    dropout: float = 0.2, stem_pool: bool = False, pool: str = "avg", depth: int = 1,
    standardize: bool = False, work_side: int | None = None,
) -> nn.Module:
    """A small CNN with batch norm and global average pooling: a stride-2 stem, then one
    conv-BN-ReLU + max-pool stage per width. Pooling makes it indifferent to the input size,
    and it has ~100k parameters against the seed recipe's 3M. `work_side` shrinks larger
    inputs inside the model (see `Shrink`)."""
    if work_side is not None and not (isinstance(work_side, int) and work_side >= 16):
        raise TypeError(f"work_side must be a whole number of pixels >= 16, not {work_side!r}")
    layers: list[nn.Module] = [Shrink(work_side)] if work_side else []  # else: old layer names
    layers += [Standardize()] if standardize else []
    layers += [
        nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    if stem_pool:  # a quarter of the compute: the later stages run at half the resolution
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    for before, after in itertools.pairwise(widths):
        for k in range(depth):  # depth convs per stage (1 keeps the layer names of old bundles)
            layers += [nn.Conv2d(after if k else before, after, 3, padding=1, bias=False),
                       nn.BatchNorm2d(after), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    if pool not in ("avg", "avgmax"):
        raise TypeError(f"pool must be avg or avgmax, not {pool!r}")
    features = widths[-1] * (2 if pool == "avgmax" else 1)
    # Flatten is a no-op after GlobalPool, kept so that older bundles' weight names still match
    layers += [GlobalPool(pool == "avgmax"), nn.Flatten(), nn.Dropout(dropout),
               nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


class Shrink(nn.Module):
    """Area-average an input whose longer side exceeds `side` down to it (aspect kept). Inside
    the model, so training, serving and batch scoring shrink alike while the bundle keeps the
    images' own size. A texture's stain survives averaging 224 -> 112 px, and a quarter of the
    pixels buys four times the epochs, which is what a subtle defect needs to be learnt."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = int(side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        scale = self.side / max(height, width)
        if scale >= 1.0:
            return x
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return nn.functional.adaptive_avg_pool2d(x, size)


def shrink_inputs(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`images` as the model's `Shrink` (if it has one) sees them: training shrinks its cached
    images once, up front, instead of every batch at every epoch (the model's own Shrink then
    has nothing left to do; a full-size image at serving time is shrunk the same way)."""
    for part in module.modules():
        if isinstance(part, Shrink):
            return part(images)
    return images


class Standardize(nn.Module):
    """Each image to zero mean and unit variance per channel: a faint stain on fabric lit
    darker or brighter becomes the same contrast, and low-contrast textures learn faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((2, 3), keepdim=True)
        return (x - mean) / (x.std((2, 3), keepdim=True) + 1e-3)


class GlobalPool(nn.Module):
    """Global average pooling, optionally with global max pooling beside it: a small defect
    (a chip, a stain) lights up a few positions, which an average over the image dilutes."""

    def __init__(self, with_max: bool) -> None:
        super().__init__()
        self.with_max = with_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((2, 3))
        return torch.cat([mean, x.amax((2, 3))], 1) if self.with_max else mean


class Ensemble(nn.Module):
    """The mean of several networks' logits, as one network: each member's body (all but its
    last linear layer) gives its pooled features, and one linear head over their concatenation
    holds each member's head divided by their number. So an ensemble's features (novelty), class
    activation maps and ONNX graph come from the code that serves a single network."""

    def __init__(self, bodies: Sequence[nn.Module], head: nn.Linear) -> None:
        super().__init__()
        self.bodies = nn.ModuleList(bodies)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([body(x) for body in self.bodies], 1))


def split_head(net: nn.Module, name: str) -> tuple[nn.Sequential, nn.Linear]:
    """(body, head) of a network that ends in a linear layer, such as `bn_cnn`."""
    if isinstance(net, FlipAverage):
        net = net.net
    if not (isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear)):
        raise ConfigError(f"an ensemble member must end in a linear layer; {name} does not")
    return net[:-1], net[-1]


@register("ensemble")
def ensemble(num_classes: int, height: int, width: int,
             members: Sequence[dict[str, Any]] = ({"arch": "bn_cnn"}, {"arch": "bn_cnn"}),
             ) -> nn.Module:
    """Members given as `{"arch": name, "arch_params": {...}}` (test-time views belong to the
    ensemble's own `tta`); fresh weights, for a bundle's state dict to fill."""
    if len(members) < 2:
        raise TypeError("an ensemble needs at least two members")
    parts = [split_head(build(m["arch"], num_classes, height, width, **m.get("arch_params", {})),
                        m["arch"]) for m in members]
    inputs = sum(head.in_features for _, head in parts)
    return Ensemble([body for body, _ in parts], nn.Linear(inputs, num_classes))


def average_of(nets: Sequence[nn.Module], names: Sequence[str]) -> Ensemble:
    """The ensemble of trained networks (`FlipAverage`-wrapped or not): their bodies as they
    are, one head whose logits are the mean of theirs."""
    parts = [split_head(net, name) for net, name in zip(nets, names, strict=True)]
    heads = [head for _, head in parts]
    head = nn.Linear(sum(h.in_features for h in heads), heads[0].out_features)
    with torch.no_grad():
        head.weight.copy_(torch.cat([h.weight for h in heads], 1) / len(heads))
        head.bias.copy_(torch.stack([h.bias for h in heads]).mean(0))
    return Ensemble([body for body, _ in parts], head)


TORCHVISION = {"resnet18": "resnet18", "mobilenet_v3_small": "mobilenet_v3_small"}


class Frozen(nn.Module):
    """A torchvision network whose backbone stays as loaded (eval mode, no gradients) while
    its classifier head trains: a linear probe, which fits a small set in seconds."""

    def __init__(self, net: nn.Module, head: str) -> None:
        super().__init__()
        self.net = net
        self.head = head
        for name, param in net.named_parameters():
            param.requires_grad = name.startswith(f"{head}.")

    def train(self, mode: bool = True) -> Frozen:
        super().train(mode)
        self.net.eval()
        getattr(self.net, self.head).train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _torchvision(name: str, num_classes: int, freeze: bool, head: str) -> nn.Module:
    from torchvision import models

    net = models.get_model(name, weights=None, num_classes=num_classes)
    return Frozen(net, head) if freeze else net


@register("resnet18")
def resnet18(num_classes: int, height: int, width: int, freeze: bool = False) -> nn.Module:
    """torchvision's ResNet-18 (`pretrained: imagenet` loads its ImageNet weights)."""
    return _torchvision("resnet18", num_classes, freeze, "fc")


@register("mobilenet_v3_small")
def mobilenet_v3_small(
    num_classes: int, height: int, width: int, freeze: bool = False
) -> nn.Module:
    """torchvision's MobileNetV3-small (`pretrained: imagenet` loads its ImageNet weights)."""
    return _torchvision("mobilenet_v3_small", num_classes, freeze, "classifier")


def torchvision_weights_cached(name: str) -> bool:
    """Whether torchvision's default ImageNet weights for `name` already sit in the torch cache
    ($TORCH_HOME/hub/checkpoints), so loading them downloads nothing."""
    import torch
    from torchvision.models import get_model_weights

    if name not in TORCHVISION:
        return False
    url = get_model_weights(TORCHVISION[name]).DEFAULT.url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def load_torchvision_weights(module: nn.Module, name: str, source: str) -> int:
    """Load `source` (imagenet) weights through torchvision's weights API: fetched once into
    the TORCH_HOME cache (hash-checked on download), read from there ever after."""
    from torchvision.models import get_model_weights

    if name not in TORCHVISION or source != "imagenet":
        raise ConfigError(f"pretrained: {source} needs a torchvision architecture"
                          f" ({', '.join(TORCHVISION)}), not {name}")
    weights = get_model_weights(TORCHVISION[name]).DEFAULT
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise ConfigError(
            f"cannot load {weights} ({err}); with internet it is fetched once into"
            " $TORCH_HOME/hub/checkpoints; offline, set pretrained_weights: PATH instead"
        ) from None
    return copy_matching(module, state, str(weights))
