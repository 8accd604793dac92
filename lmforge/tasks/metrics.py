"""Task metrics, each computed by the library the papers' numbers come from.

    accuracy, f1 (binary), macro_f1, mcc      scikit-learn   (GLUE: SST-2, MRPC, CoLA)
    pearson, spearman                         scipy.stats    (STS-B)
    entity_precision / _recall / _f1          seqeval        (CoNLL / WNUT NER)
    rouge1, rouge2, rougeL                    rouge-score    (summarization, as in BART)
    exact_match, squad_f1                     the official SQuAD v1.1 script, mirrored below

Every value is a fraction in [0, 1] (papers print them x100). All are "higher is
better"; a trainer that early-stops on the eval loss asks `greater_is_better("loss")`.

    compute(["accuracy", "f1"], predictions, references) -> {"accuracy": ..., "f1": ...}

What each metric takes:
- classification metrics: one label per example (ints or strings); `f1` scores the
  positive class `pos_label` (1 by default), as GLUE does for MRPC / QQP.
- pearson / spearman: one float per example.
- entity_*: one list of BIO tag strings per sentence; seqeval's default mode, which
  scores entities the way the CoNLL `conlleval` script does (micro average over types).
- rouge*: one string per example; F-measure with the Porter stemmer (`use_stemmer=True`,
  the setting behind the ROUGE numbers of the BART paper), averaged over examples. For
  one-line targets (our summaries) ROUGE-L and the newline-split ROUGE-Lsum agree.
- exact_match / squad_f1: one predicted answer string per question; each reference is
  the list of gold answers (a plain string counts as one); the best gold answer counts.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from ..errors import ConfigError, DataError

__all__ = [
    "METRICS",
    "compute",
    "greater_is_better",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
]


# -- classification (scikit-learn) ----------------------------------------------------

def accuracy(predictions, references, pos_label=1) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(references, predictions))


def f1(predictions, references, pos_label=1) -> float:
    """F1 of the positive class: 2 P R / (P + R)."""
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, average="binary", pos_label=pos_label,
                          zero_division=0))


def macro_f1(predictions, references, pos_label=1) -> float:
    """Unweighted mean of the per-class F1 over the classes seen in either list."""
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, average="macro", zero_division=0))


def mcc(predictions, references, pos_label=1) -> float:
    """Matthews correlation, (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(references, predictions))


# -- regression (scipy) ----------------------------------------------------------------

def pearson(predictions, references, pos_label=1) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr([float(p) for p in predictions], [float(r) for r in references])[0])


def spearman(predictions, references, pos_label=1) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr([float(p) for p in predictions],
                           [float(r) for r in references])[0])


# -- entity-level NER (seqeval) --------------------------------------------------------

def entity_precision(predictions, references, pos_label=1) -> float:
    from seqeval.metrics import precision_score

    return float(precision_score(_tag_lists(references), _tag_lists(predictions),
                                 zero_division=0))


def entity_recall(predictions, references, pos_label=1) -> float:
    from seqeval.metrics import recall_score

    return float(recall_score(_tag_lists(references), _tag_lists(predictions),
                              zero_division=0))


def entity_f1(predictions, references, pos_label=1) -> float:
    from seqeval.metrics import f1_score

    return float(f1_score(_tag_lists(references), _tag_lists(predictions), zero_division=0))


def _tag_lists(sentences) -> list[list[str]]:
    return [list(s) for s in sentences]


# -- ROUGE (rouge-score) ---------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions, references, types: Sequence[str] = ROUGE_TYPES) -> dict[str, float]:
    """Mean ROUGE F-measure over examples for each of `types`, stemmed."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # score(target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: totals[t] / len(predictions) for t in types}


# -- SQuAD v1.1 EM / F1 ----------------------------------------------------------------
# Mirrors `evaluate-v1.1.py`, the official evaluation script of SQuAD v1.1 (Rajpurkar et
# al. 2016, distributed with the data at https://rajpurkar.github.io/SQuAD-explorer/):
# same normalisation, same token F1, max over the gold answers. No library in our
# dependencies ships it. The script reports x100; we return fractions.

def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def _token_f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _max_over_ground_truths(metric_fn, prediction: str, ground_truths) -> float:
    if isinstance(ground_truths, str):
        ground_truths = [ground_truths]
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def squad_exact_match(predictions, references, pos_label=1) -> float:
    return sum(_max_over_ground_truths(_exact_match, p, r)
               for p, r in zip(predictions, references)) / len(predictions)


def squad_f1(predictions, references, pos_label=1) -> float:
    return sum(_max_over_ground_truths(_token_f1, p, r)
               for p, r in zip(predictions, references)) / len(predictions)


# -- the table and the entry point -------------------------------------------------------

METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "entity_precision": entity_precision,
    "entity_recall": entity_recall,
    "entity_f1": entity_f1,
    "rouge1": None,  # computed together by `rouge`
    "rouge2": None,
    "rougeL": None,
    "exact_match": squad_exact_match,
    "squad_f1": squad_f1,
}


def greater_is_better(name: str) -> bool:
    """Direction of a metric for early stopping: every metric here rises; losses fall."""
    return not (name == "loss" or name.endswith("_loss") or name == "perplexity")


def compute(
    metrics: Sequence[str], predictions: Sequence, references: Sequence, *, pos_label=1
) -> dict[str, float]:
    """{name: value} for each metric in `metrics`, predictions scored against references."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})")
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions for {len(references)} references")
    if len(predictions) == 0:
        raise DataError("no predictions to score")
    out: dict[str, float] = {}
    rouge_types = [m for m in metrics if m in ROUGE_TYPES]
    if rouge_types:
        out.update(rouge(predictions, references, rouge_types))
    for m in metrics:
        if m not in out:
            out[m] = METRICS[m](predictions, references, pos_label=pos_label)
    return {m: out[m] for m in metrics}
