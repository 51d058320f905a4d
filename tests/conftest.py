"""Shared fixtures: the real piston data, an isolated BentoML home and registry, images, and
the bundles trained once per run for every test that only needs *a* model.

BentoML reads BENTOML_HOME when it is first imported, so the session's home is set in
`pytest_configure`, before any test module imports it.

The suite runs in two pytest-xdist processes (`-n 2` in pyproject.toml): most of its time is
spent waiting on servers, workers and browsers, so two processes overlap it on two cores.
Each process has its own BentoML home and its own Redis databases (`own_redis`); the two
bundles are trained once per run, by whichever process asks first (`trained`).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="piston-tests-"))

# torch's OpenMP threads sleep when they wait instead of spinning: the two test processes, and
# the servers and workers they start, share two cores, and spinning threads took the cores
# from the others (two trainings at once: 30 CPU s each spinning, 8 s each sleeping, the same
# models). Set before anything here imports torch; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Under pytest-xdist the second process takes the databases 8 below the first's: the suite's
# own databases are 10-15, so no more than two processes fit in Redis's 16.
_REDIS_BAND = 8
_MAX_PROCESSES = 2


def pytest_configure(config: pytest.Config) -> None:
    os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    os.environ.setdefault("MPLBACKEND", "Agg")
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if processes > _MAX_PROCESSES:
        raise pytest.UsageError(f"run with -n {_MAX_PROCESSES} at most: each test process needs "
                                "its own Redis databases (tests/conftest.py own_redis)")


def _process_index() -> int:
    """0 outside pytest-xdist and in its first process (gw0), 1 in the second (gw1)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def own_redis(db: int) -> str:
    """The URL of a module's own database on the Redis at 127.0.0.1:6379 (one the module may
    empty). Under pytest-xdist each test process has its own band of databases, so a module
    emptying its database never meets another process's keys."""
    return f"redis://127.0.0.1:6379/{db - _REDIS_BAND * _process_index()}"


# Fixtures that train on the real data or start servers (moto, redis-server, Celery workers,
# `bentoml serve`, Chromium): a test that uses any of them, directly or through another
# fixture, is in the slow tier. Tests that train or serve in their own body carry the mark.
SLOW_FIXTURES = frozenset({"trained", "moto", "redis_server", "worker", "console", "browser"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if "PYTEST_XDIST_WORKER" in os.environ:
        from tests.scheduling import order_groups

        order_groups(items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """Tests go to the two processes in groups (tests/scheduling.py), unless `--dist` asks
    pytest-xdist for another way."""
    if config.getvalue("dist") != "load":
        return None
    from tests.scheduling import ProcessGroups

    return ProcessGroups(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def piston_data() -> Path:
    """The real piston data set, from PISTON_DATA_DIR (CI points it at ../shared/data)."""
    path = Path(os.environ.get("PISTON_DATA_DIR", "../shared/data/ac-pistons"))
    if not (path / "normal").is_dir():
        pytest.fail(f"the piston data set is not at {path}: set PISTON_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def fabric_data(piston_data: Path) -> Path:
    """A second inspection set (fabric), from PISTON_FABRIC_DIR (default: beside the pistons)."""
    path = Path(os.environ.get("PISTON_FABRIC_DIR", piston_data.parent / "fabric-stain"))
    if not (path / "stain").is_dir():
        pytest.fail(f"the fabric data set is not at {path}: set PISTON_FABRIC_DIR")
    return path


def made_up_images(per_kind: int = 10, seed: int = 0) -> dict[str, list[bytes]]:
    """Images that are no part at all, by kind: noise, blank, text and checkerboards."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    out: dict[str, list[bytes]] = {"noise": [], "blank": [], "text": [], "checkerboard": []}
    for i in range(per_kind):
        side = int(rng.integers(60, 300))
        out["noise"].append(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        out["blank"].append(np.full((side, side, 3), [(0,) * 3, (255,) * 3, colour][min(i, 2)],
                                    dtype=np.uint8))
        page = Image.new("RGB", (side, side), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        for row in range(0, side, 12):
            draw.text((4, row), f"INSPECTION REPORT lot {i} " * 3, fill=(0, 0, 0))
        out["text"].append(np.asarray(page))
        square = int(rng.integers(3, 40))
        yy, xx = np.mgrid[0:side, 0:side]
        board = ((yy // square + xx // square) % 2 * 255).astype(np.uint8)
        out["checkerboard"].append(np.repeat(board[..., None], 3, 2))
    return {kind: [_png(pixels) for pixels in images] for kind, images in out.items()}


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Trained:
    """Bundles trained on the real pistons once per session, in a registry nobody moves."""

    registry: Path  # a local registry holding both; nothing in production
    good: str  # bn_cnn, 12 epochs
    other: str  # the seed recipe, 6 epochs: a second, different bundle


# Both must be promotable without --force (the console tests move production between them),
# so they are measured against a bar only a model that never gets a class right fails.
LOW_BAR = (0.3, 0.0, 0.0)


def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every test process of this run shares: pytest's base temporary folder, or
    under pytest-xdist the one above each process's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between this run's test processes (released if one dies)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def trained(piston_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The run's two real bundles (seconds each); copy them with `Registry.copy_from`.

    Trained by the first test process that asks, while the other waits on the lock; the
    versions are written last, so a process that died half-way leaves them to the next."""
    from piston.registry import Registry
    from piston.storage import open_storage
    from training.config import load_config
    from training.pipeline import GateBar, train_bundle

    root = run_dir(tmp_path_factory) / "trained"
    root.mkdir(exist_ok=True)
    done = root / "versions.json"
    with file_lock(root / "lock"):
        if not done.is_file():
            shutil.rmtree(root / "registry", ignore_errors=True)
            registry = Registry(open_storage(root / "registry"))
            versions = []
            for recipe, overrides in (("bn_cnn", {"epochs": 12}),
                                      ("seed", {"epochs": 6, "seed": 1})):
                outcome = train_bundle(str(piston_data),
                                       load_config(recipe, overrides=overrides), registry,
                                       GateBar(*LOW_BAR), root / "runs", 40_000_000)
                assert registry.meta(outcome.version).gates_passed, f"{recipe} failed the bar"
                versions.append(outcome.version)
            done.write_text(json.dumps(versions))
    good, other = json.loads(done.read_text())
    return Trained(root / "registry", good, other)


@pytest.fixture
def registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh registry and runs folder for one test, through the settings' env vars."""
    monkeypatch.setenv("PISTON_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("PISTON_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "registry"


def image_bytes(
    color: tuple[int, int, int] = (120, 80, 40),
    size: tuple[int, int] = (80, 80),
    fmt: str = "JPEG",
    mode: str = "RGB",
) -> bytes:
    """A small synthetic image, encoded."""
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def synthetic_dataset(
    root: Path,
    classes: dict[str, int],
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
    fmt: str = "PNG",
) -> Path:
    """Folder-per-class images whose class is visible (a distinct hue plus noise)."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        hue = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 181 + 30) % 256])
        for i in range(count):
            noise = rng.integers(-60, 60, size=(size[1], size[0], 3))
            pixels = np.clip(hue + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.{fmt.lower()}", format=fmt)
    return root


@pytest.fixture
def copy_of_pistons(piston_data: Path, tmp_path: Path) -> Iterator[Path]:
    """A writable copy of the piston data (the original is read-only)."""
    dest = tmp_path / "pistons"
    shutil.copytree(piston_data, dest)
    yield dest
