"""The bundle's novelty scorer: numpy scoring, stored and loaded with the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from piston import arch
from piston.bundle import META_FILE, WEIGHTS_FILE, BundleMeta, Predictor
from piston.errors import RegistryError
from piston.novelty import (
    NOVELTY_FILE,
    KnnScorer,
    MahalanobisScorer,
    Method,
    NoveltyInfo,
    load,
    save,
)
from piston.scoring import Decision, decide, score_blobs
from tests.conftest import image_bytes


def scorer(dim: int = 8, threshold: float = 3.0) -> MahalanobisScorer:
    rng = np.random.default_rng(0)
    means = rng.uniform(0, 4, (2, dim))
    return MahalanobisScorer(means, np.eye(dim) * 0.5, threshold)


def info(threshold: float = 3.0) -> NoveltyInfo:
    return NoveltyInfo(method="mahalanobis", threshold=threshold, target_share=0.02,
                       threshold_source="test", val_flagged=0.0, fitted_on=10)


def test_score_is_vectorised_and_row_by_row_the_same() -> None:
    s = scorer()
    features = np.random.default_rng(1).normal(2, 2, (33, 8)).astype(np.float32)
    batch = s.score(features)
    assert batch.shape == (33,) and batch.dtype == np.float32
    assert batch == pytest.approx(np.r_[[s.score(f[None])[0] for f in features]], rel=1e-5)
    assert s.score(s.means) == pytest.approx([0.0, 0.0], abs=1e-2)  # float32 cancellation


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_save_and_load_give_the_same_scores(tmp_path: Path, method: Method) -> None:
    s = scorer() if method == "mahalanobis" else KnnScorer(
        np.random.default_rng(3).normal(size=(20, 8)), 5, 0.2)
    save(s, tmp_path / NOVELTY_FILE)
    loaded = load(tmp_path, info(s.threshold).model_copy(update={"method": method}))
    assert type(loaded) is type(s)
    features = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    assert loaded.threshold == s.threshold
    assert loaded.score(features) == pytest.approx(s.score(features), rel=1e-6, abs=1e-7)


def test_a_missing_or_broken_novelty_file_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="novelty"):
        load(tmp_path, info())
    (tmp_path / NOVELTY_FILE).write_bytes(b"not an npz")
    with pytest.raises(RegistryError, match="novelty"):
        load(tmp_path, info())


def test_knn_scores_one_minus_the_cosine_to_the_nearest_training_features() -> None:
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    knn = KnnScorer(bank, 1, 0.1)
    assert knn.score(np.array([[2.0, 0.0], [-1.0, 0.0]])) == pytest.approx([0.0, 1.0 + 0.0])


def write_bundle_dir(root: Path, novelty: NoveltyInfo | None) -> Path:
    meta = BundleMeta(version="v1", classes=["a", "b"], arch="bn_cnn",
                      arch_params={"widths": [8, 8]}, contract={"height": 16, "width": 16},
                      novelty=novelty)
    root.mkdir()
    (root / META_FILE).write_text(meta.model_dump_json())
    torch.save(arch.build("bn_cnn", 2, 16, 16, widths=[8, 8]).state_dict(), root / WEIGHTS_FILE)
    return root


def test_a_bundle_with_a_novelty_model_flags_what_is_far_from_it(tmp_path: Path) -> None:
    bundle = write_bundle_dir(tmp_path / "b", info(threshold=1.0))
    far = MahalanobisScorer(np.full((2, 8), 100.0), np.eye(8), 1.0)  # every image is far
    save(far, bundle / NOVELTY_FILE)
    predictor = Predictor.load(bundle)
    assert predictor.novelty is not None and predictor.novelty.threshold == 1.0
    (decision,) = score_blobs(predictor, [image_bytes()], 10**6)
    assert isinstance(decision, Decision)
    assert decision.novel and decision.needs_review and decision.review_reason == "novel"
    assert decision.novelty is not None and decision.novelty > 1.0


def test_a_bundle_without_one_keeps_working_with_novelty_null(tmp_path: Path) -> None:
    bundle = write_bundle_dir(tmp_path / "b", None)
    raw = json.loads((bundle / META_FILE).read_text())
    raw.pop("novelty")  # as written before novelty existed
    (bundle / META_FILE).write_text(json.dumps(raw))
    predictor = Predictor.load(bundle)
    assert predictor.novelty is None
    out = predictor.forward(np.zeros((1, 3, 16, 16), dtype=np.float32))
    (decision,) = decide(predictor, out)
    assert decision.novelty is None and not decision.novel
