"""Fitting the novelty check on synthetic features: distances, the shrunk covariance, the
threshold, and the figures the bundle records."""

from __future__ import annotations

import numpy as np
import pytest

from piston.novelty import ChannelScorer, CombinedScorer, KnnScorer, MahalanobisScorer, NoveltyInfo
from training.novelty import (
    CHANNEL_FLOOR,
    CHANNEL_SHARE,
    TARGET_SHARE,
    fit_knn,
    fit_mahalanobis,
    fit_novelty,
    knn_floor,
    ledoit_wolf,
    tail_threshold,
)


def clusters(n: int, seed: int, dim: int = 16,
             classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of `classes` Gaussian clusters (correlated, non-negative like ReLU outputs)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).uniform(2, 6, (classes, dim))
    mix = np.random.default_rng(98).normal(0, 0.3, (dim, dim)) + np.eye(dim)
    labels = rng.integers(0, classes, n)
    features = centres[labels] + rng.normal(0, 1, (n, dim)) @ mix
    return np.maximum(features, 0).astype(np.float32), labels, centres


def test_the_score_is_the_distance_to_the_nearest_class_under_the_shared_covariance() -> None:
    features, labels, _ = clusters(300, 0)
    scorer = fit_mahalanobis(features, labels, 3)
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    cov, _ = ledoit_wolf(features - means[labels])
    precision = np.linalg.inv(cov)
    probe, _, _ = clusters(7, 1)
    expected = [min(float(np.sqrt((x - m) @ precision @ (x - m))) for m in means) for x in probe]
    assert scorer.score(probe) == pytest.approx(expected, rel=1e-3)
    assert scorer.score(means) == pytest.approx(np.zeros(3), abs=1e-2)


def test_shrinkage_makes_a_covariance_of_fewer_images_than_features_invertible() -> None:
    features, labels, _ = clusters(20, 2, dim=64)
    cov, shrink = ledoit_wolf(features - features.mean(0))
    assert 0 < shrink <= 1
    assert np.linalg.eigvalsh(cov).min() > 0
    scores = fit_mahalanobis(features, labels, 3).score(features)
    assert np.isfinite(scores).all()


def test_a_class_missing_from_train_is_left_out_not_a_nan() -> None:
    features, labels, _ = clusters(100, 3)
    scorer = fit_mahalanobis(features[labels != 2], labels[labels != 2], 3)
    assert np.isfinite(scorer.score(features)).all()


def test_the_threshold_flags_about_the_target_share_of_familiar_images() -> None:
    features, labels, _ = clusters(400, 4)
    val, _, _ = clusters(60, 5)  # a validation split as small as the pistons'
    fresh, _, _ = clusters(20_000, 6)
    scorer, info = fit_novelty("mahalanobis", features, labels, val, fresh[:50], 3)
    flagged = float((scorer.score(fresh) > scorer.threshold).mean())
    assert 0.002 <= flagged <= 3 * TARGET_SHARE
    assert info.threshold == scorer.threshold and info.fitted_on == 400
    assert info.val_flagged <= 0.05 and info.test_flagged is not None
    far = fresh[:50] + 8.0  # a shifted population: unlike the training images
    assert (scorer.score(far) > scorer.threshold).mean() > 0.95


def test_the_threshold_moves_little_with_the_validation_sample() -> None:
    features, labels, _ = clusters(400, 7)
    scorer = fit_mahalanobis(features, labels, 3)
    thresholds = [tail_threshold(scorer.score(clusters(50, 100 + s)[0])) for s in range(20)]
    assert np.std(thresholds) / np.mean(thresholds) < 0.1


def test_the_threshold_never_flags_more_than_the_target_of_its_own_scores() -> None:
    scores = np.r_[np.ones(97), 50.0, 60.0, 70.0]  # a fit the outliers would drag down
    threshold = tail_threshold(scores)
    assert (scores > threshold).mean() <= TARGET_SHARE + 1e-9
    assert tail_threshold(np.array([]), TARGET_SHARE) == np.inf


def test_with_one_validation_image_the_training_scores_set_a_finite_threshold() -> None:
    features, labels, _ = clusters(200, 8)
    val, _, _ = clusters(1, 9)
    scorer, info = fit_novelty("mahalanobis", features, labels, val, val, 3)
    assert np.isfinite(scorer.threshold) and "training" in info.threshold_source
    assert NoveltyInfo.model_validate_json(info.model_dump_json()) == info  # bundle.json


def test_combined_sets_each_threshold_on_validation_at_half_the_target() -> None:
    features, labels, _ = clusters(400, 10)
    val, _, _ = clusters(60, 11)
    test, _, _ = clusters(50, 12)
    scorer, info = fit_novelty("combined", features, labels, val, test, 3)
    assert isinstance(scorer, CombinedScorer) and scorer.threshold == info.threshold == 1.0
    maha, knn = scorer.parts
    assert isinstance(maha, MahalanobisScorer) and isinstance(knn, KnnScorer)
    assert maha.threshold == tail_threshold(maha.score(val), TARGET_SHARE / 2)
    assert knn.threshold == max(tail_threshold(knn.score(val), TARGET_SHARE / 2),
                                knn_floor(features, labels, 3))
    assert [(p.method, p.threshold) for p in info.parts] == [
        ("mahalanobis", maha.threshold), ("knn", knn.threshold)]
    assert info.val_flagged == float((scorer.score(val) > 1.0).mean())
    assert NoveltyInfo.model_validate_json(info.model_dump_json()) == info  # bundle.json


def test_combined_flags_about_the_target_of_familiar_images_together() -> None:
    features, labels, _ = clusters(400, 13)
    val, _, _ = clusters(60, 14)
    fresh, _, _ = clusters(20_000, 15)
    scorer, _ = fit_novelty("combined", features, labels, val, fresh[:50], 3)
    flagged = float((scorer.score(fresh) > scorer.threshold).mean())
    assert 0.002 <= flagged <= 3 * TARGET_SHARE
    far = fresh[:50] + 8.0  # a shifted population: unlike the training images
    assert (scorer.score(far) > scorer.threshold).mean() > 0.95


def photographs(n: int, seed: int, spread: float) -> np.ndarray:
    """Model inputs whose colour channels move together, less so with more `spread`."""
    rng = np.random.default_rng(seed)
    grey = rng.random((n, 1, 48, 48))
    return (grey + spread * rng.random((n, 3, 48, 48))).astype(np.float32)


@pytest.mark.parametrize(("spread", "floored"), [(0.0, True), (1.2, False)])
def test_with_inputs_combined_adds_the_channels_check_at_a_small_share_over_a_floor(
        spread: float, floored: bool) -> None:
    """Grey images (spread 0: channels identical) would set a threshold of ~0 that any colour
    crosses; the floor keeps it at CHANNEL_FLOOR. Colourful ones set their own."""
    features, labels, _ = clusters(400, 16)
    val, _, _ = clusters(60, 17)
    test, _, _ = clusters(50, 18)
    val_in, test_in = photographs(60, 19, spread), photographs(50, 20, spread)
    scorer, info = fit_novelty("combined", features, labels, val, test, 3,
                               inputs=(val_in, test_in))
    assert isinstance(scorer, CombinedScorer) and len(scorer.parts) == 3
    channels = scorer.parts[2]
    assert isinstance(channels, ChannelScorer) and info.parts[2].method == "channels"
    fitted = tail_threshold(ChannelScorer(1.0).score(val, val_in), CHANNEL_SHARE)
    assert channels.threshold == max(fitted, CHANNEL_FLOOR)
    assert (channels.threshold == CHANNEL_FLOOR) == floored
    assert info.val_flagged == float((scorer.score(val, val_in) > 1.0).mean())
    assert info.parts[2].test_flagged == 0.0
    noise = np.random.default_rng(21).random((10, 3, 48, 48)).astype(np.float32)
    assert (scorer.score(test[:10], noise) > 1.0).all()  # colour noise, whatever its features


def test_the_knn_bank_is_capped_and_stored_as_unit_rows_in_float16() -> None:
    features, _, _ = clusters(3000, 16)
    knn = fit_knn(features, bank=500)
    assert knn.stored.shape == (500, 16) and knn.stored.dtype == np.float16
    assert np.linalg.norm(knn.stored.astype(np.float32), axis=1) == pytest.approx(1, abs=1e-3)
    assert knn.score(features[:1000]).max() < 0.1  # the kept rows stand for the rest


def test_the_knn_threshold_stays_over_a_share_of_the_class_means_distance() -> None:
    """Collapsed features (a converged two-class model): familiar images a hair from their
    neighbours, so a tail fitted to a few validation scores would flag familiar test images."""
    rng = np.random.default_rng(0)
    centres = np.eye(2, 16) * 10
    labels = np.repeat([0, 1], 100)
    features = centres[labels] + rng.normal(0, 0.01, (200, 16))
    val = centres[[0, 1] * 9] + rng.normal(0, 0.01, (18, 16))
    scorer, info = fit_novelty("knn", features, labels, val, val, 2)
    assert knn_floor(features, labels, 2) == pytest.approx(0.1, rel=1e-3)  # means 90 deg apart
    assert scorer.threshold == pytest.approx(0.1, rel=1e-3) and "at least" in info.threshold_source
    assert knn_floor(features, np.zeros(200, int), 1) == 0.0  # one class: no floor
