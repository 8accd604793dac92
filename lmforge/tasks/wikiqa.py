"""wiki-qa: a small extractive QA set (SQuAD format) built from the wiki-sample corpus.

Questions are *templated* from real Wikipedia sentences; every answer is a real span of
a real context. `build_fixture` (run once; its output is committed as
`lmforge/data/fixtures/wiki-qa.jsonl.gz`) does, deterministically:

1. split each article of `wiki-sample` (106 articles, CC BY-SA) into paragraphs (lines
   of 20+ words ending in . ! or ?) and those into sentences;
2. keep sentences of 8-40 words ending in "." without brackets, quotes or semicolons,
   holding at most one number besides the answer, and turn one span of each into a
   question by a fixed rule:

       rule   the sentence has                       the question replaces it by
       year   "in 1926" (years 1000-2029)             "in what year"
       count  "30 years", "12 members" (a number      "how many years", ...
              then a plural noun from a fixed list)

   and end it with "?" (dropped if the answer still appears in the question): "Rand
   emigrated to the United States in 1926." becomes "Rand emigrated to the United
   States in what year?" (answer "1926");
3. the context is the sentence with the one before and the one after it in its
   paragraph; only contexts holding another number of the same kind (a distractor year
   or count) are kept, so a question cannot be answered by spotting the only number;
4. at most 30 questions per article, visited in order; sorted by article and position.

So the task is easy for people (the question restates its sentence), but a model has to
match the question to the right sentence among similar ones and point at the span.
`wiki_qa(seed)` splits it by article (`split_groups`), so no article is in two splits.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from ..atomic import write_bytes
from .splits import split_groups

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "fixtures" / "wiki-qa.jsonl.gz"
SHA256 = "f3c9b2e8ec95f48eed7d98febd08017889d86e02fcca19bc07b94e64f6f66343"  # as committed

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_YEAR = re.compile(r"\bin (1[0-9]{3}|20[0-2][0-9])\b")
_ANY_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
COUNT_NOUNS = ("years", "people", "members", "days", "months", "children", "books", "species",
               "languages", "countries", "states", "times", "games", "episodes", "albums",
               "songs", "films", "novels", "soldiers", "students", "teams", "islands",
               "islands", "miles", "kilometres", "kilometers", "metres", "meters", "feet",
               "copies", "cities", "players", "words", "letters", "points", "seasons")
_COUNT = re.compile(r"\b(\d{1,3}(?:,\d{3})+|\d+) (" + "|".join(sorted(set(COUNT_NOUNS))) + r")\b")
_ANY_NUMBER = re.compile(r"\b\d[\d,]*\b")
_BAD = re.compile(r"[()\[\];\"“”|=]")
MAX_PER_ARTICLE = 30


def _paragraphs(doc: str) -> list[str]:
    out = []
    for line in doc.split("\n"):
        line = line.strip()
        if len(line.split()) >= 20 and line[-1] in ".!?":
            out.append(line)
    return out


def _question(sentence: str) -> tuple[str, int, int, str] | None:
    """(question, answer start, answer end, rule) from one sentence, or None."""
    if _BAD.search(sentence) or not 8 <= len(sentence.split()) <= 40 or sentence[-1] != ".":
        return None
    numbers = _ANY_NUMBER.findall(sentence)
    m = _YEAR.search(sentence)
    if m and len(numbers) <= 2:
        q = sentence[:m.start()] + "in what year" + sentence[m.end():-1] + "?"
        return q, m.start(1), m.end(1), "year"
    m = _COUNT.search(sentence)
    if m and len(numbers) <= 2:
        q = sentence[:m.start()] + "how many " + m.group(2) + sentence[m.end():-1] + "?"
        return q, m.start(1), m.end(1), "count"
    return None


def _title(doc: str) -> str:
    return doc.split("\n", 1)[0].strip()


def build_rows(docs: list[str]) -> list[dict]:
    """The QA rows of `docs` (see the module docstring)."""
    rows = []
    for doc in docs:
        title, n = _title(doc), 0
        for p_index, para in enumerate(_paragraphs(doc)):
            sents = _SENT.split(para)
            for s_index, sent in enumerate(sents):
                if n >= MAX_PER_ARTICLE:
                    break
                made = _question(sent)
                if made is None:
                    continue
                question, a0, a1, rule = made
                if sent[a0:a1] in question:  # the answer must not be in the question
                    continue
                before = sents[s_index - 1] + " " if s_index > 0 else ""
                after = " " + sents[s_index + 1] if s_index + 1 < len(sents) else ""
                context = before + sent + after
                answer = sent[a0:a1]
                others = before + after
                kind = _ANY_YEAR if rule == "year" else _ANY_NUMBER
                if not kind.search(others):  # needs a distractor of the same kind
                    continue
                start = len(before) + a0
                assert context[start:start + len(answer)] == answer
                rows.append({"id": f"{title}/{p_index}/{s_index}", "article": title,
                             "rule": rule, "question": question, "context": context,
                             "answers": [answer], "answer_starts": [start]})
                n += 1
    return rows


def build_fixture(out: str | Path = FIXTURE) -> dict:
    """Write the fixture (gzip, mtime 0: byte-reproducible); return a small report."""
    from ..data import read_corpus

    rows = build_rows(read_corpus("wiki-sample"))
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    write_bytes(out, gzip.compress(data, mtime=0))
    rules: dict[str, int] = {}
    for r in rows:
        rules[r["rule"]] = rules.get(r["rule"], 0) + 1
    return {"rows": len(rows), "articles": len({r["article"] for r in rows}), "rules": rules}


def read_fixture(path: str | Path = FIXTURE) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def wiki_qa(seed: int = 0) -> dict[str, list[dict]]:
    """{"train", "val", "test"} of the fixture, split by article."""
    return split_groups(read_fixture(), lambda r: r["article"], seed)


if __name__ == "__main__":  # python -m lmforge.tasks.wikiqa [OUT]
    import sys

    print(json.dumps(build_fixture(sys.argv[1] if len(sys.argv) > 1 else FIXTURE)))
