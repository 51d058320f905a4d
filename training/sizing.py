"""The input size, from the images: their native size, up to a cap.

Shrinking is where small defects die (a faint stain on 224 px fabric is gone at 80 px), so a
model sees the images as they are unless they are larger than `max_side`; then the longer side
goes to `max_side`, keeping the aspect ratio. Sides are multiples of 8 (the networks halve the
resolution a few times).
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 32


def input_size_for(sizes: list[tuple[int, int]], max_side: int) -> tuple[int, int]:
    """(height, width) for images of these (width, height) sizes: the median, capped."""
    if not sizes:
        return max_side, max_side
    width, height = (float(np.median([s[k] for s in sizes])) for k in (0, 1))
    scale = min(1.0, max_side / max(width, height))
    return _side(height * scale), _side(width * scale)


def _side(value: float) -> int:
    return max(MIN_SIDE, round(value / 8.0) * 8)
