"""The drift watch in one engine with real Redis: a shifted, darkened feed is marked drifting."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from piston import drift
from piston.follow import ModelFollower
from service.drift import DriftWatch
from service.engine import Engine, Limits
from service.metrics import service_metrics
from tests.conftest import own_redis
from tests.service.conftest import Bundles, empty_redis, open_registry

REDIS = own_redis(12)
# One window for the whole test: no window boundary falls inside it.
BOUNDS = drift.DriftBounds(window_s=10**8, keep_windows=2, min_images=10, max_class_shift=0.25,
                           max_review_shift=0.15, max_novelty_shift=0.10)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with empty_redis(REDIS) as url:
        yield url


def darkened(path: Path, factor: float = 0.35) -> bytes:
    with Image.open(path) as img:
        dark = ImageEnhance.Brightness(img.convert("RGB")).enhance(factor)
    buf = io.BytesIO()
    dark.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_a_shifted_darkened_feed_drifts(bundles: Bundles, registry_dir: Path, piston_data: Path,
                                        redis_url: str) -> None:
    registry = open_registry(registry_dir)
    registry.promote(bundles.good, reason="test", force=True)
    engine = Engine(ModelFollower(registry), Limits(1_000_000, 8), service_metrics(), 0.2)
    engine.refresh()
    watch = DriftWatch(REDIS, BOUNDS, engine.metrics, lambda: engine.follower.current)
    engine.watchers.add(watch)

    normal = sorted((piston_data / "normal").glob("*.jp*g"))
    bright = [p.read_bytes() for p in normal[:12]]
    for data in bright:
        asyncio.run(engine.classify(data))
    watch.tick(bundles.good)
    assert watch.state is not None and watch.state.judged is not None
    lit = watch.state.judged.mean_brightness

    dark = [darkened(p) for p in normal[12:36]]
    asyncio.run(engine.classify_many(dark))
    asyncio.run(engine.classify_many([b""]))  # an error, counted by kind
    watch.tick(bundles.good)
    state = watch.state
    assert state is not None and state.drifting and state.reasons
    judged = state.judged
    assert judged is not None and judged.images == 36 and judged.errors == {"empty": 1}
    assert judged.mean_brightness is not None and lit is not None
    assert judged.mean_brightness < lit
    pixels = [w * h for w, h in (Image.open(p).size for p in normal[:36])]  # from the headers
    assert judged.mean_megapixels == pytest.approx(sum(pixels) / len(pixels) / 1e6)
    assert engine.model_info().drifting is True
    engine.stop()
