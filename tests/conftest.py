"""Shared fixtures: the real piston data, an isolated BentoML home and registry, images.

BentoML reads BENTOML_HOME when it is first imported, so the session's home is set in
`pytest_configure`, before any test module imports it.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="piston-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def piston_data() -> Path:
    """The real piston data set, from PISTON_DATA_DIR (CI points it at ../shared/data)."""
    path = Path(os.environ.get("PISTON_DATA_DIR", "../shared/data/ac-pistons"))
    if not (path / "normal").is_dir():
        pytest.fail(f"the piston data set is not at {path}: set PISTON_DATA_DIR")
    return path


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
