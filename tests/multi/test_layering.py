"""The layers of ``carmulti/``, read from the source with ``ast`` (issue 9).

Every ``import`` statement counts -- module level, inside functions and under
``TYPE_CHECKING`` -- as an edge from the importing module to the module it
names (``from a.b import c`` names ``a.b.c`` when that is a module, else
``a.b``). Implicit parent-package imports are not edges (every module is
under ``carmulti/__init__.py``, which re-exports everything).
"""

from __future__ import annotations

import ast
import pathlib

import carmulti

ROOT = pathlib.Path(carmulti.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Names of the modules (carmulti's or third-party top-level) that ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _internal(edges: set[str]) -> set[str]:
    return {e for e in edges if e in MODULES}


def test_no_import_cycle_anywhere():
    graph = {n: _internal(e) - {n} for n, e in GRAPH.items()}
    graph = {n: {e for e in es if not n.startswith(e + ".") and e != "carmulti"} for n, es in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _reach(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        n = todo.pop()
        for m in _internal(GRAPH[n]):
            if m not in seen and not n.startswith(m + "."):
                seen.add(m)
                todo.append(m)
    return seen


def test_patterns_never_import_executor_internals_or_transport():
    forbidden_prefixes = ("carmulti.executors.local", "carmulti.executors.process", "carmulti.executors.agent_run",
                          "carmulti.mailbox", "zmq", "multiprocess", "dill", "ray")
    bad = [(n, e) for n, es in GRAPH.items() if n.startswith("carmulti.patterns")
           for e in es if e.startswith(forbidden_prefixes) or e == "carmulti.executors"]
    assert not bad, bad


def test_executors_never_import_patterns_the_pool_the_lifecycle_or_the_infra():
    forbidden = ("carmulti.patterns", "carmulti.pool", "carmulti.lifecycle", "carmulti.infra", "carmulti.testing")
    bad = [(n, e) for n, es in GRAPH.items() if n.startswith("carmulti.executors")
           for e in es if e.startswith(forbidden)]
    assert not bad, bad


def test_a_worker_process_needs_no_pattern_code():
    reach = _reach("carmulti.executors.process.worker")
    bad = sorted(m for m in reach if m.startswith(("carmulti.patterns", "carmulti.pool", "carmulti.lifecycle",
                                                    "carmulti.infra")))
    assert not bad, bad


LEAVES = {"carmulti._strings", "carmulti._validate"}  # helpers that import nothing of carmulti or carcore


def test_types_import_nothing_of_the_engine():
    for leaf in LEAVES:
        assert not {e for e in GRAPH[leaf] if e.startswith(("carmulti", "carcore"))}, leaf
    engine = {e for e in GRAPH["carmulti.types"] if e.startswith(("carmulti", "carcore"))} - LEAVES
    assert not engine, engine


def test_no_module_in_carmulti_is_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in long.items() if k > 600}, long
