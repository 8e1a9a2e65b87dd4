"""Every model, by name: the only place that maps a name to a model class (and, through it, to its config schema).

A new model is one file (its `Recommender` subclass with its `config_class`) and one line here.
"""

from __future__ import annotations

import difflib
import inspect

import numpy as np
import torch

from pipeline.data.features import ItemFeatures
from pipeline.models.attention import TargetAttention
from pipeline.models.base import CONTRACT_METHODS, Catalog, Recommender
from pipeline.models.classifiers import LogisticRegression, RandomForest
from pipeline.models.content import BertContent, TfidfContent
from pipeline.models.neighbourhood import ItemCF, UserCF
from pipeline.models.popularity import Popularity, RecentPopularity
from pipeline.models.sequence import GRU, LSTM, Transformer
from pipeline.models.session import Covisitation, RecentItems
from pipeline.schema import ModelSection

MODELS: dict[str, type[Recommender]] = {}


def register(model_class: type[Recommender]) -> type[Recommender]:
    """Add a model under its config's `name`, after checking that it keeps the contract (`models.base`)."""
    if not (isinstance(model_class, type) and issubclass(model_class, Recommender)):
        raise TypeError(f"{model_class!r}: a model must derive from pipeline.models.base.Recommender")
    config_class = getattr(model_class, "config_class", None)
    if not (isinstance(config_class, type) and issubclass(config_class, ModelSection)):
        raise TypeError(f"{model_class.__name__}.config_class: must be a ModelSection subclass")
    name = config_class.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise TypeError(f"{config_class.__name__}.name: needs its model's name as the default")
    missing = [method for method in CONTRACT_METHODS if getattr(model_class, method) is getattr(Recommender, method)]
    if missing:
        raise TypeError(f"{model_class.__name__}: does not implement {', '.join(missing)}")
    without_events = [
        method for method in CONTRACT_METHODS if "events" not in inspect.signature(getattr(model_class, method)).parameters
    ]
    if without_events:
        raise TypeError(f"{model_class.__name__}: {', '.join(without_events)} must take `events` (see models.base)")
    if name in MODELS and MODELS[name] is not model_class:
        raise ValueError(f"model name {name!r} is taken by {MODELS[name].__name__}")
    MODELS[name] = model_class
    return model_class


register(Popularity)
register(RecentPopularity)
register(ItemCF)
register(UserCF)
register(TfidfContent)
register(BertContent)
register(LogisticRegression)
register(RandomForest)
register(GRU)
register(LSTM)
register(Transformer)
register(TargetAttention)
register(RecentItems)
register(Covisitation)

# The model of a config without `model.name`, and the floors every run and comparison reports next to its models
# (the recently-interacted floor only where seen items may be listed: otherwise it is popularity).
DEFAULT_MODEL = Transformer.config_class.model_fields["name"].default
FLOOR_MODELS = tuple(model.config_class.model_fields["name"].default for model in (Popularity, RecentItems, Covisitation))
FLOOR_MODEL = FLOOR_MODELS[0]
REPEAT_FLOORS = (RecentItems.config_class.model_fields["name"].default,)


def model_class(name: str) -> type[Recommender]:
    if not isinstance(name, str):
        raise ValueError(f"model name: expected text, got {type(name).__name__}; models: {', '.join(MODELS)}")
    if name not in MODELS:
        hint = difflib.get_close_matches(str(name), list(MODELS), n=1)
        suggestion = f"did you mean {hint[0]}? " if hint else ""
        raise ValueError(f"unknown model {name!r}; {suggestion}models: {', '.join(MODELS)}")
    return MODELS[name]


def uses_text(config: ModelSection) -> bool:
    """Whether the model of `config` reads the catalog's text embeddings (so they must be encoded)."""
    return model_class(config.name).uses_text(config)


def floor_config() -> ModelSection:
    return model_class(FLOOR_MODEL).config_class()


def floor_configs(seen_items_listed: bool) -> list[ModelSection]:
    """The floors that apply: all of them where a user's own items may be listed, else those that rank others."""
    return [
        model_class(name).config_class() for name in FLOOR_MODELS if seen_items_listed or name not in REPEAT_FLOORS
    ]


def build_model(config: ModelSection, catalog: Catalog, seed: int = 0) -> Recommender:
    """A fresh model of `config` for `catalog`; its initial weights depend on `seed` only, not on whatever used the
    global random state before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config.name)(config, catalog, seed)


def empty_catalog(
    n_items: int, n_categories: int, text_width: int | None, features: ItemFeatures | None = None,
    event_names: tuple[str, ...] = (),
) -> Catalog:
    """The shape of a stored model's catalog, to load its weights into (the buffers are overwritten)."""
    embeddings = None if text_width is None else np.zeros((n_items + 1, text_width), dtype=np.float32)
    return Catalog(n_items, np.zeros((n_items + 1, n_categories), dtype=np.float32), embeddings, 0, features, event_names)
