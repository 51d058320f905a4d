"""Loading and checking data sets, including every kind of bad data the issue names."""

from __future__ import annotations

from pathlib import Path

import pytest

from piston.errors import DataError
from tests.conftest import synthetic_dataset
from training.config import load_config
from training.dataset import load_dataset, parse_class_map
from training.pipeline import prepare
from training.prepare import Prepared

MAX_PIXELS = 40_000_000


def test_folder_layout_of_the_real_data(piston_data: Path) -> None:
    ds = load_dataset(str(piston_data))
    assert ds.classes == ["defect_1", "defect_2", "normal"]
    assert len(ds.samples) == 285


def test_manifest_layout_with_a_class_mapping(piston_data: Path) -> None:
    mapping = parse_class_map("0=defect_1,1=defect_2,2=normal")
    ds = load_dataset(str(piston_data / "defect_log.csv"), mapping)
    assert ds.classes == ["defect_1", "defect_2", "normal"]
    assert len(ds.samples) == 285
    by_key = {s.key: s.label for s in ds.samples}
    assert by_key["normal/normal_0.jpeg"] == "normal"


def test_the_data_check_finds_the_known_duplicates(prepared_pistons: Prepared) -> None:
    prepared = prepared_pistons
    report = prepared.report
    assert report.counts == {"defect_1": 88, "defect_2": 98, "normal": 99}
    assert len(report.exact_duplicates) == 13
    assert ["normal/normal_89.jpeg", "normal/normal_90.jpeg"] in report.exact_duplicates
    # Byte-identical frames always share a near-duplicate group.
    group_of = dict(zip(prepared.decoded.keys, prepared.groups, strict=True))
    for dup in report.exact_duplicates:
        assert len({group_of[k] for k in dup}) == 1
    assert 20 < len(set(prepared.groups)) < 200


def test_bad_files_are_listed_and_left_out(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "ds", {"good": 6, "bad": 6})
    (root / "bad" / "text.jpg").write_text("I am not a JPEG")
    good_jpeg = (root / "good" / "good_0.png").read_bytes()
    (root / "good" / "corrupt.png").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (root / "good" / "notes.txt").write_text("a stray file")
    prepared = prepare(str(root), load_config(), MAX_PIXELS)
    excluded = dict(prepared.report.excluded)
    assert set(excluded) == {"bad/text.jpg", "good/corrupt.png"}
    assert "not a recognised image" in excluded["bad/text.jpg"]
    assert "truncated" in excluded["good/corrupt.png"]
    assert any("notes.txt" in w for w in prepared.report.warnings)
    assert len(prepared.decoded.keys) == 12


def test_an_empty_class_folder_is_named_and_left_out(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    (root / "c").mkdir()
    ds = load_dataset(str(root))
    assert ds.classes == ["a", "b"]
    assert any("c/ has no images" in p for p in ds.problems)


def test_a_single_class_folder_is_refused(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "ds", {"only": 5})
    with pytest.raises(DataError, match="at least 2 classes; found only"):
        load_dataset(str(root))


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nowhere"))


def test_manifest_with_a_missing_file_leaves_it_out(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "m.csv").write_text("image_path,target\na/a_0.png,a\nb/b_0.png,b\nb/gone.png,b\n")
    ds = load_dataset(str(root / "m.csv"))
    assert [s.key for s in ds.samples] == ["a/a_0.png", "b/b_0.png"]
    assert any("b/gone.png does not exist" in p for p in ds.problems)


def test_manifest_with_an_unknown_class_is_refused(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "ds", {"a": 2, "b": 2})
    (root / "m.csv").write_text("image_path,target\na/a_0.png,0\nb/b_0.png,7\n")
    with pytest.raises(DataError, match=r"unknown class.*7"):
        load_dataset(str(root / "m.csv"), parse_class_map("0=a,1=b"))


def test_manifest_without_the_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label\nx.png,a\n")
    with pytest.raises(DataError, match="lacks the column"):
        load_dataset(str(tmp_path / "m.csv"))


def test_manifest_groups_are_never_split(tmp_path: Path) -> None:
    root = synthetic_dataset(tmp_path / "ds", {"a": 20, "b": 20}, seed=3)
    rows = ["image_path,target,group"]
    rows += [f"{c}/{c}_{i}.png,{c},part{i // 5}{c}" for c in "ab" for i in range(20)]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    prepared = prepare(str(root / "m.csv"), load_config(), MAX_PIXELS)
    group_of = dict(zip(prepared.decoded.keys, prepared.groups, strict=True))
    for part in range(4):
        members = [f"a/a_{i}.png" for i in range(part * 5, part * 5 + 5)]
        assert len({group_of[m] for m in members}) == 1


def test_a_bad_class_mapping_says_how_to_write_it() -> None:
    with pytest.raises(DataError, match="target=name"):
        parse_class_map("0:a")


def test_the_real_data_is_untouched(piston_data: Path) -> None:
    before = sorted(p.name for p in piston_data.rglob("*"))
    prepare(str(piston_data), load_config(), MAX_PIXELS)
    assert sorted(p.name for p in piston_data.rglob("*")) == before
