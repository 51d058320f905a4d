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
    ChannelScorer,
    CombinedScorer,
    KnnScorer,
    MahalanobisScorer,
    Method,
    NoveltyInfo,
    NoveltyPart,
    load,
    rule,
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


def knn(threshold: float = 0.2, dtype: type = np.float16) -> KnnScorer:
    return KnnScorer(np.random.default_rng(3).normal(size=(20, 8)).astype(dtype), 5, threshold)


def combined(mahalanobis: float = 3.0, cosine: float = 0.2) -> CombinedScorer:
    return CombinedScorer([scorer(threshold=mahalanobis), knn(cosine)])


def combined_info(s: CombinedScorer) -> NoveltyInfo:
    return info(1.0).model_copy(update={"method": "combined", "parts": [
        NoveltyPart(method=p.method, threshold=p.threshold, val_flagged=0.01) for p in s.parts]})


@pytest.mark.parametrize("method", ["mahalanobis", "knn", "combined"])
def test_save_and_load_give_the_same_scores(tmp_path: Path, method: Method) -> None:
    s = {"mahalanobis": scorer, "knn": knn, "combined": combined}[method]()
    save(s, tmp_path / NOVELTY_FILE)
    stored = (info(s.threshold).model_copy(update={"method": method}) if method != "combined"
              else combined_info(combined()))
    loaded = load(tmp_path, stored)
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


def test_combined_is_novel_when_either_check_is_over_its_own_threshold() -> None:
    features = np.random.default_rng(4).normal(2, 2, (200, 8)).astype(np.float32)
    maha, cos = scorer().score(features), knn().score(features)
    t_maha, t_cos = float(np.median(maha)), float(np.median(cos))  # each flags half
    s = combined(mahalanobis=t_maha, cosine=t_cos)
    assert s.score(features) == pytest.approx(np.maximum(maha / t_maha, cos / t_cos), rel=1e-6)
    either = (maha > t_maha) | (cos > t_cos)
    assert ((s.score(features) > s.threshold) == either).all()
    # the sample holds images that only one of the two checks flags, and images neither does
    assert ((maha > t_maha) & (cos <= t_cos)).any() and ((maha <= t_maha) & (cos > t_cos)).any()
    assert (~either).any()


def test_a_combined_check_needs_two_distinct_checks() -> None:
    with pytest.raises(ValueError, match="distinct"):
        CombinedScorer([scorer(), scorer()])


def test_the_rule_names_each_check_and_its_threshold() -> None:
    assert rule(info(30.62)) == "mahalanobis over 30.6"
    assert rule(combined_info(combined(31.0, 0.0912))) == "mahalanobis over 31 or knn over 0.0912"


def test_knn_keeps_its_bank_as_stored_so_a_reload_scores_the_same() -> None:
    s = knn(dtype=np.float16)
    assert s.arrays()["bank"].dtype == np.float16
    assert KnnScorer(s.arrays()["bank"], s.k, s.threshold).score(s.bank) == pytest.approx(
        s.score(s.bank), abs=0)


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


def test_a_bundle_with_a_combined_check_answers_one_relative_score(tmp_path: Path) -> None:
    far = CombinedScorer([MahalanobisScorer(np.full((2, 8), 100.0), np.eye(8), 1e6),  # never
                          KnnScorer(-np.ones((4, 8)), 2, 0.5)])  # opposite: always over
    bundle = write_bundle_dir(tmp_path / "b", combined_info(far))
    save(far, bundle / NOVELTY_FILE)
    predictor = Predictor.load(bundle)
    assert isinstance(predictor.novelty, CombinedScorer) and predictor.novelty.threshold == 1.0
    out = predictor.forward(np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32))
    expected = far.score(out.features)
    for decision, score in zip(decide(predictor, out), expected, strict=True):
        assert decision.novelty == pytest.approx(float(score)) and decision.novelty > 1.0
        assert decision.novel and decision.review_reason == "novel"


def test_an_older_bundle_with_mahalanobis_alone_keeps_its_raw_score(tmp_path: Path) -> None:
    bundle = write_bundle_dir(tmp_path / "b", None)
    raw = json.loads((bundle / META_FILE).read_text())
    raw["novelty"] = {"method": "mahalanobis", "threshold": 30.0, "target_share": 0.02,
                      "threshold_source": "log-normal tail of 45 validation scores",
                      "val_flagged": 0.0, "test_flagged": 0.0, "fitted_on": 197,
                      "file": NOVELTY_FILE}  # bundle.json as written before `parts`
    (bundle / META_FILE).write_text(json.dumps(raw))
    old = MahalanobisScorer(np.zeros((2, 8)), np.eye(8), 30.0)
    np.savez(bundle / NOVELTY_FILE, means=old.means, whiten=old.whiten)  # its file, as then
    predictor = Predictor.load(bundle)
    assert isinstance(predictor.novelty, MahalanobisScorer)
    assert predictor.novelty.threshold == 30.0
    out = predictor.forward(np.zeros((1, 3, 16, 16), dtype=np.float32))
    (decision,) = decide(predictor, out)
    assert decision.novelty == pytest.approx(float(np.linalg.norm(out.features[0])), rel=1e-4)
    assert decision.novel == (decision.novelty > 30.0)


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


@pytest.mark.parametrize("method", ["mahalanobis", "knn", "combined"])
def test_the_torch_head_scores_as_the_numpy_scorer(method: Method) -> None:
    """`NoveltyHead` (the check inside model.onnx and the torch runtime) computes what the
    numpy scorer does from the same stored arrays, the float16 kNN bank included."""
    from piston.novelty_head import NoveltyHead

    s = {"mahalanobis": scorer, "knn": knn, "combined": combined}[method]()
    features = np.random.default_rng(5).normal(2, 2, (33, 8)).astype(np.float32)
    with torch.inference_mode():
        ours = NoveltyHead(s).eval()(torch.from_numpy(features), torch.zeros(33, 3, 4, 4)).numpy()
    assert ours.shape == (33,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, s.score(features), rtol=1e-5, atol=1e-6)


def test_a_loaded_bundle_on_torch_computes_the_check_with_the_network(tmp_path: Path) -> None:
    s = combined(mahalanobis=30.0, cosine=0.3)
    bundle = write_bundle_dir(tmp_path / "b", combined_info(s))
    save(s, bundle / NOVELTY_FILE)
    predictor = Predictor.load(bundle, "torch")
    out = predictor.forward(np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32))
    assert out.novelty is not None
    np.testing.assert_allclose(out.novelty, s.score(out.features), rtol=1e-5)
    assert [d.novelty for d in decide(predictor, out)] == pytest.approx(out.novelty.tolist())


def colour_inputs(n: int, seed: int = 6) -> np.ndarray:
    """Photograph-like inputs (channels alike), colour noise, and a blank image."""
    rng = np.random.default_rng(seed)
    grey = rng.random((n, 1, 48, 48)) + 0.05 * rng.random((n, 3, 48, 48))
    noise = rng.random((n, 3, 48, 48))
    return np.concatenate([grey, noise, np.full((1, 3, 48, 48), 0.4)]).astype(np.float32)


def test_the_channels_check_scores_how_apart_an_images_colour_channels_are() -> None:
    scores = ChannelScorer(0.5).score(np.zeros((9, 8), dtype=np.float32), colour_inputs(4))
    assert scores.shape == (9,) and scores.dtype == np.float32
    assert (scores[:4] < 0.05).all()  # channels alike: a photograph's
    assert (abs(scores[4:8] - 1.0) < 0.3).all()  # i.i.d. colour noise: uncorrelated
    assert scores[8] == pytest.approx(1.5)  # blank: no variance, over 1
    with pytest.raises(ValueError, match="inputs"):
        ChannelScorer(0.5).score(np.zeros((1, 8), dtype=np.float32))


def test_the_torch_head_scores_the_channels_check_as_numpy() -> None:
    from piston.novelty_head import NoveltyHead

    s = CombinedScorer([scorer(threshold=30.0), knn(0.5), ChannelScorer(0.5)])
    inputs = colour_inputs(4)
    features = np.random.default_rng(7).normal(2, 2, (9, 8)).astype(np.float32)
    with torch.inference_mode():
        ours = NoveltyHead(s)(torch.from_numpy(features), torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(ours, s.score(features, inputs), rtol=1e-5, atol=1e-6)
    assert (ours[4:] > 1.0).all()  # noise and blank over the channels threshold


def test_a_combined_check_with_channels_is_saved_and_loaded(tmp_path: Path) -> None:
    s = CombinedScorer([scorer(threshold=30.0), knn(0.5), ChannelScorer(0.6)])
    save(s, tmp_path / NOVELTY_FILE)
    loaded = load(tmp_path, combined_info(s))
    assert isinstance(loaded, CombinedScorer) and isinstance(loaded.parts[2], ChannelScorer)
    assert loaded.parts[2].threshold == 0.6
    features = np.random.default_rng(8).normal(size=(9, 8)).astype(np.float32)
    inputs = colour_inputs(4)
    assert loaded.score(features, inputs) == pytest.approx(s.score(features, inputs), rel=1e-6)
