"""Our Prometheus metrics, beside BentoML's built-ins on `/metrics`.

Created on first use inside a worker, after BentoML has set PROMETHEUS_MULTIPROC_DIR, so
every worker's counts reach the one `/metrics` endpoint. One set per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from piston.scoring import Decision

_lock = threading.Lock()
_metrics: ServiceMetrics | None = None


@dataclass
class ServiceMetrics:
    predictions: Any  # Counter: label, model_version
    needs_review: Any  # Counter: model_version
    novel: Any  # Counter: model_version
    errors: Any  # Counter: kind
    serving: Any  # Gauge: version -> 1 for the serving version, per worker
    drifting: Any = None  # Gauge: version -> 1 while its live windows drift (drift watch)
    drift_verdicts: Any = None  # Counter: version, verdict -> drift checks
    _serving_version: str | None = None

    def record(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self.predictions.labels(label=d.label, model_version=d.model_version).inc()
            if d.needs_review:
                self.needs_review.labels(model_version=d.model_version).inc()
            if d.novel:
                self.novel.labels(model_version=d.model_version).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def serving_version(self, version: str | None) -> None:
        if version == self._serving_version:
            return
        if self._serving_version is not None:
            self.serving.labels(version=self._serving_version).set(0)
        if version is not None:
            self.serving.labels(version=version).set(1)
        self._serving_version = version


def service_metrics() -> ServiceMetrics:
    """The process's metrics, registered with prometheus_client's default registry once."""
    global _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import Counter, Gauge

            _metrics = ServiceMetrics(
                predictions=Counter("piston_predictions", "Images classified, by label",
                                    ["label", "model_version"]),
                needs_review=Counter("piston_needs_review", "Decisions flagged for review",
                                     ["model_version"]),
                novel=Counter("piston_novel", "Decisions unlike the training images (novel)",
                              ["model_version"]),
                errors=Counter("piston_request_errors", "Rejected inputs and failures, by kind",
                               ["kind"]),
                serving=Gauge("piston_serving_model", "1 for the bundle version a worker serves",
                              ["version"], multiprocess_mode="liveall"),
                drifting=Gauge("piston_drifting", "1 while a version's live figures drift from"
                               " its test split", ["version"], multiprocess_mode="livemax"),
                drift_verdicts=Counter("piston_drift_checks", "Drift checks of a version's"
                                       " newest window, by verdict", ["version", "verdict"]),
            )
        return _metrics
