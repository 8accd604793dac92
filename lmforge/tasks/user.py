"""Your own task data: jsonl or csv files -> a Task and its train / val / test splits.

    task, splits = from_files("classification", train="reviews.csv", text_field="review",
                              label_field="stars")

Fields per type (names configurable; csv holds only the flat types):

    classification / pair-classification   text_field, [text_pair_field], label_field
    regression                              text_field, [text_pair_field], label_field (a number)
    tagging (jsonl)                         tokens_field, tags_field (lists of strings, BIO)
    seq2seq                                 text_field, target_field
    chat (jsonl)                            messages_field: [{"role", "content"}, ...]
    qa (jsonl)                              question_field, context_field, answers_field:
                                            {"text": [...], "answer_start": [...]} (SQuAD)

Class labels are names: given as `labels`, or the sorted distinct labels of the train
file (numerically sorted when all are integers). A split you do not give is carved out
of train: 10% each for val and test, by the seeded rule of `splits.split_groups`.
Every bad row (missing field, empty text, unknown label, a pair with one side missing,
a conversation without an assistant turn) raises DataError naming file and line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..data.readers import decode, jsonl_rows
from ..errors import ConfigError, DataError
from .chat import check_messages
from .datasets import TASK_TYPES, Splits, Task, default_metrics
from .metrics import METRICS
from .splits import split_groups
from .tagging import bio_labels, entity_types

_JSONL = (".jsonl", ".json")
_CSV = (".csv", ".tsv")
_NESTED = ("tagging", "chat", "qa")  # types whose rows hold lists: jsonl only


def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """(where, row) for each row of a jsonl or csv / tsv file; `where` is "file:line"."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    rows = []
    if suffix in _JSONL:
        rows = [(f"{path}:{lineno}", row) for lineno, row in jsonl_rows(path)]
    elif suffix in _CSV:
        text = decode(path.read_bytes())
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        for row in reader:
            rows.append((f"{path}:{reader.line_num}", row))
    else:
        raise DataError(f"{path}: task data must be .jsonl or .csv / .tsv")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _field(where: str, row: dict, name: str):
    if name not in row or row[name] is None:
        raise DataError(f"{where}: no field '{name}'")
    return row[name]


def _text(where: str, row: dict, name: str) -> str:
    value = _field(where, row, name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: empty '{name}'")
    return value


def _str_list(where: str, row: dict, name: str) -> list[str]:
    value = _field(where, row, name)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: '{name}' must be a non-empty list of strings")
    return value


def from_files(
    type: str,
    train: str | Path,
    val: str | Path | None = None,
    test: str | Path | None = None,
    *,
    name: str = "user",
    text_field: str = "text",
    text_pair_field: str = "text_pair",
    label_field: str = "label",
    target_field: str = "target",
    tokens_field: str = "tokens",
    tags_field: str = "tags",
    messages_field: str = "messages",
    question_field: str = "question",
    context_field: str = "context",
    answers_field: str = "answers",
    labels: list[str] | None = None,
    metrics: list[str] | None = None,
    main_metric: str | None = None,
    seed: int = 0,
) -> tuple[Task, Splits]:
    """The Task declared by `type` and the files, and its {"train", "val", "test"} examples."""
    if type not in TASK_TYPES:
        raise ConfigError(f"unknown task type {type!r} (known: {', '.join(TASK_TYPES)})")
    files = {s: p for s, p in {"train": train, "val": val, "test": test}.items() if p is not None}
    for p in files.values():
        if type in _NESTED and Path(p).suffix.lower() not in _JSONL:
            raise DataError(f"{p}: {type} data must be jsonl (its rows hold lists)")
    raw = {s: read_rows(p) for s, p in files.items()}

    paired = type == "pair-classification" or (
        type == "regression" and text_pair_field in raw["train"][0][1])

    def example(where: str, row: dict) -> dict:
        if type in ("classification", "pair-classification", "regression"):
            ex = {"text": _text(where, row, text_field)}
            if paired:
                ex["text_pair"] = _text(where, row, text_pair_field)
            label = _field(where, row, label_field)
            if type == "regression":
                try:
                    ex["label"] = float(label)
                except (TypeError, ValueError):
                    raise DataError(f"{where}: label {label!r} is not a number") from None
            else:
                ex["label"] = str(label).strip()
            return ex
        if type == "seq2seq":
            return {"text": _text(where, row, text_field),
                    "target": _text(where, row, target_field)}
        if type == "tagging":
            tokens, tags = _str_list(where, row, tokens_field), _str_list(where, row, tags_field)
            if len(tokens) != len(tags):
                raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
            return {"tokens": tokens, "tags": tags}
        if type == "chat":
            messages = _field(where, row, messages_field)
            check_messages(messages, where)
            return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        return _qa_example(where, row, question_field, context_field, answers_field)

    examples = {s: [(w, example(w, r)) for w, r in rows] for s, rows in raw.items()}

    label_names: tuple[str, ...] = ()
    if type in ("classification", "pair-classification"):
        label_names = tuple(labels) if labels else _sorted_labels(
            e["label"] for _, e in examples["train"])
        index = {n: i for i, n in enumerate(label_names)}
        for rows in examples.values():
            for where, e in rows:
                if e["label"] not in index:
                    raise DataError(f"{where}: label {e['label']!r} is not in the label set "
                                    f"{list(label_names)}")
                e["label"] = index[e["label"]]
        if len(label_names) < 2:
            raise DataError(f"{train}: a classification task needs at least 2 labels, "
                            f"found {list(label_names)}")
    elif type == "tagging":
        label_names = tuple(labels) if labels else tuple(
            bio_labels(entity_types(e["tags"] for _, e in examples["train"])))
        known = set(label_names)
        for rows in examples.values():
            for where, e in rows:
                bad = next((t for t in e["tags"] if t not in known), None)
                if bad is not None:
                    raise DataError(f"{where}: tag {bad!r} is not in the label set")

    splits = {s: [e for _, e in rows] for s, rows in examples.items()}
    if val is None or test is None:
        carved = split_groups(list(enumerate(splits["train"])), lambda p: str(p[0]), seed,
                              val_fraction=0.1 if val is None else 0.0,
                              test_fraction=0.1 if test is None else 0.0)
        for s in ("train", "val", "test"):
            if s not in files or s == "train":
                splits[s] = [e for _, e in carved[s]]

    default, default_main = default_metrics(type, len(label_names))
    metrics = tuple(metrics) if metrics else default
    if not main_metric:
        main_metric = default_main if default_main in metrics or not metrics else metrics[0]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})")
    if main_metric not in metrics and main_metric != "loss":
        raise ConfigError(f"main metric {main_metric!r} is not among the metrics {list(metrics)}")
    task = Task(name, type, None, label_names, metrics, main_metric, f"user data from {train}")
    return task, splits


def _sorted_labels(values) -> tuple[str, ...]:
    distinct = set(values)
    try:
        return tuple(sorted(distinct, key=int))
    except ValueError:
        return tuple(sorted(distinct))


def _qa_example(where: str, row: dict, question_field: str, context_field: str,
                answers_field: str) -> dict:
    question = _text(where, row, question_field)
    context = _text(where, row, context_field)
    answers = _field(where, row, answers_field)
    texts = answers.get("text") if isinstance(answers, dict) else None
    starts = answers.get("answer_start") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not isinstance(starts, list) or not texts \
            or len(texts) != len(starts):
        raise DataError(f"{where}: '{answers_field}' must be "
                        '{"text": [...], "answer_start": [...]} of equal, non-zero length')
    for t, s in zip(texts, starts):
        if not isinstance(s, int) or context[s:s + len(str(t))] != t:
            raise DataError(f"{where}: answer {t!r} is not at character {s} of the context")
    return {"question": question, "context": context, "answers": list(texts),
            "answer_starts": list(starts)}
