"""Averaging the search's networks: one network in every runtime, chosen only where it helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from piston import arch
from piston.cam import cam_embedder
from piston.errors import ConfigError
from training.config import TrainConfig, load_config
from training.decode import DecodedSet
from training.search import Candidate, _average, _score, averaged
from training.train import FitResult, contract_of, predict_logits

CLASSES = ["a", "b"]


def members(work_sides: tuple[int, int] = (48, 48)) -> list[dict]:
    """Two bn_cnn networks of different widths (dihedral_cnn's and wide_cnn's shapes)."""
    base = load_config("dihedral_cnn").arch_params
    return [
        {"arch": "bn_cnn", "arch_params": {**base, "widths": [8, 16, 32], "work_side": side}}
        for side in work_sides[:1]] + [
        {"arch": "bn_cnn", "arch_params": {**base, "widths": [16, 32, 64],
                                           "work_side": work_sides[1]}}]


def trained_like(module: nn.Module) -> nn.Module:
    """Random weights and batch-norm statistics (fresh ones are the identity), eval mode."""
    for part in module.modules():
        if isinstance(part, nn.BatchNorm2d):
            part.running_mean.uniform_(-0.5, 0.5)
            part.running_var.uniform_(0.5, 2.0)
    return module.eval()


def member_nets(params: list[dict]) -> list[nn.Module]:
    torch.manual_seed(0)
    return [trained_like(arch.build(m["arch"], 3, 64, 64, **{**m["arch_params"],
                                                            "tta": "dihedral"}))
            for m in params]


def test_the_average_is_the_mean_of_the_members_logits_and_loads_from_its_weights() -> None:
    params = members()
    nets = member_nets(params)
    ensemble = arch.with_views(arch.average_of(nets, ["bn_cnn", "bn_cnn"]), "dihedral").eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        mean = torch.stack([net(x) for net in nets]).mean(0)
        np.testing.assert_allclose(ensemble(x).numpy(), mean.numpy(), rtol=1e-5, atol=1e-5)
        # what a bundle does: build the architecture by name, then load the state dict
        loaded = arch.build("ensemble", 3, 64, 64, members=params, tta="dihedral")
        loaded.load_state_dict(ensemble.state_dict())
        np.testing.assert_allclose(loaded.eval()(x).numpy(), mean.numpy(), rtol=1e-5,
                                   atol=1e-5)


def test_the_heatmap_of_an_average_is_the_average_of_the_members_heatmaps() -> None:
    params = members()
    nets = member_nets(params)
    ensemble = arch.with_views(arch.average_of(nets, ["bn_cnn", "bn_cnn"]), "dihedral").eval()
    x = torch.randn(2, 3, 64, 64)
    cams = [cam_embedder(net) for net in nets]
    both = cam_embedder(ensemble)
    assert all(cams) and both is not None
    with torch.inference_mode():
        maps = [cam(x)[2] for cam in cams if cam is not None]
        _, features, together = both(x)
    np.testing.assert_allclose(together.numpy(), (sum(maps) / 2).numpy(), rtol=1e-4, atol=1e-5)
    assert features.shape == (2, 2 * 32 + 2 * 64)  # average and max pooling of each member
    # members that see the image at other sizes: each map brought to the largest before adding
    ensemble = arch.with_views(arch.average_of(member_nets(members((32, 48))), ["bn_cnn"] * 2),
                               "dihedral").eval()
    helper = cam_embedder(ensemble)
    assert helper is not None
    with torch.inference_mode():
        assert helper(x)[2].shape == maps[1].shape


def test_an_ensemble_needs_members_that_end_in_a_linear_layer() -> None:
    with pytest.raises(ConfigError, match="linear layer"):
        arch.build("ensemble", 3, 64, 64, members=[
            {"arch": "bn_cnn", "arch_params": {}}, {"arch": "mobilenet_v3_small"}])
    with pytest.raises(ConfigError, match="at least two"):
        arch.build("ensemble", 3, 64, 64, members=[{"arch": "bn_cnn"}])
    with pytest.raises(ConfigError, match=r"^bad training config: ensemble: ") as err:
        load_config(overrides={"ensemble": 0})  # `piston train --set ensemble=0`
    assert "\n" not in str(err.value)


def reader(noise_weight: float) -> nn.Sequential:
    """A net that reads class evidence from channel 0 minus channel 1, plus `noise_weight`
    times the noise in channel 2: two such nets with opposite weights err on different images,
    and their mean cancels the noise."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -1.0, noise_weight],
                                          [-1.0, 1.0, -noise_weight]]))
        net[1].bias.zero_()
    return net


def readers_set(n: int = 60) -> DecodedSet:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = np.zeros((n, 3, 1, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.where(labels == 0, 140, 115)  # a margin of 25 grey levels
    images[:, 1, 0, 0] = 128
    images[:, 2, 0, 0] = rng.integers(0, 256, n)  # noise
    return DecodedSet([f"{i}.png" for i in range(n)], labels, [None] * n, images,
                      [""] * n, [], [])


def candidate(name: str, net: nn.Module, tta: str | None = None) -> Candidate:
    config = TrainConfig(arch="reader", arch_params={"tta": tta} if tta else {},
                         input_size=(1, 1))
    return Candidate(name, config, FitResult(net.eval()))


def scored(cands: list[Candidate], val: DecodedSet) -> list[Candidate]:
    for cand in cands:
        _score(cand, val, CLASSES)
    return cands


def test_the_search_keeps_the_average_only_where_it_beats_the_winner() -> None:
    val = readers_set()
    plus, minus, noise = scored([candidate("plus", reader(0.3)), candidate("minus", reader(-0.3)),
                                 candidate("noise", reader(4.0))], val)
    assert plus.val_accuracy < 1.0 and minus.val_accuracy < 1.0  # each errs on noisy images
    chosen = averaged(plus, [plus, minus, noise], val, CLASSES, most=3)
    assert chosen.name == "plus+minus"  # the noise net would make it worse: left out
    assert chosen.val_accuracy == 1.0 and chosen.note.startswith("the mean of plus, minus")
    assert chosen.config.arch == "ensemble"
    assert [m["arch"] for m in chosen.config.arch_params["members"]] == ["reader", "reader"]
    assert chosen.fitted is not None
    logits = predict_logits(chosen.fitted.module, val.images, contract_of(chosen.config))
    assert (logits.argmax(1) == val.labels).all()
    # one network only (the default), or none that helps: the winner as it was
    assert averaged(plus, [plus, minus], val, CLASSES, most=1) is plus
    assert averaged(plus, [plus, noise], val, CLASSES, most=2) is plus


def test_networks_with_other_test_time_views_are_not_averaged() -> None:
    val = readers_set()
    plus, minus = scored([candidate("plus", reader(0.3)),
                          candidate("minus", reader(-0.3), tta="hflip")], val)
    assert averaged(plus, [plus, minus], val, CLASSES, most=2) is plus


def scaled_reader(noise_weight: float, scale: float) -> nn.Sequential:
    net = reader(noise_weight)
    with torch.no_grad():
        net[1].weight.mul_(scale)
    return net


def test_a_twin_of_the_winner_joins_on_validation_loss_where_another_recipe_must_win() -> None:
    val = readers_set()
    # an overconfident winner, and a network whose average with it is one image less right on
    # validation but less confidently wrong (lower loss)
    winner, other = scored([candidate("win", scaled_reader(0.3, 10.0)),
                            candidate("other", scaled_reader(2.0, 1.0))], val)
    trial = _average([winner, other])
    _score(trial, val, CLASSES)
    assert trial.val_accuracy < winner.val_accuracy and trial.val_loss < winner.val_loss
    assert averaged(winner, [winner, other], val, CLASSES, most=2) is winner
    other.twin = True  # the winner's own recipe from another seed
    chosen = averaged(winner, [winner, other], val, CLASSES, most=2)
    assert chosen.name == "win+other" and chosen.val_loss < winner.val_loss


def test_a_twin_that_makes_the_average_worse_on_every_figure_stays_out() -> None:
    val = readers_set()
    plus, noise = scored([candidate("plus", reader(0.3)), candidate("noise", reader(4.0))], val)
    noise.twin = True
    trial = _average([plus, noise])
    _score(trial, val, CLASSES)
    assert trial.val_macro_f1 < plus.val_macro_f1 and trial.val_loss > plus.val_loss
    assert averaged(plus, [plus, noise], val, CLASSES, most=2) is plus
