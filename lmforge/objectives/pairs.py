"""Sentence-pair examples: BERT's next sentence prediction (NSP) and ALBERT's sentence
order prediction (SOP).

A document is a list of segments (token id lists: sentences, or runs of sentences cut by
`split_segments`). Every two adjacent segments (A, B) of a document make one example:

    [CLS] A [SEP] B [SEP] [PAD] ...
    token_type_ids   0 0..0 0   1..1 1   0 ...
    attention_mask   1 1..1 1   1..1 1   0 ...

NSP (BERT): with probability 1/2 B is the real next segment (label 0 = IsNext), else B
is a random segment of another document (label 1 = NotNext): Hugging Face
`BertForPreTraining.next_sentence_label`, "0 indicates sequence B is a continuation of
sequence A, 1 indicates sequence B is a random sequence".

SOP (ALBERT): with probability 1/2 the pair keeps its order (label 0), else it is
swapped to [CLS] B [SEP] A [SEP] (label 1): `AlbertForPreTraining.sentence_order_label`,
"0 indicates original order (sequence A, then sequence B), 1 indicates switched order".

Pairs longer than max_len - 3 are cut as BERT's `truncate_seq_pair` does: one token at a
time from the longer segment (B on a tie), from the front or the back at random when an
rng is given (from the back without one, like HF's "longest_first").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .masking import as_ids, check_probability

# -- segments ------------------------------------------------------------------------------


def stop_token_ids(tokenizer, chars: str = ".!?") -> list[int]:
    """Ids of the tokens whose text, stripped of whitespace, ends a sentence: it ends with
    one of `chars` and is punctuation only ('.', '?', '!', ".'", ...). For
    `sentence_ends(..., stop_ids)` with a byte-level BPE tokenizer."""
    special = set(tokenizer.special_tokens.values())
    ends = tuple(c.encode() for c in chars)
    out = []
    for i in range(tokenizer.vocab_size):
        b = (tokenizer.id_to_bytes(i) or b"").strip()
        if i not in special and b.endswith(ends) and not any(chr(c).isalnum() for c in b):
            out.append(i)
    return out


def sentence_ends(ids, stop_ids: Iterable[int]) -> np.ndarray:
    """Exclusive end offsets of the sentences of `ids`: after each run of stop tokens
    (so '?!' ends one sentence), and at the end of the sequence."""
    ids = as_ids(ids)
    stop = np.isin(ids, np.fromiter(stop_ids, dtype=np.int64))
    after_run = stop & ~np.concatenate([stop[1:], [False]])  # last stop token of a run
    ends = np.flatnonzero(after_run) + 1
    if len(ids) and (len(ends) == 0 or ends[-1] != len(ids)):
        ends = np.append(ends, len(ids))
    return ends.astype(np.int64)


def split_segments(ids, max_tokens: int | None = None, *, ends=None) -> list[np.ndarray]:
    """Cut a document's token ids into segments.

    With `ends` (sentence end offsets, e.g. from `sentence_ends`): one segment per
    sentence, or, with `max_tokens`, consecutive sentences joined greedily while they fit
    in max_tokens (a longer sentence is cut into max_tokens chunks). Without `ends`:
    fixed chunks of `max_tokens` (the last may be shorter). Empty segments are dropped.
    """
    ids = as_ids(ids)
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    if ends is None:
        if max_tokens is None:
            raise ConfigError("split_segments needs sentence ends or max_tokens")
        return [ids[i : i + max_tokens] for i in range(0, len(ids), max_tokens)]
    bounds = np.unique(np.clip(np.asarray(ends, dtype=np.int64), 0, len(ids)))
    sentences = np.split(ids, bounds[bounds < len(ids)])
    sentences = [s for s in sentences if len(s)]
    if max_tokens is None:
        return sentences
    segments, current, size = [], [], 0
    for s in sentences:
        for p in (s[i : i + max_tokens] for i in range(0, len(s), max_tokens)):
            if current and size + len(p) > max_tokens:
                segments.append(np.concatenate(current))
                current, size = [], 0
            current.append(p)
            size += len(p)
    if current:
        segments.append(np.concatenate(current))
    return segments


# -- truncation and packing ----------------------------------------------------------------


def truncate_pair(a, b, max_tokens: int, rng: np.random.Generator | None = None):
    """BERT's `truncate_seq_pair`: drop tokens from the longer of (a, b) (b on a tie) until
    len(a) + len(b) <= max_tokens. With `rng`, each dropped token comes off the front or
    the back with probability 1/2 (BERT); without, off the back."""
    a, b = as_ids(a), as_ids(b)
    excess = len(a) + len(b) - max_tokens
    if excess <= 0:
        return a, b
    # cut the longer one down to the other's length, then alternate starting with b
    d = len(a) - len(b)
    cut_a, cut_b = (min(excess, d), 0) if d > 0 else (0, min(excess, -d))
    rest = excess - cut_a - cut_b
    cut_b += (rest + 1) // 2
    cut_a += rest // 2

    def cut(x, k):
        front = 0 if rng is None else int(rng.binomial(k, 0.5))  # k fair coin flips
        return x[front : len(x) - (k - front)]

    return cut(a, cut_a), cut(b, cut_b)


def pack_pair(a, b, *, max_len: int, cls_id: int, sep_id: int, pad_id: int,
              rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """`[CLS] a [SEP] b [SEP]`, truncated to and padded to `max_len`: input_ids,
    token_type_ids (0 for CLS, a and the first SEP; 1 for b and its SEP; 0 on padding)
    and attention_mask (1 on real tokens)."""
    a, b = truncate_pair(a, b, max_len - 3, rng)
    ids = np.full(max_len, pad_id, dtype=np.int64)
    types = np.zeros(max_len, dtype=np.int64)
    attn = np.zeros(max_len, dtype=np.int64)
    na, nb = len(a), len(b)
    n = na + nb + 3
    ids[:n] = np.concatenate([[cls_id], a, [sep_id], b, [sep_id]])
    types[na + 2 : n] = 1
    attn[:n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": attn}


# -- NSP and SOP ---------------------------------------------------------------------------


def _check(max_len: int, ids: dict[str, int | None]) -> None:
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise ConfigError(f"sentence pairs need token ids for {', '.join(missing)}")
    if max_len < 5:
        raise ConfigError(f"max_len must be >= 5 for [CLS] a [SEP] b [SEP], got {max_len}")


def _segments(documents) -> list[list[np.ndarray]]:
    return [[s for s in (as_ids(x, "segment") for x in doc) if len(s)] for doc in documents]


def _stack(examples: list[dict], label_key: str, labels: list[int]) -> dict[str, np.ndarray]:
    out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    out[label_key] = np.array(labels, dtype=np.int64)
    return out


def nsp_examples(
    documents: Sequence[Sequence],
    rng: np.random.Generator | int,
    *,
    max_len: int,
    cls_id: int | None,
    sep_id: int | None,
    pad_id: int | None,
    random_next_prob: float = 0.5,
    random_truncation: bool = True,
) -> dict[str, np.ndarray]:
    """BERT's next-sentence examples, one per pair of adjacent segments of each document.

    With probability `random_next_prob` B is replaced by a uniformly chosen segment of a
    uniformly chosen *other* document (label 1, NotNext); else B is A's successor (label
    0, IsNext). Returns (N, max_len) arrays input_ids, token_type_ids, attention_mask and
    (N,) next_sentence_label, in document order. Deterministic given `rng` (a Generator
    or a seed).
    """
    _check(max_len, {"[CLS]": cls_id, "[SEP]": sep_id, "[PAD]": pad_id})
    check_probability("random_next_prob", random_next_prob, zero_ok=True, one_ok=True)
    rng = np.random.default_rng(rng)
    docs = _segments(documents)
    sources = [d for d, segs in enumerate(docs) if segs]  # documents a random B can come from
    where = {d: k for k, d in enumerate(sources)}
    if not any(len(segs) >= 2 for segs in docs):
        raise DataError("no document has two segments, so no sentence pair can be built")
    if random_next_prob > 0 and len(sources) < 2:
        raise DataError("next sentence prediction needs at least two non-empty documents")
    trunc_rng = rng if random_truncation else None
    examples, labels = [], []
    for d, segs in enumerate(docs):
        for i in range(len(segs) - 1):
            a, b, label = segs[i], segs[i + 1], 0
            if rng.random() < random_next_prob:
                j = int(rng.integers(len(sources) - 1))  # uniform over the other documents
                other = docs[sources[j + (j >= where[d])]]
                b, label = other[rng.integers(len(other))], 1
            examples.append(pack_pair(a, b, max_len=max_len, cls_id=cls_id, sep_id=sep_id,
                                      pad_id=pad_id, rng=trunc_rng))
            labels.append(label)
    return _stack(examples, "next_sentence_label", labels)


def sop_examples(
    documents: Sequence[Sequence],
    rng: np.random.Generator | int,
    *,
    max_len: int,
    cls_id: int | None,
    sep_id: int | None,
    pad_id: int | None,
    swap_prob: float = 0.5,
    random_truncation: bool = True,
) -> dict[str, np.ndarray]:
    """ALBERT's sentence-order examples, one per pair of adjacent segments (A, B) of each
    document: with probability `swap_prob` the example is [CLS] B [SEP] A [SEP] (label 1),
    else [CLS] A [SEP] B [SEP] (label 0). Same arrays as `nsp_examples`, with
    sentence_order_label."""
    _check(max_len, {"[CLS]": cls_id, "[SEP]": sep_id, "[PAD]": pad_id})
    check_probability("swap_prob", swap_prob, zero_ok=True, one_ok=True)
    rng = np.random.default_rng(rng)
    docs = _segments(documents)
    if not any(len(segs) >= 2 for segs in docs):
        raise DataError("no document has two segments, so no sentence pair can be built")
    trunc_rng = rng if random_truncation else None
    examples, labels = [], []
    for segs in docs:
        for i in range(len(segs) - 1):
            a, b, label = segs[i], segs[i + 1], 0
            if rng.random() < swap_prob:
                a, b, label = b, a, 1
            examples.append(pack_pair(a, b, max_len=max_len, cls_id=cls_id, sep_id=sep_id,
                                      pad_id=pad_id, rng=trunc_rng))
            labels.append(label)
    return _stack(examples, "sentence_order_label", labels)
