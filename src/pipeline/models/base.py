"""The one contract every model implements, baselines included; trainer, ranker, evaluator, recipes and serving see
nothing else.

A model is a `torch.nn.Module` (so its state saves to safetensors the same way for all) built as
`Model(config, catalog, seed)` from its own schema (`config_class`) and the catalog's shape, with:

- `fit(train, fitter)`: learn from the training view (`TrainView`: training events only, so nothing of the validation
  or test period can reach a model). The default fits the training statistics, then hands the model to the
  gradient loop (`fitter.loop`), which returns at once for a model without trainable parameters.
- `forward(inputs, targets, target_ratings)`, i.e. `model(...)`: the named parts of the training loss of a batch of
  windows, weighted by `loss_weights()`, for models with parameters.
- `score_items(histories, events)`: [users, n_items + 1] raw scores over the whole catalog (column 0 is padding).
  Items a user already has are scored like any other: what the ranking does with them (and with ties) is the
  ranker's policy (`pipeline.ranking`), the same for every model.
- `predict_category(histories, events)`: [users, n_categories] scores for the category of the next interaction.
- `predict_rating(histories, items, events)`: [users] predicted rating of the given next items.
- `max_length`: how many of the most recent history items the model reads.

`events` (None when the log has no event types) holds, aligned with each history, the event-type code of every
position (1.. in the order of `Catalog.event_names`, 0 unknown); a model that does not read them ignores them.

Capabilities are class attributes, never name checks: `uses_text(config)` (whether the catalog's text embeddings
must be computed), `scores_untrained_items(config)` (whether items without training events get meaningful scores,
from their text), `item_row_parameters` / `category_row_parameters` (parameters with one row per item or category,
which a warm start maps through ids). Histories are lists of item-index arrays, oldest first, of any length (users
never seen in training included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from pipeline import distributed
from pipeline.data.features import ItemFeatures
from pipeline.data.prepared import TrainView
from pipeline.ranking import popularity_order, top_indices
from pipeline.schema import ModelSection


@dataclass
class Catalog:
    """What a model is built for: the catalog's shape, categories, text embeddings (None: not encoded), side
    features (None: none configured) and the log's event types (empty: no event column)."""

    n_items: int
    category_matrix: np.ndarray  # [n_items + 1, n_categories]
    item_text_embeddings: np.ndarray | None = None  # [n_items + 1, width]
    n_users: int = 0
    item_features: ItemFeatures | None = None
    event_names: tuple[str, ...] = ()
    target_event_names: tuple[str, ...] = ()  # eval.target_event_types: what a list is asked to predict

    @property
    def n_categories(self) -> int:
        return self.category_matrix.shape[1]

    def text_embeddings_or_zeros(self) -> np.ndarray:
        """Models whose item representation may leave text out still keep a (one-column) embedding buffer."""
        if self.item_text_embeddings is not None:
            return self.item_text_embeddings
        return np.zeros((self.n_items + 1, 1), dtype=np.float32)


def pad_histories(histories: list[np.ndarray], max_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [users, L] item indices of the most recent `max_length` items, and each row's length."""
    recent = [np.asarray(history[-max_length:], dtype=np.int64) for history in histories]
    lengths = np.array([len(history) for history in recent], dtype=np.int64)
    padded = np.zeros((len(recent), max(1, int(lengths.max(initial=1)))), dtype=np.int64)
    for row, history in enumerate(recent):
        padded[row, : len(history)] = history
    return torch.from_numpy(padded).to(device), torch.from_numpy(lengths).to(device)


def repeat_share_of(events) -> float:
    """Share of training events (after each user's first) whose item the user had already interacted with."""
    repeated, could_repeat = repeat_counts(events)
    return repeated / could_repeat if could_repeat else 0.0


def repeat_counts(events) -> tuple[int, int]:
    """(events returning to an item of the user's history, events after each user's first)."""
    return int(events.duplicated(["user", "item"]).sum()), len(events) - events["user"].nunique()


class TrainingStatistics(torch.nn.Module):
    """Counts every model starts from: item popularity, category prior, damped item rating means, repeat share.

    They are saved with every model, so the ranker's policy (seen items, ties) reads the same numbers in evaluation,
    in `recommend` and in the nightly lists.
    """

    # Pseudo-count pulling an item's mean rating toward the global mean: few ratings, little trust.
    RATING_DAMPING = 10.0

    def __init__(self, n_items: int, n_categories: int):
        super().__init__()
        self.register_buffer("item_counts", torch.zeros(n_items + 1))
        self.register_buffer("category_prior", torch.zeros(n_categories))
        self.register_buffer("item_rating_means", torch.zeros(n_items + 1))
        self.register_buffer("global_rating_mean", torch.zeros(()))
        # Share of training events (after each user's first) whose item the user had already interacted with.
        self.register_buffer("repeat_share", torch.zeros(()))
        # data.items.recommendable per item (padding: never).
        self.register_buffer("recommendable", torch.ones(n_items + 1, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Saved before the repeat share was measured: rank seen items as those models did (as if people repeat).
        state_dict.setdefault(prefix + "repeat_share", torch.ones(()))
        # Saved before candidates could be restricted: every item was one.
        state_dict.setdefault(prefix + "recommendable", torch.ones_like(self.recommendable))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def rating_of(self, items: np.ndarray) -> torch.Tensor:
        """The damped mean training rating of each of `items`: the rating prediction of models without a rating head."""
        return self.item_rating_means[torch.as_tensor(items, dtype=torch.long)]

    @torch.no_grad()
    def fit(self, train: TrainView) -> None:
        """The counts of `train`; on rank-local shards (torchrun) each rank counts its own users and the counts are
        summed across ranks, so every rank holds the log's numbers."""
        events = train.events
        local = train.rank_local
        items = torch.from_numpy(events["item"].to_numpy(copy=True))
        counts = torch.bincount(items, minlength=train.n_items + 1).float()
        counts[0] = 0
        if local:
            distributed.sum_tensor_across_ranks(counts)  # whole numbers: exact in float32 up to 2^24 per item
        self.item_counts.copy_(counts)
        self.category_prior.copy_(counts @ torch.from_numpy(train.category_matrix))
        repeats = torch.tensor(repeat_counts(events), dtype=torch.float64)
        if local:
            distributed.sum_tensor_across_ranks(repeats)
        self.repeat_share.fill_(float(repeats[0] / repeats[1]) if repeats[1] else 0.0)
        if train.recommendable is not None:
            self.recommendable.copy_(torch.from_numpy(train.recommendable))
        if train.has_ratings:
            ratings = torch.from_numpy(events["rating"].to_numpy(copy=True)).float()
            sums = torch.zeros(train.n_items + 1).index_add_(0, items, ratings)
            if local:
                distributed.sum_tensor_across_ranks(sums)
            global_mean = sums.sum() / counts.sum() if local else ratings.mean()
            self.global_rating_mean.fill_(global_mean)
            self.item_rating_means.copy_((sums + self.RATING_DAMPING * global_mean) / (counts + self.RATING_DAMPING))


CONTRACT_METHODS = ("score_items", "predict_category", "predict_rating")


class Recommender(torch.nn.Module):
    """The base every model derives from (the registry refuses any other class); see the module docstring."""

    config_class: ClassVar[type[ModelSection]]
    # Parameters with one row per catalog item / per category: a warm start maps them row by row through ids.
    item_row_parameters: ClassVar[tuple[str, ...]] = ()
    category_row_parameters: ClassVar[tuple[str, ...]] = ()
    # Of those, the ones with rows only for some items (those with training events), and the buffer giving each
    # item's row (0: none, the padding row).
    item_row_index: ClassVar[dict[str, str]] = {}
    # Buffers whose size depends on the training data; loading a checkpoint takes the stored size.
    resizable_buffers: ClassVar[tuple[str, ...]] = ()
    # Whether the model reads the catalog's text embeddings whatever its config says (see `uses_text`).
    reads_text: ClassVar[bool] = False
    # Whether training is a softmax over the catalog whose `forward` takes `candidates` (sampled softmax, train.loss).
    softmax_over_items: ClassVar[bool] = False
    # Whether `fit` learns only through the statistics (summed across ranks) and the gradient loop, so that under
    # torchrun every rank may read only its own shards of the log (data.engine: duckdb).
    fits_on_rank_shards: ClassVar[bool] = False

    def __init__(self, config: ModelSection, catalog: Catalog):
        super().__init__()
        self.max_length = getattr(config, "max_length", 1)
        self.scores_untrained = type(self).scores_untrained_items(config)
        self.statistics = TrainingStatistics(catalog.n_items, catalog.n_categories)
        self.register_buffer("item_category_weights", torch.as_tensor(catalog.category_matrix, dtype=torch.float32))

    @classmethod
    def uses_text(cls, config: ModelSection) -> bool:
        return cls.reads_text

    @classmethod
    def scores_untrained_items(cls, config: ModelSection) -> bool:
        """Whether items without training events get meaningful scores (from text): else `output.exclude_untrained`
        takes them out of the candidates."""
        return cls.uses_text(config)

    @property
    def n_items(self) -> int:
        return len(self.item_category_weights) - 1

    def fit(self, train: TrainView, fitter) -> list[dict]:
        """Statistics, then the gradient loop (`training.Fitter`); returns the per-epoch history."""
        self.fit_statistics(train)
        return fitter.loop(self, train)

    def fit_statistics(self, train: TrainView) -> None:
        """The counts the model learns without gradients (item popularity, rating means, what may be listed); a
        model extends it with its own (a sequence model starts its item biases at log-popularity)."""
        self.statistics.fit(train)

    def loss_weights(self) -> dict[str, float]:
        """Weight of each part of the training loss that `forward` returns."""
        return {"item": 1.0}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Popularity models saved before every model shared this base had no category weights (they never read them).
        state_dict.setdefault(prefix + "item_category_weights", self.item_category_weights)
        for name in self.resizable_buffers:
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        """[users, n_items + 1] a score for every item (column 0: padding) after each history (item indices, oldest
        first; `events`: their event-type codes); higher is more likely next. The ranking policy (seen items, ties)
        is applied by `ranking`, not here."""
        raise NotImplementedError

    def predict_category(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        """[users, n_categories] scores of the category of each user's next item."""
        raise NotImplementedError

    def score_candidates(
        self, histories: list[np.ndarray], candidates: torch.Tensor, events: list[np.ndarray] | None = None,
        user_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[users, M] the scores `score_items` gives each user's candidate items ([users, M] indices);
        `user_vectors`, from `retrieval_vectors` for the same users, spare computing them twice."""
        return self.score_items(histories, events).gather(1, candidates.to(self.item_category_weights.device))

    def retrieval_vectors(
        self, histories: list[np.ndarray], events: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(user vectors [users, d], item vectors [n_items + 1, d]) whose inner products are `score_items` for every
        item outside the user's history, or None for a model that does not score that way (`retrieval.AnnLists`)."""
        return None

    def predict_rating(
        self, histories: list[np.ndarray], items: np.ndarray, events: list[np.ndarray] | None = None
    ) -> torch.Tensor:
        """[users] the rating each user would give `items` (one item per user), on the data's rating scale."""
        raise NotImplementedError


def recency_weights(histories: list[np.ndarray], max_length: int, half_life: float, n_items: int) -> torch.Tensor:
    """[users, n_items + 1] weights of each user's recent items: the newest weighs 1, halving every `half_life` items."""
    weights = torch.zeros(len(histories), n_items + 1)
    for row, history in enumerate(histories):
        recent = torch.tensor(history[-max_length:], dtype=torch.long)
        ages = torch.arange(len(recent) - 1, -1, -1, dtype=torch.float32)
        weights[row].index_add_(0, recent, torch.pow(0.5, ages / half_life))
    weights[:, 0] = 0
    return weights


class ScoringModel(Recommender):
    """Base of models that only score items: category and rating predictions are derived, not learned.

    The category of the next interaction is read off the model's own top items (weighted 1/rank, ties by training
    popularity as in every ranking), so it is as good as the ranking; the rating is the item's damped mean rating.
    """

    CATEGORY_TOP_ITEMS = 20

    def predict_category(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        scores = self.score_items(histories, events).float().clone()
        scores[:, 0] = float("-inf")
        order = popularity_order(self.statistics.item_counts)
        top = order[top_indices(scores[:, order], min(self.CATEGORY_TOP_ITEMS, self.n_items))]
        rank_weights = 1.0 / torch.arange(1, top.shape[1] + 1, dtype=torch.float32, device=top.device)
        return torch.einsum("r,brc->bc", rank_weights, self.item_category_weights[top])

    def predict_rating(
        self, histories: list[np.ndarray], items: np.ndarray, events: list[np.ndarray] | None = None
    ) -> torch.Tensor:
        return self.statistics.rating_of(items)
