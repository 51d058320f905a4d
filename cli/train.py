"""`piston train`: train on a data set, publish the bundle, optionally promote it."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

import yaml
from tqdm import tqdm

from cli.output import emit
from piston.errors import ConfigError
from piston.novelty import NoveltyInfo, rule
from piston.registry import open_registry
from piston.settings import load_settings
from training.config import TrainConfig, load_config, recipe_names
from training.dataset import parse_class_map

if TYPE_CHECKING:
    from training.calibrate import CalibrationFigures
    from training.pipeline import TrainOutcome
    from training.train import Epoch

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model and publish it as a bundle")
    train.add_argument(
        "--data", help="data set folder, CSV manifest or s3:// prefix (default: PISTON_DATA_DIR)"
    )
    train.add_argument("--config", help="YAML file of training settings")
    train.add_argument("--recipe", help=f"named recipe ({', '.join(recipe_names())})")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set epochs=5 (repeatable)",
    )
    train.add_argument("--classes", help="target-to-name mapping for a manifest: 0=a,1=b")
    train.add_argument("--budget", help="time budget of the training (or the auto search),"
                       " e.g. 10m, 90s (default: the recipe's; auto: 13m)")
    add_pretrained(train)
    train.add_argument("--strict", action="store_true",
                       help="refuse a data set with label conflicts instead of leaving them out")
    train.add_argument("--promote", action="store_true", help="promote it if its gates pass")
    train.add_argument("--json", action="store_true")
    train.set_defaults(handler=run)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`epochs=5`, `augment.hflip=0.5` -> nested dict with YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad --set {item!r}: write it as KEY=VALUE")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def parse_budget(text: str | None) -> dict[str, Any]:
    """`10m`, `90s`, `1h`, `600` -> {"budget_s": seconds, "spend_budget": True}: a granted
    budget is spent (more cycles while they help), not only a ceiling; nothing for None."""
    if not text:
        return {}
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"bad --budget {text!r}: write it as 10m, 90s or 1h") from None
    if seconds <= 0:
        raise ConfigError(f"bad --budget {text!r}: it must be more than 0")
    return {"budget_s": seconds, "spend_budget": True}


def add_pretrained(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pretrained", choices=("cached", "download", "never"),
        help="auto's ImageNet-pretrained candidate: only when its weights are already in the"
             " torch cache (cached, the default), fetched once into it (download), or never")


def training_config(args: argparse.Namespace) -> TrainConfig:
    overrides = parse_overrides(args.set) | parse_budget(getattr(args, "budget", None))
    if getattr(args, "pretrained", None):
        overrides["pretrained_source"] = args.pretrained
    return load_config(args.recipe, args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from training.evaluate import GateBar
    from training.pipeline import train_bundle  # torch: only for commands that need it

    settings = load_settings()
    config = training_config(args)
    registry = open_registry(settings)
    with tqdm(desc="training", unit="epoch", leave=False, disable=None) as bar:

        def on_epoch(e: Epoch) -> None:
            bar.set_postfix(cycle=e.cycle, loss=f"{e.train_loss:.3f}",
                            val_acc=f"{e.val_accuracy:.3f}")
            bar.update(1)

        outcome = train_bundle(
            args.data or settings.data_dir, config, registry, GateBar.from_settings(settings),
            settings.runs_dir, settings.max_image_pixels,
            class_map=parse_class_map(args.classes), s3_endpoint_url=settings.s3_endpoint_url,
            on_epoch=on_epoch, strict=args.strict)
    result = outcome.to_json()
    promoted: bool | None = None
    if args.promote:
        promoted = outcome.evaluation.gates_passed
        if promoted:
            registry.promote(outcome.version, reason="piston train --promote")
        else:
            log.warning("not promoted: bundle %s failed its quality gates", outcome.version)
        result["promoted"] = promoted
    emit(result, args.json, _human(outcome, promoted))
    return 0


def _review(cal: CalibrationFigures) -> str:
    accepted, ece = cal.accepted_accuracy, cal.ece
    return (f"review band: {cal.review_share:.1%} of the test split sent to review (confidence"
            f" under {cal.threshold:.3f}), accepted accuracy"
            f" {'-' if accepted is None else f'{accepted:.3f}'}, ECE"
            f" {'-' if ece is None else f'{ece:.3f}'} (temperature {cal.temperature:.2f})")


def _novelty_line(info: NoveltyInfo | None) -> list[str]:
    if info is None:
        return []
    test = info.test_flagged
    return [f"novelty: {rule(info)} is novel; flags"
            f" {info.val_flagged:.1%} of val, {'-' if test is None else f'{test:.1%}'} of test"]


def _human(outcome: TrainOutcome, promoted: bool | None) -> str:
    r = outcome.metrics
    lines = [
        f"bundle {outcome.version}: test accuracy {r.accuracy:.3f}, macro-F1"
        f" {r.macro_f1:.3f} ({r.split} split), trained in {outcome.train_seconds:.1f} s",
        _review(r.calibration),
        f"recipe {r.candidate} at {r.input_size} px, {r.epochs} epochs"
        f" (stopped: {r.stopped})",
        *(f"  candidate {c.candidate}: val macro-F1 {c.val_macro_f1:.3f}, {c.seconds} s"
          f"{' <- chosen' if c.chosen else ''} {c.note}" for c in r.search),
        *(f"warning: {w}" for w in r.warnings),
        "per class: "
        + ", ".join(
            f"{n} P {c.precision:.2f} R {c.recall:.2f} F1 {c.f1:.2f}"
            for n, c in r.per_class.items()
        ),
        f"confusion matrix (rows true {r.classes}): {r.confusion_matrix}",
        *_novelty_line(r.novelty),
        "gates: "
        + ", ".join(f"{g.name} {'pass' if g.passed else 'FAIL'}" for g in r.gates),
        f"report: {outcome.report_dir / 'report.html'}",
    ]
    if promoted is not None:
        lines.append("promoted to production" if promoted else "not promoted (gates failed)")
    return "\n".join(lines)
