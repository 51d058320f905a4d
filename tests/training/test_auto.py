"""`auto` and the loop under it: candidates compared on validation data within a budget,
training in cycles until converged, and ImageNet weights through torchvision's real path."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from piston import arch
from piston.bundle import Predictor
from piston.errors import ConfigError
from piston.registry import Registry
from piston.storage import LocalStorage
from tests.conftest import synthetic_dataset
from tests.training.synthetic import notch_set, texture_set
from training.config import load_config
from training.evaluate import GateBar
from training.pipeline import train_bundle
from training.search import candidate_configs
from training.train import fit

MAX_PIXELS = 40_000_000
NOTCH_EPOCHS = 40  # each candidate's on the notch set: 120 steps of 32 images


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return texture_set(tmp_path_factory.mktemp("tex"), {"a": 30, "b": 30, "c": 30}, side=32)


def _train(data: Path, tmp: Path, **overrides: object) -> dict:
    registry = Registry(LocalStorage(tmp / "registry"))
    outcome = train_bundle(str(data), load_config(overrides=overrides), registry, GateBar(),
                           tmp / "runs", MAX_PIXELS)
    return outcome.to_json()


@pytest.mark.slow  # trains
def test_auto_compares_candidates_and_says_why(textures: Path, tmp_path: Path) -> None:
    first = _train(textures, tmp_path / "1", epochs=3, budget_s=120)
    rows = first["search"]
    names = [r["candidate"] for r in rows]
    assert names[:3] == ["bn_cnn", "dihedral_cnn", "wide_cnn"]
    assert set(names[3:]) <= {f"{first['candidate'].split('+')[0]}#2", first["candidate"]}
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["candidate"] == first["candidate"]
    assert chosen[0]["note"]
    trained = [r for r in rows if r["epochs"]]
    assert all(0.0 <= r["val_macro_f1"] <= 1.0 for r in trained)
    assert first["input_size"] == [32, 32]
    assert set(first["support_by_split"]) == {"train", "val", "test"}
    # seeded: the same search picks the same candidate with the same figures
    again = _train(textures, tmp_path / "2", epochs=3, budget_s=120)
    assert again["candidate"] == first["candidate"]
    assert again["macro_f1"] == first["macro_f1"]


@pytest.mark.slow  # trains
def test_the_search_keeps_to_its_budget(textures: Path, tmp_path: Path) -> None:
    began = time.monotonic()
    result = _train(textures, tmp_path, epochs=200, budget_s=12)
    assert time.monotonic() - began < 12 + 30  # + decode, report and bundle
    assert any(r["stopped"] == "budget" or r["note"] for r in result["search"])


@pytest.mark.slow  # trains
def test_training_goes_on_while_it_has_not_converged(textures: Path, tmp_path: Path) -> None:
    from training.prepare import prepare

    prepared = prepare(str(textures), load_config(), MAX_PIXELS)
    images, labels = prepared.decoded.images, prepared.decoded.labels
    config = load_config("bn_cnn", overrides={"input_size": [32, 32], "epochs": 2,
                                              "max_cycles": 4, "lr": 0.0003, "threads": 1})
    result = fit(config, images[:60], labels[:60], images[60:], labels[60:], 3)
    cycles = {e.cycle for e in result.history}
    assert len(cycles) >= 2  # two epochs at a low rate cannot fit: more cycles ran
    assert result.stopped in {"converged", "cycles"}
    saturated = load_config("bn_cnn", overrides={"input_size": [32, 32], "epochs": 15,
                                                 "max_cycles": 4, "threads": 1})
    easy = fit(saturated, images[:60], labels[:60], images[60:], labels[60:], 3)
    if easy.history[-1].train_accuracy >= 0.99:
        assert easy.stopped == "converged" and {e.cycle for e in easy.history} == {1}


@pytest.mark.slow  # trains
def test_a_granted_budget_is_spent_while_cycles_help(textures: Path) -> None:
    from cli.train import parse_budget
    from training.prepare import prepare

    assert parse_budget("27m") == {"budget_s": 1620.0, "spend_budget": True}
    prepared = prepare(str(textures), load_config(), MAX_PIXELS)
    images, labels = prepared.decoded.images, prepared.decoded.labels
    slow = {"input_size": [32, 32], "epochs": 1, "max_cycles": 1, "lr": 0.0003, "threads": 1,
            "budget_s": 60}
    capped = fit(load_config("bn_cnn", overrides=slow), images[:60], labels[:60],
                 images[60:], labels[60:], 3)
    assert {e.cycle for e in capped.history} == {1}  # the budget is only a ceiling
    spent = fit(load_config("bn_cnn", overrides={**slow, "spend_budget": True}), images[:60],
                labels[:60], images[60:], labels[60:], 3)
    assert len({e.cycle for e in spent.history}) > 1  # granted: more cycles while they help
    assert spent.seconds < 60 + 10


@pytest.mark.slow  # trains
def test_a_round_part_with_a_small_notch(tmp_path: Path) -> None:
    """The default's search on grayscale round parts whose defect is a notch of 1.3% of the
    image: the candidate it keeps finds the notch on the test split.

    As cheap as the claim allows: the parts are drawn at 112 px (512 px photos resolve to
    224 px inputs, checked without training in test_any_dataset.py), every candidate trains
    a fixed number of epochs, and the budget is never reached, so the schedule and not the
    machine's load bounds the search. (The 512 px version with a 400 s budget took ~270 s
    and failed on a busy machine, where the budget cut the cycles short.) On 512 px photos
    bn_cnn at 224 px misses the notch and the search needs dihedral_cnn's full schedule: that
    figure is measured by bench/candidates.py (docs/evaluation.md), not here."""
    data = notch_set(tmp_path / "notch", per_class=60, side=112)
    result = _train(data, tmp_path, epochs=NOTCH_EPOCHS, budget_s=86_400)
    assert result["input_size"] == [112, 112]
    assert result["macro_f1"] >= 0.95, result["search"]
    for counts in result["support_by_split"].values():
        assert min(counts.values()) >= 1


def _cached_weights(torch_home: Path, name: str) -> dict[str, torch.Tensor]:
    """A state dict the test makes, put where torchvision's weights API caches a download."""
    from torchvision.models import get_model, get_model_weights

    weights = get_model_weights(name).DEFAULT
    state = get_model(name, weights=None).state_dict()
    state = {k: torch.full_like(v, 0.125) if v.is_floating_point() else v
             for k, v in state.items()}
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / Path(weights.url).name)
    return state


def test_imagenet_weights_load_through_the_torchvision_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = _cached_weights(tmp_path / "torch", "mobilenet_v3_small")
    module = arch.build("mobilenet_v3_small", 2, 64, 64, freeze=True)
    loaded = arch.load_torchvision_weights(module, "mobilenet_v3_small", "imagenet")
    assert loaded == len(state) - 2  # all but the head's last layer (1000 classes there)
    first = next(k for k in state if k.endswith("weight"))
    assert torch.equal(module.state_dict()[f"net.{first}"], state[first])


@pytest.mark.slow  # trains
def test_the_linear_probe_trains_only_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _cached_weights(tmp_path / "torch", "mobilenet_v3_small")
    data = synthetic_dataset(tmp_path / "data", {"a": 12, "b": 12}, size=(64, 64))
    from training.prepare import prepare

    config = load_config("linear_probe", overrides={"input_size": [64, 64], "epochs": 2,
                                                    "threads": 1})
    prepared = prepare(str(data), config, MAX_PIXELS)
    images, labels = prepared.decoded.images, prepared.decoded.labels
    result = fit(config, images[:16], labels[:16], images[16:], labels[16:], 2)
    backbone = dict(result.module.named_parameters())
    assert all(torch.all(p == 0.125) for n, p in backbone.items() if ".features." in n)
    assert not np.isnan(result.history[-1].train_loss)


def test_no_cached_weights_and_no_network_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr("torch.hub.download_url_to_file", _no_network)
    module = arch.build("resnet18", 2, 64, 64)
    with pytest.raises(ConfigError, match="pretrained_weights: PATH"):
        arch.load_torchvision_weights(module, "resnet18", "imagenet")


def _no_network(url: str, *args: object, **kwargs: object) -> None:
    raise OSError(f"no network here (asked for {url})")


def _candidates(**overrides: object) -> list[str]:
    return [name for name, _ in candidate_configs(load_config(overrides=overrides))]


@pytest.mark.slow  # trains
def test_auto_adds_a_pretrained_candidate_only_when_its_weights_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, textures: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("torch.hub.download_url_to_file", _no_network)
    plain = ["bn_cnn", "dihedral_cnn", "wide_cnn"]
    assert _candidates(input_size=[32, 32]) == plain  # nothing cached: never a download
    assert _candidates(input_size=[32, 32], pretrained_source="download") == [
        *plain, "linear_probe"]
    _cached_weights(tmp_path / "torch", "mobilenet_v3_small")
    assert _candidates(input_size=[32, 32]) == [*plain, "linear_probe"]
    assert _candidates(input_size=[32, 32], pretrained_source="never") == plain
    # in a search, it trains from the cached weights beside a from-scratch candidate
    result = _train(textures, tmp_path, search=["seed"], epochs=1, budget_s=300, ensemble=1)
    rows = {r["candidate"]: r for r in result["search"]}
    assert set(rows) == {"seed", "linear_probe"}
    probe = rows["linear_probe"]
    assert probe["arch"] == "mobilenet_v3_small"
    assert probe["epochs"] >= 1 or "already perfect" in probe["note"]


@pytest.mark.slow  # trains
def test_a_second_network_is_trained_and_averaged_when_the_budget_holds_it(
        textures: Path, tmp_path: Path) -> None:
    registry = Registry(LocalStorage(tmp_path / "registry"))
    config = load_config(overrides={"epochs": 3, "budget_s": 300, "ensemble": 2})
    outcome = train_bundle(str(textures), config, registry, GateBar(), tmp_path / "runs",
                           MAX_PIXELS)
    result = outcome.to_json()
    rows = {r["candidate"]: r for r in result["search"]}
    winner = next(r for r in result["search"] if r["note"].startswith("highest")
                  or r["note"].startswith("same") or r["note"] == "the only candidate trained")
    again = rows[f"{winner['candidate']}#2"]
    assert again["epochs"] == winner["epochs"] and again["seconds"] > 0
    chosen = [r for r in result["search"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["candidate"] == result["candidate"]
    if "+" in result["candidate"]:  # averaged: one network in the bundle, in both runtimes
        assert chosen[0]["note"].startswith("the mean of")
        assert chosen[0]["val_macro_f1"] >= winner["val_macro_f1"]
    folder = registry.fetch(outcome.version)
    loaded = [Predictor.load(folder, kind) for kind in ("torch", "onnx")]
    assert (loaded[0].meta.arch == "ensemble") == ("+" in result["candidate"])
    images = np.random.default_rng(0).normal(0, 1, (4, 3, 32, 32)).astype(np.float32)
    probs = [p.probabilities(images) for p in loaded]
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-4)
