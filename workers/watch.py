"""The watchdog: finds scoring jobs whose messages were lost in transit and sends them again.

A Redis restart (or a worker losing its connection) can drop task messages a worker had
taken but not started; Redis would hand them out again only after the visibility timeout.
Every worker's main process runs this loop; one sweep at a time (a Redis lock) looks at
each running job that has been quiet for `job_stale_after_s` while nothing is queued, and
re-sends what it is missing: its plan, its unfinished shards or its merge. All three are
idempotent, so a re-send that turns out to be unnecessary costs time, never correctness.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from piston.errors import PistonError
from piston.job_record import quiet_jobs
from piston.jobs import SCORE_QUEUE, JobRecord, JobState
from piston.settings import Settings
from workers import tasks

log = logging.getLogger(__name__)
SWEEP_LOCK = "piston:watchdog"


class Watchdog:
    def __init__(self, settings: Settings, redis: Any) -> None:
        self.settings = settings
        self.redis = redis

    def sweep(self) -> list[str]:
        """One look at every running job; what was re-sent, as lines for the log."""
        every = max(1, int(self.settings.job_watch_every_s))
        if not self.redis.set(SWEEP_LOCK, "1", nx=True, ex=every):
            return []  # another worker swept just now
        if self.redis.llen(SCORE_QUEUE):
            return []  # work is waiting: quiet jobs are queued, not lost
        stale_before = time.time() - self.settings.job_stale_after_s
        actions = []
        for job_id in quiet_jobs(self.redis, stale_before):
            record = JobRecord(self.redis, job_id)
            try:
                actions += self._revive(record)
            except PistonError as err:  # e.g. its output store is down: next sweep
                actions.append(f"job {job_id}: cannot re-send yet: {err}")
        return actions

    def _revive(self, record: JobRecord) -> list[str]:
        fields = record.fields()
        if not fields:
            record.forget()  # its record expired
            return []
        record.touch()  # the next look at this job is a full stale period away
        state, kind = fields.get("state"), fields.get("kind")
        if kind != "score":
            return []  # a retrain has no parts to re-send; its queue's timeout brings it back
        if state in (JobState.PENDING, JobState.STARTED):
            tasks.send_plan(record.job_id, fields["src"], fields["out"],
                            bool(fields.get("only_new")))
            return [f"job {record.job_id}: plan re-sent ({state})"]
        if state != JobState.PROGRESS:
            return []
        missing = sorted(set(range(int(fields.get("shards", 0)))) - record.shards_done())
        if not missing:
            tasks.send_finalize(record.job_id)
            return [f"job {record.job_id}: merge re-sent"]
        resend = int(fields.get("resends", 0)) + 1
        record.set(resends=resend)
        for shard in missing:
            tasks.send_shard(record.job_id, shard, record.shard_items(shard),
                             fields["model_version"], fields["src"], fields["out"], resend)
        return [f"job {record.job_id}: shards {missing} re-sent"]

    def run(self, stop: threading.Event) -> None:
        """Sweep every `job_watch_every_s` until `stop`; never dies of a failed sweep."""
        while not stop.wait(self.settings.job_watch_every_s):
            try:
                for line in self.sweep():
                    log.warning("watchdog: %s", line)
            except Exception as err:  # Redis down, most likely: the next sweep tries again
                log.warning("watchdog: sweep failed: %s", err)


def start(settings: Settings) -> threading.Event:
    """Run the watchdog on a daemon thread; set the returned event to stop it."""
    import redis

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                  socket_connect_timeout=5, socket_timeout=30)
    stop = threading.Event()
    threading.Thread(target=Watchdog(settings, client).run, args=(stop,), name="watchdog",
                     daemon=True).start()
    return stop
