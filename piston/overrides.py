"""The training settings a retrain request may override, each with its bounds.

A retrain runs on a shared worker with files it can read, so a request is an allow-list,
not a `TrainConfig`: every key must be listed here and within its bounds (the settings'
`retrain_max_*`), and `pretrained_weights` must lie under the retrain roots. Refusals are
one line and never echo more than a short slice of the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from piston.errors import InputError
from piston.roots import under_roots
from piston.settings import Settings

Rule = Callable[[str, Any, Settings], None]
ARCH_MAX_WIDTHS = 8  # stages of a CNN
MAX_SIDE = 1024  # pixels: the training config's own cap on an input side


def _refuse(name: str, value: Any, what: str) -> InputError:
    text = str(value)
    shown = text if len(text) <= 40 else text[:40] + "..."
    return InputError("invalid", f"override {name}={shown}: {what}")


def _number(name: str, value: Any, lo: float, hi: float, whole: bool = False) -> None:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        kind = "a whole number" if whole else "a number"
        raise _refuse(name, value, f"must be {kind} from {lo:g} to {hi:g}")


def _whole(lo: float, hi: Callable[[Settings], float]) -> Rule:
    return lambda name, value, s: _number(name, value, lo, hi(s), whole=True)


def _real(lo: float, hi: float) -> Rule:
    return lambda name, value, s: _number(name, value, lo, hi)


def _choice(*allowed: Any) -> Rule:
    def rule(name: str, value: Any, s: Settings) -> None:
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise _refuse(name, value, f"must be one of {', '.join(map(str, allowed))}")
    return rule


def _flag(name: str, value: Any, s: Settings) -> None:
    if not isinstance(value, bool):
        raise _refuse(name, value, "must be true or false")


def _name(name: str, value: Any, s: Settings) -> None:
    if not isinstance(value, str) or not value.replace("_", "").isalnum() or len(value) > 40:
        raise _refuse(name, value, "must be a name (letters, digits, '_')")


def _input_size(name: str, value: Any, s: Settings) -> None:
    if value is None:
        return
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _refuse(name, value, "must be [height, width]")
    for side in value:
        _number(name, side, 16, MAX_SIDE, whole=True)
    if value[0] * value[1] > s.retrain_max_input_pixels:
        raise _refuse(name, value, f"{value[0]}x{value[1]} is over the limit of"
                      f" {s.retrain_max_input_pixels} pixels")


def _side(name: str, value: Any, s: Settings) -> None:
    _number(name, value, 16, MAX_SIDE, whole=True)
    if value * value > s.retrain_max_input_pixels:
        raise _refuse(name, value, f"{value}x{value} is over the limit of"
                      f" {s.retrain_max_input_pixels} pixels")


def _triple(name: str, value: Any, s: Settings) -> None:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise _refuse(name, value, "must be three numbers")
    for part in value:
        _number(name, part, -10, 10)


def _widths(name: str, value: Any, s: Settings) -> None:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= ARCH_MAX_WIDTHS:
        raise _refuse(name, value, f"must be 1 to {ARCH_MAX_WIDTHS} channel counts")
    for width in value:
        _number(name, width, 1, 512, whole=True)


def _weights(name: str, value: Any, s: Settings) -> None:
    if not isinstance(value, str) or value.startswith("s3://") \
            or not under_roots(value, s.dataset_roots()):
        raise InputError("forbidden", "override pretrained_weights must name a local file"
                         " under a retrain root (PISTON_RETRAIN_DATASET_ROOTS)")


def _nested(rules: dict[str, Rule]) -> Rule:
    def rule(name: str, value: Any, s: Settings) -> None:
        if not isinstance(value, dict):
            raise _refuse(name, value, "must be a mapping")
        for key, inner in value.items():
            _apply(rules, f"{name}.{key}", key, inner, s)
    return rule


ARCH_PARAMS: dict[str, Rule] = {
    "widths": _widths, "dropout": _real(0, 0.9), "stem_pool": _flag, "pool": _name,
    "depth": _whole(1, lambda s: 4), "standardize": _flag, "work_side": _side, "tta": _name,
    "freeze": _flag, "hidden": _whole(1, lambda s: 1024),
}
AUGMENT: dict[str, Rule] = {
    **{k: _real(0, 1) for k in ("hflip", "vflip", "transpose", "crop_scale", "translate_x",
                                "translate_y", "color_jitter", "noise_std")},
    "rotate_degrees": _real(0, 180), "blur_sigma": _real(0, 10), "sharpen": _real(0, 10),
}
RULES: dict[str, Rule] = {
    "epochs": _whole(1, lambda s: s.retrain_max_epochs),
    "max_cycles": _whole(1, lambda s: s.retrain_max_cycles),
    "min_steps": _whole(0, lambda s: s.retrain_max_steps),
    "batch_size": _whole(1, lambda s: s.retrain_max_batch_size),
    "budget_s": lambda name, value, s: _number(name, value, 1, s.retrain_time_limit_s),
    "threads": _whole(1, lambda s: 64),
    "input_size": _input_size, "max_input_side": _side,
    "arch": _name, "arch_params": _nested(ARCH_PARAMS), "augment": _nested(AUGMENT),
    "lr": _real(1e-7, 1), "weight_decay": _real(0, 1), "label_smoothing": _real(0, 0.5),
    "seed": _whole(0, lambda s: 2**31 - 1), "class_weighting": _flag,
    "optimizer": _name, "lr_schedule": _name, "split": _name,
    "review_target_error": _real(1e-4, 0.5), "decision_threshold": _real(0, 1),
    "mean": _triple, "std": _triple, "pretrained": _choice("imagenet", None),
    "spend_budget": _flag, "pretrained_source": _choice("cached", "never"),  # no downloads
    "ensemble": _whole(1, lambda s: 4),
    "pretrained_weights": _weights,
}


def _apply(rules: dict[str, Rule], where: str, key: Any, value: Any, s: Settings) -> None:
    rule = rules.get(key) if isinstance(key, str) else None
    if rule is None:
        raise InputError("invalid", f"override {str(where)[:60]!r} is not allowed (allowed:"
                         f" {', '.join(sorted(rules))})")
    rule(where, value, s)


def check_overrides(settings: Settings, overrides: dict[str, Any]) -> None:
    """Refuse a key off the allow-list or a value outside its bounds, in one line."""
    if not isinstance(overrides, dict):
        raise InputError("invalid", "overrides must be a mapping of training settings")
    for key, value in overrides.items():
        _apply(RULES, key, key, value, settings)
