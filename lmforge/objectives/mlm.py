"""Masked language modeling (BERT, RoBERTa, ALBERT), with next-sentence (NSP) or
sentence-order (SOP) prediction on top.

The lecture's MLM loss: choose ~15% of the tokens, corrupt them (80% [MASK], 10% a random
token, 10% unchanged) and predict the originals from both sides,

    L_MLM = -1/n * sum_{i chosen} log p(x_i | x_corrupted)

Raw windows come from the packed token stream (documents joined by the end-of-text
token, which stays in the input as a special token and is never chosen). A window of
`seq_len - 2` tokens becomes

    [CLS] w_0 ... w_{L-1} [SEP]                         pair: none  (RoBERTa)

and with a sentence pair (a window of `seq_len - 3` tokens, cut in two at a sentence end)

    [CLS] A [SEP] B [SEP]      token types 0 for [CLS] A [SEP], 1 for B [SEP]
    nsp (BERT):   B is the rest of the window (label 0, IsNext) or, half the time, a
                  piece of the same length from another window of the batch, starting at
                  a sentence start where there is one (label 1, NotNext)
    sop (ALBERT): A and B swapped half the time (label 1)

so every input is exactly `seq_len` tokens and needs no padding. Every random choice of
a row (split, coin, partner, mask) comes from that row's generator: `static_rngs(seed,
key)` for static masking (BERT: fixed per sequence, whatever the step) or
`dynamic_rngs(seed, step, key)` for dynamic masking (RoBERTa: redrawn every step), with
key = a hash of the window's tokens. `draw=None` (evaluation) always gives the static
draw. A NotNext B comes from whichever window shares the batch, so even under static
masking a NotNext example changes with the batch it lands in.

Loss, as a SUM over N = n masked tokens for the trainer (which divides by N):

    loss_sum = sum_{i chosen} CE_i  +  pair_weight * mean_b CE_pair(b) * n
    loss_sum / n = L_MLM + pair_weight * L_NSP             (BERT: the sum of the two means)

With gradient accumulation the pair term of each micro-batch is weighted by its share of
the masked tokens. The MLM head runs only at the chosen positions (~15% of the tokens),
not at all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Objective
from .clm import IGNORE
from .masking import (
    check_probability,
    dynamic_rngs,
    mask_tokens,
    sequence_keys,
    static_rngs,
    word_starts,
)
from .pairs import sentence_ends, stop_token_ids

PAIR_HEADS = {"none": ("mlm", "mlm_nsp", "mlm_sop"), "nsp": ("mlm_nsp",), "sop": ("mlm_sop",)}


def special_token_ids(tokenizer, roles=("mask", "cls", "sep", "pad"), objective="mlm"):
    """{role: id} for the special tokens an objective needs; ConfigError naming the
    missing ones and the config key that adds them."""
    ids = {r: getattr(tokenizer, f"{r}_id", None) for r in roles}
    missing = [f"[{r.upper()}]" for r, i in ids.items() if i is None]
    if missing:
        raise ConfigError(
            f"config key 'tokenizer.special_tokens': objective {objective!r} needs "
            f"{', '.join(missing)}; add them (e.g. [\"<|endoftext|>\", \"[PAD]\", \"[CLS]\", "
            f"\"[SEP]\", \"[MASK]\"])"
        )
    return ids


def masking_fields(cfg, tokenizer, model_config, seed: int, objective: str) -> dict:
    """The constructor fields every masking objective (mlm, electra, coco) takes from its
    config, tokenizer and model: special ids, mask rate and kind, seed, positions."""
    if tokenizer is None:
        raise ConfigError(f"objective {objective!r} needs the tokenizer (for its special "
                          "tokens)")
    ids = special_token_ids(tokenizer, objective=objective)
    check_probability("config key 'objective.mask_prob'", cfg.mask_prob)
    return dict(
        mask_id=ids["mask"], cls_id=ids["cls"], sep_id=ids["sep"], pad_id=ids["pad"],
        vocab_size=tokenizer.vocab_size,
        special_ids=tuple(sorted(set(tokenizer.special_tokens.values()))),
        mask_prob=cfg.mask_prob, masking=cfg.masking, whole_word=cfg.whole_word, seed=seed,
        position_offset=(model_config.position_offset or 0) if model_config else 0,
        max_seq_len=model_config.max_seq_len if model_config else None,
        tokenizer=tokenizer,
    )


def check_encoder(model_config, heads: tuple[str, ...], objective: str) -> None:
    if model_config is None:
        return
    if model_config.arch != "encoder":
        raise ConfigError(f"config key 'model': objective {objective!r} trains an encoder "
                          f"(arch=encoder, e.g. preset tiny-bert), got arch={model_config.arch}")
    if model_config.encoder_head not in heads:
        raise ConfigError(
            f"config key 'model.encoder_head': objective {objective!r} needs "
            f"{' or '.join(heads)}, got {model_config.encoder_head!r}"
        )


def row_rngs(seed: int, masking: str, draw: int | None, keys, stream: str):
    """Per-row generators: static (same for every draw) or dynamic (fresh per draw)."""
    if masking == "dynamic" and draw is not None:
        return dynamic_rngs(seed, draw, keys, stream=stream)
    return static_rngs(seed, keys, stream=stream)


def as_windows(raw) -> np.ndarray:
    if isinstance(raw, Tensor):
        raw = raw.detach().cpu().numpy()
    raw = np.asarray(raw, dtype=np.int64)
    if raw.ndim != 2 or raw.shape[1] < 2:
        raise ValueError(f"expected a (batch, window) token array, got {raw.shape}")
    return raw


@dataclass
class MaskedLM(Objective):
    """BERT's MLM (+ NSP or SOP): windows in, [CLS] ... [SEP] inputs + labels out, and the
    loss. See the module docstring; the knobs are ObjectiveConfig's mlm keys."""

    mask_id: int
    cls_id: int
    sep_id: int
    pad_id: int
    vocab_size: int  # random replacement tokens are drawn below this (the tokenizer's)
    special_ids: tuple[int, ...] = ()
    mask_prob: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    masking: str = "dynamic"
    whole_word: bool = False
    pair: str = "none"
    pair_weight: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()  # tokens that end a sentence (pairs are cut after them)
    position_offset: int = 0  # RoBERTa positions start here: seq_len + offset <= max_seq_len
    max_seq_len: int | None = None
    tokenizer: object = field(default=None, repr=False)  # for whole-word starts
    name = "mlm"
    perplexity = False  # exp(MLM loss) is no perplexity of the text

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0) -> MaskedLM:
        common = masking_fields(cfg, tokenizer, model_config, seed, "mlm")
        check_probability("config key 'objective.mask_replace_prob'", cfg.mask_replace_prob,
                          zero_ok=True, one_ok=True)
        check_probability("config key 'objective.random_replace_prob'",
                          cfg.random_replace_prob, zero_ok=True, one_ok=True)
        if cfg.mask_replace_prob + cfg.random_replace_prob > 1:
            raise ConfigError("config keys 'objective.mask_replace_prob' + "
                              "'objective.random_replace_prob' must be <= 1")
        if cfg.pair_weight < 0:
            raise ConfigError(f"config key 'objective.pair_weight': expected a number >= 0, "
                              f"got {cfg.pair_weight!r}")
        check_encoder(model_config, PAIR_HEADS[cfg.pair], "mlm")
        if cfg.pair != "none" and model_config is not None and model_config.type_vocab_size < 2:
            raise ConfigError(f"config key 'model.type_vocab_size': objective.pair={cfg.pair} "
                              "needs 2 token types (A and B)")
        return cls(
            **common, mask_replace_prob=cfg.mask_replace_prob,
            random_replace_prob=cfg.random_replace_prob, pair=cfg.pair,
            pair_weight=cfg.pair_weight,
            stop_ids=tuple(stop_token_ids(tokenizer)) if cfg.pair != "none" else (),
        )

    # -- inputs ------------------------------------------------------------------------

    @property
    def n_special(self) -> int:
        """[CLS] + [SEP] (+ the middle [SEP] of a pair) added to each window."""
        return 2 if self.pair == "none" else 3

    def window_len(self, seq_len: int) -> int:
        """Raw tokens per window: seq_len minus the added [CLS] / [SEP] tokens."""
        need = self.n_special + 2  # a pair needs A and B of at least one token each
        if seq_len < need:
            what = "a sentence pair" if self.pair != "none" else "[CLS] text [SEP]"
            raise ConfigError(f"config key 'train.seq_len': {seq_len} is too short for "
                              f"{what}; use at least {need}")
        if self.max_seq_len is not None and seq_len + self.position_offset > self.max_seq_len:
            raise ConfigError(
                f"config key 'train.seq_len': {seq_len} positions from offset "
                f"{self.position_offset} exceed model.max_seq_len={self.max_seq_len}"
            )
        return seq_len - self.n_special

    def _split(self, rng, window: np.ndarray) -> int:
        """Where A ends: a sentence end strictly inside the window, uniformly (anywhere
        when the window holds none)."""
        ends = sentence_ends(window, self.stop_ids)
        ends = ends[(ends >= 1) & (ends <= len(window) - 1)]
        if len(ends):
            return int(ends[rng.integers(len(ends))])
        return int(rng.integers(1, len(window)))

    def _pair_row(self, i: int, windows: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, int]:
        """Row i as [CLS] A [SEP] B [SEP]: (input ids, token types, pair label)."""
        w = windows[i]
        s = self._split(rng, w)
        a, b, label = w[:s], w[s:], 0
        if self.pair == "nsp":
            if len(windows) > 1 and rng.random() < 0.5:  # NotNext: B from another window
                j = int(rng.integers(len(windows) - 1))
                other = windows[j + (j >= i)]
                starts = np.concatenate([[0], sentence_ends(other, self.stop_ids)])
                starts = starts[starts <= s]  # B' = other[t : t + len(b)] must fit
                t = int(starts[rng.integers(len(starts))])
                b, label = other[t : t + len(b)], 1
        elif rng.random() < 0.5:  # SOP: swapped order
            a, b, label = b, a, 1
        ids = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]])
        types = np.zeros(len(ids), dtype=np.int64)
        types[len(a) + 2 :] = 1
        return ids, types, label

    def corrupt(self, raw, draw: int | None = None) -> dict[str, np.ndarray]:
        """Windows -> numpy input_ids, labels (+ token_type_ids, pair_labels): `prepare`
        without the tensors. Also used by ELECTRA (pair none)."""
        windows = as_windows(raw)
        rngs = row_rngs(self.seed, self.masking, draw, sequence_keys(windows),
                        stream=self.name)
        out = {}
        if self.pair == "none":
            B = len(windows)
            cls = np.full((B, 1), self.cls_id, dtype=np.int64)
            sep = np.full((B, 1), self.sep_id, dtype=np.int64)
            ids = np.concatenate([cls, windows, sep], axis=1)
        else:
            rows = [self._pair_row(i, windows, rngs[i]) for i in range(len(windows))]
            ids = np.stack([r[0] for r in rows])
            out["token_type_ids"] = np.stack([r[1] for r in rows])
            out["pair_labels"] = np.array([r[2] for r in rows], dtype=np.int64)
        starts = word_starts(ids, self.tokenizer) if self.whole_word else None
        specials = (*self.special_ids, self.cls_id, self.sep_id, self.pad_id)
        out["input_ids"], out["labels"] = mask_tokens(
            ids, rngs, mask_id=self.mask_id, vocab_size=self.vocab_size, special_ids=specials,
            mask_prob=self.mask_prob, mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob, word_starts=starts,
        )
        out["_rngs"] = rngs
        return out

    def prepare(self, raw, draw: int | None = None) -> dict[str, Tensor]:
        """(B, seq_len - 2 or - 3) windows -> input_ids, labels (IGNORE where not chosen),
        and with a pair token_type_ids + pair_labels; all (B, seq_len) but pair_labels (B,)."""
        out = self.corrupt(raw, draw)
        out.pop("_rngs")
        return {k: torch.from_numpy(v) for k, v in out.items()}

    @staticmethod
    def num_targets(batch: dict[str, Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    # -- loss ----------------------------------------------------------------------------

    def _forward(self, model, batch):
        """(MLM logits at the chosen positions (n, V), their labels, pair logits or None)."""
        types = batch.get("token_type_ids")
        if model.config.emd:  # DeBERTa: the MLM head reads the enhanced mask decoder
            h, h_mlm = model.encode(batch["input_ids"], token_type_ids=types, emd=True)
        else:
            h = h_mlm = model.encode(batch["input_ids"], token_type_ids=types)
        chosen = batch["labels"] != IGNORE
        logits = model.mlm_head(h_mlm[chosen])  # (n, V): the head only where it is scored
        pair = model.pair_head(model.pooler(h)) if self.pair != "none" else None  # (B, 2)
        return logits, batch["labels"][chosen], pair

    def loss(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """(sum of the masked-token CEs + pair_weight * mean pair CE * n, n): the trainer's
        division by n gives L_MLM + pair_weight * L_NSP/SOP."""
        logits, targets, pair = self._forward(model, batch)
        n = int(targets.numel())
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        if pair is not None:
            loss = loss + self.pair_weight * F.cross_entropy(pair.float(),
                                                             batch["pair_labels"]) * n
        return loss, n

    @torch.no_grad()
    def evaluate(self, model, batch: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
        """loss: MLM only (sum, n); acc: masked-token accuracy; {pair}_loss, {pair}_acc:
        per sequence."""
        logits, targets, pair = self._forward(model, batch)
        n = int(targets.numel())
        stats = {
            "loss": (float(F.cross_entropy(logits.float(), targets, reduction="sum")), n),
            "acc": (float((logits.argmax(-1) == targets).sum()), n),
        }
        if pair is not None:
            labels = batch["pair_labels"]
            stats[f"{self.pair}_loss"] = (
                float(F.cross_entropy(pair.float(), labels, reduction="sum")), len(labels))
            stats[f"{self.pair}_acc"] = (float((pair.argmax(-1) == labels).sum()), len(labels))
        return stats

    def flops_per_token(self, model, seq_len: int) -> float:
        from ..flops import encoder_flops_per_token

        return encoder_flops_per_token(model, seq_len, mlm_fraction=self.mask_prob)
