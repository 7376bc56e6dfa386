"""The layout ARCHITECTURE.md draws: imports run one way (no module of the project imports one that
imports it back; the reference implementation imports no harness module), the command line only parses
and prints, and no function of the harness or the adapters runs past a screen."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "harness": "mrcnn_bench.harness",
    "adapters": "mrcnn_bench.adapters",
    "reference_impl": "mrcnn_bench.reference_impl",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports, at the top or inside a function, resolved to modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_imports_run_one_way():
    graph = _graph()
    assert len(graph) > 50 and "mrcnn_bench.harness.tasks" in graph["mrcnn_bench.harness.worker"]
    assert _cycles(graph) == []
    leaks = {
        m: sorted(i for i in deps if not i.startswith("mrcnn_bench.reference_impl"))
        for m, deps in graph.items()
        if m.startswith("mrcnn_bench.reference_impl")
    }
    assert {m: d for m, d in leaks.items() if d} == {}


def test_adapters_are_told_the_task_and_read_no_task_table():
    """The worker hands each adapter the traits of its task (adapters/base.TaskTraits); no adapter imports
    harness/tasks, which import the adapters' worker side."""
    graph = _graph()
    reads = {
        m: sorted(d for d in deps if d.startswith("mrcnn_bench.harness.tasks"))
        for m, deps in graph.items()
        if m.startswith("mrcnn_bench.adapters")
    }
    assert {m: d for m, d in reads.items() if d} == {}
    worker = (ROOT / "harness" / "worker.py").read_text()
    assert "adapter.task = TaskTraits(trains=task.trains, phase_ranges=task.phase_ranges)" in worker


def test_no_task_imports_a_reader():
    """A task's report part is blocks (tables, paragraphs) and figures that report and plots render and
    save: no module of harness/tasks imports a reader of the records."""
    graph = _graph()
    readers = {f"mrcnn_bench.harness.{m}" for m in ("report", "plots", "regress", "checks", "site")}
    reads = {
        m: sorted(deps & readers) for m, deps in graph.items() if m.startswith("mrcnn_bench.harness.tasks")
    }
    assert len(reads) >= 8 and {m: d for m, d in reads.items() if d} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _statements(node: ast.AST) -> int:
    """Statements under ``node`` (itself not counted): a length that ruff format's layout does not change
    (it spreads one call over as many lines as it has arguments)."""
    return sum(1 for n in ast.walk(node) if isinstance(n, ast.stmt)) - (
        1 if isinstance(node, ast.stmt) else 0
    )


def test_the_command_line_is_short_and_no_function_runs_past_a_screen():
    # cli.py parses and prints (the decisions are suite's): 188 statements once run's checks moved there
    assert _statements(ast.parse((ROOT / "harness" / "cli.py").read_text())) <= 190
    long = []
    for folder in ("harness", "adapters"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _statements(node) > 50:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {_statements(node)} statements"
                    )
    assert long == []


def test_an_unmarked_test_that_trains_or_starts_mrcnn_bench_fails_saying_to_mark_it():
    """tests/conftest.py's guard: outside @pytest.mark.e2e an optimizer step or a start of the command
    line fails the test, so `make test-fast` (-m "not e2e") runs no training and no mrcnn-bench."""
    import subprocess
    import sys

    import pytest
    import torch

    param = torch.zeros(1, requires_grad=True)
    param.grad = torch.ones(1)
    with pytest.raises(pytest.fail.Exception, match=r"trains .*mark it @pytest.mark.e2e"):
        torch.optim.SGD([param], lr=0.1).step()
    assert param.item() == 0.0  # the step never ran
    with pytest.raises(pytest.fail.Exception, match=r"starts .*mrcnn_bench.harness.cli"):
        subprocess.run([sys.executable, "-m", "mrcnn_bench.harness.cli", "--help"], capture_output=True)
    assert subprocess.run(["git", "--version"], capture_output=True).returncode == 0  # other commands run
