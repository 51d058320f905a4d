"""`piston data fetch`: the real download code against a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from piston.errors import DataError
from training.fetch import fetch_dataset

CLASSES = ("defect_1", "defect_2", "normal")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over a folder; yields its base URL and the folder."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def build_archive(
    target: Path, piston_data: Path, per_class: int = 4, corrupt: bool = False
) -> None:
    """A zip shaped like GitHub's archive of the repository: <repo>-<ref>/data/<class>/."""
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("AC-Piston-Checks-main/README.md", "the repository")
        for name in CLASSES:
            for image in sorted((piston_data / name).iterdir())[:per_class]:
                zf.write(image, f"AC-Piston-Checks-main/data/{name}/{image.name}")
        if corrupt:
            zf.writestr("AC-Piston-Checks-main/data/normal/broken.jpeg", b"\xff\xd8\xff garbage")


def test_fetch_downloads_checks_and_unpacks(
    server: tuple[str, Path], piston_data: Path, tmp_path: Path
) -> None:
    url, root = server
    build_archive(root / "repo.zip", piston_data)
    dest = tmp_path / "data" / "ac-pistons"
    counts = fetch_dataset(f"{url}/repo.zip", dest)
    assert counts == {name: 4 for name in CLASSES}
    assert sorted(p.name for p in dest.iterdir()) == list(CLASSES)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.zip", "HTTP 404"),
        ("notes.txt", "neither a zip nor a tar"),
        ("corrupt.zip", "broken.jpeg"),
        ("nodata.zip", "no data/ folder"),
    ],
)
def test_a_bad_download_leaves_nothing_behind(
    server: tuple[str, Path], piston_data: Path, tmp_path: Path, name: str, message: str
) -> None:
    url, root = server
    (root / "notes.txt").write_text("not an archive")
    build_archive(root / "corrupt.zip", piston_data, per_class=1, corrupt=True)
    with zipfile.ZipFile(root / "nodata.zip", "w") as zf:
        zf.writestr("repo/README.md", "nothing here")
    dest = tmp_path / "data" / "ac-pistons"
    with pytest.raises(DataError, match=message):
        fetch_dataset(f"{url}/{name}", dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_fetch_refuses_to_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "x").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        fetch_dataset("http://127.0.0.1:9/none.zip", dest)
