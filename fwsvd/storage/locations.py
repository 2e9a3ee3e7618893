"""Where fwsvd keeps things on disk: the cache root, cache file names, and the demo models' builds.

No torch here, so the dashboard can find what is already built or cached before it loads any model.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash

CACHE_ENV_VAR = "FWSVD_CACHE_DIR"

#: Bump when the demo recipe (fwsvd.io.demo) changes, so an old build is not reused for a new recipe.
DEMO_VERSION = "v2"
#: The same for the NER demo's recipe (fwsvd.io.demo_ner).
DEMO_NER_VERSION = "v1"
#: The same for the causal-LM demo (fwsvd.io.demo_lm).
DEMO_LM_VERSION = "v1"
#: Written last into a demo build: its presence means the build is complete.
DEMO_INFO_FILE = "fwsvd_demo.json"
#: Each demo model's alias (what ``--model`` and the dashboard accept) and its build folder under the cache.
DEMO_BUILDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", DEMO_VERSION),
    "demo-ner": ("demo-ner", DEMO_NER_VERSION),
    "demo-lm": ("demo-lm", DEMO_LM_VERSION),
}


def default_cache_dir() -> Path:
    """``$FWSVD_CACHE_DIR`` if set, else ``cache/`` in the working directory (the repository's cache/)."""
    return Path(os.environ.get(CACHE_ENV_VAR, "cache"))


def key_digest(key: Mapping[str, Any]) -> str:
    """A hex digest of a JSON-serialisable key (canonical: sorted keys), used to name cache files."""
    return xxhash.xxh3_128_hexdigest(json.dumps(key, sort_keys=True).encode())


def is_demo_model(source: object) -> bool:
    """True when ``source`` names a demo model (one of :data:`DEMO_BUILDS`) rather than a directory or hub id."""
    return str(source) in DEMO_BUILDS


def demo_model_dir(cache_dir: str | Path | None = None, model: str = "demo") -> Path:
    """Where the demo model ``model`` (an alias of :data:`DEMO_BUILDS`) is, or will be, built."""
    if not is_demo_model(model):
        raise ValueError(f"unknown demo model {model!r}; demo models: {', '.join(DEMO_BUILDS)}")
    folder, version = DEMO_BUILDS[model]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / folder / version


def demo_is_built(cache_dir: str | Path | None = None, model: str = "demo") -> bool:
    """True when the demo model ``model`` is built, so that loading it takes seconds rather than minutes."""
    return (demo_model_dir(cache_dir, model) / DEMO_INFO_FILE).is_file()


def installed_package_dir(module: str, missing: str) -> Path:
    """The folder of the installed package ``module``, found without importing it (the demos' data packages
    import heavy or absent dependencies); ModuleNotFoundError(``missing``) when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(missing)
    return Path(spec.submodule_search_locations[0])
