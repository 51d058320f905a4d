"""Preprocessing, once: bytes -> validated RGB image -> array at the bundle's input size.

Training, serving and batch scoring all call these functions with the bundle's `Contract`,
so the three can never drift apart; the contract records how its bundle was trained
(EXIF orientation applied, JPEG draft decoding), and bundles from before those fields read
them as off. Torch-free on purpose: a process that only decodes does not pay for torch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from piston.errors import ImageError

# MPO: the multi-picture JPEG many phones write; its first frame is the photo.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "GIF"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L"})
# JPEG draft decoding (DCT scaling) only down to twice the input size: the final resize
# still averages at least 2x2 source pixels per output pixel.
DRAFT_MARGIN = 2
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = frozenset({5, 6, 7, 8})  # orientations that swap width and height


@dataclass(frozen=True)
class Contract:
    """What a model expects: input size, normalisation, how its images were decoded."""

    height: int = 80
    width: int = 80
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exif_transpose: bool = True
    jpeg_draft: bool = True



@dataclass(frozen=True)
class ImageInfo:
    """What decoding noticed about an image, for the data check."""

    format: str
    mode: str
    size: tuple[int, int]


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read only the header: format and pixel count are checked before any pixel is decoded."""
    if not data:
        raise ImageError("empty", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("too_many_pixels", f"the image has too many pixels ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
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
    return img


def oriented_size(img: Image.Image, contract: Contract | None = None,
                  size: tuple[int, int] | None = None) -> tuple[int, int]:
    """An opened image's (width, height) as decoding will orient it (EXIF rotations by a
    quarter turn swap the sides), read from the header alone. `size`: the header's, for an
    image decoded since (a JPEG draft shrinks `img.size`)."""
    width, height = size or img.size
    if contract is not None and not contract.exif_transpose:
        return width, height
    if img.getexif().get(EXIF_ORIENTATION, 1) in QUARTER_TURNS:
        return height, width
    return width, height


def image_size(data: bytes, contract: Contract | None, max_pixels: int | None = None
               ) -> tuple[int, int]:
    """Image bytes -> the (width, height) the image has once oriented (header only)."""
    return oriented_size(open_image(data, max_pixels or default_max_pixels()), contract)


def load_image(img: Image.Image, contract: Contract | None = None) -> Image.Image:
    """Decode an opened image into 8-bit RGB, oriented and drafted as `contract` says.

    Without a contract (the data check): EXIF orientation applied, full resolution.
    """
    if contract is not None and contract.jpeg_draft and img.format in ("JPEG", "MPO"):
        side = DRAFT_MARGIN * max(contract.height, contract.width)
        img.draft("RGB", (side, side))  # no-op unless the image is at least 2x larger
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError("truncated", f"the image is truncated or corrupt ({err})") from None
    if contract is None or contract.exif_transpose:
        img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


def decode_image(
    data: bytes, max_pixels: int | None = None, contract: Contract | None = None
) -> tuple[Image.Image, ImageInfo]:
    """Decode and validate image bytes into an RGB image; raise `ImageError` with a reason."""
    img = open_image(data, max_pixels or default_max_pixels())
    info = ImageInfo(format=img.format or "?", mode=img.mode, size=img.size)
    return load_image(img, contract), info


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (grayscale, 16-bit, palette, alpha, CMYK) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return _stretch_to_8bit(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def _stretch_to_8bit(img: Image.Image) -> Image.Image:
    """Map a deep grayscale image's own min..max onto 0..255 (an 8-bit `L` image).

    16-bit goes through a 65,536-entry lookup table: one uint8 gather, no float copy of
    the image (a 36 MP frame took 2 s through float64).
    """
    arr = np.asarray(img)
    lo, hi = arr.min(), arr.max()
    span = float(hi) - float(lo)
    if span <= 0:
        return Image.new("L", img.size, 0)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        levels = np.arange(65536, dtype=np.int64) - int(lo)
        lut = (np.clip(levels, 0, None) * 255 // int(span)).clip(0, 255).astype(np.uint8)
        return Image.fromarray(lut[arr], mode="L")
    scaled = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / span)
    return Image.fromarray(scaled.clip(0, 255).astype(np.uint8), mode="L")


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


def prepare(img: Image.Image, contract: Contract) -> np.ndarray:
    """An opened (header-checked) image -> the CHW float32 array a model takes."""
    return to_array(load_image(img, contract), contract)


def preprocess(data: bytes, contract: Contract, max_pixels: int | None = None) -> np.ndarray:
    """Bytes -> validated, oriented, converted, resized, normalised CHW float32 array."""
    return prepare(open_image(data, max_pixels or default_max_pixels()), contract)


def default_max_pixels() -> int:
    """The settings' default cap, for callers that pass none (tests, one-off scripts)."""
    from piston.settings import Settings

    return int(Settings.model_fields["max_image_pixels"].default)
