"""Word-level BIO tags <-> subword tokens: exact alignment and the way back."""

import pytest

from lmforge.errors import DataError
from lmforge.objectives.clm import IGNORE
from lmforge.tasks.metrics import compute
from lmforge.tasks.tagging import align, bio_labels, entity_types, word_predictions
from lmforge.tokenizer import Tokenizer

X = IGNORE
LABELS = ["O", "B-geo-loc", "I-geo-loc", "B-person", "I-person"]


@pytest.fixture(scope="module")
def byte_tok():
    return Tokenizer.train(["x"], vocab_size=258, special_tokens=["[CLS]", "[SEP]"],
                           progress=False)


@pytest.fixture(scope="module")
def bpe_tok():
    text = ["I saw Ann in New York today, and Ann saw me in New York too."] * 30
    return Tokenizer.train(text, vocab_size=300, progress=False)


def test_bio_labels_fixed_order():
    assert bio_labels(["person", "geo-loc"]) == LABELS
    assert entity_types([["O", "B-person", "I-person"], ["B-geo-loc"]]) == ["geo-loc", "person"]
    with pytest.raises(DataError, match="neither"):
        entity_types([["PER"]])


def test_exact_alignment_bytes(byte_tok):
    cls, sep = byte_tok.token_to_id("[CLS]"), byte_tok.token_to_id("[SEP]")
    out = align(["Hi", "NYC"], ["O", "B-geo-loc"], byte_tok, LABELS,
                prefix_ids=[cls], suffix_ids=[sep])
    assert out["input_ids"] == [cls, 72, 105, 32, 78, 89, 67, sep]  # "Hi", " NYC"
    assert out["labels"] == [X, 0, X, 1, X, X, X, X]  # first subword of each word only
    assert out["word_ids"] == [None, 0, 0, 1, 1, 1, 1, None]


def test_alignment_with_merges(bpe_tok):
    words = ["Ann", "visited", "New", "York"]
    tags = ["B-person", "O", "B-geo-loc", "I-geo-loc"]
    out = align(words, tags, bpe_tok, LABELS)
    assert out["input_ids"] == bpe_tok.encode(" ".join(words))  # reads as the sentence does
    pieces = [bpe_tok.encode_ordinary(w if i == 0 else " " + w) for i, w in enumerate(words)]
    assert len(pieces[1]) > 1  # "visited" is not in the training text: several subwords
    expected = []
    for p, tag in zip(pieces, tags):
        expected += [LABELS.index(tag)] + [X] * (len(p) - 1)
    assert out["labels"] == expected
    assert out["word_ids"] == [i for i, p in enumerate(pieces) for _ in p]


def test_back_to_words_and_seqeval(bpe_tok):
    words = ["Ann", "visited", "New", "York"]
    tags = ["B-person", "O", "B-geo-loc", "I-geo-loc"]
    out = align(words, tags, bpe_tok, LABELS)
    # a model that is right on first subwords and says anything on the others
    preds = [lab if lab != X else 4 for lab in out["labels"]]
    back = word_predictions(preds, out["word_ids"], LABELS, len(words))
    assert back == tags
    # truncation: words with no token left are predicted "O" and cost recall
    cut = align(words, tags, bpe_tok, LABELS, max_len=len(out["input_ids"]) - 1)
    lost = word_predictions([lab if lab != X else 0 for lab in cut["labels"]],
                            cut["word_ids"], LABELS, len(words))
    assert cut["word_ids"][-1] == 2  # " York" is one token here, and it was cut
    assert lost == ["B-person", "O", "B-geo-loc", "O"]
    got = compute(["entity_recall"], [lost], [tags])["entity_recall"]
    assert got == pytest.approx(1 / 2)  # Ann right, "New York" broken


def test_alignment_errors(byte_tok):
    with pytest.raises(DataError, match="2 words but 1 tags"):
        align(["a", "b"], ["O"], byte_tok, LABELS)
    with pytest.raises(DataError, match="'B-org' of word 0"):
        align(["a"], ["B-org"], byte_tok, LABELS)
    out = align(["a", "b"], None, byte_tok, LABELS)  # inference: no labels
    assert out["labels"] == [X, X, X]
