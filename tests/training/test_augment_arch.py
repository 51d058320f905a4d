"""Batched augmentation and the architecture registry: any size, any class count, seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from piston import arch
from piston.errors import ConfigError
from training.augment import build_augment
from training.config import Augment

EVERYTHING = Augment(hflip=0.5, vflip=0.5, rotate_degrees=30, crop_scale=0.7, translate_x=0.1,
                     translate_y=0.05, color_jitter=0.3, blur_sigma=1.5, sharpen=1.0,
                     noise_std=0.05)


def batch(n: int = 6, height: int = 24, width: int = 40) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(1)) * 255


def test_nothing_switched_on_means_no_augmentation() -> None:
    assert build_augment(Augment()) is None


@pytest.mark.parametrize(("height", "width"), [(24, 40), (33, 17), (80, 80)])
def test_every_augmentation_keeps_shape_and_range_and_is_seeded(height: int, width: int) -> None:
    augment = build_augment(EVERYTHING)
    assert augment is not None
    x = batch(height=height, width=width)
    first = augment(x.clone(), torch.Generator().manual_seed(7))
    again = augment(x.clone(), torch.Generator().manual_seed(7))
    other = augment(x.clone(), torch.Generator().manual_seed(8))
    assert first.shape == x.shape
    assert float(first.min()) >= 0.0 and float(first.max()) <= 255.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.allclose(first, x)


def test_a_certain_flip_is_exactly_a_flip() -> None:
    augment = build_augment(Augment(hflip=1.0))
    assert augment is not None
    x = batch()
    assert torch.equal(augment(x.clone(), torch.Generator().manual_seed(0)), x.flip(-1))


def test_a_zero_rotation_affine_is_nearly_the_identity() -> None:
    augment = build_augment(Augment(translate_x=1e-6))
    assert augment is not None
    x = batch()
    assert torch.allclose(augment(x.clone(), torch.Generator().manual_seed(0)), x, atol=0.1)


@pytest.mark.parametrize("name", sorted(arch.ARCHITECTURES))
@pytest.mark.parametrize("classes", [2, 7])
def test_every_architecture_builds_for_any_class_count_and_size(name: str, classes: int) -> None:
    model = arch.build(name, classes, 48, 64).eval()
    with torch.inference_mode():
        assert model(torch.rand(2, 3, 48, 64)).shape == (2, classes)


def test_flip_averaging_is_the_mean_of_the_flipped_views_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    model = arch.build("bn_cnn", 3, 32, 32, tta="hflip")
    assert isinstance(model, arch.FlipAverage)
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    with torch.inference_mode():
        expected = (model.net(x) + model.net(x.flip(-1))) / 2
        assert torch.allclose(model(x), expected, atol=1e-5)
    model.train()
    assert model(x).shape == (4, 3)
    with pytest.raises(ConfigError, match="bad tta"):
        arch.build("bn_cnn", 3, 32, 32, tta="sideways")


def test_pretrained_weights_come_from_a_local_file_and_skip_the_head(tmp_path: Path) -> None:
    donor = arch.build("bn_cnn", 10, 32, 32)
    torch.save(donor.state_dict(), tmp_path / "donor.pt")
    model = arch.build("bn_cnn", 3, 32, 32, tta="hflip")
    loaded = arch.load_pretrained(model, tmp_path / "donor.pt")
    assert loaded == len(donor.state_dict()) - 2  # all but the 10-class head's weight and bias
    assert torch.equal(model.state_dict()["net.0.weight"], donor.state_dict()["0.weight"])
    with pytest.raises(ConfigError, match="cannot read pretrained"):
        arch.load_pretrained(model, tmp_path / "missing.pt")
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="share no tensor"):
        arch.load_pretrained(model, tmp_path / "other.pt")


def test_unknown_architecture_or_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown architecture"):
        arch.build("nope", 3, 32, 32)
    with pytest.raises(ConfigError, match="bad arch_params"):
        arch.build("bn_cnn", 3, 32, 32, layers=9)
    for bad in ("abc", 0, -5, 12.5):
        with pytest.raises(ConfigError, match="work_side must be a whole number"):
            arch.build("bn_cnn", 3, 32, 32, work_side=bad)


def test_standardised_bn_cnn_ignores_lighting_and_keeps_old_layer_names() -> None:
    torch.manual_seed(0)
    model = arch.build("bn_cnn", 2, 48, 48, widths=[8, 16, 32], depth=2, pool="avgmax",
                       standardize=True, tta="dihedral").eval()
    x = torch.rand(4, 3, 48, 48)
    with torch.inference_mode():
        assert torch.allclose(model(x), model(0.5 * x + 0.3), atol=1e-3)  # darker, brighter
    plain = arch.build("bn_cnn", 3, 80, 80, widths=[16, 32, 64, 128], stem_pool=True)
    weights = [k for k in plain.state_dict() if k.endswith(".weight")]  # as bundles stored them
    assert weights == [f"{i}.weight" for i in (0, 1, 4, 5, 8, 9, 12, 13, 19)]


def test_work_side_shrinks_large_inputs_inside_the_model_only() -> None:
    """Serving hands the model full-size images; training hands it images shrunk up front:
    both must give the same answer, and images already small enough are left alone."""
    torch.manual_seed(0)
    model = arch.build("bn_cnn", 3, 96, 64, widths=[8, 16], work_side=48, tta="dihedral").eval()
    full = torch.rand(2, 3, 96, 64)
    shrunk = arch.shrink_inputs(model, full)
    assert shrunk.shape[-2:] == (48, 32)  # the longer side to 48, the aspect kept
    assert torch.allclose(shrunk[:, :, 0, 0], full[:, :, :2, :2].mean((2, 3)), atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(model(full), model(shrunk), atol=1e-5)
    small = torch.rand(2, 3, 40, 40)
    assert torch.equal(arch.shrink_inputs(model, small), small)
    assert torch.equal(arch.shrink_inputs(arch.build("bn_cnn", 3, 96, 64), full), full)
