"""Batch scoring on real workers: piston images on S3, a corrupt one, a killed worker process."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from PIL import Image

from piston.jobs import TERMINAL, enqueue_score, job_status
from piston.storage import open_storage
from tests.workers.conftest import (
    BUCKET,
    METADATA,
    REDIS_URL,
    MotoServer,
    Worker,
    read_jsonl,
    wait_job,
)

pytestmark = pytest.mark.slow


def outputs(moto: MotoServer, out: str) -> dict[str, bytes]:
    storage = open_storage(out, moto.url)
    return {o.key: storage.read(o.key) for o in storage.list("")}


def test_scores_every_image_once_with_metadata_errors_and_labels(
    worker: Worker, moto: MotoServer, s3_pistons: dict[str, Any], bundles: dict[str, str]
) -> None:
    out = f"s3://{BUCKET}/results/first"
    seen: list[dict[str, Any]] = []
    job_id = enqueue_score(REDIS_URL, s3_pistons["batch"], out)
    summary = wait_job(job_id, on_status=seen.append)

    total = len(s3_pistons["batch_keys"])
    assert summary["state"] == "SUCCESS", summary
    assert summary["total"] == total == 286
    assert summary["scored"] == total - 1 and summary["errors"] == 1
    assert sum(summary["by_label"].values()) == summary["scored"]
    assert set(summary["by_label"]) <= {"defect_1", "defect_2", "normal"}
    assert summary["images_per_second"] > 0 and summary["model_version"] == bundles["good"]
    # the drift watch's figures beside the bundle's test split (piston.drift)
    figures, test_split = summary["figures"], summary["test_split"]
    assert figures["images"] == summary["scored"] and sum(figures["errors"].values()) == 1
    assert figures["review_share"] == pytest.approx(summary["needs_review"] / summary["scored"])
    assert set(test_split["class_mix"]) == {"defect_1", "defect_2", "normal"}
    assert isinstance(summary["drift"], list)
    assert 0 <= summary["needs_review"] < summary["scored"]
    # progress was readable while it ran: some poll saw a partly done job
    assert any(s["state"] == "PROGRESS" and 0 < s["scored"] < total for s in seen)

    files = outputs(moto, out)
    assert not [k for k in files if k.startswith("_parts/")]  # staging cleaned up
    records = read_jsonl(files["results.jsonl"])
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == total
    assert {f"batch/{k}" for k in keys} == set(s3_pistons["batch_keys"])
    by_key = {r["key"]: r for r in records}
    bad = by_key["normal/corrupt_0.jpeg"]
    assert bad["error"].startswith("truncated") and bad["label"] is None
    good = by_key["defect_1/defect_0.jpeg"]
    assert good["error"] is None and good["model_version"] == bundles["good"]
    assert abs(sum(good["probabilities"].values()) - 1) < 1e-4
    assert good["etag"] and good["size"] > 0
    tagged = [r for r in records if r["metadata"]]
    assert tagged and all(r["metadata"] == METADATA for r in tagged)
    assert len(tagged) == len(range(0, 285, 5))

    # the trained model is good: most confident pre-labels match the folder they came from
    prelabels = list(csv.DictReader(io.StringIO(files["labels/prelabels.csv"].decode())))
    assert prelabels and set(prelabels[0]) == {"image_path", "target"}
    right = sum(PurePosixPath(p["image_path"]).parts[0] == p["target"] for p in prelabels)
    assert right / len(prelabels) > 0.8
    review = list(csv.DictReader(io.StringIO(files["labels/review.csv"].decode())))
    assert "normal/corrupt_0.jpeg" in {r["image_path"] for r in review}
    assert len(prelabels) + len(review) == total
    rows = list(csv.DictReader(io.StringIO(files["results.csv"].decode())))
    assert len(rows) == total and {"p_normal", "p_defect_1", "metadata"} <= set(rows[0])
    assert json.loads(files[f"jobs/{job_id}.json"])["scored"] == summary["scored"]

    # a re-run skips everything scored by the same model version and duplicates nothing
    again = wait_job(enqueue_score(REDIS_URL, s3_pistons["batch"], out))
    assert again["state"] == "SUCCESS" and again["total"] == 0 and again["skipped"] == total
    assert len(read_jsonl(outputs(moto, out)["results.jsonl"])) == total


def test_a_killed_worker_process_loses_nothing_and_duplicates_nothing(
    worker: Worker, moto: MotoServer, s3_pistons: dict[str, Any]
) -> None:
    import redis

    out = f"s3://{BUCKET}/results/killed"
    r: Any = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    job_id = enqueue_score(REDIS_URL, s3_pistons["batch"], out)
    killed: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while not killed and time.monotonic() < deadline:
        status = r.hgetall(f"piston:job:{job_id}")
        running = {k.removeprefix("worker:"): json.loads(v) for k, v in status.items()
                   if k.startswith("worker:")}
        done = r.smembers(f"piston:job:{job_id}:done")
        for shard, where in running.items():
            progress = json.loads(status.get(f"progress:{shard}", "{}"))
            pid = int(where.rsplit(":", 1)[1])
            if shard not in done and 0 < progress.get("done", 0) < 32 and pid in worker.children():
                os.kill(pid, signal.SIGKILL)  # a child of our own worker, mid-shard
                killed = {"shard": shard, "pid": pid, "done": progress["done"]}
                break
        time.sleep(0.02)
    assert killed, "never caught a shard half-done"

    summary = wait_job(job_id, timeout=180)
    assert summary["state"] == "SUCCESS", summary
    assert summary["scored"] + summary["errors"] == summary["total"] == 286
    keys = [rec["key"] for rec in read_jsonl(outputs(moto, out)["results.jsonl"])]
    assert len(keys) == len(set(keys)) == 286
    # the shard was redelivered and finished by another process
    where = json.loads(r.hget(f"piston:job:{job_id}", f"worker:{killed['shard']}"))
    assert int(where.rsplit(":", 1)[1]) != killed["pid"]
    # every key the job made expires
    assert all(r.ttl(key) > 0 for key in r.scan_iter(f"piston:job:{job_id}*"))


def test_cancel_stops_a_running_job(worker: Worker, s3_pistons: dict[str, Any],
                                    moto: MotoServer) -> None:
    from piston.jobs import cancel

    out = f"s3://{BUCKET}/results/cancelled"
    job_id = enqueue_score(REDIS_URL, s3_pistons["batch"], out)
    wait_until = time.monotonic() + 30
    while job_status(REDIS_URL, job_id)["state"] not in ("PROGRESS", *TERMINAL):
        assert time.monotonic() < wait_until
        time.sleep(0.02)
    assert cancel(REDIS_URL, job_id)["state"] == "REVOKED"
    time.sleep(2)
    final = job_status(REDIS_URL, job_id)
    assert final["state"] == "REVOKED" and final["reason"] == "cancelled"
    assert outputs(moto, out) == {}  # no results, and staged parts of finished shards removed


def test_explain_flagged_writes_a_heatmap_for_each_flagged_image(
    worker: Worker, moto: MotoServer, s3_pistons: dict[str, Any], piston_data: Path
) -> None:
    """Pistons and made-up images (noise, blank, a checkerboard): whatever the job flags for
    review gets its overlay under heatmaps/, at the image's size; nothing else does."""
    src = f"s3://{BUCKET}/explain"
    store = open_storage(src, moto.url)
    for path in sorted((piston_data / "defect_1").glob("*.jpeg"))[:4]:
        store.write(f"parts/{path.name}", path.read_bytes())
    rng = np.random.default_rng(0)
    made_up = {"noise": rng.integers(0, 256, (90, 120, 3), dtype=np.uint8),
               "blank": np.full((90, 120, 3), 255, dtype=np.uint8),
               "checker": ((np.indices((90, 120)) // 10).sum(0) % 2 * 255).astype(np.uint8)}
    for name, pixels in made_up.items():
        buf = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(buf, format="PNG")
        store.write(f"odd/{name}.png", buf.getvalue())
    out = f"s3://{BUCKET}/results/explained"
    summary = wait_job(enqueue_score(REDIS_URL, src, out, explain_flagged=True))
    assert summary["state"] == "SUCCESS", summary
    files = outputs(moto, out)
    records = read_jsonl(files["results.jsonl"])
    flagged = [r for r in records if r["needs_review"] and not r["error"]]
    assert flagged, records
    for r in records:
        if r in flagged:
            assert r["heatmap"] == f"heatmaps/{r['key']}.png"
            size = (80, 80) if r["key"].startswith("parts/") else (120, 90)
            assert Image.open(io.BytesIO(files[r["heatmap"]])).size == size
        else:
            assert r["heatmap"] is None
    assert len([k for k in files if k.startswith("heatmaps/")]) == len(flagged)
