"""Upload floods cannot exhaust a worker's memory: a real server under 64 clients posting
20 MB images at once keeps its worker's RSS under a stated bound, and refuses with 503."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import (
    Bundles,
    ServerUrl,
    running_server,
    serving_registry,
)

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
CLIENTS = 64
REQUESTS_PER_CLIENT = 2  # bounded: the flood ends on its own
BODY_BYTES = 20_000_000  # about; just under the default 20 MiB upload limit
# Growth of the worker's peak RSS over its idle RSS that the flood may cause. The default
# budget (64 MiB of bodies) lets 3 such requests in at once, each holding its body and the
# decoded 6.7 MP image (20 MB each); without the budget all 64 would be held at once.
RSS_BOUND_MB = 600


def noise_png() -> bytes:
    """Incompressible RGB noise: a PNG of about BODY_BYTES that decodes to as many bytes."""
    side = int((BODY_BYTES / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def descendants(root: int) -> list[int]:
    """`root` and every process under it (read from /proc: BentoML's workers are children)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def server(bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerUrl]:
    root = tmp_path_factory.mktemp("flood")
    registry_dir = serving_registry(bundles, root)
    env = {"PISTON_REGISTRY": str(registry_dir)}
    with running_server("source", env, root / "server.log", workers=1) as url:
        yield url


@pytest.mark.timeout(1200)  # run alone, setup trains the session's bundles first
def test_a_flood_of_20_mb_uploads_keeps_the_worker_under_its_memory_bound(
        server: ServerUrl) -> None:
    body = noise_png()
    assert 0.9 * BODY_BYTES < len(body) <= 20 * 1024 * 1024
    headers = {"content-type": "image/png"}
    with httpx.Client(base_url=server, timeout=120) as client:  # warm: one large decode
        assert client.post("/classify", content=body, headers=headers).status_code == 200
    # the process that serves: BentoML's worker, the largest of the server's processes
    worker = max(descendants(server.pid), key=lambda pid: memory_kb(pid, "VmRSS"))
    idle = memory_kb(worker, "VmRSS")
    answers: list[tuple[int, str, str | None]] = []
    stop = threading.Event()
    samples: list[int] = []

    def sample() -> None:
        while not stop.wait(0.02):
            samples.append(memory_kb(worker, "VmRSS"))

    def flood() -> None:
        with httpx.Client(base_url=server, timeout=180) as client:
            for _ in range(REQUESTS_PER_CLIENT):
                r = client.post("/classify", content=body, headers=headers)
                kind = r.json().get("kind", "") if r.status_code != 200 else ""
                answers.append((r.status_code, kind, r.headers.get("retry-after")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients = [threading.Thread(target=flood) for _ in range(CLIENTS)]
    start = time.monotonic()
    for t in clients:
        t.start()
    for t in clients:
        t.join(timeout=600)
    took = time.monotonic() - start
    stop.set()
    sampler.join()
    peak = max(memory_kb(worker, "VmHWM"), *samples)
    statuses = [s for s, _, _ in answers]
    log.info("flood: %d clients x %d x %.1f MB in %.1f s: %d x 200, %d x 503; worker RSS idle"
             " %.0f MB, peak %.0f MB (+%.0f MB, bound +%d MB)", CLIENTS, REQUESTS_PER_CLIENT,
             len(body) / 1e6, took, statuses.count(200), statuses.count(503), idle / 1024,
             peak / 1024, (peak - idle) / 1024, RSS_BOUND_MB)
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    assert set(statuses) <= {200, 503}, sorted(set(answers))
    assert 200 in statuses and 503 in statuses
    assert all(kind == "overloaded" and after for s, kind, after in answers if s == 503)
    assert (peak - idle) / 1024 < RSS_BOUND_MB
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/livez").status_code == 200
