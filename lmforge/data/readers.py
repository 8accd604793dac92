"""Readers for user data: plain text files and folders, jsonl, csv, parquet.

Every reader returns a list of documents (str). A folder is read whole: every regular
file that is not hidden is read as text unless its first bytes say it is binary, and
structured formats (jsonl, csv / tsv, parquet) keep their readers by suffix. What was
read and what was skipped (and why) is logged on "lmforge.data": a summary at INFO, each
skipped file at DEBUG (the CLI's --verbose). Text is decoded as UTF-8 with
`surrogateescape`: a byte that is not valid UTF-8 becomes a lone surrogate that the
byte-level tokenizer turns back into exactly that byte, so nothing in a user's file is
lost or replaced (lmforge works on bytes).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
from collections import Counter
from pathlib import Path

from ..errors import DataError

log = logging.getLogger("lmforge.data")

SNIFF_BYTES = 8192  # how much of a file decides "text or binary"
MAX_BAD_SHARE = 0.3  # more undecodable / control characters than this in the head: binary
TEXT_CONTROLS = set("\t\n\r\f\v\b\x1b")


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
    csv.field_size_limit(2**31 - 1)  # a document in a cell may be long (the default: 128 KiB)
    reader = csv.DictReader(io.StringIO(decode(path.read_bytes())), delimiter=delimiter)
    try:
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise DataError(f"{path}: no column '{field}' (columns: {reader.fieldnames})")
        return [row[field] for row in reader]
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def read_parquet(path: Path, field: str = "text") -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install 'lmforge[parquet]'") from None
    table = pq.read_table(path)
    if field not in table.column_names:
        raise DataError(f"{path}: no column '{field}' (columns: {table.column_names})")
    return [str(v) for v in table.column(field).to_pylist()]


STRUCTURED = {".jsonl": read_jsonl, ".json": read_jsonl, ".csv": read_csv,
              ".tsv": read_csv, ".parquet": read_parquet}


def binary_reason(head: bytes) -> str | None:
    """Why a file's first bytes say it is binary, or None when they read as text.

    NUL bytes mean binary. Otherwise the head is decoded as UTF-8 (a character cut at the
    end is fine); a text may hold a few stray bytes (latin-1 accents: surrogateescape keeps
    them), but more than MAX_BAD_SHARE undecodable or control characters is not text.
    """
    if b"\0" in head:
        return "binary (NUL bytes)"
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
    bad = sum(c == "\ufffd" or (c < " " and c not in TEXT_CONTROLS) for c in text)
    if bad > MAX_BAD_SHARE * max(len(text), 1):
        return "binary (not UTF-8 text)"
    return None


def _sniff(path: Path) -> str | None:
    if path.suffix.lower() == ".parquet":  # binary by design, read by pyarrow
        return None
    with open(path, "rb") as f:
        return binary_reason(f.read(SNIFF_BYTES))


def read_file(path: Path, field: str = "text") -> list[str]:
    """Documents of one file: by its suffix for structured formats, else one text."""
    reason = _sniff(path)
    if reason:
        raise DataError(f"{path} is not text: {reason}")
    return _read(path, field)


def _read(path: Path, field: str) -> list[str]:
    reader = STRUCTURED.get(path.suffix.lower())
    return reader(path, field) if reader else read_text(path)


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every regular, visible file under root (sorted), and what was passed over and why."""
    files, skipped = [], []
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        for d in list(dirnames):
            if d.startswith("."):  # .git, .cache: one entry, not every file inside
                dirnames.remove(d)
                skipped.append((here / d, "hidden folder"))
        for name in filenames:
            p = here / name
            if name.startswith("."):
                skipped.append((p, "hidden"))
            elif not p.is_file():
                skipped.append((p, "broken link" if p.is_symlink() else "not a regular file"))
            else:
                files.append(p)
    return sorted(files), skipped


def read_folder(root: Path, field: str = "text") -> list[str]:
    """Documents of every text file under a folder, sorted by path; the rest reported."""
    files, skipped = _walk(root)
    docs, n_read = [], 0
    for p in files:
        reason = _sniff(p)
        if reason:
            skipped.append((p, reason))
            continue
        found = [d for d in _read(p, field) if d.strip()]
        if not found:
            skipped.append((p, "empty"))
            continue
        docs += found
        n_read += 1
    counts = Counter(reason for _, reason in skipped)
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    if not docs:
        raise DataError(f"no text files under {root}" + (f" (skipped: {why})" if why else ""))
    summary = f"{root}: read {n_read} file{'s' * (n_read != 1)} ({len(docs)} documents)"
    if skipped:
        summary += f"; skipped {len(skipped)}: {why} (--verbose lists them)"
    (log.warning if skipped else log.info)(summary)
    for p, reason in sorted(skipped):
        log.debug(f"  skipped {p.relative_to(root)}: {reason}")
    return docs


def read_path(path: str | Path, field: str = "text") -> list[str]:
    """Documents from a file, or from every text file under a folder (sorted)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_dir():
        return read_folder(path, field)
    docs = [d for d in read_file(path, field) if d.strip()]
    if not docs:
        raise DataError(f"no text in {path}: every document is empty")
    return docs
