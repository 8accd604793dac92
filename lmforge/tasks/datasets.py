"""Fine-tuning task sets: built-in ones with fixed splits, declared like GLUE's tasks.

A task declares what a trainer and an evaluator need to know, as GLUE does for each of
its tasks: its type, its label names, the metrics it reports and the one to early-stop
on. `load_task(name, seed)` returns {"train", "val", "test"} lists of plain dicts whose
fields depend on the type:

    classification        {"text", "label": int}                  label indexes `labels`
    pair-classification   {"text", "text_pair", "label": int}
    regression            {"text", ["text_pair"], "label": float}
    tagging               {"tokens": [str], "tags": [str]}        tags are names in `labels`
    seq2seq               {"text", "target"}
    chat                  {"messages": [{"role", "content"}]}     see tasks/chat.py
    qa                    {"question", "context", "answers": [str], "answer_starts": [int]}

Built-in sets (sizes for seed 0; splits by `splits.split_groups`, ~80 / 10 / 10):

    rotten-tomatoes    classification  10,167 / 1,304 / 1,281   split by movie
    wnut16             tagging          1,916 /   239 /   239   split by tweet
    debian-summaries   seq2seq          3,200 /   400 /   400   split by source stem
    debian-match       pair-class.      3,200 /   400 /   400   the same split
    chatterbot         chat               718 /    90 /    90   split by opening turn
    wiki-qa            qa                     233 /    34 /    39   split by article

Extra fields (movie, package, category, ...) ride along for analysis; a trainer reads
only the ones above. User files become tasks through `tasks.user.from_files`.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError, DataError
from . import debian, wikiqa
from .splits import split_groups
from .tagging import bio_labels

TASK_TYPES = ("classification", "pair-classification", "regression", "tagging", "seq2seq",
              "chat", "qa")

Splits = dict[str, list[dict]]


@dataclass(frozen=True)
class Task:
    """A task declaration: type, label names, metrics, the metric to select models on."""

    name: str
    type: str
    loader: Callable[[int], Splits] | None = field(repr=False, compare=False, default=None)
    labels: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    main_metric: str = ""
    what: str = ""

    def __post_init__(self):
        if self.type not in TASK_TYPES:
            raise ConfigError(f"task '{self.name}': unknown type {self.type!r} "
                              f"(known: {', '.join(TASK_TYPES)})")

    @property
    def num_labels(self) -> int:
        """Outputs of the head: classes, tags, or 1 for regression."""
        return 1 if self.type == "regression" else len(self.labels)

    def load(self, seed: int = 0) -> Splits:
        if self.loader is None:
            raise ConfigError(f"task '{self.name}' has no built-in data: give its files")
        return self.loader(seed)


def default_metrics(task_type: str, num_labels: int = 2) -> tuple[tuple[str, ...], str]:
    """(metrics, main metric) for a task type, as GLUE / CoNLL / summarization report."""
    if task_type in ("classification", "pair-classification"):
        return (("accuracy", "f1"), "accuracy") if num_labels == 2 else \
               (("accuracy", "macro_f1"), "accuracy")
    return {
        "regression": (("pearson", "spearman"), "pearson"),
        "tagging": (("entity_precision", "entity_recall", "entity_f1"), "entity_f1"),
        "seq2seq": (("rouge1", "rouge2", "rougeL"), "rougeL"),
        "chat": ((), "loss"),  # eval loss on assistant tokens; lower is better
        "qa": (("exact_match", "squad_f1"), "squad_f1"),
    }[task_type]


# -- rotten-tomatoes --------------------------------------------------------------------

SENTIMENT_LABELS = ("negative", "positive")  # as SST-2: 0 = negative, 1 = positive
_CATEGORY = {"rotten": 0, "fresh": 1}


def rotten_tomatoes(seed: int = 0) -> Splits:
    """Critic snippets, fresh -> positive, rotten -> negative; plot summaries dropped.

    The file holds 12,808 snippets of 508 movies; 56 rows repeat an earlier snippet word
    for word (some under a second title of the same film), and are dropped: 12,752 left.
    Movies that share a snippet form one group, and the split is by group, so no movie
    (under any title) is in two splits.
    """
    from ..data import registry

    path = registry.files("rotten-tomatoes")[0]
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    parent: dict[str, str] = {}

    def find(m: str) -> str:
        while parent.setdefault(m, m) != m:
            m = parent[m]
        return m

    examples, first_movie = [], {}
    for lineno, r in enumerate(rows, 2):
        if r["category"] == "plot":
            continue
        if r["category"] not in _CATEGORY:
            raise DataError(f"{path}:{lineno}: unknown category {r['category']!r}")
        text, movie = r["text"].strip(), r["movie_name"]
        if text in first_movie:  # a repeated snippet: same film, maybe another title
            parent[find(movie)] = find(first_movie[text])
            continue
        first_movie[text] = movie
        examples.append({"text": text, "label": _CATEGORY[r["category"]], "movie": movie})
    return split_groups(examples, lambda e: find(e["movie"]), seed)


# -- wnut16 ------------------------------------------------------------------------------

WNUT16_TYPES = ("company", "facility", "geo-loc", "movie", "musicartist", "other", "person",
                "product", "sportsteam", "tvshow")
WNUT16_LABELS = tuple(bio_labels(WNUT16_TYPES))


def read_conll(path, labels: tuple[str, ...]) -> list[dict]:
    """Sentences of a `token TAB tag` file (blank lines between sentences)."""
    known = set(labels)
    sentences, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags})
                    tokens, tags = [], []
                continue
            token, sep, tag = line.rpartition("\t")
            if not sep or not token.strip():
                raise DataError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
            if tag not in known:
                raise DataError(f"{path}:{lineno}: tag {tag!r} is not in the label set")
            tokens.append(token)
            tags.append(tag)
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def wnut16(seed: int = 0) -> Splits:
    """WNUT16 tweets: 2,394 sentences, 10 entity types in BIO; split by tweet."""
    from ..data import registry

    sentences = read_conll(registry.files("wnut16")[0], WNUT16_LABELS)
    for i, s in enumerate(sentences):
        s["id"] = i
    return split_groups(sentences, lambda s: str(s["id"]), seed)


# -- chatterbot --------------------------------------------------------------------------

def chatterbot(seed: int = 0) -> Splits:
    """ChatterBot's English corpus: each conversation alternates user / assistant turns.

    21 files hold 2,026 entries; one (in trivia.yml) is a single string rather than a
    list of turns (a YAML indentation slip) and is skipped, and 1,127 repeat an earlier
    conversation word for word (tech_support.yml alone repeats ten exchanges ~100 times
    each) and are dropped: 898 distinct conversations, 819 of them one exchange. A
    conversation may end on a user turn, which the chat template masks like any other.
    Conversations opening with the same words (lowercased) are one group, so a question
    answered several ways is never in two splits.
    """
    import yaml

    from ..data import registry

    examples, seen = [], set()
    for path in registry.files("chatterbot"):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for conv in doc.get("conversations") or []:
            if not isinstance(conv, list) or len(conv) < 2 or not all(
                    isinstance(t, str) and t.strip() for t in conv):
                continue
            turns = tuple(t.strip() for t in conv)
            if turns in seen:
                continue
            seen.add(turns)
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                        for i, t in enumerate(turns)]
            examples.append({"messages": messages, "category": path.stem})
    return split_groups(
        examples, lambda e: " ".join(e["messages"][0]["content"].lower().split()), seed)


# -- the registry --------------------------------------------------------------------------

def _task(name, type, loader, labels=(), what="", metrics=None, main=None) -> Task:
    default, default_main = default_metrics(type, len(labels))
    return Task(name, type, loader, tuple(labels), tuple(metrics or default),
                main or default_main, what)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        _task("rotten-tomatoes", "classification", rotten_tomatoes, SENTIMENT_LABELS,
              "sentiment of critic snippets (SST-2-like)"),
        _task("wnut16", "tagging", wnut16, WNUT16_LABELS,
              "named entities in tweets, 10 types (BIO)"),
        _task("debian-summaries", "seq2seq", debian.summaries, (),
              "package description -> one-line synopsis"),
        _task("debian-match", "pair-classification", debian.match, ("mismatch", "match"),
              "does this synopsis belong to this description? (QNLI/MRPC-like)"),
        # generated replies scored with ROUGE-L; models selected on the assistant-token loss
        _task("chatterbot", "chat", chatterbot, (), "multi-turn chat tuning",
              metrics=("rougeL",), main="loss"),
        _task("wiki-qa", "qa", wikiqa.wiki_qa, (),
              "extractive QA: templated questions over Wikipedia sentences (SQuAD-like)"),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(TASKS)}; "
                          "or give data files for your own)")
    return TASKS[name]


def load_task(name: str, seed: int = 0) -> Splits:
    """{"train", "val", "test"} examples of the built-in task `name`."""
    return get_task(name).load(seed)
