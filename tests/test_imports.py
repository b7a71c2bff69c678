"""The import graph of the package has no cycles: no two modules import each other, directly or
through others, also not by an import inside a function (`../shared/STYLE.md`: a module that needs
another's function gets it from a module below both, not from a module that imports it back).

The graph is read from the sources with `ast`, under the names the installed package gives the
modules (pyproject's package-dir: `kernels/` is `liveditor.kernels`, ...). An import of a name that
is a module (`from liveditor.pipeline import editor`) is an edge to that module; an import of any
other name is an edge to the module that defines or re-exports it. Package `__init__` files that
re-export their modules' names are left out: they import everything below them by design, and
nothing below imports a package's `__init__` for its own work.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"liveditor": "liveditor", "kernels": "liveditor.kernels", "train": "liveditor.train", "eval": "liveditor.eval",
           "data_pipeline": "liveditor.data_pipeline"}
ALIASES = {f"{bare}": name for bare, name in FOLDERS.items() if bare != "liveditor"}  # `kernels.x` written bare


def _modules() -> dict[str, Path]:
    """`{dotted name: file}` for every module of the package (not the `__init__` files)."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if path.name == "__init__.py" or "__pycache__" in rel.parts:
                continue
            out[".".join((package, *rel.parts))] = path
    return out


def _canonical(name: str) -> str:
    head, _, rest = name.partition(".")
    return f"{ALIASES[head]}.{rest}" if head in ALIASES and rest else ALIASES.get(name, name)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` (at `path`) imports, anywhere in its body."""
    package = name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [_canonical(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = _canonical(node.module or "")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            # `a.b.c` imported as a module, or a name `c` from module `a.b`
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0] if target.rsplit(".", 1)[0] in modules else ""
            if target in modules and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_direct_and_longer_cycles():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "f"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_imports_inside_functions_and_under_both_names():
    graph = import_graph()
    # module-level, relative: eval/metrics.py imports eval/models.py
    assert "liveditor.eval.models" in graph["liveditor.eval.metrics"]
    # inside a function: the demo runs the learning benchmark as a stage
    assert "liveditor.learn" in graph["liveditor.demo"]
    # an absolute import through the installed name of a mapped folder
    assert "liveditor.kernels.isa_function" in graph["liveditor.isa.api"]


def test_no_two_modules_import_each_other():
    found = cycles(import_graph())
    assert not found, "modules that import each other (move what they share into a module below both): " + "; ".join(
        " <-> ".join(c) for c in found)


# The commands that run other jobs (`liveditor demo`, `liveditor learn`, the `liveditor` entry point): DESIGN.md
# puts the CLI in `liveditor/`; they import the jobs they run, inside the functions that run them.
RUNNERS_OF_JOBS = {"liveditor.cli", "liveditor.demo", "liveditor.learn"}
JOBS = ("liveditor.train", "liveditor.eval", "liveditor.data_pipeline")


def test_the_library_never_imports_a_job():
    """`../shared/STYLE.md`: jobs (curation, training, evaluation) import the library (`liveditor.isa`,
    `.models`, `.pipeline`, `.video`, `liveditor.kernels`); the library never imports a job."""
    graph = import_graph()
    library = [m for m in graph if not m.startswith(JOBS) and m not in RUNNERS_OF_JOBS]
    assert "liveditor.pipeline.editor" in library and "liveditor.kernels.isa_function" in library
    found = {m: sorted(t for t in graph[m] if t.startswith(JOBS)) for m in library}
    found = {m: t for m, t in found.items() if t}
    assert not found, f"library modules that import a job: {found}"
