"""Declared dependencies are exactly what the code imports (plus the data-only packages).

Every third-party module imported by the installed packages (``streamscribe/``, ``schemas/``,
``producers/``, ``processors/``, ``consumers/``) must come from a distribution listed in
``[project] dependencies``; every listed distribution must be imported there, or be one of
the few marked in ``pyproject.toml`` as "not imported" (model files, a driver).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("streamscribe", "schemas", "producers", "processors", "consumers")
NOT_IMPORTED_MARK = "# not imported:"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _canonical(re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0])


def _declared() -> tuple[set[str], set[str]]:
    text = (ROOT / "pyproject.toml").read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    marked = {
        _requirement_name(line.strip().strip('",'))
        for line in text.splitlines()
        if NOT_IMPORTED_MARK in line
    }
    return {_requirement_name(d) for d in deps}, marked


def _imported_top_level() -> set[str]:
    names: set[str] = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "streamscribe"}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    table = packages_distributions()
    return {m: {_canonical(d) for d in table.get(m, [])} for m in modules}


def test_every_imported_module_is_declared() -> None:
    declared, _ = _declared()
    undeclared = {
        m: sorted(dists)
        for m, dists in _distributions(_imported_top_level()).items()
        if not dists & declared
    }
    assert undeclared == {}


def test_every_declared_dependency_is_imported_or_marked() -> None:
    declared, marked = _declared()
    imported = set().union(*_distributions(_imported_top_level()).values())
    assert sorted(declared - imported - marked) == []
    assert sorted(marked & imported) == []  # a "not imported" mark that is not true
