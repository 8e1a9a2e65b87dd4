"""Reading config files: bounded YAML, `--set` overrides, one-line validation errors, paths resolved and checked.

The YAML is bounded: a size limit, no duplicate keys, and no alias expansion beyond what a config needs.

`yaml.safe_load` builds nothing dangerous, but a 1.4 KB file of nested aliases ("billion laughs") expands to
billions of values once anything walks it (validation, a deep copy, a dump). The node graph is measured before any
value is built, so such a file is refused in milliseconds.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import PipelineInputError, shorten

MAX_CONFIG_BYTES = 1 << 20
# Values (scalars, lists, mappings) the file may expand to, aliases followed: the largest shipped config has ~200.
MAX_EXPANDED_VALUES = 100_000


class YamlProblem(ValueError):
    """Text that is not an acceptable config YAML; the message says where."""


class _BoundedLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges a mapping; keys after it may override what it brings
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    mark = key_node.start_mark
                    raise YamlProblem(f"line {mark.line + 1}, column {mark.column + 1}: duplicate key {shorten(key)}")
                seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str):
    """The value of one YAML document, or `YamlProblem` naming the line."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_EXPANDED_VALUES:
            raise YamlProblem(f"expands to {size:,} values through aliases (at most {MAX_EXPANDED_VALUES:,})")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YamlProblem(f"{where}YAML syntax error: {problem}") from None
    except RecursionError:
        raise YamlProblem("nested too deeply, or an alias refers to itself") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded (each shared node measured once)."""
    known = sizes.get(id(node))
    if known is not None:
        if known < 0:
            raise YamlProblem("an alias refers to its own parent (a recursive structure)")
        return known
    sizes[id(node)] = -1
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def read_yaml(path: Path):
    """A config file's YAML value; every problem is a `PipelineInputError` naming the file (and line)."""
    if not path.is_file():
        raise PipelineInputError(f"{path}: config file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise PipelineInputError(f"{path}: {size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,} bytes")
    try:
        return parse_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise PipelineInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except YamlProblem as err:
        raise PipelineInputError(f"{path}: {err}") from None


def dump_yaml(value) -> str:
    return yaml.safe_dump(value, sort_keys=False)


def apply_override(raw: dict, override: str) -> None:
    key_path, sep, text = override.partition("=")
    if not sep or not key_path.strip():
        raise PipelineInputError(f"--set {shorten(override)}: expected section.key=value")
    keys = key_path.strip().split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise PipelineInputError(f"--set {shorten(override)}: {key} is not a section")
        node = child
    try:
        node[keys[-1]] = parse_yaml(text) if text.strip() else None
    except ValueError:
        node[keys[-1]] = text


# Written before key paths of a section validated on its own (a model section, chosen by its name): the enclosing
# error replaces it with the section's own path, so every message names full key paths.
SECTION_PATH = "\x1f"


def describe_errors(
    err: ValidationError, schema: type[BaseModel], owner: str | None = None, moved: dict[str, str] | None = None
) -> str:
    """pydantic's errors as one line: key paths, the nearest valid key for a typo, echoed values cut short.

    With `owner` (e.g. "model lstm"), `schema` is a section validated on its own and its key paths are written
    relative to it (see `SECTION_PATH`); `moved` maps old key paths to their new place.
    """
    at = SECTION_PATH if owner else ""
    messages = []
    for problem in err.errors():
        loc = list(problem["loc"])
        key_path = ".".join(str(part) for part in loc)
        if problem["type"] == "extra_forbidden":
            if moved and key_path in moved:
                messages.append(f"{at}{key_path} has moved to {moved[key_path]}")
                continue
            hint = _nearest_key(loc, schema)
            unknown = f"{at}{key_path} is not a key of {owner}" if owner else f"unknown key {key_path}"
            messages.append(unknown + (f" (did you mean {at}{hint}?)" if hint else ""))
        elif problem["type"] == "missing":
            messages.append(f"missing required key {at}{key_path}")
        else:
            value = problem.get("input")
            shown = "" if isinstance(value, dict) else f" (got {shorten(value)})"
            message = problem["msg"].removeprefix("Value error, ")
            if SECTION_PATH in message:  # from a section validated on its own: its paths are under this one
                messages.append(message.replace(SECTION_PATH, f"{key_path}."))
            else:  # a check across keys names them itself
                messages.append(f"{at}{key_path}: {message}{shown}" if key_path else message)
    return "; ".join(messages)


def _nearest_key(loc: list, schema: type[BaseModel]) -> str | None:
    """The closest valid key at the same level as an unknown key, as a full key path."""
    model = schema
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        model = _section_type(annotation)
        if model is None:
            return None
    matches = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
    return ".".join([*map(str, loc[:-1]), matches[0]]) if matches else None


def _section_type(annotation) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def resolve_paths(config, base_dir: Path, check: bool) -> None:
    """Relative paths against the config file's folder; data files and an encoder folder must exist."""
    def resolve(value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())

    for key, section in (("interactions", config.data.interactions), ("items", config.data.items), ("tags", config.data.tags)):
        if section is None:
            continue
        section.path = resolve(section.path)
        if check and not Path(section.path).is_file():
            raise PipelineInputError(f"data.{key}.path: file not found: {section.path}")
    config.encoder.cache_dir = resolve(config.encoder.cache_dir)
    config.data.shards.dir = resolve(config.data.shards.dir)
    encoder_model = config.encoder.model
    if encoder_model.startswith((".", "/", "~")):
        config.encoder.model = resolve(encoder_model)
        if check and not Path(config.encoder.model).is_dir():
            raise PipelineInputError(f"encoder.model: model folder not found: {config.encoder.model}")
    config.output.root = resolve(config.output.root)
    if config.logging.tensorboard_dir is not None:
        config.logging.tensorboard_dir = resolve(config.logging.tensorboard_dir)
    config.nightly.root = resolve(config.nightly.root or str(Path(config.output.root) / f"{config.name}-nightly"))
    for key, folder in (("output.root", config.output.root), ("nightly.root", config.nightly.root)):
        if check and Path(folder).exists() and not Path(folder).is_dir():
            raise PipelineInputError(f"{key}: exists and is not a folder: {folder}")
