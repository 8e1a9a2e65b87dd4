"""The README's config reference, generated from the schemas (`pipeline.config` and each model's `config_class`).

    .venv/bin/python scripts/config_reference.py           # rewrite the reference in README.md
    .venv/bin/python scripts/config_reference.py --check   # exit 1 if README.md is not current (tests run this)

Descriptions are the docstrings under the fields; the model sections come from the registry, one table per model.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.config import Config
from pipeline.models.registry import DEFAULT_MODEL, MODELS
from pipeline.schema import ModelSection

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def type_text(annotation) -> str:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(arguments[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in arguments)
    if origin in (typing.Union, types.UnionType):
        kept = [type_text(argument) for argument in arguments if argument is not type(None)]
        return " or ".join(kept) + (" or null" if type(None) in arguments else "")
    if origin in (list, tuple):
        inner = sorted({type_text(argument) for argument in arguments if argument is not Ellipsis})
        return f"{origin.__name__} of {', '.join(inner)}"
    if isinstance(annotation, type) and issubclass(annotation, ModelSection):
        return "model section"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value in ({}, None):
        return "—" if value == {} else "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def section_of(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and not issubclass(candidate, ModelSection):
            return candidate
    return None


def table(schema: type[BaseModel], prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Rows of `schema`'s keys, then the tables of its nested sections."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    nested = []
    for name, field in schema.model_fields.items():
        if name in skip:
            continue
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        default = default_text(field).replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | {type_text(field.annotation)} | {default} | {description} |")
        inner = section_of(field.annotation)
        if inner is not None:
            nested.append((f"{prefix}{name}", inner))
    for path, inner in nested:
        lines += ["", f"#### `{path}`", "", *table(inner, f"{path}.")]
    return lines


def render() -> str:
    lines = [START, "", "Generated from the schemas by `scripts/config_reference.py`; a test checks that it is current.", ""]
    for name, field in Config.model_fields.items():
        lines.append(f"### `{name}`")
        lines.append("")
        inner = section_of(field.annotation)
        if name == "model":
            lines.append(
                f"One model's own keys, chosen by `model.name` (default `{DEFAULT_MODEL}`); a key the model does not read "
                "is an error. `compare.models` entries are model sections too. The models and their keys:"
            )
            for model_name, model_class in MODELS.items():
                doc = (model_class.__doc__ or "").strip().splitlines()
                lines += ["", f"#### `model.name: {model_name}`" + (f": {doc[0]}" if doc else ""), ""]
                lines += table(model_class.config_class, "model.", skip=("name",))
        elif inner is None:
            lines.append(f"`{name}`: {type_text(field.annotation)}, default {default_text(field)}. "
                         + " ".join((field.description or "").split()))
        else:
            lines += table(inner, f"{name}.")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not current")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{README}: no {START} ... {END} block", file=sys.stderr)
        return 1
    current = text[: text.index(START)] + render() + text[text.index(END) + len(END):]
    if args.check:
        if current != text:
            print(f"{README}: the config reference is not current; run scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(current, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
