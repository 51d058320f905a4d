"""Augmentations from the config, applied to a whole batch at once.

Per-image transform pipelines cost more than the small models' training step itself, so every
augmentation here is one batched tensor operation with per-image random parameters drawn from
the training generator (seeded runs stay repeatable). Inputs and outputs are float batches
(N, 3, H, W) on the 0..255 scale, before normalisation; nothing assumes a size or a class count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

from training.config import Augment

BatchAugment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def build_augment(aug: Augment) -> BatchAugment | None:
    """A batch transform `(images, generator) -> images`, or None when nothing is switched on."""
    if not aug.enabled:
        return None

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = _flips(x, aug.hflip, aug.vflip, gen)
        if aug.transpose and x.shape[-1] == x.shape[-2]:  # square only: the size must not change
            x = torch.where(_chosen(len(x), aug.transpose, gen), x.transpose(-1, -2), x)
        if aug.rotate_degrees or aug.crop_scale < 1.0 or aug.translate_x or aug.translate_y:
            x = _affine(x, aug, gen)
        if aug.color_jitter:
            x = _color(x, aug.color_jitter, gen)
        if aug.blur_sigma or aug.sharpen:
            x = _blur_or_sharpen(x, aug.blur_sigma, aug.sharpen, gen)
        if aug.noise_std:
            x = x + torch.randn(x.shape, generator=gen) * (aug.noise_std * 255.0)
        return x.clamp_(0.0, 255.0)

    return apply


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _chosen(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) < p).view(n, 1, 1, 1)


def _flips(x: torch.Tensor, hflip: float, vflip: float, gen: torch.Generator) -> torch.Tensor:
    if hflip:
        x = torch.where(_chosen(len(x), hflip, gen), x.flip(-1), x)
    if vflip:
        x = torch.where(_chosen(len(x), vflip, gen), x.flip(-2), x)
    return x


def _affine(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Rotation, zoom (the random crop) and shift in one resampling; edges repeat the border."""
    n = len(x)
    angle = _uniform(n, -aug.rotate_degrees, aug.rotate_degrees, gen) * (math.pi / 180.0)
    zoom = torch.sqrt(_uniform(n, aug.crop_scale, 1.0, gen))  # share of the side that stays
    shift = torch.stack([_uniform(n, -aug.translate_x, aug.translate_x, gen),
                         _uniform(n, -aug.translate_y, aug.translate_y, gen)], 1) * 2.0
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _color(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s], per image."""
    n = len(x)
    brightness, contrast, saturation = (
        _uniform(n, 1 - strength, 1 + strength, gen).view(n, 1, 1, 1) for _ in range(3)
    )
    x = x * brightness
    gray = (x * GRAY).sum(1, keepdim=True)
    x = gray.mean((2, 3), keepdim=True) + (x - gray.mean((2, 3), keepdim=True)) * contrast
    gray = (x * GRAY).sum(1, keepdim=True)
    return gray + (x - gray) * saturation


def _blur_or_sharpen(
    x: torch.Tensor, sigma_max: float, sharpen: float, gen: torch.Generator
) -> torch.Tensor:
    """A Gaussian blur on 30% of the images, an unsharp mask on another 30%."""
    sigma = float(_uniform(1, 0.5, max(sigma_max, 0.5), gen))
    blurred = _gaussian(x, sigma)
    pick = torch.rand(len(x), generator=gen).view(-1, 1, 1, 1)
    if sigma_max:
        x = torch.where(pick < 0.3, blurred, x)
    if sharpen:
        amount = float(_uniform(1, 0.0, sharpen, gen))
        x = torch.where((pick >= 0.3) & (pick < 0.6), x + amount * (x - blurred), x)
    return x


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    rows = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), rows, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), cols, groups=channels)
