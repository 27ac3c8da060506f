"""The layering rule, checked: the core never reaches up into the adapters or the orchestration.

``transferops/`` is the core, except ``transferops/cli/`` (the application: it wires flows,
adapters and core for people). Core modules import none of ``flows``, ``tasks``, prefect,
mlflow, dvc or great_expectations, at module level or inside a function. ``tasks`` never
imports ``flows``: data moves CLI -> flow -> tasks -> core, never back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORCHESTRATION = ("prefect", "mlflow", "dvc", "great_expectations")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _modules(folder: str, exclude: str | None = None) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if not (exclude and (ROOT / exclude) in f.parents)]


def _violations(files: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [f"{f.relative_to(ROOT)}:{line} imports {name}" for f in files for line, name in _imports(f)
            if name.split(".")[0] in banned]


def test_the_core_imports_no_adapter_flow_or_orchestration_sdk():
    core = _modules("transferops", exclude="transferops/cli")
    assert len(core) > 15
    assert not _violations(core, ("flows", "tasks", *ORCHESTRATION))


def test_adapters_never_import_flows():
    assert not _violations(_modules("tasks"), ("flows",))


@pytest.mark.parametrize("source,expected", [
    ("import mlflow\n", ["mlflow"]),
    ("def f():\n    from tasks import registry\n", ["tasks"]),
    ("from prefect.events import emit_event\n", ["prefect.events"]),
    ("from transferops.data import scan_dataset\n", []),
])
def test_the_check_sees_imports_at_any_depth(tmp_path, source, expected):
    f = tmp_path / "m.py"
    f.write_text(source)
    assert [n for _, n in _imports(f) if n.split(".")[0] in ("flows", "tasks", *ORCHESTRATION)] == expected
