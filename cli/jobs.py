"""`piston jobs score | retrain | status | cancel`, `piston worker` and `piston beat`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cli.output import emit
from cli.train import parse_overrides
from piston import jobs
from piston.errors import PistonError
from piston.limits import check_job_paths, check_retrain
from piston.settings import Settings, load_settings

log = logging.getLogger(__name__)
POLL_S = 0.5


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("jobs", help="batch scoring and retraining on the workers")
    sub = group.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    score = sub.add_parser("score", help="score every image under SRC into DST")
    score.add_argument("src", metavar="SRC", help="image prefix: s3://bucket/prefix or a folder")
    score.add_argument("--out", required=True, metavar="DST", help="results prefix or folder")
    score.add_argument("--only-new", action="store_true",
                       help="skip images scored before by any model version")
    score.add_argument("--explain-flagged", action="store_true",
                       help="write a heatmap of each image flagged for review (DST/heatmaps/)")
    score.set_defaults(handler=run_score)
    retrain = sub.add_parser("retrain", help="train on DATASET; promote only if not worse")
    retrain.add_argument("dataset", metavar="DATASET", help="folder-per-class or CSV manifest")
    retrain.add_argument("--recipe", help="named training recipe (default: the default one)")
    retrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one training setting, e.g. --set epochs=5")
    retrain.add_argument("--promote-if-better", action="store_true",
                         help="promote when gates pass and it is not worse than production")
    retrain.add_argument("--min-accuracy", type=float,
                         help="a stricter accuracy gate for this bundle")
    retrain.set_defaults(handler=run_retrain)
    for name, handler, text in (("status", run_status, "a job's state, progress or summary"),
                                ("cancel", run_cancel, "stop a job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id", metavar="ID")
        p.set_defaults(handler=handler)
    for p in (score, retrain):
        p.add_argument("--wait", action="store_true", help="follow progress until it ends")
    for p in (score, retrain, *(sub.choices[n] for n in ("status", "cancel"))):
        p.add_argument("--json", action="store_true")

    worker = commands.add_parser("worker", help="start a Celery worker with the settings")
    worker.add_argument("-c", "--concurrency", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core)")
    worker.add_argument("-n", "--hostname", default="piston@%h")
    worker.add_argument("-Q", "--queues", default="score,retrain",
                        help="queues to consume: score, retrain or both (default)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=run_worker)
    beat = commands.add_parser("beat", help="start the scheduler (run exactly one)")
    beat.add_argument("--schedule-file", type=Path,
                      default=Path(tempfile.gettempdir()) / "piston-beat-schedule")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(handler=run_beat)


def _location(text: str) -> str:
    """An s3:// URI as given, or a local folder made absolute (workers resolve it themselves)."""
    return text if text.startswith("s3://") else str(Path(text).resolve())


def _exists(location: str) -> str:
    if not location.startswith("s3://") and not Path(location).exists():
        raise PistonError(f"{location} does not exist: give an image folder or an s3:// prefix")
    return location


def run_score(args: argparse.Namespace) -> int:
    settings = load_settings()
    src, out = _location(args.src), _location(args.out)
    check_job_paths(settings, src, out)
    job_id = jobs.enqueue_score(settings.redis_url, _exists(src), out, args.only_new,
                                args.explain_flagged)
    return _after_enqueue(settings, job_id, args)


def run_retrain(args: argparse.Namespace) -> int:
    settings = load_settings()
    dataset, overrides = _location(args.dataset), parse_overrides(args.set)
    check_retrain(settings, dataset, overrides)
    job_id = jobs.enqueue_retrain(settings.redis_url, _exists(dataset), overrides,
                                  args.promote_if_better, args.min_accuracy, args.recipe)
    return _after_enqueue(settings, job_id, args)


def _after_enqueue(settings: Settings, job_id: str, args: argparse.Namespace) -> int:
    if not args.wait:
        emit({"job_id": job_id, "state": jobs.JobState.PENDING}, args.json, f"queued job {job_id}")
        return 0
    status = wait(settings.redis_url, job_id)
    emit(status, args.json, _human(status))
    return 0 if status["state"] == jobs.JobState.SUCCESS else 1


def wait(redis_url: str, job_id: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Follow a job until it ends, with a progress bar on a terminal (redrawn every POLL_S)."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    with tqdm(desc=f"job {job_id[:8]}", unit="img", disable=None, leave=False,
              file=sys.stderr) as bar:
        while True:
            status = jobs.job_status(redis_url, job_id)
            if jobs.JobState(status["state"]).ended:
                return status
            _advance(bar, status)
            if deadline and time.monotonic() > deadline:
                raise PistonError(f"job {job_id} still {status['state']} after {timeout_s} s")
            jobs.wait_ended(redis_url, job_id, POLL_S)  # returns as soon as it ends


def _advance(bar: tqdm, status: dict[str, Any]) -> None:
    progress = status.get("progress")
    if isinstance(progress, dict):  # a retrain: epochs
        bar.unit, bar.total = "epoch", progress.get("epochs")
        bar.n = int(progress.get("epoch", 0))
        bar.set_postfix(val_acc=progress.get("val_accuracy", "-"))
    else:
        bar.total = status.get("total")
        bar.n = int(status.get("scored", 0)) + int(status.get("errors", 0))
    bar.refresh()


def run_status(args: argparse.Namespace) -> int:
    status = jobs.job_status(load_settings().redis_url, args.job_id)
    emit(status, args.json, _human(status))
    return 0 if status["state"] != jobs.JobState.FAILURE else 1


def run_cancel(args: argparse.Namespace) -> int:
    status = jobs.cancel(load_settings().redis_url, args.job_id)
    emit(status, args.json, _human(status))
    return 0


def _human(s: dict[str, Any]) -> str:
    head = f"job {s['job_id']} ({s.get('kind', '?')}): {s['state']}"
    if s.get("reason"):
        head += f" - {s['reason']}"
    if s.get("kind") == "score" and "total" in s:
        labels = ", ".join(f"{k} {v}" for k, v in sorted(s.get("by_label", {}).items()))
        head += (f"\n{s.get('scored', 0)} scored, {s.get('errors', 0)} errors,"
                 f" {s.get('needs_review', 0)} need review ({s.get('novel', 0)} novel)"
                 f" of {s['total']}"
                 f" ({s.get('skipped', 0)} skipped as already scored); {labels or 'no labels yet'}")
        if "images_per_second" in s:
            head += f"\n{s['images_per_second']} images/s, results in {s.get('out')}"
    elif s.get("kind") == "retrain":
        if "version" in s:
            head += (f"\nbundle {s['version']}: test accuracy {s['test_accuracy']:.3f};"
                     f" {'promoted' if s.get('promoted') else 'not promoted'}: {s.get('reason')}")
        elif isinstance(s.get("progress"), dict):
            p = s["progress"]
            head += f"\n{p.get('stage')}: epoch {p.get('epoch')}/{p.get('epochs')}"
    return head


def run_worker(args: argparse.Namespace) -> int:
    from workers.app import QUEUES, create_app, start_watchdog

    if args.concurrency < 1:
        raise PistonError("--concurrency must be at least 1")
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    if not queues or set(queues) - set(QUEUES):
        raise PistonError(f"--queues takes {' and/or '.join(QUEUES)}, comma-separated")
    settings = load_settings()
    app = create_app(settings, queues)
    # Torch threads per process: the cores left once the processes and their decode threads
    # have theirs. More would spin against the decode threads (docs/evaluation.md).
    app.conf.piston_threads = max(
        1, (os.cpu_count() or 1) // args.concurrency - settings.score_decode_threads)
    if "score" in queues:
        start_watchdog(settings)
    app.worker_main(["worker", f"--concurrency={args.concurrency}", "--pool=prefork",
                     f"--queues={','.join(queues)}", f"--hostname={args.hostname}",
                     f"--loglevel={args.loglevel}"])
    return 0


def run_beat(args: argparse.Namespace) -> int:
    from workers.app import create_app, single_beat

    settings = load_settings()
    if not settings.score_schedule:
        log.warning("PISTON_SCORE_SCHEDULE is empty: beat has nothing to schedule")
    for src, out in settings.score_schedule.items():  # workers refuse them too
        check_job_paths(settings, src, out)
    app = create_app(settings)
    with single_beat(settings.redis_url):
        return int(app.start(["beat", f"--schedule={args.schedule_file}",
                              f"--loglevel={args.loglevel}"]) or 0)
