"""Readers for user data: plain text files and folders, jsonl, csv, parquet.

Every reader returns a list of documents (str). Text is decoded as UTF-8 with
`surrogateescape`: a byte that is not valid UTF-8 becomes a lone surrogate that the
byte-level tokenizer turns back into exactly that byte, so nothing in a user's file is
lost or replaced (lmforge works on bytes).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import DataError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ""}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".json", ".csv", ".tsv", ".parquet"}


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def read_text(path: Path) -> list[str]:
    """A plain text file is one document."""
    return [decode(path.read_bytes())]


def jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a jsonl file."""
    rows = []
    for lineno, line in enumerate(decode(path.read_bytes()).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: a row must be a JSON object")
        rows.append((lineno, row))
    return rows


def read_jsonl(path: Path, field: str = "text") -> list[str]:
    docs = []
    for lineno, row in jsonl_rows(path):
        if field not in row:
            raise DataError(f"{path}:{lineno}: no field '{field}' (set data.text_field)")
        docs.append(str(row[field]))
    return docs


def read_csv(path: Path, field: str = "text") -> list[str]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(decode(path.read_bytes())), delimiter=delimiter)
    if reader.fieldnames is None or field not in reader.fieldnames:
        raise DataError(f"{path}: no column '{field}' (columns: {reader.fieldnames})")
    return [row[field] for row in reader]


def read_parquet(path: Path, field: str = "text") -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install 'lmforge[parquet]'") from None
    table = pq.read_table(path)
    if field not in table.column_names:
        raise DataError(f"{path}: no column '{field}' (columns: {table.column_names})")
    return [str(v) for v in table.column(field).to_pylist()]


def read_file(path: Path, field: str = "text") -> list[str]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, field)
    if suffix in (".csv", ".tsv"):
        return read_csv(path, field)
    if suffix == ".parquet":
        return read_parquet(path, field)
    return read_text(path)


def read_path(path: str | Path, field: str = "text") -> list[str]:
    """Documents from a file, or from every readable file under a folder (sorted)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_dir():
        paths = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        )
        if not paths:
            raise DataError(f"no text files (.txt .jsonl .csv .parquet ...) under {path}")
    else:
        paths = [path]
    docs = [d for p in paths for d in read_file(p, field) if d.strip()]
    if not docs:
        raise DataError(f"no text in {path}: every document is empty")
    return docs
