"""Batch-scoring throughput, measured side by side in one run over the same N images.

    .venv/bin/python bench/batch.py [--source s3|local] [--copies 4] [--data DIR]
                                    [--runtimes onnx torch] [--baseline TREE]

Uses Redis database 9, and empties it. `--source s3` (default) starts its own moto S3 server
on a free loopback port and measures:
  storage ceiling   parallel GETs alone (16 threads)
  compute ceiling   decode + forward in one process on bytes already in memory (batches of 32)
  naive loop        get, decode, predict one image at a time
  our job, 1 and 2  `piston jobs score` on real `piston worker -c 1|2` processes, from enqueue
                    to the merged results (plan, shards, merge included), model already loaded
and prints each ratio (goals: job >= 70% of the lower ceiling, >= 5x the naive loop).

`--source local` reads a local folder instead, so no storage server shares the cores, and
compares our job with P = 1 and 2 worker processes against the compute ceiling of P
processes (read, decode with 2 threads and forward with `piston.scoring.score_blobs`, batches
of 16, one intra-op thread each, as a worker's processes run), measured just before and just
after the job: the goal is >= 90% of it with 2. `--baseline TREE` (another checkout, say of
main) runs that tree's workers on the same jobs too, so a change is compared with what it
replaces in one run.

Every figure is measured once per runtime (`--runtimes`, PISTON_RUNTIME of the workers and
of the ceilings) and printed in a column per runtime, each job against its own runtime's
ceiling. A job on 1140 images lasts about a second on an idle machine: its fixed costs
(plan, Celery hops, merge) weigh; `--copies` makes a longer one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from piston.runtime import RuntimeName

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/9"  # its own: the UI tests empty database 10
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
         "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def shard_env(args: argparse.Namespace) -> dict[str, str]:
    """The workers' shard size: the product's default unless `--shard-size` says otherwise."""
    return {"PISTON_SCORE_SHARD_SIZE": str(args.shard_size)} if args.shard_size else {}


def rate(n: int, seconds: float) -> float:
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the 285 images")
    default_data = str(ROOT.parent / "shared/data/ac-pistons")
    parser.add_argument("--data", default=os.environ.get("PISTON_DATA_DIR", default_data))
    parser.add_argument("--shard-size", type=int,
                        help="PISTON_SCORE_SHARD_SIZE of the workers (default: the setting's)")
    parser.add_argument("--source", choices=("s3", "local"), default="s3")
    parser.add_argument("--runtimes", nargs="+", choices=("onnx", "torch"),
                        default=["onnx", "torch"])
    parser.add_argument("--baseline", metavar="TREE",
                        help="another checkout (say `git worktree add /tmp/before main`) whose"
                             " workers score the same jobs in the same run, for before/after")
    args = parser.parse_args()
    if args.source == "local":
        run_local(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="piston-bench-"))
    os.environ.update(CREDS)
    os.environ["BENTOML_HOME"] = str(tmp / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_port(port)
        run(args, tmp, endpoint, workers)
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, endpoint: str,
        workers: list[subprocess.Popen[bytes]]) -> None:
    import numpy as np
    import redis
    import torch

    from piston.bundle import Predictor
    from piston.imaging import preprocess
    from piston.registry import Registry
    from piston.scoring import decide
    from piston.storage import open_storage
    from piston.storage.s3 import s3_client
    from training.config import load_config
    from training.pipeline import GateBar, train_bundle

    redis.Redis.from_url(REDIS_URL).flushdb()
    s3 = s3_client(endpoint)
    s3.create_bucket(Bucket="bench")
    files = sorted(Path(args.data).glob("*/*.jpeg"))
    blobs = {f"{f.parent.name}/{f.name}": f.read_bytes() for f in files}
    keys = [f"images/copy{c}/{k}" for c in range(args.copies) for k in blobs]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket="bench", Key=k,
                                              Body=blobs[k.split("/", 2)[2]]), keys))
    for k, data in blobs.items():  # the training set, once
        s3.put_object(Bucket="bench", Key=f"train/{k}", Body=data)
    registry = Registry(open_storage("s3://bench/registry", endpoint))
    outcome = train_bundle("s3://bench/train", load_config("bn_cnn", None, {"epochs": 1}),
                           registry, GateBar(), tmp / "runs", 40_000_000,
                           s3_endpoint_url=endpoint)
    registry.promote(outcome.version, "bench", force=True)
    n = len(keys)
    print(f"{n} images ({args.copies} copies of {len(blobs)}), model {outcome.version}"
          f" ({outcome.metrics.candidate}), {os.cpu_count()} cores, S3 = moto at"
          f" {endpoint}")

    def get(key: str) -> bytes:
        return bytes(s3.get_object(Bucket="bench", Key=key)["Body"].read())

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        in_memory = list(pool.map(get, keys))
    storage_ceiling = rate(n, time.perf_counter() - start)
    print(f"{'storage ceiling (16 parallel GETs)':40s} {storage_ceiling:8.1f} img/s")
    torch.set_num_threads(os.cpu_count() or 1)
    compute: dict[str, float] = {}
    naive: dict[str, float] = {}
    jobs: dict[tuple[str, int], float] = {}
    for rt in args.runtimes:
        predictor = Predictor.load(registry.fetch(outcome.version), rt, os.cpu_count())
        start = time.perf_counter()
        for begin in range(0, n, 32):
            batch = np.stack([preprocess(b, predictor.contract)
                              for b in in_memory[begin:begin + 32]])
            decide(predictor, predictor.forward(batch))
        compute[rt] = rate(n, time.perf_counter() - start)

        start = time.perf_counter()
        for key in keys:
            decide(predictor, predictor.forward(preprocess(get(key), predictor.contract)[None]))
        naive[rt] = rate(n, time.perf_counter() - start)

        env = dict(os.environ, PISTON_S3_ENDPOINT_URL=endpoint,
                   PISTON_REGISTRY="s3://bench/registry", PISTON_RUNS_DIR=str(tmp / "runs"),
                   PISTON_RUNTIME=rt,
                   PISTON_JOB_ROOTS=json.dumps(["s3://bench/images", "s3://bench/out"]),
                   **shard_env(args))
        for procs in (1, 2):
            jobs[(rt, procs)] = time_job(env, procs, "s3://bench/images",
                                         f"s3://bench/out/{procs}{rt}", "s3://bench/images/copy0",
                                         tmp, workers)
    report_s3(args.runtimes, storage_ceiling, compute, naive, jobs)


def report_s3(runtimes: list[str], storage_ceiling: float, compute: dict[str, float],
              naive: dict[str, float], jobs: dict[tuple[str, int], float]) -> None:
    """Every runtime side by side against the storage ceiling and its own compute ceiling."""
    def row(name: str, cells: list[str]) -> None:
        print(f"{name:44s}" + "".join(f"{c:>16s}" for c in cells))

    lower = {rt: min(storage_ceiling, compute[rt]) for rt in runtimes}
    row("images/s", runtimes)
    row("storage ceiling (16 parallel GETs)", [f"{storage_ceiling:.1f}"] * len(runtimes))
    row("compute ceiling (decode+forward, 1 proc)", [f"{compute[rt]:.1f}" for rt in runtimes])
    row("naive loop (get, decode, predict 1 by 1)", [f"{naive[rt]:.1f}" for rt in runtimes])
    for procs in (1, 2):
        row(f"our job, {procs} worker process(es)",
            [f"{jobs[(rt, procs)]:.1f} ({jobs[(rt, procs)] / lower[rt]:.0%})" for rt in runtimes])
    best = {rt: max(jobs[(rt, 1)], jobs[(rt, 2)]) for rt in runtimes}
    row("goal: >= 70% of the lower ceiling",
        [f"{best[rt] / lower[rt]:.0%} {'met' if best[rt] / lower[rt] >= 0.7 else 'NOT met'}"
         for rt in runtimes])
    row("goal: >= 5x the naive loop",
        [f"{best[rt] / naive[rt]:.1f}x {'met' if best[rt] / naive[rt] >= 5 else 'NOT met'}"
         for rt in runtimes])


def wait(job_id: str, job_status: object, tree: Path = ROOT) -> dict[str, object]:
    """The job's status once it has ended, blocked on its end in Redis (`wait_ended`).

    A 1140-image job lasts ~1.5 s on a quiet machine: polling its state every 10 ms cost
    30-60 ms of CPU per job, out of the workers' two cores; blocking costs nothing. Workers
    from a tree that does not announce a job's end (a baseline before 5296442) are polled.
    """
    from piston.jobs import JobRecord, JobState

    announces = "ended_key" in (tree / "piston/job_record.py").read_text()
    record = JobRecord.open(REDIS_URL, job_id)
    while not JobState(record.get("state", "gone")).ended:  # gone: a ValueError, not a hang
        if announces:
            record.wait_ended(1.0)
        else:
            time.sleep(0.01)
    return dict(job_status(REDIS_URL, job_id))  # type: ignore[operator]


# -- the local-folder source ---------------------------------------------------------------

_PREDICTOR: object = None


def _load(model_dir: str, runtime: RuntimeName) -> None:
    """A compute-ceiling process: one intra-op thread, like each of a worker's processes."""
    global _PREDICTOR
    from piston.bundle import Predictor

    _PREDICTOR = Predictor.load(model_dir, runtime, 1)


def _score_files(paths: list[str]) -> int:
    """Read, decode (2 threads, the worker's default) and forward in batches of 16, as a
    worker process does, without the job around it: no queue, no records, no merge."""
    from piston.scoring import score_blobs

    with ThreadPoolExecutor(2) as decodes:
        for begin in range(0, len(paths), 16):
            blobs = [Path(p).read_bytes() for p in paths[begin:begin + 16]]
            score_blobs(_PREDICTOR, blobs, 70_000_000, decodes.map)  # type: ignore[arg-type]
    return len(paths)


def compute_ceiling(model_dir: str, paths: list[str], procs: int, runtime: RuntimeName,
                    ) -> float:
    """Images/s of `procs` processes scoring their share of `paths`, the model already loaded."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")  # the parent's torch threads do not fork well
    with ProcessPoolExecutor(procs, mp_context=spawn, initializer=_load,
                             initargs=(model_dir, runtime)) as pool:
        list(pool.map(_score_files, [paths[:16]] * procs))  # warm-up: every process loaded
        start = time.perf_counter()
        done = sum(pool.map(_score_files, [paths[i::procs] for i in range(procs)]))
        return rate(done, time.perf_counter() - start)


def run_local(args: argparse.Namespace) -> None:
    import redis

    from piston.registry import Registry
    from piston.storage import LocalStorage
    from training.config import load_config
    from training.pipeline import GateBar, train_bundle

    tmp = Path(tempfile.mkdtemp(prefix="piston-bench-local-"))
    os.environ.update(BENTOML_HOME=str(tmp / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    workers: list[subprocess.Popen[bytes]] = []
    trees = {"our job": ROOT} | ({"baseline job": Path(args.baseline).resolve()}
                                if args.baseline else {})
    ceilings: dict[tuple[str, int], tuple[float, float]] = {}
    jobs: dict[tuple[str, int, str], float] = {}
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
        files = sorted(Path(args.data).glob("*/*.jpeg"))
        for copy in range(args.copies):
            for f in files:
                dest = tmp / "images" / f"copy{copy}" / f.parent.name / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        paths = sorted(str(p) for p in (tmp / "images").rglob("*.jpeg"))
        registry = Registry(LocalStorage(tmp / "registry"))
        outcome = train_bundle(args.data, load_config(None, None, {"epochs": 1}), registry,
                               GateBar(), tmp / "runs", 70_000_000)
        registry.promote(outcome.version, "bench", force=True)
        model_dir = str(registry.fetch(outcome.version))
        print(f"{len(paths)} images ({args.copies} copies of {len(files)}) in a local folder,"
              f" model {outcome.version}, {os.cpu_count()} cores, shards of"
              f" {args.shard_size or 'the default size'}"
              + (f", baseline workers from {trees['baseline job']}" if args.baseline else ""))
        for rt in args.runtimes:
            env = dict(os.environ, PISTON_REGISTRY=str(tmp / "registry"), PISTON_RUNTIME=rt,
                       PISTON_RUNS_DIR=str(tmp),
                       PISTON_JOB_ROOTS=json.dumps([str(tmp / "images"), str(tmp / "out")]),
                       **shard_env(args))
            for procs in (1, 2):  # the ceiling just before and just after the jobs: a shared
                before = compute_ceiling(model_dir, paths, procs, rt)  # machine's load moves
                for label, tree in trees.items():
                    jobs[(rt, procs, label)] = time_job(
                        env, procs, str(tmp / "images"),
                        str(tmp / "out" / f"{procs}{rt}{label.split()[0]}"),
                        str(tmp / "images" / "copy0"), tmp, workers, tree)
                after = compute_ceiling(model_dir, paths, procs, rt)
                ceilings[(rt, procs)] = (before, after)
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    report_local(args.runtimes, list(trees), ceilings, jobs)


def report_local(runtimes: list[str], labels: list[str],
                 ceilings: dict[tuple[str, int], tuple[float, float]],
                 jobs: dict[tuple[str, int, str], float]) -> None:
    """Every runtime side by side: its ceilings, its jobs and their shares of the ceiling."""
    def row(name: str, cells: list[str]) -> None:
        print(f"{name:44s}" + "".join(f"{c:>16s}" for c in cells))

    row("images/s", runtimes)
    for procs in (1, 2):
        mean = {rt: sum(ceilings[(rt, procs)]) / 2 for rt in runtimes}
        row(f"compute ceiling, {procs} process(es), before/after",
            [f"{ceilings[(rt, procs)][0]:.1f}/{ceilings[(rt, procs)][1]:.1f}" for rt in runtimes])
        for label in labels:
            row(f"{label}, {procs} worker process(es)",
                [f"{jobs[(rt, procs, label)]:.1f} ({jobs[(rt, procs, label)] / mean[rt]:.0%})"
                 for rt in runtimes])
    mean2 = {rt: sum(ceilings[(rt, 2)]) / 2 for rt in runtimes}
    shares = {rt: jobs[(rt, 2, "our job")] / mean2[rt] for rt in runtimes}
    row("goal: our job, 2 processes >= 90% of ceiling",
        [f"{shares[rt]:.0%} {'met' if shares[rt] >= 0.9 else 'NOT met'}" for rt in runtimes])
    if "baseline job" in labels:
        row("our job / baseline job, 2 processes",
            [f"{jobs[(rt, 2, 'our job')] / jobs[(rt, 2, 'baseline job')]:.2f}x"
             for rt in runtimes])
    if "torch" in runtimes:
        row("2-process ceiling / torch's",
            [f"{mean2[rt] / mean2['torch']:.2f}x" for rt in runtimes])
        row("our job, 2 processes / torch's",
            [f"{jobs[(rt, 2, 'our job')] / jobs[('torch', 2, 'our job')]:.2f}x"
             for rt in runtimes])


def print_rss(pid: int, label: str) -> None:
    """Resident memory of a worker's processes (the pool processes hold the model)."""
    import psutil

    main = psutil.Process(pid)
    sizes = [p.memory_info().rss / 2**20 for p in [main, *main.children(recursive=True)]]
    print(f"{label}: resident memory {' + '.join(f'{mb:.0f}' for mb in sizes)} MB"
          f" (main process, then its pool)", flush=True)


def time_job(env: dict[str, str], procs: int, src: str, out: str, warm: str, tmp: Path,
             workers: list[subprocess.Popen[bytes]], tree: Path = ROOT) -> float:
    """Images/s of one scoring job on a fresh `piston worker -c procs` run from the source
    tree `tree` (ours, or a baseline checkout), after a warm-up job."""
    from piston.jobs import JobState, client, enqueue_score, job_status

    env = dict(env, PISTON_REDIS_URL=REDIS_URL, BENTOML_HOME=str(tmp / f"worker{procs}"),
               PYTHONPATH=str(tree))
    with (tmp / f"worker{procs}.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "-c", str(procs), "-n",
             f"bench{procs}@%h", "--loglevel", "WARNING"], env=env, cwd=tree, stdout=log,
            stderr=subprocess.STDOUT)
    workers.append(worker)
    while not client(REDIS_URL).control.ping(timeout=0.5):
        time.sleep(0.2)
    wait(enqueue_score(REDIS_URL, warm, out + "-warm"), job_status, tree)
    start = time.perf_counter()
    summary = wait(enqueue_score(REDIS_URL, src, out), job_status, tree)
    seconds = time.perf_counter() - start
    assert summary["state"] == JobState.SUCCESS, summary
    print_rss(worker.pid, f"{env.get('PISTON_RUNTIME', 'default')} worker -c {procs}"
              + ("" if tree == ROOT else f" from {tree}"))
    worker.terminate()
    worker.wait(30)
    workers.remove(worker)
    return rate(int(summary["total"]), seconds)  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
