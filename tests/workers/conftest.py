"""Real parts for the worker tests: a Redis server of their own (AOF on, as compose runs it, on a
free port: the restart test stops and starts it), moto's S3 server, Celery worker processes.

The S3 registry gets the session's `good` bundle (tests/conftest.py; promoted, used for scoring)
and a deliberately `weak` one trained here (for champion/challenger). Workers run as `piston
worker` subprocesses with their own BentoML home, so they fetch bundles from S3 like production.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Trained

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "inspections"
REGISTRY = "s3://models/registry"
METADATA = {"asset-id": "AC-7731", "location": "line-2", "camera": "cam-04"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REDIS_PORT = free_port()  # chosen at collection, served by the `redis_server` fixture
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class MotoServer:
    """moto's standalone S3 server on a free loopback port; the code sees only its URL."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> Any:
        from piston.storage.s3 import s3_client

        return s3_client(self.url)


@dataclass
class Worker:
    """A `piston worker` subprocess (Celery prefork: one main process and its children)."""

    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def children(self) -> set[int]:
        """Pids of the worker's pool processes (read from /proc: no `ps` needed)."""
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.add(int(stat.parent.name))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="piston-workers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def moto(aws_env: None, work_dir: Path) -> Iterator[MotoServer]:
    server = MotoServer(work_dir).start()
    yield server
    server.stop()


class RedisServer:
    """A `redis-server` with an append-only file, which can be stopped and started again."""

    def __init__(self, work_dir: Path, port: int) -> None:
        self.port = port
        self.dir = work_dir / f"redis-{port}"
        self.dir.mkdir(exist_ok=True)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        with (self.dir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--appendonly", "yes", "--dir", str(self.dir), "--save", ""],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): the append-only file is flushed, as `docker stop` does."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture(scope="session")
def redis_server(work_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(work_dir, REDIS_PORT).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def corrupt_jpeg(piston_data: Path) -> bytes:
    """A real piston JPEG cut in half: the header decodes, the pixels do not."""
    data = (piston_data / "normal" / "normal_1.jpeg").read_bytes()
    return data[: len(data) // 2]


def upload_pistons(client: Any, piston_data: Path, bucket: str, prefix: str,
                   corrupt: bool = True) -> list[str]:
    """Upload the real images (every 5th one with inspection metadata); returns their keys."""
    from concurrent.futures import ThreadPoolExecutor

    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    files = sorted(p for p in piston_data.glob("*/*.jpeg"))

    def put(index_path: tuple[int, Path]) -> str:
        index, path = index_path
        key = f"{prefix}/{path.parent.name}/{path.name}"
        metadata = METADATA if index % 5 == 0 else {}
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), Metadata=metadata)
        return key

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(put, enumerate(files)))
    if corrupt:
        key = f"{prefix}/normal/corrupt_0.jpeg"
        client.put_object(Bucket=bucket, Key=key, Body=corrupt_jpeg(piston_data))
        keys.append(key)
    return keys


@pytest.fixture(scope="session")
def s3_pistons(moto: MotoServer, piston_data: Path) -> dict[str, Any]:
    """The piston images on S3: `pistons/` (training layout) and `batch/` (plus a corrupt one)."""
    client = moto.client()
    client.create_bucket(Bucket="models")
    return {
        "dataset": f"s3://{BUCKET}/pistons",
        "dataset_keys": upload_pistons(client, piston_data, BUCKET, "pistons", corrupt=False),
        "batch": f"s3://{BUCKET}/batch",
        "batch_keys": upload_pistons(client, piston_data, BUCKET, "batch"),
    }


def train_into(registry_uri: str, endpoint: str, dataset: str, runs: Path,
               overrides: dict[str, Any]) -> str:
    from piston.registry import Registry
    from piston.storage import open_storage
    from training.config import load_config
    from training.pipeline import GateBar, train_bundle

    registry = Registry(open_storage(registry_uri, endpoint))
    outcome = train_bundle(dataset, load_config("seed", None, overrides), registry, GateBar(),
                           runs, 40_000_000, s3_endpoint_url=endpoint)
    return outcome.version


@pytest.fixture(scope="session")
def bundles(moto: MotoServer, s3_pistons: dict[str, Any], work_dir: Path,
            trained: Trained) -> dict[str, str]:
    """A good bundle in production and a weak one beside it, both in the S3 registry."""
    from piston.registry import Registry
    from piston.storage import open_storage

    registry = Registry(open_storage(REGISTRY, moto.url))
    registry.copy_from(Registry(open_storage(trained.registry)), trained.good)
    weak = train_into(REGISTRY, moto.url, s3_pistons["dataset"], work_dir / "runs",
                      {"epochs": 1, "lr": 1e-6})
    registry.promote(trained.good, "tests: good bundle", force=True)
    return {"good": trained.good, "weak": weak}


def worker_env(work_dir: Path, s3_url: str, registry: str, **extra: str) -> dict[str, str]:
    home = Path(tempfile.mkdtemp(prefix="worker-", dir=work_dir))
    env = dict(os.environ)
    env.update(CREDENTIALS)
    env.update({
        "PISTON_REDIS_URL": REDIS_URL,
        "PISTON_S3_ENDPOINT_URL": s3_url,
        "PISTON_REGISTRY": registry,
        "PISTON_RUNS_DIR": str(home / "runs"),
        "BENTOML_HOME": str(home / "bentoml"),
        "PISTON_SCORE_SHARD_SIZE": "32",
        # Slow enough that a test can catch a shard half-done, fast enough for the suite.
        "PISTON_SCORE_MAX_IMAGES_PER_SECOND": "80",
        "PISTON_JOB_RETRIES": "2",
        "PISTON_JOB_RETRY_DELAY_S": "0.5",
        "PISTON_JOB_MAX_WORKER_LOST": "1",  # a shard whose process died twice fails its job
        # A message lost in the Redis restart (test_faults.py) is re-sent after 20 s, not 75 s
        # (the defaults: 60 s quiet, a sweep every 15 s); re-sends are idempotent.
        "PISTON_JOB_STALE_AFTER_S": "20",
        "PISTON_JOB_WATCH_EVERY_S": "2",
        # Few-epoch models: gates low enough to pass, so the champion comparison decides.
        "PISTON_GATE_MIN_ACCURACY": "0.5",
        "PISTON_GATE_MIN_CLASS_F1": "0.2",
        "PISTON_GATE_MIN_CLASS_RECALL": "0.2",
        "PISTON_RETRAIN_DATASET_ROOTS": f'["s3://{BUCKET}"]',
        "PISTON_JOB_ROOTS": json.dumps([f"s3://{BUCKET}", "s3://doomed", str(work_dir)]),
    })
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path, concurrency: int = 2,
                 name: str = "test", queues: str = "score,retrain") -> Worker:
    from piston.jobs import client

    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "-c", str(concurrency),
             "-n", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO", "--queues", queues],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    worker = Worker(proc, log, env)
    app = client(env["PISTON_REDIS_URL"])  # answers pings on any queue
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited: {log.read_text()[-2000:]}")
        replies = app.control.ping(timeout=0.5) or []
        if any(f"{name}-{os.getpid()}@" in next(iter(r)) for r in replies):
            return worker
    worker.stop()
    raise RuntimeError(f"the worker did not answer pings: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def worker(moto: MotoServer, bundles: dict[str, str], redis_url: str,
           work_dir: Path) -> Iterator[Worker]:
    w = start_worker(worker_env(work_dir, moto.url, REGISTRY), work_dir / "worker.log")
    yield w
    w.stop()


def wait_job(job_id: str, timeout: float = 120.0,
             on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    from piston.jobs import TERMINAL, job_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(REDIS_URL, job_id)
        if on_status:
            on_status(status)
        if status["state"] in TERMINAL:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {status}")


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in io.BytesIO(data).read().decode().splitlines() if line]
