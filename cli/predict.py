"""`piston predict IMAGE...`: score files in-process with the production bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from cli.context import open_registry
from cli.output import emit
from piston.bundle import Predictor
from piston.errors import ImageError
from piston.imaging import preprocess
from piston.settings import load_settings


def register(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="classify image files with the production model")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--version", help="a bundle version instead of production")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = open_registry(settings)
    version = args.version or registry.production("run `piston train --promote` first")
    predictor = Predictor.load(registry.fetch(version))
    results: list[dict[str, Any]] = []
    arrays, slots = [], []
    for name in args.images:
        try:
            data = Path(name).read_bytes()
            arrays.append(preprocess(data, predictor.contract, settings.max_image_pixels))
            slots.append(len(results))
            results.append({"image": name})
        except (OSError, ImageError) as err:
            reason = err.strerror if isinstance(err, OSError) else str(err)
            results.append({"image": name, "error": reason})
    if arrays:
        decisions = predictor.decide(predictor.probabilities(np.stack(arrays)))
        for slot, decision in zip(slots, decisions, strict=True):
            results[slot].update(decision)
    lines = [
        f"{r['image']}: error: {r['error']}"
        if "error" in r
        else f"{r['image']}: {r['label']} ({r['confidence']:.3f})"
        f"{'  needs review' if r['needs_review'] else ''}"
        for r in results
    ]
    emit(results, args.json, "\n".join(lines))
    return 1 if any("error" in r for r in results) else 0
