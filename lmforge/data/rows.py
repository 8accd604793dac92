"""Deterministic, resumable batches of task rows (fine-tuning's sampler).

Each epoch visits the rows in a fresh order drawn from (seed, epoch), in batches of
`batch_size` rows per process. On W processes a step's global batch is the next
batch_size x W rows of the epoch's order, and rank r takes its share of it, so the ranks'
batches together are exactly the batch one process with the global batch size draws.
The last global batch of an epoch may be short (it is split evenly; one with fewer rows
than ranks is dropped). The whole state is (epoch, position): a resumed run sees exactly
the batches an uninterrupted one would have.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError


class RowSampler:
    """Shuffled batches (lists) of `rows`, epoch after epoch."""

    def __init__(self, rows: list, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        if batch_size < 1:
            raise DataError("batch_size must be positive")
        self.rows, self.batch_size = list(rows), batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.global_batch = batch_size * world_size
        n = len(self.rows)
        full, short = divmod(n, self.global_batch)
        self.batches_per_epoch = full + (short >= world_size)
        if self.batches_per_epoch == 0:
            raise DataError(f"too little data: {n} rows are fewer than one row per process "
                            f"({world_size} processes)")
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        n = len(self.rows)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def next_batch(self) -> list:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order()
        G = self.global_batch
        step = self._order[self.position * G:(self.position + 1) * G]
        m, W, r = len(step), self.world_size, self.rank
        self.position += 1
        return [self.rows[i] for i in step[r * m // W:(r + 1) * m // W]]

    def steps_per_epoch(self, grad_accum: int = 1) -> int:
        """Optimizer steps per epoch when each step takes `grad_accum` batches."""
        return math.ceil(self.batches_per_epoch / grad_accum)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise DataError(f"sampler state has seed {state['seed']}, this run {self.seed}")
        if state.get("global_batch", self.global_batch) != self.global_batch:
            raise DataError(
                f"the checkpoint's global batch is {state['global_batch']} rows, this run's "
                f"{self.global_batch} (batch_size x processes): resume with the same global "
                "batch")
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
