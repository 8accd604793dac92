"""Output heads. For now the one decoders need: the language-model head."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LMHead(nn.Module):
    """logits = h W^T: one score per vocabulary entry at every position.

    Weight tying (lecture, "Language Model Head"): W *is* the token-embedding matrix, so the
    same vectors read tokens in and write them out. `tie(embedding)` shares the parameter;
    call it again after anything that re-creates parameters (e.g. loading on `meta`).
    """

    def __init__(self, d_model: int, vocab_size: int, tied_to: nn.Embedding | None = None):
        super().__init__()
        self.tied = tied_to is not None
        self._weight_t: Tensor | None = None  # (d, V) copy, only inside decoding_layout()
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, d_model))

    def tie(self, embedding: nn.Embedding) -> None:
        self.weight = embedding.weight
        self.tied = True

    @contextlib.contextmanager
    def decoding_layout(self) -> Iterator[None]:
        """Keep a transposed (d, V) copy of W while generating.

        One row at a time, h @ W^T reads all of W for a few flops per weight; on CPU, BLAS
        does that 3-4x faster with W stored (d, V) than (V, d) (see docs/benchmarks.md).
        Costs one extra copy of W for the duration; weights must not change meanwhile.
        """
        self._weight_t = self.weight.detach().t().contiguous()
        try:
            yield
        finally:
            self._weight_t = None

    def forward(self, h: Tensor) -> Tensor:
        if self._weight_t is not None and not torch.is_grad_enabled():
            return h @ self._weight_t  # (B, T, V)
        return F.linear(h, self.weight)  # (B, T, V)
