"""Heatmaps: the class activation map in numpy, from maps any runtime can give."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from piston import arch
from piston.bundle import BundleMeta, Predictor
from piston.explain import Box, class_map, explain, hottest_region, overlay, to_original
from piston.runtime import TorchRuntime
from piston.scoring import Decision, score_blobs
from tests.conftest import image_bytes


def predictor_of(name: str, size: int = 32, **params: object) -> Predictor:
    torch.manual_seed(0)
    meta = BundleMeta(version="v-test", classes=["a", "b", "c"], arch=name, arch_params=params,
                      contract={"height": size, "width": size, "exif_transpose": True})
    module = arch.build(name, 3, size, size, **params)
    module.eval()
    return Predictor(meta, module)


def batch(n: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("tta", [None, "hflip", "dihedral"])
def test_the_maps_give_back_the_logits_of_an_average_pooled_net(tta: str | None) -> None:
    """CAM is exact for global average pooling: each class map's mean plus the head's bias is
    the class's logit, test-time views and all (flipping a map keeps its mean)."""
    predictor = predictor_of("bn_cnn", tta=tta)
    x = batch()
    out = predictor.forward(x, explain=True)
    plain = predictor.forward(x)
    np.testing.assert_allclose(out.logits, plain.logits, atol=1e-5)
    np.testing.assert_allclose(out.features, plain.features, atol=1e-5)
    assert out.maps is not None and out.maps.shape[:2] == (3, 3)  # a map per class
    assert isinstance(predictor.runtime, TorchRuntime)
    bias = predictor.runtime.embedder.head.bias.detach().numpy()
    assert predictor.explain_method == "cam"
    for i in range(3):
        for c in range(3):
            got = class_map(out.maps[i], c, "cam").mean() + bias[c]
            assert got == pytest.approx(float(out.logits[i, c]), abs=1e-4)
    assert plain.maps is None


@pytest.mark.parametrize(("name", "method", "params"), [
    ("bn_cnn", "cam", {"pool": "avgmax", "tta": "hflip"}),
    ("resnet18", "cam", {}),
    ("mobilenet_v3_small", "grad_cam", {"freeze": True}),
    ("seed_cnn", "grad_cam", {}),
])
def test_every_architecture_explains(name: str, method: str, params: dict[str, object]) -> None:
    predictor = predictor_of(name, 64, **params)
    x = batch(2, 64)
    out = predictor.forward(x, explain=True)
    assert predictor.explain_method == method and out.maps is not None and len(out.maps) == 2
    np.testing.assert_allclose(out.logits, predictor.forward(x).logits, atol=1e-4)
    found = explain(out.maps[0], 1, "b", predictor.explain_method, 300, 150)
    assert found.method == method and (found.image_width, found.image_height) == (300, 150)
    assert 0 <= found.box.x0 < found.box.x1 <= 300 and 0 <= found.box.y0 < found.box.y1 <= 150


def test_the_box_lands_on_the_hot_spot_in_original_pixels() -> None:
    """A hot spot in the right third, upper half of a 6x6 map, of a 600x300 image."""
    maps = np.zeros((2, 6, 6), dtype=np.float32)
    maps[0, 1, 4] = 1.0
    maps[1, 4, 1] = 1.0  # what class 1 would look at
    found = explain(maps, 0, "a", "cam", 600, 300)
    box = found.box
    centre = ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
    assert 400 <= centre[0] <= 500 and 25 <= centre[1] <= 75, box
    assert 0 <= box.x0 < box.x1 <= 600 and 0 <= box.y0 < box.y1 <= 300
    png = Image.open(io.BytesIO(base64.b64decode(found.heatmap_png)))
    assert png.format == "PNG" and png.mode == "RGBA"
    assert png.width / png.height == pytest.approx(2.0, abs=0.02)
    other = explain(maps, 1, "b", "cam", 600, 300).box
    assert other.x1 <= 300 and other.y0 >= 150


def test_the_hottest_region_is_the_connected_area_around_the_peak() -> None:
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[2:4, 2:5] = 1.0
    heat[7:9, 7:9] = 0.9  # hot, but not connected to the peak
    heat[2, 2] = 1.2
    assert hottest_region(heat) == (2, 2, 5, 4)
    assert to_original((2, 2, 5, 4), heat.shape, 20, 40) == Box(x0=4, y0=8, x1=10, y1=16)
    flat = np.zeros((4, 4), dtype=np.float32)
    assert hottest_region(flat) == (0, 0, 4, 4)  # nothing stands out: the whole image


def test_scoring_with_explain_gives_each_decision_its_heatmap() -> None:
    predictor = predictor_of("bn_cnn", tta="hflip")
    wide = image_bytes((200, 40, 40), size=(120, 40))
    outcomes = score_blobs(predictor, [wide, b"nope", image_bytes()], 10**6, explain=True)
    first, failed, last = outcomes
    assert isinstance(first, Decision) and first.explanation is not None
    assert (first.explanation.image_width, first.explanation.image_height) == (120, 40)
    assert first.explanation.label == first.label
    assert not isinstance(failed, Decision)
    assert isinstance(last, Decision) and last.explanation is not None
    plain = score_blobs(predictor, [wide], 10**6)[0]
    assert isinstance(plain, Decision) and plain.explanation is None
    assert plain.probabilities == pytest.approx(first.probabilities, abs=1e-5)
    picture = overlay(Image.new("RGB", (120, 40)), first.explanation)
    assert picture.size == (120, 40)


def test_an_exif_rotated_image_is_explained_at_its_upright_size() -> None:
    img = Image.new("RGB", (90, 30), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # a quarter turn: shown 30 wide, 90 high
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    found = score_blobs(predictor_of("bn_cnn"), [buf.getvalue()], 10**6, explain=True)[0]
    assert isinstance(found, Decision) and found.explanation is not None
    assert (found.explanation.image_width, found.explanation.image_height) == (30, 90)


@pytest.mark.parametrize("name", ["bn_cnn", "seed_cnn"])
def test_explains_in_threads_at_once_keep_their_own_maps(name: str) -> None:
    """The hooks sit on the shared module: each forward pass takes only its own thread's maps."""
    predictor = predictor_of(name)
    x = batch(4)

    def maps(i: int) -> np.ndarray | None:
        return predictor.forward(x[i:i + 1], explain=True).maps

    alone = [maps(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for a, b in zip(alone, pool.map(maps, range(4)), strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5)
