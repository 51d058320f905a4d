"""The whole training path: prepare, split, fit (or search), evaluate, report, bundle, publish.

`train_bundle` is the one function the CLI, the retraining task and the tests call; it is
made of the steps below, which cross-validation reuses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from piston.bundle import BundleMeta, code_version, create_bundle, new_version
from piston.errors import DataError
from piston.figures import TrainingMetrics
from piston.novelty import NOVELTY_FILE, NoveltyInfo, Scorer
from piston.novelty import save as save_novelty
from piston.registry import Registry
from piston.runtime import ONNX_FILE
from training.config import TrainConfig
from training.decode import DecodedSet
from training.evaluate import Evaluation, GateBar, evaluate_model
from training.novelty import fit_for_bundle
from training.onnx_export import with_onnx
from training.prepare import Prepared, prepare
from training.report import misclassified, write_report
from training.run_figures import RunFigures
from training.search import SearchRow, run_search
from training.split import Split, grouped_split, random_split, support
from training.train import Epoch, fit

log = logging.getLogger(__name__)
PARTS = ("train", "val", "test")
# the run's figures `train --json` prints, in this order, beside the headline ones
JSON_FIGURES = ("confusion_matrix", "classes", "per_class", "gates", "split", "support_by_split",
                "input_size", "candidate", "search", "data", "train_accuracy", "val_accuracy",
                "epochs", "stopped", "warnings", "calibration", "novelty")


@dataclass
class Fitted:
    """A trained model, the config it was trained with, and how it was chosen."""

    module: nn.Module
    config: TrainConfig
    history: list[Epoch]
    seconds: float
    stopped: str
    best_epoch: int
    search: list[SearchRow] = field(default_factory=list)
    chosen: str = ""


@dataclass
class TrainOutcome:
    version: str
    metrics: RunFigures
    train_seconds: float
    decode_seconds: float
    total_seconds: float
    report_dir: Path
    evaluation: Evaluation
    history: list[Epoch] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        m = self.metrics
        figures = m.model_dump(include=set(JSON_FIGURES))
        return {
            "version": self.version,
            "test_accuracy": m.accuracy,
            "macro_f1": m.macro_f1,
            **m.review(),
            **{k: figures[k] for k in JSON_FIGURES},
            "gates_passed": self.evaluation.gates_passed,
            "train_seconds": round(self.train_seconds, 3),
            "decode_seconds": round(self.decode_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "report": str(self.report_dir / "report.html"),
        }


def make_split(prepared: Prepared, config: TrainConfig) -> Split:
    labels = prepared.decoded.labels
    if config.split == "random":
        split = random_split(labels, config.seed)
    else:
        split = grouped_split(labels, prepared.groups, seed=config.seed)
    if split.cut_groups:
        log.warning("near-duplicate groups %s were cut so that every class is in every split:"
                    " their near-copies may straddle splits", ", ".join(split.cut_groups))
    return split


def fit_split(
    config: TrainConfig, parts: dict[str, DecodedSet], classes: list[str],
    on_epoch: Callable[[Epoch], None] | None = None,
) -> Fitted:
    """Train one recipe, or search the candidates of a search recipe, on train (+ val)."""
    train, val = parts["train"], parts["val"]
    if config.search:
        winner, table = run_search(config, train, val, classes, on_epoch)
        assert winner.fitted is not None
        f = winner.fitted
        seconds = sum(row.seconds for row in table)
        return Fitted(f.module, winner.config, f.history, seconds, f.stopped, f.best_epoch,
                      table, winner.name)
    f = fit(config, train.images, train.labels, val.images, val.labels, len(classes), on_epoch)
    return Fitted(f.module, config, f.history, f.seconds, f.stopped, f.best_epoch, [],
                  config.recipe)


def train_bundle(
    location: str,
    config: TrainConfig,
    registry: Registry,
    bar: GateBar,
    runs_dir: Path,
    max_pixels: int,
    *,
    class_map: dict[str, str] | None = None,
    s3_endpoint_url: str | None = None,
    on_epoch: Callable[[Epoch], None] | None = None,
    strict: bool = False,
) -> TrainOutcome:
    """Train on a data set and publish the result as a new bundle in `registry`."""
    start = time.perf_counter()
    prepared = prepare(location, config, max_pixels, class_map=class_map,
                       s3_endpoint_url=s3_endpoint_url, strict=strict)
    config = prepared.resolve(config)
    split = make_split(prepared, config)
    if min(len(ix) for ix in split.parts().values()) == 0:
        raise DataError(f"{len(prepared.decoded.keys)} usable images are too few to split"
                        " into train/val/test")
    parts = {name: prepared.decoded.subset(ix) for name, ix in split.parts().items()}
    fitted = fit_split(config, parts, prepared.classes, on_epoch)
    evaluation = evaluate_model(fitted.module, fitted.config, parts["val"], parts["test"],
                                prepared.classes, bar)
    novelty, novelty_info = fit_for_bundle(fitted.module, evaluation.contract, parts,
                                           len(prepared.classes))
    metrics = describe(evaluation, fitted, prepared, split, config, novelty_info)
    version = new_version()
    report_dir = runs_dir / version
    write_report(report_dir, f"piston-classifier {version}", metrics, fitted.history,
                 prepared.classes, misclassified(parts["test"], evaluation, prepared.classes))
    meta = build_meta(version, fitted.config, evaluation, metrics, prepared, registry)
    meta = meta.model_copy(update={"novelty": novelty_info})
    write_bundle(meta, fitted.module, report_dir, parts, prepared, novelty)
    registry.publish(version)
    return TrainOutcome(version, metrics, fitted.seconds, prepared.decode_seconds,
                        time.perf_counter() - start, report_dir, evaluation, fitted.history)


def describe(
    evaluation: Evaluation, fitted: Fitted, prepared: Prepared, split: Split, config: TrainConfig,
    novelty: NoveltyInfo | None = None,
) -> RunFigures:
    """Every figure the report shows, in one record (`train --json`, metrics.json)."""
    best = fitted.history[fitted.best_epoch - 1]
    warnings = list(prepared.report.warnings) + list(evaluation.warnings)
    if split.cut_groups:
        warnings.append(f"near-duplicate groups were cut to put every class in every split:"
                        f" {', '.join(split.cut_groups)}")
    return RunFigures(
        **dict(evaluation.metrics),
        calibration=evaluation.calibration,
        gates=evaluation.gates,
        classes=prepared.classes,
        split=config.split,
        support_by_split=support(prepared.decoded.labels, split, prepared.classes),
        input_size=list(fitted.config.input_size or ()),
        candidate=fitted.chosen,
        search=fitted.search,
        data=prepared.report.figures(round(prepared.decode_seconds, 3)),
        epochs=len(fitted.history),
        stopped=fitted.stopped,
        best_epoch=best.epoch,
        train_accuracy=best.train_accuracy,
        val_accuracy=best.val_accuracy,
        warnings=warnings,
        novelty=novelty,
    )


def build_meta(
    version: str, config: TrainConfig, evaluation: Evaluation, metrics: RunFigures,
    prepared: Prepared, registry: Registry,
) -> BundleMeta:
    contract = evaluation.contract
    return BundleMeta(
        version=version,
        classes=prepared.classes,
        arch=config.arch,
        arch_params=config.arch_params,
        contract=contract,
        calibration=evaluation.calibration.calibration(),
        config=config.model_dump(mode="json"),
        metrics=TrainingMetrics.model_validate(metrics.model_dump()),
        gates=evaluation.gates,
        data_fingerprint=fingerprint(prepared.decoded),
        parent=registry.current(),
        code_version=code_version(),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def write_bundle(
    meta: BundleMeta, module: nn.Module, report_dir: Path, parts: dict[str, DecodedSet],
    prepared: Prepared, novelty: Scorer | None = None,
) -> None:
    """The bundle: weights, meta, the split's file lists, the data check, the report and the
    novelty model."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp)
        (extra / "split.json").write_text(
            json.dumps({name: parts[name].keys for name in PARTS}, indent=1))
        (extra / "data_check.json").write_text(prepared.report.figures().model_dump_json(indent=1))
        files = {"report": report_dir, "split.json": extra / "split.json",
                 "data_check.json": extra / "data_check.json"}
        # after the novelty fit: the graph holds the check (its `novelty` output)
        meta = with_onnx(meta, module, parts["test"].images, extra / ONNX_FILE, novelty)
        if meta.onnx is not None:
            files[ONNX_FILE] = extra / ONNX_FILE
        if novelty is not None:
            save_novelty(novelty, extra / NOVELTY_FILE)
            files[NOVELTY_FILE] = extra / NOVELTY_FILE
        create_bundle(meta, module.state_dict(), files)


def fingerprint(decoded: DecodedSet) -> str:
    """A hash of the manifest (keys and labels) and every file's content."""
    digest = hashlib.sha256()
    for key, label, content in sorted(
        zip(decoded.keys, decoded.labels.tolist(), decoded.digests, strict=True)
    ):
        digest.update(f"{key}\t{label}\t{content}\n".encode())
    return digest.hexdigest()


__all__ = ["Fitted", "GateBar", "Prepared", "TrainOutcome", "fit_split", "prepare",
           "train_bundle"]
