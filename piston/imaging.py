"""Preprocessing, once: bytes -> validated RGB image -> array at the bundle's input size.

Training, serving and batch scoring all call `preprocess`; the bundle records the
`Contract` it was trained with, so the three can never drift apart. Torch-free on purpose:
a process that only decodes does not pay for importing torch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageFile

from piston.errors import ImageError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF"})
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Contract:
    """What a model expects: input size (height, width) and per-channel normalisation."""

    height: int = 80
    width: int = 80
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Contract:
        mean = tuple(float(v) for v in raw.get("mean", (0.0, 0.0, 0.0)))  # type: ignore[attr-defined]
        std = tuple(float(v) for v in raw.get("std", (1.0, 1.0, 1.0)))  # type: ignore[attr-defined]
        return cls(int(raw["height"]), int(raw["width"]), mean, std)  # type: ignore[arg-type, call-overload]


@dataclass(frozen=True)
class ImageInfo:
    """What decoding noticed about an image, for the data check."""

    format: str
    mode: str
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, ImageInfo]:
    """Decode and validate image bytes into an RGB image; raise `ImageError` with a reason."""
    if not data:
        raise ImageError("empty", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("too_many_pixels", f"the image has too many pixels ({err})") from None
    except Exception:
        raise ImageError("not_an_image", "the data is not a recognised image") from None
    if img.format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise ImageError("unsupported_format", f"format {img.format} is not allowed ({allowed})")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            "too_many_pixels", f"the image has {width}x{height} pixels, over the {max_pixels} limit"
        )
    if width < 1 or height < 1:
        raise ImageError("not_an_image", "the image has no pixels")
    info = ImageInfo(format=img.format or "?", mode=img.mode, size=(width, height))
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img.load()
    except Exception as err:
        raise ImageError("truncated", f"the image is truncated or corrupt ({err})") from None
    return _to_rgb(img), info


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (grayscale, 16-bit, palette, alpha, CMYK) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def to_uint8(img: Image.Image, contract: Contract) -> np.ndarray:
    """Resize an RGB image to the contract's size: a CHW uint8 array (what training caches)."""
    if img.size != (contract.width, contract.height):
        img = img.resize((contract.width, contract.height), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def normalize(pixels: np.ndarray, contract: Contract) -> np.ndarray:
    """uint8 CHW (or NCHW) pixels -> float32 scaled to [0, 1] and normalised per channel."""
    mean = np.asarray(contract.mean, dtype=np.float32).reshape(3, 1, 1)
    scale = (1.0 / (255.0 * np.asarray(contract.std, dtype=np.float32))).reshape(3, 1, 1)
    return (pixels.astype(np.float32) - mean * 255.0) * scale


def to_array(img: Image.Image, contract: Contract) -> np.ndarray:
    """Resize and normalise an RGB image into the CHW float32 array a model takes."""
    return normalize(to_uint8(img, contract), contract)


def preprocess(data: bytes, contract: Contract, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes -> validated, converted, resized, normalised CHW float32 array."""
    img, _ = decode_image(data, max_pixels)
    return to_array(img, contract)
