"""The drift watch in one API worker: count each answer into its version's windows, judge.

`seen` runs on the event loop after production answered and only adds numbers to a local
tally (brightness from the model input, size from the image header). The watch thread sends
the tally to Redis, then reads the serving version's newest windows back (every worker's
counts) and judges them against the bundle's test split (`piston.drift`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from piston import drift
from piston.bundle import Predictor
from piston.errors import PistonError
from piston.imaging import Contract
from piston.live import Tally, connect, reaching
from service.metrics import ServiceMetrics
from service.watch import Seen

log = logging.getLogger(__name__)
DAY_KEEP = 8  # day windows kept


def brightness(array: np.ndarray, contract: Contract) -> float:
    """Mean brightness (0-1) of the image a model input came from: undo the normalisation."""
    sums = array.reshape(3, -1).sum(axis=1, dtype=np.float64).tolist()  # one numpy call:
    n = array.size // 3  # it runs per live request, on the event loop
    return sum(s / n * sd + m for s, sd, m in zip(sums, contract.std, contract.mean,
                                                   strict=True)) / 3


class DriftWatch:
    """Counts live answers per version and window; judges the serving version's newest."""

    def __init__(self, redis_url: str, bounds: drift.DriftBounds, metrics: ServiceMetrics,
                 current: Callable[[], Predictor | None]) -> None:
        self.redis_url = redis_url
        self.bounds = bounds
        self.metrics = metrics
        self.current = current
        self.tally = Tally()
        self.state: drift.VersionDrift | None = None
        self.last_error: str | None = None

    def _add(self, version: str, fields: dict[str, float], now: float) -> None:
        b = self.bounds
        self.tally.add(drift.window_key(version, b.window_s, drift.window_start(now, b.window_s)),
                       fields, b.window_s * b.keep_windows)
        self.tally.add(drift.window_key(version, drift.DAY_S,
                                        drift.window_start(now, drift.DAY_S)),
                       fields, drift.DAY_S * DAY_KEEP)

    def seen(self, predictor: Predictor, images: Sequence[Seen], seconds: float) -> None:
        contract = predictor.contract
        total: dict[str, float] = {}
        for item in images:
            d = item.decision
            fields = drift.image_fields(
                d.label, d.confidence, d.needs_review, d.novelty, d.novel,
                brightness(item.array, contract), item.pixels / 1e6, len(item.data) / 1024)
            for name, value in fields.items():
                total[name] = total.get(name, 0) + value
        version = predictor.meta.version
        self._add(version, total, time.time())
        self.tally.add(drift.VERSIONS_KEY, {version: len(images)}, drift.DAY_S * DAY_KEEP)

    def error(self, version: str | None, kind: str) -> None:
        self._add(version or drift.NO_VERSION, {f"e:{kind}": 1}, time.time())

    def tick(self, serving: str | None) -> None:
        client = connect(self.redis_url)
        self.tally.flush(client)
        predictor = self.current()
        if predictor is None:
            return
        try:
            with reaching(self.redis_url, "the drift watch"):
                state = drift.assess(client, predictor.meta.version,
                                     drift.baseline(predictor.meta), self.bounds, time.time(),
                                     windows=2, days=0)
        except PistonError as err:
            if str(err) != self.last_error:  # once, not every tick; not in the public /model
                log.warning("drift watch: %s", err)
            self.last_error = str(err)
            return
        self.state, self.last_error = state, None
        if self.metrics.drifting is not None:
            self.metrics.drifting.labels(version=state.version).set(int(state.drifting))
        if self.metrics.drift_verdicts is not None and state.judged is not None:
            verdict = "drifting" if state.drifting else "steady"
            self.metrics.drift_verdicts.labels(version=state.version, verdict=verdict).inc()

    def info(self) -> dict[str, Any]:
        state = self.state
        return {"drifting": bool(state and state.drifting),
                "drift": {"reasons": state.reasons if state else [],
                          "window_s": self.bounds.window_s,
                          "judged": state.judged.model_dump() if state and state.judged
                          else None}}

    def close(self) -> None:
        """Nothing of its own to stop: the engine's watch thread ticks it."""
