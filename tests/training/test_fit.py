"""The training loop: seeded, any recipe's knobs, and the threshold it hands to the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from piston.bundle import Predictor, local_model
from piston.registry import Registry
from piston.storage import LocalStorage
from tests.conftest import synthetic_dataset
from training.config import load_config
from training.pipeline import GateBar, prepare, train_bundle
from training.train import fit

MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    root = synthetic_dataset(tmp_path_factory.mktemp("fit"), {"a": 20, "b": 13, "c": 8},
                             size=(40, 28))
    prepared = prepare(str(root), load_config(overrides={"input_size": [28, 40]}), MAX_PIXELS)
    return prepared.decoded.images, prepared.decoded.labels


@pytest.mark.slow  # trains
@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "adamw", "lr_schedule": "cosine", "weight_decay": 0.01},
        {"lr_schedule": "onecycle", "label_smoothing": 0.1, "class_weighting": True},
        {"arch": "bn_cnn", "ema_decay": 0.9},
        {"arch": "bn_cnn", "arch_params": {"tta": "flips"}, "augment": {"hflip": 0.5,
         "rotate_degrees": 20, "color_jitter": 0.2, "noise_std": 0.02}},
    ],
)
def test_fit_is_seeded_and_learns_with_every_knob(
    small_set: tuple[np.ndarray, np.ndarray], overrides: dict[str, object]
) -> None:
    images, labels = small_set
    config = load_config("seed", overrides={"epochs": 4, "batch_size": 8, "input_size": [28, 40],
                                            "threads": 1, **overrides})
    # 33 training images with batch 8 leaves a lone last image: batch norm must not choke on it
    first = fit(config, images[:33], labels[:33], images[33:], labels[33:], 3)
    again = fit(config, images[:33], labels[:33], images[33:], labels[33:], 3)
    assert [e.train_loss for e in first.history] == [e.train_loss for e in again.history]
    assert len(first.history) == 4
    assert first.history[-1].train_loss < first.history[0].train_loss


@pytest.mark.slow  # trains
def test_a_moving_average_keeps_the_averaged_weights(
    small_set: tuple[np.ndarray, np.ndarray],
) -> None:
    images, labels = small_set
    base = {"arch": "bn_cnn", "epochs": 3, "batch_size": 8, "input_size": [28, 40], "threads": 1}
    plain = fit(load_config("seed", overrides=base), images[:33], labels[:33], images[33:],
                labels[33:], 3)
    averaged = fit(load_config("seed", overrides={**base, "ema_decay": 0.9}), images[:33],
                   labels[:33], images[33:], labels[33:], 3)
    # the same seed and steps: the training losses agree, the kept weights do not
    assert [e.train_loss for e in plain.history] == [e.train_loss for e in averaged.history]
    kept, last = averaged.module.state_dict(), plain.module.state_dict()
    assert any(not np.allclose(kept[k].numpy(), last[k].numpy()) for k in kept
               if kept[k].is_floating_point())


@pytest.mark.slow  # trains
def test_the_bundle_threshold_comes_from_validation_and_the_review_band_is_reported(
    tmp_path: Path,
) -> None:
    root = synthetic_dataset(tmp_path / "data", {"a": 30, "b": 30, "c": 30}, size=(24, 24))
    registry = Registry(LocalStorage(tmp_path / "registry"))
    config = load_config(overrides={"epochs": 3, "input_size": [24, 24],
                                    "review_target_error": 0.02})
    outcome = train_bundle(str(root), config, registry, GateBar(), tmp_path / "runs", MAX_PIXELS)
    calibration = outcome.metrics.calibration
    assert calibration.threshold_source == "validation"
    assert 0.0 <= calibration.review_share <= 1.0 and (calibration.ece or 0.0) >= 0.0
    predictor = Predictor.load(local_model(outcome.version).path)
    assert predictor.meta.threshold == calibration.threshold
    assert outcome.to_json()["calibration"] == calibration.model_dump()
