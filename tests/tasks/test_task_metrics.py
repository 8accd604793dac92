"""Metric values on hand-made cases, against numbers worked out by hand (and the
libraries called directly)."""

import math

import pytest
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import f1_score, matthews_corrcoef

from lmforge.errors import ConfigError, DataError
from lmforge.tasks.metrics import compute, greater_is_better, normalize_answer, squad_f1

# 10 examples: TP = 3, FN = 1 (index 3), FP = 1 (index 4), TN = 5
REFS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]


def test_classification_by_hand():
    got = compute(["accuracy", "f1", "macro_f1", "mcc"], PREDS, REFS)
    assert got["accuracy"] == pytest.approx(8 / 10)
    assert got["f1"] == pytest.approx(3 / 4)  # P = R = 3/4
    # class 0: P = R = 5/6; macro = (3/4 + 5/6) / 2
    assert got["macro_f1"] == pytest.approx(19 / 24)
    # (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (15 - 1) / sqrt(4*4*6*6)
    assert got["mcc"] == pytest.approx(14 / 24)
    assert got["f1"] == pytest.approx(f1_score(REFS, PREDS))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(REFS, PREDS))
    assert list(got) == ["accuracy", "f1", "macro_f1", "mcc"]


def test_f1_positive_label_and_string_labels():
    refs = ["match" if r else "mismatch" for r in REFS]
    preds = ["match" if p else "mismatch" for p in PREDS]
    assert compute(["f1"], preds, refs, pos_label="match")["f1"] == pytest.approx(3 / 4)
    assert compute(["f1"], preds, refs, pos_label="mismatch")["f1"] == pytest.approx(5 / 6)


def test_pearson_spearman_by_hand():
    x, y = [1, 2, 3, 4], [2, 4, 9, 5]
    got = compute(["pearson", "spearman"], x, y)
    # dx = (-1.5, -.5, .5, 1.5), dy = (-3, -1, 4, 0): sum dx dy = 7, sum dx^2 = 5, dy^2 = 26
    assert got["pearson"] == pytest.approx(7 / math.sqrt(5 * 26))
    # ranks of y = (1, 2, 4, 3): sum d^2 = 2, rho = 1 - 6 * 2 / (4 * (16 - 1))
    assert got["spearman"] == pytest.approx(0.8)


def test_entity_scores_by_hand():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]  # PER, LOC, ORG
    # conlleval semantics (seqeval's default): an I- after O opens an entity, so the
    # first sentence predicts PER (tokens 0-1) correctly and misses LOC.
    preds = [["I-PER", "I-PER", "O", "O"], ["B-ORG", "O"]]
    got = compute(["entity_precision", "entity_recall", "entity_f1"], preds, refs)
    assert got["entity_precision"] == pytest.approx(1.0)  # 2 of 2 predicted
    assert got["entity_recall"] == pytest.approx(2 / 3)  # 2 of 3 gold
    assert got["entity_f1"] == pytest.approx(0.8)
    assert got["entity_f1"] == pytest.approx(seqeval_f1(refs, preds))
    # a span that is off by one token counts as wrong
    assert compute(["entity_f1"], [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]], refs)[
        "entity_f1"] == pytest.approx(2 / 3)


def test_rouge_by_hand():
    pred, ref = "the cat sat on the mat", "the cat is on the mat"
    got = compute(["rouge1", "rouge2", "rougeL"], [pred], [ref])
    assert got["rouge1"] == pytest.approx(5 / 6)  # the x2, cat, on, mat of 6 and 6
    assert got["rouge2"] == pytest.approx(3 / 5)  # "the cat", "on the", "the mat" of 5, 5
    assert got["rougeL"] == pytest.approx(5 / 6)  # LCS "the cat on the mat"
    # Porter stemming: cats -> cat, running / runs -> run
    assert compute(["rouge1"], ["cats running"], ["cat runs"])["rouge1"] == pytest.approx(1.0)
    # averaged over examples
    both = compute(["rouge1"], [pred, "cats running"], [ref, "a dog"])
    assert both["rouge1"] == pytest.approx((5 / 6 + 0) / 2)


def test_squad_em_f1_by_hand():
    assert normalize_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    assert normalize_answer("An apple, a day") == "apple day"
    preds = ["The Eiffel Tower!", "in Paris, France"]
    refs = [["Eiffel tower", "the tower"], ["Paris"]]
    got = compute(["exact_match", "squad_f1"], preds, refs)
    assert got["exact_match"] == pytest.approx(1 / 2)
    # second: P = 1/3 (paris of in paris france), R = 1, F1 = 1/2
    assert got["squad_f1"] == pytest.approx((1 + 1 / 2) / 2)
    # a plain string reference is one gold answer
    assert compute(["exact_match"], ["an apple"], ["apple"])["exact_match"] == 1.0


def test_squad_f1_counts_repeated_tokens():
    """Overlap is a multiset (SQuAD's Counter &): "cat cat" against "cat cat dog" shares 2
    tokens, P = 2/2, R = 2/3, F1 = 0.8 (as sets: 1 shared, F1 = 0.4); an exact answer with a
    repeated word is F1 1 (as sets: 0.5)."""
    assert squad_f1(["cat cat"], ["cat cat dog"]) == pytest.approx(0.8)
    assert squad_f1(["cat cat"], ["cat cat"]) == 1.0
    got = compute(["squad_f1"], ["cat cat dog", "the cat, the cat"], [["cat cat"], ["cat cat"]])
    assert got["squad_f1"] == pytest.approx((0.8 + 1) / 2)  # P = 2/3, R = 1; normalized: exact


def test_errors_and_direction():
    with pytest.raises(ConfigError, match="unknown metric 'bleu'"):
        compute(["bleu"], [1], [1])
    with pytest.raises(DataError, match="2 predictions for 1 references"):
        compute(["accuracy"], [1, 0], [1])
    with pytest.raises(DataError, match="no predictions"):
        compute(["accuracy"], [], [])
    assert greater_is_better("entity_f1") and not greater_is_better("loss")
