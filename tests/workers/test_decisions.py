"""The plain functions under the tasks: champion/challenger decisions and scoring plans."""

from __future__ import annotations

import json
from pathlib import Path

from piston.storage import LocalStorage
from workers.retrain import decide
from workers.scoring import RESULTS, list_images, plan, shards

PASSED = {"gates": [{"name": "accuracy", "value": 0.95, "threshold": 0.9, "passed": True}]}
FAILED = {"gates": [{"name": "accuracy", "value": 0.5, "threshold": 0.9, "passed": False}]}


def scores(new: float, old: float | None, f1_new: float = 0.9,
           f1_old: float = 0.9) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {
        "challenger": {"accuracy": new, "macro_f1": f1_new, "images": 40}}
    if old is not None:
        out["champion"] = {"accuracy": old, "macro_f1": f1_old, "images": 40}
    return out


def test_promote_only_when_gates_pass_and_not_worse() -> None:
    assert decide("v2", "v1", True, scores(0.95, 0.90), PASSED, True)[0] is True
    assert decide("v2", "v1", True, scores(0.90, 0.90), PASSED, True)[0] is True  # a tie
    assert decide("v2", None, True, scores(0.95, None), PASSED, True)[0] is True
    promoted, why = decide("v2", "v1", True, scores(0.85, 0.90), PASSED, True)
    assert not promoted and why.startswith("worse than production v1 on the same 40 test")
    promoted, why = decide("v2", "v1", True, scores(0.95, 0.90, 0.70, 0.80), PASSED, True)
    assert not promoted and "macro_f1 0.700 < 0.800" in why
    promoted, why = decide("v2", "v1", False, scores(0.95, 0.90), FAILED, True)
    assert not promoted and why == "failed its quality gates: accuracy 0.500 (bar 0.9)"
    promoted, why = decide("v2", "v1", True, scores(0.95, 0.90), PASSED, False)
    assert not promoted and why.endswith("not asked to promote")


def test_plan_skips_what_this_model_scored_and_shards_the_rest(tmp_path: Path) -> None:
    src = LocalStorage(tmp_path / "in")
    for name in ("a/1.jpeg", "a/2.png", "b/3.jpg", "notes.txt", "_parts/x.jpeg"):
        src.write(name, b"x")
    out = LocalStorage(tmp_path / "out")
    assert [o.key for o in list_images(src)] == ["a/1.jpeg", "a/2.png", "b/3.jpg"]
    todo, skipped = plan(src, out, "v1", only_new=False)
    assert [t[0] for t in todo] == ["a/1.jpeg", "a/2.png", "b/3.jpg"] and skipped == 0
    etag = {k: src.head(k).etag for k in ("a/1.jpeg", "a/2.png")}  # type: ignore[union-attr]
    out.write(RESULTS, "".join(json.dumps(r) + "\n" for r in [
        {"key": "a/1.jpeg", "etag": etag["a/1.jpeg"], "model_version": "v1"},
        {"key": "a/2.png", "etag": etag["a/2.png"], "model_version": "v0"},
    ]).encode())
    todo, skipped = plan(src, out, "v1", only_new=False)
    assert [t[0] for t in todo] == ["a/2.png", "b/3.jpg"] and skipped == 1
    src.write("a/1.jpeg", b"a new photo")  # replaced: a new object, scored again
    todo, skipped = plan(src, out, "v1", only_new=False)
    assert [t[0] for t in todo] == ["a/1.jpeg", "a/2.png", "b/3.jpg"] and skipped == 0
    src.write("a/1.jpeg", b"x")
    out.write(RESULTS, "".join(json.dumps(r) + "\n" for r in [
        {"key": "a/1.jpeg", "etag": src.head("a/1.jpeg").etag, "model_version": "v1"},  # type: ignore[union-attr]
        {"key": "a/2.png", "etag": etag["a/2.png"], "model_version": "v0"},
    ]).encode())
    todo, skipped = plan(src, out, "v1", only_new=True)  # the schedule: any version counts
    assert [t[0] for t in todo] == ["b/3.jpg"] and skipped == 2
    assert [len(s) for s in shards([("k", "", 1)] * 5, 2)] == [2, 2, 1]
