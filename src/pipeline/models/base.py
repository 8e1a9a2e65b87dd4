"""The one interface every model implements; the trainer and the evaluator see nothing else.

A model is a `torch.nn.Module` (so its state saves to safetensors the same way for all) with:

- `fit_statistics(data)`: counts taken from the training split (popularity, category prior, rating means).
  Baselines are fully fitted here; a model without trainable parameters is never handed to the gradient loop.
- `forward(inputs, targets, target_ratings)`, i.e. `model(...)`: the named parts of the training loss of a batch of
  windows, for models with parameters (so DistributedDataParallel can wrap any of them).
- `score_items(histories)`: [users, n_items + 1] scores over the whole catalog (column 0 is padding). Items already in
  a user's history are scored too: whether people come back to an item is learned from the training data (a
  repeat bias; `rank_seen_last` where the training log shows nobody does), not assumed by the evaluator.
- `predict_category(histories)`: [users, n_categories] scores for the category of the next interaction.
- `predict_rating(histories, items)`: [users] predicted rating of the given next items.
- `max_length`: how many of the most recent history items the model reads.

Histories are lists of item-index arrays, oldest first, of any length (users never seen in training included).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.prepare import TRAIN, PreparedData


def pad_histories(histories: list[np.ndarray], max_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [users, L] item indices of the most recent `max_length` items, and each row's length."""
    recent = [np.asarray(history[-max_length:], dtype=np.int64) for history in histories]
    lengths = np.array([len(history) for history in recent], dtype=np.int64)
    padded = np.zeros((len(recent), max(1, int(lengths.max(initial=1)))), dtype=np.int64)
    for row, history in enumerate(recent):
        padded[row, : len(history)] = history
    return torch.from_numpy(padded).to(device), torch.from_numpy(lengths).to(device)


def history_mask(histories: list[np.ndarray], n_columns: int, device: torch.device) -> torch.Tensor:
    """[users, n_columns] bool, True at every item of each user's history."""
    rows = np.repeat(np.arange(len(histories)), [len(history) for history in histories])
    columns = np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, dtype=np.int64)
    mask = torch.zeros(len(histories), n_columns, dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(device), torch.from_numpy(columns).to(device)] = True
    return mask


# Below this share of training events that return to an item already in the user's history, people are taken not to
# come back (MovieLens: 0, nobody rates a movie twice).
REPEAT_SHARE_FLOOR = 0.01


def rank_seen_last(scores: torch.Tensor, histories: list[np.ndarray], repeat_share: torch.Tensor) -> torch.Tensor:
    """`scores` with each user's seen items moved below all unseen ones (order among them kept) when repeats are rare.

    Ranked as they are, a user's own items score highest by similarity in most models and would fill a list nobody
    wants where users never repeat (RecBole's protocol keeps them in the ranking).
    """
    if float(repeat_share) >= REPEAT_SHARE_FLOOR:
        return scores
    seen = history_mask(histories, scores.shape[1], scores.device)
    seen[:, 0] = False  # padding
    real = scores[:, 1:]
    span = (real.amax(dim=1, keepdim=True) - real.amin(dim=1, keepdim=True)).clamp(min=1e-6)
    # The best seen item lands a full span below the worst unseen one.
    return torch.where(seen, scores - 2 * span, scores)


class TrainingStatistics(torch.nn.Module):
    """Counts every model starts from: item popularity, category prior, damped item rating means, repeat share."""

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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Saved before the repeat share was measured: score seen items as those models did (as if people repeat).
        state_dict.setdefault(prefix + "repeat_share", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, data: PreparedData) -> None:
        train = data.events[data.events["split"] == TRAIN]
        items = torch.from_numpy(train["item"].to_numpy(copy=True))
        counts = torch.bincount(items, minlength=data.n_items + 1).float()
        counts[0] = 0
        self.item_counts.copy_(counts)
        self.category_prior.copy_(counts @ torch.from_numpy(data.category_matrix()))
        could_repeat = len(train) - train["user"].nunique()
        repeats = int(train.duplicated(["user", "item"]).sum())
        self.repeat_share.fill_(repeats / could_repeat if could_repeat else 0.0)
        if data.has_ratings:
            ratings = torch.from_numpy(train["rating"].to_numpy(copy=True)).float()
            global_mean = ratings.mean()
            sums = torch.zeros(data.n_items + 1).index_add_(0, items, ratings)
            self.global_rating_mean.fill_(global_mean)
            self.item_rating_means.copy_((sums + self.RATING_DAMPING * global_mean) / (counts + self.RATING_DAMPING))


def recency_weights(histories: list[np.ndarray], max_length: int, half_life: float, n_items: int) -> torch.Tensor:
    """[users, n_items + 1] weights of each user's recent items: the newest weighs 1, halving every `half_life` items."""
    weights = torch.zeros(len(histories), n_items + 1)
    for row, history in enumerate(histories):
        recent = torch.tensor(history[-max_length:], dtype=torch.long)
        ages = torch.arange(len(recent) - 1, -1, -1, dtype=torch.float32)
        weights[row].index_add_(0, recent, torch.pow(0.5, ages / half_life))
    weights[:, 0] = 0
    return weights


class ScoringModel(torch.nn.Module):
    """Base of models that only score items: category and rating predictions are derived, not learned.

    The category of the next interaction is read off the model's own top items (weighted 1/rank), so it is as good as
    the ranking; the rating is the item's damped mean rating.
    """

    CATEGORY_TOP_ITEMS = 20
    # Buffers whose size depends on the training data; loading a checkpoint takes the stored size.
    RESIZABLE_BUFFERS: tuple[str, ...] = ()

    def __init__(self, n_items: int, category_matrix: np.ndarray, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.statistics = TrainingStatistics(n_items, category_matrix.shape[1])
        self.register_buffer("item_category_weights", torch.as_tensor(category_matrix, dtype=torch.float32))

    @property
    def n_items(self) -> int:
        return len(self.item_category_weights) - 1

    def fit_statistics(self, data: PreparedData) -> None:
        self.statistics.fit(data)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.RESIZABLE_BUFFERS:
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def score_items(self, histories: list[np.ndarray]) -> torch.Tensor:
        return rank_seen_last(self.catalog_scores(histories), histories, self.statistics.repeat_share)

    def catalog_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """[users, n_items + 1] the model's own scores, before `rank_seen_last`."""
        raise NotImplementedError

    def break_ties_by_popularity(self, scores: torch.Tensor) -> torch.Tensor:
        """Add popularity at a scale far below any real score difference: users with no signal still get a list."""
        counts = self.statistics.item_counts
        return scores + 1e-6 * counts / counts.max().clamp(min=1)

    def predict_category(self, histories: list[np.ndarray]) -> torch.Tensor:
        # Before `rank_seen_last`: the items a user already has say as much about their taste as their next ones.
        scores = self.catalog_scores(histories).clone()
        scores[:, 0] = float("-inf")
        top = scores.topk(min(self.CATEGORY_TOP_ITEMS, self.n_items), dim=1).indices
        rank_weights = 1.0 / torch.arange(1, top.shape[1] + 1, dtype=torch.float32)
        return torch.einsum("r,brc->bc", rank_weights, self.item_category_weights[top])

    def predict_rating(self, histories: list[np.ndarray], items: np.ndarray) -> torch.Tensor:
        return self.statistics.item_rating_means[torch.as_tensor(items, dtype=torch.long)]
