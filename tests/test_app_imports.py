"""The dashboard's heavy imports (app/ui_imports.py): once per process, under one lock, retried after a failure.

Sessions opening pages at once run their scripts in parallel threads, and transformers' lazy module fails
concurrent first imports (ImportError: cannot import name 'AutoConfig'). These tests run the app's import path
in many threads of a fresh interpreter, and check that every heavy module the pages import is imported there.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app_support import app_module

APP = Path(__file__).resolve().parents[1] / "app"
#: Torch-free parts of fwsvd (tests/test_architecture.py holds them to it): the first draw may import these.
LIGHT = ("fwsvd.config", "fwsvd.view", "fwsvd.storage.locations")

THREADS = """
import json, sys, threading
sys.path.insert(0, {app!r})
import ui_imports

barrier = threading.Barrier({threads})
errors = []

def open_page(position):
    barrier.wait()  # every thread starts its first import at the same moment
    try:
        ui_imports.ensure_heavy_imports()
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401  what the pages then use
        from fwsvd.io.models import load_model  # noqa: F401
    except Exception as error:
        errors.append(f"{{type(error).__name__}}: {{error}}")

threads = [threading.Thread(target=open_page, args=(position,)) for position in range({threads})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(errors))
"""


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_first_imports_in_a_fresh_interpreter_do_not_fail(attempt):
    code = THREADS.format(app=str(APP), threads=8)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def _fwsvd_imports(path: Path) -> set[str]:
    """Every fwsvd module ``path`` imports, at the top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fwsvd":
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names if alias.name.split(".")[0] == "fwsvd"}
    return modules


def test_every_heavy_module_the_app_imports_is_imported_under_the_lock():
    heavy = set(app_module("ui_imports").HEAVY_MODULES)
    used = set().union(*(_fwsvd_imports(path) for path in [*APP.glob("*.py"), *APP.glob("pages/*.py")]))
    missing = {module for module in used if not module.startswith(LIGHT)} - heavy
    assert not missing, f"add {sorted(missing)} to app/ui_imports.py's HEAVY_MODULES"


def test_a_failed_import_is_reported_and_tried_again(monkeypatch):
    ui_imports = app_module("ui_imports")
    monkeypatch.setattr(ui_imports, "_done", False)
    monkeypatch.setattr(ui_imports, "HEAVY_MODULES", ("json", "fwsvd_no_such_module"))
    with pytest.raises(ImportError, match="loaded again on the next run"):
        ui_imports.ensure_heavy_imports()
    assert not ui_imports._done
    monkeypatch.setattr(ui_imports, "HEAVY_MODULES", ("json",))  # the cause is gone: the next run loads
    ui_imports.ensure_heavy_imports()
    assert ui_imports._done
