"""Bounds on what a job request may ask for: checked by the API, the CLI and the worker."""

from __future__ import annotations

import os
from typing import Any

from piston.errors import InputError
from piston.settings import Settings


def under_roots(location: str, roots: list[str]) -> bool:
    """Whether `location` (a folder or an s3:// prefix) lies under one of `roots`."""
    def parts(text: str) -> list[str]:
        if text.startswith("s3://"):
            return [p for p in text.removeprefix("s3://").split("/") if p]
        return ["file:", *(p for p in os.path.realpath(text).split(os.sep) if p)]

    if ".." in location.replace("\\", "/").split("/"):
        return False
    target = parts(location)
    return any(target[:len(root)] == root for root in map(parts, roots) if root)


def check_retrain(settings: Settings, dataset: str, overrides: dict[str, Any]) -> None:
    """Refuse a data set outside the configured roots, and overrides past the bounds."""
    roots = settings.dataset_roots()
    if not under_roots(dataset, roots):
        raise InputError("forbidden", f"data set {dataset!r} is not under an allowed root"
                         f" ({', '.join(roots)}; PISTON_RETRAIN_DATASET_ROOTS)")
    bounds = {"epochs": settings.retrain_max_epochs,
              "batch_size": settings.retrain_max_batch_size}
    for name, bound in bounds.items():
        value = overrides.get(name)
        if isinstance(value, int | float) and value > bound:
            raise InputError("invalid", f"{name} {value} is over the limit of {bound}")
    size = overrides.get("input_size")
    if isinstance(size, int | float):
        size = (size, size)
    if not isinstance(size, list | tuple) or len(size) != 2:
        return  # absent, or malformed: the training config refuses it with a reason
    height, width = size
    numbers = isinstance(height, int | float) and isinstance(width, int | float)
    if numbers and height * width > settings.retrain_max_input_pixels:
        raise InputError("invalid", f"input_size {height}x{width} is over the limit of"
                         f" {settings.retrain_max_input_pixels} pixels")
