"""Output heads: the LM head (decoders) and the encoder heads (MLM, NSP/SOP, RTD)."""

from __future__ import annotations

import contextlib
import dataclasses
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
    `softcap` c: logits = c tanh(h W^T / c), within (-c, c) (Gemma 2's soft-capping).
    """

    def __init__(self, d_model: int, vocab_size: int, tied_to: nn.Embedding | None = None,
                 softcap: float | None = None):
        super().__init__()
        self.tied = tied_to is not None
        self.softcap = softcap
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
            logits = h @ self._weight_t  # (B, T, V)
        else:
            logits = F.linear(h, self.weight)  # (B, T, V)
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


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


# ----------------------------------------------------------------------------------------
# Fine-tuning heads (lecture: "Fine-tuning"): one small layer on top of a pretrained body.
#
#   sequence classification   pooled vector -> num_labels logits (1 = regression, MSE)
#   token classification      every position -> num_labels logits (NER)
#   span QA                   every position -> start and end logits (SQuAD)
#
# Which vector a sequence head reads depends on the body (`TaskModel.pooling`):
#   encoder with a pooler   tanh(W h_[CLS] + b)              BERT, ALBERT
#   encoder without one     h_[CLS] (the head adds dense+tanh) RoBERTa, ELECTRA
#   decoder                 h at the last non-pad token      GPT-2 / Llama: the only
#                                                            position that saw every token
#   encoder-decoder         decoder h at the last EOS         BART: the same input fed to
#                                                            encoder and (shifted) decoder


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B,) index of the last real token in each row, for left or right padding.

    argmax_t (t * mask_t): the largest position whose mask is 1.
    """
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def last_match_index(input_ids: Tensor, token_id: int,
                     attention_mask: Tensor | None = None) -> Tensor:
    """(B,) index of the last `token_id` among the real tokens of each row (ValueError if
    a row has none; padding may use the same id)."""
    hit = input_ids == token_id
    if attention_mask is not None:
        hit = hit & attention_mask.bool()
    if not bool(hit.any(-1).all()):
        row = int((~hit.any(-1)).nonzero()[0])
        raise ValueError(f"row {row} has no token {token_id} (EOS) to pool")
    return last_token_index(hit)


def gather_positions(h: Tensor, index: Tensor) -> Tensor:
    """h (B, T, d), index (B,) -> (B, d): h[b, index[b]]."""
    return h[torch.arange(h.shape[0], device=h.device), index]


class ClassificationHead(nn.Module):
    """Sequence classification / regression on one pooled vector x (B, d).

    dense=False:  logits = W drop(x) + b                    (BERT: x is the pooler output)
    dense=True:   logits = W2 drop(tanh(W1 drop(x) + b1)) + b2   (RoBERTa, BART)
    `activation` replaces tanh (DeBERTa's ContextPooler: the body's GELU).
    num_labels=1 makes it a regression head (one score, trained with MSE).
    """

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.1, dense: bool = False,
                 activation: Callable[[Tensor], Tensor] = torch.tanh):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.dense = nn.Linear(d_model, d_model) if dense else None
        self.act = activation
        self.out = nn.Linear(d_model, num_labels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(x)
        if self.dense is not None:
            x = self.drop(self.act(self.dense(x)))
        return self.out(x)  # (B, num_labels)


class TokenClassificationHead(nn.Module):
    """logits_t = W drop(h_t) + b at every position (B, T, num_labels): NER tags."""

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, num_labels)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.drop(h))


class SpanHead(nn.Module):
    """Extractive QA (BERT on SQuAD): [start_t, end_t] = W h_t + b, two logits per position.

    The answer is the span (i, j), i <= j, maximizing start_i + end_j.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.out = nn.Linear(d_model, 2)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.out(h).unbind(-1)
        return start, end  # (B, T) each


class TaskModel(nn.Module):
    """A pretrained body plus a task head; the body's parameters keep their names under
    "backbone." (a fine-tuned checkpoint holds backbone.* and head.*).

    pooling: "pooler" | "first" | "last" | "eos" (sequence heads), "tokens" (per-position
    heads: tagging, span QA).
    forward(input_ids, attention_mask=None, token_type_ids=None) returns the head's output:
    (B, num_labels) logits, (B, T, num_labels) logits, or (start, end) logits.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pooling: str,
                 eos_token_id: int | None = None):
        super().__init__()
        if pooling not in ("pooler", "first", "last", "eos", "tokens"):
            raise ValueError(f"unknown pooling {pooling!r}")
        if pooling == "eos" and eos_token_id is None:
            raise ValueError("pooling='eos' needs eos_token_id")
        self.backbone = backbone
        self.head = head
        self.pooling = pooling
        self.eos_token_id = eos_token_id
        self.config = backbone.config

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute the body's block activations in backward (the head is too small)."""
        if hasattr(self.backbone, "set_activation_checkpointing"):
            self.backbone.set_activation_checkpointing(enabled)
        elif self.config.arch == "seq2seq":  # Seq2Seq reads the flag from its config
            self.backbone.config = dataclasses.replace(self.backbone.config,
                                                       gradient_checkpointing=enabled)
            self.config = self.backbone.config
        else:
            self.backbone.gradient_checkpointing = enabled

    def hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(last hidden states (B, T, d), pooler output or None) of the body."""
        arch = self.config.arch
        if arch == "encoder":
            out = self.backbone(input_ids, attention_mask, token_type_ids)
            if self.pooling == "first" and out.virtual_hidden_state is not None:
                return out.virtual_hidden_state, None  # prompt tuning: the first virtual token
            return out.last_hidden_state, out.pooler_output
        if arch == "xlnet":  # the content stream; the LM head is not used
            return self.backbone.encode(input_ids, attention_mask, token_type_ids)[0], None
        if arch == "decoder":  # logits of one position only: the LM head is not used
            out = self.backbone(input_ids, attention_mask, logits_to_keep=1)
            return out.last_hidden_state, None
        # seq2seq: the input is also the decoder's, shifted right (as BART / HF do); the
        # decoder output at position t has read the input up to token t
        memory = self.backbone.encode(input_ids, attention_mask).last_hidden_state
        h = self.backbone.decode(self.backbone.shift_right(input_ids), memory, attention_mask)
        return h, None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None):
        h, pooled = self.hidden(input_ids, attention_mask, token_type_ids)
        if self.pooling == "tokens":
            return self.head(h)
        if self.pooling == "pooler":
            x = pooled
        elif self.pooling == "first":
            x = h[:, 0]
        elif self.pooling == "last":
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            x = gather_positions(h, last_token_index(mask))
        else:  # eos
            x = gather_positions(h, last_match_index(input_ids, self.eos_token_id,
                                                     attention_mask))
        return self.head(x)
