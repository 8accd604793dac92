"""Deterministic, resumable batches of token windows.

The token stream (one or more shard arrays) is cut into non-overlapping windows of
`seq_len + 1` tokens, stepping by `seq_len` so every token is a target exactly once per
epoch. Each epoch visits the windows in a fresh order drawn from (seed, epoch). The
whole state is two integers, (epoch, position), so a resumed run sees exactly the
batches an uninterrupted one would have.

Several processes (ranks) share one order. Step `position`'s global batch is the next
G = batch_size x world_size windows of the epoch's order, and rank r takes its r-th
slice of B = batch_size:

    global batch   order[position * G : (position + 1) * G]
    rank r         order[position * G + r * B : position * G + (r + 1) * B]

so the union of the ranks' batches at a step is exactly the batch one process with
batch_size G draws, and a multi-process run is comparable number for number with a
single-process one. `position` counts global batches, so the state is the same on every
rank and a run resumes on another world size as long as G is unchanged (another G would
put the step's windows elsewhere: refused).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import DataError


def _windows(arrays: Sequence[np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(array index, start offset) of every full window, in stream order."""
    which, starts = [], []
    for i, a in enumerate(arrays):
        n = max(0, (len(a) - 1) // seq_len)  # windows [s, s + seq_len] with s = k * seq_len
        which.append(np.full(n, i, dtype=np.int64))
        starts.append(np.arange(n, dtype=np.int64) * seq_len)
    if not which:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(which), np.concatenate(starts)


def _gather(arrays, which, starts, seq_len) -> np.ndarray:
    out = np.empty((len(which), seq_len + 1), dtype=np.int64)
    for row, (i, s) in enumerate(zip(which, starts)):
        out[row] = arrays[i][s : s + seq_len + 1]
    return out


class ChunkSampler:
    """Shuffled batches (B, seq_len + 1) of windows; inputs = [:, :-1], targets = [:, 1:].

    With `world_size > 1` rank `rank` takes its slice of each global batch (module
    docstring); ranks never see the same window in an epoch.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if seq_len < 1 or batch_size < 1:
            raise DataError("seq_len and batch_size must be positive")
        self.arrays = list(arrays)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self._which, self._starts = _windows(self.arrays, seq_len)
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0 .. world_size - 1 = {world_size - 1}")
        self.global_batch = batch_size * world_size  # G windows per step, all ranks together
        self.batches_per_epoch = len(self._which) // self.global_batch
        if self.batches_per_epoch == 0:
            tokens = sum(len(a) for a in self.arrays)
            raise DataError(
                f"too little data: {tokens} tokens make {len(self._which)} windows of "
                f"{seq_len + 1}, fewer than one batch of {batch_size} per rank "
                f"({world_size} ranks); lower batch_size or seq_len, or add text"
            )
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        n = len(self._which)
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return np.arange(n)

    def next_batch(self) -> np.ndarray:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order()
        # this rank's slice of the step's global batch order[position*G : (position+1)*G]
        lo = self.position * self.global_batch + self.rank * self.batch_size
        idx = self._order[lo : lo + self.batch_size]
        self.position += 1
        return _gather(self.arrays, self._which[idx], self._starts[idx], self.seq_len)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """The same on every rank: position counts global batches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "world_size": self.world_size, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        """Resume at (epoch, position). A state saved with another world size resumes
        exactly when the global batch G is the same (position counts global batches);
        another G is refused. A state without `global_batch` (saved before multi-process
        training) is taken as it is, as before."""
        if state.get("seed", self.seed) != self.seed:
            raise DataError(f"sampler state has seed {state['seed']}, this run {self.seed}")
        g = state.get("global_batch", self.global_batch)
        if g != self.global_batch:
            w = state.get("world_size", 1)
            raise DataError(
                f"sampler state is from a global batch of {g} windows ({g // w} x {w} "
                f"processes), this run's is {self.global_batch} ({self.batch_size} x "
                f"{self.world_size}): resume with batch_size x world_size = {g}")
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


def eval_batches(
    arrays: Sequence[np.ndarray], seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[np.ndarray]:
    """The first windows of the stream, in order, as batches: the same every call."""
    which, starts = _windows(arrays, seq_len)
    n = len(which)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        yield _gather(arrays, which[lo:hi], starts[lo:hi], seq_len)
