"""The real piston data prepared once for the training tests that only read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.prepare import Prepared


@pytest.fixture(scope="session")
def prepared_pistons(piston_data: Path) -> Prepared:
    """`prepare` of the pistons with the default recipe (decode and data check: seconds);
    tests read it and must not change it."""
    from training.config import load_config
    from training.prepare import prepare

    return prepare(str(piston_data), load_config(), 40_000_000)
