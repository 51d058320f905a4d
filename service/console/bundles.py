"""What the console shows of a bundle beyond `/admin/models`: its details and its report.

The report is `report/report.html` beside two PNGs inside the bundle, read from the local
model store (checked when it was imported) or through `Registry.archive` (digests checked).
The page is served with the PNGs inlined as data URIs and a `sandbox` CSP, so it runs no
script and reaches nothing of the console's, in the console's sandboxed frame or opened alone.
"""

from __future__ import annotations

import base64
import io
import re
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from piston.bundle import local_model
from piston.errors import RegistryError, UnknownBundle
from piston.names import check_version
from piston.registry import Registry

_PICTURE = re.compile(r"""src=["']([A-Za-z0-9_-]+\.png)["']""")
CACHED_REPORTS = 8  # bundles are immutable: a report read once never changes


def details(registry: Registry) -> dict[str, dict[str, Any]]:
    """By version: input size, data fingerprint, per-class recall, threshold, code version."""
    out = {}
    for version in registry.versions():
        meta = registry.meta(version)
        out[version] = {
            "input_size": [meta.contract.width, meta.contract.height],
            "data_fingerprint": meta.data_fingerprint, "threshold": meta.threshold,
            "recall": {c: f.recall for c, f in meta.metrics.per_class.items()},
            "code_version": meta.code_version, "parent": meta.parent,
        }
    return out


class Reports:
    """Reports by version, from the local model store when the bundle is there, else its archive."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, str] = OrderedDict()

    def page(self, registry: Registry, version: str) -> str:
        check_version(version)
        if version not in self._cache:
            registry.meta(version)  # an unknown version: UnknownBundle, a 404
            self._cache[version] = inline_pictures(_report_files(registry, version), version)
            while len(self._cache) > CACHED_REPORTS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(version)
        return self._cache[version]


def _report_files(registry: Registry, version: str) -> dict[str, bytes]:
    """The files of the bundle's `report/` folder, by name."""
    try:
        folder = Path(local_model(version).path) / "report"
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    except (RegistryError, OSError):
        pass  # not imported here (or not readable): read the archive instead
    archive = registry.archive(version)  # its digests checked, like a model fetch
    files = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 2 and parts[-2] == "report":
                handle = tar.extractfile(member)
                if handle is not None:
                    files[parts[-1]] = handle.read()
    return files


def inline_pictures(files: dict[str, bytes], version: str) -> str:
    """report.html with each `src="x.png"` replaced by the picture's data URI."""
    if "report.html" not in files:
        raise UnknownBundle(f"bundle {version} has no evaluation report")

    def inline(match: re.Match[str]) -> str:
        data = files.get(match.group(1))
        if data is None:
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(data).decode()}"'

    return _PICTURE.sub(inline, files["report.html"].decode("utf-8", errors="replace"))
