"""The epoch checkpoint of a run: everything the training loop needs to continue exactly where an epoch ended.

Weights, optimizer, schedule, weight average, random streams and early-stopping state, in one `torch.save` payload
(loaded with `weights_only=True`) written through the atomic writer; a damaged file is bad input naming it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineInputError, clip
from pipeline.storage import write_atomic


@dataclass
class LoopState:
    """What the loop carries from one epoch to the next, besides weights, optimizer and random streams."""

    epoch: int = 0
    best_score: float = float("-inf")
    best_state: dict | None = None
    epochs_without_gain: int = 0
    history: list[dict] = field(default_factory=list)


def save_checkpoint(
    path: Path, state: LoopState, model: torch.nn.Module, optimizer, scheduler, average,
    order_rng: np.random.Generator,
) -> None:
    """Everything needed to continue exactly where this epoch ended, written to a temporary file, fsynced, renamed."""
    payload = {
        "epoch": state.epoch,
        "best_score": state.best_score,
        "best_state": state.best_state,
        "epochs_without_gain": state.epochs_without_gain,
        "history": json.dumps(state.history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "weight_average": average.state_dict(),
        "order_rng": json.dumps(order_rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    # Serialised in memory first, so a full disk surfaces as an OSError of the write (named by `write_atomic`), not
    # as an error from inside torch's zip writer.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, average, order_rng: np.random.Generator
) -> LoopState:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        average.load_state_dict(payload["weight_average"])
        order_rng.bit_generator.state = json.loads(payload["order_rng"])
        torch.set_rng_state(payload["torch_rng"])
    except Exception as err:  # a damaged file fails inside torch's unpickler or zip reader with many types
        raise PipelineInputError(
            f"{path}: damaged epoch checkpoint ({type(err).__name__}: {clip(str(err).splitlines()[0] if str(err) else '')}); "
            "start a new run"
        ) from None
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return LoopState(
        epoch=payload["epoch"],
        best_score=payload["best_score"],
        best_state=payload["best_state"],
        epochs_without_gain=payload["epochs_without_gain"],
        history=json.loads(payload["history"]),
    )
