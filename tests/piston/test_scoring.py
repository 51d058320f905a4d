"""The one scoring path: blobs in, a Decision or an ImageFailure out for each, in order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from piston import arch
from piston.bundle import BundleMeta, Predictor
from piston.calibration import Calibration
from piston.scoring import Decision, ImageFailure, NetOutput, decide, score_blobs
from tests.conftest import image_bytes


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    meta = BundleMeta(version="v-test", classes=["a", "b", "c"], arch="seed_cnn",
                      contract={"height": 16, "width": 16},
                      calibration=Calibration(threshold=0.9))
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


def logits_of(probs: list[list[float]]) -> NetOutput:
    logits = np.log(np.array(probs, dtype=np.float32))
    return NetOutput(logits, np.zeros((len(logits), 4), dtype=np.float32))


def test_needs_review_below_the_bundle_threshold(predictor: Predictor) -> None:
    sure, unsure = decide(predictor, logits_of([[0.95, 0.03, 0.02], [0.5, 0.3, 0.2]]))
    assert (sure.label, sure.needs_review, sure.review_reason) == ("a", False, None)
    assert (unsure.label, unsure.needs_review, unsure.review_reason) == (
        "a", True, "low_confidence")
    assert sure.confidence == pytest.approx(0.95, abs=1e-5)
    assert sure.novelty is None and not sure.novel  # this bundle has no novelty model


def test_the_bundle_calibration_scales_confidence_and_may_set_a_class_threshold() -> None:
    calibration = Calibration(temperature=2.0, threshold=0.5, class_thresholds={"b": 0.99})
    meta = BundleMeta(version="v", classes=["a", "b"], arch="seed_cnn",
                      contract={"height": 16, "width": 16}, calibration=calibration)
    predictor = Predictor(meta, arch.build("seed_cnn", 2, 16, 16))
    out = NetOutput(np.array([[2.0, 0.0], [0.0, 3.0]], dtype=np.float32), np.zeros((2, 1)))
    a, b = decide(predictor, out)
    assert a.confidence == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-5)  # softmax(2/2, 0)
    assert (a.label, a.needs_review) == ("a", False)
    assert (b.label, b.needs_review, b.review_reason) == ("b", True, "low_confidence")
    assert predictor.probabilities(np.zeros((1, 3, 16, 16), dtype=np.float32)).sum() == (
        pytest.approx(1.0, abs=1e-5))


class FarFromZero:
    """A novelty scorer injected for the test: the length of the features."""

    threshold = 1.0

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.linalg.norm(features, axis=1)


def test_a_novel_image_always_needs_review_whatever_its_confidence() -> None:
    meta = BundleMeta(version="v", classes=["a", "b"], arch="seed_cnn",
                      contract={"height": 16, "width": 16})
    predictor = Predictor(meta, arch.build("seed_cnn", 2, 16, 16), novelty=FarFromZero())
    logits = np.array([[9.0, 0.0], [9.0, 0.0]], dtype=np.float32)
    familiar, novel = decide(predictor, NetOutput(logits, np.array([[0.5, 0.0], [3.0, 4.0]])))
    assert (familiar.novel, familiar.needs_review, familiar.novelty) == (False, False, 0.5)
    assert (novel.novel, novel.needs_review, novel.review_reason) == (True, True, "novel")
    assert novel.novelty == pytest.approx(5.0) and novel.confidence > 0.99


def test_decide_reads_the_novelty_the_runtime_computed_and_scores_in_numpy_without() -> None:
    """A graph with the check gives `NetOutput.novelty`, which wins over the features; an
    output without it (older graphs, the torch explainer) is scored from the features."""
    meta = BundleMeta(version="v", classes=["a", "b"], arch="seed_cnn",
                      contract={"height": 16, "width": 16})
    predictor = Predictor(meta, arch.build("seed_cnn", 2, 16, 16), novelty=FarFromZero())
    logits = np.array([[9.0, 0.0], [9.0, 0.0]], dtype=np.float32)
    features = np.array([[0.5, 0.0], [3.0, 4.0]], dtype=np.float32)
    graph = NetOutput(logits, features, novelty=np.array([2.5, 0.25], dtype=np.float32))
    novel, familiar = decide(predictor, graph)
    assert (novel.novelty, novel.novel, novel.review_reason) == (2.5, True, "novel")
    assert (familiar.novelty, familiar.novel, familiar.needs_review) == (0.25, False, False)
    numpy_path = decide(predictor, NetOutput(logits, features))
    assert [d.novelty for d in numpy_path] == pytest.approx([0.5, 5.0])
    rows = NetOutput.concat([graph.row(1), graph.row(0)])
    assert rows.novelty is not None and rows.novelty.tolist() == [0.25, 2.5]
    assert NetOutput.concat([graph.row(0), NetOutput(logits[:1], features[:1])]).novelty is None


def test_features_are_the_head_input_averaged_over_the_test_time_views() -> None:
    import torch

    module = arch.build("bn_cnn", 3, 32, 32, tta="dihedral")
    module.eval()
    x = torch.rand(2, 3, 32, 32)
    logits, features = arch.Embedder(module)(x)
    assert features.shape == (2, 128)
    head = module.net[-1]
    assert torch.allclose(head(features), logits, atol=1e-5)  # linear head: same average
    assert torch.allclose(logits, module(x), atol=1e-6)
