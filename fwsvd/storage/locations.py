"""Where fwsvd keeps things on disk: the cache root, cache file names, and the demo model's build.

No torch here, so the dashboard can find what is already built or cached before it loads any model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash

CACHE_ENV_VAR = "FWSVD_CACHE_DIR"

#: Bump when the demo recipe (fwsvd.io.demo) changes, so an old build is not reused for a new recipe.
DEMO_VERSION = "v2"
#: Written last into a demo build: its presence means the build is complete.
DEMO_INFO_FILE = "fwsvd_demo.json"


def default_cache_dir() -> Path:
    """``$FWSVD_CACHE_DIR`` if set, else ``cache/`` in the working directory (the repository's cache/)."""
    return Path(os.environ.get(CACHE_ENV_VAR, "cache"))


def key_digest(key: Mapping[str, Any]) -> str:
    """A hex digest of a JSON-serialisable key (canonical: sorted keys), used to name cache files."""
    return xxhash.xxh3_128_hexdigest(json.dumps(key, sort_keys=True).encode())


def demo_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the demo model is (or will be) built."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "demo" / DEMO_VERSION


def demo_is_built(cache_dir: str | Path | None = None) -> bool:
    """True when the demo model is built, so that loading it takes seconds rather than minutes."""
    return (demo_model_dir(cache_dir) / DEMO_INFO_FILE).is_file()
