"""Plain text from a MediaWiki XML dump: enough markup removal for a pretraining corpus.

Keeps article prose; drops templates ({{...}}), tables ({|...|}), references, files and
categories, HTML tags and comments; turns [[target|label]] into "label" and '''bold'''
into "bold". Redirect pages and non-article namespaces are skipped.
"""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from pathlib import Path

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_FILE_START = re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}):", re.I)
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[https?://[^\s\]]+ ?([^\]]*)\]")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_BLANKS = re.compile(r"\n{3,}")


def _drop_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced open_ ... close spans, which may nest (templates, tables)."""
    out, depth, last = [], 0, 0
    for m in re.finditer(re.escape(open_) + "|" + re.escape(close), text):
        if m.group() == open_:
            if depth == 0:
                out.append(text[last : m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = m.end()
    if depth == 0:
        out.append(text[last:])
    return "".join(out)


def _drop_file_links(text: str) -> str:
    """Remove [[File:...]] / [[Category:...]] / interwiki links, whose captions nest links."""
    out, pos = [], 0
    while (m := _FILE_START.search(text, pos)) is not None:
        out.append(text[pos : m.start()])
        depth, i = 0, m.start()
        for t in re.finditer(r"\[\[|\]\]", text[m.start() :]):
            depth += 1 if t.group() == "[[" else -1
            if depth == 0:
                i = m.start() + t.end()
                break
        else:
            i = len(text)
        pos = i
    out.append(text[pos:])
    return "".join(out)


def strip_markup(text: str) -> str:
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    text = _drop_file_links(text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub(r"\1", text)
    lines = [ln.rstrip() for ln in text.splitlines() if not ln.lstrip().startswith(("*", "|", "!"))
             or len(ln) > 80]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def read_wiki_dump(path: Path) -> list[str]:
    """Articles of a (bz2) MediaWiki XML dump, as plain text, in file order."""
    opener = bz2.open if path.suffix == ".bz2" else open
    docs = []
    with opener(path, "rb") as f:
        for _, elem in ET.iterparse(f):
            if not elem.tag.endswith("}page"):
                continue
            ns = elem.findtext("{*}ns")
            text = elem.findtext("{*}revision/{*}text") or ""
            title = elem.findtext("{*}title") or ""
            if ns == "0" and not text.lstrip().lower().startswith("#redirect"):
                body = strip_markup(text)
                if len(body) > 200:
                    docs.append(f"{title}\n\n{body}")
            elem.clear()
    return docs
