"""`piston predict IMAGE...`: score files in-process with the production bundle."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from cli.output import emit
from piston.bundle import Predictor
from piston.errors import PistonError
from piston.explain import overlay
from piston.imaging import load_image, open_image
from piston.registry import open_registry
from piston.scoring import Decision, ImageFailure, Outcome, score_blobs
from piston.settings import load_settings


def register(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="classify image files with the production model")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--version", help="a bundle version instead of production")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--explain", metavar="DIR", type=Path,
                         help="write each image with the heatmap of its class over it"
                              " (DIR/<name>.heatmap.png)")
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
    """`normal (0.987)`, `defect_1 (0.912)  needs review: novel (novelty 2.41)`, `error: ...`."""
    if isinstance(outcome, ImageFailure):
        return f"error: {outcome.error}"
    line = f"{outcome.label} ({outcome.confidence:.3f})"
    if outcome.needs_review:
        line += f"  needs review: {outcome.review_reason}"
    if outcome.novel and outcome.novelty is not None:
        line += f" (novelty {outcome.novelty:.3g})"
    return line


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.explain is not None:
        _writable(args.explain)
    registry = open_registry(settings)
    version = args.version or registry.production("run `piston train --promote` first")
    predictor = Predictor.load(registry.fetch(version), settings.runtime)
    blobs = [_read(name, settings.max_upload_bytes) for name in args.images]
    outcomes = score_blobs(predictor, blobs, settings.max_image_pixels,
                           explain=args.explain is not None)
    results: list[dict[str, Any]] = []
    for name, blob, outcome in zip(args.images, blobs, outcomes, strict=True):
        result = {"image": name, **outcome.model_dump(exclude={"explanation"})}
        if args.explain is not None and isinstance(outcome, Decision):
            assert isinstance(blob, bytes)
            result["heatmap"] = str(_write_overlay(predictor, name, blob, outcome, args.explain,
                                                   settings.max_image_pixels))
            result["box"] = outcome.explanation.box.model_dump() if outcome.explanation else None
        results.append(result)
    lines = [f"{name}: {_line(o)}" for name, o in zip(args.images, outcomes, strict=True)]
    emit(results, args.json, "\n".join(lines))
    return 1 if any(isinstance(o, ImageFailure) for o in outcomes) else 0


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PistonError(f"--explain {folder}: cannot create it ({err.strerror})") from None


def _write_overlay(predictor: Predictor, name: str, data: bytes, decision: Outcome,
                   folder: Path, max_pixels: int) -> Path:
    """The image at full size, oriented as the model saw it, with its heatmap over it."""
    assert isinstance(decision, Decision) and decision.explanation is not None
    contract = dataclasses.replace(predictor.contract, jpeg_draft=False)
    image = load_image(open_image(data, max_pixels), contract)
    path = folder / f"{Path(name).stem}.heatmap.png"
    overlay(image, decision.explanation).save(path)
    return path
