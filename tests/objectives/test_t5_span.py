"""T5 span corruption: counts, reconstruction, sentinels, T5's algorithm, input lengths."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import ConfigError, DataError
from lmforge.objectives.t5_span import (
    compute_input_and_target_lengths,
    noise_counts,
    random_spans_noise_mask,
    span_corrupt,
    span_corruption_lengths,
)

VOCAB, EOS = 32_100, 1
SENTINELS = [VOCAB - 1 - i for i in range(100)]  # HF T5: <extra_id_0> is the last id


def runs(mask):
    """Number of runs of True in a boolean array."""
    m = np.concatenate([[False], mask])
    return int((m[1:] & ~m[:-1]).sum())


def reconstruct(inputs, targets, sentinels):
    """Put the target spans back in place of the input's sentinels."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans, current = {}, None
    for t in targets[:-1].tolist():
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs[:-1].tolist():
        out += spans.pop(t) if t in sentinels else [t]
    assert not spans  # every target span was used
    return out


LENGTHS = [2, 3, 5, 10, 19, 20, 21, 33, 64, 100, 101, 128, 250, 512, 568]


@pytest.mark.parametrize("length", LENGTHS)
def test_counts_and_reconstruction(length):
    ids = 100 + np.arange(length)
    noise, spans = noise_counts(length)
    if length >= 10:
        assert noise == round(length * 0.15) and spans == max(1, round(noise / 3))
    for seed in range(10):
        mask = random_spans_noise_mask(length, np.random.default_rng(seed))
        assert mask.sum() == noise and runs(mask) == spans
        assert not mask[0] and mask[-1]  # non-noise first, noise last
        inputs, targets = span_corrupt(ids, np.random.default_rng(seed), SENTINELS, EOS)
        assert reconstruct(inputs, targets, set(SENTINELS)) == ids.tolist()
        # sentinels distinct and in order, in both
        used = SENTINELS[:spans]
        assert [t for t in inputs if t in SENTINELS] == used
        assert [t for t in targets if t in SENTINELS] == used
        assert (len(inputs), len(targets)) == span_corruption_lengths(length)
        assert targets[0] == SENTINELS[0]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(length=st.integers(2, 300), density=st.floats(0.01, 0.6),
       mean_span=st.floats(1.0, 8.0), seed=st.integers(0, 2**32 - 1))
def test_reconstruction_property(length, density, mean_span, seed):
    ids = 100 + np.arange(length)
    kw = dict(noise_density=density, mean_noise_span_length=mean_span)
    sentinels = [VOCAB - 1 - i for i in range(length)]  # always enough
    noise, spans = noise_counts(length, density, mean_span)
    if spans > length - noise:  # too dense for its spans: refused, never silently merged
        with pytest.raises(ConfigError, match="kept tokens"):
            span_corrupt(ids, np.random.default_rng(seed), sentinels, EOS, **kw)
        return
    mask = random_spans_noise_mask(length, np.random.default_rng(seed), **kw)
    assert mask.sum() == noise and runs(mask) == spans
    inputs, targets = span_corrupt(ids, np.random.default_rng(seed), sentinels, EOS, **kw)
    assert reconstruct(inputs, targets, set(sentinels)) == ids.tolist()
    assert (len(inputs), len(targets)) == span_corruption_lengths(length, density, mean_span)


def test_hand_example():
    ids = np.array([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    mask = random_spans_noise_mask(10, np.random.default_rng(0))
    inputs, targets = span_corrupt(ids, np.random.default_rng(0), [900, 901], EOS)
    # 10 tokens: round(1.5) = 2 noise tokens in max(1, round(2 / 3)) = 1 span
    noisy = ids[mask].tolist()
    assert len(noisy) == 2
    kept_before = ids[: np.argmax(mask)].tolist()
    kept_after = ids[np.argmax(mask) + 2 :].tolist()
    assert inputs.tolist() == kept_before + [900] + kept_after + [EOS]
    assert targets.tolist() == [900] + noisy + [EOS]


def t5_noise_mask(length, rng, noise_density=0.15, mean_noise_span_length=3.0):
    """T5's random_spans_noise_mask transcribed in plain Python, with the seeded shuffles
    done by `rng.shuffle` (the only numpy in it)."""
    orig_length = length
    length = max(length, 2)
    num_noise_tokens = int(round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
    num_noise_spans = max(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def random_segmentation(num_items, num_segments):
        marks = np.array([int(i < num_segments - 1) for i in range(num_items - 1)])
        rng.shuffle(marks)
        first_in_segment = [0] + marks.tolist()
        segment_id, total = [], 0
        for f in first_in_segment:
            total += f
            segment_id.append(total)
        return [segment_id.count(s) for s in range(num_segments)]  # segment_sum of ones

    noise_span_lengths = random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved = [x for pair in zip(nonnoise_span_lengths, noise_span_lengths) for x in pair]
    span_starts, total = [], 0
    for x in interleaved[:-1]:
        total += x
        span_starts.append(total)
    span_start_indicator = [0] * length
    for s in span_starts:
        span_start_indicator[s] += 1
    is_noise, span_num = [], 0
    for x in span_start_indicator:
        span_num += x
        is_noise.append(span_num % 2 == 1)
    return is_noise[:orig_length]


def t5_unique_sentinel(tokens, noise_mask, vocab_size):
    """T5's noise_span_to_unique_sentinel: sentinels count down from vocab_size - 1."""
    out, prev, n_spans = [], False, 0
    for t, noisy in zip(tokens, noise_mask):
        if noisy and not prev:
            n_spans += 1
            out.append(vocab_size - n_spans)
        elif not noisy:
            out.append(t)
        prev = noisy
    return out


@pytest.mark.parametrize("length", [7, 50, 114, 512])
def test_matches_t5_transcription(length):
    ids = list(range(500, 500 + length))
    for seed in range(5):
        ours = random_spans_noise_mask(length, np.random.default_rng(seed))
        theirs = t5_noise_mask(length, np.random.default_rng(seed))
        assert ours.tolist() == theirs
        inputs, targets = span_corrupt(ids, np.random.default_rng(seed), SENTINELS, EOS)
        assert inputs.tolist() == t5_unique_sentinel(ids, theirs, VOCAB) + [EOS]
        inverse = [not x for x in theirs]
        assert targets.tolist() == t5_unique_sentinel(ids, inverse, VOCAB) + [EOS]


def test_all_masks_reachable_and_deterministic():
    # T5: all masks with the given counts are equally likely. Length 33: 5 noise tokens in
    # 2 spans (4 ways to cut 5) and 28 kept tokens in 2 runs (27 ways): 108 masks
    rng, seen = np.random.default_rng(0), {}
    for _ in range(5400):
        m = tuple(random_spans_noise_mask(33, rng).tolist())
        seen[m] = seen.get(m, 0) + 1
    assert len(seen) == 108 and min(seen.values()) > 15  # ~50 each
    # with a single span the noise always ends the sequence (non-noise first, noise last)
    assert random_spans_noise_mask(12, rng).tolist() == [False] * 10 + [True] * 2
    a = span_corrupt(np.arange(40), np.random.default_rng(3), SENTINELS, EOS)
    b = span_corrupt(np.arange(40), np.random.default_rng(3), SENTINELS, EOS)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("inputs_length", [3, 4, 10, 64, 128, 256, 512, 1024])
def test_input_length_helper(inputs_length):
    tokens_length, targets_length = compute_input_and_target_lengths(inputs_length)
    inputs, targets = span_corrupt(np.arange(tokens_length) + 100,
                                   np.random.default_rng(0), SENTINELS[:100], EOS)
    assert (len(inputs), len(targets)) == (inputs_length, targets_length)
    # the longest such window: one more token makes the input longer
    assert span_corruption_lengths(tokens_length + 1)[0] == inputs_length + 1
    if inputs_length == 512:  # the figures of HF's run_t5_mlm_flax.py for 512
        assert (tokens_length, targets_length) == (568, 114)


def test_with_the_tokenizer():
    from lmforge.tokenizer import Tokenizer, sentinel_tokens

    tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog " * 20], 300,
                          special_tokens=["</s>", *sentinel_tokens(10)])
    ids = tok.encode("the quick brown fox jumps over the lazy dog and the cat")
    inputs, targets = span_corrupt(ids, np.random.default_rng(1), tok.sentinel_ids(10),
                                   tok.eos_id)
    text_in = tok.decode(inputs)
    assert "<extra_id_0>" in text_in and text_in.endswith("</s>")
    assert tok.decode(targets).startswith("<extra_id_0>")


def test_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="sentinel"):
        span_corrupt(np.arange(20), rng, [], EOS)
    with pytest.raises(ConfigError, match="sentinels were given"):
        span_corrupt(np.arange(200), rng, SENTINELS[:3], EOS)  # 10 spans, 3 sentinels
    with pytest.raises(ConfigError, match="distinct"):
        span_corrupt(np.arange(20), rng, [5, 5], EOS)
    with pytest.raises(ConfigError, match="EOS"):
        span_corrupt(np.arange(20), rng, SENTINELS, None)
    with pytest.raises(DataError, match="at least 2"):
        span_corrupt([7], rng, SENTINELS, EOS)
    for d in (0.0, 1.0):
        with pytest.raises(ConfigError, match="noise_density"):
            span_corrupt(np.arange(20), rng, SENTINELS, EOS, noise_density=d)
    with pytest.raises(ConfigError, match="inputs_length"):
        compute_input_and_target_lengths(2)
