"""Masked-LM corruption, static / dynamic seeding, whole words, and ELECTRA's inputs."""

import math

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.objectives.clm import IGNORE
from lmforge.objectives.masking import (
    ELECTRA_MASKING,
    batch_rng,
    byte_level_word_starts,
    dynamic_rngs,
    electra_discriminator_inputs,
    mask_tokens,
    random_token_ids,
    sample_tokens,
    sequence_keys,
    static_rngs,
)

CLS, SEP, PAD, MASK = 1, 2, 0, 3
SPECIAL = (CLS, SEP, PAD)
V = 1000


def within(count, n, p, sigmas=5.0):
    """`count` successes of `n` Binomial(n, p) trials lie within `sigmas` sd of n p."""
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd + 1e-9


def make_batch(rng, b=200, t=128):
    """[CLS] random ids [SEP] [PAD]...: each row padded after a random length."""
    batch = np.full((b, t), PAD, dtype=np.int64)
    for row in batch:
        n = int(rng.integers(t // 2, t - 1))
        row[0], row[1 : n + 1], row[n + 1] = CLS, rng.integers(10, V, n), SEP
    return batch


def test_rate_split_and_labels():
    rng = np.random.default_rng(0)
    batch = make_batch(rng)
    inputs, labels = mask_tokens(batch, rng, mask_id=MASK, vocab_size=V, special_ids=SPECIAL)
    eligible = ~np.isin(batch, SPECIAL)
    chosen = labels != IGNORE
    # special tokens and padding are never chosen; labels are the originals, only there
    assert not (chosen & ~eligible).any()
    np.testing.assert_array_equal(labels[chosen], batch[chosen])
    np.testing.assert_array_equal(inputs[~chosen], batch[~chosen])
    n, k = int(eligible.sum()), int(chosen.sum())
    assert within(k, n, 0.15)
    # 80 / 10 / 10 among the chosen (a random token equal to the original looks unchanged)
    masked = int((inputs[chosen] == MASK).sum())
    replaced = int(((inputs != batch) & (inputs != MASK) & chosen).sum())
    unchanged = int((inputs[chosen] == batch[chosen]).sum())
    assert masked + replaced + unchanged == k
    assert within(masked, k, 0.8)
    assert within(replaced, k, 0.1 * (1 - 1 / (V - 3)))
    assert within(unchanged, k, 0.1 + 0.1 / (V - 3))
    # random replacements are ordinary tokens
    assert not np.isin(inputs[chosen & (inputs != MASK)], [*SPECIAL, MASK]).any()


def test_one_dim_input_and_tensor_input():
    seq = torch.tensor([CLS, 11, 12, 13, 14, 15, SEP])
    inputs, labels = mask_tokens(seq, np.random.default_rng(1), mask_id=MASK, mask_prob=0.5,
                                 random_replace_prob=0.0)
    assert inputs.shape == labels.shape == (7,)
    np.testing.assert_array_equal(labels[labels != IGNORE], seq.numpy()[labels != IGNORE])
    inputs, labels = mask_tokens(seq, np.random.default_rng(1), mask_id=MASK, mask_prob=0.5,
                                 special_ids=SPECIAL, random_replace_prob=0.0)
    assert labels[0] == labels[-1] == IGNORE


def test_exact_count_per_sequence():
    rng = np.random.default_rng(2)
    batch = make_batch(rng, b=50)
    _, labels = mask_tokens(batch, rng, mask_id=MASK, vocab_size=V, special_ids=SPECIAL,
                            exact=True)
    for row, lab in zip(batch, labels):
        n = int((~np.isin(row, SPECIAL)).sum())
        assert (lab != IGNORE).sum() == max(1, round(n * 0.15))
    # BERT's at-least-one: a 3-token sequence still gets a target
    _, lab = mask_tokens([CLS, 20, 21, 22, SEP], rng, mask_id=MASK, vocab_size=V,
                         special_ids=SPECIAL, exact=True)
    assert (lab != IGNORE).sum() == 1


def test_random_tokens_uniform_over_non_special_vocabulary():
    special = [0, 5, 19, 40]  # 40 is outside the vocabulary and ignored
    draws = random_token_ids(np.random.default_rng(3), 170_000, 20, special)
    counts = np.bincount(draws, minlength=20)
    ordinary = [i for i in range(20) if i not in special]
    assert counts[[0, 5, 19]].sum() == 0
    for i in ordinary:
        assert within(counts[i], len(draws), 1 / len(ordinary))


def test_static_masking_same_every_epoch_dynamic_differs():
    rng = np.random.default_rng(4)
    batch = make_batch(rng, b=16, t=64)
    ids = list(range(100, 116))
    kw = dict(mask_id=MASK, vocab_size=V, special_ids=SPECIAL)
    epoch0 = mask_tokens(batch, static_rngs(7, ids), **kw)
    epoch1 = mask_tokens(batch, static_rngs(7, ids), **kw)
    for a, b in zip(epoch0, epoch1):
        np.testing.assert_array_equal(a, b)
    # the same sequence keeps its mask wherever it sits in a batch
    perm = np.arange(16)[::-1]
    moved = mask_tokens(batch[perm], static_rngs(7, [ids[i] for i in perm]), **kw)
    np.testing.assert_array_equal(moved[1], epoch0[1][perm])
    # content keys stand in for sequence ids
    keys = sequence_keys(batch)
    assert keys == sequence_keys(torch.from_numpy(batch)) and len(set(keys)) == 16
    np.testing.assert_array_equal(mask_tokens(batch, static_rngs(7, keys), **kw)[1],
                                  mask_tokens(batch, static_rngs(7, keys), **kw)[1])
    # dynamic: a fresh mask per draw, reproducible for the same (seed, draw)
    d0 = mask_tokens(batch, dynamic_rngs(7, 0, ids), **kw)[1]
    d1 = mask_tokens(batch, dynamic_rngs(7, 1, ids), **kw)[1]
    assert (d0 != d1).any(axis=1).all()  # every row re-drawn
    np.testing.assert_array_equal(d0, mask_tokens(batch, dynamic_rngs(7, 0, ids), **kw)[1])
    # static and dynamic streams never coincide, nor with another seed
    assert (d0 != epoch0[1]).any()
    assert (mask_tokens(batch, static_rngs(8, ids), **kw)[1] != epoch0[1]).any()


def test_batch_rng_resume_exact():
    a = batch_rng(3, 10).integers(0, 2**31, 8)
    b = batch_rng(3, 10).integers(0, 2**31, 8)
    c = batch_rng(3, 11).integers(0, 2**31, 8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (batch_rng(3, 10, stream="t5").integers(0, 2**31, 8) != a).any()
    with pytest.raises(ConfigError):
        batch_rng(-1, 0)


@pytest.fixture(scope="module")
def tok():
    from lmforge.data import read_corpus
    from lmforge.tokenizer import Tokenizer

    text = read_corpus("shakespeare")[0][:20_000]
    return Tokenizer.train([text], 400, special_tokens=["[CLS]", "[SEP]", "[MASK]", "[PAD]"])


def test_byte_level_word_starts(tok):
    ids = tok.encode("Hello there\nfriend, good day") + [tok.sep_id] + tok.encode("again")
    starts = byte_level_word_starts(ids, tok)
    words, cur = [], b""
    for i, s in zip(ids, starts):
        if i == tok.sep_id:
            assert not s
            continue
        if s and cur:
            words.append(cur)
            cur = b""
        cur += tok.id_to_bytes(i)
    words.append(cur)
    assert words == [b"Hello", b" there", b"\n", b"friend,", b" good", b" day", b"again"]


def test_whole_word_masking_never_splits_a_word(tok):
    text = " ".join(["Methinks the lady doth protest too much, and yet"] * 12)
    ids = np.array([tok.cls_id, *tok.encode(text)[:200], tok.sep_id])
    batch = np.stack([ids] * 64)
    starts = byte_level_word_starts(batch, tok)
    special = list(tok.special_tokens.values())
    word = np.cumsum(starts, axis=1)
    for exact in (False, True):
        _, labels = mask_tokens(batch, np.random.default_rng(5), mask_id=tok.mask_id,
                                vocab_size=tok.vocab_size, special_ids=special,
                                word_starts=starts, exact=exact)
        chosen = labels != IGNORE
        eligible = ~np.isin(batch, special)
        n_words = int(starts[0].sum())
        hit = 0
        for r in range(len(batch)):
            for w in range(1, n_words + 1):
                inside = chosen[r][(word[r] == w) & eligible[r]]
                assert inside.all() or not inside.any()  # all of a word or none of it
                hit += int(inside.any())
            if exact:  # BERT's token budget, never overshot
                assert chosen[r].sum() <= max(1, round(eligible[r].sum() * 0.15))
        if not exact:
            assert within(hit, n_words * len(batch), 0.15)


def test_bad_arguments():
    kw = dict(mask_id=MASK, vocab_size=V)
    with pytest.raises(ConfigError, match="MASK"):
        mask_tokens([5, 6], np.random.default_rng(0), mask_id=None)
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="mask_prob"):
            mask_tokens([5, 6], np.random.default_rng(0), mask_prob=p, **kw)
    with pytest.raises(ConfigError, match="<= 1"):
        mask_tokens([5, 6], np.random.default_rng(0), mask_replace_prob=0.9,
                    random_replace_prob=0.2, **kw)
    with pytest.raises(ConfigError, match="vocab_size"):
        mask_tokens([5, 6], np.random.default_rng(0), mask_id=MASK)
    with pytest.raises(ConfigError, match="generators"):
        mask_tokens(np.zeros((3, 4), int) + 9, static_rngs(0, [1, 2]), **kw)
    with pytest.raises(DataError):
        mask_tokens(np.zeros((2, 2, 2), int), np.random.default_rng(0), **kw)


# -- ELECTRA ---------------------------------------------------------------------------------


def test_electra_masking_has_no_random_tokens():
    rng = np.random.default_rng(6)
    batch = make_batch(rng)
    inputs, labels = mask_tokens(batch, rng, mask_id=MASK, special_ids=SPECIAL,
                                 **ELECTRA_MASKING)
    chosen = labels != IGNORE
    assert ((inputs[chosen] == MASK) | (inputs[chosen] == batch[chosen])).all()
    assert within(int((inputs[chosen] == MASK).sum()), int(chosen.sum()), 0.85)


@pytest.mark.parametrize("gumbel", [False, True])
def test_electra_discriminator_inputs(gumbel):
    rng = np.random.default_rng(7)
    batch = make_batch(rng, b=8, t=32)
    inputs, labels = mask_tokens(batch, rng, mask_id=MASK, special_ids=SPECIAL,
                                 mask_prob=0.3, **ELECTRA_MASKING)
    inputs, labels, original = map(torch.from_numpy, (inputs, labels, batch))
    chosen = labels != IGNORE
    # a generator that is sure of the original at half the positions, unsure elsewhere
    logits = torch.randn(8, 32, V, generator=torch.Generator().manual_seed(0))
    sure = torch.rand(8, 32, generator=torch.Generator().manual_seed(1)) < 0.5
    logits[sure] = -1e4
    logits[sure, original[sure]] = 1e4
    logits.requires_grad_(True)
    sampled = sample_tokens(logits, torch.Generator().manual_seed(2), gumbel=gumbel)
    assert sampled.shape == (8, 32) and not sampled.requires_grad
    again = sample_tokens(logits, torch.Generator().manual_seed(2), gumbel=gumbel)
    assert torch.equal(sampled, again)

    disc, rtd = electra_discriminator_inputs(inputs, labels, sampled)
    assert torch.equal(rtd, (disc != original).long())  # exactly "replaced"
    assert (rtd[~chosen] == 0).all()
    assert torch.equal(disc[~chosen], original[~chosen])
    assert torch.equal(disc[chosen], sampled[chosen])
    # a sample equal to the original is not "replaced"
    assert (rtd[chosen & sure] == 0).all()
    assert rtd[chosen & ~sure].float().mean() > 0.9
    # one sample per chosen position, in row-major order, gives the same
    disc1, rtd1 = electra_discriminator_inputs(inputs, labels, sampled[chosen])
    assert torch.equal(disc1, disc) and torch.equal(rtd1, rtd)
    with pytest.raises(DataError):
        electra_discriminator_inputs(inputs, labels, sampled[:, :3])


@pytest.mark.parametrize("gumbel", [False, True])
def test_sampling_follows_the_softmax(gumbel):
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    n = 40_000
    ids = sample_tokens(logits.expand(n, 4), torch.Generator().manual_seed(3), gumbel=gumbel)
    probs = torch.softmax(logits, -1).tolist()
    counts = torch.bincount(ids, minlength=4).tolist()
    for c, p in zip(counts, probs):
        assert within(c, n, p)
    with pytest.raises(ConfigError):
        sample_tokens(logits, temperature=0.0)


def test_wordpiece_word_starts_group_hash_pieces_with_their_word(minilm_run):
    """With BERT's WordPiece, a word is its first piece plus the '##' pieces after it."""
    from lmforge.objectives.masking import word_starts
    from lmforge.runs import load_run

    tok = load_run(minilm_run).tokenizer
    ids = [tok.cls_id, *tok.encode("unbelievable tokenization works"), tok.sep_id]
    pieces = [tok.id_to_token(i) for i in ids]
    expected = [p not in ("[CLS]", "[SEP]") and not p.startswith("##") for p in pieces]
    assert any(p.startswith("##") for p in pieces)  # the example does split words
    assert word_starts(np.array(ids), tok).tolist() == expected
    assert sum(expected) == 3  # three words
