"""T5's span corruption (Raffel et al. 2020), as `random_spans_noise_mask` and
`noise_span_to_unique_sentinel` in text-to-text-transfer-transformer's
t5/data/preprocessors.py. For a sequence of L tokens:

    num_noise_tokens = round(L * noise_density)             clamped to [1, L - 1]
    num_noise_spans  = round(num_noise_tokens / mean_span)  at least 1

The noise tokens are cut into num_noise_spans non-empty spans at random, the other
tokens likewise, and the two are interleaved starting with non-noise (all such masks
equally likely). Each noise span is replaced in the input by its own sentinel; the
target lists each sentinel followed by the span it hides; both end with EOS:

    tokens   The quick brown fox jumps over the lazy dog
    inputs   The <X> fox jumps <Y> dog </s>
    targets  <X> quick brown <Y> over the lazy </s>

Sentinels are passed in order of use: `sentinel_ids[i]` is `<extra_id_i>`. (In Hugging
Face's T5 vocabulary `<extra_id_0>` is the last id and they count down; lmforge's
`Tokenizer.sentinel_ids(n)` returns whichever ids the tokenizer holds.) `round` is
round-half-to-even, as TensorFlow's `tf.round` in T5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .masking import as_ids, check_probability


def noise_counts(length: int, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for a sequence of `length` >= 2 tokens."""
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)  # at least one noise and one kept token
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return num_noise, num_spans


def _random_segmentation(num_items: int, num_segments: int, rng) -> np.ndarray:
    """Lengths of a uniformly random split of num_items into num_segments non-empty parts:
    shuffle (num_segments - 1) "a new segment starts here" marks over the num_items - 1
    gaps between items."""
    first_in_segment = np.arange(num_items - 1) < num_segments - 1
    rng.shuffle(first_in_segment)
    segment_id = np.cumsum(np.concatenate([[False], first_in_segment]))
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator,
                            noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """A boolean (length,) mask of noise tokens in random spans (T5's algorithm; the
    noise spans are segmented first, then the non-noise ones, from the same rng)."""
    if length < 2:
        raise DataError(f"span corruption needs at least 2 tokens, got {length}")
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    if num_spans > length - num_noise:  # T5 would silently merge spans here
        raise ConfigError(
            f"{num_spans} noise spans need as many kept tokens between them, but only "
            f"{length - num_noise} of {length} are kept; lower noise_density"
        )
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    # non-noise, noise, non-noise, noise, ...: the last span is always noise
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_id = np.repeat(np.arange(2 * num_spans), interleaved)
    return span_id % 2 == 1


def _check(noise_density: float, mean_noise_span_length: float) -> None:
    check_probability("noise_density", noise_density)
    if not mean_noise_span_length >= 1:
        raise ConfigError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")


def span_corrupt(
    tokens,
    rng: np.random.Generator,
    sentinel_ids: Sequence[int] | None,
    eos_id: int | None,
    *,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of a 1-D token sequence -> (encoder_input, target), int64.

    encoder_input = the kept tokens with sentinel_ids[i] in place of the i-th noise span,
    then EOS; target = sentinel_ids[i] followed by the i-th noise span, for each span,
    then EOS. Their lengths depend only on len(tokens) (`span_corruption_lengths`).
    """
    if not sentinel_ids:
        raise ConfigError("span corruption needs sentinel token ids (<extra_id_0>, ...)")
    if eos_id is None:
        raise ConfigError("span corruption needs an EOS token id")
    _check(noise_density, mean_noise_span_length)
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    if len(np.unique(sentinels)) != len(sentinels):
        raise ConfigError("sentinel ids must be distinct")
    ids = as_ids(tokens)
    if len(ids) < 2:
        raise DataError(f"span corruption needs at least 2 tokens, got {len(ids)}")
    _, num_spans = noise_counts(len(ids), noise_density, mean_noise_span_length)
    if num_spans > len(sentinels):
        raise ConfigError(
            f"a sequence of {len(ids)} tokens gets {num_spans} noise spans but only "
            f"{len(sentinels)} sentinels were given"
        )
    noise = random_spans_noise_mask(len(ids), rng, noise_density, mean_noise_span_length)
    return (_spans_to_sentinels(ids, noise, sentinels, eos_id),
            _spans_to_sentinels(ids, ~noise, sentinels, eos_id))


def _spans_to_sentinels(ids, noise, sentinels, eos_id) -> np.ndarray:
    """T5's `noise_span_to_unique_sentinel`: the first token of the i-th noise span ->
    sentinel i, the rest of the span dropped; then EOS. (Applied to ~noise it gives the
    targets: the spans begin with non-noise, so the first sentinel replaces the first
    kept span and sentinel i then precedes noise span i.)"""
    prev = np.concatenate([[False], noise[:-1]])
    first = noise & ~prev
    out = ids.copy()
    out[first] = sentinels[np.cumsum(first)[first] - 1]
    return np.append(out[~(noise & prev)], eos_id)


# -- lengths -------------------------------------------------------------------------------


def span_corruption_lengths(tokens_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(inputs_length, targets_length) after corrupting `tokens_length` tokens, EOS
    included: kept tokens + one sentinel per span + EOS, and noise tokens + one sentinel
    per span + EOS."""
    num_noise, num_spans = noise_counts(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def compute_input_and_target_lengths(inputs_length: int, noise_density: float = 0.15,
                                     mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(tokens_length, targets_length): the longest raw window whose corrupted input is
    exactly `inputs_length` tokens (EOS included), and the target length it then has.
    T5's `random_spans_helper` (HF's `compute_input_and_target_lengths`), with the same
    clamped counts as `span_corrupt`, so a packer can cut windows of tokens_length."""
    _check(noise_density, mean_noise_span_length)
    if inputs_length < 3:
        raise ConfigError(f"inputs_length must be >= 3 (a token, a sentinel, EOS), "
                          f"got {inputs_length}")
    tokens_length = max(2, inputs_length - 1)  # its input is <= inputs_length: spans <= noise
    while span_corruption_lengths(tokens_length + 1, noise_density,
                                  mean_noise_span_length)[0] <= inputs_length:
        tokens_length += 1
    got, targets_length = span_corruption_lengths(tokens_length, noise_density,
                                                  mean_noise_span_length)
    if got != inputs_length:  # the input length grows by 0 or 1 per token: never here
        raise ConfigError(f"no window length gives exactly {inputs_length} input tokens")
    return tokens_length, targets_length
