"""Shadow scoring in one engine with real Redis: exact counts, drops counted, refusals."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from piston import shadow
from piston.bundle import Predictor
from piston.errors import (
    LiveStoreUnavailable,
    PistonError,
    RegistryError,
    StaleProduction,
    UnknownBundle,
)
from piston.follow import ModelFollower
from piston.imaging import preprocess
from piston.live import connect
from piston.registry import Registry
from piston.scoring import decide
from service.engine import Engine, Limits
from service.metrics import service_metrics
from service.shadow import ShadowLimits, ShadowScorer
from tests.conftest import image_bytes, own_redis
from tests.service.conftest import Bundles, empty_redis, open_registry, sample_images

REDIS = own_redis(11)
TTL = 600


@pytest.fixture
def redis_url() -> Iterator[str]:
    with empty_redis(REDIS) as url:
        yield url


def engine_with_shadow(registry: Registry, production: str, busy: Callable[[], bool] | None = None,
                       queue: int = 64, max_wait_s: float = 5.0) -> tuple[Engine, ShadowScorer]:
    registry.promote(production, reason="test", force=True)
    engine = Engine(ModelFollower(registry), Limits(1_000_000, 8), service_metrics(), 0.2)
    engine.refresh()
    scorer = ShadowScorer(registry, REDIS, ShadowLimits(queue, max_wait_s, 8, TTL, 1_000_000),
                          busy or (lambda: engine.batcher.busy), engine.batcher.infer,
                          runtime=engine.follower.runtime, threads=engine.follower.threads)
    engine.watchers.add(scorer)
    return engine, scorer


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def settled(scorer: ShadowScorer, images: int) -> Callable[[], bool]:
    """Every picked image is compared, dropped or failed, and the counts are in Redis."""
    def check() -> bool:
        scorer.tick(None)
        r = shadow.report(REDIS)
        return r.offered == images and r.compared + sum(r.dropped.values()) + r.failed == images
    return check


def test_counts_exactly_what_the_two_models_said(
        bundles: Bundles, registry_dir: Path, piston_data: Path, redis_url: str) -> None:
    registry = open_registry(registry_dir)
    engine, scorer = engine_with_shadow(registry, bundles.good)
    shadow.start(REDIS, registry, bundles.other, 1.0, bundles.good, TTL)
    scorer.tick(bundles.good)
    assert scorer.candidate is not None and scorer.candidate.meta.version == bundles.other
    samples = [p.read_bytes() for _, p in sample_images(piston_data, 8)]
    for data in samples[:12]:  # one at a time: production idle in between, nothing dropped
        asyncio.run(engine.classify(data))
    asyncio.run(engine.classify_many(samples[12:]))
    wait_for(settled(scorer, len(samples)), "the shadow counts")

    good = Predictor.load(registry.fetch(bundles.good))
    other = Predictor.load(registry.fetch(bundles.other))
    pairs = Counter()
    for data in samples:
        array = preprocess(data, good.contract)[None]
        ours = decide(good, good.forward(array))[0].label
        theirs = decide(other, other.forward(array))[0].label
        pairs[ours, theirs] += 1
    report = shadow.report(REDIS)
    assert report.active and report.compared == len(samples) and report.dropped == {}
    assert {(p, c): n for p, row in report.matrix.items() for c, n in row.items()} == pairs
    agreed = sum(n for (p, c), n in pairs.items() if p == c)
    assert report.agreed == agreed
    assert report.agreement == pytest.approx(agreed / len(samples))
    assert report.headline == f"agreement {100 * agreed / len(samples):.1f}% on {len(samples)}" \
        " live images"
    assert len(report.samples) == min(len(samples) - agreed, 8)
    assert all(s.production != s.candidate and s.thumbnail.startswith("data:image/jpeg")
               for s in report.samples)
    assert report.latency_ms.candidate is not None and report.latency_ms.candidate > 0
    engine.stop()


def test_images_dropped_when_busy_are_counted(
        bundles: Bundles, registry_dir: Path, piston_data: Path, redis_url: str) -> None:
    registry = open_registry(registry_dir)
    engine, scorer = engine_with_shadow(registry, bundles.good, busy=lambda: True, queue=1,
                                        max_wait_s=0.05)
    shadow.start(REDIS, registry, bundles.other, 1.0, bundles.good, TTL)
    scorer.tick(bundles.good)
    samples = [p.read_bytes() for _, p in sample_images(piston_data, 3)]
    asyncio.run(engine.classify_many(samples))
    wait_for(settled(scorer, len(samples)), "the drops to be counted")
    report = shadow.report(REDIS)
    assert report.compared == 0 and report.offered == len(samples)
    assert sum(report.dropped.values()) == len(samples) and report.dropped["busy"] >= 1
    assert set(report.dropped) <= {"busy", "queue_full"}
    engine.stop()


def test_start_refuses_what_cannot_be_compared(
        bundles: Bundles, registry_dir: Path, redis_url: str) -> None:
    registry = open_registry(registry_dir)
    with pytest.raises(RegistryError, match="nothing is in production"):
        shadow.start(REDIS, registry, bundles.other, 0.5, "none", TTL)
    registry.promote(bundles.good, reason="test", force=True)
    with pytest.raises(StaleProduction):
        shadow.start(REDIS, registry, bundles.other, 0.5, bundles.other, TTL)
    with pytest.raises(RegistryError, match="is the production bundle"):
        shadow.start(REDIS, registry, bundles.good, 0.5, bundles.good, TTL)
    with pytest.raises(UnknownBundle):
        shadow.start(REDIS, registry, "20990101-000000-000", 0.5, bundles.good, TTL)
    with pytest.raises(LiveStoreUnavailable, match="needs Redis") as err:
        shadow.start("redis://127.0.0.1:1/0", registry, bundles.other, 0.5, bundles.good, TTL)
    assert err.value.status == 409


def test_a_move_ends_the_shadow_and_its_figures_stay(
        bundles: Bundles, registry_dir: Path, redis_url: str) -> None:
    registry = open_registry(registry_dir)
    engine, scorer = engine_with_shadow(registry, bundles.good)
    first = shadow.start(REDIS, registry, bundles.other, 0.5, bundles.good, TTL)
    assert shadow.current(REDIS) == first
    registry.promote(bundles.other, reason="moved elsewhere", force=True)
    engine.refresh()
    scorer.tick(engine.follower.status.version)  # production moved past the spec: it ends
    assert shadow.current(REDIS) is None and scorer.candidate is None
    report = shadow.report(REDIS)
    assert not report.active and report.spec is not None
    assert report.spec.ended_reason == f"production moved to {bundles.other}"
    assert connect(REDIS).ttl(shadow.LAST_KEY) > 0
    engine.stop()


def test_the_cli_starts_reads_and_stops_a_shadow_and_a_promote_reports_it(
        bundles: Bundles, registry_dir: Path, redis_url: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    monkeypatch.setenv("PISTON_REGISTRY", str(registry_dir))
    monkeypatch.setenv("PISTON_REDIS_URL", REDIS)
    open_registry(registry_dir).promote(bundles.good, reason="test", force=True)
    assert main(["models", "shadow", bundles.other, "--share", "0.3"]) == 0
    assert f"shadowing {bundles.other} on 30% of live images" in capsys.readouterr().out
    spec = shadow.current(REDIS)
    assert spec is not None and spec.production == bundles.good and spec.share == 0.3
    connect(REDIS).hset(shadow.counts_key(spec.id), mapping={"compared": 40, "agreed": 39})
    assert main(["models", "shadow"]) == 0
    assert "agreement 97.5% on 40 live images" in capsys.readouterr().out
    assert main(["models", "promote", bundles.other, "--reason", "shadow agreed", "--force"]) == 0
    assert "(shadow: agreement 97.5% on 40 live images)" in capsys.readouterr().out
    assert shadow.current(REDIS) is None
    assert main(["models", "shadow", "--stop"]) == 0
    assert "no shadow was running" in capsys.readouterr().out
    assert main(["models", "shadow", bundles.good, "--share", "1.5"]) == 2
    assert "share 1.5" in capsys.readouterr().err


def test_a_candidate_that_cannot_load_is_refused_with_the_reason(
        bundles: Bundles, registry_dir: Path, redis_url: str) -> None:
    registry = open_registry(registry_dir)
    engine, scorer = engine_with_shadow(registry, bundles.good)
    broken = "20990101-000000-000"
    meta = registry.meta(bundles.good).model_copy(update={"version": broken})
    registry.storage.write(f"bundles/{broken}.json", meta.model_dump_json().encode())
    registry.storage.write(f"bundles/{broken}.bentomodel", b"not a model archive")
    shadow.start(REDIS, registry, broken, 1.0, bundles.good, TTL)
    with pytest.raises(PistonError, match=f"candidate {broken} refused") as err:
        scorer.sync(bundles.good)
    assert err.value.status == 409 and scorer.candidate is None
    scorer.tick(bundles.good)  # refused once: not retried at every tick
    assert scorer.candidate is None and scorer.info()["shadow"]["loaded"] is False
    assert asyncio.run(engine.classify(image_bytes())).model_version == bundles.good
    engine.stop()


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_the_candidate_loads_in_the_configured_runtime(
        bundles: Bundles, registry_dir: Path, redis_url: str, runtime: str) -> None:
    from piston.settings import Settings
    from service.app import make_engine
    from service.evidence import shadow_of, watch_live

    settings = Settings(registry=str(registry_dir), redis_url=REDIS, runtime=runtime)
    registry = open_registry(registry_dir)
    registry.promote(bundles.good, reason="test", force=True)
    engine = make_engine(settings, None)
    engine.refresh()
    watch_live(engine, settings)
    scorer = shadow_of(engine)
    assert scorer is not None
    shadow.start(REDIS, registry, bundles.other, 1.0, bundles.good, TTL)
    scorer.sync(bundles.good)
    production = engine.follower.current
    assert production is not None and scorer.candidate is not None
    assert scorer.candidate.meta.version == bundles.other
    assert scorer.candidate.runtime.name == production.runtime.name == runtime
    assert scorer.candidate.threads == production.threads == 1
    engine.stop()
