"""Training windows: each user's training sequence cut into right-padded windows, and their shuffled batches
(split across ranks under torchrun)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.data.prepared import TrainView


@dataclass
class TrainingWindows:
    """Right-padded windows of training sequences: every position predicts the next item (0 = no target)."""

    inputs: np.ndarray  # [windows, L]
    targets: np.ndarray  # [windows, L]
    target_ratings: np.ndarray | None  # [windows, L]
    input_events: np.ndarray | None = None  # [windows, L] event-type codes of the inputs, when the log has types
    target_weights: np.ndarray | None = None  # [windows, L] loss weights of the targets (event type, value)
    target_events: np.ndarray | None = None  # [windows, L] event-type codes of the targets
    newest_target_time: np.ndarray | None = None  # [windows] unix seconds of each window's newest target
    users_newest: np.ndarray | None = None  # [windows] bool: the window ends at its user's newest training event

    def __len__(self) -> int:
        return len(self.inputs)


def training_windows(train: TrainView, max_length: int, stride: int | None = None) -> TrainingWindows:
    """Cut each user's training sequence into windows of up to `max_length` inputs, newest first.

    Windows end every `stride` events (default `max_length`); a window predicts only its newest `stride` targets, the
    earlier positions are context. So every training event except a user's first is a target exactly once, and with a
    stride below `max_length` each target sees at least `max_length - stride` earlier items, close to what the model
    sees at evaluation time.
    """
    stride = min(stride or max_length, max_length)
    sequences = train.sequences()
    ratings = train.rating_sequences() if train.has_ratings else {}
    events = train.sequences("event") if train.has_event_types else {}
    weights = train.sequences("weight") if "weight" in train.events.columns else {}
    times = train.sequences("timestamp")
    inputs, targets, target_ratings, input_events, target_weights, target_events = [], [], [], [], [], []
    newest, users_newest = [], []
    for user, sequence in sequences.items():
        end = len(sequence)
        while end > 1:
            start = max(0, end - max_length - 1)
            window_targets = sequence[start + 1 : end].copy()
            # Targets older than this window's stride belong to the next (older) window.
            window_targets[: max(0, (end - stride) - (start + 1))] = 0
            inputs.append(sequence[start : end - 1])
            targets.append(window_targets)
            newest.append(times[user][end - 1])
            users_newest.append(end == len(sequence))
            if ratings:
                target_ratings.append(ratings[user][start + 1 : end])
            if events:
                input_events.append(events[user][start : end - 1])
                target_events.append(events[user][start + 1 : end])
            if weights:
                target_weights.append(weights[user][start + 1 : end])
            end -= stride
    return TrainingWindows(
        inputs=_pad(inputs, max_length, np.int64),
        targets=_pad(targets, max_length, np.int64),
        target_ratings=_pad(target_ratings, max_length, np.float32) if ratings else None,
        input_events=_pad(input_events, max_length, np.int64) if events else None,
        target_weights=_pad(target_weights, max_length, np.float32) if weights else None,
        target_events=_pad(target_events, max_length, np.int64) if events else None,
        newest_target_time=np.array(newest, dtype=np.int64),
        users_newest=np.array(users_newest, dtype=bool),
    )


def _pad(rows: list[np.ndarray], width: int, dtype) -> np.ndarray:
    padded = np.zeros((len(rows), width), dtype=dtype)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = row
    return padded


def window_batches(
    windows: TrainingWindows, batch_size: int, rng: np.random.Generator, device: torch.device, rank: int = 0, world: int = 1,
    rows: np.ndarray | None = None,
):
    """Shuffled batches of `batch_size` windows, as tensors on `device`: (inputs, targets, target ratings, input
    events, target weights, target events), None for what the log does not have.

    Under data parallelism every rank draws the same permutation and takes every `world`-th window of each batch, so
    `batch_size` stays the global batch and the ranks together see each window once per epoch (a final batch with
    fewer windows than ranks is dropped so that every rank takes the same number of steps). `rows`: only those
    windows (an epoch's selection, `ReplaySelection`).
    """
    order = rng.permutation(len(windows)) if rows is None else rng.permutation(rows)
    for start in range(0, len(order), batch_size):
        if len(order[start : start + batch_size]) < world:
            break
        yield _batch(windows, order[start : start + batch_size][rank::world], device)


def rank_window_batches(
    windows: TrainingWindows, batch_size: int, steps: int, rng: np.random.Generator, device: torch.device,
    rows: np.ndarray | None = None,
):
    """`steps` shuffled batches of this rank's own windows (rank shards): every rank takes the same number of steps,
    so a rank with fewer windows starts its permutation again for the last ones."""
    order = rng.permutation(len(windows)) if rows is None else rng.permutation(rows)
    for step in range(steps):
        yield _batch(windows, order[np.arange(step * batch_size, (step + 1) * batch_size) % len(order)], device)


def _batch(windows: TrainingWindows, rows: np.ndarray, device: torch.device) -> tuple:
    # Trim the batch to its longest window: most users are short, so most batches are much narrower than L.
    width = int((windows.inputs[rows] > 0).sum(axis=1).max())
    return tuple(
        None if part is None else torch.from_numpy(part[rows, :width]).to(device)
        for part in (
            windows.inputs, windows.targets, windows.target_ratings, windows.input_events, windows.target_weights,
            windows.target_events,
        )
    )


@dataclass
class ReplaySelection:
    """An epoch's windows for a warm start: what the model has not trained on, plus a fresh draw of `replay_fraction`
    of the others, so it learns the new events without forgetting the old ones, at a fraction of a full epoch's cost.

    Not trained on: every window with a target newer than `newer_than` (the last night's newest event), and each
    user's newest window, which holds the events the last night held out to evaluate on (a user's last events
    under leave-last-out) and now trains on."""

    newer_than: int
    replay_fraction: float
    counts: dict = field(default_factory=dict)  # of the last call: windows with new targets, replayed, all

    def __call__(self, windows: TrainingWindows, rng: np.random.Generator) -> np.ndarray:
        new = (windows.newest_target_time > self.newer_than) | windows.users_newest
        old = np.flatnonzero(~new)
        replayed = rng.choice(old, size=int(round(self.replay_fraction * len(old))), replace=False)
        self.counts = {"new_windows": int(new.sum()), "replayed_windows": len(replayed), "windows": len(windows)}
        return np.sort(np.concatenate([np.flatnonzero(new), replayed]))
