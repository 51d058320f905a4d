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


# A stand-in for a 10-class metal-surface set (224 px crops of rolled strip, classes of a few
# dozen to several hundred images, a few images with two defects): the case `auto` found hard.
SURFACE_COUNTS = {
    "punching": 110, "weld_line": 150, "crescent_gap": 120, "water_spot": 130,
    "oil_spot": 90, "silk_spot": 200, "inclusion": 70, "rolled_pit": 30, "crease": 50,
    "waist_folding": 80,
}


def surface_set(
    root: Path, counts: dict[str, int] | None = None, side: int = 224, seed: int = 0,
    second_defect: float = 0.05,
) -> Path:
    """Textured metal surfaces (streaks along the rolling direction, uneven light), each with
    one defect of its class: holes, weld seams, crescents, faint water marks, oil blots, silky
    streaks, thin inclusions, small pits, a thin crease, fold bands. With `second_defect`
    probability an image carries a second defect of another class (labelled by the first).
    The default counts are ~1,000 images, two rare classes (30 and 50: 21 and 35 training)."""
    counts = counts or SURFACE_COUNTS
    names = list(SURFACE_COUNTS)
    rng = np.random.default_rng(seed)
    grid = np.mgrid[0:side, 0:side].astype(np.float32) / side  # (y, x) in 0..1
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = _metal(grid, rng)
            pixels = _DEFECTS[name](pixels, grid, rng)
            if rng.random() < second_defect:
                other = names[int(rng.integers(len(names)))]
                if other != name:
                    pixels = _DEFECTS[other](pixels, grid, rng)
            pixels = pixels + rng.normal(0, 3, pixels.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(
                root / name / f"{name}_{i:04d}.png")
    return root


def _metal(grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brushed metal: streaks along x, a light gradient, fine grain."""
    yy, xx = grid
    side = yy.shape[0]
    streaks = np.convolve(rng.normal(0, 1, side + 8), np.ones(9) / 3, mode="valid")[:side]
    light = rng.uniform(-25, 25) * (xx - 0.5) + rng.uniform(-15, 15) * (yy - 0.5)
    return (rng.uniform(110, 150) + 6 * streaks[:, None] + light
            + rng.normal(0, 5, yy.shape)).astype(np.float32)


def _blob(grid: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = grid
    return np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))


def _where(rng: np.random.Generator, margin: float = 0.15) -> tuple[float, float]:
    x, y = rng.uniform(margin, 1 - margin, 2)
    return float(x), float(y)


def _punching(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = _where(rng)
    r = rng.uniform(0.04, 0.07)
    hole = np.hypot(g[1] - cx, g[0] - cy) < r
    return np.where(hole, rng.uniform(10, 40), p)


def _weld_line(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rng.uniform(0.1, 0.9)
    width = rng.uniform(0.008, 0.02)
    seam = np.exp(-((g[1] - x - 0.01 * np.sin(g[0] * 20)) / width) ** 2)
    return p + rng.choice([-1, 1]) * rng.uniform(40, 70) * seam


def _crescent_gap(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = _where(rng, 0.2)
    r = rng.uniform(0.08, 0.13)
    angle = rng.uniform(0, 2 * np.pi)
    outer = np.hypot(g[1] - cx, g[0] - cy) < r
    inner = np.hypot(g[1] - cx - 0.4 * r * np.cos(angle), g[0] - cy - 0.4 * r * np.sin(angle)) < r
    return np.where(outer & ~inner, p - rng.uniform(45, 75), p)


def _water_spot(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = _where(rng)
    r = rng.uniform(0.08, 0.15)
    ring = _blob(g, cx, cy, r, r * rng.uniform(0.7, 1.3))
    return p + rng.uniform(12, 22) * ring - 0.5 * rng.uniform(12, 22) * ring ** 4


def _oil_spot(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = p
    cx, cy = _where(rng)
    for _ in range(int(rng.integers(2, 4))):  # an irregular blot of overlapping lobes
        dx, dy = rng.normal(0, 0.03, 2)
        r = rng.uniform(0.03, 0.07)
        out = out - rng.uniform(20, 35) * _blob(g, cx + dx, cy + dy, r, r)
    return out


def _silk_spot(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = _where(rng, 0.2)
    out = p
    for _ in range(int(rng.integers(4, 8))):  # silky streaks along the rolling direction
        x, y = cx + rng.normal(0, 0.06), cy + rng.normal(0, 0.05)
        out = out + rng.uniform(20, 35) * _blob(g, x, y, rng.uniform(0.05, 0.1), 0.006)
    return out


def _inclusion(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = _where(rng)
    out = p
    for _ in range(int(rng.integers(1, 3))):  # thin dark flecks along the rolling direction
        x, y = cx + rng.normal(0, 0.04), cy + rng.normal(0, 0.03)
        out = out - rng.uniform(35, 55) * _blob(g, x, y, rng.uniform(0.03, 0.06), 0.004)
    return out


def _rolled_pit(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = _where(rng)
    out = p
    for _ in range(int(rng.integers(3, 7))):  # a few small dark pits
        x, y = cx + rng.normal(0, 0.05), cy + rng.normal(0, 0.05)
        r = rng.uniform(0.006, 0.012)
        out = out - rng.uniform(40, 60) * _blob(g, x, y, r, r)
    return out


def _crease(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    yy, xx = g
    angle = rng.uniform(0.3, 1.2) * rng.choice([-1, 1])  # a thin wavy fold, slanted
    offset = rng.uniform(-0.2, 0.2)
    d = (xx - 0.5) * np.sin(angle) - (yy - 0.5) * np.cos(angle) - offset
    d = d + 0.01 * np.sin((xx + yy) * rng.uniform(15, 30))
    return p - rng.uniform(30, 50) * np.exp(-(d / 0.006) ** 2)


def _waist_folding(p: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    yy = g[0]
    freq, phase = rng.uniform(15, 30), rng.uniform(0, 2 * np.pi)
    centre, spread = rng.uniform(0.3, 0.7), rng.uniform(0.12, 0.25)
    bands = np.sin(yy * freq + phase) * np.exp(-((yy - centre) / spread) ** 2)
    return p + rng.uniform(15, 25) * bands


_DEFECTS = {
    "punching": _punching, "weld_line": _weld_line, "crescent_gap": _crescent_gap,
    "water_spot": _water_spot, "oil_spot": _oil_spot, "silk_spot": _silk_spot,
    "inclusion": _inclusion, "rolled_pit": _rolled_pit, "crease": _crease,
    "waist_folding": _waist_folding,
}
