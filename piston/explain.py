"""Heatmaps in numpy: class activation maps + a class -> heatmap, box and PNG.

Any runtime that gives the class activation maps (`NetOutput.maps`: torch, or an ONNX graph
exported with them) explains the same way: the class's map is scaled to 0..1 and resized to
the original image's aspect. The model saw the image resized to its input size (no padding,
`piston.imaging.to_uint8`), so map coordinates scale to original pixels per axis. The box
is the hottest region: the connected area around the peak that is at least half as hot.
"""

from __future__ import annotations

import base64
import io
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

HEATMAP_SIDE = 160  # the PNG's longer side at most: the browser scales it smoothly
# The box is found on a grid this fine (the longer side): maps are 3x3 to 7x7, so a finer grid
# adds nothing but time (at 160 the region growing took 8 ms of a 10 ms forward pass)
BOX_SIDE = 48
HOT = 0.5  # the box holds the area around the peak at least this hot (0..1)
# A dark-blue -> cyan -> yellow -> red ramp (the usual reading: red is hottest), as a 256-entry
# RGBA table: alpha rises with the heat, so the PNG lays over the image as it is
RAMP = np.array([[0, 0, 140], [0, 110, 255], [0, 220, 220], [250, 230, 0], [255, 40, 0]],
                dtype=np.float32)
_LEVELS = np.linspace(0.0, len(RAMP) - 1, 256)
COLOURS = np.column_stack(
    [np.interp(_LEVELS, np.arange(len(RAMP)), RAMP[:, c]) for c in range(3)]
    + [40.0 + 170.0 * np.linspace(0.0, 1.0, 256)]).round().astype(np.uint8)
Method = Literal["cam", "grad_cam"]


class Box(BaseModel):
    """A rectangle in original-image pixels; x1 and y1 exclusive."""

    model_config = ConfigDict(frozen=True)

    x0: int
    y0: int
    x1: int
    y1: int


class Explanation(BaseModel):
    """Where the model looked for the class it gave an image."""

    model_config = ConfigDict(frozen=True)

    label: str = Field(description="the class explained: the predicted one")
    method: Method = Field(description="cam (class activation map) or grad_cam")
    box: Box = Field(description="the hottest region, in the original image's pixels")
    image_width: int = Field(description="the original image's width (after EXIF rotation)")
    image_height: int
    heatmap_png: str = Field(description="base64 PNG at the image's aspect: colour = heat,"
                             " alpha = heat (lay it over the image, stretched to its size)")


def class_map(maps: np.ndarray, cls: int, method: Method) -> np.ndarray:
    """One image's maps -> the (h, w) activation map of class `cls`.

    CAM maps are (C, h, w), one per class (`piston.cam.CamEmbedder`, in torch or in the ONNX
    graph); Grad-CAM's are (1, h, w), already the predicted class's, of which only the
    positive part counts.
    """
    if method == "grad_cam":
        return np.maximum(maps[0], 0.0)
    if not 0 <= cls < len(maps):
        raise ValueError(f"no activation map for class {cls} among {len(maps)}")
    return maps[cls]


def normalized(cam: np.ndarray) -> np.ndarray:
    """Scale to 0..1 (a flat map is all zeros: nothing stands out)."""
    cam = cam.astype(np.float32) - float(cam.min())
    top = float(cam.max())
    return cam / top if top > 1e-12 else np.zeros_like(cam)


def heat_at(cam: np.ndarray, width: int, height: int, side: int = HEATMAP_SIDE) -> np.ndarray:
    """The 0..1 heat resized (bilinear) to the original aspect, longer side <= `side`."""
    scale = min(1.0, side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    img = Image.fromarray(normalized(cam), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def hottest_region(heat: np.ndarray, hot: float = HOT) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in `heat`'s cells: the connected area (4-neighbours) of cells at least
    `hot` times the peak, around the peak. Walks runs of hot cells row by row, not cells."""
    peak_row, peak_col = np.unravel_index(int(heat.argmax()), heat.shape)
    mask = np.pad(heat >= hot * float(heat.max()), ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(mask, axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major: the n-th start pairs with the n-th end
    ends = np.nonzero(edges == -1)[1]
    runs: list[list[tuple[int, int]]] = [[] for _ in range(heat.shape[0])]
    for row, start, end in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
        runs[row].append((start, end))  # [start, end) of each hot run, per row
    first = next(i for i, (a, b) in enumerate(runs[peak_row]) if a <= peak_col < b)
    todo, seen = [(int(peak_row), first)], {(int(peak_row), first)}
    x0, y0, x1, y1 = heat.shape[1], heat.shape[0], 0, 0
    while todo:
        row, i = todo.pop()
        start, end = runs[row][i]
        x0, x1, y0, y1 = min(x0, start), max(x1, end), min(y0, row), max(y1, row + 1)
        for near in (row - 1, row + 1):
            if 0 <= near < len(runs):
                for j, (a, b) in enumerate(runs[near]):
                    if a < end and start < b and (near, j) not in seen:
                        seen.add((near, j))
                        todo.append((near, j))
    return x0, y0, x1, y1


def to_original(box: tuple[int, int, int, int], heat_shape: tuple[int, ...],
                width: int, height: int) -> Box:
    """A box in heat cells -> original-image pixels (per-axis scale), inside the image."""
    sx, sy = width / heat_shape[1], height / heat_shape[0]
    x0, y0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    x1, y1 = int(np.ceil(box[2] * sx)), int(np.ceil(box[3] * sy))
    return Box(x0=max(0, min(x0, width - 1)), y0=max(0, min(y0, height - 1)),
               x1=max(x0 + 1, min(x1, width)), y1=max(y0 + 1, min(y1, height)))


def colored(heat: np.ndarray) -> np.ndarray:
    """0..1 heat -> (h, w, 4) uint8 RGBA: the ramp's colour, alpha rising with the heat."""
    return COLOURS[(np.clip(heat, 0.0, 1.0) * 255.0).round().astype(np.intp)]


def png(heat: np.ndarray) -> bytes:
    buf = io.BytesIO()  # fast compression: a smooth map compresses well at any level
    Image.fromarray(colored(heat), mode="RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def explain(maps: np.ndarray, cls: int, label: str, method: Method, width: int,
            height: int) -> Explanation:
    """One image's maps (see `class_map`) -> its explanation at its original `width` x
    `height`."""
    cam = class_map(maps, cls, method)
    heat = heat_at(cam, width, height)
    grid = heat_at(cam, width, height, BOX_SIDE)
    box = to_original(hottest_region(grid), grid.shape, width, height)
    return Explanation(label=label, method=method, box=box, image_width=width,
                       image_height=height, heatmap_png=base64.b64encode(png(heat)).decode())


def overlay(image: Image.Image, explanation: Explanation) -> Image.Image:
    """The image with its heatmap laid over it and the box drawn: for people and files."""
    base = image.convert("RGBA")
    layer = Image.open(io.BytesIO(base64.b64decode(explanation.heatmap_png))).convert("RGBA")
    out = Image.alpha_composite(base, layer.resize(base.size, Image.Resampling.BILINEAR))
    b = explanation.box
    sx, sy = base.width / explanation.image_width, base.height / explanation.image_height
    width = max(1, round(max(base.size) / 160))
    ImageDraw.Draw(out).rectangle(
        [b.x0 * sx, b.y0 * sy, b.x1 * sx - 1, b.y1 * sy - 1], outline=(255, 255, 255, 255),
        width=width)
    return out.convert("RGB")
