"""Masked-LM corruption (BERT, RoBERTa) and ELECTRA's replaced-token inputs.

BERT's recipe, per sequence:

    eligible = positions whose id is not special (CLS, SEP, PAD, MASK, ...)
    chosen   ~ mask_prob (0.15) of the eligible positions
    of the chosen:  80% -> [MASK],  10% -> a random token,  10% unchanged
    labels   = original id at chosen positions, IGNORE (-100) elsewhere

Conventions (see docs/objectives.md):

- How many are chosen. Default (`exact=False`): each eligible position (or word) is
  chosen independently with probability `mask_prob`, as Hugging Face's
  `DataCollatorForLanguageModeling` does. `exact=True`: exactly
  `max(1, round(n * mask_prob))` of the n eligible tokens, as BERT's original
  `create_pretraining_data.py` does (at least one target per sequence).
- The random token is drawn uniformly from the *non-special* ids of the vocabulary, as
  fairseq's RoBERTa does (HF draws from the whole vocabulary, special ids included);
  a random [MASK], [CLS] or [SEP] would put structure into the input that the model
  never sees otherwise.
- Whole-word masking (`word_starts`): a word is a start token and the tokens after it
  up to the next start; the choice is made per word and covers all its tokens. The
  80/10/10 split is then drawn per token, as in BERT.
- Static masking (BERT: a sequence's mask is fixed once) and dynamic masking (RoBERTa:
  re-drawn each time the sequence is seen) differ only in how the RNG is seeded:
  `static_rngs(seed, keys)` derives a sequence's generator from (seed, sequence key),
  `dynamic_rngs(seed, draw, keys)` from (seed, draw, sequence key), where `draw` is the
  epoch or the trainer step. Nothing needs storing for an exact resume: the generators
  are rebuilt from integers the trainer already checkpoints.

ELECTRA: the generator (a small MLM) sees `mask_tokens(..., **ELECTRA_MASKING)`
inputs; its samples at the chosen positions make the discriminator's input, and the
discriminator's labels are 1 where that input differs from the original.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .clm import IGNORE

# ELECTRA's masking (Clark et al. 2020, pretrain_helpers.mask): 85% [MASK], 15% unchanged,
# no random tokens; the generator's samples then replace every chosen position.
ELECTRA_MASKING = {"mask_replace_prob": 0.85, "random_replace_prob": 0.0}


# -- checks shared by the corruption functions ---------------------------------------------


def check_probability(name: str, p: float, *, zero_ok: bool = False, one_ok: bool = False):
    """Raise ConfigError unless `p` lies in (0, 1), with 0 and/or 1 allowed if asked."""
    low_ok = p >= 0 if zero_ok else p > 0
    high_ok = p <= 1 if one_ok else p < 1
    if not (isinstance(p, (int, float)) and low_ok and high_ok):
        lo, hi = "[" if zero_ok else "(", "]" if one_ok else ")"
        raise ConfigError(f"{name} must be in {lo}0, 1{hi}, got {p!r}")


def as_ids(tokens, name: str = "tokens") -> np.ndarray:
    """A 1-D int64 copy of a token sequence (list, array or tensor)."""
    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    ids = np.array(tokens, dtype=np.int64)
    if ids.ndim != 1:
        raise DataError(f"{name} must be a 1-D token sequence, got shape {ids.shape}")
    return ids


# -- RNG seeding: static vs dynamic masking -------------------------------------------------


def stream_tag(stream: str) -> int:
    """A stable 32-bit number for a stream name (never Python's salted `hash`)."""
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=4).digest(), "little")


def make_rng(seed: int, *keys: int, stream: str) -> np.random.Generator:
    """np.random.default_rng([tag(stream), seed, *keys]).

    The stream tag keeps objectives (and static vs dynamic draws) from sharing a stream
    with each other or with the sampler's `default_rng([seed, epoch])`. It matters: numpy's
    SeedSequence gives [a, b] and [a, b, 0] the same stream, so bare key lists of
    different lengths can collide.
    """
    values = [seed, *keys]
    if any(int(v) < 0 for v in values):
        raise ConfigError(f"seed and RNG keys must be non-negative integers, got {values}")
    return np.random.default_rng([stream_tag(stream), *(int(v) for v in values)])


def batch_rng(seed: int, step: int, stream: str = "mlm") -> np.random.Generator:
    """One generator for a whole batch, from (seed, step): dynamic noise that a resumed
    run redraws exactly, since the trainer checkpoints `step`."""
    return make_rng(seed, step, stream=f"{stream}/batch")


def static_rngs(seed: int, keys: Iterable[int], stream: str = "mlm") -> list[np.random.Generator]:
    """One generator per sequence from (seed, key): the same mask every time the sequence is
    seen (BERT's static masking). `keys`: sequence ids, or `sequence_keys(batch)`."""
    return [make_rng(seed, k, stream=f"{stream}/static") for k in keys]


def dynamic_rngs(
    seed: int, draw: int, keys: Iterable[int], stream: str = "mlm"
) -> list[np.random.Generator]:
    """One generator per sequence from (seed, draw, key): a fresh mask for every draw
    (RoBERTa's dynamic masking). `draw`: the epoch (with sequence ids as keys, as
    fairseq's (seed, epoch, index)) or the trainer step (row indices will do as keys)."""
    return [make_rng(seed, draw, k, stream=f"{stream}/dynamic") for k in keys]


def sequence_key(tokens) -> int:
    """A 64-bit key from a sequence's contents: identical windows get identical keys, so
    static masking needs no sequence ids from the sampler."""
    data = np.ascontiguousarray(as_ids(tokens)).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def sequence_keys(batch) -> list[int]:
    """`sequence_key` of each row of a (B, T) batch."""
    if isinstance(batch, Tensor):
        batch = batch.detach().cpu().numpy()
    return [sequence_key(row) for row in np.asarray(batch)]


# -- random replacement tokens -------------------------------------------------------------


def random_token_ids(
    rng: np.random.Generator, n: int, vocab_size: int, special_ids: Iterable[int] = ()
) -> np.ndarray:
    """`n` ids drawn uniformly from range(vocab_size) without the special ids."""
    s = np.unique(np.array([i for i in special_ids if 0 <= i < vocab_size], dtype=np.int64))
    if vocab_size - len(s) <= 0:
        raise ConfigError(f"no ordinary token ids to draw from (vocab_size={vocab_size})")
    r = rng.integers(0, vocab_size - len(s), size=n)
    # the r-th non-special id is r + #{specials s_j : s_j - j <= r}   (s sorted)
    return r + np.searchsorted(s - np.arange(len(s)), r, side="right")


# -- word starts for byte-level BPE --------------------------------------------------------


def byte_level_word_starts(ids, tokenizer) -> np.ndarray:
    """Which tokens start a whitespace-delimited word, for a byte-level BPE tokenizer.

    A token starts a word if its bytes begin with whitespace (GPT-2's 'Ġ' / 'Ċ'), if it
    is first or follows a special token, or if the token before it ends with a newline
    or tab (GPT-2's pre-tokenizer attaches only a single leading space to a word, so
    after '\\n' a new word begins without one). Special tokens themselves are False.
    Works on a 1-D or 2-D array of ids.
    """
    ids = np.asarray(ids, dtype=np.int64)
    special = set(tokenizer.special_tokens.values())
    uniq, inverse = np.unique(ids, return_inverse=True)
    lead_space = np.zeros(len(uniq), bool)
    tail_break = np.zeros(len(uniq), bool)  # ends with whitespace other than ' '
    is_special = np.zeros(len(uniq), bool)
    for k, i in enumerate(uniq.tolist()):
        if i in special:
            is_special[k] = True
            continue
        b = tokenizer.id_to_bytes(i) or b""
        lead_space[k] = b[:1].isspace()
        tail_break[k] = b[-1:].isspace() and b[-1:] != b" "
    lead_space, tail_break, is_special = (
        a[inverse].reshape(ids.shape) for a in (lead_space, tail_break, is_special)
    )
    prev_special = np.ones_like(is_special)  # "before the first token" counts as special
    prev_special[..., 1:] = is_special[..., :-1]
    prev_break = np.zeros_like(tail_break)
    prev_break[..., 1:] = tail_break[..., :-1]
    return ~is_special & (lead_space | prev_special | prev_break)


def wordpiece_word_starts(ids, tokenizer) -> np.ndarray:
    """Which tokens start a word, for a WordPiece tokenizer (BERT): every non-special token
    that is not a '##' continuation piece. Works on a 1-D or 2-D array of ids."""
    ids = np.asarray(ids, dtype=np.int64)
    special = set(tokenizer.special_tokens.values())
    uniq, inverse = np.unique(ids, return_inverse=True)
    start = np.array([i not in special and not tokenizer.is_continuation(i)
                      for i in uniq.tolist()], dtype=bool)
    return start[inverse].reshape(ids.shape)


def word_starts(ids, tokenizer) -> np.ndarray:
    """Word starts for whole-word masking, by the tokenizer's kind (WordPiece or
    byte-level BPE)."""
    if hasattr(tokenizer, "is_continuation"):
        return wordpiece_word_starts(ids, tokenizer)
    return byte_level_word_starts(ids, tokenizer)


# -- masked-LM corruption ------------------------------------------------------------------


def _units(eligible: np.ndarray, word_starts: np.ndarray | None) -> np.ndarray:
    """Unit (word, or token) index of each eligible position; -1 where not eligible."""
    if word_starts is None:
        starts = eligible
    else:
        prev = np.concatenate([[False], eligible[:-1]])
        starts = eligible & (word_starts | ~prev)  # a word also starts after a special token
    unit = np.cumsum(starts) - 1
    unit[~eligible] = -1
    return unit


def _choose_units(rng, sizes: np.ndarray, mask_prob: float, exact: bool) -> np.ndarray:
    """Which units (of the given token sizes) are chosen."""
    n_units = len(sizes)
    if not exact:
        return rng.random(n_units) < mask_prob
    # BERT: a budget of max(1, round(n_tokens * p)) tokens; whole units are taken in a
    # random order, skipping any that would overshoot (so words are never split).
    budget = max(1, int(round(int(sizes.sum()) * mask_prob)))
    chosen = np.zeros(n_units, bool)
    covered = 0
    for u in rng.permutation(n_units):
        if covered >= budget:
            break
        if covered + sizes[u] <= budget:
            chosen[u] = True
            covered += int(sizes[u])
    return chosen


def _mask_row(row, rng, word_starts, *, mask_id, vocab_size, special, mask_prob,
              mask_replace_prob, random_replace_prob, exact):
    inputs = row.copy()
    labels = np.full_like(row, IGNORE)
    eligible = ~np.isin(row, special)
    unit = _units(eligible, word_starts)
    n_units = int(unit.max()) + 1 if eligible.any() else 0
    if n_units == 0:
        return inputs, labels
    sizes = np.bincount(unit[eligible], minlength=n_units)
    chosen_units = _choose_units(rng, sizes, mask_prob, exact)
    chosen = eligible & chosen_units[np.maximum(unit, 0)]
    pos = np.flatnonzero(chosen)
    labels[pos] = row[pos]
    # 80 / 10 / 10: u < 0.8 -> [MASK]; 0.8 <= u < 0.9 -> random token; else unchanged
    u = rng.random(len(pos))
    to_mask = pos[u < mask_replace_prob]
    to_random = pos[(u >= mask_replace_prob) & (u < mask_replace_prob + random_replace_prob)]
    inputs[to_mask] = mask_id
    if len(to_random):
        inputs[to_random] = random_token_ids(rng, len(to_random), vocab_size, special)
    return inputs, labels


def mask_tokens(
    tokens,
    rng: np.random.Generator | Sequence[np.random.Generator],
    *,
    mask_id: int | None,
    vocab_size: int | None = None,
    special_ids: Iterable[int] = (),
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    exact: bool = False,
    word_starts=None,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-LM corruption of a (T,) sequence or (B, T) batch.

    Returns (input_ids, labels), int64 arrays of the input's shape: labels hold the
    original id at the chosen positions and IGNORE elsewhere.

    `rng`: one Generator used for every row in turn, or one per row (`static_rngs`,
    `dynamic_rngs`). `special_ids`: ids never chosen (CLS, SEP, PAD, ...; `mask_id` is
    added) and never drawn as random tokens. `vocab_size` is needed when
    `random_replace_prob > 0`. `exact`: choose exactly max(1, round(n * mask_prob)) of
    the n eligible tokens instead of each with probability mask_prob. `word_starts`:
    a boolean array of the input's shape (see `byte_level_word_starts`) for whole-word
    masking.
    """
    if mask_id is None:
        raise ConfigError("masked-LM needs a [MASK] token id; the tokenizer has none")
    check_probability("mask_prob", mask_prob)
    check_probability("mask_replace_prob", mask_replace_prob, zero_ok=True, one_ok=True)
    check_probability("random_replace_prob", random_replace_prob, zero_ok=True, one_ok=True)
    if mask_replace_prob + random_replace_prob > 1:
        raise ConfigError(
            f"mask_replace_prob + random_replace_prob must be <= 1, got "
            f"{mask_replace_prob} + {random_replace_prob}"
        )
    if random_replace_prob > 0 and vocab_size is None:
        raise ConfigError("random replacement (random_replace_prob > 0) needs vocab_size")

    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    batch = np.array(tokens, dtype=np.int64)
    if batch.ndim not in (1, 2):
        raise DataError(f"expected a (T,) or (B, T) token array, got shape {batch.shape}")
    single = batch.ndim == 1
    batch = batch[None] if single else batch
    if word_starts is not None:
        word_starts = np.asarray(word_starts, dtype=bool)
        word_starts = word_starts[None] if single else word_starts
        if word_starts.shape != batch.shape:
            raise DataError(f"word_starts has shape {word_starts.shape}, tokens {batch.shape}")
    rngs = [rng] * len(batch) if isinstance(rng, np.random.Generator) else list(rng)
    if len(rngs) != len(batch):
        raise ConfigError(f"got {len(rngs)} generators for {len(batch)} sequences")

    special = np.unique(np.array([*special_ids, mask_id], dtype=np.int64))
    inputs, labels = np.empty_like(batch), np.empty_like(batch)
    for b, row in enumerate(batch):
        inputs[b], labels[b] = _mask_row(
            row, rngs[b], None if word_starts is None else word_starts[b],
            mask_id=mask_id, vocab_size=vocab_size, special=special, mask_prob=mask_prob,
            mask_replace_prob=mask_replace_prob, random_replace_prob=random_replace_prob,
            exact=exact,
        )
    return (inputs[0], labels[0]) if single else (inputs, labels)


# -- ELECTRA: sampling from the generator and the discriminator's inputs --------------------


def sample_tokens(
    logits: Tensor,
    generator: torch.Generator | None = None,
    *,
    temperature: float = 1.0,
    gumbel: bool = False,
) -> Tensor:
    """Token ids sampled from softmax(logits / temperature) over the last dim: (..., V) ->
    (...). No gradient flows through the sample (ELECTRA's `stop_gradient`).

    `gumbel=True` samples by Gumbel-max, argmax(z + g) with g = -log(-log(u)), u ~ U(0, 1),
    as ELECTRA's `sample_from_softmax` does; otherwise torch.multinomial. Both draw from
    the same distribution; `generator` makes either reproducible.
    """
    if temperature <= 0:
        raise ConfigError(f"sampling temperature must be > 0, got {temperature}")
    with torch.no_grad():
        z = logits.detach().float() / temperature
        if gumbel:
            u = torch.rand(z.shape, generator=generator, device=z.device)
            u = u.clamp_min(torch.finfo(u.dtype).tiny)
            return (z - torch.log(-torch.log(u))).argmax(-1)
        probs = torch.softmax(z.reshape(-1, z.size(-1)), dim=-1)
        ids = torch.multinomial(probs, 1, generator=generator)
        return ids.reshape(z.shape[:-1])


def electra_discriminator_inputs(input_ids, labels, sampled_ids) -> tuple[Tensor, Tensor]:
    """The discriminator's input and replaced-token-detection labels.

    `input_ids`, `labels`: the masked inputs and MLM labels from `mask_tokens` (labels
    give the chosen positions and their original ids). `sampled_ids`: the generator's
    samples, either of the input's shape (only chosen positions are used) or 1-D, one per
    chosen position in row-major order.

    disc_input = the sample at chosen positions, the original token elsewhere;
    rtd_labels = 1 where disc_input != original, else 0. A sample that equals the
    original counts as not replaced (label 0), as in the paper. Returns int64 tensors.
    """
    input_ids, labels, sampled = (torch.as_tensor(x).long() for x in (input_ids, labels,
                                                                       sampled_ids))
    chosen = labels != IGNORE
    original = torch.where(chosen, labels, input_ids)
    if sampled.shape == labels.shape:
        disc_input = torch.where(chosen, sampled.to(original.device), original)
    elif sampled.dim() == 1 and sampled.numel() == int(chosen.sum()):
        disc_input = original.clone()
        disc_input[chosen] = sampled.to(original.device)
    else:
        raise DataError(
            f"sampled_ids has shape {tuple(sampled.shape)}; expected {tuple(labels.shape)} or "
            f"({int(chosen.sum())},), one per masked position"
        )
    rtd_labels = (disc_input != original).long()  # 0 outside the chosen positions
    return disc_input, rtd_labels
