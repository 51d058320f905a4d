"""Augmentations from the config, as one torchvision transforms-v2 pipeline over uint8 images."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from training.config import Augment


def build_augment(aug: Augment, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A per-image transform on (3, H, W) uint8 tensors, or None when nothing is switched on."""
    if not aug.enabled:
        return None
    steps: list[torch.nn.Module] = []
    if aug.crop_scale < 1.0:
        steps.append(v2.RandomResizedCrop((height, width), scale=(aug.crop_scale, 1.0), antialias=True))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.rotate_degrees:
        steps.append(v2.RandomRotation(aug.rotate_degrees))
    if aug.color_jitter:
        j = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    if aug.blur_sigma:
        steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, aug.blur_sigma))], p=0.3))
    if aug.sharpen:
        steps.append(v2.RandomAdjustSharpness(1.0 + aug.sharpen, p=0.3))
    if aug.noise_std:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.GaussianNoise(sigma=aug.noise_std)]
        steps.append(v2.ToDtype(torch.uint8, scale=True))
    return v2.Compose(steps)
