"""Prompt templates for the generative modes: task fields -> token ids that fit a budget.

A template is text with `{field}` slots filled from a row: "Review: {text}\\nSentiment:".
`render_ids` encodes it with the row's fields and, when the result is longer than the
budget, cuts tokens from the end of the longest field first (HF's "longest_first"), so
the template's own words always survive:

    render_ids("Review: {text}\\nSentiment:", {"text": "A fine film."}, tok, budget=16)

Literal pieces and field values are encoded separately (so a field can be cut by
tokens), and a space that ends a literal piece travels with the field that follows:
"Review:" + " A fine film." -- the same tokens as encoding the whole rendered string with
a GPT-2-style pre-tokenizer, where a word owns the space before it. Everything is encoded
as ordinary text: a row that contains "<|endoftext|>" cannot forge a special token.

`match_label` maps generated text back to a label (exact match after stripping spaces,
as T5's evaluation does); text that matches no label is *invalid* and scored as a wrong
answer (`wrong_label`, T5's `f1_score_with_invalid`: the label that is not the gold one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ConfigError, DataError

FIELD = re.compile(r"\{(\w+)\}")


def template_fields(template: str) -> list[str]:
    """The `{field}` names a template uses, in order."""
    return FIELD.findall(template)


def render_ids(template: str, fields: Mapping[str, str], tokenizer,
               budget: int | None = None) -> list[int]:
    """Token ids of `template` filled from `fields`, cut to at most `budget` tokens."""
    pieces = FIELD.split(template)  # literal, name, literal, name, ..., literal
    parts: list[list[int]] = []
    is_field: list[bool] = []
    carry = ""
    for i, piece in enumerate(pieces):
        if i % 2 == 0:  # a literal; its trailing space goes with the next field
            if i + 1 < len(pieces) and piece.endswith(" "):
                piece, carry = piece[:-1], " "
            else:
                carry = ""
            parts.append(tokenizer.encode_ordinary(piece) if piece else [])
            is_field.append(False)
        else:
            if piece not in fields:
                raise ConfigError(f"template {template!r}: no field {{{piece}}} in this task's "
                                  f"rows (fields: {', '.join(sorted(fields))})")
            parts.append(tokenizer.encode_ordinary(carry + str(fields[piece])))
            is_field.append(True)
    if budget is not None:
        fixed = sum(len(p) for p, f in zip(parts, is_field) if not f)
        if fixed >= budget:
            raise ConfigError(f"template {template!r} alone takes {fixed} tokens; "
                              f"max_len leaves {budget} for the prompt")
        excess = sum(len(p) for p in parts) - budget
        while excess > 0:  # longest field first, one token at a time
            longest = max((i for i, f in enumerate(is_field) if f), key=lambda i: len(parts[i]))
            parts[longest].pop()
            excess -= 1
    return [t for p in parts for t in p]


def check_template(template: str, task_fields: tuple[str, ...]) -> None:
    """ConfigError unless every slot of `template` is one of `task_fields`."""
    names = template_fields(template)
    if not names:
        raise ConfigError(f"template {template!r} has no field slot such as {{text}}")
    bad = [n for n in names if n not in task_fields]
    if bad:
        raise ConfigError(f"template {template!r}: unknown field {{{bad[0]}}} "
                          f"(this task's rows have: {', '.join(task_fields)})")


def row_fields(row: dict, task_type: str) -> dict[str, str]:
    """The text fields a template may use: text (+ text_pair)."""
    out = {"text": row["text"]}
    if "text_pair" in row:
        out["text_pair"] = row["text_pair"]
    return out


def task_fields(task_type: str) -> tuple[str, ...]:
    return ("text", "text_pair") if task_type == "pair-classification" else ("text",)


def check_rows(rows: list[dict], where: str, task) -> None:
    """DataError naming `where` and the row: no rows, an empty text field (and target, for
    seq2seq tasks), or a label outside the task's labels (classification)."""
    if not rows:
        raise DataError(f"{where}: no examples")
    classes = task.type != "seq2seq"
    fields = task_fields(task.type) + (() if classes else ("target",))
    for i, r in enumerate(rows):
        for f in fields:
            if not isinstance(r.get(f), str) or not r[f].strip():
                raise DataError(f"{where}, row {i}: empty {f!r}")
        if classes:
            label_index(r, task.labels, f"{where}, row {i}")


def label_words(labels: tuple[str, ...], given: Mapping[str, str] | None,
                default: Mapping[str, str]) -> list[str]:
    """The word of each label, in label order; ConfigError names a label with no word."""
    words = dict(given) if given is not None else dict(default)
    unknown = [k for k in words if k not in labels]
    if unknown:
        raise ConfigError(f"label_words: {unknown[0]!r} is not a label of this task "
                          f"(labels: {', '.join(labels)})")
    missing = [label for label in labels if label not in words]
    if missing:
        raise ConfigError(f"label_words: label {missing[0]!r} has no word "
                          f"(the mapping covers: {', '.join(words) or 'nothing'})")
    out = [words[label] for label in labels]
    if any(not isinstance(w, str) or not w.strip() for w in out):
        raise ConfigError("label_words: every word must be a non-empty string")
    if len({w.strip() for w in out}) < len(out):
        raise ConfigError(f"label_words: two labels share a word ({out})")
    return out


def label_index(row: dict, labels: tuple[str, ...], where: str) -> int:
    """The row's label as an index into `labels` (an int index, or a label name)."""
    label = row.get("label")
    if isinstance(label, str) and label in labels:
        return labels.index(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
        return label
    raise DataError(f"{where}: label {label!r} is not in the verbalizer's mapping "
                    f"(labels: {', '.join(labels)})")


def match_label(text: str, words: list[str]) -> int | None:
    """Index of the label word `text` spells (spaces stripped), or None (invalid)."""
    text = text.strip()
    for i, w in enumerate(words):
        if text == w.strip():
            return i
    return None


def labels_of_texts(texts: list[str], rows: list[dict], words: list[str],
                    labels: tuple[str, ...]) -> tuple[list[int], int]:
    """(the label index each generated text spells, how many spelled none): an invalid
    text is scored as a wrong label, whatever it says."""
    preds, invalid = [], 0
    for r, text in zip(rows, texts):
        k = match_label(text, words)
        if k is None:
            invalid += 1
            k = wrong_label(label_index(r, labels, "row"), len(words))
        preds.append(k)
    return preds, invalid


def wrong_label(gold: int, num_labels: int) -> int:
    """A label that is not `gold`: where an invalid generation is scored (1 - gold for
    binary tasks, as T5's f1_score_with_invalid)."""
    return (gold + 1) % num_labels
