"""The import graph of our packages, read from the source (ast, nothing is executed).

- serving code (ml/serving) reaches no training, evaluation or data-generator module, directly or
  through other modules: a web process or worker loads only what it runs;
- no import cycles among our modules;
- ml/ imports neither Django nor our Django apps.

Every import counts, also those inside functions (they run when the function does); imports under
``if TYPE_CHECKING:`` do not. Importing ``a.b.c`` also runs ``a`` and ``a.b``, so the packages on the
way are edges too, except a module's own enclosing packages (already being imported when it runs).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mvmatch", "catalog", "matching", "workers", "ml")
SERVING = "ml.serving"
NOT_FOR_SERVING = ("ml.training", "ml.evaluation", "ml.datagen")
DJANGO_SIDE = ("django", "rest_framework", "celery", "mvmatch", "catalog", "matching", "workers")


def module_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement of the file names (``from a import b`` gives a and a.b)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return names


def import_graph(files: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between our modules, every outside top-level name each module imports)."""
    edges: dict[str, set[str]] = {m: set() for m in files}
    outside: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for name in imported_names(module, path):
            parts = name.split(".")
            if parts[0] not in PACKAGES:
                outside[module].add(parts[0])
                continue
            # the module itself and every package on the way to it run
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in files and target != module and not module.startswith(target + "."):
                    edges[module].add(target)
    return edges, outside


def reachable(edges: dict[str, set[str]], start: str) -> dict[str, str]:
    """Modules reachable from ``start``, each with the module that imports it on one path."""
    seen, stack = {start: ""}, [start]
    while stack:
        current = stack.pop()
        for nxt in edges.get(current, ()):
            if nxt not in seen:
                seen[nxt] = current
                stack.append(nxt)
    return seen


def path_to(parents: dict[str, str], target: str) -> list[str]:
    chain = [target]
    while parents[chain[-1]]:
        chain.append(parents[chain[-1]])
    return chain[::-1]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return cycles


@pytest.fixture(scope="module")
def graph():
    files = module_files()
    return files, *import_graph(files)


def test_the_graph_sees_real_imports(graph):
    files, edges, outside = graph
    assert "ml.serving.bundle" in files and "ml.training.build" in files
    assert "ml.serving.bundle" in edges["ml.training.build"]
    assert "torch" in outside["ml.serving.bundle"]
    assert "django" in outside["matching.models"]


def test_serving_reaches_no_training_evaluation_or_generator_module(graph):
    files, edges, _ = graph
    serving = [m for m in files if m == SERVING or m.startswith(SERVING + ".")]
    assert len(serving) > 5
    bad = []
    for module in serving:
        parents = reachable(edges, module)
        for target in parents:
            if target.startswith(NOT_FOR_SERVING):
                bad.append(" -> ".join(path_to(parents, target)))
    assert not bad, "serving imports training/evaluation/generator code:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles(graph):
    _, edges, _ = graph
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_ml_imports_no_django(graph):
    files, edges, outside = graph
    bad = {m: sorted(outside[m] & set(DJANGO_SIDE)) + sorted(t for t in edges[m] if t.split(".")[0] in DJANGO_SIDE)
           for m in files if m.split(".")[0] == "ml"}
    assert not {m: v for m, v in bad.items() if v}


def test_the_checks_catch_what_they_claim(tmp_path):
    """A made-up tree with a cycle and a serving module that reaches training through a helper."""
    for rel, text in {"ml/__init__.py": "", "ml/serving/__init__.py": "", "ml/training/__init__.py": "",
                      "ml/serving/a.py": "def f():\n    from . import helper\n",
                      "ml/serving/helper.py": "from ml.training import fit\n",
                      "ml/training/fit.py": "import ml.training.loop\n",
                      "ml/training/loop.py": "from ml.training.fit import x\nimport django\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    files = module_files(tmp_path, ("ml",))
    edges, outside = import_graph(files)
    parents = reachable(edges, "ml.serving.a")
    assert path_to(parents, "ml.training.fit") == ["ml.serving.a", "ml.serving.helper", "ml.training.fit"]
    assert find_cycles(edges) == [["ml.training.fit", "ml.training.loop"]]
    assert "django" in outside["ml.training.loop"]
