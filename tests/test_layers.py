"""The package's layers point only down, no modules import each other in a circle, and backbones are
plug-ins. Every import of a clear_rl module is read with `ast` (lazy imports inside functions and
`if TYPE_CHECKING:` ones included):

- it must go to a layer at or below the importer's;
- the module graph has no circle (a circle makes import order matter and the modules one unit);
- outside the backbone registry (models/registry.py) and the backbone packages (models/composed/,
  models/bagel/), only the modules in BACKBONE_SPECIFIC import a concrete backbone: everything else
  asks the registry, so a new backbone needs no edit there.

  ground floor   errors, seeds, choices (every choice set), lazy (PEP 562 exports), io/ (images, image-cell decoding, TSV
                 files, atomic output)
  degrade/, models/                      on the ground floor only
  flow                                   on the ground floor
  rollout/                               on models/, flow and the ground floor
  data/                                  on degrade/, models/ and the ground floor
  eval/, trainers/, labelling, ...       above (not checked here, except the rule below)
  cli, commands/, demo/                  the top: nothing else imports them
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import clear_rl

PACKAGE = Path(clear_rl.__file__).parent
# __version__: `from clear_rl import __version__`; parallel: the ordered process pool
GROUND = {"errors", "seeds", "choices", "lazy", "io", "parallel", "__version__"}
# Layer (first name under clear_rl) -> the layers its modules may import.
ALLOWED = {
    "errors": {"errors"},
    "seeds": {"seeds"},
    "choices": {"choices"},
    "lazy": {"lazy"},
    "io": {"errors", "io"},
    "parallel": {"errors", "parallel"},
    "degrade": GROUND | {"degrade"},
    "models": GROUND | {"models"},
    "flow": GROUND | {"flow"},
    "rollout": GROUND | {"models", "flow", "rollout"},
    "data": GROUND | {"degrade", "models", "data"},
}
TOP = {"cli", "commands", "demo", "__main__"}
# The registry and the backbone packages; a concrete backbone is a module under one of these packages.
BACKBONE_PACKAGES = ("clear_rl.models.composed", "clear_rl.models.bagel")
REGISTRY = "clear_rl.models.registry"
# Modules that may import a concrete backbone, and why (a new entry needs a reason as good).
BACKBONE_SPECIFIC = {
    "clear_rl/models/assemble.py": "builds a composed model from a VLM and a VAE (model.vlm_path)",
    "clear_rl/models/tiny.py": "builds a tiny composed model in code (model.tiny)",
    "clear_rl/trainers/align.py": "stage 0 aligns a VLM's own vision path: the composed backbone's only",
    "clear_rl/demo/": "the demo trains the tiny composed model stage by stage",
    "clear_rl/rollout/restoration.py": "restoration CFG takes its defaults from BAGEL's inference presets",
    "clear_rl/eval/runner.py": "the report names a BAGEL-family model's preset values",
    "clear_rl/commands/eval.py": "--cfg-* replace single values of a BAGEL preset's guidance",
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every clear_rl import in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "clear_rl":  # `from clear_rl import x`: x is the layer
                found += [(node.lineno, f"clear_rl.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative>"))
    return [(line, name) for line, name in found if name == "<relative>" or name.split(".")[0] == "clear_rl"]


def _module(relative: Path) -> str:
    """The dotted module name of a file under the package's parent (a package's __init__: the package)."""
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package under `root` it imports (`from pkg import sub` counts as
    importing the submodule `pkg.sub` when there is one, else `pkg`)."""
    files = {_module(path.relative_to(root.parent)): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {module: set() for module in files}
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
                    for alias in node.names
                ]
            else:
                continue
            graph[module] |= {t for t in targets if t in files and t != module}
    return graph


def import_circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The circles of an import graph: its strongly connected components of two or more modules
    (Tarjan's algorithm, iterative: the package's graph is deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                    circles.append(sorted(component))
    return circles


def _edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importer's layer, imported module) for every import in the package."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        layer = _layer(".".join(relative.with_suffix("").parts))
        edges += [(str(relative), line, layer, module) for line, module in _imports(path)]
    return edges


def test_the_parser_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "import clear_rl.data.prepare\nfrom clear_rl import __version__\nimport os\n"
        "def f():\n    from clear_rl.eval.runner import evaluate\n"
    )
    assert _imports(source) == [
        (1, "clear_rl.data.prepare"),
        (2, "clear_rl.__version__"),
        (5, "clear_rl.eval.runner"),
    ]


def upward_imports(edges: list[tuple[str, int, str, str]]) -> list[str]:
    """The edges (file, line, importer's layer, imported module) that go up a layer, as messages."""
    return [
        f"{file}:{line} imports {module} ({layer}/ may import only {sorted(ALLOWED[layer])})"
        for file, line, layer, module in edges
        if layer in ALLOWED and (module == "<relative>" or _layer(module) not in ALLOWED[layer])
    ]


def test_the_layer_check_finds_an_upward_import():
    edges = [
        ("clear_rl/models/io.py", 3, "models", "clear_rl.errors"),  # down: fine
        ("clear_rl/models/io.py", 4, "models", "clear_rl.trainers.common"),  # up
        ("clear_rl/choices.py", 1, "choices", "clear_rl.models.registry"),  # the ground floor, up
        ("clear_rl/data/x.py", 9, "data", "<relative>"),  # relative imports hide their layer
        ("clear_rl/eval/runner.py", 5, "eval", "clear_rl.trainers.common"),  # eval/: unchecked
    ]
    assert [message.split(" ")[0] for message in upward_imports(edges)] == [
        "clear_rl/models/io.py:4",
        "clear_rl/choices.py:1",
        "clear_rl/data/x.py:9",
    ]


def test_lower_layers_import_only_downwards():
    edges = _edges()
    assert any(layer == "data" for _, _, layer, _ in edges)  # the walk found the package
    wrong = upward_imports(edges)
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_only_the_top_imports_the_cli_commands_and_demo():
    wrong = [
        f"{file}:{line} imports {module}"
        for file, line, layer, module in _edges()
        if _layer(module) in TOP and layer not in TOP
    ]
    assert not wrong, "imports of the top layer from below:\n" + "\n".join(wrong)


def test_the_circle_finder_finds_circles_of_any_length():
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": {"d"},  # d <-> e, reached from the first circle
        "f": {"a", "g"},
        "g": set(),  # f and g: in no circle
    }
    assert sorted(import_circles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_lazy_and_submodule_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")  # lazy, a submodule
    (package / "sub" / "b.py").write_text("from pkg import a\nimport os\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert import_circles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_no_modules_import_each_other_in_a_circle():
    graph = import_graph(PACKAGE)
    assert "clear_rl.models.registry" in graph  # the walk found the package
    circles = import_circles(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def _backbone_specific(file: str) -> bool:
    return any(
        file == allowed or (allowed.endswith("/") and file.startswith(allowed))
        for allowed in BACKBONE_SPECIFIC
    )


def test_only_the_registry_and_the_backbone_packages_import_a_concrete_backbone():
    def concrete(module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in BACKBONE_PACKAGES)

    def inside(file: str) -> bool:
        module = file.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        return module == REGISTRY or concrete(module)

    edges = _edges()
    wrong = [
        f"{file}:{line} imports {module}: ask the backbone registry (clear_rl.models.registry) instead"
        for file, line, _, module in edges
        if concrete(module) and not inside(file) and not _backbone_specific(file)
    ]
    assert not wrong, "backbone-specific imports outside the backbone packages:\n" + "\n".join(wrong)
    stale = [
        f
        for f in BACKBONE_SPECIFIC
        if not any(_backbone_specific(file) and file.startswith(f) for file, *_ in edges)
    ]
    assert not stale, f"BACKBONE_SPECIFIC names modules that no longer import a backbone: {stale}"
