"""Heavy images cannot freeze a worker: a real server under 8 clients posting 36 MP PNGs."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import image_bytes
from tests.service.conftest import Bundles, running_server, serving_registry

HEAVY_CLIENTS = 8
LIGHT_REQUESTS = 300  # at least, and for at least LIGHT_SECONDS
LIGHT_SECONDS = 10.0


@pytest.fixture(scope="module")
def one_worker(bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("overload")
    registry_dir = serving_registry(bundles, root)
    env = {"PISTON_REGISTRY": str(registry_dir), "PISTON_DECODE_THREADS": "1",
           "PISTON_DECODE_QUEUE": "2"}
    with running_server("source", env, root / "server.log", workers=1) as url:
        yield url


def heavy_png() -> bytes:
    """6000x6000 16-bit grayscale: about 80 KB on the wire, 36 MP to decode."""
    ramp = np.tile(np.linspace(0, 65535, 6000, dtype=np.uint16), (6000, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    return buf.getvalue()


def test_a_light_client_is_served_while_eight_post_huge_pngs(one_worker: str) -> None:
    url = one_worker
    body = heavy_png()
    stop = threading.Event()
    heavy_statuses: list[int] = []
    bad: list[str] = []

    def heavy_client() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not stop.is_set():
                response = client.post("/classify", content=body,
                                       headers={"content-type": "image/png"})
                heavy_statuses.append(response.status_code)
                if response.status_code == 503:
                    if "retry-after" not in response.headers:
                        bad.append(f"503 without Retry-After: {response.text}")
                    stop.wait(float(response.headers.get("retry-after", "1")))
                elif response.status_code != 200:
                    bad.append(f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=heavy_client) for _ in range(HEAVY_CLIENTS)]
    for t in threads:
        t.start()
    latencies = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 120
            while len(heavy_statuses) < HEAVY_CLIENTS:  # every heavy client is in play
                assert time.monotonic() < deadline, "the heavy clients got no answer"
                time.sleep(0.1)
            light = image_bytes()
            until = time.monotonic() + LIGHT_SECONDS
            while len(latencies) < LIGHT_REQUESTS or time.monotonic() < until:
                start = time.perf_counter()
                response = client.post("/classify", content=light,
                                       headers={"content-type": "image/jpeg"})
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
            assert client.get("/livez").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    p99 = float(np.percentile(latencies, 99))
    logging.getLogger(__name__).info(
        "light /classify: %d requests, p50 %.1f ms, p99 %.1f ms; heavy answers: %d x 200,"
        " %d x 503", len(latencies), np.percentile(latencies, 50) * 1000, p99 * 1000,
        heavy_statuses.count(200),
        heavy_statuses.count(503))
    assert bad == []
    assert 200 in heavy_statuses  # the heavy images are decoded too, not all refused
    assert p99 < 0.2, f"light /classify p99 {p99 * 1000:.0f} ms under heavy load"
