"""The shape of the code: no import cycle among rvosflow's modules (every import counted, inside
functions too), on top of the layer contracts `make test` runs with import-linter; and every
"docs/design.md §n" the code cites is a section of that document."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from rvosflow.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "rvosflow"


def import_graph() -> dict[str, set[str]]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PROJECT_ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for n in names:
                t = resolve(n) if n.startswith("rvosflow") else None
                # a package importing its own submodules (or a submodule its package) is not a cycle
                if t and t != m and not t.startswith(m + ".") and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_rvosflow():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_a_cycle_would_be_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


def test_every_design_reference_names_a_section_of_docs_design():
    sections = set(re.findall(r"^## (\d+)\. ", (PROJECT_ROOT / "docs" / "design.md").read_text(), re.M))
    cited = {}
    for f in [*PROJECT_ROOT.glob("*.md"), *PROJECT_ROOT.glob("Makefile"), *(PROJECT_ROOT / "docs").rglob("*.md"),
              *PACKAGE.rglob("*.py"), *(PROJECT_ROOT / "configs").rglob("*.yaml"), *(PROJECT_ROOT / "tests").rglob("*.py")]:
        text = f.read_text()
        assert "DESIGN" + " §" not in text, f"{f}: cites the team's notes instead of docs/design.md"
        for n in re.findall(r"docs/design\.md §(\d+)", text):
            cited.setdefault(n, f)
    assert cited, "no file cites docs/design.md"
    missing = {n: str(f) for n, f in cited.items() if n not in sections}
    assert not missing, f"sections cited but absent from docs/design.md: {missing}"
