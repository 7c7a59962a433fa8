"""The layout's rules, read from the imports: entrypoints resolve the stack, the library below takes connections."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "churn_platform"
# Who may import what: a package on the left never imports one on the right (directly or by a submodule).
FORBIDDEN = {
    "data": ("stack", "features", "model", "training", "serving", "experiments", "monitoring", "cli"),
    "features": ("stack", "model", "training", "serving", "experiments", "monitoring", "cli"),
    "model": ("stack", "training", "serving", "experiments", "monitoring", "cli"),
    "training": ("stack", "serving", "experiments", "monitoring", "cli"),
    "experiments": ("stack", "training", "serving", "monitoring", "cli"),
    "monitoring": ("stack", "serving", "cli"),
    "simulation": ("stack", "cli"),
    "serving": ("stack", "training", "cli"),
    "db": ("stack", "cli"),
    "connections": ("stack", "cli"),
    "settings": ("stack", "cli"),
}


def imported_modules(path: Path) -> set[str]:
    """Every churn_platform module a file imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("churn_platform.")}


def library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def violations(files: list[Path], package: Path = PACKAGE) -> list[str]:
    """`<file> imports churn_platform.<package>` for each forbidden package a file imports, once, sorted."""
    broken = set()
    for path in files:
        top = path.relative_to(package).parts[0].removesuffix(".py")
        for module in imported_modules(path):
            target = module.split(".")[1]
            if target in FORBIDDEN.get(top, ()):
                broken.add(f"{path.relative_to(package)} imports churn_platform.{target}")
    return sorted(broken)


def test_the_library_below_the_entrypoints_never_imports_the_stack_or_upwards() -> None:
    assert violations(library_files()) == []


def test_a_forbidden_import_is_reported(tmp_path: Path) -> None:
    # Given a serving module that asks the stack for a URL and reaches into training
    bad = tmp_path / "serving" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from churn_platform import stack\nfrom churn_platform.training.registry import CHAMPION\n")

    # Then both imports are named
    assert violations([bad], tmp_path) == [
        "serving/bad.py imports churn_platform.stack",
        "serving/bad.py imports churn_platform.training",
    ]
