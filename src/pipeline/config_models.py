"""The model section of a config: validated by the schema of the model its `name` chooses (`models/registry.py`),
so it holds that model's keys only; the keys that moved; and the upgrade of configs stored in the older, flat layout.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, SerializeAsAny, ValidationError

from pipeline.config_files import SECTION_PATH, describe_errors
from pipeline.errors import PipelineInputError
from pipeline.schema import ModelSection

# Keys that moved to another section: an old config gets the new place named instead of a guess.
MOVED_KEYS = {
    "train.category_loss_weight": "model.loss.category_weight",
    "train.rating_loss_weight": "model.loss.rating_weight",
    "train.future_loss_weight": "model.loss.future_weight",
}
# The same inside a model section (its errors are described relative to it).
MOVED_MODEL_KEYS = {"future_items": f"{SECTION_PATH}loss.future_items"}


def _model_section(value) -> ModelSection:
    """Validate a model section against its own model's schema, chosen by `name` in the registry."""
    if isinstance(value, ModelSection):
        return value
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of the model's keys, with its name")
    from pipeline.models.registry import DEFAULT_MODEL, model_class  # the models import torch: not before needed

    name = value.get("name", DEFAULT_MODEL)
    schema = model_class(name).config_class
    try:
        return schema.model_validate({"name": name, **value})
    except ValidationError as err:
        moved = MOVED_MODEL_KEYS if "loss" in schema.model_fields else None
        raise ValueError(describe_errors(err, schema, owner=f"model {name}", moved=moved)) from None


ModelConfig = Annotated[SerializeAsAny[ModelSection], BeforeValidator(_model_section)]
"""A model's own config: the schema of the model named by `name` (models/registry.py), holding only its keys."""


def model_section(**keys) -> ModelSection:
    """A model config from keyword arguments, e.g. `model_section(name="item_cf", neighbours=50)`."""
    try:
        return _model_section(keys)
    except ValueError as err:
        text = str(err)
        raise PipelineInputError(text.replace(SECTION_PATH, "model.") if SECTION_PATH in text else f"model: {text}") from None


def upgrade_stored(raw: dict) -> None:
    """Bring a resolved config written before each model had its own schema to today's layout, in place: the loss
    weights move from `train` to `model.loss`, and the keys a model never read (the flat model section held every
    model's keys) are dropped. A champion or a finished run from that version stays loadable; a config already in
    today's layout is left as it is."""
    from pipeline.models.registry import DEFAULT_MODEL, model_class

    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    moved = {
        new.rsplit(".", 1)[1]: train.pop(old.split(".", 1)[1])
        for old, new in MOVED_KEYS.items() if old.split(".", 1)[1] in train
    }
    encoder = raw.get("encoder")
    if isinstance(encoder, dict):
        encoder.pop("behavior_recent_items", None)
    compare = raw.get("compare") if isinstance(raw.get("compare"), dict) else {}
    for section in [raw.get("model"), *(compare.get("models") or [])]:
        if not isinstance(section, dict):
            continue
        try:
            schema = model_class(section.get("name", DEFAULT_MODEL)).config_class
        except ValueError:
            continue  # an unknown model: validation names it
        loss = {**moved, **({"future_items": section.pop("future_items")} if "future_items" in section else {})}
        if not loss.get("future_items"):
            loss.pop("future_weight", None)  # it had no effect without future items, and is refused alone now
        if loss and "loss" in schema.model_fields:
            section["loss"] = {**loss, **(section.get("loss") or {})}
        for key in [key for key in section if key not in schema.model_fields]:
            del section[key]
