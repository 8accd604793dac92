"""BART's noising functions: counts, spans, permutation, rotation, target = original."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import ConfigError, DataError
from lmforge.objectives.bart_noise import (
    bart_noise,
    document_rotation,
    infill_plan,
    poisson_span_lengths,
    sentence_permutation,
    text_infilling,
    token_deletion,
    token_masking,
)

MASK, DOT = 3, 4


def within(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def is_subsequence(small, big):
    it = iter(big.tolist())
    return all(any(x == y for y in it) for x in small.tolist())


def expected_infill(ids, starts, lengths):
    """Text infilling written out plainly: walk the tokens, one [MASK] per span."""
    out, i, spans = [], 0, sorted(zip(starts.tolist(), lengths.tolist(), range(len(starts))),
                                  key=lambda s: (s[0], s[2]))
    for start, length, _ in spans:
        out += ids[i:start].tolist() + [MASK]
        i = max(i, start + length)
    return out + ids[i:].tolist()


@pytest.mark.parametrize("n", [1, 2, 7, 50, 333])
def test_text_infilling_matches_the_plan(n):
    ids = 1000 + np.arange(n)
    for seed in range(20):
        src, tgt = text_infilling(ids, np.random.default_rng(seed), mask_id=MASK)
        starts, lengths = infill_plan(n, np.random.default_rng(seed))
        assert src.tolist() == expected_infill(ids, starts, lengths)
        np.testing.assert_array_equal(tgt, ids)  # the target is the original
        # exactly ceil(0.3 n) tokens removed, one [MASK] per span
        kept = src[src != MASK]
        assert n - len(kept) == math.ceil(0.3 * n) == lengths.sum()
        assert (src == MASK).sum() == len(lengths)
        assert is_subsequence(kept, ids)
        # spans do not overlap
        assert (starts[1:] >= (starts + lengths)[:-1]).all()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(n=st.integers(1, 200), ratio=st.floats(0.01, 0.99), lam=st.floats(0.1, 8.0),
       word_every=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_infilling_property(n, ratio, lam, word_every, seed):
    ids = 1000 + np.arange(n)
    starts = np.arange(n) % word_every == 0
    src, _ = text_infilling(ids, np.random.default_rng(seed), mask_id=MASK, ratio=ratio,
                            poisson_lambda=lam, word_starts=starts)
    kept = src[src != MASK]
    assert is_subsequence(kept, ids)
    n_words = int(starts.sum())
    removed_words = set(((ids[~np.isin(ids, kept)] - 1000) // word_every).tolist())
    assert len(removed_words) == math.ceil(n_words * ratio)
    assert n - len(kept) == sum(min(word_every, n - w * word_every) for w in removed_words)


def test_span_lengths_are_poisson():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([poisson_span_lengths(300, rng)[:-1] for _ in range(200)])
    n = len(lengths)
    assert abs(lengths.mean() - 3.0) <= 5 * math.sqrt(3.0 / n)
    assert within(int((lengths == 0).sum()), n, math.exp(-3))
    assert within(int((lengths == 3).sum()), n, math.exp(-3) * 27 / 6)
    # the budget is met exactly, for any size
    for m in (0, 1, 2, 5, 77):
        assert poisson_span_lengths(m, rng).sum() == m
    # over whole documents the mean span (with the cut last one) stays close to lambda
    plans = [infill_plan(512, rng)[1] for _ in range(100)]
    assert 2.6 < np.concatenate(plans).mean() < 3.2


@pytest.mark.parametrize("lam", [1.0, 6.0])
def test_span_lengths_follow_the_configured_lambda(lam):
    """lambda reaches the spans: their mean length is lambda, so infilling ceil(0.3 * 512)
    = 154 tokens leaves ~154 / lambda [MASK]s. A plan that kept lambda = 3 whatever it was
    given (mean 2.95, ~52 masks) fails both cases. Measured: mean 0.99 / 5.85 (the cut last
    span pulls it below lambda), masks 153.7 / 26.1."""
    rng = np.random.default_rng(0)
    lengths = np.concatenate([infill_plan(512, rng, poisson_lambda=lam)[1] for _ in range(100)])
    assert abs(lengths.mean() - lam) < 0.1 * lam
    assert within(int((lengths == 0).sum()), len(lengths), math.exp(-lam))  # P(0) = e^-lambda
    ids = 1000 + np.arange(512)
    masks = [int((text_infilling(ids, rng, mask_id=MASK, poisson_lambda=lam)[0] == MASK).sum())
             for _ in range(50)]
    assert abs(np.mean(masks) - 154 / lam) < 0.1 * 154 / lam


def test_zero_length_span_inserts_a_mask():
    ids = 1000 + np.arange(40)
    found = 0
    for seed in range(200):
        starts, lengths = infill_plan(40, np.random.default_rng(seed))
        src, _ = text_infilling(ids, np.random.default_rng(seed), mask_id=MASK)
        assert len(src) == 40 - lengths.sum() + len(lengths)
        # between two kept tokens that were neighbours in the original nothing was
        # removed, so any [MASK] there is an inserted one: one per zero-length span there
        kept_at = np.flatnonzero(src != MASK)
        for i, j in zip(kept_at[:-1], kept_at[1:]):
            if src[j] == src[i] + 1:
                inserted = j - i - 1
                s = int(src[j] - 1000)
                assert inserted == int(((starts == s) & (lengths == 0)).sum())
                found += inserted
    assert found > 10


def test_whole_word_infilling():
    ids = 1000 + np.arange(60)
    starts = np.zeros(60, bool)
    starts[::3] = True  # words of three tokens
    for seed in range(30):
        src, _ = text_infilling(ids, np.random.default_rng(seed), mask_id=MASK,
                                word_starts=starts)
        kept = set(src[src != MASK].tolist())
        for w in range(20):
            word = set(ids[3 * w : 3 * w + 3].tolist())
            assert word <= kept or not (word & kept)  # a word is kept or removed whole
        assert 60 - len(kept) == 3 * math.ceil(20 * 0.3)  # the ratio counts words


def test_token_masking_and_deletion():
    ids = 1000 + np.arange(97)
    k = math.ceil(97 * 0.3)
    for seed in range(10):
        src, tgt = token_masking(ids, np.random.default_rng(seed), mask_id=MASK)
        assert (src == MASK).sum() == k and ((src == ids) | (src == MASK)).all()
        np.testing.assert_array_equal(tgt, ids)
        src, _ = token_deletion(ids, np.random.default_rng(seed))
        assert len(src) == 97 - k and is_subsequence(src, ids)
    src, _ = token_masking(ids, np.random.default_rng(0), mask_id=MASK, random_ratio=1.0,
                           vocab_size=50, special_ids=[0, 1, 2])
    changed = src[src != ids]
    assert len(changed) >= k - 2 and ((changed >= 4) & (changed < 50)).all()


def sentences(ids, ends):
    starts = [0, *ends[:-1]]
    return [ids[s:e].tolist() for s, e in zip(starts, ends)]


def parse(src, whole):
    """The order of the sentences `whole` in `src`, checking each appears whole."""
    order, i = [], 0
    while i < len(src):
        s = next(k for k, sent in enumerate(whole) if sent[0] == src[i])
        assert src[i : i + len(whole[s])].tolist() == whole[s]
        order.append(s)
        i += len(whole[s])
    return order


def test_sentence_permutation_preserves_sentences():
    ids = np.array([10, 11, DOT, 12, DOT, 13, 14, 15, DOT, DOT, 16, 17])
    whole = sentences(ids, [3, 5, 10, 12])
    seen = set()
    for seed in range(60):
        src, tgt = sentence_permutation(ids, np.random.default_rng(seed), stop_ids=[DOT])
        np.testing.assert_array_equal(tgt, ids)
        order = parse(src, whole)  # the same sentences, each whole, in some order
        assert sorted(order) == [0, 1, 2, 3]
        seen.add(tuple(order))
    assert len(seen) > 12  # many of the 24 orders appear
    # explicit ends (the last sentence implied) give the same sentences
    for seed in range(10):
        src, _ = sentence_permutation(ids, np.random.default_rng(seed), ends=[3, 5, 10])
        assert sorted(parse(src, whole)) == [0, 1, 2, 3]


def test_document_rotation_is_a_rotation():
    ids = 1000 + np.arange(9)
    shifts = set()
    for seed in range(100):
        src, tgt = document_rotation(ids, np.random.default_rng(seed))
        k = int(src[0] - 1000)
        np.testing.assert_array_equal(src, np.roll(ids, -k))
        np.testing.assert_array_equal(tgt, ids)
        shifts.add(k)
    assert shifts == set(range(9))


def test_bart_preset():
    ids = np.array([20 + (i % 50) if i % 9 else DOT for i in range(1, 300)])
    n_tokens = len(ids)
    total_masks = 0
    for seed in range(20):
        src, tgt = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK, stop_ids=[DOT])
        np.testing.assert_array_equal(tgt, ids)
        kept = src[src != MASK]
        assert n_tokens - len(kept) == math.ceil(0.3 * n_tokens)
        # kept tokens are a sub-multiset of the original
        assert (np.bincount(kept, minlength=80) <= np.bincount(ids, minlength=80)).all()
        total_masks += int((src == MASK).sum())
    # ~ 0.3 n / 3 spans per document
    assert 0.6 * 20 * 0.1 * n_tokens < total_masks < 1.4 * 20 * 0.1 * n_tokens
    # deterministic given the generator's seed
    a = bart_noise(ids, np.random.default_rng(5), mask_id=MASK, stop_ids=[DOT], rotate=True)
    b = bart_noise(ids, np.random.default_rng(5), mask_id=MASK, stop_ids=[DOT], rotate=True)
    np.testing.assert_array_equal(a[0], b[0])
    # other combinations
    src, _ = bart_noise(ids, np.random.default_rng(0), mask_id=MASK, mask="delete",
                        permute_sentences=False)
    assert len(src) == n_tokens - math.ceil(0.3 * n_tokens) and is_subsequence(src, ids)
    src, _ = bart_noise(ids, np.random.default_rng(0), mask_id=MASK, mask=None,
                        permute_sentences=False, rotate=True)
    assert sorted(src.tolist()) == sorted(ids.tolist())


def test_bad_input():
    with pytest.raises(ConfigError, match="MASK"):
        text_infilling([5, 6], np.random.default_rng(0), mask_id=None)
    with pytest.raises(DataError):
        text_infilling([], np.random.default_rng(0), mask_id=MASK)
    with pytest.raises(DataError):
        token_deletion([5], np.random.default_rng(0))
    for r in (0.0, 1.0, 2.0):
        with pytest.raises(ConfigError, match="ratio"):
            bart_noise([5, 6], np.random.default_rng(0), mask_id=MASK, mask_ratio=r,
                       ends=[1])
    with pytest.raises(ConfigError, match="sentence"):
        bart_noise([5, 6], np.random.default_rng(0), mask_id=MASK)
    with pytest.raises(ConfigError, match="lambda"):
        poisson_span_lengths(3, np.random.default_rng(0), 0.0)
    with pytest.raises(ConfigError, match="mask must be"):
        bart_noise([5, 6], np.random.default_rng(0), mask_id=MASK, mask="span", ends=[1])
    with pytest.raises(ConfigError, match="vocab_size"):
        token_masking([5, 6], np.random.default_rng(0), mask_id=MASK, random_ratio=0.5)


# -- hidden: the target positions the encoder input does not show ---------------------------


def collapse(seq):
    """Consecutive [MASK]s as one."""
    out = []
    for x in list(seq):
        if not (x == MASK and out and out[-1] == MASK):
            out.append(x)
    return out


def shown_as_masks(tgt, hidden, inserted_before=()):
    """The target with each maximal run of hidden positions -> one [MASK], and a [MASK]
    inserted before each position in `inserted_before` (zero-length spans)."""
    out, zero = [], list(inserted_before)
    for j, x in enumerate(tgt.tolist() + [None]):
        out += [MASK] * zero.count(j)
        if x is None:
            break
        if not hidden[j]:
            out.append(x)
        elif not (out and out[-1] == MASK):
            out.append(MASK)
    return out


def test_hidden_infill_by_hand():
    """Twelve tokens, seeds 0 and 3, no permutation: the masks and the hidden positions
    written out (checked against infill_plan)."""
    ids = np.arange(100, 112)
    src, tgt, hidden = bart_noise(ids, np.random.default_rng(0), mask_id=MASK,
                                  permute_sentences=False, return_hidden=True)
    # spans (start, length): (0, 2), (2, 2), (9, 0): two spans in a row hide 100..103, a
    # zero-length span inserts a [MASK] before 109 and hides nothing
    assert src.tolist() == [MASK, MASK, 104, 105, 106, 107, 108, MASK, 109, 110, 111]
    assert np.flatnonzero(hidden).tolist() == [0, 1, 2, 3] and hidden.dtype == bool
    np.testing.assert_array_equal(tgt, ids)
    src, _, hidden = bart_noise(ids, np.random.default_rng(3), mask_id=MASK,
                                permute_sentences=False, return_hidden=True)
    # spans (3, 1), (4, 1), (7, 2)
    assert src.tolist() == [100, 101, 102, MASK, MASK, 105, 106, MASK, 109, 110, 111]
    assert np.flatnonzero(hidden).tolist() == [3, 4, 7, 8]


@pytest.mark.parametrize("n, ratio, lam", [(12, 0.3, 3.0), (40, 0.3, 3.0), (7, 0.5, 1.0),
                                           (60, 0.15, 0.5)])
def test_hidden_infill_reconstructs_the_source(n, ratio, lam):
    ids = 1000 + np.arange(n)
    for seed in range(40):
        src, tgt, hidden = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                      mask_ratio=ratio, poisson_lambda=lam,
                                      permute_sentences=False, return_hidden=True)
        starts, lengths = infill_plan(n, np.random.default_rng(seed), ratio=ratio,
                                      poisson_lambda=lam)
        covered = np.zeros(n, bool)
        for s, length in zip(starts, lengths):
            covered[s : s + length] = True
        np.testing.assert_array_equal(hidden, covered)  # exactly the spans' tokens
        assert hidden.sum() == math.ceil(n * ratio)
        # the shown tokens, in order, are the target's unhidden ones
        assert src[src != MASK].tolist() == tgt[~hidden].tolist()
        # hidden runs -> one [MASK] each, zero-length spans insert one: the source (spans
        # next to each other give a [MASK] each, hence the collapse)
        zero = starts[lengths == 0].tolist()
        assert collapse(src) == collapse(shown_as_masks(tgt, hidden, zero))


def test_hidden_with_permutation_is_over_the_original_positions():
    rng = np.random.default_rng(1)
    ids = rng.integers(20, 30, 90)  # repeated tokens: the multiset is what can be checked
    ids[rng.choice(90, 12, replace=False)] = DOT
    for seed in range(30):
        for mask in ("infill", "token", "delete"):
            src, tgt, hidden = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                          mask=mask, stop_ids=[DOT], return_hidden=True)
            np.testing.assert_array_equal(tgt, ids)
            shown = src[src != MASK]
            assert sorted(shown.tolist()) == sorted(tgt[~hidden].tolist())
            assert hidden.sum() == math.ceil(90 * 0.3)
            if mask == "token":
                assert len(src) == 90 and (src == MASK).sum() == hidden.sum()
            if mask == "delete":
                assert len(src) == 90 - hidden.sum()
    # distinct tokens: the permuted source's unmasked tokens are exactly the unhidden ones
    ids = 1000 + np.arange(50)
    for seed in range(20):
        src, tgt, hidden = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                      ends=[7, 19, 30, 41], return_hidden=True)
        assert set(src[src != MASK].tolist()) == set(tgt[~hidden].tolist())
        assert len(src[src != MASK]) == (~hidden).sum()


def test_hidden_token_masking_and_deletion_in_place():
    ids = 1000 + np.arange(33)
    for seed in range(20):
        src, tgt, hidden = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                      mask="token", permute_sentences=False,
                                      return_hidden=True)
        np.testing.assert_array_equal(src == MASK, hidden)  # masked where hidden, in place
        np.testing.assert_array_equal(src[~hidden], tgt[~hidden])
        src, tgt, hidden = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                      mask="delete", permute_sentences=False,
                                      return_hidden=True)
        assert src.tolist() == tgt[~hidden].tolist() and hidden.sum() == math.ceil(33 * 0.3)
        # random replacement hides the replaced tokens too
        src, tgt, hidden = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                      mask="token", permute_sentences=False, random_ratio=1.0,
                                      vocab_size=50, special_ids=[0, 1, 2], return_hidden=True)
        assert hidden.sum() == math.ceil(33 * 0.3) and (src[hidden] < 50).all()
        np.testing.assert_array_equal(src[~hidden], tgt[~hidden])
    # no masking hides nothing, permuted or rotated
    src, tgt, hidden = bart_noise(ids, np.random.default_rng(0), mask_id=MASK, mask=None,
                                  ends=[10, 20], rotate=True, return_hidden=True)
    assert not hidden.any() and sorted(src.tolist()) == tgt.tolist()


def test_hidden_rotation_and_cut():
    """Rotation moves tokens and hides none; max_len hides the tokens it cuts. Poisson
    lambda 0.1: mostly zero-length spans, so the source outgrows the target and is cut."""
    ids = 1000 + np.arange(10)
    cut = 0
    for seed in range(60):
        full, _, h_full = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                     poisson_lambda=0.1, ends=[4], rotate=True,
                                     return_hidden=True)
        assert h_full.sum() == 3
        src, tgt, hidden = bart_noise(ids, np.random.default_rng(seed), mask_id=MASK,
                                      poisson_lambda=0.1, ends=[4], rotate=True, max_len=10,
                                      return_hidden=True)
        np.testing.assert_array_equal(src, full[:10])
        assert set(src[src != MASK].tolist()) == set(tgt[~hidden].tolist())
        assert (hidden >= h_full).all()
        cut += int(hidden.sum() - h_full.sum())
    assert cut > 5  # some kept tokens were cut away, and counted as hidden


def rng_state(rng):
    return rng.bit_generator.state["state"]


@pytest.mark.parametrize("kw", [
    {}, {"rotate": True}, {"mask": "token", "random_ratio": 0.3, "vocab_size": 60},
    {"mask": "delete"}, {"mask": None, "rotate": True}, {"permute_sentences": False},
    {"random_ratio": 0.5, "vocab_size": 60, "poisson_lambda": 1.5}, {"max_len": 40},
])
def test_return_hidden_leaves_outputs_and_stream_alone(kw):
    ids = np.array([20 + (i % 30) if i % 7 else DOT for i in range(1, 60)])
    ws = np.arange(len(ids)) % 2 == 0
    for seed in range(10):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        src, tgt = bart_noise(ids, a, mask_id=MASK, stop_ids=[DOT], word_starts=ws, **kw)
        src2, tgt2, hidden = bart_noise(ids, b, mask_id=MASK, stop_ids=[DOT], word_starts=ws,
                                        return_hidden=True, **kw)
        np.testing.assert_array_equal(src, src2)
        np.testing.assert_array_equal(tgt, tgt2)
        assert rng_state(a) == rng_state(b) and a.random() == b.random()
        assert hidden.shape == ids.shape
