"""The one preprocessing function: every mode converts, every bad input names its failure."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from piston.errors import ImageError
from piston.imaging import Contract, decode_image, preprocess
from tests.conftest import image_bytes

CONTRACT = Contract(height=80, width=80)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("LA", "PNG"),
        ("1", "BMP"),
        ("RGB", "WEBP"),
        ("RGB", "TIFF"),
    ],
)
def test_every_mode_becomes_rgb_at_the_contract_size(mode: str, fmt: str) -> None:
    data = image_bytes((200, 100, 50), size=(123, 45), fmt=fmt, mode=mode)
    img, info = decode_image(data)
    assert img.mode == "RGB"
    assert info.mode == mode
    arr = preprocess(data, CONTRACT)
    assert arr.shape == (3, 80, 80) and arr.dtype == np.float32
    assert arr.min() >= 0.0 and arr.max() <= 1.0


def test_sixteen_bit_keeps_its_contrast() -> None:
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    img, _ = decode_image(buf.getvalue())
    pixels = np.asarray(img)
    assert pixels.min() == 0 and pixels.max() == 255


def test_normalisation_follows_the_contract() -> None:
    data = image_bytes((255, 0, 255), size=(8, 8), fmt="PNG")
    arr = preprocess(data, Contract(8, 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert arr[0].mean() == pytest.approx(1.0) and arr[1].mean() == pytest.approx(-1.0)


def _truncated() -> bytes:
    data = image_bytes((10, 200, 30), size=(200, 200), fmt="JPEG")
    return data[: len(data) // 2]


def _gif_bomb_header() -> bytes:
    return image_bytes(size=(1000, 1000), fmt="PNG")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (b"hello, this is text not an image", "not_an_image"),
        (_truncated(), "truncated"),
        (image_bytes(fmt="ICO", size=(32, 32)), "unsupported_format"),
    ],
)
def test_bad_bytes_raise_a_typed_error_with_a_reason(data: bytes, kind: str) -> None:
    with pytest.raises(ImageError) as caught:
        preprocess(data, CONTRACT)
    assert caught.value.kind == kind
    assert str(caught.value)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(_gif_bomb_header(), max_pixels=500 * 500)
    assert caught.value.kind == "too_many_pixels"
    assert "1000x1000" in str(caught.value)


def _two_tone(size: tuple[int, int] = (120, 80)) -> Image.Image:
    """Red left half, blue right half: any rotation shows in the array."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return img


def _encoded(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format=fmt, quality=95) if fmt == "JPEG" else img.save(buf, format=fmt)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_like_a_rotation_by_hand(fmt: str) -> None:
    stored = _two_tone()  # what the camera stored; orientation 6 says "rotate 90 clockwise"
    by_hand = stored.transpose(Image.Transpose.ROTATE_270)
    tagged = preprocess(_encoded(stored, fmt, orientation=6), CONTRACT)
    expected = preprocess(_encoded(by_hand, fmt), CONTRACT)
    unrotated = preprocess(_encoded(stored, fmt), CONTRACT)
    assert np.abs(tagged - expected).mean() < 0.01
    assert np.abs(tagged - unrotated).mean() > 0.2


def test_a_contract_without_orientation_ignores_it() -> None:
    old = Contract(80, 80, exif_transpose=False, jpeg_draft=False)
    stored = _two_tone()
    tagged = preprocess(_encoded(stored, "PNG", orientation=6), old)
    assert np.array_equal(tagged, preprocess(_encoded(stored, "PNG"), old))


def test_multi_picture_jpeg_reads_its_first_frame() -> None:
    first, second = Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (64, 48), "blue")
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    img, info = decode_image(buf.getvalue())
    assert info.format == "MPO" and img.size == (64, 48)
    red, _, blue = img.getpixel((10, 10))  # type: ignore[misc]
    assert red > 150 and blue < 60


def test_a_large_jpeg_decodes_in_draft_mode_close_to_full_decoding() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)  # smooth at full size
    big = Image.fromarray(base).resize((1600, 1200), Image.Resampling.BICUBIC)
    data = _encoded(big, "JPEG")
    drafted = preprocess(data, CONTRACT)
    full = preprocess(data, Contract(80, 80, jpeg_draft=False))
    assert np.abs(drafted - full).mean() < 0.02


def test_sixteen_bit_maps_its_range_without_a_float_copy() -> None:
    ramp = np.linspace(1000, 61000, 300 * 200).reshape(200, 300).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    img, info = decode_image(buf.getvalue())
    pixels = np.asarray(img)[..., 0].astype(int)
    expected = (ramp.astype(np.int64) - 1000) * 255 // 60000
    assert info.mode.startswith("I;16") and np.abs(pixels - expected).max() <= 1
