"""The package's modules with their line counts and what each imports from the package (lazy imports in brackets).

    .venv/bin/python scripts/module_map.py [SRC_FOLDER]    # default: src/pipeline of this checkout
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 400


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(tree: ast.Module, package: str) -> tuple[set[str], set[str]]:
    """(imported at module level, imported inside functions) names of the package's modules."""
    top, lazy = set(), set()
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == package:  # from pipeline import faults
            names = [f"{package}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == package]
        (top if id(node) in top_level else lazy).update(names)
    return top, lazy - top


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "pipeline")
    rows = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        top, lazy = package_imports(ast.parse(text), root.name)
        short = lambda names: sorted(name.removeprefix(f"{root.name}.") for name in names)  # noqa: E731
        rows.append((module_name(path, root), len(text.splitlines()), short(top), short(lazy)))
    width = max(len(name) for name, *_ in rows)
    for name, lines, top, lazy in rows:
        flag = " OVER" if lines > LIMIT else ""
        lazy_text = f" [{', '.join(lazy)}]" if lazy else ""
        print(f"{name:<{width}} {lines:>4}{flag}  {', '.join(top)}{lazy_text}")
    print(f"{len(rows)} modules, {sum(row[1] for row in rows)} lines, largest {max(row[1] for row in rows)}")


if __name__ == "__main__":
    main()
