"""The training loop, top to bottom: statistics, windows, AdamW epochs, validation, early stopping, best weights.

The same loop trains every model with parameters; a model without any (popularity) is fitted by its statistics alone.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.data.prepare import TRAIN, PreparedData
from pipeline.encoding import resolve_device

log = logging.getLogger("pipeline")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainingWindows:
    """Right-padded windows of training sequences: every position predicts the next item (0 = no target)."""

    inputs: np.ndarray  # [windows, L]
    targets: np.ndarray  # [windows, L]
    target_ratings: np.ndarray | None  # [windows, L]

    def __len__(self) -> int:
        return len(self.inputs)


def training_windows(data: PreparedData, max_length: int, stride: int | None = None) -> TrainingWindows:
    """Cut each user's training sequence into windows of up to `max_length` inputs, newest first.

    Windows end every `stride` events (default `max_length`); a window predicts only its newest `stride` targets, the
    earlier positions are context. So every training event except a user's first is a target exactly once, and with a
    stride below `max_length` each target sees at least `max_length - stride` earlier items, close to what the model
    sees at evaluation time.
    """
    stride = min(stride or max_length, max_length)
    sequences = data.sequences((TRAIN,))
    ratings = data.rating_sequences((TRAIN,)) if data.has_ratings else {}
    inputs, targets, target_ratings = [], [], []
    for user, sequence in sequences.items():
        end = len(sequence)
        while end > 1:
            start = max(0, end - max_length - 1)
            window_targets = sequence[start + 1 : end].copy()
            # Targets older than this window's stride belong to the next (older) window.
            window_targets[: max(0, (end - stride) - (start + 1))] = 0
            inputs.append(sequence[start : end - 1])
            targets.append(window_targets)
            if ratings:
                target_ratings.append(ratings[user][start + 1 : end])
            end -= stride
    return TrainingWindows(
        inputs=_pad(inputs, max_length, np.int64),
        targets=_pad(targets, max_length, np.int64),
        target_ratings=_pad(target_ratings, max_length, np.float32) if ratings else None,
    )


def _pad(rows: list[np.ndarray], width: int, dtype) -> np.ndarray:
    padded = np.zeros((len(rows), width), dtype=dtype)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = row
    return padded


def fit(
    model: torch.nn.Module,
    data: PreparedData,
    config: TrainConfig,
    validate: Callable[[torch.nn.Module], dict[str, float]],
    selection_metric: str,
    seed: int,
    progress: bool | None = None,
) -> list[dict]:
    """Fit `model` on the training split; return the per-epoch history (empty for models without parameters).

    Early stopping watches `selection_metric` of `validate(model)`; the best epoch's weights are restored at the end.
    """
    seed_everything(seed)
    model.fit_statistics(data)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        return []
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    model.to(device)
    windows = training_windows(data, model.max_length, config.window_stride)
    if len(windows) == 0:
        raise ValueError("no training sequences with at least two events")
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)
    loss_weights = {"item": 1.0, "category": config.category_loss_weight, "rating": config.rating_loss_weight}
    order_rng = np.random.default_rng(seed)
    show = sys.stderr.isatty() if progress is None else progress

    history: list[dict] = []
    best_score, best_state, epochs_without_gain = float("-inf"), None, 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        totals = {name: 0.0 for name in loss_weights}
        batches = _batches(windows, config.batch_size, order_rng, device)
        for inputs, targets, target_ratings in _progress(batches, show, f"epoch {epoch}"):
            with autocast:
                parts = model.training_loss(inputs, targets, target_ratings)
            loss = sum(loss_weights[name] * value for name, value in parts.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, max_norm=5.0)
            optimizer.step()
            for name, value in parts.items():
                totals[name] += float(value.detach()) * len(inputs) / len(windows)
        train_seconds = time.perf_counter() - started

        model.eval()
        valid_metrics = validate(model)
        score = valid_metrics[selection_metric]
        record = {
            "epoch": epoch,
            **{f"loss_{name}": round(value, 6) for name, value in totals.items() if name in parts},
            **{f"valid_{name}": value for name, value in valid_metrics.items()},
            "train_seconds": round(train_seconds, 3),
            "epoch_seconds": round(time.perf_counter() - started, 3),
        }
        history.append(record)
        log.info(
            "epoch %d: item loss %.4f, valid %s %.4f (%.1fs)",
            epoch, totals["item"], selection_metric, score, record["epoch_seconds"],
        )
        if score > best_score:
            best_score, best_state, epochs_without_gain = score, copy.deepcopy(model.state_dict()), 0
        else:
            epochs_without_gain += 1
            if epochs_without_gain >= config.patience:
                log.info("early stop after epoch %d: best valid %s %.4f", epoch, selection_metric, best_score)
                break
    model.load_state_dict(best_state)
    model.eval()
    return history


def _batches(windows: TrainingWindows, batch_size: int, rng: np.random.Generator, device: torch.device):
    order = rng.permutation(len(windows))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        # Trim the batch to its longest window: most users are short, so most batches are much narrower than L.
        width = int((windows.inputs[rows] > 0).sum(axis=1).max())
        inputs = torch.from_numpy(windows.inputs[rows, :width]).to(device)
        targets = torch.from_numpy(windows.targets[rows, :width]).to(device)
        ratings = None
        if windows.target_ratings is not None:
            ratings = torch.from_numpy(windows.target_ratings[rows, :width]).to(device)
        yield inputs, targets, ratings


def _progress(iterable, show: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, disable=not show, leave=False, unit="batch")
