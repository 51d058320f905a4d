"""`piston evaluate`: grouped k-fold cross-validation of a recipe on a data set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from cli.output import emit
from cli.train import add_pretrained, training_config
from piston.errors import ConfigError
from piston.settings import load_settings
from training.config import recipe_names
from training.dataset import parse_class_map

if TYPE_CHECKING:
    from training.crossval import CrossValSummary, FoldResult


def register(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser(
        "evaluate", help="grouped k-fold cross-validation: how a recipe does on unseen parts"
    )
    ev.add_argument("--data", help="data set folder, CSV manifest or s3:// prefix"
                    " (default: PISTON_DATA_DIR)")
    ev.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    ev.add_argument("--repeats", type=int, default=1, help="reshuffled repeats (default 1)")
    ev.add_argument("--config", help="YAML file of training settings")
    ev.add_argument("--recipe", help=f"named recipe ({', '.join(recipe_names())})")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one setting, e.g. --set epochs=5 (repeatable)")
    ev.add_argument("--classes", help="target-to-name mapping for a manifest: 0=a,1=b")
    ev.add_argument("--budget", help="time budget of the whole evaluation's searches (auto)")
    add_pretrained(ev)
    ev.add_argument("--plot", help="plot file (default: RUNS_DIR/evaluate-RECIPE.png)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.folds < 2 or args.repeats < 1:
        raise ConfigError("--folds must be at least 2 and --repeats at least 1")
    from training.crossval import cross_validate, plot_crossval  # torch: only when it runs
    from training.prepare import prepare

    settings = load_settings()
    config = training_config(args)
    prepared = prepare(args.data or settings.data_dir, config, settings.max_image_pixels,
                       class_map=parse_class_map(args.classes),
                       s3_endpoint_url=settings.s3_endpoint_url)
    with tqdm(total=args.folds * args.repeats, desc=f"cross-validating {config.recipe}",
              unit="fold", leave=False, disable=None) as bar:

        def on_fold(f: FoldResult) -> None:
            bar.set_postfix(acc=f"{f.metrics.accuracy:.3f}")
            bar.update(1)

        result = cross_validate(prepared, config, args.folds, args.repeats, on_fold)
    summary = result.summary()
    plot = Path(args.plot) if args.plot else settings.runs_dir / f"evaluate-{config.recipe}.png"
    plotted = plot_crossval(summary, plot)
    out = summary.model_dump() | {
        "plot": str(plotted), "decode_seconds": round(prepared.decode_seconds, 3),
        "input_size": list(prepared.decoded.size), "data": prepared.report.figures().model_dump()}
    emit(out, args.json, _human(summary, plotted))
    return 0


def _human(s: CrossValSummary, plot: Path) -> str:
    recalls = ", ".join(f"{c} {v:.3f}" for c, v in s.recall_mean.items())
    cal = s.calibration_mean
    return "\n".join([
        f"recipe {s.recipe} ({s.arch}, {s.parameters} parameters):"
        f" {s.folds} grouped folds x {s.repeats} repeats",
        f"accuracy {s.mean_accuracy:.3f} +/- {s.std_accuracy:.3f}, worst fold"
        f" {s.worst_fold_accuracy:.3f}; macro-F1 {s.macro_f1_mean:.3f}",
        f"recall (mean over folds): {recalls}",
        f"review band: {cal.review_share:.1%} sent to review, accepted accuracy"
        f" {cal.accepted_accuracy:.3f}, ECE {cal.ece:.3f} (plain softmax"
        f" {cal.ece_uncalibrated:.3f}, temperature {cal.temperature:.2f})",
        f"pooled confusion matrix (rows true {s.classes}): {s.confusion_matrix}",
        f"training {s.train_seconds_mean:.1f} s per fold; plot: {plot}",
    ])
