"""The torch side of heatmaps: the last convolutional feature maps of one forward pass.

A class activation map (CAM) is the head's weights applied to the feature maps that global
pooling averages, so any runtime that can hand out those maps (torch here, an ONNX graph
with them as an extra output) gets the same heatmap from `piston.explain`, in numpy. A net
whose head is not a linear layer right after global pooling (MobileNetV3's two-layer head)
gets Grad-CAM instead: its maps come out already weighted by the gradients of the predicted
class, summed over channels (one map per image).
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
    """One forward pass with the maps: (N, C) logits, (N, D) features, (N, K, h, w) maps."""

    logits: np.ndarray
    features: np.ndarray
    maps: np.ndarray


class FeatureMaps:
    """Takes the input of a classifier's global pooling (or its last conv's output) along with
    its logits and features; the test-time views are flipped back and averaged."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        module = embedder.module
        self.flips, self.transpose = (
            (module.flips, module.transpose) if isinstance(module, FlipAverage) else ([], False))
        pools = [m for m in module.modules() if isinstance(m, POOLS)]
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ConfigError("the architecture has no convolution to take a heatmap from")
        channels = convs[-1].out_channels
        in_features = embedder.head.in_features
        # CAM is exact when the head reads the pooled maps directly: resnet18, bn_cnn (with
        # avg+max pooling the head reads each map twice)
        self.linear = bool(pools) and in_features in (channels, 2 * channels)
        self.at: nn.Module = pools[-1] if self.linear else convs[-1]

    def head_weights(self) -> np.ndarray | None:
        """The head's (C, D) weights for CAM; None when the maps come gradient-weighted."""
        if not self.linear:
            return None
        return self.embedder.head.weight.detach().numpy().astype(np.float32)

    def __call__(self, batch: torch.Tensor) -> Explained:
        if self.linear:
            with torch.inference_mode():
                logits, features, taken = self._run(batch, grad=False)
            return Explained(logits.numpy(), features.numpy(), self._unview(taken, len(batch)))
        with torch.enable_grad():
            logits, features, taken = self._run(batch, grad=True)
            top = logits.argmax(1)
            score = logits.gather(1, top[:, None]).sum()
            (grads,) = torch.autograd.grad(score, taken)
            weighted = (grads.mean((2, 3), keepdim=True) * taken).sum(1, keepdim=True)
        return Explained(logits.detach().numpy(), features.detach().numpy(),
                         self._unview(weighted.detach(), len(batch)))

    def _run(self, batch: torch.Tensor, grad: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        # The hooks are on the shared module: a forward pass in another thread (the batcher's,
        # another explain) must neither feed this one's maps nor be changed by it
        mine = threading.get_ident()

        def take_input(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if threading.get_ident() == mine:
                seen.append(args[0])

        def take_output(_m: nn.Module, _args: object, out: torch.Tensor) -> torch.Tensor:
            if threading.get_ident() != mine:
                return out
            if grad:  # a leaf of its own: frozen backbones have no gradients to follow
                out = out.detach().requires_grad_(True)
            seen.append(out)
            return out

        hook = (self.at.register_forward_pre_hook(take_input) if self.linear
                else self.at.register_forward_hook(take_output))
        try:
            logits, features = self.embedder(batch)
        finally:
            hook.remove()
        return logits, features, seen[-1]

    def _unview(self, maps: torch.Tensor, n: int) -> np.ndarray:
        """(V*N, K, h, w) maps of the test-time views -> (N, K, h, w), each view flipped (and
        transposed) back onto the image before averaging."""
        views = maps.reshape(-1, n, *maps.shape[1:])
        plain = 1 + len(self.flips)
        undone = []
        for v, view in enumerate(views):
            if v >= plain:  # FlipAverage appends the transposes of every view
                view, v = view.transpose(-1, -2), v - plain
            undone.append(view.flip(self.flips[v - 1]) if v else view)
        return torch.stack(undone).float().mean(0).numpy()
