"""`piston predict IMAGE...`: score files in-process with the production bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.output import emit
from piston.bundle import Predictor
from piston.registry import open_registry
from piston.scoring import Decision, ImageFailure, score_blobs
from piston.settings import load_settings


def register(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="classify image files with the production model")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--version", help="a bundle version instead of production")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=run)


def _read(name: str, max_bytes: int) -> bytes | ImageFailure:
    path = Path(name)
    try:
        if path.stat().st_size > max_bytes:
            return ImageFailure(error=f"over the {max_bytes}-byte limit", kind="too_large")
        return path.read_bytes()
    except OSError as err:
        return ImageFailure(error=err.strerror or str(err), kind="unreadable")


def _line(outcome: Decision | ImageFailure) -> str:
    """`normal (0.987)`, `defect_1 (0.912)  needs review: novel (novelty 75.2)`, `error: ...`."""
    if isinstance(outcome, ImageFailure):
        return f"error: {outcome.error}"
    line = f"{outcome.label} ({outcome.confidence:.3f})"
    if outcome.needs_review:
        line += f"  needs review: {outcome.review_reason}"
    if outcome.novel and outcome.novelty is not None:
        line += f" (novelty {outcome.novelty:.1f})"
    return line


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = open_registry(settings)
    version = args.version or registry.production("run `piston train --promote` first")
    predictor = Predictor.load(registry.fetch(version), settings.runtime)
    blobs = [_read(name, settings.max_upload_bytes) for name in args.images]
    outcomes = score_blobs(predictor, blobs, settings.max_image_pixels)
    results: list[dict[str, Any]] = [
        {"image": name, **outcome.model_dump()} for name, outcome in zip(args.images, outcomes,
                                                                       strict=True)
    ]
    lines = [f"{name}: {_line(o)}" for name, o in zip(args.images, outcomes, strict=True)]
    emit(results, args.json, "\n".join(lines))
    return 1 if any(isinstance(o, ImageFailure) for o in outcomes) else 0
