"""Following the registry's production pointer: load, check, then swap a model in atomically.

The service and the batch workers both hold a `ModelFollower`. Callers take `follower.current`
once per request or batch and use that object throughout, so work in flight finishes on the
model it started with while a newer one is swapped in beside it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from piston.bundle import Predictor
from piston.errors import PistonError, StorageUnavailable
from piston.registry import Registry
from piston.runtime import DEFAULT_RUNTIME, RuntimeName

log = logging.getLogger(__name__)


@dataclass
class FollowStatus:
    version: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # version -> why it was not swapped in
    last_error: str | None = None


class ModelFollower:
    """Holds the serving `Predictor`; `refresh()` swaps in the registry's production bundle.

    With `pinned` set, it loads that version once and never follows the pointer (a bento
    built for one bundle serves that bundle). Bundles load in `runtime` with `threads`
    intra-op threads.
    """

    def __init__(
        self, registry: Registry | None, pinned: str | None = None, model_dir: str | None = None,
        runtime: RuntimeName = DEFAULT_RUNTIME, threads: int | None = 1,
    ) -> None:
        self.registry = registry
        self.pinned = pinned
        self.model_dir = model_dir
        self.runtime = runtime
        self.threads = threads
        self.status = FollowStatus()
        self._current: Predictor | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> Predictor | None:
        return self._current

    def refresh(self) -> bool:
        """Load the wanted bundle if it is not the one serving; True when a swap happened."""
        with self._lock:  # one loader at a time; readers never wait on it
            try:
                wanted = self._wanted()
            except (PistonError, ValidationError) as err:  # keep serving what we have
                self.status.last_error = str(err)
                log.warning("cannot read the production pointer: %s", err)
                return False
            if wanted is None or (self._current and self._current.meta.version == wanted):
                return False
            if wanted in self.status.refused:
                return False
            try:
                predictor = self._load(wanted)
            except StorageUnavailable as err:  # passing: try again at the next poll
                self.status.last_error = f"cannot fetch bundle {wanted} yet: {err}"
                log.warning(
                    "cannot fetch bundle %s yet, keeping %s: %s", wanted, self.status.version, err
                )
                return False
            except Exception as err:  # any other failure to load or probe refuses the bundle
                reason = f"{type(err).__name__}: {err}"
                self.status.refused[wanted] = reason
                self.status.last_error = f"refused bundle {wanted}: {reason}"
                log.error("refused bundle %s, keeping %s: %s", wanted, self.status.version, reason)
                return False
            self._current = predictor
            self.status.version = wanted
            self.status.last_error = None
            log.info("now serving bundle %s", wanted)
            return True

    def _wanted(self) -> str | None:
        if self.pinned or self.registry is None:
            return self.pinned
        return self.registry.current()

    def _load(self, version: str) -> Predictor:
        if self.model_dir is not None and self.pinned == version:
            path = self.model_dir
        else:
            if self.registry is None:
                raise PistonError(f"no registry to fetch bundle {version} from")
            path = str(self.registry.fetch(version))
        predictor = Predictor.load(path, self.runtime, self.threads)
        _probe(predictor)
        return predictor


def _probe(predictor: Predictor) -> None:
    """Score a blank image: the bundle must produce one probability per class that sum to 1."""
    c = predictor.contract
    probs = predictor.probabilities(np.zeros((1, 3, c.height, c.width), dtype=np.float32))
    if probs.shape != (1, len(predictor.meta.classes)) or not np.isclose(
        probs.sum(), 1.0, atol=1e-3
    ):
        raise PistonError(f"probe gave probabilities of shape {probs.shape}")
