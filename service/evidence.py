"""The live watchers a serving engine gets from the settings: shadow scoring, drift watch."""

from __future__ import annotations

from collections.abc import Callable

from piston.drift import bounds_of
from piston.settings import Settings
from service.drift import DriftWatch
from service.engine import Engine
from service.shadow import ShadowLimits, ShadowScorer


def watch_live(engine: Engine, settings: Settings,
               thread_init: Callable[[], None] | None = None) -> None:
    """Give `engine` its watchers and start their thread (in a worker, after BentoML set up)."""
    limits = ShadowLimits(settings.shadow_queue, settings.shadow_max_wait_s,
                          settings.shadow_samples, settings.shadow_ttl_s,
                          settings.max_image_pixels)
    follower = engine.follower  # the candidate loads as production did (PISTON_RUNTIME)
    engine.watchers.add(ShadowScorer(follower.registry, settings.redis_url, limits,
                                     lambda: engine.batcher.busy, engine.batcher.infer,
                                     runtime=follower.runtime, threads=follower.threads,
                                     thread_init=thread_init))
    engine.watchers.add(DriftWatch(settings.redis_url, bounds_of(settings), engine.metrics,
                                   lambda: engine.follower.current))
    engine.start_watching(settings.live_flush_s)


def shadow_of(engine: Engine) -> ShadowScorer | None:
    """This worker's shadow scorer, if it has one."""
    return next((w for w in engine.watchers.items if isinstance(w, ShadowScorer)), None)


def drift_of(engine: Engine) -> DriftWatch | None:
    """This worker's drift watch, if it has one."""
    return next((w for w in engine.watchers.items if isinstance(w, DriftWatch)), None)
