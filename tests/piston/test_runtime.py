"""Runtimes: ONNX when the bundle has model.onnx, torch otherwise, and no torch on the ONNX path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from piston import arch
from piston.bundle import META_FILE, BundleMeta, Predictor
from piston.errors import ConfigError
from piston.imaging import Contract
from piston.novelty import NOVELTY_FILE
from piston.novelty import save as save_novelty
from piston.runtime import ONNX_FILE, WEIGHTS_FILE, OnnxRuntime, TorchRuntime
from piston.scoring import decide
from piston.settings import load_settings
from training.novelty import embed, fit_novelty
from training.onnx_export import export_bundle_onnx, export_onnx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bundle folder as training writes it: meta, weights, a combined novelty check
    (channels included) fitted on its features and inputs, and model.onnx with the check
    inside."""
    root = tmp_path_factory.mktemp("bundle")
    meta = BundleMeta(version="v-rt", classes=["a", "b"], arch="bn_cnn",
                      arch_params={"widths": [8, 16], "tta": "hflip"},
                      contract={"height": 32, "width": 32, "exif_transpose": True,
                                "jpeg_draft": True})
    torch.manual_seed(0)
    module = arch.build("bn_cnn", 2, 32, 32, widths=[8, 16], tta="hflip").eval()
    inputs = familiar_inputs(60, seed=10)
    features = embed(module, torch.from_numpy(inputs))
    # spread, for a trained bundle's kNN threshold (a random net maps inputs near one direction)
    features += np.random.default_rng(0).normal(0, 0.5, features.shape).astype(
        np.float32) * np.abs(features).mean()
    labels = np.arange(40) % 2
    novelty, info = fit_novelty("combined", features[:40], labels, features[40:], features[:0],
                                2, inputs=(inputs[40:], inputs[:0]))
    assert [p.method for p in info.parts] == ["mahalanobis", "knn", "channels"]
    meta = meta.model_copy(update={"novelty": info})
    torch.save(module.state_dict(), root / WEIGHTS_FILE)
    (root / META_FILE).write_text(meta.model_dump_json())
    save_novelty(novelty, root / NOVELTY_FILE)
    export_bundle_onnx(module, meta.contract, root / ONNX_FILE, novelty)
    return root


def familiar_inputs(n: int, seed: int) -> np.ndarray:
    """Images like the bundle's: uniform noise, its colour channels alike (as a photograph's)."""
    rng = np.random.default_rng(seed)
    grey = rng.random((n, 1, 32, 32))
    return (grey + 0.1 * rng.random((n, 3, 32, 32))).astype(np.float32)


def noisy_batch(n: int, seed: int = 0) -> np.ndarray:
    """Inputs the bundle's check flags (normal noise, channels apart) and, first, like those
    it was fitted on."""
    rng = np.random.default_rng(seed)
    novel = rng.normal(0, 2, (n // 2, 3, 32, 32)).astype(np.float32)
    return np.concatenate([familiar_inputs(n - n // 2, seed), novel])


def test_each_runtime_loads_and_they_agree(bundle_dir: Path) -> None:
    onnx, torch_ = Predictor.load(bundle_dir, "onnx"), Predictor.load(bundle_dir, "torch", 1)
    assert isinstance(onnx.runtime, OnnxRuntime) and isinstance(torch_.runtime, TorchRuntime)
    batch = np.random.default_rng(0).normal(0, 1, (5, 3, 32, 32)).astype(np.float32)
    assert np.abs(onnx.probabilities(batch) - torch_.probabilities(batch)).max() <= 1e-4


def test_both_runtimes_compute_the_same_novelty_with_the_network(bundle_dir: Path) -> None:
    """The check is in model.onnx (output `novelty`) and runs after the torch module: the
    same score, and the same as the numpy scorer on the features."""
    onnx, torch_ = Predictor.load(bundle_dir, "onnx"), Predictor.load(bundle_dir, "torch", 1)
    assert isinstance(onnx.runtime, OnnxRuntime) and onnx.runtime.has_novelty
    batch = noisy_batch(16)
    ours, theirs = onnx.forward(batch), torch_.forward(batch)
    assert ours.novelty is not None and theirs.novelty is not None
    assert ours.novelty.shape == (16,)
    np.testing.assert_allclose(ours.novelty, theirs.novelty, rtol=1e-4)
    assert onnx.novelty is not None
    np.testing.assert_allclose(ours.novelty, onnx.novelty.score(ours.features, batch), rtol=1e-4)
    decided = decide(onnx, ours)
    assert [d.novelty for d in decided] == pytest.approx(ours.novelty.tolist(), rel=1e-6)
    flags = [d.novel for d in decided]
    assert any(flags) and not all(flags)  # the comparison covers both sides of the threshold
    assert flags == [d.novel for d in decide(torch_, theirs)]
    explained = onnx.forward(batch[:3], explain=True)
    assert explained.novelty is not None and explained.maps is not None
    np.testing.assert_allclose(explained.novelty, ours.novelty[:3], rtol=1e-5)


def reexported(bundle_dir: Path, tmp_path: Path,
               export: Callable[[torch.nn.Module, Contract, Path], int]) -> Path:
    """A copy of the bundle whose model.onnx is exported again by `export` from its weights:
    a graph as older code wrote it."""
    old = tmp_path / "old-bundle"
    shutil.copytree(bundle_dir, old)
    meta = BundleMeta.model_validate_json((old / META_FILE).read_text())
    module = arch.build("bn_cnn", 2, 32, 32, widths=[8, 16], tta="hflip")
    module.load_state_dict(torch.load(old / WEIGHTS_FILE, weights_only=True))
    export(module.eval(), meta.contract, old / ONNX_FILE)
    return old


def test_a_model_onnx_without_the_novelty_output_is_scored_in_numpy(bundle_dir: Path,
                                                                   tmp_path: Path) -> None:
    """Bundles exported before the check moved into the graph answer the same novelty."""
    old = reexported(bundle_dir, tmp_path, export_bundle_onnx)  # without the novelty output
    predictor = Predictor.load(old, "onnx")
    assert isinstance(predictor.runtime, OnnxRuntime) and not predictor.runtime.has_novelty
    batch = noisy_batch(6, seed=1)
    assert predictor.runtime.forward(batch).novelty is None
    expected = Predictor.load(bundle_dir, "onnx").forward(batch).novelty
    assert expected is not None
    # the channels check reads the inputs: the predictor scores it in numpy with the batch
    out = predictor.forward(batch)
    got = [d.novelty for d in decide(predictor, out)]
    assert got == pytest.approx(expected.tolist(), rel=1e-4)
    assert out.novelty is not None and predictor.novelty is not None
    expected_numpy = predictor.novelty.score(out.features, batch)
    assert out.novelty.tolist() == pytest.approx(expected_numpy.tolist(), rel=1e-6)


def test_a_bundle_without_a_check_ignores_the_graphs_novelty(bundle_dir: Path,
                                                             tmp_path: Path) -> None:
    """A bundle published again with `novelty: null` answers none, whatever its graph holds."""
    off = tmp_path / "off-bundle"
    shutil.copytree(bundle_dir, off)
    meta = BundleMeta.model_validate_json((off / META_FILE).read_text())
    (off / META_FILE).write_text(meta.model_copy(update={"novelty": None}).model_dump_json())
    predictor = Predictor.load(off, "onnx")
    assert isinstance(predictor.runtime, OnnxRuntime) and not predictor.runtime.has_novelty
    (decision,) = decide(predictor, predictor.forward(noisy_batch(1)))
    assert decision.novelty is None and not decision.novel


def test_onnx_gives_the_class_maps_of_torch(bundle_dir: Path) -> None:
    onnx, torch_ = Predictor.load(bundle_dir, "onnx"), Predictor.load(bundle_dir, "torch", 1)
    assert isinstance(onnx.explainer, OnnxRuntime) and onnx.explain_method == "cam"
    batch = np.random.default_rng(0).normal(0, 1, (3, 3, 32, 32)).astype(np.float32)
    ours, theirs = onnx.forward(batch, explain=True), torch_.forward(batch, explain=True)
    assert ours.maps is not None and theirs.maps is not None
    assert ours.maps.shape == theirs.maps.shape == (3, 2, 8, 8)  # a map per class
    np.testing.assert_allclose(ours.maps, theirs.maps, atol=1e-4 * np.ptp(theirs.maps))


def test_a_model_onnx_without_class_maps_explains_with_torch(bundle_dir: Path,
                                                             tmp_path: Path) -> None:
    """Bundles exported before heatmaps: scored with ONNX, explained with their weights."""
    old = reexported(bundle_dir, tmp_path,
                     lambda net, contract, path: export_onnx(arch.Embedder(net), contract, path))
    predictor = Predictor.load(old, "onnx")
    assert isinstance(predictor.runtime, OnnxRuntime) and not predictor.runtime.has_maps
    assert isinstance(predictor.explainer, TorchRuntime)
    batch = np.zeros((2, 3, 32, 32), dtype=np.float32)
    expected = Predictor.load(bundle_dir, "onnx").forward(batch, explain=True).maps
    got = predictor.forward(batch, explain=True).maps
    assert got is not None and expected is not None
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(np.ptp(expected), 1e-6))


def test_a_bundle_without_model_onnx_falls_back_to_torch(bundle_dir: Path,
                                                         tmp_path: Path) -> None:
    old = tmp_path / "old-bundle"
    shutil.copytree(bundle_dir, old)
    (old / ONNX_FILE).unlink()
    predictor = Predictor.load(old, "onnx")
    assert predictor.runtime.name == "torch"
    batch = np.zeros((2, 3, 32, 32), dtype=np.float32)
    expected = Predictor.load(bundle_dir, "onnx").probabilities(batch)
    assert np.abs(predictor.probabilities(batch) - expected).max() <= 1e-4


def test_a_model_onnx_without_the_outputs_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.onnx"
    meta = BundleMeta.model_validate_json((bundle_dir / META_FILE).read_text())
    module = arch.build("bn_cnn", 2, 32, 32, widths=[8, 16]).eval()
    export_onnx(module, meta.contract, bare, output_names=["logits"])
    with pytest.raises(ValueError, match="features"):
        OnnxRuntime.load(bare)


def test_an_unknown_runtime_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISTON_RUNTIME", "tensorflow")
    with pytest.raises(ConfigError, match="PISTON_RUNTIME") as err:
        load_settings()
    assert "\n" not in str(err.value)


NO_TORCH = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    import service.app, workers.tasks, workers.scoring, cli.main  # the three entry points
    from piston.follow import ModelFollower
    from piston.scoring import Decision, score_blobs
    from piston.settings import load_settings
    from service.engine import Engine, Limits
    from service.metrics import service_metrics

    bundle, image = sys.argv[1], Path(sys.argv[2]).read_bytes()
    settings = load_settings()
    engine = Engine(ModelFollower(None, pinned="v-rt", model_dir=bundle,
                                  runtime=settings.runtime), Limits(10**7, 8),
                    service_metrics(), 1.0)
    assert engine.refresh()
    decision = asyncio.run(engine.classify(image))
    outcomes = score_blobs(engine.predictor(), [image, image], 10**7)
    explained = asyncio.run(engine.classify(image, explain=True))
    assert explained.explanation is not None and explained.explanation.method == "cam"
    outcomes += score_blobs(engine.predictor(), [image], 10**7, explain=True)
    assert all(isinstance(o, Decision) for o in [decision, *outcomes])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")
                    or m == "piston.arch")
    print("runtime", engine.model_info().runtime, "loaded", loaded)
""")


def test_the_onnx_path_never_imports_torch(bundle_dir: Path, piston_data: Path) -> None:
    image = piston_data / "normal" / "normal_1.jpeg"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PISTON_RUNTIME": "onnx"}
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle_dir), str(image)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "runtime onnx loaded []" in out.stdout, out.stdout
