"""The training loop, top to bottom: windows, AdamW epochs, validation, early stopping, epoch checkpoints, best weights.

The same loop trains every model with parameters; a model without any (popularity) is fitted by its statistics
alone. A model's `fit` reaches the loop through a `Fitter`, which the recipe configures: the validator, checkpoint
and stop request, and hooks run between the statistics and the first step (the nightly warm start is one).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from pipeline import distributed
from pipeline.checkpoint import LoopState, load_checkpoint, save_checkpoint
from pipeline.config import TrainConfig
from pipeline.data.prepared import TrainView
from pipeline.encoding import resolve_device
from pipeline.errors import PipelineInputError
from pipeline.evaluation import Validator
from pipeline.models.sampled import NegativeSampler
from pipeline.progress import bar, show_progress
from pipeline.ranking import NonFiniteScores
from pipeline.windows import TrainingWindows, rank_window_batches, training_windows, window_batches

log = logging.getLogger("pipeline")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StopRequest:
    """A stop asked for from outside (a signal handler): honoured at the next batch boundary while training runs."""

    def __init__(self):
        self.reason: str | None = None
        self.training = False  # whether a request now would be honoured (else the asker stops some other way)

    def request(self, reason: str) -> None:
        self.reason = reason


class TrainingDiverged(PipelineInputError):
    """The loss or the validation scores stopped being finite numbers: the settings (learning rate) are the cause."""

    def __init__(self, epoch: int, what: str):
        super().__init__(
            f"training diverged at epoch {epoch} (non-finite {what}); lower train.learning_rate or check the data; "
            "nothing was published"
        )


class TrainingStopped(Exception):
    """Raised at a batch boundary after a stop was requested; the last finished epoch is in the checkpoint."""

    def __init__(self, finished_epochs: int):
        super().__init__(f"training stopped after {finished_epochs} finished epoch(s)")
        self.finished_epochs = finished_epochs


@dataclass
class Fitter:
    """The gradient loop as a model's `fit` reaches it, configured by the recipe (see `fit` for the arguments)."""

    config: TrainConfig
    validator: Validator
    seed: int
    progress: bool | None = None
    checkpoint: Path | None = None
    stop: StopRequest | None = None
    # Called with the model after its statistics are fitted, before the first step (e.g. the nightly warm start).
    before_loop: list[Callable[[torch.nn.Module], None]] = field(default_factory=list)
    # The windows of each epoch (see `fit`); None: all of them.
    epoch_windows: Callable[[TrainingWindows, np.random.Generator], np.ndarray] | None = None
    # Called with each finished epoch's history record (experiment tracking).
    on_epoch: Callable[[dict], None] | None = None

    def loop(self, model: torch.nn.Module, train: TrainView) -> list[dict]:
        for hook in self.before_loop:
            hook(model)
        return fit(
            model, train, self.config, self.validator, self.seed, self.progress, self.checkpoint, self.stop,
            self.epoch_windows, self.on_epoch,
        )


def fit(
    model: torch.nn.Module,
    train: TrainView,
    config: TrainConfig,
    validator: Validator,
    seed: int,
    progress: bool | None = None,
    checkpoint: Path | None = None,
    stop: StopRequest | None = None,
    epoch_windows: Callable[[TrainingWindows, np.random.Generator], np.ndarray] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fit `model` (statistics already fitted) on the training view; return the per-epoch history (each record is
    also given to `on_epoch`, on rank 0).

    `epoch_windows(windows, rng)` chooses the windows each epoch trains on (default: all; `ReplaySelection` for a
    warm start).

    Early stopping watches `validator.selection_metric` of `validator(model)`; the best epoch's weights are restored.
    With `checkpoint`, every finished epoch is saved there atomically and a checkpoint found at the start is resumed:
    weights, optimizer, random states and early-stopping state, so the result equals an uninterrupted run. When
    `stop` is requested, training ends at the next batch boundary with `TrainingStopped`.
    """
    seed_everything(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        return []
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    model.to(device)
    windows = training_windows(train, model.max_length, config.window_stride)
    world = distributed.world_size()
    # On rank shards each rank cuts windows from its own users only; the epoch is as many steps as the busiest rank.
    all_windows = int(distributed.sum_across_ranks(len(windows))) if train.rank_local else len(windows)
    if all_windows == 0:
        raise PipelineInputError("data: no user has two or more training events, so there is nothing to train on")
    if train.rank_local and len(windows) == 0:
        raise PipelineInputError(f"data.shards: rank {distributed.rank()} holds no user with two training events; use fewer ranks")
    local_batch = -(-config.batch_size // world)
    # Several processes (torchrun): DistributedDataParallel averages the gradients across ranks after each backward.
    trained = model if world == 1 else DistributedDataParallel(
        model, device_ids=[device.index or 0] if device.type == "cuda" else None, find_unused_parameters=True,
        broadcast_buffers=False,  # the buffers (statistics, text table) are computed alike on every rank
    )
    # A sampled step in one process reads the item tables with sparse gradients and updates only those rows (under
    # DistributedDataParallel the gradients stay dense: its all-reduce is for dense tensors).
    sampler = negative_sampler(model, config, sparse_rows=world == 1)
    optimizer = RowSparseAdamW(model, parameters, config) if sampler is not None and sampler.sparse_rows else (
        torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay))
    # The schedule's epoch length: one epoch's selection (its size does not depend on the draw).
    selected = len(windows) if epoch_windows is None else len(epoch_windows(windows, np.random.default_rng(0)))
    steps_per_epoch = -(-int(distributed.sum_across_ranks(selected) if train.rank_local else selected) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        getattr(optimizer, "dense", optimizer), learning_rate_factor(config, steps_per_epoch))
    average = WeightAverage(parameters, config.weight_average_decay)
    autocast = training_autocast(device, training_dtype(device, config.precision))
    loss_weights = model.loss_weights()
    selection_metric = validator.selection_metric
    order_rng = np.random.default_rng(seed)
    show = show_progress(progress)

    state = LoopState()
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, average, order_rng)
        log.info("resumed from %s after epoch %d", checkpoint, state.epoch)
    if stop is not None:
        stop.training = True
    try:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            if state.epochs_without_gain >= config.patience:
                break
            started = time.perf_counter()
            model.train()
            totals = {name: 0.0 for name in loss_weights}
            rows = None if epoch_windows is None else epoch_windows(windows, order_rng)
            rows = None if rows is not None and len(rows) == 0 and train.rank_local else rows
            epoch_size = len(windows) if rows is None else len(rows)
            if train.rank_local:  # as many steps on every rank as on the busiest
                epoch_total = int(distributed.sum_across_ranks(epoch_size))
                steps = distributed.max_across_ranks(-(-epoch_size // local_batch))
                batches = rank_window_batches(windows, local_batch, steps, order_rng, device, rows)
            else:
                epoch_total = epoch_size
                batches = window_batches(windows, config.batch_size, order_rng, device, distributed.rank(), world, rows)
            if sampler is not None:  # seeded per epoch, so a resumed run draws what an uninterrupted one would
                sampler.generator.manual_seed(seed * 1_000_003 + epoch * 7_919 + distributed.rank())
            steps_total = steps if train.rank_local else -(-epoch_size // config.batch_size)
            for batch in bar(batches, show and distributed.is_main(), f"epoch {epoch}", steps_total):
                if stop is not None and stop.reason:
                    raise TrainingStopped(epoch - 1)
                inputs, targets = batch[0], batch[1]
                with autocast:
                    parts = trained(*batch) if sampler is None else trained(*batch, candidates=sampler.draw(targets))
                loss = sum(loss_weights[name] * value for name, value in parts.items())
                finite = bool(torch.isfinite(loss.detach()))
                if world > 1:  # every rank stops together, or the others would wait in the next collective forever
                    finite = distributed.sum_across_ranks(float(not finite)) == 0
                if not finite:
                    raise TrainingDiverged(epoch, "loss")
                if world > 1:
                    # Each rank's loss is a mean over its own targets; weigh it by its share of the batch's targets so
                    # the averaged gradient is that of the mean over the whole batch, as in one process.
                    local_targets = float((targets > 0).sum())
                    loss = loss * (world * local_targets / distributed.sum_across_ranks(local_targets))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_gradients(parameters, max_norm=5.0)
                optimizer.step()
                scheduler.step()
                average.update()
                for name, value in parts.items():
                    totals[name] += float(value.detach()) * len(inputs) / epoch_total
            totals = {name: distributed.sum_across_ranks(value) for name, value in totals.items()}
            train_seconds = time.perf_counter() - started

            model.eval()
            with average.swapped_in():  # the weights validated are the weights kept
                try:
                    valid_metrics = validator(model)
                except NonFiniteScores:
                    raise TrainingDiverged(epoch, "validation scores") from None
                score = valid_metrics[selection_metric]
                improved = score > state.best_score
                if improved:
                    state.best_state = copy.deepcopy(model.state_dict())
            record = {
                "epoch": epoch,
                **{f"loss_{name}": round(value, 6) for name, value in totals.items() if name in parts},
                **{f"valid_{name}": value for name, value in valid_metrics.items()},
                "learning_rate": optimizer.param_groups[0]["lr"],
                "train_seconds": round(train_seconds, 3),
                "epoch_seconds": round(time.perf_counter() - started, 3),
            }
            state.history.append(record)
            state.epoch = epoch
            if on_epoch is not None and distributed.is_main():
                on_epoch(record)
            log.info(
                "epoch %d: item loss %.4f, valid %s %.4f (%.1fs)",
                epoch, totals["item"], selection_metric, score, record["epoch_seconds"],
            )
            if improved:
                state.best_score, state.epochs_without_gain = score, 0
            else:
                state.epochs_without_gain += 1
                if state.epochs_without_gain >= config.patience:
                    log.info("early stop after epoch %d: best valid %s %.4f", epoch, selection_metric, state.best_score)
            if checkpoint is not None and distributed.is_main():
                save_checkpoint(checkpoint, state, model, optimizer, scheduler, average, order_rng)
    finally:
        if stop is not None:
            stop.training = False
    model.load_state_dict(state.best_state)
    model.eval()
    return state.history


def negative_sampler(model: torch.nn.Module, config: TrainConfig, sparse_rows: bool = False) -> NegativeSampler | None:
    """The sampled softmax's candidate draw where `train.loss` resolves to sampled for a model that trains a
    softmax over the catalog (`Recommender.softmax_over_items`); None for the full softmax."""
    if not getattr(model, "softmax_over_items", False):
        if config.loss == "sampled":
            log.info("%s trains no softmax over the catalog: train.loss does not apply", type(model).__name__)
        return None
    trained = int((model.statistics.item_counts > 0).sum())
    if config.loss == "full" or (config.loss == "auto" and trained <= config.sampled_above):
        return None
    log.info("sampled softmax: %d %s negatives per batch over %d trained items", config.negatives, config.negative_sampling, trained)
    return NegativeSampler(
        model.statistics.item_counts, config.negatives, config.negative_sampling, torch.Generator(), sparse_rows)


class RowSparseAdamW:
    """AdamW for the dense parameters, lazy Adam (`torch.optim.SparseAdam`) for the item tables that a sampled step
    reads with sparse gradients (`Recommender.item_row_parameters`): a step updates the rows it read, not every row
    of the catalog, so its cost follows the batch. The item tables get no weight decay (lazy Adam has none); their
    learning rate follows the dense group's schedule; checkpoints hold both states."""

    def __init__(self, model: torch.nn.Module, parameters: list[torch.nn.Parameter], config: TrainConfig):
        rows = {id(parameter) for name, parameter in model.named_parameters() if name in model.item_row_parameters}
        self.dense = torch.optim.AdamW(
            [p for p in parameters if id(p) not in rows], lr=config.learning_rate, weight_decay=config.weight_decay)
        self.sparse = torch.optim.SparseAdam([p for p in parameters if id(p) in rows], lr=config.learning_rate)
        self.param_groups = self.dense.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        for group in self.sparse.param_groups:
            group["lr"] = self.dense.param_groups[0]["lr"]
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


@torch.no_grad()
def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float) -> None:
    """`clip_grad_norm_`, which refuses sparse gradients: with them, the norm over the dense gradients and the
    (coalesced) rows of the sparse ones."""
    if not any(p.grad is not None and p.grad.is_sparse for p in parameters):
        torch.nn.utils.clip_grad_norm_(parameters, max_norm=max_norm)
        return
    for parameter in parameters:
        if parameter.grad is not None and parameter.grad.is_sparse:
            parameter.grad = parameter.grad.coalesce()
    squares = [(p.grad.values() if p.grad.is_sparse else p.grad).float().pow(2).sum() for p in parameters if p.grad is not None]
    scale = (max_norm / (torch.stack(squares).sum().sqrt() + 1e-6)).clamp(max=1.0)
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.mul_(scale)


def training_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The compute dtype of the training steps for `train.precision` (auto: bf16 on CUDA, fp32 on CPU)."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32


def training_autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """bf16 autocast around the forward pass, or a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def learning_rate_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the learning rate at each optimizer step: linear warm-up, then constant or cosine to 0."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    total_steps = config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class WeightAverage:
    """Exponential moving average of the trainable parameters, swapped into the model for validation.

    The decay ramps up as (1 + step) / (10 + step) until it reaches `decay`, so the first steps' weights (the
    initialisation) fade quickly. With decay 0 the average is the current weights and nothing is copied.
    """

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        self.parameters = parameters
        self.decay = decay
        self.steps = 0
        self.averages = [parameter.detach().clone() for parameter in parameters] if decay else []

    @torch.no_grad()
    def update(self) -> None:
        if not self.decay:
            return
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.averages, [parameter.detach() for parameter in self.parameters], 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self):
        if not self.decay:
            yield
            return
        with torch.no_grad():
            current = [parameter.detach().clone() for parameter in self.parameters]
            torch._foreach_copy_([parameter.data for parameter in self.parameters], self.averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([parameter.data for parameter in self.parameters], current)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "averages": self.averages}

    def load_state_dict(self, stored: dict) -> None:
        self.steps = stored["steps"]
        for average, value in zip(self.averages, stored["averages"]):
            average.copy_(value)
