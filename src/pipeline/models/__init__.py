"""Model zoo behind one contract (`base.Recommender`); `registry` maps names to models and their config schemas."""

from pipeline.models.base import Catalog, Recommender
from pipeline.models.registry import MODELS, build_model, model_class, register, uses_text

__all__ = ["Catalog", "MODELS", "Recommender", "build_model", "model_class", "register", "uses_text"]
