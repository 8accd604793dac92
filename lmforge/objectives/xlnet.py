"""Permutation language modeling (XLNet, Yang et al. 2019).

For a sequence x of length T, sample a factorization order z (a permutation of the
positions) and maximize the likelihood of x in that order,

    max  E_z [ sum_{t=c+1}^{T} log p(x_{z_t} | x_{z<t}) ]

-- every token is predicted from the tokens before it *in the order*, which may stand on
either side of it, so the model learns bidirectional context without [MASK] inputs.
Partial prediction: only the last 1/K of each order is predicted (the targets z>c,
T - c = T // K), which keeps the optimization tractable; the non-targets z<=c give the
context. The query stream does the predicting (models/xlnet.py): its query at z_t sees
the content of x_{z<t} and never x_{z_t} itself.

Inputs. A window of `seq_len - 2` tokens becomes XLNet's single-segment layout

    w_0 ... w_{L-1} [SEP] [CLS]       segments 0 ... 0 0 2   ([CLS] its own segment)

and the inputs are left as they are (the original code's convention: the two streams
keep each target's own token out of its prediction; transformers' collator also
writes <mask> at the targets). Special tokens ([SEP], [CLS], <|endoftext|> between
documents) are never targets. The order is drawn per row: a random permutation of the
candidate positions, the last n = len(candidates) // K of it the targets. As in the
original code (and transformers' DataCollatorForPermutationLanguageModeling), the
non-targets all rank first and see each other freely, so

    perm_mask[i, j] = 1  (i may not see j)  iff  j is a target and rank(j) >= rank(i)

with rank(non-target) = -1: no token sees a target later in the order or itself (the
content stream adds itself back), and every token sees every non-target.
target_mapping[k, j] = 1 where the k-th prediction (the k-th target in the order) sits
at j; labels[k] = x_j (IGNORE where a row has fewer targets than the batch's widest).

With model.bi_data the second half of each batch reads its windows reversed (both data
directions, as XLNet's pretraining). Randomness: per-row generators seeded by (seed,
draw, window key), a fresh order every step and a fixed one for evaluation (draw=None).

Loss, a SUM over the N predicted tokens for the trainer (which divides by N):

    loss_sum = - sum_{targets} log softmax(e^T g_{z_t} + b)[x_{z_t}]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Objective
from .clm import IGNORE
from .masking import sequence_keys
from .mlm import as_windows, row_rngs, special_token_ids

CLS_SEGMENT = 2  # XLNet gives [CLS] a segment of its own


def permutation_targets(rng: np.random.Generator, candidates: np.ndarray, T: int, k: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One row's factorization order: (perm_mask (T, T), targets in order (n,)).

    z = a random permutation of `candidates`; the targets are its last n = len // k
    (at least one); rank(target) = its place among them, rank(anything else) = -1."""
    order = rng.permutation(candidates)
    n = max(1, len(order) // k)
    targets = order[len(order) - n:]
    rank = np.full(T, -1, dtype=np.int64)
    rank[targets] = np.arange(n)
    is_target = rank >= 0
    # i may not see j iff j is a target no earlier in the order than i
    perm = is_target[None, :] & (rank[None, :] >= rank[:, None])
    return perm, targets


@dataclass
class PermutationLM(Objective):
    """XLNet's objective; the knob is ObjectiveConfig.partial_k (K)."""

    cls_id: int
    sep_id: int
    special_ids: tuple[int, ...] = ()
    partial_k: int = 6
    bi_data: bool = False
    seed: int = 0
    name = "xlnet"
    perplexity = False  # a loss over 1/K of the tokens, each with a random context

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0) -> PermutationLM:
        if tokenizer is None:
            raise ConfigError("objective 'xlnet' needs the tokenizer (for [SEP] and [CLS])")
        ids = special_token_ids(tokenizer, roles=("cls", "sep"), objective="xlnet")
        k = cfg.partial_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"config key 'objective.partial_k': expected an integer >= 1 "
                              f"(predict the last 1/K of each order), got {k!r}")
        if model_config is not None and model_config.arch != "xlnet":
            raise ConfigError(f"config key 'model': objective 'xlnet' trains an XLNet "
                              f"(arch=xlnet, e.g. preset tiny-xlnet), got arch={model_config.arch}")
        return cls(
            cls_id=ids["cls"], sep_id=ids["sep"],
            special_ids=tuple(sorted(set(tokenizer.special_tokens.values()))),
            partial_k=k, bi_data=bool(model_config and model_config.bi_data), seed=seed,
        )

    # -- inputs ------------------------------------------------------------------------

    def window_len(self, seq_len: int) -> int:
        """Raw tokens per window: seq_len minus [SEP] [CLS]; at least K of them, or the
        last 1/K of an order would be no token at all."""
        text = seq_len - 2
        if text < self.partial_k:
            raise ConfigError(
                f"config key 'train.seq_len': {seq_len} leaves {max(text, 0)} text tokens "
                f"(after [SEP] [CLS]), shorter than the prediction span: objective.partial_k="
                f"{self.partial_k} predicts the last 1/{self.partial_k} of each order, so use "
                f"seq_len >= {self.partial_k + 2}")
        return text

    def corrupt(self, raw, draw: int | None = None) -> dict[str, np.ndarray]:
        """Windows -> numpy input_ids, token_type_ids (B, T), perm_mask (B, T, T),
        target_mapping (B, P, T), labels (B, P)."""
        windows = as_windows(raw)
        B, L = windows.shape
        if self.bi_data:  # the second half reads backwards
            windows = windows.copy()
            windows[B // 2:] = windows[B // 2:, ::-1]
        rngs = row_rngs(self.seed, "dynamic", draw, sequence_keys(windows), stream=self.name)
        T = L + 2
        ids = np.concatenate([windows, np.full((B, 1), self.sep_id), np.full((B, 1), self.cls_id)],
                             axis=1).astype(np.int64)
        types = np.zeros((B, T), dtype=np.int64)
        types[:, -1] = CLS_SEGMENT
        perm = np.zeros((B, T, T), dtype=bool)
        chosen = []
        for b in range(B):
            candidates = np.flatnonzero(~np.isin(ids[b], self.special_ids + (self.cls_id,
                                                                             self.sep_id)))
            if len(candidates) == 0:
                raise ValueError(f"window {b} holds only special tokens: nothing to predict")
            perm[b], targets = permutation_targets(rngs[b], candidates, T, self.partial_k)
            chosen.append(targets)
        P = max(len(t) for t in chosen)
        mapping = np.zeros((B, P, T), dtype=np.float32)
        labels = np.full((B, P), IGNORE, dtype=np.int64)
        for b, targets in enumerate(chosen):
            mapping[b, np.arange(len(targets)), targets] = 1.0
            labels[b, : len(targets)] = ids[b, targets]
        return {"input_ids": ids, "token_type_ids": types, "perm_mask": perm,
                "target_mapping": mapping, "labels": labels}

    def prepare(self, raw, draw: int | None = None) -> dict[str, Tensor]:
        out = {k: torch.from_numpy(v) for k, v in self.corrupt(raw, draw).items()}
        out["perm_mask"] = out["perm_mask"].float()  # transformers' convention: 1.0 = hidden
        return out

    @staticmethod
    def num_targets(batch: dict[str, Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    # -- loss ----------------------------------------------------------------------------

    def _logits(self, model, batch) -> tuple[Tensor, Tensor]:
        """(logits of the real predictions (n, V), their labels (n,)), from the query stream."""
        g, _ = model.encode(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                            perm_mask=batch["perm_mask"],
                            target_mapping=batch["target_mapping"].to(model.mask_emb.dtype))
        real = batch["labels"] != IGNORE
        return model.lm_head(g[real]) + model.lm_bias, batch["labels"][real]

    def loss(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        logits, targets = self._logits(model, batch)
        return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())

    @torch.no_grad()
    def evaluate(self, model, batch: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
        """loss: per predicted token (sum, n); acc: the share predicted exactly."""
        logits, targets = self._logits(model, batch)
        n = int(targets.numel())
        return {"loss": (float(F.cross_entropy(logits.float(), targets, reduction="sum")), n),
                "acc": (float((logits.argmax(-1) == targets).sum()), n)}

    def flops_per_token(self, model, seq_len: int) -> float:
        from ..flops import xlnet_flops_per_token

        return xlnet_flops_per_token(model, seq_len, max(1, (seq_len - 2) // self.partial_k))
