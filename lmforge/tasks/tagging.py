"""Token tagging (NER): word-level BIO tags aligned to subword tokens, and back.

Data sets tag *words*; the model sees byte-level BPE *tokens*, and one word may become
several. The alignment, as in BERT's NER recipe and HF's `word_ids()`:

    words    Empire        State   Building
    tags     B-facility    I-fac.  I-fac.
    tokens   Emp  ire      ĠState  ĠBuild  ing
    labels   B-f  IGNORE   I-f     I-f     IGNORE     (ids; IGNORE = -100)
    word_ids 0    0        1       2       2

- Each word after the first is encoded with a leading space, the first without, so the
  ids equal `tokenizer.encode(" ".join(words))` -- the way the text would read -- and
  the pieces match those a GPT-2 / RoBERTa byte-level tokenizer gives with
  `is_split_into_words=True` (there with `add_prefix_space`, which also spaces word 0).
- The first subword of a word carries the word's label; the others carry IGNORE, so
  each word counts once in the loss whatever its length in tokens.
- Special tokens around the words (`prefix_ids`, e.g. [CLS] or BOS; `suffix_ids`, e.g.
  [SEP]) carry IGNORE and word id None.

At evaluation the model's per-token predictions go back to words with
`word_predictions`: each word takes the prediction at its first subword, then seqeval
scores the word-level tags (`metrics.entity_f1`). Words cut off by `max_len` are
predicted "O" (they still count in the score: truncation costs recall, visibly).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import DataError
from ..objectives.clm import IGNORE


def bio_labels(entity_types: Iterable[str]) -> list[str]:
    """The fixed label list: "O", then B-/I- for each entity type in sorted order."""
    labels = ["O"]
    for t in sorted(set(entity_types)):
        labels += [f"B-{t}", f"I-{t}"]
    return labels


def entity_types(tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """The entity types named by BIO tags such as "B-person" (sorted)."""
    types = set()
    for tags in tag_lists:
        for tag in tags:
            if tag != "O":
                if tag[:2] not in ("B-", "I-") or len(tag) < 3:
                    raise DataError(f"tag {tag!r} is neither 'O' nor 'B-type' / 'I-type'")
                types.add(tag[2:])
    return sorted(types)


def align(
    words: Sequence[str],
    tags: Sequence[str] | None,
    tokenizer,
    labels: Sequence[str],
    *,
    prefix_ids: Sequence[int] = (),
    suffix_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> dict[str, list]:
    """{"input_ids", "labels", "word_ids"} for one sentence (see the module docstring).

    `labels` is the task's label list (tag name -> its index); `tags` may be None at
    inference, giving IGNORE everywhere. With `max_len`, tokens past
    `max_len - len(suffix_ids)` are cut before the suffix is added.
    """
    if tags is not None and len(tags) != len(words):
        raise DataError(f"{len(words)} words but {len(tags)} tags")
    label_id = {name: i for i, name in enumerate(labels)}
    input_ids = list(prefix_ids)
    targets = [IGNORE] * len(prefix_ids)
    word_ids: list[int | None] = [None] * len(prefix_ids)
    for i, word in enumerate(words):
        if not word:
            raise DataError(f"word {i} is empty")
        pieces = tokenizer.encode_ordinary(word if i == 0 else " " + word)
        if tags is None:
            first = IGNORE
        elif tags[i] in label_id:
            first = label_id[tags[i]]
        else:
            raise DataError(f"tag {tags[i]!r} of word {i} is not in the label set")
        input_ids += pieces
        targets += [first] + [IGNORE] * (len(pieces) - 1)
        word_ids += [i] * len(pieces)
    if max_len is not None:
        keep = max_len - len(suffix_ids)
        input_ids, targets, word_ids = input_ids[:keep], targets[:keep], word_ids[:keep]
    input_ids += suffix_ids
    targets += [IGNORE] * len(suffix_ids)
    word_ids += [None] * len(suffix_ids)
    return {"input_ids": input_ids, "labels": targets, "word_ids": word_ids}


def word_predictions(
    token_predictions: Iterable[int],
    word_ids: Sequence[int | None],
    labels: Sequence[str],
    num_words: int,
    fill: str = "O",
) -> list[str]:
    """Word-level tag names from per-token label ids: each word's first subword decides;
    words with no token left (truncated) get `fill`."""
    out = [fill] * num_words
    seen: set[int] = set()
    for pred, w in zip(token_predictions, word_ids):
        if w is None or w in seen:
            continue
        seen.add(w)
        out[w] = labels[int(pred)]
    return out
