"""Local data files: the columns of a CSV / TSV / JSON(L) / parquet file, read from its first rows; a file's
content hash for cache keys."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pandas as pd

def data_file_columns(path: str | Path) -> list[str]:
    """Column names of a local CSV / TSV / JSON(L) / parquet file, reading only its first rows."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data file not found: {file}")
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(file, nrows=5)
        elif suffix == ".tsv":
            frame = pd.read_csv(file, sep="\t", nrows=5)
        elif suffix == ".jsonl":
            frame = pd.read_json(file, lines=True, nrows=5)
        elif suffix == ".json":
            frame = _read_json_head(file)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(file).names)
        else:
            raise ValueError(f"unsupported data file {file.name}: expected .csv, .tsv, .json, .jsonl or .parquet")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {file.name} as {suffix[1:].upper()}: {error}") from error
    return [str(column) for column in frame.columns]


def _read_json_head(file: Path) -> pd.DataFrame:
    # A .json file is either JSON lines or one array of records; try lines first (it does not load it all).
    try:
        return pd.read_json(file, lines=True, nrows=5)
    except ValueError:
        return pd.read_json(file)


def file_digest(path: str | Path) -> str:
    """A content hash of a file (for cache keys), recomputed only when its size or modification time changes."""
    stat = Path(path).stat()
    return _file_digest_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
