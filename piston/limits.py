"""Bounds on what a job request may ask for: checked by the API, the CLI and the worker.

The roots are checked before anything touches a location, so a refusal never says whether
a path outside them exists.
"""

from __future__ import annotations

from typing import Any

from piston.errors import InputError
from piston.overrides import check_overrides
from piston.roots import segments, under_roots, within
from piston.settings import Settings

__all__ = ["check_job_paths", "check_retrain", "under_roots"]


def check_job_paths(settings: Settings, src: str, out: str) -> None:
    """Refuse a scoring job whose `src` or `out` is outside the job roots or meets the registry.

    A job writes `results.jsonl`, `jobs/<id>.json`, `labels/` and `_parts/` under `out`: inside
    the registry's prefix that would plant objects among its history and bundles.
    """
    registry = segments(settings.registry)
    roots = settings.score_roots()
    for name, full in (("src", src), ("out", out)):
        location, where = full[:200], segments(full)
        if where is None or len(where) < 2:
            raise InputError("forbidden", f"{name} {location!r}: give a folder or an s3://"
                             " prefix under a job root, without '..'")
        if registry is not None and (within(where, registry) or within(registry, where)):
            raise InputError("forbidden", f"{name} {location!r} overlaps the model registry"
                             " (PISTON_REGISTRY): jobs never read or write there")
        if not under_roots(full, roots):
            raise InputError("forbidden", f"{name} {location!r} is not under a job root"
                             f" ({', '.join(roots)}; PISTON_JOB_ROOTS)")


def check_retrain(settings: Settings, dataset: str, overrides: dict[str, Any]) -> None:
    """Refuse a data set outside the configured roots, and overrides off the allow-list."""
    roots = settings.dataset_roots()
    if not under_roots(dataset, roots):
        raise InputError("forbidden", f"data set {dataset!r} is not under an allowed root"
                         f" ({', '.join(roots)}; PISTON_RETRAIN_DATASET_ROOTS)")
    check_overrides(settings, overrides)
