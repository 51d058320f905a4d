"""Training speed, measured side by side in one run.

    python bench/train.py [--data DIR] [--repeats 3] [--threads N] [--no-cli]

Prints, for the piston data on this machine: start-up (imports), decoding + data check, the
training loop of the seed recipe (25 epochs) next to the published 21 s and next to a bare
PyTorch loop over the same pre-decoded tensors (plain Adam, what a first script would do),
the default recipe's loop, and the whole `piston train` command (a subprocess, cold start).
Loops report the median of --repeats runs. Other processes on the machine inflate every
figure alike, which is why the ratios matter more than the seconds.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from piston import arch  # noqa: E402
from training.config import DEFAULT_RECIPE, TrainConfig, load_config  # noqa: E402
from training.pipeline import make_split, prepare  # noqa: E402
from training.train import contract_of, fit, to_inputs  # noqa: E402

STARTUP = time.perf_counter() - START
PUBLISHED_SECONDS = 21.0


def bare_loop(config: TrainConfig, images: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """The seed recipe as a plain script trains it: unfused Adam, a sync per step."""
    torch.manual_seed(config.seed)
    contract = contract_of(config)
    model = arch.build(config.arch, classes, contract.height, contract.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    x, y = to_inputs(images, contract), torch.as_tensor(labels)
    start = time.perf_counter()
    for _ in range(config.epochs):
        model.train()
        for batch in torch.randperm(len(y)).split(config.batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            _ = loss.item()
    return time.perf_counter() - start


def cli_seconds(data: str, recipe: str) -> float:
    """`piston train --recipe RECIPE` end to end, in a fresh process with its own registry."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PISTON_REGISTRY=f"{tmp}/registry", PISTON_RUNS_DIR=f"{tmp}/runs",
                   BENTOML_HOME=f"{tmp}/bentoml", BENTOML_DO_NOT_TRACK="true")
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "cli.main", "train", "--data", data,
                              "--recipe", recipe, "--json"], env=env, capture_output=True,
                             text=True, check=False)
        seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"piston train failed: {out.stderr.strip().splitlines()[-1:]}")
    json.loads(out.stdout)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PISTON_DATA_DIR",
                                                         "../shared/data/ac-pistons"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-cli", action="store_true", help="skip the `piston train` run")
    args = parser.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"no data at {args.data}: pass --data or set PISTON_DATA_DIR")

    seed = load_config("seed", overrides={"threads": args.threads})
    default = load_config("bn_cnn", overrides={"threads": args.threads})  # auto's first candidate
    start = time.perf_counter()
    prepared = prepare(args.data, seed, 40_000_000)
    decode = time.perf_counter() - start
    split = make_split(prepared, seed)
    train, val = prepared.decoded.subset(split.train), prepared.decoded.subset(split.val)
    classes = len(prepared.classes)

    def loops(config: TrainConfig) -> tuple[float, float]:
        runs = [fit(config, train.images, train.labels, val.images, val.labels, classes)
                for _ in range(args.repeats)]
        return statistics.median(r.seconds for r in runs), runs[-1].history[-1].val_accuracy

    torch.set_num_threads(seed.threads or os.cpu_count() or 1)
    bare = statistics.median(bare_loop(seed, train.images, train.labels, classes)
                             for _ in range(args.repeats))
    seed_loop, seed_val = loops(seed)
    default_loop, default_val = loops(default)

    print(f"piston data: {len(prepared.decoded.keys)} images, {len(train.keys)} train /"
          f" {len(val.keys)} val; torch threads {torch.get_num_threads()} of"
          f" {os.cpu_count()} cores; median of {args.repeats} runs")
    print(f"start-up (imports)              {STARTUP:7.2f} s")
    print(f"decode + data check             {decode:7.2f} s")
    print(f"seed recipe, 25 epochs: loop    {seed_loop:7.2f} s   published"
          f" {PUBLISHED_SECONDS:.0f} s"
          f" -> {PUBLISHED_SECONDS / seed_loop:.1f}x faster; bare PyTorch loop {bare:.2f} s"
          f" -> {bare / seed_loop:.2f}x; goal < 3 s")
    print(f"bn_cnn (auto's first candidate), {default.epochs}-epoch cycles: loop"
          f" {default_loop:7.2f} s   ({default_loop / seed_loop:.1f}x the seed loop)")
    print(f"validation accuracy (grouped split): seed {seed_val:.3f}, default {default_val:.3f}")
    if not args.no_cli:
        whole = cli_seconds(args.data, "seed")
        print(f"`piston train --recipe seed`, whole command: {whole:7.2f} s   (goal < 10 s)")
        whole = cli_seconds(args.data, DEFAULT_RECIPE)
        print(f"`piston train` ({DEFAULT_RECIPE}), whole command: {whole:7.2f} s   (goal < 30 s)")


if __name__ == "__main__":
    main()
