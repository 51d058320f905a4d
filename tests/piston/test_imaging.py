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
