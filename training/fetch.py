"""`piston data fetch`: download the public piston set, check it, and unpack it atomically."""

from __future__ import annotations

import logging
import tarfile
import tempfile
import zipfile
from pathlib import Path

import httpx
from tqdm import tqdm

from piston.errors import DataError, ImageError
from piston.imaging import decode_image
from training.dataset import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

DEFAULT_URL = "https://github.com/PerceptiLabs/AC-Piston-Checks/archive/HEAD.zip"

EXPECTED_CLASSES = frozenset({"defect_1", "defect_2", "normal"})


def fetch_dataset(url: str, dest: Path, timeout_s: float = 60.0) -> dict[str, int]:
    """Download `url` (a zip or tar archive holding a `data/` folder) into `dest`.

    Nothing appears at `dest` unless the archive downloaded whole, holds class folders of
    images, and every image decodes: it is checked in a temporary folder beside `dest`
    and then renamed into place.
    """
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} already exists and is not empty: choose another --dest")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        archive = Path(tmp) / "archive"
        _download(url, archive, timeout_s)
        unpacked = Path(tmp) / "unpacked"
        _unpack(archive, unpacked)
        data = _find_data_folder(unpacked)
        counts = _verify(data)
        if dest.exists():
            dest.rmdir()
        data.rename(dest)
    log.info("fetched %d images into %s", sum(counts.values()), dest)
    return counts


def _download(url: str, target: Path, timeout_s: float) -> None:
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise DataError(f"download of {url} failed: HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0) or None
            with (
                target.open("wb") as fh,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc="download",
                    leave=False,
                    disable=None,
                ) as bar,
            ):
                for chunk in response.iter_bytes():
                    fh.write(chunk)
                    bar.update(len(chunk))
    except httpx.HTTPError as err:
        raise DataError(f"download of {url} failed: {err}") from None


def _unpack(archive: Path, into: Path) -> None:
    into.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataError(f"archive member {member!r} points outside the archive")
                zf.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(into, filter="data")
        else:
            raise DataError("the download is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise DataError(f"the downloaded archive is damaged: {err}") from None


def _find_data_folder(root: Path) -> Path:
    """The `data/` folder of the repository archive (its top folder is named after the commit)."""
    candidates = sorted(p for p in root.rglob("data") if p.is_dir())
    for candidate in candidates:
        if any(d.is_dir() and d.name in EXPECTED_CLASSES for d in candidate.iterdir()):
            return candidate
    raise DataError("the archive holds no data/ folder with class sub-folders")


def _verify(data: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        images = [f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
        for image in images:
            try:
                decode_image(image.read_bytes())
            except ImageError as err:
                raise DataError(f"{folder.name}/{image.name} in the download: {err}") from None
        counts[folder.name] = len(images)
    missing = EXPECTED_CLASSES - {name for name, n in counts.items() if n}
    if missing:
        raise DataError(f"the download lacks images for class(es) {', '.join(sorted(missing))}")
    return counts
