"""WordPiece (lmforge/wordpiece.py) against HF `tokenizers` on the real MiniLM vocab.

The reference is `tokenizers` loading all-MiniLM-L6-v2's own tokenizer.json (uncased
BERT WordPiece, 30,522 tokens), with padding and truncation off and no [CLS] / [SEP]
template, so both sides encode exactly the text.
"""

import gzip
import json
import pickle

import pytest

from lmforge.data import registry
from lmforge.data.corpora import read_corpus
from lmforge.errors import DataError, TokenizerError
from lmforge.tokenizer import Tokenizer
from lmforge.wordpiece import WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers")

TRICKY = [
    "Café naïve résumé Ångström Øresund Straße",
    "ΟΔΟΣ Σίσυφος ΣΣ",  # HF lowercases char by char: no final sigma
    "İstanbul IJssel ǅemal ǈ ᾈ ß ẞ ﬀ \u0130\u0131",
    "中文字 日本語のテキスト 한국어 𠀋𪜀",  # CJK split per char; Hangul decomposed by NFD
    "😀 👍🏽 👨‍👩‍👧‍👦 🥲 🫠 ❤️",
    "Wait... what?!?! --- (yes) [no] {maybe} <html> \"quoted\" 'single' «guillemets» "
    "„German“ ¿Qué? ¡Sí! …—–‐•·",
    "x" * 99, "x" * 100, "x" * 101, "a" * 250 + " b",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "tab\there\nnew\r\nline\u00a0nbsp\u2003em\u3000ideo\u2028ls\x0bvt\x0cff\x1cfs\x85nel",
    "\x00nul\x07bell\x1besc\u200bzwsp\u200dzwj\u00adshy\ufeffbom\ufffdrepl\ue000pua",
    "", "   ", "\n\n",
    "[CLS] hello [SEP] [MASK] [PAD] [UNK] [mask] [CLS][SEP]",
    "don't I'm we've they're it's",
    "$100 + 5% = €105.00; 3×4 ≠ 11 ½ ¼ ²",
    "e\u0301 a\u0300 o\u0308 ﬁne ﬂow Ⅳ ① ㎏",
    "Привет, мир! Ёжик مرحبا بالعالم שלום עולם नमस्ते दुनिया สวัสดีชาวโลก",
    "http://example.com/a?b=c&d=e#f user@mail.org C++ C# .NET node.js",
    "1,234,567.89 3.14159 1e-10 \U0010ffff \U000e0001 a\u0378b",
]

# Code point ranges checked one by one (`a<c>b <c>` for each): the scripts of real text.
# Outside them, 693 of the 1.1M code points (2026-11 sweep) are classed differently by
# HF's Unicode-8-era tables; see docs/tokenizer.md.
# U+061D (Arabic end of text mark, Unicode 14) is punctuation here, a letter to HF.
SWEEP = [(0x0000, 0x058F), (0x0600, 0x061C), (0x061E, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F),
         (0x1E00, 0x1FFF), (0x2000, 0x2E42), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
         (0xAC00, 0xD7A3), (0xF900, 0xFFFF), (0x1F300, 0x1FAFF)]


@pytest.fixture(scope="module")
def root():
    try:
        files = registry.files("minilm")
    except DataError as e:
        pytest.skip(str(e))
    return next(f for f in files if f.name == "config.json").parent


@pytest.fixture(scope="module")
def ours(root):
    return Tokenizer.load(root / "tokenizer.json")


def _hf(path):
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def hf(root):
    return _hf(root / "tokenizer.json")


@pytest.fixture(scope="module")
def lines():
    """About 8,000 real lines: Shakespeare, Wikipedia, Debian package descriptions."""
    out = []
    for name in ("shakespeare", "wiki-sample"):
        try:
            docs = read_corpus(name)
        except DataError as e:
            pytest.skip(str(e))
        all_lines = [line for d in docs for line in d.split("\n") if line.strip()]
        out += all_lines[:: len(all_lines) // 3000][:3000]
    fixture = registry.files("debian-summaries")[0]
    with gzip.open(fixture, "rt", encoding="utf-8") as f:
        for row in map(json.loads, f):
            out += [row["synopsis"], row["description"]]
            if len(out) >= 8000:
                break
    return out


def _hf_ids(hf, texts):
    return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


# ----------------------------------------------------------------------------- loading


def test_load_gives_wordpiece_with_bert_roles(ours, root):
    assert isinstance(ours, WordPieceTokenizer)
    assert isinstance(Tokenizer.from_hf_json(root / "tokenizer.json"), WordPieceTokenizer)
    assert ours.vocab_size == 30522
    assert ours.special_tokens == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
                                   "[MASK]": 103}
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        0, 100, 101, 102, 103)
    assert (ours.bos_id, ours.eos_id) == (101, 102)  # BERT: [CLS] starts, [SEP] ends
    assert ours.lowercase and ours.strip_accents is None
    assert ours.token_to_id("##ing") == 2075 and ours.id_to_token(2075) == "##ing"
    assert ours.id_to_bytes(2075) == b"ing" and ours.is_continuation(2075)
    assert not ours.is_continuation(7592) and not ours.is_continuation(101)
    assert ours.id_to_token(30522) is None and ours.token_to_id("nope-not-a-token") is None
    assert len(ours.get_vocab()) == 30522


def test_known_ids(ours):
    assert ours.encode("Hello, world!") == [7592, 1010, 2088, 999]
    ids = ours.encode("The unaffable Straße")
    assert ids == [1996, 14477, 20961, 3468, 2358, 27807]
    assert [ours.id_to_token(i) for i in ids] == ["the", "una", "##ffa", "##ble", "st",
                                                   "##raße"]


def test_vocab_txt_gives_the_same_tokenizer(ours, root, lines):
    from_txt = WordPieceTokenizer.from_vocab_txt(root / "vocab.txt")
    assert from_txt.fingerprint == ours.fingerprint
    assert [from_txt.encode(t) for t in lines[:500]] == [ours.encode(t) for t in lines[:500]]
    cased = WordPieceTokenizer.from_vocab_txt(root / "vocab.txt", lowercase=False)
    assert cased.encode("Hello") == [100]  # the uncased vocab has no 'H'


# ---------------------------------------------------------------------- parity with HF


def test_encode_matches_hf_on_real_lines(ours, hf, lines):
    assert len(lines) == 8000
    assert [ours.encode(t, allowed_special="all") for t in lines] == _hf_ids(hf, lines)


def test_encode_matches_hf_on_tricky_strings(ours, hf):
    for text, ids in zip(TRICKY, _hf_ids(hf, TRICKY)):
        assert ours.encode(text, allowed_special="all") == ids, text


def test_encode_matches_hf_code_point_by_code_point(ours, hf):
    texts = [f"a{chr(c)}b {chr(c)}" for lo, hi in SWEEP for c in range(lo, hi + 1)
             if not 0xD800 <= c <= 0xDFFF]
    assert len(texts) == 42_358
    assert [ours.encode(t) for t in texts] == _hf_ids(hf, texts)


def test_offsets_match_hf(ours, hf, lines):
    texts = TRICKY + lines[::16]
    for text, enc in zip(texts, hf.encode_batch(texts, add_special_tokens=False)):
        ids, offsets = ours.encode_with_offsets(text, allowed_special="all")
        assert ids == enc.ids, text
        assert offsets == enc.offsets, text
    ids, offsets = ours.encode_with_offsets("The unaffable Straße")
    assert offsets == [(0, 3), (4, 7), (7, 10), (10, 13), (14, 16), (16, 20)]


def test_decode_matches_hf(ours, hf, lines):
    texts = TRICKY + lines
    all_ids = _hf_ids(hf, texts)
    for skip in (False, True):
        ours_text = [ours.decode(ids, skip_special_tokens=skip) for ids in all_ids]
        assert ours_text == hf.decode_batch(all_ids, skip_special_tokens=skip)
    # Round trips exactly where HF's does (lowercase text, no space before punctuation).
    ours_rt = {t for t in texts if ours.decode(ours.encode(t)) == t}
    hf_rt = {t for t, ids in zip(texts, all_ids) if hf.decode(ids) == t}
    assert ours_rt == hf_rt
    assert ours.decode(ours.encode("hello, world!")) == "hello, world!"


@pytest.mark.parametrize("lowercase,strip_accents", [(True, False), (False, None),
                                                      (False, True), (True, True)])
def test_normalizer_flags_match_hf(root, tmp_path, lines, lowercase, strip_accents):
    tok = WordPieceTokenizer.from_vocab_txt(root / "vocab.txt", lowercase=lowercase,
                                            strip_accents=strip_accents)
    hf = _hf(tok.save(tmp_path / "tokenizer.json"))
    texts = TRICKY + lines[::8]
    assert [tok.encode(t, allowed_special="all") for t in texts] == _hf_ids(hf, texts)


def test_save_load_and_hf_reads_what_we_save(ours, lines, tmp_path):
    path = ours.save(tmp_path)  # a folder gets tokenizer.json
    assert path == tmp_path / "tokenizer.json"
    again = Tokenizer.load(path)
    assert isinstance(again, WordPieceTokenizer) and again.fingerprint == ours.fingerprint
    hf = _hf(path)
    texts = TRICKY + lines[:2000]
    assert _hf_ids(hf, texts) == [ours.encode(t, allowed_special="all") for t in texts]
    # The saved file keeps BERT's template, for users of transformers: [CLS] text [SEP].
    assert hf.encode("Hello, world!").ids == [101, 7592, 1010, 2088, 999, 102]
    assert hf.decode([7592, 2075, 1010]) == ours.decode([7592, 2075, 1010]) == "helloing,"


# ------------------------------------------------------------------------ behaviour


def test_special_token_policy(ours):
    text = "hello [MASK] world"
    assert ours.encode(text) == [7592, 1031, 7308, 1033, 2088]  # '[', 'mask', ']': text
    assert ours.encode(text, allowed_special="all") == [7592, 103, 2088]
    assert ours.encode(text, allowed_special={"[MASK]"}) == [7592, 103, 2088]
    with pytest.raises(TokenizerError, match=r"special token '\[MASK\]' at character 6"):
        ours.encode(text, disallowed_special="all")
    with pytest.raises(TokenizerError, match="not a special token"):
        ours.encode(text, allowed_special={"<mask>"})
    assert ours.encode("[mask]", allowed_special="all") == [1031, 7308, 1033]  # raw match


def test_long_and_unknown_words(ours):
    assert ours.encode("x" * 100) == [22038] * 1 + [20348] * 49  # 'xx', then '##xx'
    assert ours.encode("x" * 101) == [100]
    assert ours.encode("x" * 101 + " ok") == [100, 7929]
    assert ours.encode("😀 ok") == [100, 7929]
    ids, offsets = ours.encode_with_offsets("ab😀cd ok")
    assert ids == [100, 7929] and offsets == [(0, 5), (6, 8)]  # [UNK] spans the word


def test_encode_batch_equals_encode(ours, lines):
    texts = lines[:300]
    expected = [ours.encode(t) for t in texts]
    assert ours.encode_batch(texts) == expected
    assert ours.encode_batch(texts, num_workers=2) == expected  # forked workers


def test_add_special_tokens_and_pickle(root):
    tok = WordPieceTokenizer.from_vocab_txt(root / "vocab.txt")
    before = tok.fingerprint
    assert tok.add_special_tokens(["<extra_id_0>", "<extra_id_1>", "[unused0]"]) == [
        30522, 30523, 1]  # an existing vocab entry keeps its id
    assert tok.sentinel_ids(2) == [30522, 30523] and tok.vocab_size == 30524
    assert tok.fingerprint != before
    assert tok.encode("a<extra_id_1>b", allowed_special="all") == [1037, 30523, 1038]
    assert tok.decode([1037, 30523, 1038]) == "a <extra_id_1> b"
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.fingerprint == tok.fingerprint
    with pytest.raises(TokenizerError, match="1 of 3 sentinel tokens"):
        tok.sentinel_ids(3)


def test_errors_are_one_line(root, tmp_path):
    with pytest.raises(TokenizerError, match="token id 30522 is not in the vocabulary"):
        Tokenizer.load(root / "tokenizer.json").decode([7592, 30522])
    with pytest.raises(TokenizerError, match="vocab file not found"):
        WordPieceTokenizer.from_vocab_txt(tmp_path / "missing.txt")
    (tmp_path / "vocab.txt").write_text("a\nb\n##c\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"unknown token '\[UNK\]' is not in the vocab"):
        WordPieceTokenizer.from_vocab_txt(tmp_path / "vocab.txt")
    data = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Whitespace"}
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="pre_tokenizer 'Whitespace' is not supported"):
        Tokenizer.load(bad)
    data["pre_tokenizer"] = {"type": "BertPreTokenizer"}
    data["normalizer"] = {"type": "NFKC"}
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="normalizer 'NFKC' is not supported"):
        Tokenizer.load(bad)


def test_tiny_vocab_greedy_longest_match(tmp_path):
    vocab = {t: i for i, t in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "una", "##ff", "##able",
         "##a", "##ble", "##f", ",", "!"])}
    tok = WordPieceTokenizer(vocab, {t: vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]",
                                                           "[SEP]", "[MASK]")})
    # Longest first: 'una' (not 'un'), '##ff', '##able' (not '##a' + '##ble').
    assert [tok.id_to_token(i) for i in tok.encode("UNAffable!")] == [
        "una", "##ff", "##able", "!"]
    assert tok.encode("unaffablex") == [1]  # no piece for the tail: the whole word is [UNK]
    assert tok.decode(tok.encode("unaffable, una!")) == "unaffable, una!"
    hf = _hf(tok.save(tmp_path / "tokenizer.json"))
    assert hf.encode("UNAffable! unaffablex", add_special_tokens=False).ids == tok.encode(
        "UNAffable! unaffablex")


def test_convert_reads_vocab_txt_when_there_is_no_tokenizer_json(root, ours, tmp_path):
    from lmforge.cli import main
    from lmforge.runs import load_run

    src = tmp_path / "bert"
    src.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        (src / name).symlink_to(root / name)
    assert main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "run")]) == 0
    tok = load_run(tmp_path / "run").tokenizer
    assert isinstance(tok, WordPieceTokenizer) and tok.fingerprint == ours.fingerprint
