"""The base of every config schema: unknown keys refused, numbers finite, booleans not read as numbers.

Kept apart from `config` so that each model's file can define its own schema (`ModelSection`) without importing
the whole configuration.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit


class Section(BaseModel):
    # Numbers must be finite: an infinite learning rate or a NaN bound is a typo, not a setting. The docstring under
    # each field is its description in the README's config reference (scripts/config_reference.py).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value, info: ValidationInfo):
        """pydantic reads `true` as 1 for an int field; `epochs: true` is a mistake, not one epoch."""
        field = cls.model_fields.get(info.field_name)
        if field is not None and _holds_boolean(value) and not _admits_boolean(field.annotation):
            raise ValueError("expected a number or text, not a boolean")
        return value


def _holds_boolean(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


def _admits_boolean(annotation) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_admits_boolean(argument) for argument in typing.get_args(annotation))


class ModelSection(Section):
    """Base of every model's own schema: each model class names its subclass as `config_class`."""

    name: str
    """Which model (the registry's names: see the model list below)."""
    label: str | None = None
    """The model's row name in a comparison (default: its name)."""

    @property
    def display_name(self) -> str:
        return self.label or self.name
