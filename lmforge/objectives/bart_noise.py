"""BART's noising functions (Lewis et al. 2019, section 2.2). The decoder's target is
always the original sequence; the encoder reads a corrupted one:

- token masking: random tokens -> [MASK];
- token deletion: random tokens removed (the model must find where);
- text infilling: spans with lengths ~ Poisson(lambda = 3) are each replaced by ONE
  [MASK]; a zero-length span inserts a [MASK];
- sentence permutation: the sentences are shuffled;
- document rotation: a uniformly chosen token becomes the start.

BART's preset (`bart_noise` defaults) is text infilling of 30% of the tokens plus
sentence permutation. Semantics follow fairseq's `denoising_dataset.py`:

- the mask ratio counts tokens *covered* by spans: num_to_mask = ceil(n * ratio); span
  lengths are drawn until they reach num_to_mask and the last one is cut to hit it, so
  exactly num_to_mask tokens are removed; zero-length spans drawn on the way become
  inserted [MASK]s;
- token masking and deletion take exactly ceil(n * ratio) tokens;
- with `word_starts` (fairseq's whole-word spans), infilling counts and masks words;
- noise is applied in fairseq's order: permutation, then masking, then rotation.

One difference: fairseq places spans at random starts that may overlap (covering fewer
tokens than num_to_mask); here spans are laid out without overlap, a uniformly random
interleaving of the spans and the kept tokens, so the count is exact. The paper's
lambda = 3 is the default; fairseq's released BART command used 3.5 and replaced 10% of
the spans by random tokens (`random_ratio=0.1`).

Every function takes a 1-D sequence of content tokens (no <s> / </s>: the objective adds
those around both sides) and returns (encoder_input, target), int64 arrays. With
`return_hidden=True` `bart_noise` also returns `hidden`, a bool
array over the target's positions: True where the encoder input does not show that token
(removed by a span, masked, replaced by a random token, deleted, or cut by `max_len`), the
tokens the model must infer rather than copy. It is computed from the draws the noise makes
anyway (each source token's origin in the target is tracked), so the random stream, and
the outputs, are the same with or without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError, DataError
from .masking import as_ids, check_probability, random_token_ids
from .pairs import sentence_ends

MASK_KINDS = ("infill", "token", "delete")


def _nonempty(ids: np.ndarray, what: str, need: int = 1) -> None:
    if len(ids) < need:
        raise DataError(f"{what} needs at least {need} token(s), got {len(ids)}")


def _replacements(rng, n, *, mask_id, random_ratio, vocab_size, special_ids) -> np.ndarray:
    """`n` replacement ids: [MASK], or with probability random_ratio a random token."""
    out = np.full(n, mask_id, dtype=np.int64)
    if random_ratio > 0:
        if vocab_size is None:
            raise ConfigError("random replacement (random_ratio > 0) needs vocab_size")
        rand = rng.random(n) < random_ratio
        out[rand] = random_token_ids(rng, int(rand.sum()), vocab_size, [*special_ids, mask_id])
    return out


def _check_mask(mask_id, ratio, random_ratio):
    if mask_id is None:
        raise ConfigError("BART noising needs a [MASK] token id; the tokenizer has none")
    check_probability("mask ratio", ratio)
    check_probability("random_ratio", random_ratio, zero_ok=True, one_ok=True)


# -- token masking and deletion --------------------------------------------------------------


def _token_masking(tokens, rng, *, mask_id, ratio, random_ratio, vocab_size, special_ids):
    """token_masking's (encoder input, target, origin): origin[i] is the target position
    the input's token i shows, -1 where it was masked or replaced."""
    _check_mask(mask_id, ratio, random_ratio)
    ids = as_ids(tokens)
    _nonempty(ids, "token masking")
    pos = rng.choice(len(ids), math.ceil(len(ids) * ratio), replace=False)
    out = ids.copy()
    out[pos] = _replacements(rng, len(pos), mask_id=mask_id, random_ratio=random_ratio,
                             vocab_size=vocab_size, special_ids=special_ids)
    origin = np.arange(len(ids))
    origin[pos] = -1
    return out, ids, origin


def token_masking(tokens, rng: np.random.Generator, *, mask_id: int, ratio: float = 0.3,
                  random_ratio: float = 0.0, vocab_size: int | None = None,
                  special_ids: Iterable[int] = ()):
    """ceil(n * ratio) distinct random tokens -> [MASK] (or, each with probability
    random_ratio, a random non-special token)."""
    return _token_masking(tokens, rng, mask_id=mask_id, ratio=ratio, random_ratio=random_ratio,
                          vocab_size=vocab_size, special_ids=special_ids)[:2]


def _token_deletion(tokens, rng, *, ratio):
    check_probability("deletion ratio", ratio)
    ids = as_ids(tokens)
    _nonempty(ids, "token deletion", need=2)
    k = min(math.ceil(len(ids) * ratio), len(ids) - 1)
    keep = np.ones(len(ids), bool)
    keep[rng.choice(len(ids), k, replace=False)] = False
    return ids[keep], ids, np.flatnonzero(keep)


def token_deletion(tokens, rng: np.random.Generator, *, ratio: float = 0.3):
    """ceil(n * ratio) distinct random tokens removed (at least one token is kept)."""
    return _token_deletion(tokens, rng, ratio=ratio)[:2]


def hidden_positions(origin: np.ndarray, n: int) -> np.ndarray:
    """The target positions (of n) that no encoder input token shows: `origin` gives, for
    each input token, the target position it copies, or -1 (a [MASK], a random token)."""
    hidden = np.ones(n, bool)
    hidden[origin[origin >= 0]] = False
    return hidden


# -- text infilling --------------------------------------------------------------------------


def poisson_span_lengths(num_to_mask: int, rng: np.random.Generator,
                         poisson_lambda: float = 3.0) -> np.ndarray:
    """Span lengths ~ Poisson(lambda), drawn until they cover `num_to_mask`; the last one
    is cut so that they sum to exactly num_to_mask (fairseq). Zero lengths are kept:
    each is a [MASK] inserted without removing anything."""
    if not poisson_lambda > 0:
        raise ConfigError(f"poisson_lambda must be > 0, got {poisson_lambda}")
    lengths = np.zeros(0, dtype=np.int64)
    while lengths.sum() < num_to_mask:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, max(num_to_mask, 1))])
    if num_to_mask == 0:
        return lengths[:0]
    cum = np.cumsum(lengths)
    last = int(np.searchsorted(cum, num_to_mask))  # first span reaching the budget
    lengths = lengths[: last + 1].copy()
    lengths[last] = num_to_mask - (cum[last - 1] if last else 0)
    return lengths


def _unit_starts(n: int, word_starts) -> np.ndarray:
    """Token offset where each unit (word, or token) starts."""
    if word_starts is None:
        return np.arange(n)
    starts = np.asarray(word_starts, dtype=bool).copy()
    if starts.shape != (n,):
        raise DataError(f"word_starts has shape {starts.shape}, tokens ({n},)")
    starts[0] = True  # the sequence's first token starts its first word
    return np.flatnonzero(starts)


def infill_plan(n_units: int, rng: np.random.Generator, *, ratio: float = 0.3,
                poisson_lambda: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Where text infilling puts its spans over `n_units` units: returns (starts,
    lengths), the first unit covered by each span (for a zero-length span: the unit it
    is inserted before, n_units at the end) and its length, in order. Exactly
    ceil(n_units * ratio) units are covered, by non-overlapping spans."""
    num_to_mask = math.ceil(n_units * ratio)
    lengths = rng.permutation(poisson_span_lengths(num_to_mask, rng, poisson_lambda))
    k, kept = len(lengths), n_units - num_to_mask
    # a uniformly random interleaving of k spans and the kept units
    is_span = np.zeros(kept + k, bool)
    is_span[rng.choice(kept + k, k, replace=False)] = True
    consumed = np.ones(kept + k, dtype=np.int64)
    consumed[is_span] = lengths
    first_unit = np.cumsum(consumed) - consumed
    return first_unit[is_span], lengths


def _text_infilling(tokens, rng, *, mask_id, ratio, poisson_lambda, word_starts,
                    random_ratio, vocab_size, special_ids):
    """text_infilling's (encoder input, target, origin): origin[i] is the target position
    the input's token i shows, -1 for a span's [MASK] (or random token)."""
    _check_mask(mask_id, ratio, random_ratio)
    ids = as_ids(tokens)
    _nonempty(ids, "text infilling")
    unit_start = _unit_starts(len(ids), word_starts)
    starts, lengths = infill_plan(len(unit_start), rng, ratio=ratio,
                                  poisson_lambda=poisson_lambda)
    bounds = np.append(unit_start, len(ids))  # token offset of unit u, and of "the end"
    removed = np.zeros(len(ids) + 1, dtype=np.int64)  # +1 at span start, -1 at its end
    np.add.at(removed, bounds[starts], 1)
    np.add.at(removed, bounds[starts + lengths], -1)
    keep = np.cumsum(removed)[:-1] == 0
    kept = ids[keep]
    # each span's [MASK] goes where its first token was: after the kept tokens before it
    at = np.concatenate([[0], np.cumsum(keep)])[bounds[starts]]
    values = _replacements(rng, len(starts), mask_id=mask_id, random_ratio=random_ratio,
                           vocab_size=vocab_size, special_ids=special_ids)
    origin = np.insert(np.flatnonzero(keep), at, -1)
    return np.insert(kept, at, values), ids, origin


def text_infilling(tokens, rng: np.random.Generator, *, mask_id: int, ratio: float = 0.3,
                   poisson_lambda: float = 3.0, word_starts=None, random_ratio: float = 0.0,
                   vocab_size: int | None = None, special_ids: Iterable[int] = ()):
    """Spans covering ceil(n * ratio) tokens (words, with `word_starts`) with lengths ~
    Poisson(poisson_lambda), each replaced by one [MASK]; zero-length spans insert one."""
    return _text_infilling(tokens, rng, mask_id=mask_id, ratio=ratio,
                           poisson_lambda=poisson_lambda, word_starts=word_starts,
                           random_ratio=random_ratio, vocab_size=vocab_size,
                           special_ids=special_ids)[:2]


# -- sentence permutation and document rotation -------------------------------------------


def _sentence_bounds(ids: np.ndarray, ends, stop_ids) -> np.ndarray:
    """Exclusive sentence end offsets, the last one len(ids)."""
    n = len(ids)
    if ends is None:
        if stop_ids is None:
            raise ConfigError("sentence permutation needs sentence ends or stop token ids")
        return sentence_ends(ids, stop_ids)
    ends = np.unique(np.asarray(ends, dtype=np.int64))
    ends = ends[(ends > 0) & (ends <= n)]
    return ends if len(ends) and ends[-1] == n else np.append(ends, n)


def permutation_order(ends: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Token indices that put the sentences ending at `ends` in a random order."""
    starts = np.concatenate([[0], ends[:-1]])
    return np.concatenate([np.arange(starts[s], ends[s]) for s in rng.permutation(len(ends))])


def sentence_permutation(tokens, rng: np.random.Generator, *, ends=None,
                         stop_ids: Iterable[int] | None = None):
    """The sentences in a random order. Sentences end at `ends` (exclusive offsets) or
    after each run of `stop_ids` tokens (see `pairs.sentence_ends`); the text after the
    last stop is a sentence too."""
    ids = as_ids(tokens)
    _nonempty(ids, "sentence permutation")
    return ids[permutation_order(_sentence_bounds(ids, ends, stop_ids), rng)], ids


def document_rotation(tokens, rng: np.random.Generator):
    """Rotate so that a uniformly chosen token starts the document (tokens[k:] +
    tokens[:k], k uniform in [0, n))."""
    ids = as_ids(tokens)
    return np.roll(ids, -_rotation_start(ids, rng)), ids


def _rotation_start(ids: np.ndarray, rng: np.random.Generator) -> int:
    """The token document rotation puts first (its one draw)."""
    _nonempty(ids, "document rotation")
    return int(rng.integers(len(ids)))


# -- the combination -------------------------------------------------------------------------


def bart_noise(
    tokens,
    rng: np.random.Generator,
    *,
    mask_id: int | None,
    mask: str | None = "infill",
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    random_ratio: float = 0.0,
    permute_sentences: bool = True,
    rotate: bool = False,
    ends=None,
    stop_ids: Iterable[int] | None = None,
    word_starts=None,
    vocab_size: int | None = None,
    special_ids: Iterable[int] = (),
    max_len: int | None = None,
    return_hidden: bool = False,
):
    """Any combination of BART's noises; the defaults are BART's preset (text infilling of
    30% of the tokens with Poisson(3) spans, plus sentence permutation).

    `mask`: "infill", "token" (token masking), "delete" (token deletion) or None. Order
    as fairseq: permute sentences, then mask, then rotate. Sentence boundaries come from
    `ends` or `stop_ids`; `word_starts` makes infilling work on whole words. `max_len`
    cuts the encoder input to its first max_len tokens (last, after rotation).

    `return_hidden`: returns (encoder input, target, hidden), hidden[j] True where the
    input does not show target token j: it was masked (or replaced by a random token) or
    deleted or removed by a span, or its copy was cut by max_len. Permutation and rotation
    move tokens and hide none. The same draws are made either way.
    """
    if mask not in (*MASK_KINDS, None):
        raise ConfigError(f"mask must be one of {', '.join(MASK_KINDS)} or None, got {mask!r}")
    ids = as_ids(tokens)
    _nonempty(ids, "BART noising")
    src = ids
    origin = np.arange(len(ids))  # the target position each src token shows (-1: none)
    ws = None if word_starts is None else np.asarray(word_starts, dtype=bool)
    if ws is not None and ws.shape != ids.shape:
        raise DataError(f"word_starts has shape {ws.shape}, tokens {ids.shape}")
    if permute_sentences:
        order = permutation_order(_sentence_bounds(ids, ends, stop_ids), rng)
        src = src[order]
        origin = origin[order]
        ws = None if ws is None else ws[order]
    if mask == "infill":
        src, _, at = _text_infilling(src, rng, mask_id=mask_id, ratio=mask_ratio,
                                     poisson_lambda=poisson_lambda, word_starts=ws,
                                     random_ratio=random_ratio, vocab_size=vocab_size,
                                     special_ids=special_ids)
    elif mask == "token":
        src, _, at = _token_masking(src, rng, mask_id=mask_id, ratio=mask_ratio,
                                    random_ratio=random_ratio, vocab_size=vocab_size,
                                    special_ids=special_ids)
    elif mask == "delete":
        src, _, at = _token_deletion(src, rng, ratio=mask_ratio)
    if mask is not None:  # `at`: positions in the (permuted) input the masking read
        origin = np.where(at >= 0, origin[np.maximum(at, 0)], -1)
    if rotate:
        k = _rotation_start(src, rng)
        src, origin = np.roll(src, -k), np.roll(origin, -k)
    if max_len is not None:
        src, origin = src[:max_len], origin[:max_len]
    if return_hidden:
        return src, ids, hidden_positions(origin, len(ids))
    return src, ids
