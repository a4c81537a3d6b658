"""The house rules, read from the source: no import circles between modules, and every package imports only the
packages docs/ARCHITECTURE.md's table lets it import (so the table and the code cannot drift apart)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"


def _allowed() -> dict[str, set[str]]:
    """package -> the packages it may import, from the `| `pkg` | owns | may import |` rows of the doc."""
    out = {}
    for line in DOC.read_text().splitlines():
        if m := re.match(r"^\| `([a-z_0-9]+)/?` \|[^|]*\| ([^|]*)\|$", line.strip()):
            out[m.group(1)] = set(re.findall(r"`([a-z_0-9]+)`", m.group(2)))
    return out


def _modules(packages, root: Path = REPO) -> dict[str, Path]:
    mods = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = f
    return mods


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the repository modules it imports anywhere in its body (function-level imports included)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        here = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    ".".join(here[: len(here) - node.level + 1] + [node.module or ""])
                    if node.level
                    else node.module
                )
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n != m:
                    graph[m].add(n)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
            while (w := stack.pop()) != v:
                on.discard(w)
                comp.append(w)
            on.discard(v)
            if comp:
                out.append(sorted([v, *comp]))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_doc_names_every_package_of_the_repository():
    allowed = _allowed()
    found = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert found <= set(allowed), (
        f"packages missing from docs/ARCHITECTURE.md's table: {sorted(found - set(allowed))}"
    )
    assert {"analysis", "eval_libero", "libero_core", "demos"} <= set(allowed)


def test_no_import_circles():
    assert _cycles(_graph(_modules(_allowed()))) == []


def test_every_package_imports_only_what_the_doc_allows():
    allowed = _allowed()
    graph = _graph(_modules(allowed))
    bad = sorted(
        f"{a} imports {b}"
        for a, deps in graph.items()
        for b in deps
        if (pa := a.split(".")[0]) != (pb := b.split(".")[0]) and pb not in allowed[pa]
    )
    assert bad == []
    # the two jobs stay apart: the analysis of runs never touches rollouts, and rollouts never the analysis
    assert "eval_libero" not in allowed["analysis"] and "analysis" not in allowed["eval_libero"]


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path):
    """The graph and the cycle finder on a made-up tree: a ↔ b is found; an import inside a function counts."""
    for pkg, body in {
        "low": "def f():\n    from high import x\n",
        "high": "from low import f\nx = 1\n",
    }.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(body)
    graph = _graph(_modules(["low", "high"], tmp_path))
    assert graph == {"low": {"high"}, "high": {"low"}}
    assert _cycles(graph) == [["high", "low"]]
