"""Grouped k-fold cross-validation on data sets unlike the pistons, and on the pistons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from piston.errors import DataError
from tests.conftest import synthetic_dataset
from training.config import DEFAULT_RECIPE, load_config
from training.crossval import cross_validate, grouped_folds
from training.pipeline import prepare

MAX_PIXELS = 40_000_000
QUICK = {"epochs": 3, "input_size": [32, 32], "threads": 1}


def test_grouped_folds_keep_groups_whole_and_classes_spread() -> None:
    rng = np.random.default_rng(0)
    groups = [f"g{i // 3}" for i in range(150)]  # 50 groups of 3
    labels = np.array([(i // 3) % 3 for i in range(150)])
    rng.shuffle(labels.reshape(50, 3))  # mixed-label groups too
    folds = grouped_folds(labels, groups, 5, seed=1)
    for group in set(groups):
        assert len({int(folds[i]) for i, g in enumerate(groups) if g == group}) == 1
    per_fold = np.array([np.bincount(labels[folds == k], minlength=3) for k in range(5)])
    assert per_fold.min() > 0 and per_fold.max() - per_fold.min() <= 6
    assert not np.array_equal(folds, grouped_folds(labels, groups, 5, seed=2))
    assert np.array_equal(folds, grouped_folds(labels, groups, 5, seed=1))


@pytest.mark.slow  # trains
@pytest.mark.parametrize(
    ("classes", "size", "fmt"),
    [
        ({"a": 30, "b": 30}, (24, 40), "PNG"),  # two classes, non-square, PNG
        ({"c0": 40, "c1": 12, "c2": 25, "c3": 8, "c4": 20}, (64, 48), "JPEG"),  # 5, imbalanced
        ({"ok": 60, "bad": 6}, (30, 30), "BMP"),  # a 10:1 minority
    ],
)
def test_any_data_set_cross_validates(
    tmp_path: Path, classes: dict[str, int], size: tuple[int, int], fmt: str
) -> None:
    root = synthetic_dataset(tmp_path / "data", classes, size=size, fmt=fmt)
    config = load_config(overrides=QUICK)
    prepared = prepare(str(root), config, MAX_PIXELS)
    result = cross_validate(prepared, config, folds=3, repeats=2)
    s = result.summary()
    assert s.runs == 6 and s.folds == 3 and s.repeats == 2
    assert set(s.recall_mean) == set(classes)
    pooled = np.array(s.confusion_matrix)
    assert pooled.shape == (len(classes), len(classes))
    assert pooled.sum() == 2 * sum(classes.values())  # every image tested once per repeat
    assert pooled.sum(1).tolist() == [2 * n for n in sorted_counts(classes, prepared.classes)]
    assert 0.0 <= s.worst_fold_accuracy <= s.mean_accuracy <= 1.0
    assert s.mean_accuracy > 1.0 / len(classes)  # the classes are visibly different hues
    assert s.calibration_mean.ece >= 0.0 and s.calibration_mean.review_share >= 0.0
    assert s.parameters > 0 and s.train_seconds_mean > 0


def sorted_counts(classes: dict[str, int], order: list[str]) -> list[int]:
    return [classes[name] for name in order]


def test_a_manifest_group_column_keeps_its_images_in_one_fold(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "data", {"x": 24, "y": 24}, size=(20, 20))
    rows = ["image_path,target,group"]
    for name in ("x", "y"):
        rows += [f"{name}/{name}_{i}.png,{name},part{name}{i // 4}" for i in range(24)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = load_config(overrides=QUICK)
    prepared = prepare(str(root / "manifest.csv"), config, MAX_PIXELS)
    folds = grouped_folds(prepared.decoded.labels, prepared.groups, 4)
    by_part: dict[str, set[int]] = {}
    for group, fold in zip(prepared.decoded.groups, folds, strict=True):
        by_part.setdefault(str(group), set()).add(int(fold))
    assert len(by_part) == 12 and all(len(f) == 1 for f in by_part.values())


def test_too_few_groups_for_the_folds_is_a_clear_error(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "data", {"a": 2, "b": 2}, size=(16, 16))
    config = load_config(overrides=QUICK)
    prepared = prepare(str(root), config, MAX_PIXELS)
    with pytest.raises(DataError, match="too few for 5 folds"):
        cross_validate(prepared, config, folds=5)


@pytest.mark.slow  # trains
def test_piston_evaluate_on_the_real_data(
    piston_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "cv.png"
    # two folds: each runs the default's whole search, and two test every image once
    code = main(["evaluate", "--data", str(piston_data), "--folds", "2", "--set", "epochs=1",
                 "--plot", str(plot), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["recipe"] == DEFAULT_RECIPE and out["runs"] == 2
    assert set(out["recall_mean"]) == {"defect_1", "defect_2", "normal"}
    for key in ("mean_accuracy", "std_accuracy", "worst_fold_accuracy", "macro_f1_mean"):
        assert 0.0 <= out[key] <= 1.0
    assert np.array(out["confusion_matrix"]).sum() == 285
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--set", "arch=nope", "--set", "epochs=1"], "unknown architecture"),
    ],
)
def test_piston_evaluate_bad_input_ends_with_one_line(
    piston_data: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["evaluate", "--data", str(piston_data), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("error:")
