"""The review queue's storage side: answers appended in the training format, the retrain set."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from piston.errors import DataError, ImageError
from piston.storage import open_storage
from service.console.retrain import build_training_set
from service.console.review import REVIEW, REVIEWED, append_answer, queue, thumbnail
from tests.conftest import image_bytes, synthetic_dataset

FLAGGED = ("image_path,predicted,confidence,reason\n"
           "line-2/a.png,normal,0.4100,low confidence\n"
           '"line-2/b, second.png",defect_1,0.3800,low confidence\n'
           "line-2/c.png,,,not_an_image: the data is not a recognised image\n"
           "'=cmd.png,normal,0.5000,low confidence\n")  # a formula key, escaped by the worker


def test_answers_are_appended_in_the_training_csv_format(tmp_path: Path) -> None:
    out = open_storage(tmp_path / "results")
    out.write(REVIEW, FLAGGED.encode())
    assert [i["answer"] for i in queue(out)] == [None, None, None, None]

    assert append_answer(out, "line-2/a.png", "defect_2") == 1
    assert append_answer(out, "line-2/b, second.png", "normal") == 2
    assert append_answer(out, "line-2/a.png", "normal") == 3  # a correction: appended too
    assert append_answer(out, "=cmd.png", "defect_1") == 4

    rows = list(csv.reader(io.StringIO(out.read(REVIEWED).decode())))
    assert rows == [["image_path", "target"], ["line-2/a.png", "defect_2"],
                    ["line-2/b, second.png", "normal"], ["line-2/a.png", "normal"],
                    ["'=cmd.png", "defect_1"]]
    items = queue(out)
    assert [(i["image_path"], i["answer"]) for i in items] == [
        ("line-2/a.png", "normal"), ("line-2/b, second.png", "normal"), ("line-2/c.png", None),
        ("=cmd.png", "defect_1")]
    assert items[0]["confidence"] == pytest.approx(0.41)
    assert items[2]["predicted"] is None and items[2]["reason"].startswith("not_an_image")


def test_a_thumbnail_is_a_small_jpeg_and_a_bad_image_says_why(tmp_path: Path) -> None:
    src = open_storage(tmp_path / "src")
    src.write("big.png", image_bytes(size=(1200, 900), fmt="PNG"))
    src.write("bad.jpeg", b"\xff\xd8 not really a jpeg")
    small = thumbnail(src, "big.png", 40_000_000)
    from PIL import Image

    with Image.open(io.BytesIO(small)) as img:
        assert img.format == "JPEG" and max(img.size) == 320
    with pytest.raises(ImageError) as err:
        thumbnail(src, "bad.jpeg", 40_000_000)
    assert err.value.kind == "not_an_image"


def test_the_retrain_set_is_the_data_set_plus_the_reviewed_images(tmp_path: Path) -> None:
    data = synthetic_dataset(tmp_path / "data", {"normal": 3, "defect_1": 2})
    src = open_storage(tmp_path / "src")
    src.write("line-2/x.png", image_bytes())
    src.write("line-2/y.png", image_bytes(color=(10, 200, 10)))
    dest = open_storage(tmp_path / "results" / "_retrain" / "s1")

    counts = build_training_set(open_storage(data), src,
                                {"line-2/x.png": "defect_1", "line-2/y.png": "normal"}, dest)

    assert counts == {"normal": 4, "defect_1": 3}
    keys = sorted(o.key for o in dest.list(""))
    assert "defect_1/reviewed__line-2__x.png" in keys
    assert "normal/reviewed__line-2__y.png" in keys
    assert dest.read("normal/reviewed__line-2__y.png") == src.read("line-2/y.png")
    assert len(keys) == 7


def test_the_retrain_set_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    data = synthetic_dataset(tmp_path / "data", {"normal": 2, "defect_1": 2})
    src = open_storage(tmp_path / "src")
    dest = open_storage(tmp_path / "dest")
    with pytest.raises(DataError, match="no image of this job has been reviewed"):
        build_training_set(open_storage(data), src, {}, dest)
    manifest_only = tmp_path / "manifest"
    manifest_only.mkdir()
    (manifest_only / "labels.csv").write_text("image_path,target\n")
    with pytest.raises(DataError, match="folder-per-class"):
        build_training_set(open_storage(manifest_only), src, {"a.png": "normal"}, dest)
    assert dest.list("") == []
