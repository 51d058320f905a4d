"""Training configuration: a named recipe (YAML shipped in `training/recipes/`) plus overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from piston.errors import ConfigError

DEFAULT_RECIPE = "auto"  # compares candidate recipes on grouped validation data (docs/training.md)


class Augment(BaseModel):
    """Optional augmentations, applied to whole batches at once; 0 / False switches one off."""

    model_config = ConfigDict(extra="forbid")

    hflip: float = Field(0.0, ge=0, le=1)  # probability
    vflip: float = Field(0.0, ge=0, le=1)  # probability
    transpose: float = Field(0.0, ge=0, le=1)  # probability; with flips, every quarter turn
    rotate_degrees: float = Field(0.0, ge=0, le=180)  # uniform in [-d, d]: a turning part
    crop_scale: float = Field(1.0, gt=0, le=1)  # random zoom keeping this share of the area
    translate_x: float = Field(0.0, ge=0, lt=1)  # random sideways shift, share of the width
    translate_y: float = Field(0.0, ge=0, lt=1)  # random vertical shift, share of the height
    color_jitter: float = Field(0.0, ge=0, lt=1)  # brightness, contrast and saturation strength
    blur_sigma: float = Field(0.0, ge=0)  # Gaussian blur on 30% of the images, sigma up to this
    sharpen: float = Field(0.0, ge=0)  # unsharp mask on 30% of the images, strength up to this
    noise_std: float = Field(0.0, ge=0)  # Gaussian pixel noise, as a share of the 0..255 range

    @property
    def enabled(self) -> bool:
        return self != Augment()


class TrainConfig(BaseModel):
    """Every knob of a training run; stored in the bundle so a run can be repeated."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = DEFAULT_RECIPE
    arch: str = "seed_cnn"
    arch_params: dict[str, Any] = Field(default_factory=dict)
    input_size: tuple[int, int] | None = None  # (height, width); None: the images' own, capped
    max_input_side: int = Field(224, ge=16, le=1024)  # the cap on the longer side
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    epochs: int = Field(25, ge=1)  # per learning-rate cycle
    max_cycles: int = Field(3, ge=1)  # more cycles while training has not converged
    min_steps: int = Field(0, ge=0)  # per cycle: a tiny set gets more epochs, not fewer steps
    budget_s: float | None = Field(None, gt=0)  # wall-clock budget for the fit (or the search)
    # a budget the user granted (`--budget`) is spent: no cap on cycles, training goes on while
    # a cycle still helps and time is left; otherwise the budget is only a ceiling
    spend_budget: bool = False
    search: list[str] = Field(default_factory=list)  # candidate recipes compared on validation
    # candidates that start from ImageNet weights: searched only when `pretrained_source` lets
    # them (cached: the weights already sit in the torch cache; download: fetch them; never)
    search_pretrained: list[str] = Field(default_factory=list)
    pretrained_source: Literal["cached", "download", "never"] = "cached"
    # up to this many networks are averaged: the search's winner, a second network of its
    # recipe (another seed; trained only when the budget left holds the winner's training
    # time) and the next best candidates; validation decides who joins (training/search._helps)
    ensemble: int = Field(1, ge=1, le=4)
    overrides: dict[str, Any] = Field(default_factory=dict)  # the user's, applied to candidates
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.001, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr_schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ema_decay: float | None = Field(None, gt=0, lt=1)  # keep a moving average of the weights
    class_weighting: bool = False
    seed: int = 0
    split: Literal["grouped", "random"] = "grouped"
    # the review threshold: chosen on validation data to keep the error rate among accepted
    # predictions under review_target_error; the fixed decision_threshold when that is null
    review_target_error: float | None = Field(0.02, gt=0, lt=1)
    decision_threshold: float = Field(0.5, ge=0, le=1)
    pretrained: Literal["imagenet"] | None = None  # torchvision's weights API, cached in TORCH_HOME
    pretrained_weights: str | None = None  # a local state_dict file; never downloaded
    threads: int | None = Field(None, ge=1)  # torch threads for training; None: all cores
    augment: Augment = Field(default_factory=Augment)


SEARCH_ONLY = frozenset({"recipe", "search", "search_pretrained", "pretrained_source",
                         "budget_s", "overrides", "ensemble"})


def recipe_names() -> list[str]:
    folder = resources.files("training") / "recipes"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_config(
    recipe: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
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
    own = _merge(raw, overrides or {})
    if "epochs" in own:  # asked for N epochs: exactly N (one cycle, no step floor)
        own.setdefault("min_steps", 0)
        own.setdefault("max_cycles", 1)
    merged = _merge(base or {}, own)
    merged["recipe"] = name
    if merged.get("search"):  # a search recipe hands the user's settings to every candidate
        merged["overrides"] = {k: v for k, v in own.items() if k not in SEARCH_ONLY}
        named = set(merged["search"]) | set(merged.get("search_pretrained") or ())
        unknown = sorted(named - set(recipe_names()))
        if unknown:
            raise ConfigError(f"search names unknown recipe(s) {', '.join(unknown)}")
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
