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

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from piston.arch import Embedder, Ensemble, FlipAverage, GlobalPool
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
    (with average + max pooling the head reads each map twice, so both weights count). An
    ensemble has one such pooling per member: each member's maps get its share of the head's
    weights, and are brought to the largest member's map size before they are added."""

    def __init__(self, embedder: Embedder, pools: Sequence[nn.Module],
                 columns: list[int]) -> None:
        super().__init__()
        self.embedder = embedder
        module = embedder.module
        self.flips, self.transpose = (
            (module.flips, module.transpose) if isinstance(module, FlipAverage) else ([], False))
        self.pools = pools
        self.columns = columns  # how many of the head's inputs each pool gives

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        # The hooks are on the shared module: a forward pass in another thread (the batcher's,
        # another explain) must not feed this one's maps
        mine = threading.get_ident()

        def taker(k: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
            def take_input(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                if threading.get_ident() == mine:
                    seen[k] = args[0]
            return take_input

        hooks = [pool.register_forward_pre_hook(taker(k)) for k, pool in enumerate(self.pools)]
        try:
            logits, features = self.embedder(x)
        finally:
            for hook in hooks:
                hook.remove()
        head, starts = self.embedder.head.weight, [0, *itertools.accumulate(self.columns)]
        weights = [head[:, a:b] for a, b in itertools.pairwise(starts)]  # no Split op in ONNX
        cams = [self._cam(unview(seen[k], x.shape[0], self.flips, self.transpose), weights[k])
                for k in range(len(self.pools))]
        size = max(cam.shape[-2:] for cam in cams)
        resized = [cam if cam.shape[-2:] == size else nn.functional.interpolate(
            cam, size=size, mode="bilinear", align_corners=False) for cam in cams]
        return logits, features, resized[0] if len(resized) == 1 else torch.stack(resized).sum(0)

    @staticmethod
    def _cam(maps: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        k = maps.shape[1]
        if weight.shape[1] == 2 * k:
            weight = weight[:, :k] + weight[:, k:]
        return torch.einsum("ck,nkhw->nchw", weight, maps)


def cam_embedder(module: nn.Module) -> CamEmbedder | None:
    """The module with its class activation maps, or None when its head is not linear over
    globally pooled maps (resnet18, bn_cnn and their ensembles are; CAM is exact for them)."""
    embedder = Embedder(module)
    inner = module.net if isinstance(module, FlipAverage) else module
    bodies = list(inner.bodies) if isinstance(inner, Ensemble) else [module]
    pools, columns = [], []
    for body in bodies:
        found = [m for m in body.modules() if isinstance(m, POOLS)]
        convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
        if not found or not convs:
            return None
        pools.append(found[-1])
        wide = isinstance(found[-1], GlobalPool) and found[-1].with_max
        columns.append(convs[-1].out_channels * (2 if wide else 1))
    if sum(columns) != embedder.head.in_features:
        return None
    return CamEmbedder(embedder, pools, columns)


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
