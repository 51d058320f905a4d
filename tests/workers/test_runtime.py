"""What a worker process holds between tasks: one copy of the production model."""

from __future__ import annotations

import gc
from pathlib import Path

from piston.registry import Registry
from piston.settings import Settings
from piston.storage import open_storage
from tests.conftest import Trained
from workers.runtime import Runtime


def test_a_shard_first_and_a_plan_later_share_one_production_model(
        trained: Trained, tmp_path: Path) -> None:
    registry = Registry(open_storage(tmp_path / "registry"))
    source = Registry(open_storage(trained.registry))
    for version in (trained.good, trained.other):
        registry.copy_from(source, version)
    registry.promote(trained.good, reason="test", force=True)
    rt = Runtime(Settings(registry=str(tmp_path / "registry")))
    gc.unfreeze()
    try:
        first = rt.predictor(trained.good)  # this process's first task is a shard
        # the model and modules are out of the collector's sight: a full collection mid-job
        # walks only what the job made
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
    assert rt.production() is first  # its first plan loads nothing more
    assert rt.predictor(trained.good) is first
    other = rt.predictor(trained.other)  # a job that started before a promote: pinned
    assert other.meta.version == trained.other and rt.predictor(trained.other) is other
