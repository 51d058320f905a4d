"""Grouped k-fold cross-validation: how a recipe does on parts it has never seen.

Near-duplicate groups (frames of one turning part) and the manifest's `group` column stay
inside one fold, so no test image has a near-copy in training. Each fold is scored by the same
functions as a training run (`prepare` once, then `fit`, `predict_logits`,
`classification_metrics`, `calibrate`); repeats reshuffle the folds with another seed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from piston.errors import DataError
from piston.figures import ClassificationFigures
from training.calibrate import CalibrationFigures
from training.config import TrainConfig
from training.evaluate import GateBar, evaluate_model
from training.pipeline import fit_split
from training.prepare import Prepared

VAL_FOLDS = 7  # the validation part of each training fold: one seventh (~14%) of it, grouped


def grouped_folds(labels: np.ndarray, groups: list[str], k: int, seed: int = 0) -> np.ndarray:
    """A fold number per image. Whole groups are dealt, largest first in a seeded order, each to
    the fold holding the fewest images of the group's majority class (stratified by class)."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    names = sorted(members)
    names = [names[i] for i in rng.permutation(len(names))]
    names.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
    taken = np.zeros((k, int(labels.max(initial=0)) + 1), dtype=np.int64)
    fold_of = np.zeros(len(labels), dtype=np.int64)
    for group in names:
        majority = Counter(int(labels[i]) for i in members[group]).most_common(1)[0][0]
        load = taken[:, majority] * k + taken.sum(1) / max(len(labels), 1)  # ties: emptier fold
        fold = int(np.argmin(load))
        for i in members[group]:
            fold_of[i] = fold
            taken[fold, int(labels[i])] += 1
    return fold_of


@dataclass
class FoldResult:
    repeat: int
    fold: int
    metrics: ClassificationFigures
    calibration: CalibrationFigures
    train_seconds: float
    epochs_run: int
    sizes: dict[str, int]
    chosen: str = ""


class CalibrationMeans(BaseModel):
    """The calibration's figures, averaged over the folds that measured them (nan: none)."""

    review_share: float
    accepted_accuracy: float
    ece: float
    ece_uncalibrated: float
    plain_review_share: float
    plain_accepted_accuracy: float
    threshold: float
    temperature: float


class FoldRow(BaseModel):
    """One fold's line in the summary."""

    repeat: int
    fold: int
    accuracy: float
    macro_f1: float
    train_seconds: float
    recall: dict[str, float]
    review_share: float
    candidate: str
    test_support: dict[str, int]
    train: int
    val: int
    test: int


class CrossValSummary(BaseModel):
    """Mean, spread and worst fold of every figure (`piston evaluate --json`)."""

    recipe: str
    arch: str
    parameters: int
    folds: int
    repeats: int
    runs: int
    classes: list[str]
    mean_accuracy: float
    std_accuracy: float
    worst_fold_accuracy: float
    macro_f1_mean: float
    macro_f1_std: float
    worst_fold_macro_f1: float
    recall_mean: dict[str, float]
    recall_std: dict[str, float]
    recall_worst_fold: dict[str, float]
    worst_class_recall_mean: float
    confusion_matrix: list[list[int]]
    pooled_accuracy: float
    calibration_mean: CalibrationMeans
    train_seconds_mean: float
    train_seconds_total: float
    epochs_mean: float
    candidates_chosen: dict[str, int]
    per_fold: list[FoldRow]


@dataclass
class CrossValResult:
    classes: list[str]
    config: TrainConfig
    folds: list[FoldResult] = field(default_factory=list)
    parameters: int = 0

    def summary(self) -> CrossValSummary:
        """Mean, spread and worst fold of every figure, and the pooled confusion matrix."""
        acc = np.array([f.metrics.accuracy for f in self.folds])
        f1 = np.array([f.metrics.macro_f1 for f in self.folds])
        recall = {
            c: np.array([f.metrics.per_class[c].recall for f in self.folds
                         if f.metrics.per_class[c].support])
            for c in self.classes
        }
        pooled = np.sum([f.metrics.confusion_matrix for f in self.folds], axis=0)
        cal = CalibrationMeans(**{
            k: _finite_mean([getattr(f.calibration, k) for f in self.folds])
            for k in CalibrationMeans.model_fields})
        return CrossValSummary(
            recipe=self.config.recipe,
            arch=self.config.arch,
            parameters=self.parameters,
            folds=len({f.fold for f in self.folds}),
            repeats=len({f.repeat for f in self.folds}),
            runs=len(self.folds),
            classes=self.classes,
            mean_accuracy=float(acc.mean()),
            std_accuracy=_std(acc),
            worst_fold_accuracy=float(acc.min()),
            macro_f1_mean=float(f1.mean()),
            macro_f1_std=_std(f1),
            worst_fold_macro_f1=float(f1.min()),
            recall_mean={c: _finite_mean(list(r)) for c, r in recall.items()},
            recall_std={c: _std(r) for c, r in recall.items()},
            recall_worst_fold={c: float(r.min()) if len(r) else float("nan")
                               for c, r in recall.items()},
            worst_class_recall_mean=min(_finite_mean(list(r)) for r in recall.values()),
            confusion_matrix=pooled.tolist(),
            pooled_accuracy=float(np.trace(pooled) / max(pooled.sum(), 1)),
            calibration_mean=cal,
            train_seconds_mean=float(np.mean([f.train_seconds for f in self.folds])),
            train_seconds_total=float(np.sum([f.train_seconds for f in self.folds])),
            epochs_mean=float(np.mean([f.epochs_run for f in self.folds])),
            candidates_chosen=dict(Counter(f.chosen for f in self.folds)),
            per_fold=[_row(f) for f in self.folds],
        )


def _row(f: FoldResult) -> FoldRow:
    per_class = f.metrics.per_class
    return FoldRow(repeat=f.repeat, fold=f.fold, accuracy=f.metrics.accuracy,
                   macro_f1=f.metrics.macro_f1, train_seconds=round(f.train_seconds, 3),
                   recall={c: v.recall for c, v in per_class.items()},
                   review_share=f.calibration.review_share, candidate=f.chosen,
                   test_support={c: v.support for c, v in per_class.items()}, **f.sizes)


def cross_validate(
    prepared: Prepared,
    config: TrainConfig,
    folds: int = 5,
    repeats: int = 1,
    on_fold: Callable[[FoldResult], None] | None = None,
) -> CrossValResult:
    """Train and score `folds` x `repeats` models on grouped folds of a prepared data set."""
    labels, groups = prepared.decoded.labels, prepared.groups
    if folds < 2:
        raise DataError("cross-validation needs at least 2 folds")
    if len(set(groups)) < folds:
        raise DataError(
            f"{len(set(groups))} near-duplicate groups are too few for {folds} folds: use fewer"
        )
    config = prepared.resolve(config)
    if config.search and config.budget_s:  # the search budget is for the whole evaluation
        config = config.model_copy(update={"budget_s": config.budget_s / (folds * repeats)})
    result = CrossValResult(prepared.classes, config)
    for repeat in range(repeats):
        seed = config.seed + repeat
        fold_of = grouped_folds(labels, groups, folds, seed)
        for fold in range(folds):
            outcome = _one_fold(prepared, config.model_copy(update={"seed": seed}), fold_of,
                                fold, repeat, result)
            result.folds.append(outcome)
            if on_fold:
                on_fold(outcome)
    return result


def _one_fold(
    prepared: Prepared, config: TrainConfig, fold_of: np.ndarray, fold: int, repeat: int,
    result: CrossValResult,
) -> FoldResult:
    """Fit on the other folds (a grouped seventh of them for validation), score this one."""
    labels, groups = prepared.decoded.labels, prepared.groups
    test = np.nonzero(fold_of == fold)[0]
    rest = np.nonzero(fold_of != fold)[0]
    inner = grouped_folds(labels[rest], [groups[i] for i in rest], VAL_FOLDS, config.seed)
    train, val = rest[inner != 0], rest[inner == 0]
    parts = {n: prepared.decoded.subset(ix) for n, ix in
             (("train", train), ("val", val), ("test", test))}
    fitted = fit_split(config, parts, prepared.classes)
    result.parameters = sum(p.numel() for p in fitted.module.parameters())
    evaluation = evaluate_model(fitted.module, fitted.config, parts["val"], parts["test"],
                                prepared.classes, GateBar())
    return FoldResult(repeat, fold, evaluation.metrics, evaluation.calibration, fitted.seconds,
                      len(fitted.history), {"train": len(train), "val": len(val),
                                            "test": len(test)}, fitted.chosen)


def plot_crossval(summary: CrossValSummary, path: Path) -> Path:
    """Per-fold accuracy, per-class recall across folds and the pooled confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, runs = summary.classes, summary.per_fold
    fig, (acc_ax, rec_ax, cm_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    acc_ax.bar(range(len(runs)), [r.accuracy for r in runs], color="#4878a8")
    acc_ax.axhline(summary.mean_accuracy, color="black", linestyle="--", label="mean")
    acc_ax.set(title="test accuracy per fold", xlabel="repeat.fold", ylim=(0, 1.02))
    acc_ax.set_xticks(range(len(runs)), [f"{r.repeat}.{r.fold}" for r in runs],
                      rotation=90, fontsize=7)
    acc_ax.legend()
    rec_ax.boxplot([[r.recall[c] for r in runs] for c in classes])
    rec_ax.set_xticks(range(1, len(classes) + 1), classes, rotation=45, ha="right")
    rec_ax.set(title="recall per class across folds", ylim=(0, 1.02))
    matrix = np.asarray(summary.confusion_matrix)
    cm_ax.imshow(matrix, cmap="Blues")
    cm_ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    cm_ax.set_yticks(range(len(classes)), classes)
    cm_ax.set(title="pooled confusion matrix", xlabel="predicted", ylabel="true")
    for (i, j), value in np.ndenumerate(matrix):
        cm_ax.text(j, i, str(value), ha="center", va="center",
                   color="white" if value > matrix.max() / 2 else "black")
    fig.suptitle(f"recipe {summary.recipe}: accuracy {summary.mean_accuracy:.3f}"
                 f" +/- {summary.std_accuracy:.3f}, worst fold"
                 f" {summary.worst_fold_accuracy:.3f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
