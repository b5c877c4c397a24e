"""The package's layout rules (docs/architecture.md), checked on the source: a stage never
imports the synthetic generator, core imports no stage, and no module grows past 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "workflow" / "myoflow"
STAGES = ("ingest", "landmarks", "segment", "measure", "cohort")
MAX_LINES = 500


def imported_modules(path: Path) -> set[str]:
    """Every myoflow module a file imports (``from myoflow.x import y`` gives myoflow.x and
    myoflow.x.y: y may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "myoflow"}


def modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (PACKAGE / folder).rglob("*.py"))


def test_only_the_entry_points_sit_at_the_top_of_the_package():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py"]
    for stage in (*STAGES, "core", "synth", "commands"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage


def test_no_stage_and_nothing_in_core_imports_the_generator():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in imported_modules(path) if name.startswith("myoflow.synth")
        )
        for path in modules("core", *STAGES)
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_core_imports_no_stage():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name
            for name in imported_modules(path)
            if name.split(".")[1:2] and name.split(".")[1] in (*STAGES, "synth", "commands")
        )
        for path in modules("core")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_no_module_is_over_500_lines():
    lengths = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}
