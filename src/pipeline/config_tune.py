"""The `tune` section: the search space of `python -m pipeline tune` and its bounds.

    tune:
      trials: 20
      space:
        train.learning_rate: {low: 0.0005, high: 0.005, log: true}
        model.dropout: {low: 0.0, high: 0.5}
        model.hidden_size: {choices: [32, 64, 128]}

A key of the space is a key path of the model or train section; whether a range draws integers or real numbers
follows the type of the setting it replaces (`train.epochs` draws integers).
"""

from __future__ import annotations

import difflib

from pydantic import Field, model_validator

from pipeline.schema import Section

TUNABLE_SECTIONS = ("model", "train")


class TuneParameter(Section):
    low: float | None = None
    """The range's lower end (with `high`)."""
    high: float | None = None
    """The range's upper end, included."""
    log: bool = False
    """Draw the range on a log scale (learning rates, weight decays); needs low > 0."""
    step: float | None = Field(None, gt=0)
    """Draw only low + k * step."""
    choices: list[float | int | str | bool] | None = None
    """The values to choose from, instead of a range."""

    @model_validator(mode="after")
    def _range_or_choices(self):
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low, high, log, step), not both")
            if not self.choices:
                raise ValueError("choices: empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log: the range must be above 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class TuneConfig(Section):
    space: dict[str, TuneParameter] = Field(default_factory=dict)
    """Key path -> range or choices (see above): the settings each trial draws; every other setting is the config's."""
    trials: int = Field(20, ge=1)
    """Trials in all (an interrupted search resumed with `--resume` counts the finished ones)."""
    timeout: float | None = Field(None, gt=0)
    """Stop starting trials after this many seconds."""
    pruning: bool = True
    """Stop a trial at an epoch whose validation score is below the median of earlier trials at that epoch."""
    startup_trials: int = Field(5, ge=1)
    """Trials drawn at random before TPE models the space, and before pruning starts."""


def check_space(space: dict[str, TuneParameter], sections: dict[str, Section]) -> None:
    """Every key of `space` names a setting of `sections` (model, train), with a suggestion where it does not."""
    for key_path, parameter in space.items():
        section_name, _, key = key_path.partition(".")
        if section_name not in TUNABLE_SECTIONS or not key:
            raise ValueError(f"tune.space: {key_path!r} is not a key path of {' or '.join(TUNABLE_SECTIONS)} "
                             "(e.g. train.learning_rate)")
        node = sections[section_name]
        parts = key.split(".")
        for depth, part in enumerate(parts):
            fields = type(node).model_fields if isinstance(node, Section) else {}
            if part not in fields:
                nearest = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
                hint = f" (did you mean {'.'.join([section_name, *parts[:depth], nearest[0]])}?)" if nearest else ""
                raise ValueError(f"tune.space: {key_path} is not a setting of the {section_name} section{hint}")
            node = getattr(node, part)
        if isinstance(node, Section):
            raise ValueError(f"tune.space: {key_path} is a section; name one of its keys")
        if parameter.choices is not None:
            continue
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise ValueError(f"tune.space: {key_path} is not a number; give choices for it")
        if isinstance(node, int) and not all(float(value).is_integer() for value in (parameter.low, parameter.high, parameter.step or 1)):
            raise ValueError(f"tune.space: {key_path} takes whole numbers; give low, high (and step) as integers")
