"""Shadow scoring and the drift watch on a real `piston serve` (BentoML, 2 workers) and Redis."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from piston.bundle import Predictor
from piston.imaging import preprocess
from piston.live import connect
from piston.scoring import decide
from tests.conftest import own_redis
from tests.service.conftest import (
    Bundles,
    open_registry,
    running_server,
    sample_images,
    serving_registry,
)
from tests.service.test_drift_watch import darkened

REDIS = own_redis(13)  # its own database: the fixture empties it
TOKEN = "live-server-token-of-24-chars"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WINDOW_S = 30


@dataclass(frozen=True)
class Live:
    url: str
    registry: Path


@pytest.fixture(scope="module")
def served(bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    registry_dir = serving_registry(bundles, root)
    connect(REDIS).flushdb()
    env = {"PISTON_REGISTRY": str(registry_dir), "PISTON_POLL_INTERVAL_S": "0.5",
           "PISTON_ADMIN_TOKEN": TOKEN, "PISTON_REDIS_URL": REDIS, "PISTON_LIVE_FLUSH_S": "0.2",
           "PISTON_SHADOW_QUEUE": "4", "PISTON_SHADOW_MAX_WAIT_S": "2",
           "PISTON_DRIFT_WINDOW_S": str(WINDOW_S), "PISTON_DRIFT_MIN_IMAGES": "10",
           "PISTON_MAX_BATCH_IMAGES": "32"}
    with running_server("source", env, root / "server.log", workers=2) as url:
        yield Live(url, registry_dir)
    connect(REDIS).flushdb()


@pytest.fixture
def live(served: Live) -> str:
    return served.url


def wait_for(condition: Callable[[], Any], what: str, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def start_shadow(url: str, version: str, expected: str) -> None:
    response = httpx.post(f"{url}/admin/shadow", headers=AUTH, timeout=60,
                          json={"version": version, "share": 1.0, "expected": expected})
    assert response.status_code == 200, response.text
    assert response.json()["loaded"] is True

    def both_loaded() -> bool:  # each new connection lands on either worker
        return all(httpx.get(f"{url}/model", timeout=10).json()["shadow"]["version"] == version
                   for _ in range(24))
    wait_for(both_loaded, "both workers to load the candidate")


def shadow_report(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/admin/shadow", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def accounted(url: str, images: int) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        r = shadow_report(url)
        done = r["compared"] + sum(r["dropped"].values()) + r["failed"]
        return r if r["offered"] == images and done == images else None
    return check


# First: the only traffic in its windows is the shifted feed.
def test_a_shifted_darkened_feed_is_marked_drifting(live: str, bundles: Bundles,
                                                   piston_data: Path) -> None:
    dark = [darkened(p) for p in sorted((piston_data / "normal").glob("*.jp*g"))[:40]]
    with httpx.Client(base_url=live, timeout=30) as client:
        for data in dark:
            assert client.post("/classify", content=data,
                               headers={"content-type": "image/jpeg"}).status_code == 200

    def drifting() -> dict[str, Any] | None:
        model = httpx.get(f"{live}/model", timeout=10).json()
        return model if model["drifting"] else None
    try:
        model = wait_for(drifting, "/model to say drifting", seconds=WINDOW_S)
    except AssertionError:
        monitor = httpx.get(f"{live}/admin/monitor", headers=AUTH, timeout=10).json()
        raise AssertionError(f"not drifting: {monitor['versions'][0]}") from None
    assert model["drift"]["reasons"]
    monitor = httpx.get(f"{live}/admin/monitor", headers=AUTH, timeout=10).json()
    assert monitor["drifting"] is True and monitor["serving"] == bundles.good
    serving = monitor["versions"][0]
    assert serving["version"] == bundles.good and serving["drifting"] is True
    assert serving["test_split"]["class_mix"] and serving["judged"]["mean_brightness"] < 0.4
    metrics = httpx.get(f"{live}/metrics", timeout=10).text
    assert f'piston_drifting{{version="{bundles.good}"}} 1.0' in metrics


def test_shadow_counts_a_known_set_exactly(served: Live, bundles: Bundles,
                                           piston_data: Path) -> None:
    live = served.url
    start_shadow(live, bundles.other, bundles.good)
    samples = [p.read_bytes() for _, p in sample_images(piston_data, 6)]
    with httpx.Client(base_url=live, timeout=30) as client:
        # One at a time, each compared before the next is sent: production stays idle while
        # the candidate scores, so nothing may be dropped, however slow the machine is.
        for i, data in enumerate(samples):
            if i < 10:
                response = client.post("/classify", content=data,
                                       headers={"content-type": "image/jpeg"})
            else:
                response = client.post("/classify_batch",
                                       files=[("images", ("a.jpg", data, "image/jpeg"))])
            assert response.status_code == 200
            report = wait_for(accounted(live, i + 1), f"image {i} to be accounted for")
    assert report["compared"] == len(samples) and report["dropped"] == {}

    registry = open_registry(served.registry)
    good = Predictor.load(registry.fetch(bundles.good))
    other = Predictor.load(registry.fetch(bundles.other))
    pairs: Counter[tuple[str, str]] = Counter()
    for data in samples:
        array = preprocess(data, good.contract)[None]
        pairs[decide(good, good.forward(array))[0].label,
              decide(other, other.forward(array))[0].label] += 1
    matrix = {(p, c): n for p, row in report["matrix"].items() for c, n in row.items()}
    assert matrix == pairs
    agreed = sum(n for (p, c), n in pairs.items() if p == c)
    assert report["agreed"] == agreed
    assert report["agreement"] == pytest.approx(agreed / len(samples))


def test_images_dropped_when_busy_are_counted(live: str, bundles: Bundles,
                                              piston_data: Path) -> None:
    start_shadow(live, bundles.other, bundles.good)  # a fresh shadow: fresh counts
    files = [("images", (f"{i}.jpg", p.read_bytes(), "image/jpeg"))
             for i, (_, p) in enumerate(sample_images(piston_data, 8))]

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=live, timeout=60) as client:
            answers = await asyncio.gather(*(client.post("/classify_batch", files=files)
                                             for _ in range(8)))
        assert all(a.status_code == 200 for a in answers)

    asyncio.run(burst())
    sent = 8 * len(files)
    report = wait_for(accounted(live, sent), "every picked image to be accounted for")
    assert sum(report["dropped"].values()) > 0, report  # a queue of 4 per worker overflows
    assert report["compared"] + sum(report["dropped"].values()) + report["failed"] == sent


def test_promote_reports_the_shadow_and_ends_it(live: str, bundles: Bundles) -> None:
    report = shadow_report(live)
    assert report["active"] and report["spec"]["version"] == bundles.other
    response = httpx.post(f"{live}/admin/promote", headers=AUTH, timeout=60,
                          json={"version": bundles.other, "reason": "shadow agreed",
                                "expected": bundles.good, "force": True})
    assert response.status_code == 200, response.text
    assert response.json()["shadow"] == report["headline"]
    assert response.json()["shadow"].startswith("agreement ")
    after = shadow_report(live)
    assert not after["active"] and after["spec"]["ended_reason"] == f"promoted {bundles.other}"


def test_bad_shadow_requests_get_a_clear_4xx(live: str, bundles: Bundles) -> None:
    cases = [({"version": bundles.good, "share": 2, "expected": bundles.other}, 422),
             ({"version": bundles.good, "share": 0.5, "expected": "none"}, 409),
             ({"version": "20990101-000000-000", "share": 0.5, "expected": bundles.other}, 404),
             ({"version": bundles.other, "share": 0.5, "expected": bundles.other}, 409)]
    for body, status in cases:
        response = httpx.post(f"{live}/admin/shadow", headers=AUTH, json=body, timeout=30)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()) == {"error", "kind"}
    assert httpx.post(f"{live}/admin/shadow", json=cases[0][0], timeout=30).status_code == 401
