"""The whole training path on the real piston data: figures, bundle contents, no half bundles."""

from __future__ import annotations

import json
from pathlib import Path

import bentoml
import numpy as np
import pytest

from piston.bundle import MODEL_NAME, Predictor, read_meta
from piston.errors import DataError
from piston.imaging import preprocess
from piston.registry import Registry
from piston.scoring import decide
from piston.storage import LocalStorage
from tests.conftest import synthetic_dataset
from training.calibrate import T_BOUNDS
from training.config import load_config
from training.pipeline import GateBar, train_bundle

MAX_PIXELS = 40_000_000


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalStorage(tmp_path / "registry"))


@pytest.mark.slow  # trains
def test_seed_recipe_on_the_random_split_reaches_the_published_figure(
    piston_data: Path, registry: Registry, tmp_path: Path
) -> None:
    config = load_config("seed", overrides={"split": "random"})
    outcome = train_bundle(
        str(piston_data), config, registry, GateBar(), tmp_path / "runs", MAX_PIXELS
    )
    assert outcome.metrics.accuracy >= 0.98  # published: 98.25% on a random split
    assert len(outcome.history) == 25


@pytest.mark.slow  # trains
def test_a_bundle_holds_everything_needed_to_trust_and_rerun_it(
    piston_data: Path, registry: Registry, tmp_path: Path
) -> None:
    config = load_config("seed", overrides={"epochs": 3})
    outcome = train_bundle(
        str(piston_data), config, registry, GateBar(), tmp_path / "runs", MAX_PIXELS
    )
    model = bentoml.models.get(f"{MODEL_NAME}:{outcome.version}")
    root = Path(model.path)
    meta = read_meta(root)
    assert meta.classes == ["defect_1", "defect_2", "normal"]
    assert meta.contract.height == 80 and meta.config["epochs"] == 3
    assert len(meta.data_fingerprint) == 64 and meta.code_version
    assert meta.metrics.confusion_matrix and meta.gates
    assert set(meta.metrics.per_class) == set(meta.classes)
    for name in (
        "weights.pt",
        "split.json",
        "data_check.json",
        "report/report.html",
        "report/curves.png",
        "report/confusion.png",
        "report/metrics.json",
    ):
        assert (root / name).is_file(), name
    page = (root / "report" / "report.html").read_text()
    assert f"{meta.threshold:.3f}</b>" in page and "flagged needs_review" in page
    split = json.loads((root / "split.json").read_text())
    assert sum(len(v) for v in split.values()) == 285
    assert not set(split["train"]) & set(split["test"])
    # The published bundle scores images with the same preprocessing training used.
    predictor = Predictor.load(registry.fetch(outcome.version))
    image = (piston_data / split["test"][0]).read_bytes()
    probs = predictor.probabilities(preprocess(image, predictor.contract)[None])
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1) < 1e-5
    # A second training names the production bundle of the time as its parent.
    registry.promote(outcome.version, "first", force=True)
    again = train_bundle(
        str(piston_data), config, registry, GateBar(), tmp_path / "runs", MAX_PIXELS
    )
    assert registry.meta(again.version).parent == outcome.version
    assert again.metrics.data.counts == outcome.metrics.data.counts


@pytest.mark.slow  # trains
def test_gates_follow_the_configured_bar(
    piston_data: Path, registry: Registry, tmp_path: Path
) -> None:
    config = load_config("seed", overrides={"epochs": 1})
    impossible = GateBar(min_accuracy=1.01, min_class_f1=1.01, min_class_recall=1.01)
    outcome = train_bundle(
        str(piston_data), config, registry, impossible, tmp_path / "runs", MAX_PIXELS
    )
    gates = outcome.to_json()["gates"]
    assert gates and not any(g["passed"] for g in gates if not g["name"].startswith("support"))
    assert not registry.meta(outcome.version).gates_passed


def test_too_little_data_is_refused_and_leaves_no_bundle(
    registry: Registry, tmp_path: Path
) -> None:
    root = synthetic_dataset(tmp_path / "tiny", {"a": 1, "b": 1})
    before = _bundles()
    with pytest.raises(DataError, match="fewer than 3 images"):
        train_bundle(
            str(root),
            load_config("seed", overrides={"epochs": 1}),
            registry,
            GateBar(),
            tmp_path / "runs",
            MAX_PIXELS,
        )
    assert _bundles() == before
    assert registry.versions() == []


def _bundles() -> set[str]:
    """The bundles in the BentoML store (none yet when this test runs first)."""
    try:
        return {str(m.tag) for m in bentoml.models.list(MODEL_NAME)}
    except bentoml.exceptions.NotFound:
        return set()


@pytest.mark.slow  # trains
def test_the_default_calibrates_on_the_pistons_and_every_edge_applies_it(
    piston_data: Path, registry: Registry, tmp_path: Path
) -> None:
    # a ceiling far above the quiet machine's few seconds: a loaded one trains the same model
    config = load_config(overrides={"budget_s": 3600, "threads": 1})
    outcome = train_bundle(str(piston_data), config, registry, GateBar(), tmp_path / "runs",
                           MAX_PIXELS)
    figures = outcome.to_json()
    cal = figures["calibration"]
    assert figures["test_accuracy"] >= 0.9
    # sane figures: confidence reads as a chance, few parts go to a person, those accepted
    # are at least as right as all of them
    assert figures["ece"] == cal["ece"] and 0.0 <= cal["ece"] <= 0.1
    assert T_BOUNDS[0] < cal["temperature"] < T_BOUNDS[1]
    assert 0.0 <= figures["review_share"] <= 0.3
    assert figures["accepted_accuracy"] >= figures["test_accuracy"]
    meta = registry.meta(outcome.version)
    assert meta.calibration.temperature == cal["temperature"]
    assert meta.summary()["review_share"] == cal["review_share"]
    # the loaded bundle, scored the way serving and batch scoring score, sends the same share
    # of the test split to review as training reported
    predictor = Predictor.load(registry.fetch(outcome.version))
    split = json.loads((registry.fetch(outcome.version) / "split.json").read_text())
    batch = np.stack([preprocess((piston_data / key).read_bytes(), predictor.contract)
                      for key in split["test"]])
    decisions = decide(predictor, predictor.forward(batch))
    flagged = sum(d.needs_review for d in decisions) / len(decisions)
    assert flagged == pytest.approx(cal["review_share"], abs=1.5 / len(decisions))
