"""Each candidate of `auto`, trained alone on one grouped split: docs/evaluation.md's table.

    python bench/candidates.py --data DIR [--only bn_cnn,dihedral_cnn] [--set KEY=VALUE] [--json]

`auto` screens its candidates within a budget and keeps one, so its table says little about
the ones that lost. Here every candidate runs its whole schedule (no budget) at the input size
`auto` resolves from the images, on the split `auto` uses, and is scored on the test split:
accuracy, macro-F1, worst class recall and training seconds, side by side in one run.
`--set` applies a setting to every candidate (an ablation: `--set ema_decay=0.998`); the
figures do not depend on the machine's load (no budget cuts a schedule short), the seconds do.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from cli.train import parse_overrides
from piston.errors import ConfigError, PistonError
from piston.settings import Settings
from training.config import load_config
from training.evaluate import classification_metrics
from training.pipeline import fit_split, make_split, prepare
from training.search import candidate_configs
from training.train import contract_of, predict_proba


def candidate_rows(
    data: str, only: set[str], max_pixels: int, overrides: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    config = load_config(overrides=overrides or {})
    prepared = prepare(data, config, max_pixels)
    config = prepared.resolve(config)
    split = make_split(prepared, config)
    parts = {name: prepared.decoded.subset(ix) for name, ix in split.parts().items()}
    candidates = candidate_configs(config)
    unknown = only - {name for name, _ in candidates}
    if unknown:
        raise ConfigError(f"--only names no candidate of auto: {', '.join(sorted(unknown))}")
    rows = []
    for name, candidate in candidates:
        if only and name not in only:
            continue
        began = time.perf_counter()
        fitted = fit_split(candidate, parts, prepared.classes)
        seconds = time.perf_counter() - began
        test = parts["test"]
        probs = predict_proba(fitted.module, test.images, contract_of(candidate))
        m = classification_metrics(test.labels, probs.argmax(1), prepared.classes)
        worst = min(m.per_class, key=lambda c: m.per_class[c].recall)
        rows.append({
            "candidate": name, "input_size": list(candidate.input_size or ()),
            "test_accuracy": round(m.accuracy, 3), "macro_f1": round(m.macro_f1, 3),
            "worst_class": worst, "worst_recall": round(m.per_class[worst].recall, 3),
            "epochs": len(fitted.history), "stopped": fitted.stopped,
            "seconds": round(seconds, 1),
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data set folder or manifest")
    parser.add_argument("--only", default="", help="comma-separated candidate names")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every candidate (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rows = candidate_rows(args.data, {n for n in args.only.split(",") if n},
                              Settings().max_image_pixels, parse_overrides(args.set))
    except PistonError as err:
        logging.error("%s", err)
        return 2
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        return 0
    print(f"{'candidate':14} {'input':9} {'acc':>6} {'F1':>6} {'worst recall':>22} "
          f"{'epochs':>6} {'seconds':>8}")
    for r in rows:
        size = "x".join(map(str, r["input_size"]))
        worst = f"{r['worst_recall']:.3f} ({r['worst_class']})"
        print(f"{r['candidate']:14} {size:9} {r['test_accuracy']:6.3f} {r['macro_f1']:6.3f} "
              f"{worst:>22} {r['epochs']:6d} {r['seconds']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
