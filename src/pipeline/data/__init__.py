"""Load and prepare behavior logs: readers with column mapping, then dedup, filtering, vocabularies and splits."""

from pipeline.data.load import (
    RawData,
    load_data,
    load_interactions,
    load_items,
    read_table,
)
from pipeline.data.prepare import prepare
from pipeline.data.prepared import TEST, TRAIN, VALID, EvalCases, PreparedData, TrainView

__all__ = [
    "RawData", "load_data", "load_interactions", "load_items", "read_table",
    "EvalCases", "PreparedData", "TrainView", "prepare", "TRAIN", "VALID", "TEST",
]
