"""model_server is a generic TF Serving-compatible server: it imports no other project package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_packages(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_model_server_imports_no_other_project_package():
    project = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"model_server"}
    assert {"uic", "devkit"} <= project  # the scan sees the project's packages
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & project)
                 for path in sorted((ROOT / "model_server").glob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}
