"""Reading a labelled data set from storage, in either layout.

- one sub-folder per class (`normal/x.jpeg`, `defect_1/y.jpeg`, ...), or
- a CSV manifest `image_path,target[,group]` (like `defect_log.csv`), paths relative to the
  manifest, with an optional mapping from target values to class names.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from piston.errors import DataError, StorageError
from piston.storage import Storage, open_storage

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


@dataclass(frozen=True)
class Sample:
    key: str
    label: str
    group: str | None = None


@dataclass
class Dataset:
    """Samples whose keys are relative to `storage`; `problems` lists what was left out and why."""

    storage: Storage
    samples: list[Sample]
    classes: list[str]
    problems: list[str] = field(default_factory=list)

    def labels(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[s.label] for s in self.samples]


def load_dataset(
    location: str,
    class_map: dict[str, str] | None = None,
    s3_endpoint_url: str | None = None,
) -> Dataset:
    """Load a data set from a folder, an S3 prefix or a CSV manifest inside one."""
    if location.lower().endswith(".csv"):
        parent, _, name = location.rstrip("/").rpartition("/")
        storage = open_storage(parent or ".", s3_endpoint_url)
        return _from_manifest(storage, name, class_map)
    storage = open_storage(location, s3_endpoint_url)
    if not storage.list(""):
        raise DataError(f"{location} does not exist or holds no files: point --data at a data set")
    return _from_folders(storage, class_map)


def _from_folders(storage: Storage, class_map: dict[str, str] | None) -> Dataset:
    by_class: dict[str, list[str]] = {}
    problems: list[str] = []
    for obj in storage.list(""):
        parts = PurePosixPath(obj.key).parts
        if len(parts) != 2:
            continue  # top-level files (manifests, notes) and deeper nesting are not samples
        folder, name = parts
        by_class.setdefault(folder, [])
        if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
            by_class[folder].append(obj.key)
        else:
            problems.append(f"{obj.key}: not an image file name, left out")
    for folder in _empty_class_dirs(storage):
        by_class.setdefault(folder, [])
    for folder, keys in sorted(by_class.items()):
        if not keys:
            problems.append(f"class folder {folder}/ has no images, the class is left out")
    samples = [
        Sample(key, (class_map or {}).get(folder, folder))
        for folder, keys in sorted(by_class.items())
        for key in sorted(keys)
    ]
    return _finish(storage, samples, problems)


def _empty_class_dirs(storage: Storage) -> list[str]:
    root = storage.local_path("")
    if root is None or not root.is_dir():
        return []
    return [p.name for p in root.iterdir() if p.is_dir() and not any(p.iterdir())]


def _from_manifest(storage: Storage, name: str, class_map: dict[str, str] | None) -> Dataset:
    try:
        text = storage.read(name).decode("utf-8-sig")
    except (StorageError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the manifest {name}: {err}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"image_path", "target"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(
            f"manifest {name} lacks the column(s) {', '.join(sorted(missing))}"
            " (expected image_path,target[,group])"
        )
    existing = {o.key for o in storage.list("")}
    samples, problems, unknown = [], [], set()
    for line, row in enumerate(reader, start=2):
        path, target = (row.get("image_path") or "").strip(), (row.get("target") or "").strip()
        if not path or not target:
            problems.append(f"{name} line {line}: empty image_path or target, left out")
            continue
        if class_map is not None and target not in class_map:
            unknown.add(target)
            continue
        if path not in existing:
            problems.append(f"{name} line {line}: {path} does not exist, left out")
            continue
        label = class_map[target] if class_map is not None else target
        samples.append(Sample(path, label, (row.get("group") or "").strip() or None))
    if unknown:
        known = ", ".join(sorted(class_map or {}))
        raise DataError(
            f"manifest {name} names unknown class(es) {', '.join(sorted(unknown))}"
            f" (the class mapping knows {known}): fix the targets or the mapping"
        )
    return _finish(storage, samples, problems)


def _finish(storage: Storage, samples: list[Sample], problems: list[str]) -> Dataset:
    classes = sorted({s.label for s in samples}, key=_natural)
    if len(classes) < 2:
        found = classes[0] if classes else "none"
        raise DataError(f"a classifier needs images of at least 2 classes; found {found}")
    for problem in problems:
        log.warning(problem)
    return Dataset(storage, samples, classes, problems)


def _natural(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def parse_class_map(text: str | None) -> dict[str, str] | None:
    """`0=defect_1,1=defect_2,2=normal` -> {'0': 'defect_1', ...}."""
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"bad class mapping {item!r}: write it as target=name,target=name")
        mapping[key.strip()] = value.strip()
    return mapping
