"""The session's trained bundle: its model.onnx scores the pistons' test split like torch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from piston.bundle import Predictor, read_meta
from piston.runtime import ONNX_FILE
from piston.scoring import Decision, score_blobs
from tests.service.conftest import Bundles, open_registry
from tests.service.test_engine import make_engine


def test_the_test_split_gets_the_same_labels_in_both_runtimes(
        bundles: Bundles, registry_dir: Path, piston_data: Path) -> None:
    path = Path(open_registry(registry_dir).fetch(bundles.good))
    meta = read_meta(path)
    keys = json.loads((path / "split.json").read_text())["test"]
    assert (path / ONNX_FILE).is_file() and meta.onnx is not None
    assert meta.onnx.images == len(keys) > 0
    assert meta.onnx.max_prob_diff <= 1e-4 and meta.onnx.labels_differ == 0
    blobs = [(piston_data / key).read_bytes() for key in keys]
    ours = decisions(Predictor.load(path, "onnx"), blobs)
    theirs = decisions(Predictor.load(path, "torch", 1), blobs)
    assert [d.label for d in ours] == [d.label for d in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert np.abs(probabilities(a) - probabilities(b)).max() <= 1e-4
        assert a.novelty is not None and b.novelty is not None  # both read the same features
        assert a.novelty == pytest.approx(b.novelty, rel=1e-3) and a.novel == b.novel


def decisions(predictor: Predictor, blobs: list[bytes]) -> list[Decision]:
    outcomes = score_blobs(predictor, blobs, 10**8)
    assert all(isinstance(o, Decision) for o in outcomes)
    return [o for o in outcomes if isinstance(o, Decision)]


def probabilities(decision: Decision) -> np.ndarray:
    return np.array(list(decision.probabilities.values()))


def test_the_engine_serves_with_onnx_by_default(bundles: Bundles, registry_dir: Path,
                                                piston_data: Path) -> None:
    engine = make_engine(registry_dir, bundles.good)
    image = (piston_data / "normal" / "normal_1.jpeg").read_bytes()
    assert asyncio.run(engine.classify(image)).model_version == bundles.good
    assert engine.model_info().runtime == "onnx"
