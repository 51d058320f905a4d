"""The one scoring path: blobs in, a Decision or an ImageFailure out for each, in order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from piston import arch
from piston.bundle import BundleMeta, Predictor
from piston.scoring import Decision, ImageFailure, decide, score_blobs
from tests.conftest import image_bytes


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    meta = BundleMeta(version="v-test", classes=["a", "b", "c"], arch="seed_cnn",
                      contract={"height": 16, "width": 16}, threshold=0.9)
    module = arch.build("seed_cnn", 3, 16, 16)
    module.eval()
    return Predictor(meta, module)


def test_failures_keep_their_slot_and_decisions_are_typed(predictor: Predictor,
                                                         piston_data: Path) -> None:
    good = (piston_data / "normal" / "normal_1.jpeg").read_bytes()
    cut = good[: len(good) // 2]
    upstream = ImageFailure(error="over the limit", kind="too_large")
    outcomes = score_blobs(predictor, [b"not an image", good, upstream, cut, good], 10**6)
    kinds = [o.kind if isinstance(o, ImageFailure) else "ok" for o in outcomes]
    assert kinds == ["not_an_image", "ok", "too_large", "truncated", "ok"]
    decision = outcomes[1]
    assert isinstance(decision, Decision) and decision.model_version == "v-test"
    assert decision.label in {"a", "b", "c"} and set(decision.probabilities) == {"a", "b", "c"}
    assert sum(decision.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert decision.confidence == max(decision.probabilities.values())
    assert decision == outcomes[4]  # same image, same answer


def test_a_thread_pool_decodes_to_the_same_answers(predictor: Predictor) -> None:
    blobs = [image_bytes((i * 40, 90, 200 - i * 30)) for i in range(5)] + [b""]
    with ThreadPoolExecutor(2) as pool:
        pooled = score_blobs(predictor, blobs, 10**6, map_fn=pool.map)
    assert pooled == score_blobs(predictor, blobs, 10**6)
    assert isinstance(pooled[-1], ImageFailure) and pooled[-1].kind == "empty"


def test_needs_review_below_the_bundle_threshold(predictor: Predictor) -> None:
    probs = np.array([[0.95, 0.03, 0.02], [0.5, 0.3, 0.2]], dtype=np.float32)
    sure, unsure = decide(predictor, probs)
    assert (sure.label, sure.needs_review) == ("a", False)
    assert (unsure.label, unsure.needs_review) == ("a", True)
