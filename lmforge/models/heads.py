"""Output heads: the LM head (decoders) and the encoder heads (MLM, NSP/SOP, RTD)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LayerNorm


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


# ----------------------------------------------------------------------------------------
# Encoder heads (BERT, RoBERTa, ELECTRA, ALBERT)


class MLMHead(nn.Module):
    """Masked-LM head: logits = LN(act(h W_t + b_t)) E^T + b.

    The transform (dense + activation + LayerNorm) maps d_model to the embedding size E;
    the decoder E^T is the input embedding matrix (tied) with its own output bias.
    """

    def __init__(
        self,
        d_model: int,
        embed_size: int,
        vocab_size: int,
        tied_to: nn.Embedding | None,
        activation: Callable[[Tensor], Tensor],
        eps: float,
    ):
        super().__init__()
        self.dense = nn.Linear(d_model, embed_size)
        self.act = activation
        self.norm = LayerNorm(embed_size, eps)
        self.decoder = LMHead(embed_size, vocab_size, tied_to)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(h)))) + self.bias  # (B, T, V)


class RTDHead(nn.Module):
    """ELECTRA's replaced-token detection: one logit per position, > 0 means "replaced".

    logit_t = act(h_t W1 + b1) w2 + b2.
    """

    def __init__(self, d_model: int, activation: Callable[[Tensor], Tensor]):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = activation
        self.out = nn.Linear(d_model, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.act(self.dense(h))).squeeze(-1)  # (B, T)


class Pooler(nn.Module):
    """pooled = tanh(h_[CLS] W + b): the sentence vector NSP / SOP / classifiers read."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, d)


def pair_head(d_model: int) -> nn.Linear:
    """NSP (is B the real next segment?) or SOP (are A, B in order?): 2 logits on the pooled
    vector. Both are a single linear layer; only the training labels differ."""
    return nn.Linear(d_model, 2)
