"""YAML for configs, bounded: a size limit, no duplicate keys, and no alias expansion beyond what a config needs.

`yaml.safe_load` builds nothing dangerous, but a 1.4 KB file of nested aliases ("billion laughs") expands to
billions of values once anything walks it (validation, a deep copy, a dump). The node graph is measured before any
value is built, so such a file is refused in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import yaml

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
