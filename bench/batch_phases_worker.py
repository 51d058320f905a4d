"""`piston worker` with timers around a batch job's phases (see bench/batch_phases.py).

    PHASES_LOG=FILE python bench/batch_phases_worker.py worker -c 2 ...

Wraps the plan, the shards, the merge, storage calls and Redis record writes of this tree
in timers before the worker forks its pool, and appends one JSON line per call to
PHASES_LOG (pid, start, wall seconds, CPU seconds of the calling thread and of the process),
one per Celery task start and end, and one per full (generation 2) garbage collection.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import threading
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

LOG = os.environ["PHASES_LOG"]
_LOCK = threading.Lock()


_BUFFER: list[str] = []


def emit(**fields: Any) -> None:
    """Buffer one event; `flush` appends them to PHASES_LOG at each task's end (opening the
    file per event cost more than a local read, the calls it timed)."""
    fields.update(pid=os.getpid(), t=time.time())
    with _LOCK:
        _BUFFER.append(json.dumps(fields))


def flush() -> None:
    with _LOCK:
        lines, _BUFFER[:] = list(_BUFFER), []
    if lines:
        with open(LOG, "a") as fh:
            fh.write("\n".join(lines) + "\n")


def timed(owner: Any, name: str, label: str | None = None) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        t0, thread, process = time.time(), time.thread_time(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            emit(ev=label or name, t0=t0, dt=time.time() - t0,
                 cpu=time.thread_time() - thread, pcpu=time.process_time() - process)

    setattr(owner, name, call)


def instrument() -> None:
    import piston.job_record as job_record
    import piston.storage.local as local
    import workers.results as results
    import workers.runtime as runtime
    import workers.scoring as scoring
    import workers.tasks as tasks

    for name in ("_plan", "plan_job", "send_shard", "_run_shard", "score_shard", "_finish",
                 "_merge", "_discard", "_finish_here"):
        timed(tasks, name)
    for name in ("score_blobs", "_fetch_all", "list_images"):
        timed(scoring, name)
    for name in ("read_parts", "merge_results", "to_jsonl"):
        timed(results, name)
    for name in ("save_plan", "set", "set_state", "progress", "shard_done"):
        timed(job_record.JobRecord, name, f"record.{name}")
    timed(runtime.Runtime, "production")
    for name in ("write", "create", "replace", "list", "get"):
        timed(local.LocalStorage, name, f"local.{name}")

    started: dict[str, float] = {}

    def collections(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"], started["t0"] = time.perf_counter(), time.time()
        elif info["generation"] == 2 and "t" in started:
            dt = time.perf_counter() - started["t"]
            emit(ev="gc2", t0=started["t0"], dt=dt, cpu=dt, pcpu=dt)

    gc.callbacks.append(collections)

    @task_prerun.connect(weak=False)
    def prerun(task: Any = None, **_: Any) -> None:
        emit(ev="prerun", task=task.name)

    @task_postrun.connect(weak=False)
    def postrun(task: Any = None, **_: Any) -> None:
        emit(ev="postrun", task=task.name)
        flush()


if __name__ == "__main__":
    instrument()
    from cli.main import main

    sys.exit(main(sys.argv[1:]))
