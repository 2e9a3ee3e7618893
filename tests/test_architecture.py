"""The package's shape, checked: stages import only earlier stages, no import cycles, torch-free where promised.

docs/ARCHITECTURE.md draws the same order; a new import that breaks it fails here, before it becomes a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fwsvd"

#: Pipeline stages in order: each may import itself and any stage before it, never one after it.
STAGES = ("storage", "view", "config", "data", "factorize", "surgery", "fisher", "evaluate", "io", "cli")
#: Stages the dashboard draws from before torch is loaded.
TORCH_FREE = ("storage.locations", "storage.atomic", "storage.sharing", "view", "config")
HEAVY = ("torch", "transformers", "datasets", "safetensors")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module the file imports, including imports inside functions (a lazy import is still an edge)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "fwsvd" else [node.module]
    return found


MODULES = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _stage(module: str) -> str | None:
    """The stage of ``fwsvd.<stage>...``; None for the package root and ``__main__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_every_module_belongs_to_a_stage():
    strays = [module for module in MODULES if module not in ("fwsvd", "fwsvd.__main__") and _stage(module) is None]
    assert not strays, f"modules outside the stages {STAGES}: {strays}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_stages_import_only_earlier_stages(module):
    stage = _stage(module)
    if stage is None:
        return
    allowed = STAGES[: STAGES.index(stage) + 1]
    later = sorted({name for name in MODULES[module]
                    if name.startswith("fwsvd.") and _stage(name) not in (None, *allowed)})
    assert not later, f"{module} (stage {stage}) imports later stages: {later}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.removeprefix("fwsvd.").startswith(TORCH_FREE)))
def test_torch_free_modules_import_nothing_heavy(module):
    heavy = sorted({name for name in MODULES[module] if name.split(".")[0] in HEAVY})
    assert not heavy, f"{module} must stay torch-free (the dashboard's first page), but imports {heavy}"


def test_no_import_cycles_between_modules():
    graph = defaultdict(set)
    for module, imports in MODULES.items():
        for name in imports:
            target = name if name in MODULES else name.rpartition(".")[0]
            if target in MODULES and target != module and target != "fwsvd":
                graph[module].add(target)
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
