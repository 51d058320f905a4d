"""The training loop, split the way torchvision's references split it: `train_one_epoch`,
`evaluate`, a convergence tracker, and `fit` that strings them together.

`fit` runs cosine learning-rate cycles of `epochs` epochs. After each cycle it asks whether
training has converged (training accuracy and validation loss both stopped improving); if not,
and the budget allows, it runs another cycle at half the learning rate. A cycle that did not
help is undone: the weights of the best cycle end are kept.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from piston import arch
from piston.imaging import Contract
from training.augment import BatchAugment, build_augment
from training.config import TrainConfig

log = logging.getLogger(__name__)
MIN_GAIN = 0.005  # training accuracy a cycle must add to count as progress
MIN_LOSS_DROP = 0.02  # share of validation loss a cycle must remove to count as progress
SATURATED = 0.99  # training accuracy at which there is nothing left to fit


@dataclass
class Epoch:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    cycle: int = 1


@dataclass
class FitResult:
    module: nn.Module
    history: list[Epoch] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    stopped: str = ""  # why training ended: converged, budget, cycles (all it may run)
    loop: Loop | None = None  # to go on training (more cycles)


def contract_of(config: TrainConfig) -> Contract:
    if config.input_size is None:
        raise ValueError("the input size is resolved from the data before training")
    height, width = config.input_size
    return Contract(height, width, config.mean, config.std)


def to_inputs(images: np.ndarray | torch.Tensor, contract: Contract) -> torch.Tensor:
    """uint8 NCHW -> the normalised float tensor the model takes (same maths as serving)."""
    return _normalise(torch.as_tensor(images).float(), contract)


def _normalise(pixels: torch.Tensor, contract: Contract) -> torch.Tensor:
    """float NCHW on the 0..255 scale -> model inputs."""
    mean = torch.tensor(contract.mean).view(1, 3, 1, 1) * 255.0
    scale = 1.0 / (255.0 * torch.tensor(contract.std).view(1, 3, 1, 1))
    return (pixels - mean) * scale


@dataclass
class Batches:
    """Training data held once as raw pixels (for augmentation) and once normalised."""

    raw: torch.Tensor
    plain: torch.Tensor
    labels: torch.Tensor
    contract: Contract
    augment: BatchAugment | None

    def inputs(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment is None:
            return self.plain[index]
        return _normalise(self.augment(self.raw[index], generator), self.contract)


@dataclass
class Step:
    """What one optimisation step needs."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    average: AveragedModel | None = None  # an exponential moving average of the weights

    @property
    def kept(self) -> nn.Module:
        """The weights that are scored and kept: the average where there is one."""
        return self.module if self.average is None else cast(nn.Module, self.average.module)


def train_one_epoch(
    step: Step, data: Batches, batch_size: int, generator: torch.Generator
) -> tuple[float, float]:
    """One pass over the training data; loss and accuracy accumulate as tensors (no syncs)."""
    step.module.train()
    order = torch.randperm(len(data.labels), generator=generator)
    total_loss, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for batch in order.split(batch_size):
        if len(batch) < 2 < len(order):
            continue  # a lone last image: batch norm cannot train on one
        targets = data.labels[batch]
        step.optimizer.zero_grad(set_to_none=True)
        logits = step.module(data.inputs(batch, generator))
        loss = step.loss_fn(logits, targets)
        loss.backward()
        step.optimizer.step()
        step.schedule.step()
        if step.average is not None:
            step.average.update_parameters(step.module)
        with torch.no_grad():
            total_loss += loss.detach() * len(batch)
            correct += (logits.argmax(1) == targets).sum()
        seen += len(batch)
    seen = max(seen, 1)
    return float(total_loss) / seen, int(correct) / seen


def evaluate(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, batch: int
) -> tuple[float, float]:
    """Loss and accuracy on held-out data, after every epoch: without test-time averaging,
    which would cost up to 8 forward passes per image for a figure that only steers training
    (the final scores, `predict_proba`, average as serving does)."""
    if len(y) == 0:
        return float("nan"), float("nan")
    module.eval()
    module = module.net if isinstance(module, arch.FlipAverage) else module
    with torch.inference_mode():
        logits = torch.cat([module(part) for part in x.split(batch)])
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


class Convergence:
    """Decides, at each cycle end, whether another cycle is worth running."""

    def __init__(self) -> None:
        self.best: Epoch | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def improved(self, end: Epoch) -> bool:
        best = self.best
        if best is None:
            return True
        loss_drop = (best.val_loss - end.val_loss) / max(best.val_loss, 1e-6)
        return (end.train_accuracy - best.train_accuracy > MIN_GAIN
                or (math.isfinite(loss_drop) and loss_drop > MIN_LOSS_DROP))

    def cycle_end(self, end: Epoch, module: nn.Module) -> bool:
        """Record a cycle's end (undone later if it did not help); True when another cycle
        may still help: training accuracy has not saturated and this cycle made progress."""
        if not self.improved(end):
            return False
        self.best = end
        self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return end.train_accuracy < SATURATED


class Cycle:
    """The learning-rate shape of one cycle, over a horizon that shrinks when time runs short."""

    def __init__(self, shape: str, steps: int) -> None:
        self.shape, self.start, self.steps, self.scale = shape, 0, max(1, steps), 1.0

    def restart(self, at: int, steps: int, scale: float) -> None:
        self.start, self.steps, self.scale = at, max(1, steps), scale

    def factor(self, step: int) -> float:
        progress = min(1.0, (step - self.start) / self.steps)
        if self.shape == "cosine":
            return self.scale * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.shape == "onecycle":  # 30% warm-up, then cosine down
            if progress < 0.3:
                return self.scale * (0.04 + 0.96 * progress / 0.3)
            return self.scale * 0.5 * (1.0 + math.cos(math.pi * (progress - 0.3) / 0.7))
        return self.scale


@dataclass
class Budget:
    """A wall-clock deadline: how many more epochs of the last measured length fit."""

    deadline: float | None

    def epochs_left(self, epoch_seconds: float) -> int:
        if self.deadline is None:
            return 1 << 30
        return int((self.deadline - time.monotonic()) // max(epoch_seconds, 1e-3))


UNCAPPED = 1 << 10  # cycles: with a granted budget, time and convergence end training


def cycle_cap(config: TrainConfig) -> int:
    """How many cycles training may run: the recipe's, or no cap when a budget was granted."""
    return UNCAPPED if config.spend_budget and config.budget_s else config.max_cycles


def build_module(config: TrainConfig, num_classes: int) -> nn.Module:
    contract = contract_of(config)
    module = arch.build(config.arch, num_classes, contract.height, contract.width,
                        **config.arch_params)
    if config.pretrained:
        loaded = arch.load_torchvision_weights(module, config.arch, config.pretrained)
        log.info("loaded %d %s tensors through torchvision", loaded, config.pretrained)
    if config.pretrained_weights:
        loaded = arch.load_pretrained(module, config.pretrained_weights)
        log.info("loaded %d pretrained tensors from %s", loaded, config.pretrained_weights)
    return module


def fit(
    config: TrainConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    on_epoch: Callable[[Epoch], None] | None = None,
    deadline: float | None = None,
    max_cycles: int | None = None,
    min_cycle: float = 0.0,
) -> FitResult:
    """Train a fresh model of `config.arch` in cycles until it converges or time runs out.

    `deadline` (time.monotonic()) bounds the wall clock; `config.budget_s` sets one too.
    `max_cycles` stops earlier than the config's (the result's `loop` can go on later);
    with `min_cycle` (a share, 0..1) it gives up (stopped = "too_slow") when less than that
    share of the first cycle would fit; otherwise a cycle is shortened to what fits.
    """
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if deadline is None and config.budget_s:
        deadline = time.monotonic() + config.budget_s
    module = build_module(config, num_classes)
    contract = contract_of(config)
    steps_per_epoch = max(1, -(-len(train_labels) // config.batch_size))
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch))  # tiny sets: more
    cycle = Cycle(config.lr_schedule, steps_per_epoch * epochs)
    optimizer = _optimizer(config, module)
    loss_fn = nn.CrossEntropyLoss(
        weight=_class_weights(train_labels, num_classes) if config.class_weighting else None,
        label_smoothing=config.label_smoothing,
    )
    step = Step(module, optimizer,
                torch.optim.lr_scheduler.LambdaLR(optimizer, cycle.factor), loss_fn,
                _moving_average(module, config.ema_decay))
    raw = arch.shrink_inputs(module, torch.as_tensor(train_images).float())
    data = Batches(raw, _normalise(raw, contract), torch.as_tensor(train_labels), contract,
                   build_augment(config.augment))
    val = (arch.shrink_inputs(module, to_inputs(val_images, contract)), torch.as_tensor(val_labels))
    loop = Loop(config, step, data, val, cycle, Budget(deadline), generator, on_epoch,
                steps_per_epoch, epochs, min_cycle=min_cycle)
    result = loop.run(cycle_cap(config) if max_cycles is None else max_cycles)
    result.loop = loop
    return result


@dataclass
class Loop:
    """Cycles of epochs, with the convergence and budget checks between them. It can be
    resumed (`more`): the search screens candidates for one cycle, then goes on with the best."""

    config: TrainConfig
    step: Step
    data: Batches
    val: tuple[torch.Tensor, torch.Tensor]
    cycle: Cycle
    budget: Budget
    generator: torch.Generator
    on_epoch: Callable[[Epoch], None] | None
    steps_per_epoch: int
    epochs: int  # per cycle
    result: FitResult = field(init=False)
    convergence: Convergence = field(init=False)
    cycles: int = 0
    converged: bool = False
    min_cycle: float = 0.0  # give up after one epoch when less of a cycle than this would fit

    def __post_init__(self) -> None:
        self.result = FitResult(self.step.module)
        self.convergence = Convergence()

    def run(self, max_cycles: int) -> FitResult:
        """Run cycles until converged, out of budget, or `max_cycles` cycles in all."""
        began = time.perf_counter()
        while self.cycles < max_cycles and not self.converged:
            self.cycles += 1
            self.cycle.restart(len(self.result.history) * self.steps_per_epoch,
                               self.steps_per_epoch * self.epochs,
                               0.5 ** (self.cycles - 1))
            end, why = self.one_cycle(self.cycles, self.result)
            go_on = end is not None and self.convergence.cycle_end(end, self.step.kept)
            self.converged = not go_on
            self.result.stopped = why or ("converged" if self.converged else "cycles")
            if why:
                break
        best = self.convergence.best
        if self.convergence.best_state is not None and best is not None:
            self.step.module.load_state_dict(self.convergence.best_state)
            if self.step.average is not None:  # a later cycle goes on from the kept weights
                self.step.kept.load_state_dict(self.convergence.best_state)
        self.result.best_epoch = best.epoch if best else len(self.result.history)
        self.result.seconds += time.perf_counter() - began
        self.step.module.eval()
        return self.result

    def more(self, max_cycles: int, deadline: float | None) -> FitResult:
        """Go on from the last cycle's end (the best weights are loaded already)."""
        self.budget = Budget(deadline)
        return self.run(max_cycles)

    def one_cycle(self, number: int, result: FitResult) -> tuple[Epoch | None, str]:
        """Run one cycle; (its last epoch, why it ended early or '')."""
        config, epochs, last = self.config, self.epochs, None
        for index in range(1, self.epochs + 1):
            began = time.perf_counter()
            loss, accuracy = train_one_epoch(self.step, self.data, config.batch_size,
                                             self.generator)
            val_loss, val_acc = evaluate(self.step.kept, *self.val, self.step.loss_fn,
                                         config.batch_size * 8)
            last = Epoch(len(result.history) + 1, loss, accuracy, val_loss, val_acc, number)
            result.history.append(last)
            if self.on_epoch:
                self.on_epoch(last)
            fits = self.budget.epochs_left(time.perf_counter() - began)
            if index == 1 and fits < epochs - 1:  # shrink the cycle to what the budget holds
                if fits + 1 < self.min_cycle * epochs:
                    return last, "too_slow"
                epochs = max(1, fits + 1)
                self.cycle.steps = self.steps_per_epoch * epochs
            if index >= epochs or fits <= 0:
                return last, "" if fits > 0 else "budget"
        return last, ""


def _moving_average(module: nn.Module, decay: float | None) -> AveragedModel | None:
    """Weights averaged over the last ~1/(1-decay) steps, batch-norm statistics included: the
    average lands in a wider minimum than the last step's weights (Polyak averaging)."""
    if decay is None:
        return None
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _optimizer(config: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW, fused (one kernel over all parameters: ~5x faster steps on CPU)."""
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        return kind(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a build or dtype without the fused kernel
        return kind(params, lr=config.lr, weight_decay=config.weight_decay)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return torch.as_tensor(weights)


def predict_logits(
    module: nn.Module, images: np.ndarray, contract: Contract, batch: int = 256
) -> np.ndarray:
    """Logits (averaged over the model's test-time views, as served) for uint8 NCHW images."""
    module.eval()
    x = to_inputs(images, contract)
    with torch.inference_mode():
        if len(x) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat([module(p) for p in x.split(batch)]).numpy()


def predict_proba(
    module: nn.Module, images: np.ndarray, contract: Contract, batch: int = 256
) -> np.ndarray:
    """Plain softmax probabilities for uint8 NCHW images (uncalibrated)."""
    logits = predict_logits(module, images, contract, batch)
    return torch.softmax(torch.from_numpy(logits), 1).numpy() if len(logits) else logits
