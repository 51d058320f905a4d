"""Novelty benchmark: a model of one set, then how much of other sets each method flags.

    python bench/novelty.py --data DIR --other DIR [--other DIR ...] [--recipe bn_cnn] \
        [--set epochs=12]
    python bench/novelty.py --data DIR --other DIR [--other DIR ...] --bundle BUNDLE_DIR

Trains one model on `--data` (its grouped train/val/test split, as `piston train` does), or
takes a trained bundle's weights and split (`--bundle`, a fetched bundle folder: a slow
training is run once and reused), takes the head features (`Embedder`, as serving does) of
its splits, of every image under `--other` and of made-up non-part images (noise, blank,
text, checkerboard; resized to the model's input), fits each novelty method on train and
sets its threshold on validation (training/novelty.py: `combined` is Mahalanobis and kNN at
half the target each), then prints the share flagged of validation, test, each other set
(named by its folder, `--other` repeats: one model against many sets is the cross-set matrix)
and each made-up kind, and the AUROC test-vs-other; `combined+channels` adds the check on the
inputs' colour channels (fitted on the validation images' inputs). With `--bundle`, the row
`bundle` is the bundle's own check as a server answers it (its `novelty.npz` and thresholds,
in the default runtime's graph). `--save FILE.npz` keeps every set's head features and
channels scores, to refit a check on without the network. Last, the cost: CPU time of the
forward pass of a batch of 32 against scoring its features.
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
from piston.bundle import Predictor, read_meta
from piston.imaging import Contract, preprocess
from piston.novelty import ChannelScorer, Method, Scorer, rule
from piston.runtime import TorchRuntime
from tests.conftest import made_up_images
from training.config import TrainConfig, load_config
from training.decode import DecodedSet
from training.novelty import embed, fit_novelty, head_features
from training.pipeline import fit_split, make_split, prepare
from training.train import contract_of, to_inputs

MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
METHODS: tuple[Method, ...] = ("mahalanobis", "knn", "combined")
PARTS = ("train", "val", "test")


def auroc(familiar: np.ndarray, novel: np.ndarray) -> float:
    """The chance a random novel image scores over a random familiar one (ties count half)."""
    above = (novel[:, None] > familiar[None, :]).mean()
    ties = (novel[:, None] == familiar[None, :]).mean()
    return float(above + ties / 2)


def model_and_splits(args: argparse.Namespace
                     ) -> tuple[nn.Module, Contract, dict[str, DecodedSet], int]:
    """The network, its input contract, its splits and its number of classes: a bundle's
    (`--bundle`) or one trained here."""
    if args.bundle:
        meta = read_meta(args.bundle)
        config = TrainConfig.model_validate(meta.config)
        prepared = prepare(args.data, config, MAX_PIXELS)
        split = json.loads((Path(args.bundle) / "split.json").read_text())
        where = {key: i for i, key in enumerate(prepared.decoded.keys)}
        parts = {n: prepared.decoded.subset(np.array([where[k] for k in split[n]], dtype=int))
                 for n in PARTS}
        return TorchRuntime.load(args.bundle, meta).module, meta.contract, parts, len(
            meta.classes)
    config = load_config(args.recipe, overrides=parse_overrides(args.set))
    prepared = prepare(args.data, config, MAX_PIXELS)
    config = prepared.resolve(config)
    split = make_split(prepared, config)
    parts = {n: prepared.decoded.subset(ix) for n, ix in split.parts().items()}
    fitted = fit_split(config, parts, prepared.classes)
    return fitted.module, contract_of(fitted.config), parts, len(prepared.classes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the set the model is trained on")
    parser.add_argument("--other", required=True, action="append",
                        help="a set the model has never seen (repeatable)")
    parser.add_argument("--bundle", help="a trained bundle's folder: its weights and split")
    parser.add_argument("--recipe", default="bn_cnn")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--save", metavar="FILE.npz",
                        help="keep every set's head features (and channels scores) to refit on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    module, contract, parts, classes = model_and_splits(args)
    train = head_features(module, parts["train"].images, contract)
    val_in, test_in = (to_inputs(parts[n].images, contract).numpy() for n in ("val", "test"))
    others = {Path(d).name: d for d in args.other}
    made_up = made_up_images()
    inputs = {"val": val_in, "test": test_in,
              **{name: np.stack([preprocess(p.read_bytes(), contract) for p in images(d)])
                 for name, d in others.items()},
              **{kind: np.stack([preprocess(b, contract) for b in blobs])
                 for kind, blobs in made_up.items()}}
    features = {n: embed(module, torch.from_numpy(x)) for n, x in inputs.items()}
    val, test = features["val"], features["test"]
    if args.save:
        channels = ChannelScorer(1.0)
        np.savez(args.save, train=train, train_labels=parts["train"].labels,
                 **features, **{f"{n}_channels": channels.score(f, inputs[n])
                                for n, f in features.items()})

    scorers: dict[str, Scorer] = {}
    rows = []
    # combined: the features' checks alone, then with the channels check on the inputs
    for method, name in (*((m, m) for m in METHODS), ("combined", "combined+channels")):
        scorer, info = fit_novelty(method, train, parts["train"].labels, val, test, classes,
                                   inputs=(val_in, test_in) if "channels" in name else None)
        scorers[name] = scorer
        scores = {n: scorer.score(f, inputs[n]) for n, f in features.items()}
        rows.append(row(name, rule(info), scores, scorer.threshold, others)
                    | {"parts": [p.model_dump() for p in info.parts]})
    if args.bundle:
        rows.append(bundle_row(args.bundle, inputs, others))
    result = {"data": args.data, "other": args.other, "bundle": args.bundle,
              "recipe": None if args.bundle else args.recipe,
              "images": {"train": len(train), **{n: len(x) for n, x in inputs.items()}},
              "methods": rows, "cost": cost(module, inputs[next(iter(others))], scorers),
              "seconds": round(time.perf_counter() - start, 1),
              "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.bundle or args.recipe} on {args.data} {result['images']}")
    for r in rows:
        sets = ", ".join(f"{n} {r[f'{n}_flagged']:.1%} (AUROC {r[f'{n}_auroc']:.3f})"
                         for n in others)
        kinds = ", ".join(f"{k} {r[f'{k}_flagged']:.0%}" for k in made_up)
        print(f"  {r['method']:17s} ({r['rule']}): flags val {r['val_flagged']:.1%}, test"
              f" {r['test_flagged']:.1%}; {sets}; {kinds}")
    print(f"  cost per batch of 32: {result['cost']}")
    return 0


def images(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def row(name: str, rule_text: str, scores: dict[str, np.ndarray], threshold: float,
        others: dict[str, str]) -> dict[str, object]:
    """One method's shares flagged of every set, and its AUROC test-vs-each other set."""
    return {"method": name, "rule": rule_text,
            **{f"{n}_flagged": round(float((s > threshold).mean()), 4)
               for n, s in scores.items()},
            **{f"{n}_auroc": round(auroc(scores["test"], scores[n]), 4) for n in others}}


def bundle_row(bundle: str, inputs: dict[str, np.ndarray],
               others: dict[str, str]) -> dict[str, object]:
    """The bundle's own check, as the default runtime answers it (`Predictor.forward`)."""
    predictor = Predictor.load(bundle)
    info, scores = predictor.meta.novelty, {}
    if info is None:
        raise SystemExit(f"{bundle} has no novelty check")
    for name, x in inputs.items():
        scores[name] = np.concatenate([served(predictor, chunk) for chunk in
                                       np.array_split(x, max(1, len(x) // 64))])
    return row("bundle", rule(info), scores, info.threshold, others)


def served(predictor: Predictor, batch: np.ndarray) -> np.ndarray:
    """The novelty score `decide` answers: the graph's, else the numpy scorer's."""
    out = predictor.forward(batch)
    if out.novelty is not None:
        return out.novelty
    assert predictor.novelty is not None
    return predictor.novelty.score(out.features, batch)


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
                    scorer.score(features, inputs[:32])
                times[name].append((time.process_time() - t) / reps)
    out = {f"{n}_cpu_ms": round(float(np.median(v)) * 1000, 4) for n, v in times.items()}
    for name in scorers:
        out[f"{name}_share_of_forward"] = round(out[f"{name}_cpu_ms"] / out["forward_cpu_ms"], 5)
    return out


if __name__ == "__main__":
    sys.exit(main())
