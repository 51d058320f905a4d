"""Runtimes: ONNX when the bundle has model.onnx, torch otherwise, and no torch on the ONNX path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from piston import arch
from piston.bundle import META_FILE, BundleMeta, Predictor
from piston.errors import ConfigError
from piston.runtime import ONNX_FILE, WEIGHTS_FILE, OnnxRuntime, TorchRuntime
from piston.settings import load_settings
from training.onnx_export import export_bundle_onnx, export_onnx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bundle folder as training writes it: meta, weights and model.onnx."""
    root = tmp_path_factory.mktemp("bundle")
    meta = BundleMeta(version="v-rt", classes=["a", "b"], arch="bn_cnn",
                      arch_params={"widths": [8, 16], "tta": "hflip"},
                      contract={"height": 32, "width": 32, "exif_transpose": True,
                                "jpeg_draft": True})
    torch.manual_seed(0)
    module = arch.build("bn_cnn", 2, 32, 32, widths=[8, 16], tta="hflip").eval()
    torch.save(module.state_dict(), root / WEIGHTS_FILE)
    (root / META_FILE).write_text(meta.model_dump_json())
    export_bundle_onnx(module, meta.contract, root / ONNX_FILE)
    return root


def test_each_runtime_loads_and_they_agree(bundle_dir: Path) -> None:
    onnx, torch_ = Predictor.load(bundle_dir, "onnx"), Predictor.load(bundle_dir, "torch", 1)
    assert isinstance(onnx.runtime, OnnxRuntime) and isinstance(torch_.runtime, TorchRuntime)
    batch = np.random.default_rng(0).normal(0, 1, (5, 3, 32, 32)).astype(np.float32)
    assert np.abs(onnx.probabilities(batch) - torch_.probabilities(batch)).max() <= 1e-4


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
    old = tmp_path / "old-bundle"
    shutil.copytree(bundle_dir, old)
    meta = BundleMeta.model_validate_json((old / META_FILE).read_text())
    module = arch.build("bn_cnn", 2, 32, 32, widths=[8, 16], tta="hflip")
    module.load_state_dict(torch.load(old / WEIGHTS_FILE, weights_only=True))
    export_onnx(arch.Embedder(module.eval()), meta.contract, old / ONNX_FILE)
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
