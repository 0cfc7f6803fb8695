"""Structure checks on the package's imports, read with `ast` (nothing is imported but the one subprocess).

An edge A → B means a module A's source names module B in an import statement anywhere in the file
(function-level imports count: a lazy import is still a dependency). `from . import x` names the
submodule x when there is one, else the package itself (x is then one of its attributes).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dcp_desktop

PACKAGE_DIR = Path(dcp_desktop.__file__).parent
# The command-line tools (pyproject [project.scripts] and the subcommands they dispatch to): they may
# import the library, but nothing in the library may import them.
TOOLS = frozenset({"dcp_desktop.cli", "dcp_desktop.eval.cli", "dcp_desktop.eval.calibrate", "dcp_desktop.bench.cli",
                   "dcp_desktop.eval.inllm_results", "dcp_desktop.gui.app"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The package's modules that module `name` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(part for part in (base, node.module) if part)
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                         for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for neighbour in sorted(graph[node]):
            cycle = visit(neighbour)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_graph_sees_the_imports_it_should():
    """Guards the checks below against a parser that finds nothing."""
    assert "dcp_desktop.gguf_file" in GRAPH["dcp_desktop.vision"]
    assert "dcp_desktop.prune_reference.common" in GRAPH["dcp_desktop.prune_reference.dcp"]
    assert {"dcp_desktop.bench.ttft", "dcp_desktop.bench.prune"} <= GRAPH["dcp_desktop.bench.cli"]  # inside main()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_library_module_imports_a_command_line_tool():
    assert TOOLS <= set(MODULES)
    offenders = {name: sorted(GRAPH[name] & TOOLS) for name in MODULES if name not in TOOLS and GRAPH[name] & TOOLS}
    assert not offenders, f"library modules importing a tool: {offenders}"


def test_the_vision_path_loads_without_the_download_client():
    """vision reads the mmproj through gguf_file; huggingface_hub is only for `dcp-chat pull`."""
    code = "import sys, dcp_desktop.vision; print(sorted(m for m in sys.modules if m.startswith('huggingface_hub')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# "About 500 lines": past this a file holds more than one concern and should be split by it.
MAX_LINES = 550
NATIVE_DIR = PACKAGE_DIR.parent / "native"


def test_no_source_file_is_too_long_to_read_in_one_sitting():
    sources = [*MODULES.values(), *(p for p in NATIVE_DIR.glob("*.[ch]*") if p.is_file())]
    too_long = {str(path.relative_to(PACKAGE_DIR.parent)): n for path in sources
                if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines (split them by concern): {too_long}"


def test_the_data_flow_has_one_module_per_stage():
    """image → vision → prune → project → inject/generate (engine): the pipeline calls each, and no
    stage reaches forward into a later one."""
    stages = ["dcp_desktop.image", "dcp_desktop.vision", "dcp_desktop.prune", "dcp_desktop.project",
              "dcp_desktop.engine"]
    assert all(stage in MODULES for stage in stages)
    assert "dcp_desktop.pipeline" in GRAPH and set(stages) <= GRAPH["dcp_desktop.pipeline"]
    for i, earlier in enumerate(stages):
        later = set(stages[i + 1:]) & GRAPH[earlier]
        assert not later, f"{earlier} imports the later stage(s) {sorted(later)}"
