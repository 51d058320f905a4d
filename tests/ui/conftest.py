"""Real parts for the console tests: the session's two bundles, a scoring job's outputs, and
`bentoml serve`.

One server (and one worker) for the whole module: the tests drive a real Chromium against it
in order, each starting from wherever production is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Trained, made_up_images, own_redis
from tests.service.conftest import running_server
from tests.ui.browser import chromium
from tests.workers.conftest import start_worker

REDIS_URL = own_redis(15)  # its own database: the fixture empties it
TOKEN = "console-test-token-0123456789"
POLL_S = "0.5"


@dataclass(frozen=True)
class Console:
    url: str  # the service's base URL; the console is at {url}/ui/
    registry: Path
    first: str  # in production when the module starts
    second: str
    batch: Path  # a folder of images for scoring jobs
    results: Path  # where the scoring job writes
    redis_url: str = REDIS_URL
    token: str = TOKEN


def copy_trained(registry: Path, trained: Trained) -> list[str]:
    """The session's two bundles (both pass their bar, so both can be promoted) in `registry`."""
    from piston.registry import Registry
    from piston.storage import open_storage

    store, source = Registry(open_storage(registry)), Registry(open_storage(trained.registry))
    for version in (trained.good, trained.other):
        store.copy_from(source, version)
    # The seed-recipe bundle first (in production): it is unsure of some real photos, so a
    # scoring job flags images that have thumbnails; bn_cnn flags only the non-images.
    return [trained.other, trained.good]


def batch_folder(root: Path, data: Path) -> Path:
    """Real piston photos to score, images that are no part (flagged novel: the review queue
    gets real images to show even when the model is sure of every piston), and two files that
    are not images (always flagged)."""
    folder = root / "batch" / "line-2"
    folder.mkdir(parents=True)
    for cls in ("normal", "defect_1", "defect_2"):
        for path in sorted((data / cls).glob("*.jp*g"))[:4]:
            shutil.copy(path, folder / path.name)
    for kind, images in made_up_images(per_kind=1, seed=3).items():
        if kind != "blank":
            (folder / f"odd_{kind}.png").write_bytes(images[0])
    for name in ("scan_0.jpeg", "scan_1.jpeg"):
        (folder / name).write_bytes(b"\xff\xd8 not really a jpeg")
    return root / "batch"


@contextmanager
def tiny_registry(trained: Trained, prefix: str) -> Iterator[tuple[Path, str, str]]:
    """A work folder whose `registry` holds the session's two bundles, the first in production."""
    from piston.registry import Registry
    from piston.storage import open_storage

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        first, second = copy_trained(root / "registry", trained)
        Registry(open_storage(root / "registry")).promote(first, "console tests: start")
        yield root, first, second
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def console(piston_data: Path, trained: Trained) -> Iterator[Console]:
    import redis

    with tiny_registry(trained, "piston-console-") as (root, first, second):
        redis.Redis.from_url(REDIS_URL).flushdb()
        # Retrain sets are built under the job's output prefix: a root retrains may read.
        roots = json.dumps([str(piston_data), str(root / "results")])
        env = {"PISTON_REGISTRY": str(root / "registry"), "PISTON_POLL_INTERVAL_S": POLL_S,
               "PISTON_ADMIN_TOKEN": TOKEN, "PISTON_REDIS_URL": REDIS_URL,
               "PISTON_DATA_DIR": str(piston_data), "PISTON_RETRAIN_DATASET_ROOTS": roots,
               "PISTON_JOB_ROOTS": json.dumps([str(root / "batch"), str(root / "results")])}
        worker_env = {**os.environ, **env, "BENTOML_HOME": str(root / "worker-home"),
                      "PISTON_RUNS_DIR": str(root / "worker-runs")}
        worker = start_worker(worker_env, root / "worker.log", concurrency=1, name="console")
        try:
            with running_server("source", env, root / "server.log") as url:
                yield Console(url, root / "registry", first, second,
                              batch_folder(root, piston_data), root / "results")
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    """One Chromium for the module, the admin token already in the tab's session storage."""
    with chromium() as driver:
        driver.get(f"{console.url}/ui/")
        driver.execute_script("sessionStorage.setItem('piston-admin-token', arguments[0])",
                              console.token)
        yield driver


def screenshot(driver: Any, name: str) -> None:
    """Save the view for docs/serving.md when PISTON_UI_SCREENSHOTS names a folder (e.g. docs)."""
    folder = os.environ.get("PISTON_UI_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    path = Path(folder) / f"console-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)
