"""Classic interest-category classifiers (the seed design's non-neural baselines) behind the model interface.

Features of a history: its recency-decayed category histogram and, when text embeddings are available, its
recency-decayed mean item text embedding. Target: the category of the next interaction (an item with several
categories gives one sample per category, weighted 1/count). Items are ranked by
P(item | user) = sum over categories c of P(c | user) * P(item | c), P(item | c) being the item's share of the training
events in c: popularity re-weighted by the predicted interests, instead of every item of a genre ranked alike.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.prepare import PreparedData
from pipeline.errors import PipelineInputError
from pipeline.models.base import ScoringModel, recency_weights

# Training samples per user: the most recent positions of their training sequence.
SAMPLES_PER_USER = 20


class CategoryClassifier(ScoringModel):
    def __init__(
        self, kind: str, n_items: int, category_matrix: np.ndarray, max_length: int, half_life: float,
        item_text_embeddings: np.ndarray | None, seed: int,
    ):
        super().__init__(n_items, category_matrix, max_length)
        self.kind, self.half_life, self.seed = kind, half_life, seed
        width = 0 if item_text_embeddings is None else item_text_embeddings.shape[1]
        self.register_buffer("item_text_embeddings", torch.as_tensor(item_text_embeddings if width else np.zeros((n_items + 1, 0)), dtype=torch.float32))
        n_categories = category_matrix.shape[1]
        # Logistic regression lives in these buffers (so it saves); a random forest cannot be saved without pickle.
        self.register_buffer("coefficients", torch.zeros(n_categories, n_categories + width))
        self.register_buffer("intercepts", torch.zeros(n_categories))
        self.forest = None  # sklearn's RandomForestClassifier once fitted

    def features(self, histories: list[np.ndarray]) -> torch.Tensor:
        weights = recency_weights(histories, self.max_length, self.half_life, self.n_items)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return torch.cat([weights @ self.item_category_weights, weights @ self.item_text_embeddings], dim=1)

    def fit_statistics(self, data: PreparedData) -> None:
        super().fit_statistics(data)
        histories, targets = [], []
        for sequence in data.sequences().values():
            for position in range(max(1, len(sequence) - SAMPLES_PER_USER), len(sequence)):
                histories.append(sequence[:position])
                targets.append(sequence[position])
        if not histories:
            raise PipelineInputError("data: no user has two training events; the category classifiers need some")
        features = self.features(histories).numpy()
        rows, labels, sample_weights = [], [], []
        for row, item in enumerate(targets):
            categories = data.item_categories[item]
            rows.extend([row] * len(categories))
            labels.extend(categories.tolist())
            sample_weights.extend([1.0 / len(categories)] * len(categories))
        features, labels, sample_weights = features[rows], np.array(labels), np.array(sample_weights)
        if self.kind == "logistic_regression":
            self._store_logistic(features, labels, sample_weights)
        else:
            from sklearn.ensemble import (
                RandomForestClassifier,  # scikit-learn loads in ~2 s: only when used
            )

            self.forest = RandomForestClassifier(n_estimators=100, min_samples_leaf=3, n_jobs=-1, random_state=self.seed)
            self.forest.fit(features, labels, sample_weight=sample_weights)

    def _store_logistic(self, features: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray) -> None:
        """Fit, then keep the model as softmax logits over all categories (unseen classes get none of the mass)."""
        classes = np.unique(labels)
        coefficients = np.zeros((len(classes), features.shape[1]), dtype=np.float32)
        intercepts = np.zeros(len(classes), dtype=np.float32)
        if len(classes) > 1:
            from sklearn.linear_model import LogisticRegression

            classifier = LogisticRegression(max_iter=500, C=1.0).fit(features, labels, sample_weight=sample_weights)
            if len(classes) == 2:  # scikit-learn keeps one logit z for two classes: softmax([-z/2, z/2]) = sigmoid(z)
                coefficients = np.stack([-classifier.coef_[0] / 2, classifier.coef_[0] / 2])
                intercepts = np.array([-classifier.intercept_[0] / 2, classifier.intercept_[0] / 2])
            else:
                coefficients, intercepts = classifier.coef_, classifier.intercept_
        self.coefficients.zero_()
        self.intercepts.fill_(-1e4)
        self.coefficients[classes] = torch.as_tensor(coefficients, dtype=torch.float32)
        self.intercepts[classes] = torch.as_tensor(intercepts, dtype=torch.float32)

    def predict_category(self, histories: list[np.ndarray]) -> torch.Tensor:
        features = self.features(histories)
        if self.kind == "logistic_regression":
            return torch.softmax(features @ self.coefficients.T + self.intercepts, dim=1)
        if self.forest is None:
            raise PipelineInputError("random_forest: this model was not fitted in this process (forests are not saved)")
        probabilities = torch.zeros(len(histories), self.item_category_weights.shape[1])
        probabilities[:, self.forest.classes_] = torch.as_tensor(self.forest.predict_proba(features.numpy()), dtype=torch.float32)
        return probabilities

    def catalog_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        counts, category_events = self.statistics.item_counts, self.statistics.category_prior
        interest_per_event = self.predict_category(histories) / category_events.clamp(min=1e-12)
        return self.break_ties_by_popularity(counts * (interest_per_event @ self.item_category_weights.T))
