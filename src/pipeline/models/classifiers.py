"""Classic interest-category classifiers (the seed design's non-neural baselines) behind the model interface.

Features of a history: its recency-decayed category histogram and, when text embeddings are available, its
recency-decayed mean item text embedding. Target: the category of the next interaction (an item with several
categories gives one sample per category, weighted 1/count). Items are ranked by
P(item | user) = sum over categories c of P(c | user) * P(item | c), P(item | c) being the item's share of the training
events in c: popularity re-weighted by the predicted interests, instead of every item of a genre ranked alike.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from pipeline.data.prepared import TrainView
from pipeline.errors import PipelineInputError
from pipeline.models.base import Catalog, ScoringModel, recency_weights
from pipeline.models.content import ProfileSection
from pipeline.schema import ModelSection

# Training samples per user: the most recent positions of their training sequence.
SAMPLES_PER_USER = 20


class LogisticRegressionConfig(ProfileSection):
    name: Literal["logistic_regression"] = "logistic_regression"


class RandomForestConfig(ProfileSection):
    name: Literal["random_forest"] = "random_forest"


class CategoryClassifier(ScoringModel):
    """Shared by the two classifiers: features, the category-to-item scoring; `fit_classifier` is each one's own."""

    reads_text = True

    @classmethod
    def scores_untrained_items(cls, config: ModelSection) -> bool:
        return False  # an item's score is its training count times the user's interest in its categories

    def __init__(self, config: ProfileSection, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.half_life, self.seed = config.decay_half_life, seed
        embeddings = catalog.item_text_embeddings
        width = 0 if embeddings is None else embeddings.shape[1]
        self.register_buffer(
            "item_text_embeddings",
            torch.as_tensor(embeddings if width else np.zeros((catalog.n_items + 1, 0)), dtype=torch.float32),
        )
        n_categories = catalog.n_categories
        # Logistic regression lives in these buffers (so it saves); a random forest cannot be saved without pickle.
        self.register_buffer("coefficients", torch.zeros(n_categories, n_categories + width))
        self.register_buffer("intercepts", torch.zeros(n_categories))
        self.forest = None  # sklearn's RandomForestClassifier once fitted

    def features(self, histories: list[np.ndarray]) -> torch.Tensor:
        weights = recency_weights(histories, self.max_length, self.half_life, self.n_items)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return torch.cat([weights @ self.item_category_weights, weights @ self.item_text_embeddings], dim=1)

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        histories, targets = [], []
        for sequence in train.sequences().values():
            for position in range(max(1, len(sequence) - SAMPLES_PER_USER), len(sequence)):
                histories.append(sequence[:position])
                targets.append(sequence[position])
        if not histories:
            raise PipelineInputError("data: no user has two training events; the category classifiers need some")
        features = self.features(histories).numpy()
        rows, labels, sample_weights = [], [], []
        for row, item in enumerate(targets):
            categories = train.item_categories[item]
            rows.extend([row] * len(categories))
            labels.extend(categories.tolist())
            sample_weights.extend([1.0 / len(categories)] * len(categories))
        self.fit_classifier(features[rows], np.array(labels), np.array(sample_weights))

    def fit_classifier(self, features: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray) -> None:
        raise NotImplementedError

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        counts, category_events = self.statistics.item_counts, self.statistics.category_prior
        interest_per_event = self.predict_category(histories) / category_events.clamp(min=1e-12)
        return counts * (interest_per_event @ self.item_category_weights.T)


class LogisticRegression(CategoryClassifier):
    config_class = LogisticRegressionConfig

    def fit_classifier(self, features: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray) -> None:
        """Fit, then keep the model as softmax logits over all categories (unseen classes get none of the mass)."""
        classes = np.unique(labels)
        coefficients = np.zeros((len(classes), features.shape[1]), dtype=np.float32)
        intercepts = np.zeros(len(classes), dtype=np.float32)
        if len(classes) > 1:
            from sklearn.linear_model import LogisticRegression as Classifier

            classifier = Classifier(max_iter=500, C=1.0).fit(features, labels, sample_weight=sample_weights)
            if len(classes) == 2:  # scikit-learn keeps one logit z for two classes: softmax([-z/2, z/2]) = sigmoid(z)
                coefficients = np.stack([-classifier.coef_[0] / 2, classifier.coef_[0] / 2])
                intercepts = np.array([-classifier.intercept_[0] / 2, classifier.intercept_[0] / 2])
            else:
                coefficients, intercepts = classifier.coef_, classifier.intercept_
        self.coefficients.zero_()
        self.intercepts.fill_(-1e4)
        self.coefficients[classes] = torch.as_tensor(coefficients, dtype=torch.float32)
        self.intercepts[classes] = torch.as_tensor(intercepts, dtype=torch.float32)

    def predict_category(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        return torch.softmax(self.features(histories) @ self.coefficients.T + self.intercepts, dim=1)


class RandomForest(CategoryClassifier):
    config_class = RandomForestConfig

    def fit_classifier(self, features: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray) -> None:
        from sklearn.ensemble import (
            RandomForestClassifier,  # scikit-learn loads in ~2 s: only when used
        )

        self.forest = RandomForestClassifier(n_estimators=100, min_samples_leaf=3, n_jobs=-1, random_state=self.seed)
        self.forest.fit(features, labels, sample_weight=sample_weights)

    def predict_category(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        if self.forest is None:
            raise PipelineInputError("random_forest: this model was not fitted in this process (forests are not saved)")
        probabilities = torch.zeros(len(histories), self.item_category_weights.shape[1])
        forest_probabilities = self.forest.predict_proba(self.features(histories).numpy())
        probabilities[:, self.forest.classes_] = torch.as_tensor(forest_probabilities, dtype=torch.float32)
        return probabilities
