"""Tonight's challenger: warm-started from the champion where its encoder and model shape still fit (trained on the
windows with new events plus a replay sample of the others), from scratch otherwise."""

from __future__ import annotations

import logging
import time

from pipeline.api import build, train
from pipeline.config import Config
from pipeline.data import PreparedData
from pipeline.encoding import encoder_identity
from pipeline.errors import PipelineInputError
from pipeline.models.warm_start import ShapeChanged, transplant
from pipeline.outputs import elapsed
from pipeline.training import TrainingDiverged
from pipeline.windows import ReplaySelection

log = logging.getLogger("pipeline")


def vocabulary(data: PreparedData) -> dict[str, list]:
    return {"items": list(data.item_ids), "categories": list(data.category_names)}


def _training_mode(config: Config, champion) -> tuple[str, str]:
    if champion is None:
        return "full", "no champion yet"
    if not config.nightly.warm_start:
        return "full", "nightly.warm_start is off"
    changed = _changed_keys(champion.config.model.model_dump(), config.model.model_dump())
    if changed:
        return "full", f"model config changed ({', '.join('model.' + key for key in changed)})"
    try:
        same_encoder = encoder_identity(champion.config.encoder) == encoder_identity(config.encoder)
    except PipelineInputError as err:  # e.g. the champion's encoder folder has moved: train afresh
        return "full", f"the champion's encoder is unavailable ({err})"
    if not same_encoder:
        return "full", "encoder changed"
    return "warm", f"fine-tuned from champion {champion.night_dir.name}"


def _changed_keys(before: dict, after: dict) -> list[str]:
    return sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))


def train_challenger(config, data, item_embeddings, champion, progress, stop, selection, watermark, on_epoch=None):
    """The training recipe with the warm start as its hook: the champion's weights are transplanted after tonight's
    statistics are fitted, before the first step, and each epoch trains on the windows with events since the last
    night (`watermark`) plus a replay sample of the others (`nightly.replay_fraction`); if the weights do not fit,
    or the fine-tuning diverges, train afresh on everything."""
    mode, reason = _training_mode(config, champion)
    warm: dict = {}

    def warm_start(model) -> None:
        warm.update(transplant(model, champion.state, champion.vocabulary, vocabulary(data), item_embeddings).to_dict())

    def fresh(epochs: int, hooks: list, epoch_windows=None) -> tuple:
        model = build(config.model, data, item_embeddings, config.seed)
        night_config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": epochs})})
        history = train(model, data, night_config, progress, stop=stop, before_loop=hooks, validation=selection,
                        epoch_windows=epoch_windows, on_epoch=on_epoch)
        return model, history

    log.info("challenger: %s training (%s)", mode, reason)
    replay = None
    if mode == "warm" and config.nightly.replay_fraction < 1 and watermark is not None:
        replay = ReplaySelection(watermark, config.nightly.replay_fraction)
    started = time.perf_counter()
    try:
        if mode != "warm":
            challenger, history = fresh(config.train.epochs, [])
        else:
            challenger, history = fresh(config.nightly.warm_epochs, [warm_start], replay)
    except (ShapeChanged, TrainingDiverged) as err:
        if mode != "warm":
            raise
        # The stored weights do not fit tonight's model, or they led the fine-tuning astray (they may hold
        # non-finite values): start from scratch.
        problem = "stored weights do not fit" if isinstance(err, ShapeChanged) else "warm start diverged"
        log.warning("%s (%s); training from scratch", problem, err)
        mode, reason = "full", f"{problem}: {err}"
        warm.clear()
        challenger, history = fresh(config.train.epochs, [])
    training = {"mode": mode, "reason": reason, "epochs": len(history), "seconds": elapsed(started), "warm_start": warm or None,
                "epoch_windows": replay.counts if mode == "warm" and replay is not None else None}
    return challenger, training, history
