"""The training loop: `fit(config, train, val)` -> a trained module and its per-epoch history."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from piston import arch
from piston.imaging import Contract
from training.augment import build_augment
from training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Epoch:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float


@dataclass
class FitResult:
    module: nn.Module
    history: list[Epoch] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def contract_of(config: TrainConfig) -> Contract:
    height, width = config.input_size
    return Contract(height, width, config.mean, config.std)


def to_inputs(images: np.ndarray, contract: Contract) -> torch.Tensor:
    """uint8 NCHW -> the normalised float tensor the model takes (same maths as serving)."""
    mean = torch.tensor(contract.mean).view(1, 3, 1, 1) * 255.0
    scale = 1.0 / (255.0 * torch.tensor(contract.std).view(1, 3, 1, 1))
    return (torch.as_tensor(images).float() - mean) * scale


def fit(
    config: TrainConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> FitResult:
    """Train a fresh model of `config.arch`; with early stopping, keep the best val-loss weights."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    contract = contract_of(config)
    module = arch.build(config.arch, num_classes, contract.height, contract.width, **config.arch_params)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(
        weight=_class_weights(train_labels, num_classes) if config.class_weighting else None,
        label_smoothing=config.label_smoothing,
    )
    augment = build_augment(config.augment, contract.height, contract.width)
    x_train_plain = to_inputs(train_images, contract)
    y_train = torch.as_tensor(train_labels)
    x_val, y_val = to_inputs(val_images, contract), torch.as_tensor(val_labels)
    raw_train = torch.as_tensor(train_images)

    result = FitResult(module)
    best_loss, best_state, stale = float("inf"), None, 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        module.train()
        order = torch.randperm(len(y_train), generator=generator)
        total_loss, correct = 0.0, 0
        for batch in order.split(config.batch_size):
            if augment is None:
                inputs = x_train_plain[batch]
            else:
                inputs = to_inputs(torch.stack([augment(raw_train[i]) for i in batch]).numpy(), contract)
            optimizer.zero_grad(set_to_none=True)
            logits = module(inputs)
            loss = loss_fn(logits, y_train[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y_train[batch]).sum())
        val_loss, val_acc = _score(module, x_val, y_val, loss_fn, config.batch_size * 8)
        stats = Epoch(epoch, total_loss / len(y_train), correct / len(y_train), val_loss, val_acc)
        result.history.append(stats)
        if on_epoch:
            on_epoch(stats)
        if val_loss < best_loss:
            best_loss, result.best_epoch, stale = val_loss, epoch, 0
            if config.early_stopping_patience:
                best_state = copy.deepcopy(module.state_dict())
        else:
            stale += 1
            if config.early_stopping_patience and stale >= config.early_stopping_patience:
                log.info("early stop at epoch %d (best %d)", epoch, result.best_epoch)
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    result.best_epoch = result.best_epoch if config.early_stopping_patience else len(result.history)
    module.eval()
    result.seconds = time.perf_counter() - start
    return result


def _score(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, batch: int
) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    module.eval()
    with torch.inference_mode():
        logits = torch.cat([module(part) for part in x.split(batch)])
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return torch.as_tensor(weights)


def predict_proba(module: nn.Module, images: np.ndarray, contract: Contract, batch: int = 256) -> np.ndarray:
    """Softmax probabilities for uint8 NCHW images."""
    module.eval()
    x = to_inputs(images, contract)
    with torch.inference_mode():
        if len(x) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat([torch.softmax(module(p), 1) for p in x.split(batch)]).numpy()
