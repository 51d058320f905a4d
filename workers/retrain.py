"""Retraining with champion/challenger: train, publish, then promote only a better-or-equal model.

The challenger (the new bundle) and the champion (production) are scored by the same code on
the same images: the challenger's own held-out test split. The challenger is promoted only when
its quality gates pass and it is not worse than the champion on both accuracy and macro-F1.
Otherwise it stays registered and the reason is stored beside it (`decisions/<version>.json`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from piston.bundle import Gate, Predictor, gates_passed
from piston.errors import StaleProduction
from piston.names import NOTHING
from piston.registry import Registry
from piston.scoring import Decision, score_blobs
from piston.settings import Settings
from training.config import load_config
from training.dataset import load_dataset
from training.evaluate import classification_metrics
from training.pipeline import GateBar, train_bundle
from training.train import Epoch

log = logging.getLogger(__name__)


def gate_bar(settings: Settings, min_accuracy: float | None) -> GateBar:
    """The settings' quality bar; a request may raise the accuracy bar, never lower it."""
    return GateBar(max(settings.gate_min_accuracy, min_accuracy or 0.0),
                   settings.gate_min_class_f1, settings.gate_min_class_recall)


class Scores(BaseModel):
    """One model on the challenger's held-out test images."""

    version: str | None = None
    accuracy: float
    macro_f1: float | None  # None when the two models' classes differ
    images: int


class Comparison(BaseModel):
    challenger: Scores
    champion: Scores | None = None  # None: nothing was in production


class RetrainDecision(BaseModel):
    """Why a retrained bundle was (or was not) promoted: `decisions/<version>.json`."""

    version: str
    champion: str | None
    promoted: bool
    reason: str
    job_id: str
    comparison: Comparison


@dataclass(frozen=True)
class RetrainRequest:
    dataset: str
    overrides: dict[str, Any]
    promote_if_better: bool
    job_id: str
    recipe: str | None = None


def retrain(
    request: RetrainRequest,
    registry: Registry,
    bar: GateBar,
    runs_dir: Path,
    max_pixels: int,
    s3_endpoint_url: str | None,
    on_progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Train on `request.dataset`, publish the bundle, compare it with production, decide."""
    config = load_config(request.recipe, None, request.overrides)
    on_progress({"stage": "training", "epoch": 0, "epochs": config.epochs})

    def on_epoch(e: Epoch) -> None:
        on_progress({"stage": "training", "epoch": e.epoch, "epochs": config.epochs,
                     "train_loss": round(e.train_loss, 4),
                     "train_accuracy": round(e.train_accuracy, 4),
                     "val_loss": round(e.val_loss, 4), "val_accuracy": round(e.val_accuracy, 4)})

    outcome = train_bundle(request.dataset, config, registry, bar, runs_dir, max_pixels,
                           s3_endpoint_url=s3_endpoint_url, on_epoch=on_epoch)
    challenger = outcome.version
    on_progress({"stage": "comparing", "epoch": config.epochs, "epochs": config.epochs,
                 "version": challenger})
    champion = registry.current()
    test_keys = registry.split(challenger)["test"]
    scored = compare(request.dataset, test_keys, registry, challenger, champion, max_pixels,
                     s3_endpoint_url)
    promoted, reason = decide(challenger, champion, registry.meta(challenger).gates, scored,
                              request.promote_if_better)
    if promoted:
        try:  # compared with `champion`: only promoted over it, never over a newer move
            registry.promote(challenger, reason=f"retrain job {request.job_id}: {reason}",
                             by="worker", expected=champion or NOTHING)
        except StaleProduction as err:
            promoted, reason = False, f"{reason}, but production moved meanwhile: {err}"
    decision = RetrainDecision(version=challenger, champion=champion, promoted=promoted,
                               reason=reason, job_id=request.job_id, comparison=scored)
    registry.record_decision(challenger, decision.model_dump(mode="json"))
    log.info("retrain %s: %s", challenger, reason)
    result = outcome.to_json()
    result.update(decision.model_dump(mode="json"), production=registry.current())
    return result


def compare(dataset: str, keys: list[str], registry: Registry, challenger: str,
            champion: str | None, max_pixels: int,
            s3_endpoint_url: str | None) -> Comparison:
    """Accuracy and macro-F1 of each model on the same test images, scored the same way."""
    data = load_dataset(dataset, None, s3_endpoint_url)
    truth = {s.key: s.label for s in data.samples}
    contents = {k: data.storage.read(k) for k in keys if k in truth}

    def score(version: str) -> Scores:
        predictor = Predictor.load(registry.fetch(version))
        return _score(predictor, contents, truth, max_pixels).model_copy(
            update={"version": version})

    return Comparison(challenger=score(challenger),
                      champion=score(champion) if champion is not None else None)


def _score(predictor: Predictor, contents: dict[str, bytes], truth: dict[str, str],
           max_pixels: int) -> Scores:
    classes = predictor.meta.classes
    outcomes = score_blobs(predictor, list(contents.values()), max_pixels)
    scored = [(truth[k], o.label) for k, o in zip(contents, outcomes, strict=True)
              if isinstance(o, Decision)]
    if not scored:
        return Scores(accuracy=0.0, macro_f1=0.0, images=0)
    if all(t in classes for t, _ in scored):
        metrics = classification_metrics(
            np.array([classes.index(t) for t, _ in scored]),
            np.array([classes.index(p) for _, p in scored]), classes)
        return Scores(accuracy=metrics.accuracy, macro_f1=metrics.macro_f1,
                      images=len(scored))
    accuracy = float(np.mean([t == p for t, p in scored]))
    return Scores(accuracy=accuracy, macro_f1=None, images=len(scored))


def decide(challenger: str, champion: str | None, gates: list[Gate],
           scored: Comparison, promote_if_better: bool) -> tuple[bool, str]:
    """(promote?, why) for the challenger."""
    if not gates_passed(gates):
        failed = ", ".join(f"{g.name} {g.value:.3f} (bar {g.threshold})"
                           for g in gates if not g.passed)
        return False, f"failed its quality gates: {failed or 'no gates were measured'}"
    new, old = scored.challenger, scored.champion
    if champion is not None and old is not None:
        pairs = (("accuracy", new.accuracy, old.accuracy), ("macro_f1", new.macro_f1, old.macro_f1))
        worse = [f"{name} {n:.3f} < {o:.3f}" for name, n, o in pairs
                 if n is not None and o is not None and n < o]
        if worse:
            return False, (f"worse than production {champion} on the same"
                           f" {new.images} test images: {', '.join(worse)}")
    versus = (f"accuracy {new.accuracy:.3f} vs production {old.accuracy:.3f}"
              if champion and old else f"accuracy {new.accuracy:.3f}, nothing in production")
    if not promote_if_better:
        return False, f"gates passed and not worse ({versus}); not asked to promote"
    return True, f"gates passed and not worse ({versus})"
