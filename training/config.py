"""Training configuration: a named recipe (YAML shipped in `training/recipes/`) plus overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from piston.errors import ConfigError

DEFAULT_RECIPE = "seed"


class Augment(BaseModel):
    """Optional augmentations (torchvision transforms v2); 0 / False switches one off."""

    model_config = ConfigDict(extra="forbid")

    hflip: float = 0.0
    vflip: float = 0.0
    rotate_degrees: float = 0.0
    crop_scale: float = 1.0  # random resized crop keeping at least this share of the area
    color_jitter: float = 0.0
    blur_sigma: float = 0.0
    sharpen: float = 0.0
    noise_std: float = 0.0

    @property
    def enabled(self) -> bool:
        return self != Augment()


class TrainConfig(BaseModel):
    """Every knob of a training run; stored in the bundle so a run can be repeated."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = DEFAULT_RECIPE
    arch: str = "seed_cnn"
    arch_params: dict[str, Any] = Field(default_factory=dict)
    input_size: tuple[int, int] = (80, 80)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weighting: bool = False
    early_stopping_patience: int | None = Field(None, ge=1)
    seed: int = 0
    split: Literal["grouped", "random"] = "grouped"
    near_duplicate_similarity: float = Field(0.99, gt=0, le=1)
    decision_threshold: float = Field(0.5, ge=0, le=1)
    augment: Augment = Field(default_factory=Augment)


def recipe_names() -> list[str]:
    folder = resources.files("training") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(
    recipe: str | None = None, file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Recipe defaults, then a config file, then explicit overrides (later wins)."""
    raw: dict[str, Any] = {}
    if file is not None:
        raw = _read_yaml(Path(file))
        recipe = recipe or raw.get("recipe")
    name = recipe or DEFAULT_RECIPE
    if name not in recipe_names():
        raise ConfigError(f"unknown recipe {name!r} (known: {', '.join(recipe_names())})")
    base = yaml.safe_load((resources.files("training") / "recipes" / f"{name}.yaml").read_text())
    merged = _merge(_merge(base or {}, raw), overrides or {})
    merged["recipe"] = name
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"bad training config: {where}: {first['msg']}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of settings")
    return raw


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
