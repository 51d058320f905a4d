"""Where a batch job's time goes: each phase timed inside real workers, beside the ceiling.

    .venv/bin/python bench/batch_phases.py [--rounds 3] [--runtime onnx] [--procs 2]
                                           [--shard-size N] [--copies 4] [--work DIR]
                                           [--tree CHECKOUT]

Runs `bench/batch.py --source local`'s job (the same images, the same 2-process compute
ceiling) on a `piston worker -c P` started through `bench/batch_phases_worker.py`, which
times the plan, every shard, the merge, the storage calls and the record writes inside the
worker processes. Per round it prints the ceiling (img/s and its processes' CPU), the job
(img/s, share of the ceiling), the CPU of each worker process, of Redis and of this process
over the job, each phase's calls, wall and CPU, and when each pool process was in a task.
CPU times hold on a loaded machine; wall times and the shares need a quiet one.

`--work DIR` keeps the images and the trained bundle between runs (default: a fresh
temporary folder). Uses Redis database 9, and empties it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from piston.runtime import RuntimeName

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import batch  # noqa: E402  (bench/batch.py: its ceiling, its job's wait)


def prepare(work: Path, data: str, copies: int) -> tuple[Path, str]:
    """The images (copies of the data set) and a trained, promoted bundle, made once."""
    from piston.registry import Registry
    from piston.storage import LocalStorage
    from training.config import load_config
    from training.pipeline import GateBar, train_bundle

    images = work / f"images{copies}"
    if not images.exists():
        for copy in range(copies):
            for f in sorted(Path(data).glob("*/*.jpeg")):
                dest = images / f"copy{copy}" / f.parent.name / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
    registry = Registry(LocalStorage(work / "registry"))
    if registry.current() is None:
        outcome = train_bundle(data, load_config(None, None, {"epochs": 1}), registry,
                               GateBar(), work / "runs", 70_000_000)
        registry.promote(outcome.version, "bench", force=True)
    return images, str(registry.fetch(str(registry.current())))


def cpu_s(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def ceiling(model_dir: str, paths: list[str], procs: int, runtime: RuntimeName,
            ) -> tuple[float, float]:
    """bench/batch.py's compute ceiling: images/s, and the CPU seconds its processes spent."""
    import multiprocessing

    import psutil

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(procs, mp_context=spawn, initializer=batch._load,
                             initargs=(model_dir, runtime)) as pool:
        list(pool.map(batch._score_files, [paths[:16]] * procs))
        children = psutil.Process().children()
        before = sum(cpu_s(c) for c in children)
        start = time.perf_counter()
        done = sum(pool.map(batch._score_files, [paths[i::procs] for i in range(procs)]))
        seconds = time.perf_counter() - start
        return done / seconds, sum(cpu_s(c) for c in children) - before


def phases(log: Path, since: float, wall: float) -> None:
    """Each phase's calls, wall and CPU; then when each pool process was in a task."""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    events = [e for e in events if e["t"] >= since]
    totals: dict[str, list[float]] = {}
    for e in events:
        if "dt" in e:
            row = totals.setdefault(e["ev"], [0, 0.0, 0.0, 0.0])
            row[0] += 1
            row[1] += e["dt"]
            row[2] += e["cpu"]
            row[3] += e["pcpu"]
    print(f"  {'phase':18s} {'calls':>5s} {'wall ms':>9s} {'thread CPU':>11s} {'process CPU':>12s}")
    for name, (calls, dt, cpu, pcpu) in sorted(totals.items()):
        print(f"  {name:18s} {calls:5.0f} {dt * 1000:9.1f} {cpu * 1000:11.1f} {pcpu * 1000:12.1f}")
    spans: dict[int, list[tuple[str, float]]] = {}
    for e in events:
        if e["ev"] in ("prerun", "postrun"):
            spans.setdefault(e["pid"], []).append((e["ev"], e["t"] - since))
    for pid, marks in sorted(spans.items()):
        busy, began, gaps, last_end = 0.0, None, [], None
        for ev, t in marks:
            if ev == "prerun":
                began = t
                if last_end is not None:
                    gaps.append(t - last_end)
            elif began is not None:
                busy, last_end, began = busy + t - began, t, None
        print(f"  pid {pid}: in tasks {busy * 1000:.0f} of {wall * 1000:.0f} ms, first at"
              f" {marks[0][1] * 1000:.0f} ms, last out at {marks[-1][1] * 1000:.0f} ms;"
              f" between tasks {' '.join(f'{g * 1000:.0f}' for g in gaps)} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--shard-size", type=int, help="default: the setting's")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--data", default=os.environ.get(
        "PISTON_DATA_DIR", str(ROOT.parent / "shared/data/ac-pistons")))
    parser.add_argument("--work", help="keep images and bundle here (default: a temporary one)")
    parser.add_argument("--tree", default=str(ROOT),
                        help="the checkout whose workers run the job (another one: before/after)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="piston-phases-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(BENTOML_HOME=str(work / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    try:
        run(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    import psutil
    import redis

    from piston.jobs import client, enqueue_score, job_status

    images, model_dir = prepare(work, args.data, args.copies)
    paths = sorted(str(p) for p in images.rglob("*.jpeg"))
    server = redis.Redis.from_url(batch.REDIS_URL)
    server.flushdb()
    log, out = work / "phases.jsonl", work / "out"
    log.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PISTON_REGISTRY=str(work / "registry"), PISTON_RUNTIME=args.runtime,
               PISTON_RUNS_DIR=str(work), PISTON_REDIS_URL=batch.REDIS_URL,
               PISTON_JOB_ROOTS=json.dumps([str(images), str(out)]), PYTHONPATH=args.tree,
               PHASES_LOG=str(log), **batch.shard_env(args))
    with (work / "worker.log").open("wb") as worker_log:
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/batch_phases_worker.py"), "worker", "-c",
             str(args.procs), "-n", f"phases{args.procs}@%h", "--loglevel", "WARNING"],
            env=env, cwd=args.tree, stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        while not client(batch.REDIS_URL).control.ping(timeout=0.5):
            time.sleep(0.2)
        tree = Path(args.tree)
        batch.wait(enqueue_score(batch.REDIS_URL, str(images / "copy0"), str(out / "warm")),
                   job_status, tree)
        main_process = psutil.Process(worker.pid)
        processes = [main_process, *main_process.children(recursive=True)]
        redis_process = psutil.Process(int(server.info("server")["process_id"]))
        me = psutil.Process()
        print(f"{len(paths)} images, {args.runtime}, worker -c {args.procs} from {args.tree},"
              f" {os.cpu_count()} cores")
        for r in range(args.rounds):
            rate, ceiling_cpu = ceiling(model_dir, paths, args.procs,
                                        cast("RuntimeName", args.runtime))
            before = [cpu_s(p) for p in (*processes, redis_process, me)]
            load = Path("/proc/loadavg").read_text().split()[0]
            since, start = time.time(), time.perf_counter()
            summary = batch.wait(enqueue_score(batch.REDIS_URL, str(images), str(out / f"r{r}")),
                                 job_status, tree)
            wall = time.perf_counter() - start
            spent = [cpu_s(p) - b for p, b in zip((*processes, redis_process, me), before,
                                                  strict=True)]
            n = int(str(summary["total"]))
            workers = sum(spent[:len(processes)])
            print(f"round {r} (load {load}): ceiling {rate:.0f} img/s, its CPU"
                  f" {ceiling_cpu / len(paths) * 1e6:.0f} us/img; job {n / wall:.0f} img/s"
                  f" ({n / wall / rate:.0%}), {summary['shards']} shards, {wall * 1000:.0f} ms")
            print(f"  CPU ms: worker main {spent[0] * 1000:.0f}, pool"
                  f" {' + '.join(f'{s * 1000:.0f}' for s in spent[1:len(processes)])}"
                  f" ({workers / n * 1e6:.0f} us/img), Redis {spent[-2] * 1000:.0f},"
                  f" this process {spent[-1] * 1000:.0f}")
            time.sleep(0.3)  # the workers append their timings once each task has returned
            phases(log, since, wall)
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    main()
