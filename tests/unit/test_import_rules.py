"""The folder rules of ``docs/architecture.md``, checked from the imports (every ``import``
statement in a module, function-level ones included).

- ``streamscribe.core`` (the kernel) imports nothing of ours outside itself;
- ``schemas/`` (the contract) imports only itself and the kernel's leaf ``core.errors``;
- a service (``producers/``, ``processors/``, ``consumers/``) imports only itself,
  ``schemas/`` and the kernel: never another service, never the CLI;
- every exception class of the project is defined in ``streamscribe/core/errors.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "streamscribe.core": ROOT / "streamscribe" / "core",
    "streamscribe.schemas": ROOT / "schemas",
    "streamscribe.producers": ROOT / "producers",
    "streamscribe.processors": ROOT / "processors",
    "streamscribe.consumers": ROOT / "consumers",
    "streamscribe": ROOT / "streamscribe",
}
SERVICES = ("streamscribe.producers", "streamscribe.processors", "streamscribe.consumers")
ALLOWED: dict[str, tuple[str, ...]] = {
    "streamscribe.core": ("streamscribe.core",),
    "streamscribe.schemas": ("streamscribe.schemas", "streamscribe.core.errors"),
    **{s: (s, "streamscribe.schemas", "streamscribe.core") for s in SERVICES},
}


def _modules(package: str) -> list[Path]:
    return sorted(FOLDERS[package].rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use the full name")
    return out


def _ours(name: str) -> bool:
    return name == "streamscribe" or name.startswith("streamscribe.")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    bad = []
    for path in _modules(package):
        for line, name in _imports(path):
            if _ours(name) and not any(_within(name, a) for a in ALLOWED[package]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def test_services_never_import_generic_top_level_names() -> None:
    """Our folders are installed as ``streamscribe.*``; ``import processors`` would be a bug."""
    bad = []
    for package in FOLDERS:
        for path in _modules(package):
            for line, name in _imports(path):
                if name.split(".")[0] in {"schemas", "producers", "processors", "consumers"}:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checker itself: a service importing another service or the CLI is reported."""
    mod = tmp_path / "m.py"
    mod.write_text(
        "from streamscribe.consumers.store import X\ndef f():\n    import streamscribe.cli\n"
    )
    names = [n for _, n in _imports(mod)]
    assert names == ["streamscribe.consumers.store.X", "streamscribe.cli"]
    allowed = ALLOWED["streamscribe.processors"]
    assert [n for n in names if not any(_within(n, a) for a in allowed)] == names


def test_every_exception_class_is_in_the_one_tree() -> None:
    errors = FOLDERS["streamscribe.core"] / "errors.py"
    outside = []
    for package in FOLDERS:
        for path in _modules(package):
            if path == errors:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception"))))
                    or (isinstance(b, ast.Attribute) and b.attr.endswith(("Error", "Exception")))
                    for b in node.bases
                ):
                    outside.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert outside == []
