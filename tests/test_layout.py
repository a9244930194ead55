"""The package layout's one rule: arrows point one way.

Every import of a bigbertha module counts, wherever it is written (top level, inside a function
or under TYPE_CHECKING): a lazy import is still a dependency. Layers, lowest first:

    core                       settings, errors, logs, object storage
    documents  telemetry  models   (each imports only core)
    chat  training  serving    (import the three above, never each other; serving is the
                               inference tier's init step and sidecar, in the vLLM pods)
    local                      the demo and its supervisor (anything below)
    cli                        the command line (anything)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bigbertha"
BASE = {"core", "documents", "telemetry", "models"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "documents": {"core"},
    "telemetry": {"core"},
    "models": {"core"},
    "chat": BASE,
    "training": BASE,
    # The vLLM pods' init step and adapter sidecar: registry and storage only, never the
    # chatbot (its UI and RAG stack) nor training.
    "serving": BASE,
    "local": BASE | {"chat", "training"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The bigbertha modules `path` imports (a `from pkg import mod` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bigbertha")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bigbertha"):
            assert node.module is not None and node.level == 0, f"{path}: relative import"
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found - {"bigbertha"}


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or parts[1] in ALLOWED else "cli"


def test_every_module_is_in_a_known_layer() -> None:
    top = {m for m in MODULES if len(m.split(".")) == 2 and m.split(".")[1] not in ALLOWED}
    assert top == {"bigbertha.__main__", "bigbertha.cli"}, "new top-level modules need a layer"


def test_no_module_imports_a_layer_above_or_beside_it() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if (here := layer(module)) != "cli"
        and (there := layer(target)) != here
        and there not in ALLOWED[here]
    )
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target in GRAPH and target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from bigbertha.chat import rag\n", {"bigbertha.chat.rag"}),
        (
            "def f():\n    from bigbertha.core.settings import Settings\n",
            {"bigbertha.core.settings"},
        ),
        ("import bigbertha.training.retrain as r\n", {"bigbertha.training.retrain"}),
    ],
)
def test_lazy_and_aliased_imports_count(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports(path) == expected


def test_no_test_module_imports_another() -> None:
    """Shared fixtures live in conftest.py and shared helpers in helpers modules: a test module
    imported elsewhere smuggles its fixtures in behind `noqa` and ties the two files together."""
    root = SRC.parents[1]
    wrong = []
    for path in sorted([*(root / "tests").rglob("*.py"), *(root / "bench").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            wrong += [
                f"{path.relative_to(root)} imports {name}"
                for name in names
                if name.startswith("tests.") and name.split(".")[-1].startswith("test_")
            ]
    assert not wrong, "\n".join(wrong)
