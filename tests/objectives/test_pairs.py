"""NSP / SOP sentence-pair examples, truncation, and segment splitting."""

import math

import numpy as np
import pytest

from lmforge.errors import ConfigError, DataError
from lmforge.objectives.pairs import (
    nsp_examples,
    pack_pair,
    sentence_ends,
    sop_examples,
    split_segments,
    stop_token_ids,
    truncate_pair,
)

PAD, CLS, SEP = 0, 1, 2
IDS = dict(cls_id=CLS, sep_id=SEP, pad_id=PAD)


def within(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def corpus(n_docs=30, n_segs=12, rng=None):
    """Segment j (< 100) of document d holds tokens 100_000 + 1000 d + 10 j + k: every
    token says where it came from."""
    rng = rng or np.random.default_rng(0)
    return [[[100_000 + 1000 * d + 10 * j + k for k in range(int(rng.integers(1, 9)))]
             for j in range(n_segs)] for d in range(n_docs)]


def where(token):
    """(document, segment) of a token made by `corpus`."""
    return (token - 100_000) // 1000, (token % 1000) // 10


def halves(ids):
    """A and B of a packed [CLS] A [SEP] B [SEP] example."""
    seps = np.flatnonzero(ids == SEP)
    assert ids[0] == CLS and len(seps) == 2
    return ids[1 : seps[0]], ids[seps[0] + 1 : seps[1]]


def test_pack_pair_hand_example():
    out = pack_pair([5, 6, 7], [8, 9], max_len=10, **IDS)
    np.testing.assert_array_equal(out["input_ids"], [1, 5, 6, 7, 2, 8, 9, 2, 0, 0])
    np.testing.assert_array_equal(out["token_type_ids"], [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["attention_mask"], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])


def bert_truncate(a, b, max_tokens):
    """BERT's truncate_seq_pair, transcribed (popping from the back)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return a, b


def test_truncate_pair_matches_bert():
    rng = np.random.default_rng(1)
    for _ in range(300):
        a = np.arange(int(rng.integers(1, 40)))
        b = 100 + np.arange(int(rng.integers(1, 40)))
        m = int(rng.integers(2, 60))
        ta, tb = truncate_pair(a, b, m)
        ea, eb = bert_truncate(a, b, m)
        assert ta.tolist() == ea and tb.tolist() == eb
        # with an rng: the same lengths, cut from either end (a contiguous piece remains)
        ra, rb = truncate_pair(a, b, m, rng)
        assert (len(ra), len(rb)) == (len(ea), len(eb))
        for piece, whole in ((ra, a), (rb, b)):
            if len(piece):
                start = int(piece[0] - whole[0])
                np.testing.assert_array_equal(piece, whole[start : start + len(piece)])


def test_nsp_labels_adjacency_and_shapes():
    docs = corpus()
    out = nsp_examples(docs, 0, max_len=16, **IDS)
    n = 30 * 11
    assert out["input_ids"].shape == out["token_type_ids"].shape == (n, 16)
    labels = out["next_sentence_label"]
    assert set(np.unique(labels)) <= {0, 1}
    assert within(int(labels.sum()), n, 0.5)
    for ids, types, attn, label in zip(out["input_ids"], out["token_type_ids"],
                                       out["attention_mask"], labels):
        a, b = halves(ids)
        (da, sa), (db, sb) = where(a[0]), where(b[0])
        if label == 0:  # IsNext: B is A's successor in the same document
            assert (db, sb) == (da, sa + 1)
        else:  # NotNext: B comes from another document
            assert db != da
        # token types: 0 through the first [SEP], 1 through the second, 0 on padding
        k = len(a) + 2
        assert (types[:k] == 0).all() and (types[k : k + len(b) + 1] == 1).all()
        assert (types[k + len(b) + 1 :] == 0).all()
        np.testing.assert_array_equal(attn, ids != PAD)
    # deterministic from the seed, different for another
    again = nsp_examples(docs, 0, max_len=16, **IDS)
    for k in out:
        np.testing.assert_array_equal(out[k], again[k])
    assert (nsp_examples(docs, 1, max_len=16, **IDS)["next_sentence_label"] != labels).any()


def test_nsp_random_segments_cover_other_documents():
    docs = corpus(n_docs=4, n_segs=90)
    out = nsp_examples(docs, 2, max_len=32, random_next_prob=1.0, **IDS)
    assert (out["next_sentence_label"] == 1).all()
    pairs = {(where(halves(i)[0][0])[0], where(halves(i)[1][0])[0]) for i in out["input_ids"]}
    assert pairs == {(a, b) for a in range(4) for b in range(4) if a != b}


def test_sop_swapped_exactly_when_labelled():
    docs = corpus(n_docs=5)
    out = sop_examples(docs, 3, max_len=12, **IDS)
    labels = out["sentence_order_label"]
    assert within(int(labels.sum()), len(labels), 0.5)
    for ids, label in zip(out["input_ids"], labels):
        a, b = halves(ids)
        (da, sa), (db, sb) = where(a[0]), where(b[0])
        assert da == db
        assert (sa, sb) == ((sb + 1, sb) if label == 1 else (sa, sa + 1))
    # SOP needs only one document
    one = sop_examples(corpus(n_docs=1), 0, max_len=12, **IDS)
    assert len(one["sentence_order_label"]) == 11


def test_truncation_keeps_max_len():
    docs = [[list(range(10, 60)), list(range(60, 75))], [list(range(80, 90))]]
    out = nsp_examples(docs, 0, max_len=20, random_next_prob=0.0, **IDS)
    a, b = halves(out["input_ids"][0])
    assert out["attention_mask"].sum() == 20 and len(a) + len(b) == 17
    assert (len(a), len(b)) == (9, 8)  # the longer one cut to 9, then alternately


def test_sentence_ends_and_split_segments():
    dot, q = 7, 8
    ids = [20, 21, dot, 22, q, q, 23, 24, 25, dot, 26]
    np.testing.assert_array_equal(sentence_ends(ids, [dot, q]), [3, 6, 10, 11])
    segs = split_segments(ids, ends=sentence_ends(ids, [dot, q]))
    assert [s.tolist() for s in segs] == [[20, 21, 7], [22, 8, 8], [23, 24, 25, 7], [26]]
    grouped = split_segments(ids, 7, ends=[3, 6, 10, 11])
    assert [s.tolist() for s in grouped] == [[20, 21, 7, 22, 8, 8], [23, 24, 25, 7, 26]]
    chunks = split_segments(ids, 4)
    assert [len(s) for s in chunks] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), ids)
    # a sentence longer than max_tokens is cut, and nothing is lost
    long = split_segments(list(range(30)), 8, ends=[3, 25, 30])
    assert all(len(s) <= 8 for s in long)
    np.testing.assert_array_equal(np.concatenate(long), np.arange(30))


def test_real_text():
    from lmforge.data import read_corpus
    from lmforge.tokenizer import Tokenizer

    texts = [t[5000:9000] for t in read_corpus("shakespeare")[:3]]
    tok = Tokenizer.train(texts, 350, special_tokens=["[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    stops = stop_token_ids(tok)
    assert tok.encode(".")[0] in stops and tok.encode("?")[0] in stops
    docs = []
    for text in texts:
        ids = tok.encode(text)
        docs.append(split_segments(ids, 40, ends=sentence_ends(ids, stops)))
    out = nsp_examples(docs, 0, max_len=64, cls_id=tok.cls_id, sep_id=tok.sep_id,
                       pad_id=tok.pad_id)
    assert (out["input_ids"][:, 0] == tok.cls_id).all()
    assert ((out["input_ids"] == tok.sep_id).sum(axis=1) == 2).all()
    assert out["attention_mask"].sum(axis=1).max() <= 64


def test_bad_input():
    with pytest.raises(DataError, match="two segments"):
        nsp_examples([[[5, 6]], [[7]]], 0, max_len=8, **IDS)
    with pytest.raises(DataError, match="two non-empty documents"):
        nsp_examples([[[5], [6]]], 0, max_len=8, **IDS)
    with pytest.raises(ConfigError, match=r"\[CLS\]"):
        nsp_examples(corpus(2), 0, max_len=8, cls_id=None, sep_id=SEP, pad_id=PAD)
    with pytest.raises(ConfigError, match="max_len"):
        sop_examples(corpus(2), 0, max_len=4, **IDS)
    with pytest.raises(ConfigError, match="swap_prob"):
        sop_examples(corpus(2), 0, max_len=8, swap_prob=1.5, **IDS)
    with pytest.raises(ConfigError):
        split_segments([1, 2, 3])
