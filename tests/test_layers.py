"""The package's layers point only down: each import of a clear_rl module, read with `ast`
(lazy imports inside functions included), must go to a layer at or below the importer's.

  ground floor   errors, seeds, io/ (images, image-cell decoding, TSV files, atomic output)
  degrade/, models/                      on the ground floor only
  flow, restoration, generation          on models/ and the ground floor
  answering                              on generation and what it stands on
  data/                                  on degrade/, models/ and the ground floor
  eval/, trainers/, labelling, ...       above (not checked here, except the rule below)
  cli, commands/, demo/                  the top: nothing else imports them
"""

from __future__ import annotations

import ast
from pathlib import Path

import clear_rl

PACKAGE = Path(clear_rl.__file__).parent
# __version__: `from clear_rl import __version__`; parallel: the ordered process pool
GROUND = {"errors", "seeds", "io", "parallel", "__version__"}
# Layer (first name under clear_rl) -> the layers its modules may import.
ALLOWED = {
    "errors": {"errors"},
    "seeds": {"seeds"},
    "io": {"errors", "io"},
    "parallel": {"errors", "parallel"},
    "degrade": GROUND | {"degrade"},
    "models": GROUND | {"models"},
    "flow": GROUND | {"flow"},
    "restoration": GROUND | {"models", "flow", "restoration"},
    "generation": GROUND | {"models", "flow", "restoration", "generation"},
    "answering": GROUND | {"models", "flow", "restoration", "generation", "answering"},
    "data": GROUND | {"degrade", "models", "data"},
}
TOP = {"cli", "commands", "demo", "__main__"}


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


def test_lower_layers_import_only_downwards():
    edges = _edges()
    assert any(layer == "data" for _, _, layer, _ in edges)  # the walk found the package
    wrong = [
        f"{file}:{line} imports {module} ({layer}/ may import only {sorted(ALLOWED[layer])})"
        for file, line, layer, module in edges
        if layer in ALLOWED and (module == "<relative>" or _layer(module) not in ALLOWED[layer])
    ]
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_only_the_top_imports_the_cli_commands_and_demo():
    wrong = [
        f"{file}:{line} imports {module}"
        for file, line, layer, module in _edges()
        if _layer(module) in TOP and layer not in TOP
    ]
    assert not wrong, "imports of the top layer from below:\n" + "\n".join(wrong)
