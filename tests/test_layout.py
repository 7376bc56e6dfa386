"""The layout ARCHITECTURE.md draws: the harness in packages by stage, imports running one way down their
order (including the modules a package loads through importlib and the ones a command starts with
``python -m``), no private name used across packages, the reference implementation importing no harness
module, the command line only parsing and printing, and no function of the harness or the adapters running
past a screen."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "harness": "mrcnn_bench.harness",
    "adapters": "mrcnn_bench.adapters",
    "external": "mrcnn_bench.external",
    "reference_impl": "mrcnn_bench.reference_impl",
}
# The packages from the entry point down (ARCHITECTURE.md): a module imports from its own package and the
# ones below it, never from one above.
LAYERS = (
    "mrcnn_bench.harness.cli",
    "mrcnn_bench.harness.run",
    "mrcnn_bench.harness.report",
    "mrcnn_bench.harness.parity",
    "mrcnn_bench.harness.tasks",
    "mrcnn_bench.adapters",
    "mrcnn_bench.external",
    "mrcnn_bench.harness.machine",
    "mrcnn_bench.harness.data",
    "mrcnn_bench.harness.records",
    "mrcnn_bench.harness.engine",
    "mrcnn_bench.harness.config",
    "mrcnn_bench.reference_impl",
)


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _from(package: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` statement in ``package`` names, its dots resolved."""
    base = node.module or ""
    if not node.level:
        return base
    parts = package.split(".")
    return ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))


def _loads_its_own(node: ast.AST) -> bool:
    """``importlib.import_module(f"{__name__}.{...}")``: a package loading its own modules by name."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.JoinedStr)
        and "__name__" in ast.unparse(node.args[0])
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports, at the top or inside a function, resolved to modules; the
    modules of its own package it loads through importlib; the modules it names in a string (``python -m
    NAME``, a patch target)."""
    package = _package(name, path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from(package, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif _loads_its_own(node):
            targets = [m for m in known if m.startswith(name + ".") and m.count(".") == name.count(".") + 1]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets = [node.value]
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


def _layer(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def test_imports_run_one_way():
    graph = _graph()
    assert len(graph) > 60 and "mrcnn_bench.harness.tasks" in graph["mrcnn_bench.harness.run.worker"]
    # what importlib loads and what a command starts are edges too
    assert "mrcnn_bench.harness.tasks.train" in graph["mrcnn_bench.harness.tasks"]
    assert "mrcnn_bench.harness.parity.probe" in graph["mrcnn_bench.harness.run.launch"]
    assert _cycles(graph) == []
    leaks = {
        m: sorted(i for i in deps if not i.startswith("mrcnn_bench.reference_impl"))
        for m, deps in graph.items()
        if m.startswith("mrcnn_bench.reference_impl")
    }
    assert {m: d for m, d in leaks.items() if d} == {}


def test_every_module_of_the_harness_is_in_a_package_of_the_order():
    """The harness is packages by stage (and cli.py, the entry point): no module left at its top."""
    unplaced = sorted(m for m in _graph() if m != "mrcnn_bench.harness" and _layer(m) is None)
    assert unplaced == []
    top = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert top == ["__init__.py", "cli.py"]


def test_packages_import_only_their_own_and_the_ones_below():
    upward = sorted(
        f"{m} -> {d}"
        for m, deps in _graph().items()
        for d in deps
        if _layer(m) is not None and _layer(d) is not None and _layer(d) < _layer(m)
    )
    assert upward == []


def test_the_order_check_finds_an_upward_import_and_a_module_loaded_by_name(tmp_path):
    """The checks above on made-up modules: a module of records importing run is upward; a package loading
    its modules through importlib imports each of them."""
    (tmp_path / "records.py").write_text("from .run import suite\n")
    (tmp_path / "loader.py").write_text("import importlib\nimportlib.import_module(f'{__name__}.{name}')\n")
    known = {"mrcnn_bench.harness.records", "mrcnn_bench.harness.run.suite"}
    got = _imports("mrcnn_bench.harness.records", tmp_path / "records.py", known)
    assert got == {"mrcnn_bench.harness.run.suite"}
    assert _layer("mrcnn_bench.harness.run.suite") < _layer("mrcnn_bench.harness.records")
    known = {"mrcnn_bench.pkg", "mrcnn_bench.pkg.a", "mrcnn_bench.pkg.b", "mrcnn_bench.pkg.b.c"}
    (tmp_path / "__init__.py").write_text((tmp_path / "loader.py").read_text())
    got = _imports("mrcnn_bench.pkg", tmp_path / "__init__.py", known)
    assert got == {"mrcnn_bench.pkg.a", "mrcnn_bench.pkg.b"}


def _private_uses(name: str, path: Path, known: set[str]) -> list[str]:
    """``from X import _name`` and ``X._name`` where X is a project module of another package."""
    package = _package(name, path)
    mine = name if _layer(name) is None else LAYERS[_layer(name)]
    bound = {}  # local name -> module
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _from(package, node)
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in known:
                    bound[a.asname or a.name] = full
                elif base in known and a.name.startswith("_") and not a.name.startswith("__"):
                    found.append((base, a.name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in known:
                    bound[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append((bound[node.value.id], node.attr))
    return [f"{name} uses {m}.{attr}" for m, attr in found if _layer(m) is None or LAYERS[_layer(m)] != mine]


def test_no_private_name_is_used_across_packages():
    modules = _modules()
    known = set(modules)
    crossing = [u for name, path in modules.items() for u in _private_uses(name, path, known)]
    assert crossing == []


def test_the_private_name_check_finds_one(tmp_path):
    (tmp_path / "site.py").write_text(
        "from ..records import frames\nfrom ..records.results import _atomic\nframes._rows()\n"
    )
    known = {"mrcnn_bench.harness.records.frames", "mrcnn_bench.harness.records.results"}
    got = _private_uses("mrcnn_bench.harness.report.site", tmp_path / "site.py", known)
    assert sorted(got) == [
        "mrcnn_bench.harness.report.site uses mrcnn_bench.harness.records.frames._rows",
        "mrcnn_bench.harness.report.site uses mrcnn_bench.harness.records.results._atomic",
    ]


def _named_modules(text: str) -> set[str]:
    """The paths the module listing of ARCHITECTURE.md names: a folder's line (``harness/run/``), then the
    files under it (``suite.py``, several on one line allowed), until the next folder."""
    listing = text.split("## The modules", 1)[1].split("```")[1]
    folder, named = "", set()
    for line in listing.splitlines():
        words = line.strip().split("  ")[0].split()
        if words and not line.startswith(" "):
            folder = words[0] if words[0].endswith("/") else words[0].rpartition("/")[0] + "/"
            named |= {words[0]} if words[0].endswith(".py") else {folder + "__init__.py"}
        else:
            named |= {folder + w for w in words if w.endswith(".py")}
    return named


def test_architecture_names_every_module_and_the_order():
    """ARCHITECTURE.md's listing names each module of the harness, and its table lists the packages in
    LAYERS' order."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    paths = {str(p.relative_to(ROOT)) for p in (ROOT / "harness").rglob("*.py")}
    assert sorted(paths - _named_modules(text)) == []
    assert sorted(_named_modules(text) - paths) == []  # nothing named that is not there
    order = re.search(r"<!-- order -->(.*?)<!-- /order -->", text, re.S).group(1)
    assert re.findall(r"`(mrcnn_bench[\w.]*)`", order) == list(LAYERS)


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
    worker = (ROOT / "harness" / "run" / "worker.py").read_text()
    assert "adapter.task = TaskTraits(trains=task.trains, phase_ranges=task.phase_ranges)" in worker


def test_no_task_imports_a_reader():
    """A task's report part is blocks (tables, paragraphs) and figures that report and plots render and
    save: no module of harness/tasks imports a reader of the records."""
    graph = _graph()
    readers = {
        m for m in graph if m.startswith(("mrcnn_bench.harness.report", "mrcnn_bench.harness.run.checks"))
    }
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
    # cli.py parses and prints (the decisions are suite's): 141 statements once every command's checks moved
    tree = ast.parse((ROOT / "harness" / "cli.py").read_text())
    assert _statements(tree) <= 145
    # its errors of its own are none: it turns the harness's errors into exit code 2 (BadInput(str(e)))
    worded = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", None) == "BadInput"
        and any(isinstance(a, (ast.Constant, ast.JoinedStr)) for a in node.exc.args)
    ]
    assert worded == []
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
