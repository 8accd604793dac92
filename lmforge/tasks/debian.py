"""Two task sets from Debian's package descriptions: summarization and pair matching.

Each Debian package carries a one-line synopsis and a longer description, written by
its maintainer. lmforge ships a deduplicated subset of 4,000 (package, synopsis,
description) rows as `lmforge/data/fixtures/debian-descriptions.jsonl.gz`, built from
the full extraction (45,361 rows) by `build_fixture` below:

    python -m lmforge.tasks.debian build SRC.jsonl.gz OUT.jsonl.gz

Task sets made from it:
- `debian-summaries` (seq2seq): description -> synopsis, {"text", "target", "package"}.
- `debian-match` (pair classification, QNLI / MRPC-style): does this synopsis belong to
  this description? {"text": description, "text_pair": synopsis, "label": 1 = match,
  0 = mismatch, "package", "pair_package", "kind": "positive" | "hard" | "random"}.

Both share one split of the fixture (`split_groups` by source stem; seed 0 gives
3,200 / 400 / 400). In each split of `debian-match`, exactly half of the descriptions
(n // 2, in a seeded order) get another package's synopsis: a quarter of the split a
*hard* negative, a quarter a *random* one; the rest keep their own synopsis. Negatives
come from the same split, so no text crosses splits.

"Hard" negative (Debian's section field is not in the data): the synopsis of the other
package in the split that shares the package-name prefix (the text before the first
"-": python3, golang, libghc, node, qt6, ...) and, among those, has the highest word
overlap (Jaccard of content-word sets) with this description; when no other package
shares the prefix, the highest overlap over the whole split. Content words: lowercase
runs of [a-z0-9] of 3+ characters that occur in at most 5% of the fixture's
descriptions (boilerplate such as "package", "library" carries no topic).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .splits import hash_order, split_groups

FIXTURE_SIZE = 4000
SIMILARITY_THRESHOLD = 0.5  # TF-IDF cosine at which two descriptions count as near-copies

# Ecosystem prefixes and packaging suffixes stripped to find a package's source "stem":
# libatk1.0-0 and gir1.2-atk-1.0 -> atk; 0ad, 0ad-data and 0ad-data-common -> 0ad.
_PREFIXES = ("python3-", "python-", "golang-github-", "golang-", "node-", "ruby-", "r-cran-",
             "r-bioc-", "libghc-", "php-", "gir1.2-", "fonts-", "elpa-", "librust-",
             "texlive-", "tryton-modules-", "lib")
_SUFFIXES = ("-dev", "-doc", "-data", "-common", "-bin", "-utils", "-tools", "-dbg",
             "-examples", "-perl", "-java", "-prof", "-plugin", "-runtime", "-tests",
             "-ocaml", "-ruby", "-python", "-cil")


def stem(package: str) -> str:
    """The source-level name of a binary package (a heuristic; see module docstring)."""
    s = package.lower()
    for pre in _PREFIXES:
        if s.startswith(pre) and len(s) > len(pre):
            s = s[len(pre):]
            break
    changed = True
    while changed:
        changed = False
        trimmed = re.sub(r"[\d.+~-]+$", "", s)  # version digits: atk1.0-0 -> atk
        if trimmed and trimmed != s:
            s, changed = trimmed, True
        for suf in _SUFFIXES:
            if s.endswith(suf) and len(s) > len(suf):
                s, changed = s[: -len(suf)], True
    return s or package


def prefix(package: str) -> str:
    """The package-name prefix used for hard negatives: the text before the first '-'."""
    return package.split("-", 1)[0]


def _norm_synopsis(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


# -- building the fixture (run once; the output is committed) -------------------------

def build_fixture(
    src: str | Path, out: str | Path, size: int = FIXTURE_SIZE, seed: int = 0,
    threshold: float = SIMILARITY_THRESHOLD,
) -> dict:
    """Select `size` rows of the extraction `src` into the gzip'd jsonl `out`.

    1. keep rows whose description has 20-200 words and synopsis 2-15 words;
    2. visit them in the seeded order `hash_order(packages, seed, "debian:")`;
    3. keep a row unless an already kept row has the same stem, the same synopsis
       (lowercase alphanumeric words), or a description with TF-IDF cosine >= `threshold`
       (scikit-learn TfidfVectorizer, English stop words, sublinear tf, min_df=2, fit
       on all rows of step 1), until `size` rows are kept;
    4. write them sorted by package, gzip with mtime 0 (byte-reproducible).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    with gzip.open(src, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pool = [r for r in rows
            if 20 <= len(r["description"].split()) <= 200 and 2 <= len(r["synopsis"].split()) <= 15]
    by_package = {r["package"]: r for r in pool}
    order = [by_package[p] for p in hash_order(by_package, seed, "debian:")]
    vec = TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=2, dtype=np.float32)
    x = vec.fit_transform([r["description"] for r in order])

    kept: list[int] = []
    stems: set[str] = set()
    synopses: set[str] = set()
    chunk = 2000
    for lo in range(0, len(order), chunk):
        if len(kept) >= size:
            break
        ids = list(range(lo, min(lo + chunk, len(order))))
        sim_kept = (x[ids] @ x[kept].T).toarray() if kept else np.zeros((len(ids), 0))
        sim_chunk = (x[ids] @ x[ids].T).toarray()
        kept_here: list[int] = []
        for a, i in enumerate(ids):
            r = order[i]
            st, syn = stem(r["package"]), _norm_synopsis(r["synopsis"])
            if st in stems or syn in synopses:
                continue
            if sim_kept.shape[1] and sim_kept[a].max() >= threshold:
                continue
            if kept_here and sim_chunk[a, kept_here].max() >= threshold:
                continue
            kept_here.append(a)
            kept.append(i)
            stems.add(st)
            synopses.add(syn)
            if len(kept) >= size:
                break
    if len(kept) < size:
        raise DataError(f"{src}: only {len(kept)} rows survive deduplication, asked {size}")

    selected = sorted((order[i] for i in kept), key=lambda r: r["package"])
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as g:
        for r in selected:
            row = {"package": r["package"], "synopsis": r["synopsis"],
                   "description": r["description"]}
            g.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    data = buf.getvalue()
    Path(out).write_bytes(data)
    return {"source_rows": len(rows), "pool": len(pool), "visited": kept[-1] + 1,
            "kept": len(kept), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- loading ---------------------------------------------------------------------------

def read_fixture() -> list[dict]:
    """The fixture's rows, sorted by package."""
    from ..data import registry

    path = registry.files("debian-summaries")[0]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _split(seed: int) -> dict[str, list[dict]]:
    return split_groups(read_fixture(), lambda r: stem(r["package"]), seed)


def summaries(seed: int = 0) -> dict[str, list[dict]]:
    """debian-summaries: {"text": description, "target": synopsis, "package"} per split."""
    return {name: [{"text": r["description"], "target": r["synopsis"], "package": r["package"]}
                   for r in rows]
            for name, rows in _split(seed).items()}


def match(seed: int = 0) -> dict[str, list[dict]]:
    """debian-match: (description, synopsis) pairs, half of them negatives (see above)."""
    splits = _split(seed)
    rare = _content_vocabulary([r["description"] for rows in splits.values() for r in rows])
    return {name: _pairs(rows, rare, seed) for name, rows in splits.items()}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) >= 3}


def _content_vocabulary(descriptions: Sequence[str], max_df: float = 0.05) -> dict[str, int]:
    """Content words -> column: words in at most `max_df` of the descriptions."""
    df: dict[str, int] = {}
    for d in descriptions:
        for w in _words(d):
            df[w] = df.get(w, 0) + 1
    limit = max_df * len(descriptions)
    return {w: i for i, w in enumerate(sorted(w for w, c in df.items() if c <= limit))}


def _jaccard(rows: list[dict], vocab: dict[str, int], of: list[int]) -> np.ndarray:
    """(len(of), n) Jaccard overlap |A & B| / |A | B| of content-word sets, rows `of`
    against all rows."""
    from scipy.sparse import csr_matrix

    indptr, indices = [0], []
    for r in rows:
        indices += sorted(vocab[w] for w in _words(r["description"]) if w in vocab)
        indptr.append(len(indices))
    m = csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                   shape=(len(rows), len(vocab)))
    inter = (m[of] @ m.T).toarray()
    size = np.asarray(m.sum(axis=1)).ravel()
    union = size[of][:, None] + size[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _pairs(rows: list[dict], vocab: dict[str, int], seed: int) -> list[dict]:
    n = len(rows)
    if n < 2:
        return [_pair(r, r, "positive") for r in rows]
    index = {r["package"]: i for i, r in enumerate(rows)}
    ranked = [index[p] for p in hash_order(index, seed, "match:")]
    hard = sorted(ranked[: n // 4])
    random_neg = set(ranked[n // 4: n // 2])

    overlap = dict(zip(hard, _jaccard(rows, vocab, hard)))
    prefixes = np.array([prefix(r["package"]) for r in rows])
    out = []
    for i, r in enumerate(rows):
        if i in overlap:
            score = overlap[i] + (prefixes == prefixes[i])  # same prefix first, then overlap
            score[i] = -1.0
            out.append(_pair(r, rows[int(np.argmax(score))], "hard"))
        elif i in random_neg:
            h = int.from_bytes(hashlib.sha256(f"{seed}:neg:{r['package']}".encode()).digest()[:8],
                               "big")
            out.append(_pair(r, rows[(i + 1 + h % (n - 1)) % n], "random"))
        else:
            out.append(_pair(r, r, "positive"))
    return out


def _pair(r: dict, other: dict, kind: str) -> dict:
    return {"text": r["description"], "text_pair": other["synopsis"],
            "label": int(kind == "positive"), "package": r["package"],
            "pair_package": other["package"], "kind": kind}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "build":
        print("usage: python -m lmforge.tasks.debian build SRC.jsonl.gz OUT.jsonl.gz",
              file=sys.stderr)
        return 2
    print(json.dumps(build_fixture(argv[1], argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
