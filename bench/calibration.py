"""A published bundle's review band, before and after calibration, from its own splits.

    python bench/calibration.py --data DIR [--version V] [--redraws N] [--json]

Reads the bundle (PISTON_REGISTRY; the newest when no version is given) and its split.json,
scores its validation and test images the way serving does (decode, preprocess, one forward
pass of the bundle's network), and fits the calibration of training/calibrate.py again on the
validation logits. Prints, for the same model in the same run, the rule before calibration
(plain softmax, errors counted) beside the calibrated one: review share, accepted accuracy, ECE.
With `--redraws N`, also the rule's review share and accepted error over N redraws of the
held-out images into validation and test parts (`training.calibrate.redrawn_figures`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from piston.bundle import Predictor
from piston.errors import PistonError, RegistryError
from piston.imaging import preprocess
from piston.registry import open_registry
from piston.settings import Settings
from training.calibrate import calibrate, redrawn_figures


def logits_of(predictor: Predictor, data: Path, keys: list[str], max_pixels: int) -> np.ndarray:
    batch = np.stack([preprocess((data / key).read_bytes(), predictor.contract, max_pixels)
                      for key in keys])
    return np.concatenate([predictor.forward(part).logits
                           for part in np.array_split(batch, max(1, len(batch) // 64))])


def figures(data: Path, version: str | None, settings: Settings, redraws: int = 0
            ) -> dict[str, Any]:
    registry = open_registry(settings)
    version = version or max(registry.versions(), default=None)
    if version is None:
        raise RegistryError("no bundles in the registry")
    folder = registry.fetch(version)
    predictor = Predictor.load(folder)
    meta = predictor.meta
    split = json.loads((folder / "split.json").read_text())
    index = {name: i for i, name in enumerate(meta.classes)}
    labels = {part: np.array([index[Path(key).parent.name] for key in split[part]])
              for part in ("val", "test")}
    logits = {part: logits_of(predictor, data, split[part], settings.max_image_pixels)
              for part in ("val", "test")}
    target = meta.config.get("review_target_error", 0.02)
    cal = calibrate(logits["val"], labels["val"], logits["test"], labels["test"], meta.classes,
                    target, meta.config.get("decision_threshold", 0.5))
    accuracy = float((logits["test"].argmax(1) == labels["test"]).mean())
    row = {"version": version, "test_accuracy": accuracy, **cal.model_dump()}
    if redraws and target is not None:
        share, error = redrawn_figures(logits["val"], labels["val"], logits["test"],
                                       labels["test"], meta.classes, target, redraws)
        row.update(redraws=redraws, redrawn_review_share=share, redrawn_accepted_error=error)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the data set folder (a folder per class)")
    parser.add_argument("--version", help="bundle version (default: the newest)")
    parser.add_argument("--redraws", type=int, default=0,
                        help="also score the rule over N redraws of the held-out images")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        row = figures(Path(args.data), args.version, Settings(), args.redraws)
    except (PistonError, OSError, KeyError) as err:
        logging.error("%s", err)
        return 2
    if args.json:
        json.dump(row, sys.stdout, indent=1)
        return 0
    print(f"bundle {row['version']}: test accuracy {row['test_accuracy']:.3f}")
    print(f"before (plain softmax, errors counted): review {row['plain_review_share']:.1%},"
          f" accepted accuracy {row['plain_accepted_accuracy']}, ECE {row['ece_uncalibrated']:.3f}")
    print(f"after (T {row['temperature']:.2f}, threshold {row['threshold']:.3f}, per class"
          f" {row['class_thresholds']}): review {row['review_share']:.1%}, accepted accuracy"
          f" {row['accepted_accuracy']}, ECE {row['ece']:.3f}")
    if "redraws" in row:
        error = row["redrawn_accepted_error"]
        print(f"over {row['redraws']} redraws of the held-out images: review"
              f" {row['redrawn_review_share']:.1%}, accepted error"
              f" {'-' if error is None else format(error, '.2%')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
