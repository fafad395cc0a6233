"""Promises the repository makes about itself: README and .ci/run agree, README is generated from index.ipynb."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_generated_from_index():
    sys.path.insert(0, str(ROOT / "tools"))
    from make_readme import render
    assert (ROOT / "README.md").read_text() == render(), "README.md drifted from nbs/index.ipynb: run python tools/make_readme.py"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert "clarena-train" in commands[0] and "pip install" in commands[0]
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_bundled_mnist_is_the_official_test_set():
    import hashlib
    assets = ROOT / "clarena" / "assets"
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in assets.glob("*.gz")}
    assert md5 == {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                   "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
    assert "CC BY-SA 3.0" in (assets / "MNIST-CREDIT.md").read_text()


def test_docs_sidebar_lists_every_notebook():
    nbs = ROOT / "nbs"
    listed = set(re.findall(r"-\s+(\S+\.ipynb)", (nbs / "sidebar.yml").read_text()))
    present = {str(p.relative_to(nbs)) for p in nbs.rglob("*.ipynb") if not any(s.startswith(("_", ".")) for s in p.relative_to(nbs).parts)}
    present |= {f"reports/{p.name}" for p in (ROOT / "reports").glob("*.ipynb")}  # the committed reports: .ci/docs copies them in
    assert listed == present, (present - listed, listed - present)
    assert "metadata-files: [nbdev.yml, sidebar.yml]" in (nbs / "_quarto.yml").read_text()  # nbdev 3: its nbdev.yml, our sidebar


def _import_graph() -> dict:
    "clarena's modules and the clarena modules each imports anywhere in its code (the top or inside a function: a lazy import is still a dependency)."
    import ast
    pkg = ROOT / "clarena"
    def name(p):
        parts = p.relative_to(ROOT).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    mods = {name(p): p for p in pkg.rglob("*.py") if p.name != "_modidx.py"}
    def module_of(n):
        while n and n not in mods: n = n.rpartition(".")[0]
        return n
    graph = {}
    for m, p in mods.items():
        here = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import): names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else: continue
            deps |= {module_of(n) for n in names if n.startswith("clarena")} - {m, ""}
        graph[m] = deps
    return graph


def _cycles(graph: dict) -> list:
    "The strongly connected components of more than one module (Tarjan), each as a sorted list."
    index, low, stack, on, out = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v: comp.append(stack.pop()); on.discard(comp[-1])
            if len(comp) > 1: out.append(sorted(comp))
    for v in graph:
        if v not in index: visit(v)
    return sorted(out)


# No circle is left (the arena's CLI dispatch of `preset=` moved to the league, `load_source` above sources and image folders): a new one
# fails this test.
KNOWN_CYCLES = []


def test_import_graph_has_no_new_cycle():
    graph = _import_graph()
    assert {"clarena.loop", "clarena.explorer", "clarena.arena", "clarena.data.sources"} <= set(graph)
    assert not graph["clarena.loop"] & {"clarena.explorer", "clarena.arena", "clarena.league"}, graph["clarena.loop"]
    assert "clarena.league" not in graph["clarena.arena"] and not graph["clarena.reports"] & {"clarena.arena", "clarena.league", "clarena.explorer", "clarena.loop"}
    assert _cycles(graph) == KNOWN_CYCLES, _cycles(graph)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check sees a circle
