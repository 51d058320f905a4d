"""Any data set: near-duplicates calibrated on the data, label conflicts, splits that hold every
class, evaluations that never hide a missing class, and the input size from the images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from piston.errors import DataError
from tests.training.synthetic import SURFACE_COUNTS, notch_set, surface_set, texture_set
from training.config import load_config
from training.evaluate import GateBar, classification_metrics, missing_class_warnings, quality_gates
from training.neighbours import find_near_duplicates
from training.pipeline import make_split
from training.prepare import Prepared, prepare
from training.sizing import input_size_for
from training.split import grouped_split

MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def notches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return notch_set(tmp_path_factory.mktemp("notch"), per_class=40)


@pytest.fixture(scope="module")
def prepared_notches(notches: Path) -> Prepared:
    return prepare(str(notches), load_config(), MAX_PIXELS)


def test_alike_parts_are_not_linked_but_copies_are(notches: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(notches, root)
    shutil.copy(root / "normal" / "normal_000.png", root / "normal" / "copy_of_000.png")
    prepared = prepare(str(root), load_config(), MAX_PIXELS)
    stats = prepared.report.group_stats()
    # distinct parts that all look alike stay (nearly all) apart: no lumps, the copy is linked
    assert stats.largest_near_duplicate_group <= 4
    assert stats.images_in_groups_over_10 == 0
    assert len(set(prepared.groups)) >= 0.8 * len(prepared.groups)
    group_of = dict(zip(prepared.decoded.keys, prepared.groups, strict=True))
    assert group_of["normal/copy_of_000.png"] == group_of["normal/normal_000.png"]


def test_the_bar_follows_the_data(prepared_notches: Prepared, prepared_pistons: Prepared) -> None:
    alike = prepared_notches.report.near_duplicate_bar
    frames = prepared_pistons
    # neighbouring frames of a turning piston are linked into parts; the pills' bar is far lower
    assert frames.report.near_duplicate_bar > 4 * alike
    stats = frames.report.group_stats()
    assert 40 <= stats.near_duplicate_groups <= 75
    assert stats.largest_near_duplicate_group <= 25


def test_turned_copies_are_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, size=(30, 3, 12, 12)).astype(np.uint8)
    images = coarse.repeat(4, axis=2).repeat(4, axis=3)  # smooth 48 px images
    images[1] = images[0].transpose(0, 2, 1)[:, ::-1]  # a quarter turn of image 0
    found = find_near_duplicates(images, np.arange(30) // 15)
    assert found.components[0] == found.components[1]
    assert len(set(found.components.tolist())) == 29


def test_label_conflicts_are_listed_left_out_or_refused(tmp_path: Path) -> None:
    root = texture_set(tmp_path / "tex", {"a": 20, "b": 20, "c": 20})
    shutil.copy(root / "a" / "a_003.png", root / "b" / "looks_like_a.png")
    prepared = prepare(str(root), load_config(), MAX_PIXELS)
    conflicts = prepared.report.figures().label_conflicts
    assert [sorted(c.keys) for c in conflicts] == [["a/a_003.png", "b/looks_like_a.png"]]
    assert "a/a_003.png" not in prepared.decoded.keys
    assert "b/looks_like_a.png" not in prepared.decoded.keys
    assert len(prepared.decoded.keys) == 60 - 1
    assert any("label conflicts" in w for w in prepared.report.warnings)
    with pytest.raises(DataError, match=r"label conflicts, e.g. .*a_003.png"):
        prepare(str(root), load_config(), MAX_PIXELS, strict=True)


def test_a_class_inside_one_group_is_cut_rather_than_missing() -> None:
    labels = np.array([0] * 30 + [1] * 12)
    groups = [f"a{i}" for i in range(30)] + ["one-part"] * 12  # class 1: one long sequence
    split = grouped_split(labels, groups, seed=0)
    for part in split.parts().values():
        assert set(labels[part].tolist()) == {0, 1}
    assert split.cut_groups == ("one-part",)


def test_a_class_with_too_few_images_is_refused() -> None:
    with pytest.raises(DataError, match="fewer than 3 images"):
        grouped_split(np.array([0] * 10 + [1] * 2), [str(i) for i in range(12)])


def test_imbalanced_texture_classes_are_in_every_split(tmp_path: Path) -> None:
    counts = {f"t{k}": 60 if k == 0 else 3 + k % 4 for k in range(10)}  # 60 vs 3: 20:1
    root = texture_set(tmp_path / "tex", counts)
    prepared = prepare(str(root), load_config(), MAX_PIXELS)
    config = prepared.resolve(load_config())
    for seed in range(3):
        split = make_split(prepared, config.model_copy(update={"seed": seed}))
        for part in split.parts().values():
            assert len(set(prepared.decoded.labels[part].tolist())) == 10


def test_a_missing_test_class_is_loud_and_fails_the_gates() -> None:
    metrics = classification_metrics(np.array([0, 0, 1]), np.array([0, 0, 1]), ["a", "b", "c"])
    assert metrics.accuracy == 1.0 and metrics.missing() == ["c"]
    warnings = missing_class_warnings(metrics, "test")
    assert warnings and "NOT COMPARABLE" in warnings[0] and "c" in warnings[0]
    gates = quality_gates(metrics, GateBar())
    assert not next(g for g in gates if g.name == "support[c]").passed


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [([(80, 80)] * 3, (80, 80)), ([(224, 224)], (224, 224)), ([(512, 512)] * 2, (224, 224)),
     ([(640, 480)], (168, 224)), ([(12, 12)], (32, 32))],
)
def test_the_input_size_is_the_images_own_up_to_the_cap(
    sizes: list[tuple[int, int]], expected: tuple[int, int]
) -> None:
    assert input_size_for(sizes, 224) == expected


def test_the_default_decodes_at_the_native_size(
    prepared_notches: Prepared, prepared_pistons: Prepared
) -> None:
    assert prepared_pistons.decoded.size == (80, 80)
    assert prepared_notches.decoded.size == (224, 224)  # 512 px photos


def test_a_large_consistent_defect_does_not_lump_the_other_class(tmp_path: Path) -> None:
    # a big notch makes every cross-class pair far apart: the first bar would chain all the
    # normal parts into one group; it is halved until no group is a lump of its class
    data = notch_set(tmp_path / "big", per_class=60, side=128, notch=0.14)
    prepared = prepare(str(data), load_config(), MAX_PIXELS)
    assert prepared.report.group_stats().largest_near_duplicate_group <= 10
    split = make_split(prepared, prepared.resolve(load_config()))
    for part in split.parts().values():
        assert set(prepared.decoded.labels[part].tolist()) == {0, 1}


def test_the_surface_stand_in_has_ten_classes_two_rare_and_distinct_parts(
    tmp_path: Path,
) -> None:
    counts = {name: 3 for name in SURFACE_COUNTS}
    root = surface_set(tmp_path / "surface", counts, side=96)
    prepared = prepare(str(root), load_config(), MAX_PIXELS)
    assert prepared.classes == sorted(SURFACE_COUNTS) and len(prepared.decoded.keys) == 30
    assert prepared.decoded.size == (96, 96)
    # distinct items: no near-duplicate lumps among surfaces that all look alike
    assert prepared.report.group_stats().largest_near_duplicate_group <= 2
    rare = sorted(SURFACE_COUNTS.values())[:2]
    assert rare == [30, 50]  # 21 and 35 training images in a 70% split
    assert sum(SURFACE_COUNTS.values()) >= 1000
