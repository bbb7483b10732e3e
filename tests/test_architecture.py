"""The layers of lra (docs/architecture.md): each module imports only its own layer and the layers below it, at
the top of the module; an import inside a function is allowed only where a comment says it is deferred for a
command's start-up time."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top. A module's layer is its first folder under lra/ (or its name for a module directly in lra/).
LAYERS = [
    {"errors", "compose", "redaction", "disk"},
    {"attention", "data"},
    {"model"},
    {"config"},
    {"parallel"},
    {"record"},
    {"sweep"},
    {"run"},
    {"compare"},
    {"bench"},
]
COMMANDS = {"report", "ui", "evaluate"}  # `python -m lra.<name>` under its old name: may import any layer
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
DEFERRED = "deferred for start-up"


def _modules() -> list[Path]:
    return sorted(p for p in (ROOT / "lra").rglob("*.py"))


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _is_command(path: Path) -> bool:
    return path.name == "__main__.py" or (path.parent == ROOT / "lra" and path.stem in COMMANDS)


def _lra_imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "lra" and node.level == 0:
            found.extend((node, f"lra.{alias.name}") for alias in node.names)  # `from lra import stores`
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node, alias.name) for alias in node.names)
    return [(node, name) for node, name in found if name.split(".")[0] == "lra"]


def _function_level(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines.update(sub.lineno for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    return lines


def test_every_module_has_a_layer():
    unknown = {_layer(_name(p)) for p in _modules() if not _is_command(p)} - set(RANK) - {"__init__", "lra"}
    assert not unknown, f"lra modules outside the layers of docs/architecture.md: {sorted(unknown)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_and_sit_at_the_top(path: Path):
    text = path.read_text()
    tree = ast.parse(text)
    source_lines = text.splitlines()
    inner = _function_level(tree)
    own = _layer(_name(path))
    for node, imported in _lra_imports(tree):
        line = source_lines[node.lineno - 1]
        if node.lineno in inner:
            assert DEFERRED in line, f"{path.name}:{node.lineno}: `{line.strip()}` inside a function (a cycle in " \
                                     f"disguise?); move it to the top, or say `# {DEFERRED}: why`"
        if _is_command(path) or imported == "lra":
            continue
        target = _layer(imported)
        if own in RANK and target in RANK:
            assert RANK[target] <= RANK[own], f"{path.name}:{node.lineno}: layer {own!r} imports {imported} " \
                                              f"from the higher layer {target!r}"


def test_the_training_path_never_imports_the_ui_report_or_benchmarks():
    for path in (ROOT / "lra" / "run").rglob("*.py"):
        for _, imported in _lra_imports(ast.parse(path.read_text())):
            assert _layer(imported) not in {"compare", "bench"}, f"{path.name} imports {imported}"


def test_the_sweeper_plugin_imports_nothing_of_lra():
    """The sweeper stands alone (Hydra's own plugins import only hydra and their library): lra plugs into it
    through `hydra_plugins/lra_optuna_sweeper/app.py`. (The local_gpus launcher is lra's own: it shares
    `lra.parallel.devices` with the trainer.)"""
    for path in (ROOT / "hydra_plugins" / "lra_optuna_sweeper").rglob("*.py"):
        imported = _lra_imports(ast.parse(path.read_text()))
        assert not imported, f"{path.name}:{imported[0][0].lineno} imports {imported[0][1]}"
