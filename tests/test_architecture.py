"""The layout's rules, checked on the source: no import cycles, no orchestration in the stages,
the release format free of torch and pipeline code, no ``assert`` guarding production code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"blurset": "blurset", "blurset.pipeline": "pipeline", "blurset.model": "model",
            "blurset.annotation": "annotation"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        root = REPO / folder
        files = root.glob("*.py") if package == "blurset" else root.rglob("*.py")
        for f in files:
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = f
    return mods


MODULES = _modules()


def _imports(path: Path, *, module_level: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_source_tree_is_what_the_checks_read():
    assert "blurset.pipeline.stages.ingest" in MODULES and "blurset.model.dpn" in MODULES
    assert len(MODULES) > 60


def test_no_import_cycle_at_module_level():
    graph = {m: {d for d in _imports(f, module_level=True) if d in MODULES and d != m}
             for m, f in MODULES.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if m.startswith(("blurset.pipeline.stages",
                                                           "blurset.pipeline.release"))))
def test_stages_and_release_code_import_no_orchestration_or_ui(module):
    imported = {name.split(".")[0] for name in _imports(MODULES[module], module_level=False)}
    assert not imported & {"prefect", "click", "tqdm"}, module


def test_the_release_format_is_pyarrow_only():
    imported = {name.split(".")[0] for name in
                _imports(MODULES["blurset.model.release_format"], module_level=False)}
    assert not imported & {"torch", "torchvision", "numpy", "PIL"}
    assert not any(n.startswith("blurset.pipeline") for n in
                   _imports(MODULES["blurset.model.release_format"], module_level=False))


def test_no_assert_guards_in_production_code():
    found = [f"{m}:{node.lineno}" for m, f in MODULES.items()
             for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
             if isinstance(node, ast.Assert)]
    assert found == []


def test_every_package_folder_is_listed_in_pyproject():
    import tomllib
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, f in MODULES.items() if f.name == "__init__.py"}
    assert packages <= listed, sorted(packages - listed)
