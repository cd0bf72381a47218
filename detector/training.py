"""The VAE training loop: minibatch Adam with early stopping on held-out normal rows.

Deterministic for a given seed (own generators; the global torch RNG is restored afterwards).
Progress is reported through a callback so the loop never touches a terminal.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from detector.vae import VAE, VAEConfig, vae_loss


@dataclass(frozen=True)
class TrainingConfig:
    beta: float = 0.3
    learning_rate: float = 2e-3
    # Early stopping counts epochs, but never before min_steps optimiser steps: a 60-row data set
    # has one batch per epoch and would otherwise stop before it has learnt anything.
    max_steps: int = 3000
    min_steps: int = 500
    patience: int = 10
    batch_size: int | None = None  # None: a tenth of the rows, within 8..256
    seed: int = 0

    def batch_size_for(self, n_rows: int) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return int(min(max(n_rows // 10, 8), 256))


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    steps: int
    train_loss: float
    validation_loss: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainingSummary:
    epochs: int
    steps: int
    best_epoch: int
    best_validation_loss: float
    seconds: float


ProgressCallback = Callable[[EpochReport], None]


def _validation_loss(
    model: VAE,
    x: torch.Tensor,
    beta: float,
    generator: torch.Generator,
    categorical: tuple[slice, ...],
) -> float:
    model.eval()
    with torch.no_grad():
        x_hat, mean, logvar = model(x, generator)
        return float(vae_loss(x, x_hat, mean, logvar, beta, categorical=categorical).mean())


def train_vae(
    config: VAEConfig,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    training: TrainingConfig,
    progress: ProgressCallback | None = None,
    *,
    categorical: tuple[slice, ...] = (),
) -> tuple[VAE, TrainingSummary]:
    """Fit a VAE on encoded normal rows; return the weights of the best validation epoch.
    ``categorical`` are the one-hot blocks the decoder gives logits for."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        model = VAE(config)
    generator = torch.Generator().manual_seed(training.seed)
    x_train = torch.from_numpy(np.ascontiguousarray(train_rows, dtype=np.float32))
    x_valid = torch.from_numpy(np.ascontiguousarray(validation_rows, dtype=np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    batch = training.batch_size_for(len(x_train))
    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    steps = epoch = 0
    while steps < training.max_steps:
        epoch += 1
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(x_train), batch):
            xb = x_train[order[i : i + batch]]
            x_hat, mean, logvar = model(xb, generator)
            loss = vae_loss(xb, x_hat, mean, logvar, training.beta, categorical=categorical).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(xb)
            steps += 1
        valid_loss = _validation_loss(model, x_valid, training.beta, generator, categorical)
        if progress is not None:
            progress(
                EpochReport(
                    epoch, steps, total / len(x_train), valid_loss, time.perf_counter() - start
                )
            )
        if valid_loss < best_loss - 1e-4:
            best_loss, best_epoch = valid_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= training.patience and steps >= training.min_steps:
            break
    model.load_state_dict(best_state)
    model.eval()
    summary = TrainingSummary(
        epochs=epoch,
        steps=steps,
        best_epoch=best_epoch,
        best_validation_loss=best_loss,
        seconds=time.perf_counter() - start,
    )
    return model, summary
