"""Fixtures for the service tests: the session's two real bundles, servers on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from piston.registry import Registry
from piston.storage import open_storage
from tests.conftest import Trained

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Bundles:
    registry: Path  # a registry holding both bundles, nothing in production
    good: str  # gates pass (12 epochs)
    other: str  # a second, different bundle (another recipe)


@pytest.fixture(scope="session")
def bundles(trained: Trained) -> Bundles:
    """The session's two bundles (tests/conftest.py), shared by the whole service suite."""
    return Bundles(trained.registry, trained.good, trained.other)


@pytest.fixture
def registry_dir(bundles: Bundles, tmp_path: Path) -> Path:
    """A private copy of the two-bundle registry, so each test moves its own pointer."""
    dest = tmp_path / "registry"
    shutil.copytree(bundles.registry, dest)
    return dest


def open_registry(path: Path) -> Registry:
    return Registry(open_storage(path))


def serving_registry(bundles: Bundles, root: Path) -> Path:
    """A private copy of the two-bundle registry under `root`, the good bundle in production:
    what a module's live server serves."""
    dest = root / "registry"
    shutil.copytree(bundles.registry, dest)
    open_registry(dest).promote(bundles.good, reason="serve", force=True)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerUrl(str):
    """A running server's base URL; `pid` is its `piston serve` process (a session leader)."""

    pid: int


@contextmanager
def running_server(target: str, env: dict[str, str], log: Path,
                   workers: int = 1) -> Iterator[ServerUrl]:
    """A real `piston serve` (BentoML) process on 127.0.0.1; yields its base URL once ready."""
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "serve", "--port", str(port),
               "--workers", str(workers)]
    if target != "source":
        command += ["--bento", target]
    full_env = {**os.environ, **env, "BENTOML_DO_NOT_TRACK": "true"}
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=out,
                                start_new_session=True)
    url = ServerUrl(f"http://127.0.0.1:{port}")
    url.pid = proc.pid
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sample_images(data: Path, per_class: int) -> list[tuple[str, Path]]:
    """(true label, path) for the first images of each class."""
    out = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        out += [(folder.name, p) for p in sorted(folder.glob("*.jp*g"))[:per_class]]
    return out


@contextmanager
def empty_redis(url: str) -> Iterator[str]:
    """A Redis database of the test's own (shadow, drift), emptied before and after it."""
    from piston.live import connect

    connect(url).flushdb()
    try:
        yield url
    finally:
        connect(url).flushdb()
