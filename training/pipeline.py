"""The whole training path: data check, split, fit, evaluate, report, bundle, publish.

`train_bundle` is the one function the CLI, the retraining task and the tests call.
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

import numpy as np

from piston.bundle import BundleMeta, code_version, create_bundle, new_version
from piston.errors import DataError
from piston.registry import Registry
from training.calibrate import calibrate
from training.check import DataReport, check, split_groups
from training.config import TrainConfig
from training.dataset import Dataset, load_dataset
from training.decode import DecodedSet, decode_dataset
from training.evaluate import classification_metrics, overfitting_warning, quality_gates
from training.report import write_report
from training.split import Split, grouped_split, random_split
from training.train import Epoch, contract_of, fit, predict_proba

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateBar:
    min_accuracy: float = 0.90
    min_class_f1: float = 0.85
    min_class_recall: float = 0.80


@dataclass
class Prepared:
    """A data set loaded, decoded, checked and grouped: what every training or fold starts from."""

    dataset: Dataset
    decoded: DecodedSet
    groups: list[str]
    report: DataReport
    decode_seconds: float

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes


@dataclass
class TrainOutcome:
    version: str
    metrics: dict[str, Any]
    train_seconds: float
    decode_seconds: float
    total_seconds: float
    report_dir: Path
    data_report: DataReport
    history: list[Epoch] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "version": self.version,
            "test_accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "confusion_matrix": m["confusion_matrix"],
            "classes": m["classes"],
            "per_class": m["per_class"],
            "gates": m["gates"],
            "gates_passed": all(g["passed"] for g in m["gates"]),
            "split": m["split"],
            "train_accuracy": m["train_accuracy"],
            "val_accuracy": m["val_accuracy"],
            "warnings": m["warnings"],
            "calibration": m.get("calibration"),
            "train_seconds": round(self.train_seconds, 3),
            "decode_seconds": round(self.decode_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "report": str(self.report_dir / "report.html"),
        }


def prepare(
    location: str,
    config: TrainConfig,
    max_pixels: int,
    class_map: dict[str, str] | None = None,
    s3_endpoint_url: str | None = None,
) -> Prepared:
    """Load, decode (once, cached in memory), check and group a data set."""
    start = time.perf_counter()
    dataset = load_dataset(location, class_map, s3_endpoint_url)
    decoded = decode_dataset(dataset, contract_of(config), max_pixels)
    for key, reason in decoded.failures:
        log.warning("left out %s: %s", key, reason)
    present = sorted({int(label) for label in decoded.labels})
    if len(present) < 2:
        raise DataError("fewer than 2 classes have images that decode: nothing to train on")
    groups = split_groups(decoded, config.near_duplicate_similarity)
    report = check(decoded, dataset.classes, groups)
    report.warnings[:0] = dataset.problems
    for warning in report.warnings:
        log.warning("data check: %s", warning)
    return Prepared(dataset, decoded, groups, report, time.perf_counter() - start)


def make_split(prepared: Prepared, config: TrainConfig) -> Split:
    labels = prepared.decoded.labels
    if config.split == "random":
        return random_split(labels, config.seed)
    return grouped_split(labels, prepared.groups, seed=config.seed)


def train_bundle(
    location: str,
    config: TrainConfig,
    registry: Registry,
    bar: GateBar,
    runs_dir: Path,
    max_pixels: int,
    class_map: dict[str, str] | None = None,
    s3_endpoint_url: str | None = None,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> TrainOutcome:
    """Train on a data set and publish the result as a new bundle in `registry`."""
    start = time.perf_counter()
    prepared = prepare(location, config, max_pixels, class_map, s3_endpoint_url)
    decoded, classes = prepared.decoded, prepared.classes
    split = make_split(prepared, config)
    if len(split.train) == 0 or len(split.val) == 0 or len(split.test) == 0:
        raise DataError(
            f"{len(decoded.keys)} usable images are too few to split into train/val/test"
        )
    sub = {name: decoded.subset(getattr(split, name)) for name in ("train", "val", "test")}
    result = fit(
        config,
        sub["train"].images,
        sub["train"].labels,
        sub["val"].images,
        sub["val"].labels,
        len(classes),
        on_epoch,
    )
    contract = contract_of(config)
    probs = predict_proba(result.module, sub["test"].images, contract)
    predicted = probs.argmax(1)
    metrics = classification_metrics(sub["test"].labels, predicted, classes)
    metrics["calibration"] = calibrate(
        predict_proba(result.module, sub["val"].images, contract), sub["val"].labels, probs,
        sub["test"].labels, config.review_target_error, config.decision_threshold)
    metrics["gates"] = [
        g.model_dump()
        for g in quality_gates(metrics, bar.min_accuracy, bar.min_class_f1, bar.min_class_recall)
    ]
    last = result.history[result.best_epoch - 1]
    metrics.update(
        classes=classes,
        split=config.split,
        best_epoch=result.best_epoch,
        train_accuracy=last.train_accuracy,
        val_accuracy=last.val_accuracy,
        warnings=list(prepared.report.warnings),
    )
    overfit = overfitting_warning(last.train_accuracy, last.val_accuracy)
    if overfit:
        log.warning(overfit)
        metrics["warnings"].append(overfit)

    version = new_version()
    runs_dir.mkdir(parents=True, exist_ok=True)
    report_dir = runs_dir / version
    wrong = [
        (
            sub["test"].keys[i],
            sub["test"].images[i],
            classes[int(sub["test"].labels[i])],
            classes[int(predicted[i])],
            float(probs[i].max()),
        )
        for i in np.nonzero(predicted != sub["test"].labels)[0]
    ]
    write_report(
        report_dir, f"piston-classifier {version}", metrics, result.history, classes, wrong
    )
    meta = BundleMeta(
        version=version,
        classes=classes,
        arch=config.arch,
        arch_params=config.arch_params,
        contract=contract.to_dict(),
        threshold=metrics["calibration"]["threshold"],
        config=config.model_dump(mode="json"),
        metrics=metrics,
        gates=metrics["gates"],
        data_fingerprint=fingerprint(decoded),
        parent=registry.current(),
        code_version=code_version(),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp)
        split_lists = {name: sub[name].keys for name in ("train", "val", "test")}
        (extra / "split.json").write_text(json.dumps(split_lists, indent=1))
        (extra / "data_check.json").write_text(json.dumps(prepared.report.to_dict(), indent=1))
        files = {
            "report": report_dir,
            "split.json": extra / "split.json",
            "data_check.json": extra / "data_check.json",
        }
        create_bundle(meta, result.module.state_dict(), files)
    registry.publish(version)
    return TrainOutcome(
        version,
        metrics,
        result.seconds,
        prepared.decode_seconds,
        time.perf_counter() - start,
        report_dir,
        prepared.report,
        result.history,
    )


def fingerprint(decoded: DecodedSet) -> str:
    """A hash of the manifest (keys and labels) and every file's content."""
    digest = hashlib.sha256()
    for key, label, content in sorted(
        zip(decoded.keys, decoded.labels.tolist(), decoded.digests, strict=True)
    ):
        digest.update(f"{key}\t{label}\t{content}\n".encode())
    return digest.hexdigest()
