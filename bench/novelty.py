"""Novelty benchmark: train on one set, then how much of another set each method flags.

    python bench/novelty.py --data DIR --other DIR [--recipe bn_cnn] [--set epochs=12]

Trains one model on `--data` (its grouped train/val/test split, as `piston train` does),
takes the head features (`Embedder`, as serving does) of its splits and of every image under
`--other` (resized to the model's input), fits each candidate novelty method on train and
sets its threshold on validation (the log-normal tail, training/novelty.py), then prints the
share flagged of validation, test and the other set, and the AUROC test-vs-other. Last, the
cost: CPU time of the forward pass of a batch of 32 against scoring its features.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.train import parse_overrides
from piston.imaging import preprocess
from piston.novelty import KnnScorer, Scorer, with_threshold
from training.config import load_config
from training.novelty import embed, fit_mahalanobis, head_features, tail_threshold
from training.pipeline import fit_split, make_split, prepare
from training.train import contract_of

MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def auroc(familiar: np.ndarray, novel: np.ndarray) -> float:
    """The chance a random novel image scores over a random familiar one (ties count half)."""
    above = (novel[:, None] > familiar[None, :]).mean()
    ties = (novel[:, None] == familiar[None, :]).mean()
    return float(above + ties / 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the set the model is trained on")
    parser.add_argument("--other", required=True, help="a set the model has never seen")
    parser.add_argument("--recipe", default="bn_cnn")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    config = load_config(args.recipe, overrides=parse_overrides(args.set))
    prepared = prepare(args.data, config, MAX_PIXELS)
    config = prepared.resolve(config)
    split = make_split(prepared, config)
    parts = {n: prepared.decoded.subset(ix) for n, ix in split.parts().items()}
    fitted = fit_split(config, parts, prepared.classes)
    contract = contract_of(fitted.config)
    train, val, test = (head_features(fitted.module, parts[n].images, contract)
                        for n in ("train", "val", "test"))
    files = sorted(p for p in Path(args.other).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    other_inputs = np.stack([preprocess(p.read_bytes(), contract) for p in files])
    other = embed(fitted.module, torch.from_numpy(other_inputs))

    candidates: dict[str, Scorer] = {
        "mahalanobis": fit_mahalanobis(train, parts["train"].labels, len(prepared.classes)),
        "knn1": KnnScorer(train, 1, 0.0),
        "knn5": KnnScorer(train, 5, 0.0),
    }
    rows = []
    for name, scorer in candidates.items():
        threshold = tail_threshold(scorer.score(val))
        scorer = with_threshold(scorer, threshold)
        scores = {n: scorer.score(f) for n, f in
                  (("val", val), ("test", test), ("other", other))}
        rows.append({"method": name, "threshold": round(threshold, 4),
                     **{f"{n}_flagged": round(float((s > threshold).mean()), 4)
                        for n, s in scores.items()},
                     "auroc_test_vs_other": round(auroc(scores["test"], scores["other"]), 4)})
    result = {"data": args.data, "other": args.other, "recipe": args.recipe,
              "images": {"train": len(train), "val": len(val), "test": len(test),
                         "other": len(other)},
              "methods": rows, "cost": cost(fitted.module, other_inputs, candidates),
              "seconds": round(time.perf_counter() - start, 1),
              "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.recipe} on {args.data}, other: {args.other} {result['images']}")
    for r in rows:
        print(f"  {r['method']:12s} threshold {r['threshold']:.4f}: flags val"
              f" {r['val_flagged']:.1%}, test {r['test_flagged']:.1%}, other"
              f" {r['other_flagged']:.1%}; AUROC test-vs-other {r['auroc_test_vs_other']:.3f}")
    print(f"  cost per batch of 32: {result['cost']}")
    return 0


def cost(module: nn.Module, inputs: np.ndarray, scorers: dict[str, Scorer],
         rounds: int = 20, reps: int = 200) -> dict[str, float]:
    """CPU milliseconds (all threads: what a busy server pays) of a forward pass of 32 images
    and of scoring their features, median over interleaved rounds; CPU time rather than wall
    time, so that a loaded machine's waiting is not counted as cost."""
    from piston.arch import Embedder

    embedder = Embedder(module).eval()
    batch = torch.from_numpy(inputs[:32])
    times: dict[str, list[float]] = {"forward": [], **{n: [] for n in scorers}}
    with torch.inference_mode():
        for _ in range(rounds):
            t = time.process_time()
            features = embedder(batch)[1].numpy()
            times["forward"].append(time.process_time() - t)
            for name, scorer in scorers.items():
                t = time.process_time()
                for _ in range(reps):  # one call is too short for the clock
                    scorer.score(features)
                times[name].append((time.process_time() - t) / reps)
    out = {f"{n}_cpu_ms": round(float(np.median(v)) * 1000, 4) for n, v in times.items()}
    for name in scorers:
        out[f"{name}_share_of_forward"] = round(out[f"{name}_cpu_ms"] / out["forward_cpu_ms"], 5)
    return out


if __name__ == "__main__":
    sys.exit(main())
