"""Item side features beside text: numeric columns standardised, categorical columns as vocabulary codes.

Both are item-level facts of the catalog (not of the log), so they carry nothing of the evaluation period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger("pipeline")

# A label shared by fewer items says nothing an item's own id does not: it goes to the unknown bucket.
MIN_ITEMS_PER_LABEL = 2
# Standardised values are clipped here, so one absurd price cannot dominate a representation.
CLIP = 5.0
# Numeric features as labels (for the content baselines): quantile bands, so "a similar price" is a shared label.
NUMERIC_BANDS = 5


@dataclass
class ItemFeatures:
    """Per item index (row 0: padding, all zero): numeric values and categorical codes (0: unknown or missing)."""

    numeric: np.ndarray  # [n_items + 1, numeric columns] float32, standardised, with a missing flag per sparse column
    categorical: np.ndarray  # [n_items + 1, categorical features] int64
    categorical_sizes: list[int]  # codes per categorical feature, the unknown bucket 0 included
    numeric_names: list[str]
    categorical_names: list[str]
    numeric_bands: np.ndarray  # [n_items + 1, numeric features] int64: quantile band 1..NUMERIC_BANDS, 0 = missing

    def label_matrix(self) -> sp.csr_matrix:
        """[n_items + 1, labels] one column per categorical label and per numeric band; each item's row holds its
        known labels with equal weight and unit norm (a row of zeros: no known label)."""
        code_blocks = [self.categorical[:, column] for column in range(self.categorical.shape[1])]
        code_blocks += [self.numeric_bands[:, column] for column in range(self.numeric_bands.shape[1])]
        sizes = list(self.categorical_sizes) + [NUMERIC_BANDS + 1] * self.numeric_bands.shape[1]
        rows, columns, offset = [], [], 0
        for codes, size in zip(code_blocks, sizes):
            known = np.flatnonzero(codes)
            rows.append(known)
            columns.append(offset + codes[known] - 1)
            offset += size - 1
        n_rows = len(self.categorical)
        rows_all = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        columns_all = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
        per_row = np.bincount(rows_all, minlength=n_rows)
        values = 1.0 / np.sqrt(per_row[rows_all].astype(np.float32))
        return sp.csr_matrix((values.astype(np.float32), (rows_all, columns_all)), shape=(n_rows, max(offset, 1)))

    @property
    def shape(self) -> dict:
        """What a stored model needs to rebuild its feature buffers (`serving.catalog_record`)."""
        return {"numeric_width": int(self.numeric.shape[1]), "categorical_sizes": list(self.categorical_sizes)}

    @classmethod
    def empty(cls, n_items: int, numeric_width: int, categorical_sizes: list[int]) -> ItemFeatures:
        """Zero buffers of a stored model's feature shapes (its weights overwrite them)."""
        return cls(
            np.zeros((n_items + 1, numeric_width), dtype=np.float32),
            np.zeros((n_items + 1, len(categorical_sizes)), dtype=np.int64),
            list(categorical_sizes), [], [], np.zeros((n_items + 1, 0), dtype=np.int64),
        )


def item_features(items: pd.DataFrame, numeric: list[str], categorical: list[str]) -> ItemFeatures | None:
    """The configured feature columns of the (filtered) items table, in item-index order; None without any."""
    if not numeric and not categorical:
        return None
    n_rows = len(items) + 1
    columns, names = [], []
    bands = np.zeros((n_rows, len(numeric)), dtype=np.int64)
    for position, name in enumerate(numeric):
        values = items[name].to_numpy(dtype=np.float64)
        missing = np.isnan(values)
        present = values[~missing]
        mean = present.mean() if len(present) else 0.0
        spread = present.std() if len(present) > 1 else 0.0
        standardised = np.clip((np.where(missing, mean, values) - mean) / (spread or 1.0), -CLIP, CLIP)
        columns.append(standardised)
        names.append(name)
        if len(present):
            edges = np.quantile(present, np.linspace(0, 1, NUMERIC_BANDS + 1)[1:-1])
            bands[1:, position] = np.where(missing, 0, np.searchsorted(edges, values, side="right") + 1)
        if missing.any():
            log.info("item feature %s: %d of %d items have no value (mean used, flagged)", name, int(missing.sum()), len(values))
            columns.append(missing.astype(np.float64))
            names.append(f"{name} missing")
    numeric_matrix = np.zeros((n_rows, len(columns)), dtype=np.float32)
    if columns:
        numeric_matrix[1:] = np.stack(columns, axis=1)
    codes = np.zeros((n_rows, len(categorical)), dtype=np.int64)
    sizes = []
    for column, name in enumerate(categorical):
        labels = items[name]
        counts = labels.value_counts()
        vocabulary = sorted(counts.index[counts >= MIN_ITEMS_PER_LABEL])
        index = {label: code for code, label in enumerate(vocabulary, start=1)}
        codes[1:, column] = labels.map(index).fillna(0).to_numpy(dtype=np.int64)
        sizes.append(len(vocabulary) + 1)
        log.info(
            "item feature %s: %d labels shared by >= %d items; %d items in the unknown bucket",
            name, len(vocabulary), MIN_ITEMS_PER_LABEL, int((codes[1:, column] == 0).sum()),
        )
    return ItemFeatures(numeric_matrix, codes, sizes, names, list(categorical), bands)
