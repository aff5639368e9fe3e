"""The package layout the architecture asks for: ``__init__.py`` files hand names on and hold no
logic (issue 7.6); the logic they used to hold lives in modules of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INITS = sorted(p for base in ("hwnas", "agents/hwnas_agent") for p in (ROOT / base).rglob("__init__.py"))


def logic_in(path: Path) -> list[str]:
    """Statements other than the docstring, imports, ``__all__`` and ``__version__``."""
    found = []
    for index, node in enumerate(ast.parse(path.read_text()).body):
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = [getattr(t, "id", "") for t in getattr(node, "targets", [])]
        if len(targets) == 1 and targets[0] in ("__all__", "__version__") and \
                isinstance(node.value, (ast.Constant, ast.List)):
            continue  # the names handed on, the version
        found.append(f"line {node.lineno}: {type(node).__name__}")
    return found


def test_the_walk_finds_the_packages() -> None:
    names = {p.parent.relative_to(ROOT).as_posix() for p in INITS}
    assert {"hwnas", "hwnas/data", "hwnas/models", "agents/hwnas_agent/power",
            "agents/hwnas_agent/runtimes"} <= names


def test_logic_is_found_where_there_is_some(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text('"""doc."""\nfrom x import y\n__all__ = ["y"]\n\ndef f():\n    return 1\n')
    assert logic_in(init) == ["line 5: FunctionDef"]


@pytest.mark.parametrize("path", INITS, ids=lambda p: p.parent.relative_to(ROOT).as_posix())
def test_package_init_holds_no_logic(path: Path) -> None:
    assert logic_in(path) == [], f"{path.relative_to(ROOT)} holds logic; move it into a module"


def test_importing_every_hwnas_module_changes_no_logging_or_warnings_state() -> None:
    """Issue 7.5: a library import leaves the host program's logging and warnings alone."""
    import subprocess
    import sys

    code = (
        "import logging, pkgutil, importlib, warnings\n"
        "def state():\n"
        "    loggers = [logging.getLogger(n) for n in\n"
        "               ['', 'hwnas', 'optuna', 'paramiko', 'torch', 'onnxruntime']]\n"
        "    return ([(l.level, len(l.handlers), l.propagate, l.disabled) for l in loggers],\n"
        "            list(warnings.filters), logging.root.manager.disable)\n"
        "import importlib.util\n"
        "for lib in ['numpy', 'torch', 'torchvision', 'optuna', 'onnxruntime', 'onnx', 'scipy',\n"
        "            'scipy.stats', 'sklearn', 'sklearn.datasets', 'torch_pruning', 'paramiko',\n"
        "            'matplotlib', 'matplotlib.pyplot', 'sqlalchemy', 'yaml', 'pydantic']:\n"
        "    if importlib.util.find_spec(lib.split('.')[0]):  # their own import-time state first\n"
        "        importlib.import_module(lib)\n"
        "before = state()\n"
        "import hwnas\n"
        "names = [m.name for m in pkgutil.walk_packages(hwnas.__path__, 'hwnas.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert len(names) > 40, names\n"
        "after = state()\n"
        "assert after == before, (before, after)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def hwnas_import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the hwnas modules it imports anywhere in its text: at the top, inside
    functions (a lazy import hides a circle, it does not remove it) and under TYPE_CHECKING."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in (root / "hwnas").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        # a package's __init__ hands names on: importing it is not a dependency on its modules
        graph[name] = {t for t in found if t in modules and t != name
                       and not name.startswith(t + ".")}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_circles_are_found_where_there_are_some() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]


def test_no_hwnas_module_imports_itself_round_a_circle() -> None:
    """Issue 21.6: export/onnx.py <-> export/precision.py and report/plot.py <-> report/tables.py
    were circles, one of them through lazy imports; none may come back."""
    assert import_circles(hwnas_import_graph(ROOT)) == []


def test_the_layout_page_names_every_module() -> None:
    """Issue 21.6: a newcomer finds every module in the Layout (docs/layout.md since issue 24.6,
    linked from the README); a new module that is not named there fails here."""
    assert "](docs/layout.md)" in (ROOT / "README.md").read_text()
    page = (ROOT / "docs" / "layout.md").read_text()
    layout = page.split("# Layout", 1)[1].split("```")[1]
    unnamed = [p.relative_to(ROOT).as_posix()
               for base in ("hwnas", "agents/hwnas_agent") for p in sorted((ROOT / base).rglob("*.py"))
               if p.name != "__init__.py" and p.name not in layout]
    assert unnamed == [], f"modules not named in docs/layout.md's Layout: {unnamed}"


BENCH = "hwnas.bench"  # the replay benchmark's plug-in: cells, NAS-Bench-201 networks, replay


def fence_breaches(graph: dict[str, set[str]]) -> list[str]:
    """Controller modules that import the benchmark plug-in (lazily or not)."""
    inside = (lambda name: name == BENCH or name.startswith(BENCH + "."))
    return sorted(f"{module} -> {target}" for module, targets in graph.items()
                  if not inside(module) for target in targets if inside(target))


def test_a_breach_of_the_fence_is_found(tmp_path: Path) -> None:
    for name, text in {"hwnas/__init__.py": "", "hwnas/bench/__init__.py": "",
                       "hwnas/bench/replay.py": "from hwnas.bench.cells import CellSpace\n",
                       "hwnas/bench/cells.py": "", "hwnas/search/__init__.py": "",
                       "hwnas/search/engine.py": "def f():\n    from hwnas.bench import replay\n"
                       }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert fence_breaches(hwnas_import_graph(tmp_path)) == [
        "hwnas.search.engine -> hwnas.bench", "hwnas.search.engine -> hwnas.bench.replay"]


def test_no_controller_module_imports_the_benchmark_plug_in() -> None:
    """Issue 21.6: the NAS-Bench-201 replay (hwnas/bench/) serves benchmarks/ and tests only;
    the controller that ships never depends on it."""
    assert (ROOT / "hwnas" / "bench" / "replay.py").is_file()
    assert fence_breaches(hwnas_import_graph(ROOT)) == []


MAX_LINES = 400  # a module is read in one sitting (ARCHITECTURE.md); agents/: test_module_sizes


def test_no_controller_module_is_over_400_lines() -> None:
    root = Path(__file__).resolve().parents[1] / "hwnas"
    long = {str(path.relative_to(root)): count for path in root.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split by meaning: {long}"
