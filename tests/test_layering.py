"""The layering `flows -> tasks -> {storage, vico_synth} -> model` (docs/ARCHITECTURE.md), checked
on every import statement of the source tree (at module level and inside functions), so a lazy
import cannot hide a dependency that points the wrong way (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "model": {"storage", "tasks", "flows", "vico_synth", "prefect", "ray"},
    "storage": {"tasks", "flows", "vico_synth", "prefect", "ray"},
    "vico_synth": {"tasks", "flows", "prefect", "ray"},
    "tasks": {"flows", "prefect"},
}
"""package -> top-level modules its code must never import. `tasks/` drives Ray but holds no Prefect
(the flows are the only Prefect code; `tasks/*.prefect_tasks()` build Prefect tasks lazily, see ALLOWED)."""

ALLOWED = {
    # Prefect task wrappers built on call by the flows (the flow files stay wiring only); imported lazily.
    ("tasks/index.py", "prefect"), ("tasks/vico.py", "prefect"), ("tasks/train_ray.py", "prefect"),
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for mod in sorted(imports_of(path) & FORBIDDEN[package]):
            if (rel, mod) not in ALLOWED:
                bad.append(f"{rel} imports {mod}")
    assert not bad, "layering violated: " + "; ".join(bad)


def test_the_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from flows.cli import app\n    import ray.util\n")
    assert imports_of(f) == {"flows", "ray"}
