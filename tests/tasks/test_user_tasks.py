"""User task files (jsonl / csv) with configurable fields, and the errors bad rows raise."""

import json

import pytest

from lmforge.errors import ConfigError, DataError
from lmforge.tasks.splits import split_groups
from lmforge.tasks.user import from_files


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_groups_rule():
    items = [f"g{i // 3}:{i}" for i in range(30)]  # 10 groups of 3
    out = split_groups(items, lambda s: s.split(":")[0], seed=0)
    assert sorted(sum(out.values(), [])) == sorted(items)
    assert len(out["test"]) == len(out["val"]) == 3 and len(out["train"]) == 24
    groups = {s: {i.split(":")[0] for i in rows} for s, rows in out.items()}
    assert not groups["train"] & groups["test"] and not groups["val"] & groups["test"]
    # order-independent membership; order inside a split follows the input
    rev = split_groups(list(reversed(items)), lambda s: s.split(":")[0], seed=0)
    assert {s: set(r) for s, r in rev.items()} == {s: set(r) for s, r in out.items()}
    assert out["train"] == [i for i in items if i in set(out["train"])]
    assert split_groups(items, lambda s: s.split(":")[0], seed=1) != out


def test_classification_csv_carves_splits(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,stars\n" + "".join(f"text {i},{1 + i % 3}\n" for i in range(50)))
    task, splits = from_files("classification", path, text_field="review", label_field="stars")
    assert task.labels == ("1", "2", "3")  # numeric order
    assert task.metrics == ("accuracy", "macro_f1") and task.main_metric == "accuracy"
    assert [len(splits[s]) for s in ("train", "val", "test")] == [40, 5, 5]
    every = sorted((e for s in splits.values() for e in s), key=lambda e: int(e["text"][5:]))
    assert every[0] == {"text": "text 0", "label": 0} and every[4]["label"] == 1


def test_pair_jsonl_with_val_file(tmp_path):
    rows = [{"a": f"q{i}", "b": f"s{i}", "y": "yes" if i % 2 else "no"} for i in range(20)]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    val = _jsonl(tmp_path / "val.jsonl", rows[:4])
    task, splits = from_files("pair-classification", train, val, text_field="a",
                              text_pair_field="b", label_field="y", labels=["no", "yes"])
    assert task.metrics == ("accuracy", "f1") and task.num_labels == 2
    assert len(splits["val"]) == 4 and len(splits["test"]) == 2 and len(splits["train"]) == 18
    assert splits["val"][1] == {"text": "q1", "text_pair": "s1", "label": 1}


def test_other_types(tmp_path):
    reg = _jsonl(tmp_path / "sts.jsonl", [{"text": "a", "text_pair": "b", "label": "3.5"}] * 10)
    task, splits = from_files("regression", reg)
    assert task.num_labels == 1 and task.main_metric == "pearson"
    assert splits["train"][0] == {"text": "a", "text_pair": "b", "label": 3.5}

    ner = _jsonl(tmp_path / "ner.jsonl",
                 [{"tokens": ["Ann", "ran"], "tags": ["B-person", "O"]}] * 10)
    task, _ = from_files("tagging", ner)
    assert task.labels == ("O", "B-person", "I-person") and task.main_metric == "entity_f1"

    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 10)
    task, splits = from_files("chat", chat)
    assert task.main_metric == "loss" and splits["train"][0]["messages"][1]["role"] == "assistant"

    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": "who?", "context": "Ann ran.",
                                         "answers": {"text": ["Ann"], "answer_start": [0]}}] * 10)
    task, splits = from_files("qa", qa)
    assert task.metrics == ("exact_match", "squad_f1")
    assert splits["train"][0]["answers"] == ["Ann"]

    s2s = _jsonl(tmp_path / "sum.jsonl", [{"doc": "long text", "summary": "short"}] * 10)
    task, splits = from_files("seq2seq", s2s, text_field="doc", target_field="summary",
                              metrics=["rouge2"])
    assert task.main_metric == "rouge2" and splits["train"][0] == {"text": "long text",
                                                                  "target": "short"}


@pytest.mark.parametrize("type_, rows, kwargs, message", [
    ("classification", [{"text": "a"}], {}, r"rows.jsonl:1: no field 'label'"),
    ("classification", [{"text": " ", "label": 1}], {}, r"rows.jsonl:1: empty 'text'"),
    ("classification", [{"text": "a", "label": "x"}, {"text": "b", "label": "z"}],
     {"labels": ["x", "y"]}, r"rows.jsonl:2: label 'z' is not in the label set"),
    ("pair-classification", [{"text": "a", "label": 1}], {}, r":1: no field 'text_pair'"),
    ("regression", [{"text": "a", "label": "high"}], {}, r"label 'high' is not a number"),
    ("chat", [{"messages": [{"role": "user", "content": "hi"}]}], {}, r":1: .*no assistant"),
    ("tagging", [{"tokens": ["a"], "tags": ["O", "O"]}], {}, r"1 tokens but 2 tags"),
    ("qa", [{"question": "q", "context": "abc", "answers": {"text": ["b"],
                                                           "answer_start": [0]}}],
     {}, r"answer 'b' is not at character 0"),
])
def test_bad_rows(tmp_path, type_, rows, kwargs, message):
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=message):
        from_files(type_, path, **kwargs)


def test_bad_files_and_config(tmp_path):
    csv = tmp_path / "ner.csv"
    csv.write_text("tokens,tags\na,O\n")
    with pytest.raises(DataError, match="tagging data must be jsonl"):
        from_files("tagging", csv)
    with pytest.raises(DataError, match="not found"):
        from_files("classification", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        from_files("classification", bad)
    one = _jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": 1}] * 3)
    with pytest.raises(DataError, match="at least 2 labels"):
        from_files("classification", one)
    with pytest.raises(ConfigError, match="unknown task type 'ranking'"):
        from_files("ranking", one)
    with pytest.raises(ConfigError, match="unknown metric 'bleu'"):
        from_files("seq2seq", _jsonl(tmp_path / "s.jsonl", [{"text": "a", "target": "b"}]),
                   metrics=["bleu"])
