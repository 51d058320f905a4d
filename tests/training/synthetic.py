"""Synthetic inspection sets the tests build in a temp folder: what a new customer might bring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def notch_set(
    root: Path, per_class: int = 40, side: int = 512, notch: float = 0.09, seed: int = 0
) -> Path:
    """One round part on a uniform background, 8-bit grayscale PNGs; `defect` parts have a
    notch in the rim (radius `notch` of the side: 0.09 bites 1.3% of the image). Every part is
    a distinct item: its position, size, shading and noise differ, but all look alike, like
    one pill type."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for name in ("defect", "normal"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cx, cy = side / 2 + rng.uniform(-0.04, 0.04, 2) * side
            radius = side * rng.uniform(0.30, 0.34)
            dist = np.hypot(xx - cx, yy - cy)
            part = dist < radius
            if name == "defect":  # a notch bitten out of the rim at a random angle
                angle = rng.uniform(0, 2 * np.pi)
                nx, ny = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
                part &= np.hypot(xx - nx, yy - ny) > side * notch
            shade = rng.uniform(150, 200) - 30 * (dist / radius) ** 2
            pixels = np.where(part, shade, rng.uniform(10, 25))
            pixels = pixels + rng.normal(0, 4, pixels.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(
                root / name / f"{name}_{i:03d}.png")
    return root


def texture_set(
    root: Path, counts: dict[str, int], side: int = 48, seed: int = 0
) -> Path:
    """Textured surfaces, one stripe frequency and orientation per class, random phase and
    noise per image (distinct items that all look alike within a class)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        angle, freq = k * np.pi / len(counts), 0.15 + 0.05 * (k % 3)
        for i in range(n):
            wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
            pixels = 128 + 60 * wave + rng.normal(0, 25, wave.shape)
            rgb = np.repeat(np.clip(pixels, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            Image.fromarray(rgb).save(root / name / f"{name}_{i:03d}.png")
    return root
