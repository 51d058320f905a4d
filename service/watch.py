"""What the engine tells the live watchers (shadow scoring, drift watch) after it answered.

The engine calls `seen` on the event loop once production's answer is made: a watcher must only
count or enqueue there, never score or wait. `tick` runs every `live_flush_s` on the engine's
watch thread: that is where watchers read Redis, load models and flush their counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from piston.bundle import Predictor
from piston.live import every
from piston.scoring import Decision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    """One live image production scored: its bytes, the model input, the decision and its
    pixel count (the header's)."""

    data: bytes
    array: np.ndarray
    decision: Decision
    pixels: int


class Watcher(Protocol):
    def seen(self, predictor: Predictor, images: Sequence[Seen], seconds: float) -> None: ...

    def error(self, version: str | None, kind: str) -> None: ...

    def tick(self, serving: str | None) -> None: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Watchers:
    """The engine's watchers; one failing watcher never fails a request or the others."""

    def __init__(self) -> None:
        self.items: list[Watcher] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, watcher: Watcher) -> None:
        self.items.append(watcher)

    def seen(self, predictor: Predictor, images: Sequence[Seen], seconds: float) -> None:
        for w in self.items:
            try:
                w.seen(predictor, images, seconds)
            except Exception:  # a bug in a watcher must not cost the answer
                log.exception("watcher %s failed on seen", type(w).__name__)

    def error(self, version: str | None, kind: str) -> None:
        for w in self.items:
            try:
                w.error(version, kind)
            except Exception:
                log.exception("watcher %s failed on error", type(w).__name__)

    def start(self, interval_s: float, serving: Any) -> None:
        """Tick every watcher every `interval_s` with the version `serving()` names."""
        if not self.items or self._thread is not None:
            return

        def tick() -> None:
            version = serving()
            for w in self.items:
                try:
                    w.tick(version)
                except Exception:
                    log.exception("watcher %s failed on tick", type(w).__name__)

        self._thread = every(interval_s, self._stop, tick, "live-watch")

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for w in self.items:
            out.update(w.info())
        return out

    def close(self) -> None:
        self._stop.set()
        for w in self.items:
            w.close()
