"""The import graph, read from the source (ast), function-level imports included: no cycle; the runtime layer
imports neither side; the service imports only the runtime layer; a stage never imports another stage."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from benchmarks.common import ROOT
from pipeline import STAGES

PACKAGES = ("runtime", "pipeline", "service", "benchmarks")
TOP_MODULES = ("application",)  # application.py: what gunicorn imports
RUNNERS = ("pipeline.run", "pipeline.__main__")  # they call every stage in turn


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of the project: dotted name -> file."""
    modules = {name: root / f"{name}.py" for name in TOP_MODULES if (root / f"{name}.py").is_file()}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports anywhere in its file (module level, functions, branches)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pipeline import acquire` imports the module pipeline.acquire; `from x import name` imports x.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import pipeline.x.y` where only pipeline.x is ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]], stages: tuple[str, ...] = STAGES) -> list[str]:
    """Imports that break the layering, as 'importer -> imported (rule)'."""
    stage_modules = {f"pipeline.{s}" for s in stages}
    out = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            target_top = target.split(".")[0]
            if top == "runtime" and target_top != "runtime":
                out.append(f"{module} -> {target} (the runtime layer imports only itself)")
            elif top in ("service", "application") and target_top not in ("runtime", "service"):
                out.append(f"{module} -> {target} (the service imports only the runtime layer)")
            elif module in stage_modules and target in stage_modules:
                out.append(f"{module} -> {target} (a stage never imports another stage)")
            elif top == "pipeline" and module not in stage_modules | set(RUNNERS) and \
                    target in stage_modules | set(RUNNERS):
                out.append(f"{module} -> {target} (a stage's helper never imports a stage)")
    return out


def test_the_project_has_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    assert {"runtime.extractor", "pipeline.acquire", "service.searcher", "application"} <= set(graph)
    assert find_cycle(graph) is None


def test_service_imports_only_the_runtime_layer_and_stages_only_their_helpers() -> None:
    graph = import_graph(ROOT)
    assert layer_violations(graph) == []
    assert "runtime.extractor" in graph["service.searcher"] and "runtime.products" in graph["service.searcher"]
    for stage in STAGES:
        assert any(t.startswith("runtime.") for t in graph[f"pipeline.{stage}"]), stage


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


def test_the_checks_find_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {
        "runtime/a.py": "from runtime.b import B\n",
        "runtime/b.py": "B = 1\n\ndef later():\n    from runtime import a\n    return a\n",
    })
    assert find_cycle(import_graph(root)) in (["runtime.a", "runtime.b", "runtime.a"],
                                              ["runtime.b", "runtime.a", "runtime.b"])


@pytest.mark.parametrize("files, expected", [
    ({"service/search.py": "def f():\n    from pipeline.index import exact_top_k\n", "pipeline/index.py": ""},
     "service.search -> pipeline.index (the service imports only the runtime layer)"),
    ({"pipeline/finetune.py": "from pipeline import acquire\n", "pipeline/acquire.py": ""},
     "pipeline.finetune -> pipeline.acquire (a stage never imports another stage)"),
    ({"pipeline/index.py": "from .vectorize import load\n", "pipeline/vectorize.py": ""},
     "pipeline.index -> pipeline.vectorize (a stage never imports another stage)"),
    ({"pipeline/features.py": "import pipeline.finetune\n", "pipeline/finetune.py": ""},
     "pipeline.features -> pipeline.finetune (a stage's helper never imports a stage)"),
    ({"runtime/topk.py": "from pipeline import storage\n", "pipeline/storage.py": ""},
     "runtime.topk -> pipeline.storage (the runtime layer imports only itself)"),
    ({"application.py": "from pipeline import cli\n", "pipeline/cli.py": ""},
     "application -> pipeline.cli (the service imports only the runtime layer)"),
], ids=["service-to-stage", "stage-to-stage", "relative-stage-import", "helper-to-stage", "runtime-up", "app-entry"])
def test_the_checks_find_each_forbidden_import(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert layer_violations(import_graph(write_tree(tmp_path, files))) == [expected]
