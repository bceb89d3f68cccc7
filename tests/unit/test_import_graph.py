"""No import circles between the packages under services/ (docs/ARCHITECTURE.md, "Packages").

Every `import services.X...` anywhere in a package counts, at module level or inside a function:
a lazy import hides a circle from the interpreter, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"


def package_graph(root: Path = SERVICES) -> dict[str, set[str]]:
    """package -> the other packages under `root` it imports."""
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    graph: dict[str, set[str]] = {p: set() for p in packages}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if len(parts) < 2 or parts[0] not in packages:
            continue   # top-level modules (services/cli.py) wire packages together; they are no package
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                bits = name.split(".")
                if bits[0] == "services" and len(bits) > 1 and bits[1] in packages and bits[1] != parts[0]:
                    graph[parts[0]].add(bits[1])
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_service_packages():
    graph = package_graph()
    assert {"bench", "sim", "report", "scheduler"} <= set(graph)   # the walk found the packages
    assert cycles(graph) == [], f"import cycles between services/* packages: {cycles(graph)}"


def test_bench_builds_on_sim_and_both_report_through_report():
    graph = package_graph()
    assert "bench" not in graph["sim"] and "sim" in graph["bench"]
    assert "report" in graph["sim"] and "report" in graph["bench"]
    assert graph["report"] <= {"common"}   # measurement depends on no service and no simulator


def test_the_cycle_finder_finds_a_cycle_of_three_and_ignores_a_diamond():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []


def test_the_walk_sees_lazy_imports(tmp_path):
    for name, body in (("one", "def f():\n    from services.two import x\n"), ("two", "import services.one.y\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "m.py").write_text(body)
    graph = package_graph(tmp_path)
    assert graph == {"one": {"two"}, "two": {"one"}} and cycles(graph) == [["one", "two"]]
