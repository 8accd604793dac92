"""Fixed train / val / test splits: the same examples in the same split on every machine.

A split is drawn over *groups* of examples, not single examples, so that near-copies
never straddle two splits (all snippets of one movie, all conversations that open with
the same question, all packages built from one source). The rule:

    order the groups by sha256(f"{seed}:{group}")           (a seeded shuffle)
    walk that order: fill test until it holds >= round(test_fraction * n) examples,
                     then val until >= round(val_fraction * n), the rest is train

A hash instead of a random generator keeps the order independent of library versions
and of the order the groups were read in. Inside a split, examples keep the order of
the source file. With one example per group the sizes are exact; with larger groups a
split may overshoot its target by less than one group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

SPLITS = ("train", "val", "test")


def hash_order(keys, seed: int, salt: str = "") -> list:
    """`keys` sorted by sha256 of f"{seed}:{salt}{key}": a seeded, portable shuffle."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{salt}{k}".encode()).digest())


def split_groups(
    items: Sequence[T],
    group: Callable[[T], str],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> dict[str, list[T]]:
    """{"train", "val", "test"} lists of `items`, split by `group(item)` as described above."""
    sizes: dict[str, int] = {}
    for item in items:
        g = group(item)
        sizes[g] = sizes.get(g, 0) + 1
    n = len(items)
    targets = {"test": round(test_fraction * n), "val": round(val_fraction * n)}
    where: dict[str, str] = {}
    filled = {"test": 0, "val": 0}
    for g in hash_order(sizes, seed):
        split = next((s for s in ("test", "val") if filled[s] < targets[s]), "train")
        where[g] = split
        if split != "train":
            filled[split] += sizes[g]
    out: dict[str, list[T]] = {s: [] for s in SPLITS}
    for item in items:
        out[where[group(item)]].append(item)
    return out
