"""Fine-tuning modes: token layouts, label alignment, span targets, bad rows, metric wiring."""

import dataclasses
import gzip
import hashlib
import types

import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.models import build, presets
from lmforge.tasks import get_task, load_task
from lmforge.tasks.evaluator import score
from lmforge.tasks.metrics import normalize_answer
from lmforge.tasks.modes import MODES, default_mode, get_mode
from lmforge.tokenizer import Tokenizer

SPECIAL = ["<|endoftext|>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
TEXT = ("The Empire State Building opened in 1931 in New York . A fine film , great fun . "
        "Anarchism is a political philosophy . When was it built ? ") * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], vocab_size=300, special_tokens=SPECIAL, progress=False)


@pytest.fixture(scope="module")
def gpt_tok():
    return Tokenizer.train([TEXT], vocab_size=290, special_tokens=["<|endoftext|>"],
                           progress=False)


def _cfg(**kw):
    return types.SimpleNamespace(**{"max_len": 64, "eval_batch_size": 8, "options": {}, **kw})


def _mc(preset, tok, **kw):
    return dataclasses.replace(presets.get(preset), vocab_size=tok.vocab_size,
                               eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **kw)


def _mode(name, task, tok, preset="tiny-bert", max_seq_len=128, **kw):
    mc = _mc(preset, tok, max_seq_len=max_seq_len)
    return get_mode(name).from_config(_cfg(**kw), task, tok, mc)


def _pair_task():
    return get_task("debian-match")


def test_registry_and_defaults():
    assert {"classify", "tag", "qa", "text2text", "verbalizer", "chat"} <= set(MODES)
    assert default_mode("pair-classification") == "classify"
    assert default_mode("tagging") == "tag" and default_mode("qa") == "qa"
    # where one mode does not fit every body
    assert default_mode("seq2seq", "seq2seq") == "text2text"
    assert default_mode("seq2seq", "decoder") == "verbalizer"
    assert default_mode("chat", "decoder") == "chat"
    assert default_mode("chat", "seq2seq") == "text2text"
    for task_type in ("seq2seq", "chat"):
        with pytest.raises(ConfigError, match="an encoder cannot do"):
            default_mode(task_type, "encoder")
    with pytest.raises(ConfigError, match="unknown mode 'nope'"):
        get_mode("nope")


@pytest.mark.parametrize("name,task", [("classify", "rotten-tomatoes"), ("qa", "wiki-qa"),
                                       ("tag", "wnut16")])
def test_head_modes_refuse_a_tokenizer_without_boundary_tokens(name, task):
    bare = Tokenizer.train([TEXT], vocab_size=280, special_tokens=[], progress=False)
    with pytest.raises(ConfigError, match=rf"mode '{name}' on an encoder needs \[CLS\] and "
                                          r"\[SEP\] \(or <s> and </s>\)"):
        _mode(name, get_task(task), bare, "tiny-bert")
    with pytest.raises(ConfigError, match=rf"mode '{name}' on a seq2seq needs an end-of-text"):
        _mode(name, get_task(task), bare, "tiny-bart")
    if name == "tag":  # a causal tagger ends with the last word: no EOS needed
        m = _mode(name, get_task(task), bare, "tiny-gpt2")
        assert m.suffix == [] and m.prefix == []
    else:
        with pytest.raises(ConfigError, match=rf"mode '{name}' on a decoder needs an end-of"):
            _mode(name, get_task(task), bare, "tiny-gpt2")


def test_encoder_pair_layout_has_cls_seps_and_token_types(tok):
    m = _mode("classify", _pair_task(), tok)
    a, b = tok.encode_ordinary("great fun"), tok.encode_ordinary("A fine film")
    ids, types_ = m.encode({"text": "great fun", "text_pair": "A fine film", "label": 1})
    assert ids == [tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id]
    assert types_ == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    batch = m.prepare([{"text": "great fun", "text_pair": "A fine film", "label": 1},
                       {"text": "fun", "text_pair": "film", "label": 0}])
    assert batch["token_type_ids"][0].tolist() == types_
    n1 = 3 + len(tok.encode_ordinary("fun")) + len(tok.encode_ordinary("film"))
    assert batch["attention_mask"].sum(1).tolist() == [len(ids), n1]
    assert batch["input_ids"][1, n1:].eq(tok.pad_id).all()


def test_pairs_are_cut_longest_first(tok):
    m = _mode("classify", _pair_task(), tok, max_len=16)
    long = "Anarchism is a political philosophy . " * 4
    ids, types_ = m.encode({"text": long, "text_pair": "great fun", "label": 0})
    b = tok.encode_ordinary("great fun")
    assert len(b) == 6  # 13 tokens of room: A is cut to 7, B kept whole
    assert len(ids) == 16 and ids[-len(b) - 1:-1] == b
    assert types_.count(1) == len(b) + 1
    m = _mode("classify", _pair_task(), tok, max_len=12)  # 9 of room: both sides cut
    ids, types_ = m.encode({"text": long, "text_pair": "great fun", "label": 0})
    assert len(ids) == 12 and types_.count(1) == 5 + 1 and ids[-6:-1] == b[:5]


def test_decoder_layout_ends_with_eos_and_needs_no_cls(gpt_tok):
    m = _mode("classify", _pair_task(), gpt_tok, preset="tiny-gpt2")
    ids, _ = m.encode({"text": "great fun", "text_pair": "film", "label": 1})
    eos = gpt_tok.eos_id
    assert ids == gpt_tok.encode_ordinary("great fun") + [eos] + \
        gpt_tok.encode_ordinary("film") + [eos]
    with pytest.raises(ConfigError, match=r"\[CLS\] and \[SEP\]"):
        _mode("classify", _pair_task(), gpt_tok, preset="tiny-bert")


def test_bad_rows_name_the_row(tok):
    pair = _mode("classify", _pair_task(), tok)
    good = {"text": "a", "text_pair": "b", "label": 1}
    with pytest.raises(DataError, match=r"^val split, row 1: pair with a missing side"):
        pair.check([good, {"text": "a", "label": 0}], "val split")
    with pytest.raises(DataError, match=r"row 2: empty 'text'"):
        pair.check([good, good, {"text": " ", "text_pair": "b", "label": 0}], "x")
    with pytest.raises(DataError, match=r"row 0: label 2 is not in the label set"):
        pair.check([{"text": "a", "text_pair": "b", "label": 2}], "x")
    tagger = _mode("tag", get_task("wnut16"), tok)
    with pytest.raises(DataError, match=r"row 0: tag 'B-city' is not in the label set"):
        tagger.check([{"tokens": ["Paris"], "tags": ["B-city"]}], "x")


def test_tag_labels_sit_on_first_subwords(tok):
    task = get_task("wnut16")
    m = _mode("tag", task, tok)
    row = {"tokens": ["Empire", "State", "Building", "opened"],
           "tags": ["B-facility", "I-facility", "I-facility", "O"]}
    batch = m.prepare([row])
    enc = m.encode(row)
    labels = batch["labels"][0].tolist()
    assert labels[0] == -100 and labels[-1] == -100  # [CLS], [SEP]
    firsts = [i for i, w in enumerate(enc["word_ids"])
              if w is not None and enc["word_ids"].index(w) == i]
    assert [labels[i] for i in firsts] == [task.labels.index(t) for t in row["tags"]]
    assert m.num_targets(batch) == 4  # one target per word, whatever its subword count
    assert sum(lab != -100 for lab in labels) == 4


def test_tag_predictions_are_word_tags_scored_by_seqeval(tok):
    task = get_task("wnut16")
    m = _mode("tag", task, tok)
    torch.manual_seed(0)
    model = m.build_model(build(_mc("tiny-bert", tok)))
    rows = [{"tokens": ["Empire", "State"], "tags": ["B-facility", "I-facility"]}]
    with torch.no_grad():
        model.head.out.weight.zero_()
        model.head.out.bias.zero_()
        model.head.out.bias[task.labels.index("B-facility")] = 5.0  # every token: B-facility
    assert m.predict(model, rows) == [["B-facility", "B-facility"]]
    scores = score(m, model, rows)  # two predicted entities, one gold: P 0, R 0
    assert scores == {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


def test_span_targets_point_at_the_gold_answer(tok):
    task = get_task("wiki-qa")
    rows = load_task("wiki-qa")["val"]
    m = _mode("qa", task, tok, max_len=1024, max_seq_len=1024)  # a 300-token vocab: long
    for row in rows:
        enc = m.features(row)[0]  # the first window
        s, e = enc["start"] - enc["offset"], enc["end"] - enc["offset"]
        assert 0 <= s <= e
        text = row["context"][enc["spans"][s][0]:enc["spans"][e][1]]
        assert normalize_answer(text) == normalize_answer(row["answers"][0])
        assert enc["input_ids"][enc["offset"] - 1] == tok.sep_id
        assert enc["token_type_ids"][enc["offset"]] == 1


def test_span_answer_cut_by_the_window_points_at_position_zero(tok):
    m = _mode("qa", get_task("wiki-qa"), tok, max_len=16)
    context = "Anarchism is a political philosophy . " * 5 + "It opened in 1931 ."
    row = {"question": "When?", "context": context, "answers": ["1931"],
           "answer_starts": [context.index("1931")]}
    enc = m.features(row)[0]  # the first window
    assert len(enc["input_ids"]) == 16 and (enc["start"], enc["end"]) == (0, 0)


def test_best_span_maximizes_start_plus_end_within_the_context(tok):
    start = [9.0, 0.0, 1.0, 5.0, 0.0]  # position 0 is outside the context (first = 1)
    end = [9.0, 0.0, 0.0, 1.0, 4.0]
    m = _mode("qa", get_task("wiki-qa"), tok, options={"max_answer_tokens": 2})
    assert m.best_span(start, end, 1, 4) == (2, 3)  # context-relative: 5 + 4
    m1 = _mode("qa", get_task("wiki-qa"), tok, options={"max_answer_tokens": 1})
    assert m1.best_span(start, end, 1, 4) == (2, 2)  # one token: 5 + 1 beats 0 + 4
    with pytest.raises(ConfigError, match="options.stride"):
        _mode("qa", get_task("wiki-qa"), tok, options={"stride": 2})


# A long context whose every piece is one character, so one token: token t is char t.
LETTERS = "-".join("abcdefghijklmnopqrst")  # 39 characters, 39 tokens


def _letters_row(answer, context=LETTERS):
    return {"question": "x?", "context": context, "answers": [answer],
            "answer_starts": [context.index(answer)]}


def test_qa_long_context_windows_overlap_by_doc_stride_and_reach_its_end(tok):
    m = _mode("qa", get_task("wiki-qa"), tok, max_len=16, options={"doc_stride": 3})
    q = tok.encode_ordinary("x?")
    assert len(q) == 2 and [len(tok.encode_ordinary(c)) for c in LETTERS] == [1] * 39
    # room = 16 - 3 specials - 2 question tokens = 11, step = 11 - 3 = 8
    feats = m.features(_letters_row("p-q"))
    assert [f["window"] for f in feats] == [(0, 11), (8, 19), (16, 27), (24, 35), (32, 39)]
    assert [LETTERS[f["spans"][0][0]:f["spans"][-1][1]] for f in feats] == [
        "a-b-c-d-e-f", "e-f-g-h-i-j", "i-j-k-l-m-n", "m-n-o-p-q-r", "q-r-s-t"]
    for f in feats:
        w0, w1 = f["window"]
        assert f["input_ids"] == [tok.cls_id] + q + [tok.sep_id] + \
            [tok.encode_ordinary(c)[0] for c in LETTERS[w0:w1]] + [tok.sep_id]
        assert f["token_type_ids"] == [0] * 4 + [1] * (w1 - w0 + 1) and f["offset"] == 4
    assert all(a["window"][1] - b["window"][0] == 3 for a, b in zip(feats, feats[1:]))
    # "p-q" is tokens 30..32: whole only in window 3 (24..34), at 4 + 6 .. 4 + 8;
    # "e-f" is tokens 8..10: whole in window 0 (at 4 + 8) and window 1 (at 4 + 0)
    batch = m.prepare([_letters_row("p-q"), _letters_row("e-f")])
    assert batch["input_ids"].shape == (10, 16) and m.num_targets(batch) == 10
    assert batch["start_positions"].tolist() == [0, 0, 0, 10, 0, 12, 4, 0, 0, 0]
    assert batch["end_positions"].tolist() == [0, 0, 0, 12, 0, 14, 6, 0, 0, 0]
    assert batch["attention_mask"].sum(1).tolist() == [16, 16, 16, 16, 12] * 2
    assert batch["token_type_ids"][4].tolist() == [0] * 4 + [1] * 8 + [0] * 4
    # "j-k-l" is tokens 18..22: window 1 (8..18) holds only its start, so points at 0
    assert [(f["start"], f["end"]) for f in m.features(_letters_row("j-k-l"))] == \
        [(0, 0), (0, 0), (4 + 2, 4 + 6), (0, 0), (0, 0)]
    assert _mode("qa", get_task("wiki-qa"), tok, max_len=16).doc_stride == 4  # max_len // 4


def test_qa_context_that_fits_is_one_feature_encoded_as_before(tok, gpt_tok):
    context = "It opened in 1931 ."
    row = {"question": "When?", "context": context, "answers": ["1931"],
           "answer_starts": [context.index("1931")]}
    for t, preset, prefix, sep in [(tok, "tiny-bert", [tok.cls_id], tok.sep_id),
                                   (gpt_tok, "tiny-gpt2", [], gpt_tok.eos_id)]:
        q = t.encode_ordinary("When?")
        pieces = [t.encode_ordinary(p) for p in ["It", " opened", " in", " 1931", " ."]]
        c = [i for p in pieces for i in p]
        start = len(prefix) + len(q) + 1 + len(pieces[0] + pieces[1] + pieces[2])
        for options in ({}, {"doc_stride": 0}, {"doc_stride": 5}):
            m = _mode("qa", get_task("wiki-qa"), t, preset=preset, options=options)
            assert len(m.features(row)) == 1
            batch = m.prepare([row])
            assert batch["input_ids"].tolist() == [prefix + q + [sep] + c + [sep]]
            assert batch["attention_mask"].tolist() == [[1] * (len(prefix) + len(q) + len(c) + 2)]
            assert batch["start_positions"].tolist() == [start]
            assert batch["end_positions"].tolist() == [start + len(pieces[3]) - 1]
            assert ("token_type_ids" in batch) == (preset == "tiny-bert")


class _TokenScores(torch.nn.Module):
    """A stand-in span model: start_t = S[id_t], end_t = E[id_t]."""

    def __init__(self, vocab_size, start, end):
        super().__init__()
        self.S = torch.nn.Parameter(torch.zeros(vocab_size))
        self.E = torch.nn.Parameter(torch.zeros(vocab_size))
        with torch.no_grad():
            for table, scores in ((self.S, start), (self.E, end)):
                for token_id, score in scores.items():
                    table[token_id] = score

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.S[input_ids], self.E[input_ids]


def test_qa_prediction_takes_the_best_span_over_all_windows(tok):
    m = _mode("qa", get_task("wiki-qa"), tok, max_len=16, eval_batch_size=2,
              options={"doc_stride": 3, "max_answer_tokens": 40})
    ch = {c: tok.encode_ordinary(c)[0] for c in "cpqstx"}
    special = {tok.cls_id: 100.0, tok.sep_id: 100.0, ch["x"]: 50.0}  # never in the context
    model = _TokenScores(tok.vocab_size, {**special, ch["c"]: 6.0, ch["p"]: 5.0},
                         {**special, ch["s"]: 6.0, ch["q"]: 5.0})
    rows = [_letters_row("c-d-s", "c-d-s"), _letters_row("p-q")]
    # the long row, windows as above: a-..-f 6 + 0 (c), m-..-r 5 + 5 (p-q), q-..-t 0 + 6 (s);
    # c .. s (6 + 6) would win were spans to cross windows; the short row fits: c-d-s
    assert m.predict(model, rows) == ["c-d-s", "p-q"]
    with torch.no_grad():
        model.E[ch["t"]] = 20.0  # now the last, short window wins (q-r-s-t, chars 32..38)
    assert m.predict(model, rows) == ["c-d-s", "q-r-s-t"]


@pytest.mark.learning
def test_qa_tiny_model_finds_answers_beyond_the_first_window(tok):
    task = get_task("wiki-qa")
    m = _mode("qa", task, tok, max_len=16, options={"doc_stride": 3})
    rows = []
    for p in range(20):  # "z" replaces the p-th letter: windows 0 .. 4 hold it
        context = "-".join("abcdefghijklmnopqrst"[:p] + "z" + "abcdefghijklmnopqrst"[p + 1:])
        rows.append(_letters_row("z", context))
    assert sum(r["answer_starts"][0] >= 11 for r in rows) == 14  # beyond the first window
    torch.manual_seed(0)
    model = m.build_model(build(_mc("tiny-bert", tok)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = m.prepare(rows)
    assert m.num_targets(batch) == 100  # 20 rows x 5 windows
    for _ in range(60):
        loss, n = m.loss(model, batch)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    assert loss.item() / n < 0.05  # the windows without "z" learned position 0 too
    assert score(m, model, rows) == {"squad_f1": 1.0, "exact_match": 1.0}


def test_qa_doc_stride_must_leave_the_windows_room_to_move(tok):
    # max_len 16: 13 beside the specials, a question keeps up to 6, so the room is >= 7
    for bad in (-1, 7, 100, "3", 2.5, True):
        with pytest.raises(ConfigError, match=r"options\.doc_stride.*\[0, 7\)"):
            _mode("qa", get_task("wiki-qa"), tok, max_len=16, options={"doc_stride": bad})
    assert _mode("qa", get_task("wiki-qa"), tok, max_len=16,
                 options={"doc_stride": 6}).doc_stride == 6


def test_wiki_qa_fixture_is_rebuilt_byte_for_byte_from_the_corpus():
    from lmforge.data import read_corpus, registry
    from lmforge.tasks import wikiqa

    if not registry.installed("wiki-sample"):
        pytest.skip("wiki-sample is not installed")
    data = wikiqa.FIXTURE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == wikiqa.SHA256
    assert wikiqa.SHA256 in (wikiqa.FIXTURE.parent / "README.md").read_text()
    rows = wikiqa.build_rows(read_corpus("wiki-sample"))
    import json

    assert gzip.decompress(data).decode() == "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                     for r in rows)
    assert len(rows) == 306
    for r in rows:
        a, s = r["answers"][0], r["answer_starts"][0]
        assert r["context"][s:s + len(a)] == a and a not in r["question"]
        assert r["question"].endswith("?")
