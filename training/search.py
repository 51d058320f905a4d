"""`auto`: compare candidate recipes on grouped validation data within a time budget.

Candidates run cheapest first, each for one learning-rate cycle on the training split, and are
scored on the validation split (never the test split). The first is the baseline and may use
the whole budget; the others run only when at least half a cycle fits in their fair share of
what is left (the cycle is then shortened to fit).
The best by validation macro-F1, then accuracy, then loss, goes on with more cycles until it
converges or the budget ends, and is kept (it is not trained again from scratch). Once a
candidate is perfect on validation, costlier ones cannot beat it and are skipped. Seeded, so
repeatable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from piston import arch
from piston.errors import ConfigError
from training.config import TrainConfig, load_config
from training.decode import DecodedSet
from training.evaluate import classification_metrics
from training.train import Epoch, FitResult, contract_of, cycle_cap, fit, predict_proba

log = logging.getLogger(__name__)
MIN_CYCLE = 0.5  # a candidate whose share of the budget holds less of its first cycle is skipped
MIN_MAP = 2  # px: a network whose last stage would see less is too deep for the images


class SearchRow(BaseModel):
    """One candidate's line in the search table (`train --json` "search", the report)."""

    candidate: str
    arch: str
    parameters: int
    input_size: list[int]
    augment: dict[str, Any]
    val_accuracy: float
    val_macro_f1: float
    val_loss: float
    epochs: int
    seconds: float
    stopped: str
    chosen: bool
    note: str


@dataclass
class Candidate:
    """One candidate's figures on validation data, and why it was or was not chosen."""

    name: str
    config: TrainConfig
    fitted: FitResult | None = None
    val_accuracy: float = float("nan")
    val_macro_f1: float = float("nan")
    val_loss: float = float("nan")
    parameters: int = 0
    note: str = ""
    twin: bool = False  # the winner's own recipe from another seed (`second_network`)

    def key(self) -> tuple[float, float, float]:
        return (round(self.val_macro_f1, 4), round(self.val_accuracy, 4), -self.val_loss)

    def row(self, chosen: bool) -> SearchRow:
        f = self.fitted
        return SearchRow(
            candidate=self.name, arch=self.config.arch, parameters=self.parameters,
            input_size=list(self.config.input_size or ()),
            augment=self.config.augment.model_dump(exclude_defaults=True),
            val_accuracy=self.val_accuracy, val_macro_f1=self.val_macro_f1,
            val_loss=self.val_loss, epochs=len(f.history) if f else 0,
            seconds=round(f.seconds, 2) if f else 0.0,
            stopped=f.stopped if f else "", chosen=chosen, note=self.note)


def candidate_configs(config: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """Each candidate recipe with the user's settings and the resolved input size on top; the
    pretrained ones last, and only where their weights are at hand (`pretrained_source`)."""
    shared = {**config.overrides, "input_size": config.input_size, "seed": config.seed,
              "threads": config.threads}
    out = [(name, load_config(name, overrides=shared)) for name in config.search]
    for name in config.search_pretrained:
        cand = load_config(name, overrides=shared)
        if _weights_at_hand(cand, config.pretrained_source):
            out.append((name, cand))
        else:
            log.info("candidate %s left out: no %s weights for %s in the torch cache"
                     " (--pretrained download fetches them)", name, cand.pretrained, cand.arch)
    return out


def _weights_at_hand(cand: TrainConfig, source: str) -> bool:
    if source == "never":
        return False
    if cand.pretrained_weights or not cand.pretrained or source == "download":
        return True
    return arch.torchvision_weights_cached(cand.arch)


def run_search(
    config: TrainConfig,
    train: DecodedSet,
    val: DecodedSet,
    classes: list[str],
    on_epoch: Callable[[Epoch], None] | None = None,
) -> tuple[Candidate, list[SearchRow]]:
    """Train and score every candidate; (the winner, the table of all of them)."""
    deadline = time.monotonic() + (config.budget_s or 600.0)
    candidates = [Candidate(name, c) for name, c in candidate_configs(config)]
    best: Candidate | None = None
    for left, cand in zip(range(len(candidates), 0, -1), candidates, strict=True):
        cand.note = _skip_reason(cand, best, deadline)
        if cand.note:
            continue
        # the first candidate is the baseline: it may use the whole budget; the others run only
        # when at least half their first cycle fits in their fair share of what is left (the
        # cycle is shortened to fit; a network trained for a few steps says nothing)
        share = (deadline - time.monotonic()) / (1 if best is None else left)
        _train_and_score(cand, train, val, classes, time.monotonic() + share, on_epoch,
                         min_cycle=0.0 if best is None else MIN_CYCLE)
        if cand.fitted is not None and cand.fitted.stopped == "too_slow":
            cand.note = "skipped: half a cycle would not fit in its share of the budget"
            cand.val_accuracy = cand.val_macro_f1 = cand.val_loss = float("nan")  # one epoch
            continue
        if best is None or cand.key() > best.key():
            best = cand
    if best is None or best.fitted is None or best.fitted.loop is None:
        raise RuntimeError("no candidate could be trained")  # the first one always runs
    # go on until it converges; with a granted budget, while cycles help and time is left
    cap = cycle_cap(config) if config.spend_budget else best.config.max_cycles
    best.fitted.loop.more(cap, deadline)
    _score(best, val, classes)
    best.note = _why(best, candidates)
    if config.ensemble > 1:
        again = second_network(best, train, val, classes, deadline, on_epoch)
        candidates += [again] if again is not None else []
    chosen = averaged(best, candidates, val, classes, config.ensemble)
    rows = [c.row(c is chosen) for c in candidates]
    return chosen, rows + ([chosen.row(True)] if chosen is not best else [])


def second_network(
    best: Candidate, train: DecodedSet, val: DecodedSet, classes: list[str], deadline: float,
    on_epoch: Callable[[Epoch], None] | None,
) -> Candidate | None:
    """The winner's recipe trained again from another seed, for as many cycles as the winner
    ran, when what is left of the budget holds the winner's whole training time: two networks
    of one recipe err on different images (fabric: docs/evaluation.md). None when it would not
    fit, so a budget that was enough for one network is never overrun."""
    assert best.fitted is not None and best.fitted.loop is not None
    if best.val_macro_f1 >= 1.0 and best.val_accuracy >= 1.0:
        return None  # nothing on validation to improve: the cost would buy nothing seen
    left = deadline - time.monotonic()
    if left < best.fitted.seconds:
        log.info("no second %s: %.0f s of the budget left, it took %.0f s", best.name, left,
                 best.fitted.seconds)
        return None
    config = best.config.model_copy(update={"seed": best.config.seed + 1})
    again = Candidate(f"{best.name}#2", config, twin=True)
    again.fitted = fit(config, train.images, train.labels, val.images, val.labels, len(classes),
                       on_epoch, deadline, max_cycles=best.fitted.loop.cycles,
                       min_cycle=MIN_CYCLE)
    if again.fitted.stopped == "too_slow":
        log.info("no second %s: half its first cycle would not fit in the %.0f s left",
                 best.name, deadline - time.monotonic())
        return None
    _score(again, val, classes)
    log.info("second %s: val macro-F1 %.3f, accuracy %.3f, loss %.3f", best.name,
             again.val_macro_f1, again.val_accuracy, again.val_loss)
    return again


def averaged(best: Candidate, candidates: list[Candidate], val: DecodedSet, classes: list[str],
             most: int) -> Candidate:
    """The winner averaged with the next best candidates, up to `most` networks in all, each
    joining only where the average beats what it had without it on validation (`_helps`); the
    winner alone when none does. Averaging networks trained anyway
    costs no training time, and their disagreements are exactly the images a single network
    is confidently wrong on: the review band narrows (docs/evaluation.md)."""
    joinable = sorted((c for c in candidates if c is not best and _joinable(best, c)),
                      key=lambda c: (c.twin, c.key()), reverse=True)  # a twin first
    members, current = [best], best
    for cand in joinable:
        if len(members) >= most:
            break
        trial = _average([*members, cand])
        _score(trial, val, classes)
        if _helps(trial, current, cand.twin):
            members, current = [*members, cand], trial
    if current is best:
        return best
    current.note = (f"the mean of {', '.join(m.name for m in members)}: validation macro-F1"
                    f" {current.val_macro_f1:.3f}, loss {current.val_loss:.3f} (alone"
                    f" {best.val_macro_f1:.3f}, {best.val_loss:.3f})")
    return current


def _helps(trial: Candidate, current: Candidate, twin: bool) -> bool:
    """Whether validation prefers the average `trial` to `current`. A twin of the winner is
    the winner's equal up to its seed, and the cross-entropy of averaged logits is at most
    the mean of the members' (it is convex), so the average is expected to be better; the
    winner was picked for its validation score, which biases the comparison against it, and
    a hundred validation images rank such networks by noise (fabric's seed 1: the average
    lost on validation loss by 0.0001 and sent 20% of the test split to review against 27%).
    So a twin joins unless the average is worse on both macro-F1 and loss; a candidate that
    lost the search must beat the average without it (macro-F1, then accuracy, then loss)."""
    if twin:
        return (round(trial.val_macro_f1, 4) >= round(current.val_macro_f1, 4)
                or trial.val_loss < current.val_loss)
    return trial.key() > current.key()


def _joinable(best: Candidate, cand: Candidate) -> bool:
    if cand.fitted is None or not np.isfinite(cand.val_macro_f1):
        return False
    same_views = cand.config.arch_params.get("tta") == best.config.arch_params.get("tta")
    if not same_views or contract_of(cand.config) != contract_of(best.config):
        return False
    try:
        for c in (best, cand):
            assert c.fitted is not None
            arch.split_head(c.fitted.module, c.config.arch)
    except ConfigError:
        return False
    return True


def _average(members: list[Candidate]) -> Candidate:
    """One candidate whose network is the mean of the members' (their weights as trained)."""
    nets = [m.fitted.module for m in members if m.fitted is not None]
    tta = members[0].config.arch_params.get("tta")
    module = arch.with_views(arch.average_of(nets, [m.config.arch for m in members]), tta)
    module.eval()
    params = {"members": [{"arch": m.config.arch, "arch_params": {
        k: v for k, v in m.config.arch_params.items() if k != "tta"}} for m in members]}
    if tta:
        params["tta"] = tta
    first = members[0]
    assert first.fitted is not None
    config = first.config.model_copy(update={"arch": "ensemble", "arch_params": params})
    # no training of its own: the members' seconds are on their rows
    fitted = dataclasses.replace(first.fitted, module=module, loop=None, seconds=0.0)
    return Candidate("+".join(m.name for m in members), config, fitted)


def _skip_reason(cand: Candidate, best: Candidate | None, deadline: float) -> str:
    if best is not None and best.val_macro_f1 >= 1.0 and best.val_accuracy >= 1.0:
        return f"skipped: {best.name} is already perfect on validation"
    if time.monotonic() >= deadline:
        return "skipped: the budget is spent"
    side = min(cand.config.input_size or (0, 0))
    side = min(side, cand.config.arch_params.get("work_side") or side)
    stages = len(cand.config.arch_params.get("widths") or ())
    deep = stages > 0 and side / 4 / 2 ** (stages - 1) < MIN_MAP
    if best is not None and cand.config.arch == "bn_cnn" and deep:  # the first always runs
        return f"skipped: {stages} stages are too deep for {side} px images"
    return ""


def _train_and_score(
    cand: Candidate, train: DecodedSet, val: DecodedSet, classes: list[str], deadline: float,
    on_epoch: Callable[[Epoch], None] | None, min_cycle: float,
) -> None:
    cand.fitted = fit(cand.config, train.images, train.labels, val.images, val.labels,
                      len(classes), on_epoch, deadline, max_cycles=1, min_cycle=min_cycle)
    _score(cand, val, classes)
    log.info("candidate %s: val macro-F1 %.3f, accuracy %.3f, loss %.3f",
             cand.name, cand.val_macro_f1, cand.val_accuracy, cand.val_loss)


def _score(cand: Candidate, val: DecodedSet, classes: list[str]) -> None:
    assert cand.fitted is not None
    probs = predict_proba(cand.fitted.module, val.images, contract_of(cand.config))
    figures = classification_metrics(val.labels, probs.argmax(1), classes)
    cand.val_accuracy, cand.val_macro_f1 = figures.accuracy, figures.macro_f1
    cand.val_loss = float(nn.functional.nll_loss(
        torch.log(torch.as_tensor(probs).clamp_min(1e-7)), torch.as_tensor(val.labels)))
    cand.parameters = sum(p.numel() for p in cand.fitted.module.parameters())


def _why(best: Candidate, candidates: list[Candidate]) -> str:
    scored = [c for c in candidates if np.isfinite(c.val_macro_f1) and c is not best]
    if not scored:
        return "the only candidate trained"
    runner = max(scored, key=Candidate.key)
    if round(best.val_macro_f1, 4) > round(runner.val_macro_f1, 4):
        return (f"highest validation macro-F1 ({best.val_macro_f1:.3f} vs {runner.name}"
                f" {runner.val_macro_f1:.3f})")
    if round(best.val_accuracy, 4) > round(runner.val_accuracy, 4):
        return f"same macro-F1, higher validation accuracy than {runner.name}"
    return f"same macro-F1 and accuracy as {runner.name}, lower validation loss" + (
        f" ({best.val_loss:.3f} vs {runner.val_loss:.3f})" if np.isfinite(runner.val_loss) else "")
