"""The package layering: ``tracing`` and ``editing`` are independent method packages below the workflows.

``diffloc.tracing`` must not import ``diffloc.editing`` or ``diffloc.eval``, and ``diffloc.editing`` must not
import ``diffloc.tracing`` or ``diffloc.eval``; neither imports the workflows, the report or the CLI. Imports are
read from the source with ``ast`` (top-level, function-level and ``TYPE_CHECKING`` imports alike), relative
imports resolved against the importing module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "diffloc"
ABOVE = ("diffloc.workflows", "diffloc.report", "diffloc.cli", "diffloc.demo")
FORBIDDEN = {
    "tracing": ("diffloc.editing", "diffloc.eval", *ABOVE),
    "editing": ("diffloc.tracing", "diffloc.eval", *ABOVE),
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names (``from a import b`` gives ``a`` and ``a.b``)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _violations(package: str) -> list[str]:
    return sorted(
        f"{path.relative_to(SRC)} imports {name}"
        for path in (SRC / package).rglob("*.py")
        for name in imported_modules(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package])
    )


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_method_packages_do_not_import_each_other_or_eval(package):
    assert _violations(package) == []


def test_the_rule_sees_every_import_form(tmp_path, monkeypatch):
    fake = tmp_path / "diffloc" / "tracing"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import diffloc.eval.suite\n"
        "from ..editing import edit\n"
        "if TYPE_CHECKING:\n    from diffloc.workflows.demo import run_demo\n"
        "def late():\n    from diffloc.eval.scorers import scorer_for\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "diffloc")
    assert _violations("tracing") == [
        "tracing/bad.py imports diffloc.editing",
        "tracing/bad.py imports diffloc.editing.edit",
        "tracing/bad.py imports diffloc.eval.scorers",
        "tracing/bad.py imports diffloc.eval.scorers.scorer_for",
        "tracing/bad.py imports diffloc.eval.suite",
        "tracing/bad.py imports diffloc.workflows.demo",
        "tracing/bad.py imports diffloc.workflows.demo.run_demo",
    ]
