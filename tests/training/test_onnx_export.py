"""model.onnx: every architecture the recipes use gives torch's probabilities in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from piston import arch
from piston.bundle import BundleMeta
from piston.novelty import CombinedScorer, Scorer
from piston.runtime import OnnxRuntime, TorchRuntime
from training.config import load_config, recipe_names
from training.novelty import embed, fit_novelty
from training.onnx_export import (
    MAP_PARITY_LIMIT,
    NOVELTY_PARITY_LIMIT,
    PARITY_LIMIT,
    export_bundle_onnx,
    map_difference,
    with_onnx,
)
from training.train import contract_of

# The fast tier checks one recipe's export; the eight-view, wide and ImageNet-sized ones
# (linear_probe: a minute on 2 busy cores) take 5-18x as long.
FAST_CASE = ("bn_cnn", None)
# `auto` may average its candidates (training/search.py): dihedral_cnn's and wide_cnn's nets
# in one graph, the wide one at another working size so that their maps differ in size
ENSEMBLE = "dihedral_cnn+wide_cnn"
# (recipe, input size): the recipes' own sizes; the ones resolved from the data at a size
# their Shrink acts on, square (dihedral transposes) and not
CASES = [(name, None) for name in recipe_names() if name != "auto"] + [
    ("dihedral_cnn", (150, 150)), ("dihedral_cnn", (96, 144)), ("wide_cnn", (160, 120)),
    (ENSEMBLE, (150, 150))]


def recipe_module(name: str, size: tuple[int, int] | None) -> tuple[nn.Module, BundleMeta]:
    """The recipe's module, with random weights and batch-norm statistics (not the identity
    that fresh ones are), in eval mode, and a bundle meta for it."""
    if name == ENSEMBLE:
        first, second = (load_config(n).arch_params for n in name.split("+"))
        members = [{"arch": "bn_cnn", "arch_params": {**first, "tta": None}},
                   {"arch": "bn_cnn", "arch_params": {**second, "tta": None, "work_side": 96}}]
        config = load_config("dihedral_cnn", overrides={"input_size": size}).model_copy(
            update={"arch": "ensemble", "arch_params": {"members": members, "tta": "dihedral"}})
    else:
        config = load_config(name, overrides={"input_size": size} if size else None)
    if config.input_size is None:
        config = config.model_copy(update={"input_size": (150, 150)})
    contract = contract_of(config)
    torch.manual_seed(0)
    module = arch.build(config.arch, 3, contract.height, contract.width, **config.arch_params)
    for part in module.modules():
        if isinstance(part, nn.BatchNorm2d):
            part.running_mean.uniform_(-0.5, 0.5)
            part.running_var.uniform_(0.5, 2.0)
    module.eval()
    meta = BundleMeta(version="v-onnx", classes=["a", "b", "c"], arch=config.arch,
                      arch_params=config.arch_params, contract=contract)
    return module, meta


def fitted_check(module: nn.Module, meta: BundleMeta) -> Scorer:
    """A combined novelty check (channels included) fitted on the module's features of random
    images, spread, and on their inputs.

    A random net maps every input near one direction (kNN thresholds ~1e-4, where float32's
    resolution of a cosine near 1 is half a percent of the score); the spread gives the
    thresholds of trained bundles (kNN 0.05-0.1)."""
    c = meta.contract
    rng = np.random.default_rng(3)
    inputs = torch.from_numpy(rng.normal(0, 1, (30, 3, c.height, c.width)).astype(np.float32))
    features = embed(module, inputs)
    features = features + rng.normal(0, 0.5, features.shape).astype(np.float32) * np.abs(
        features).mean()
    scorer, _ = fit_novelty("combined", features[:20], np.arange(20) % 3, features[20:],
                            features[:0], 3, inputs=(inputs[20:].numpy(), inputs[:0].numpy()))
    assert isinstance(scorer, CombinedScorer)
    assert [p.method for p in scorer.parts] == ["mahalanobis", "knn", "channels"]
    return scorer


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return np.asarray(e / e.sum(1, keepdims=True))


@pytest.mark.parametrize(("recipe", "size"), [
    pytest.param(name, size, marks=[] if (name, size) == FAST_CASE else [pytest.mark.slow],
                 id=f"{name}-{size[0]}x{size[1]}" if size else name)
    for name, size in CASES])
def test_onnx_probabilities_match_torch(recipe: str, size: tuple[int, int] | None,
                                        tmp_path: Path) -> None:
    module, meta = recipe_module(recipe, size)
    c = meta.contract
    check = fitted_check(module, meta)
    export_bundle_onnx(module, c, tmp_path / "model.onnx", check)
    onnx_rt = OnnxRuntime.load(tmp_path / "model.onnx")
    torch_rt = TorchRuntime(module, novelty=check)
    assert onnx_rt.has_novelty
    # Grad-CAM nets (dense layers, MobileNet's two-layer head) explain in torch only
    assert onnx_rt.has_maps == (recipe not in ("seed", "linear_probe"))
    rng = np.random.default_rng(1)
    for n in (1, 7):  # the batch axis is dynamic
        batch = rng.normal(0, 1, (n, 3, c.height, c.width)).astype(np.float32)
        ours, theirs = onnx_rt.forward(batch), torch_rt.forward(batch)
        assert ours.logits.shape == theirs.logits.shape == (n, 3)
        assert ours.features.shape == theirs.features.shape
        assert np.abs(softmax(ours.logits) - softmax(theirs.logits)).max() <= PARITY_LIMIT
        np.testing.assert_allclose(ours.features, theirs.features, rtol=1e-3, atol=1e-4)
        # the novelty check in the graph: the torch runtime's score, and the numpy scorer's
        assert ours.novelty is not None and theirs.novelty is not None
        np.testing.assert_allclose(ours.novelty, theirs.novelty, rtol=1e-4)
        np.testing.assert_allclose(ours.novelty, check.score(ours.features, batch), rtol=1e-4)
        if onnx_rt.has_maps:  # the heatmaps' maps, test-time views flipped back and all
            maps = onnx_rt.explain(batch).maps
            assert map_difference(maps, torch_rt.explain(batch).maps) <= MAP_PARITY_LIMIT


def test_the_parity_is_recorded_in_the_meta(tmp_path: Path) -> None:
    module, meta = recipe_module("bn_cnn", None)
    images = np.random.default_rng(2).integers(0, 256, (10, 3, 80, 80), dtype=np.uint8)
    recorded = with_onnx(meta, module, images, tmp_path / "model.onnx",
                         fitted_check(module, meta))
    assert recorded.onnx is not None and (tmp_path / "model.onnx").is_file()
    assert recorded.onnx.images == 10 and recorded.onnx.labels_differ == 0
    assert 0 <= recorded.onnx.max_prob_diff <= PARITY_LIMIT
    assert recorded.onnx.max_map_diff is not None
    assert 0 <= recorded.onnx.max_map_diff <= MAP_PARITY_LIMIT
    assert recorded.onnx.max_novelty_diff is not None
    assert 0 <= recorded.onnx.max_novelty_diff <= NOVELTY_PARITY_LIMIT
    assert OnnxRuntime.load(tmp_path / "model.onnx").has_novelty
    assert BundleMeta.model_validate_json(recorded.model_dump_json()).onnx == recorded.onnx


class ThroughNumpy(nn.Module):
    """A network the exporter cannot trace (it leaves torch for numpy)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.from_numpy(x.detach().numpy().mean((2, 3)))
        return self.head(pooled)


def test_a_network_that_cannot_be_exported_ships_torch_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    meta = BundleMeta(version="v-odd", classes=["a", "b"], arch="odd",
                      contract={"height": 8, "width": 8})
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    recorded = with_onnx(meta, ThroughNumpy().eval(), images, tmp_path / "model.onnx")
    assert recorded.onnx is None and not (tmp_path / "model.onnx").exists()
    assert "scored with torch" in caplog.text
