"""The worker logic in-process, no Celery: plan a job, score a shard, merge, count, CSV."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import pytest
from PIL import Image

from piston import arch
from piston.bundle import BundleMeta, Predictor
from piston.calibration import Calibration
from piston.records import ScoreRecord, ShardCounts
from piston.storage import LocalStorage
from workers.results import (
    PRELABELS,
    RESULTS,
    RESULTS_CSV,
    REVIEW,
    merge_results,
    read_results,
    to_jsonl,
)
from workers.scoring import MIN_SHARD, list_images, plan_job, score_shard, shard_sizes


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    meta = BundleMeta(version="v1", classes=["defect", "normal"], arch="seed_cnn",
                      contract={"height": 16, "width": 16},
                      calibration=Calibration(threshold=0.5))
    module = arch.build("seed_cnn", 2, 16, 16)
    module.eval()
    return Predictor(meta, module)


def record(key: str, version: str = "v1", label: str | None = "normal",
           job: str = "j1", **extra: object) -> ScoreRecord:
    return ScoreRecord.model_validate({
        "key": key, "etag": "e", "size": 1, "label": label, "model_version": version,
        "confidence": None if label is None else 0.9, "needs_review": label is None,
        "probabilities": None if label is None else {"normal": 0.9, "defect": 0.1},
        "error": None if label else "truncated: cut short", "scored_at": "t", "job_id": job,
        **extra})


def test_plan_skips_what_this_model_scored_and_shards_the_rest(tmp_path: Path) -> None:
    src = LocalStorage(tmp_path / "in")
    for name in ("a/1.jpeg", "a/2.png", "b/3.jpg", "notes.txt", "_parts/x.jpeg"):
        src.write(name, b"x")
    out = LocalStorage(tmp_path / "out")
    assert [o.key for o in list_images(src)] == ["a/1.jpeg", "a/2.png", "b/3.jpg"]
    plan = plan_job(src, out, "v1", only_new=False, shard_size=2)
    assert [[i[0] for i in s] for s in plan.shards] == [["a/1.jpeg", "a/2.png"], ["b/3.jpg"]]
    assert plan.total == 3 and plan.skipped == 0

    def scored(key: str, version: str) -> ScoreRecord:
        return record(key, version, etag=src.head(key).etag)  # type: ignore[union-attr]

    out.write(RESULTS, to_jsonl([scored("a/1.jpeg", "v1"), scored("a/2.png", "v0")]))
    plan = plan_job(src, out, "v1", only_new=False, shard_size=2)
    assert [i[0] for s in plan.shards for i in s] == ["a/2.png", "b/3.jpg"] and plan.skipped == 1
    plan = plan_job(src, out, "v1", only_new=True, shard_size=2)  # the schedule: any version
    assert [i[0] for s in plan.shards for i in s] == ["b/3.jpg"] and plan.skipped == 2
    src.write("a/1.jpeg", b"a new photo")  # replaced: a new object, scored again
    plan = plan_job(src, out, "v1", only_new=True, shard_size=10)
    assert [i[0] for s in plan.shards for i in s] == ["a/1.jpeg", "b/3.jpg"]


def test_shards_are_full_size_then_taper_so_the_processes_finish_together() -> None:
    sizes = shard_sizes(1140, 256)
    assert sum(sizes) == 1140 and sizes[0] == 256 and max(sizes) == 256
    assert sizes == sorted(sizes, reverse=True)  # the small ones come last
    assert all(s >= MIN_SHARD for s in sizes[:-1]) and sizes[-2] == MIN_SHARD
    assert shard_sizes(10_000, 64).count(64) > 140  # the bulk stays in full shards
    assert shard_sizes(3, 2) == [2, 1] and shard_sizes(10, 10) == [10] and shard_sizes(0, 64) == []


def test_a_folder_lists_by_path_segment_without_hidden_files_or_folders(tmp_path: Path) -> None:
    src = LocalStorage(tmp_path)
    for key in ("a-b/x.png", "a/b.png", "a/.partial.png", "a b/z.png", "A/q.png", "a/c/d.png"):
        src.write(key, b"x")
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "a" / "b.png")
    (tmp_path / "a" / "dangling.png").symlink_to(tmp_path / "gone.png")
    listed = src.list()
    assert [o.key for o in listed] == ["A/q.png", "a/b.png", "a/c/d.png", "a/link.png",
                                       "a b/z.png", "a-b/x.png"]
    assert listed[1] == src.head("a/b.png") and [o.key for o in src.list("a/c")] == ["a/c/d.png"]


def test_a_shard_with_a_corrupt_and_an_oversize_image(tmp_path: Path, piston_data: Path,
                                                      predictor: Predictor) -> None:
    src = LocalStorage(tmp_path / "in")
    good = sorted((piston_data / "normal").glob("*.jpeg"))[:20]
    for path in good:
        src.write(f"ok/{path.name}", path.read_bytes())
    data = good[0].read_bytes()
    src.write("bad/cut.jpeg", data[: len(data) // 2])
    src.write("bad/huge.jpeg", data + b"\0" * 200_000)
    items = [(o.key, o.etag, o.size) for o in list_images(src)]
    progress: list[int] = []
    records = score_shard(src, predictor, items, job_id="j1", max_pixels=10**7,
                          max_bytes=150_000, on_batch=lambda done: progress.append(len(done)))
    assert records is not None and [r.key for r in records] == [i[0] for i in items]
    by_key = {r.key: r for r in records}
    assert by_key["bad/cut.jpeg"].error.startswith("truncated: ")  # type: ignore[union-attr]
    assert by_key["bad/huge.jpeg"].error.startswith("too_large: ")  # type: ignore[union-attr]
    assert all(r.label in {"defect", "normal"} and r.error is None
               for r in records if r.key.startswith("ok/"))
    assert progress == [16, 22]  # one call per batch of 16
    counts = ShardCounts.of(records)
    assert (counts.done, counts.scored, counts.errors) == (22, 20, 2)
    assert sum(counts.by_label.values()) == 20
    assert counts.needs_review == sum(r.needs_review for r in records if not r.error)
    stopped = score_shard(src, predictor, items, job_id="j1", max_pixels=10**7,
                          max_bytes=150_000, should_stop=lambda: True)
    assert stopped is None


def test_merging_twice_changes_nothing_and_keeps_other_versions(tmp_path: Path) -> None:
    out = LocalStorage(tmp_path / "out")
    merge_results(out, [record("a.jpg", "v0", job="j0")])
    mine = [record("a.jpg"), record("b.jpg", label=None), record("c.jpg", needs_review=True),
            record("d.jpg", needs_review=True, review_reason="novel", novelty=80.5, novel=True)]
    first = merge_results(out, mine)
    files = {k: out.read(k) for k in (RESULTS, RESULTS_CSV, PRELABELS, REVIEW)}
    assert merge_results(out, mine) == first  # a redelivered merge
    assert {k: out.read(k) for k in files} == files
    assert [(r.key, r.model_version) for r in read_results(out)] == [
        ("a.jpg", "v0"), ("a.jpg", "v1"), ("b.jpg", "v1"), ("c.jpg", "v1"), ("d.jpg", "v1")]
    review = list(csv.DictReader(io.StringIO(out.read(REVIEW).decode())))
    assert [(r["image_path"], r["reason"]) for r in review] == [
        ("b.jpg", "truncated: cut short"), ("c.jpg", "low confidence"), ("d.jpg", "novel")]
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(out.read(RESULTS_CSV).decode()))}
    assert (rows["d.jpg"]["novel"], rows["d.jpg"]["novelty"]) == ("True", "80.5")
    assert ShardCounts.of(mine).novel == 1
    prelabels = out.read(PRELABELS).decode().splitlines()
    assert prelabels == ["image_path,target", "a.jpg,normal"]


def test_a_formula_in_a_key_is_escaped_in_every_csv(tmp_path: Path) -> None:
    out = LocalStorage(tmp_path / "out")
    evil = '=HYPERLINK("http://x","y").jpg'
    merge_results(out, [record(evil), record("@SUM(1).jpg", label=None), record("-1+2.jpg")])
    for name in (RESULTS_CSV, PRELABELS, REVIEW):
        cells = [c for row in csv.reader(io.StringIO(out.read(name).decode())) for c in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "@") or c.startswith("-1")], name
    rows = list(csv.DictReader(io.StringIO(out.read(RESULTS_CSV).decode())))
    assert {r["key"] for r in rows} == {"'" + evil, "'@SUM(1).jpg", "'-1+2.jpg"}
    assert {r.key for r in read_results(out)} == {evil, "@SUM(1).jpg", "-1+2.jpg"}  # data kept


def test_two_merges_at_once_lose_nothing(tmp_path: Path) -> None:
    """Two jobs merging into the same output, spelled two ways: every record survives."""
    jobs = {f"j{n}": [record(f"{n}/{i}.jpg", job=f"j{n}") for i in range(30)] for n in range(2)}
    spellings = [str(tmp_path / "out"), str(tmp_path / "out") + "/"]
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def merge(job: str, where: str) -> None:
        start.wait()
        try:
            for i in range(0, 30, 3):  # many small merges: many chances to interleave
                merge_results(LocalStorage(where), jobs[job][i:i + 3])
        except BaseException as err:
            failures.append(err)

    pairs = zip(jobs, spellings, strict=True)
    threads = [threading.Thread(target=merge, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert LocalStorage(spellings[0]).uri == LocalStorage(spellings[1]).uri  # one lock name
    keys = [r.key for r in read_results(LocalStorage(spellings[0]))]
    assert sorted(keys) == sorted(r.key for rs in jobs.values() for r in rs)


def test_a_shard_writes_heatmaps_for_the_images_it_flags(tmp_path: Path,
                                                         piston_data: Path) -> None:
    meta = BundleMeta(version="v1", classes=["defect", "normal"], arch="bn_cnn",
                      contract={"height": 32, "width": 32},
                      calibration=Calibration(threshold=0.99))  # all flagged
    module = arch.build("bn_cnn", 2, 32, 32)
    module.eval()
    unsure = Predictor(meta, module)
    src, out = LocalStorage(tmp_path / "in"), LocalStorage(tmp_path / "out")
    for path in sorted((piston_data / "defect_1").glob("*.jpeg"))[:3]:
        src.write(f"d/{path.name}", path.read_bytes())
    src.write("d/cut.jpeg", b"not an image")
    items = [(o.key, o.etag, o.size) for o in list_images(src)]
    records = score_shard(src, unsure, items, job_id="j1", max_pixels=10**7, max_bytes=10**6,
                          heatmaps=out)
    assert records is not None
    for r in records:
        if r.error:
            assert r.heatmap is None
            continue
        assert r.needs_review and r.heatmap == f"heatmaps/{r.key}.png"
        picture = Image.open(io.BytesIO(out.read(r.heatmap)))
        assert picture.format == "PNG" and picture.size == (80, 80)
    assert len([r for r in records if r.heatmap]) == 3
    plain = score_shard(src, unsure, items, job_id="j2", max_pixels=10**7, max_bytes=10**6)
    assert plain is not None and all(r.heatmap is None for r in plain)
