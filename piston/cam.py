"""The torch side of heatmaps: class activation maps from one forward pass.

A class activation map (CAM) is the head's weights applied to the feature maps that global
pooling averages. `CamEmbedder` computes them for every class inside the network, so the
ONNX export carries them as a third output (`class_maps`) and an ONNX Runtime process draws
the same heatmap without torch (`piston.explain` works in numpy). A net whose head is not a
linear layer right after global pooling (MobileNetV3's two-layer head, the seed recipe's
dense layers) gets Grad-CAM instead, in torch only: its one map per image is the last
convolution's output weighted by the gradients of the predicted class, summed over channels.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from piston.arch import Embedder, FlipAverage, GlobalPool
from piston.errors import ConfigError

POOLS = (GlobalPool, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class Explained:
    """One forward pass with the maps: (N, C) logits, (N, D) features and (N, C, h, w) class
    activation maps (CAM) or (N, 1, h, w) maps of the predicted class (Grad-CAM)."""

    logits: np.ndarray
    features: np.ndarray
    maps: np.ndarray


def unview(maps: torch.Tensor, n: int, flips: list[tuple[int, ...]],
           transpose: bool) -> torch.Tensor:
    """(V*N, K, h, w) maps of the test-time views -> (N, K, h, w), each view flipped (and
    transposed) back onto the image before averaging."""
    views = maps.reshape(-1, n, *maps.shape[1:])
    plain = 1 + len(flips)
    undone = []
    for v in range(views.shape[0]):
        view, k = views[v], v
        if k >= plain:  # FlipAverage appends the transposes of every view
            view, k = view.transpose(-1, -2), k - plain
        undone.append(view.flip(flips[k - 1]) if k else view)
    return torch.stack(undone).float().mean(0)


class CamEmbedder(nn.Module):
    """`Embedder`'s (logits, features) plus every class's activation map, (N, C, h, w): the
    head's weights over the input of the last global pooling, views flipped back and averaged
    (with average + max pooling the head reads each map twice, so both weights count)."""

    def __init__(self, embedder: Embedder, pool: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder
        module = embedder.module
        self.flips, self.transpose = (
            (module.flips, module.transpose) if isinstance(module, FlipAverage) else ([], False))
        self.pool = pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        # The hook is on the shared module: a forward pass in another thread (the batcher's,
        # another explain) must not feed this one's maps
        mine = threading.get_ident()

        def take_input(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if threading.get_ident() == mine:
                seen.append(args[0])

        hook = self.pool.register_forward_pre_hook(take_input)
        try:
            logits, features = self.embedder(x)
        finally:
            hook.remove()
        maps = unview(seen[-1], x.shape[0], self.flips, self.transpose)
        weight = self.embedder.head.weight
        k = maps.shape[1]
        if weight.shape[1] == 2 * k:
            weight = weight[:, :k] + weight[:, k:]
        return logits, features, torch.einsum("ck,nkhw->nchw", weight, maps)


def cam_embedder(module: nn.Module) -> CamEmbedder | None:
    """The module with its class activation maps, or None when its head is not linear over
    globally pooled maps (resnet18 and bn_cnn are; CAM is exact for them)."""
    embedder = Embedder(module)
    pools = [m for m in module.modules() if isinstance(m, POOLS)]
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not pools or not convs:
        return None
    channels = convs[-1].out_channels
    if embedder.head.in_features not in (channels, 2 * channels):
        return None
    return CamEmbedder(embedder, pools[-1])


class FeatureMaps:
    """A forward pass that also gives class activation maps (`CamEmbedder`) or, for nets
    without a linear head over pooled maps, the Grad-CAM map of the predicted class."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        module = embedder.module
        self.flips, self.transpose = (
            (module.flips, module.transpose) if isinstance(module, FlipAverage) else ([], False))
        self.cam = cam_embedder(module)
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ConfigError("the architecture has no convolution to take a heatmap from")
        self.last_conv = convs[-1]

    @property
    def linear(self) -> bool:
        """CAM (True) or Grad-CAM."""
        return self.cam is not None

    def __call__(self, batch: torch.Tensor) -> Explained:
        if self.cam is not None:
            with torch.inference_mode():
                logits, features, maps = self.cam(batch)
            return Explained(logits.numpy(), features.numpy(), maps.numpy())
        with torch.enable_grad():
            logits, features, taken = self._run(batch)
            top = logits.argmax(1)
            score = logits.gather(1, top[:, None]).sum()
            (grads,) = torch.autograd.grad(score, taken)
            weighted = (grads.mean((2, 3), keepdim=True) * taken).sum(1, keepdim=True)
        maps = unview(weighted.detach(), len(batch), self.flips, self.transpose)
        return Explained(logits.detach().numpy(), features.detach().numpy(), maps.numpy())

    def _run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        mine = threading.get_ident()  # the hook is on the shared module (see CamEmbedder)

        def take_output(_m: nn.Module, _args: object, out: torch.Tensor) -> torch.Tensor:
            if threading.get_ident() != mine:
                return out
            # a leaf of its own: frozen backbones have no gradients to follow
            out = out.detach().requires_grad_(True)
            seen.append(out)
            return out

        hook = self.last_conv.register_forward_hook(take_output)
        try:
            logits, features = self.embedder(batch)
        finally:
            hook.remove()
        return logits, features, seen[-1]
