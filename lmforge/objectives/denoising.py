"""Encoder-decoder pretraining: BART's denoising and T5's span corruption, as objectives.

Both cut a raw window from the packed token stream, corrupt it with a pure function
(bart_noise.py, t5_span.py), and train the decoder to write the target while the encoder
reads the corrupted input:

    BART  window    x_1 ... x_n                        (n = seq_len - 2 tokens)
          encoder   <s> noise(x) </s>                  text infilling + sentence permutation,
                                                       padded to seq_len
          target    <s> x_1 ... x_n </s>               the whole original, seq_len tokens
    T5    window    x_1 ... x_n                        (n from compute_input_and_target_lengths)
          encoder   x_1 <X> x_4 ... <Y> x_n </s>       exactly seq_len tokens
          target    <X> x_2 x_3 <Y> ... </s>           only the hidden spans

    decoder input = shift_right(target) = [decoder_start, y_1, ..., y_{T-1}]
    L = -1/N * sum_t log p(y_t | y_<t, encoder input)  over the N target tokens that are
        not IGNORE (padding)

The loss is returned as a sum with its count N (see clm.py); `evaluate` adds token
accuracy, the share of target tokens whose argmax prediction is right. exp(loss) is not
reported: a reconstruction loss (mostly copying, for BART) is not a language model's
perplexity. Because ~70% of BART's target is visible in its input, BART's batches carry a
`hidden` (B, T) mask of the target tokens the noised input does not show (removed by
infilling, masked, deleted), and `evaluate` adds infill_loss / infill_acc over those
alone, as T5 adds span_loss / span_acc: the numbers to set beside the unigram loss.

Corruption is seeded per window from (seed, draw, the window's contents): `draw=None`
(evaluation) gives the same corruption of a window every time, `draw=step` a fresh one
each step that an exact resume redraws (masking.py).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .bart_noise import MASK_KINDS, bart_noise
from .base import Objective
from .clm import IGNORE, clm_loss
from .masking import dynamic_rngs, sequence_keys, static_rngs, word_starts
from .pairs import stop_token_ids
from .t5_span import compute_input_and_target_lengths, noise_counts, span_corrupt


def seq2seq_batch(sources, targets, *, pad_id: int, decoder_start_id: int,
                  source_len: int | None = None) -> dict[str, Tensor]:
    """Lists of (encoder input, target) id arrays -> the model's batch, right-padded.

    input_ids (B, S) and attention_mask (B, S): the sources padded with `pad_id` to
    `source_len` (default: the longest); targets (B, T): padded with IGNORE;
    decoder_input_ids (B, T) = shift_right(targets) (IGNORE -> pad_id).
    """
    from ..models.seq2seq import shift_right

    S = source_len or max(len(s) for s in sources)
    T = max(len(t) for t in targets)
    input_ids = torch.full((len(sources), S), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sources), S), dtype=torch.long)
    target_ids = torch.full((len(targets), T), IGNORE, dtype=torch.long)
    for b, (src, tgt) in enumerate(zip(sources, targets)):
        input_ids[b, : len(src)] = torch.from_numpy(np.asarray(src, dtype=np.int64))
        attention_mask[b, : len(src)] = 1
        target_ids[b, : len(tgt)] = torch.from_numpy(np.asarray(tgt, dtype=np.int64))
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": shift_right(target_ids, decoder_start_id, pad_id),
        "targets": target_ids,
    }


def _need(value, what: str):
    if value is None:
        raise ConfigError(what)
    return value


@dataclass
class _Denoising(Objective):
    """What BART and T5 share: seeding, batching, the loss and its statistics."""

    seed: int = 0
    pad_id: int = 0
    decoder_start_id: int = 0
    perplexity = False

    @abstractmethod
    def corrupt(self, window: np.ndarray, rng: np.random.Generator):
        """(encoder input, target) of one raw window."""

    def rngs(self, raw: np.ndarray, draw: int | None) -> list[np.random.Generator]:
        keys = sequence_keys(raw)
        if draw is None:
            return static_rngs(self.seed, keys, stream=self.name)
        return dynamic_rngs(self.seed, draw, keys, stream=self.name)

    def prepare(self, raw, draw: int | None = None) -> dict[str, Tensor]:
        """(B, window_len) raw windows -> input_ids, attention_mask, decoder_input_ids,
        targets (see `seq2seq_batch`); where `corrupt_hidden` tracks which target tokens
        the input does not show (BART), also "hidden" (B, T) bool, aligned with targets,
        False on padding."""
        if isinstance(raw, Tensor):
            raw = raw.cpu().numpy()
        raw = np.asarray(raw, dtype=np.int64)
        if raw.ndim != 2:
            raise ValueError(f"expected a (batch, window) token array, got {raw.shape}")
        rows = [self.corrupt_hidden(row, rng) for row, rng in zip(raw, self.rngs(raw, draw))]
        batch = seq2seq_batch([s for s, _, _ in rows], [t for _, t, _ in rows],
                              pad_id=self.pad_id, decoder_start_id=self.decoder_start_id,
                              source_len=self.source_len(raw.shape[1]))
        if rows and all(h is not None for _, _, h in rows):
            hidden = torch.zeros(batch["targets"].shape, dtype=torch.bool)
            for b, (_, _, h) in enumerate(rows):
                hidden[b, : len(h)] = torch.from_numpy(np.asarray(h, dtype=bool))
            batch["hidden"] = hidden
        return batch

    def source_len(self, window: int) -> int | None:
        return None

    @staticmethod
    def num_targets(batch: dict[str, Tensor]) -> int:
        return int((batch["targets"] != IGNORE).sum())

    @staticmethod
    def logits(model, batch: dict[str, Tensor]) -> Tensor:
        """(B, T, V) logits of the target tokens given the encoder input."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"]).logits

    def loss(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """(sum over target tokens of -log p(y_t | y_<t, source), N)."""
        return clm_loss(self.logits(model, batch), batch["targets"])

    def evaluate(self, model, batch: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
        """{"loss": (sum, N), "acc": (target tokens predicted right by argmax, N)}, and
        "<name>_loss" / "<name>_acc" over the objective's `inferred` target tokens alone
        (the ones to set beside the unigram loss)."""
        logits = self.logits(model, batch)
        targets = batch["targets"]
        loss, n = clm_loss(logits, targets)
        valid = targets != IGNORE
        hits = (logits.argmax(-1) == targets) & valid
        stats = {"loss": (float(loss.detach()), n), "acc": (float(hits.sum()), n)}
        subset = self.inferred(batch)
        if subset is not None:
            name, keep = subset
            part = torch.where(keep & valid, targets, IGNORE)
            part_loss, m = clm_loss(logits, part)
            stats[f"{name}_loss"] = (float(part_loss.detach()), m)
            stats[f"{name}_acc"] = (float((hits & (part != IGNORE)).sum()), m)
        return stats

    def inferred(self, batch: dict[str, Tensor]) -> tuple[str, Tensor] | None:
        """(name, bool mask over the targets) of the tokens the model must infer rather
        than copy from its input, or None."""
        return None

    def corrupt_hidden(self, window: np.ndarray, rng: np.random.Generator):
        """`corrupt`'s pair and a bool mask over the target of the tokens the input does
        not show, or None where the objective does not track them."""
        return (*self.corrupt(window, rng), None)

    @abstractmethod
    def target_len(self, seq_len: int) -> int:
        """Decoder tokens per example for an encoder input of `seq_len`."""

    def flops_per_token(self, model, seq_len: int) -> float | None:
        """Training FLOPs per encoder input token (the tokens the trainer counts)."""
        from ..flops import seq2seq_flops_per_token

        try:
            return seq2seq_flops_per_token(model, seq_len, self.target_len(seq_len))
        except AttributeError:  # not an lmforge Seq2Seq
            return None


def _special_ids(model_config, tokenizer) -> tuple[int, int]:
    """(pad id, decoder start id) from the model config, checked against the vocab."""
    if model_config is None or tokenizer is None:
        raise ConfigError("encoder-decoder objectives need the tokenizer and the model config")
    if getattr(model_config, "arch", None) != "seq2seq":
        raise ConfigError(
            f"config key 'model.arch': the bart / t5 objectives train encoder-decoders "
            f"(arch=seq2seq), got {getattr(model_config, 'arch', None)!r}; use a bart or t5 "
            "preset"
        )
    pad = model_config.pad_token_id if model_config.pad_token_id is not None else tokenizer.pad_id
    pad = _need(pad, "config key 'tokenizer.special_tokens': encoder-decoders pad with a "
                     "padding token (add '<pad>')")
    start = model_config.decoder_start_token_id
    for name, i in (("pad_token_id", pad), ("decoder_start_token_id", start)):
        if not 0 <= i < model_config.vocab_size:
            raise ConfigError(f"config key 'model.{name}': {i} is not an id of the "
                              f"{model_config.vocab_size}-token vocabulary")
    return pad, start


# -- BART ------------------------------------------------------------------------------------


@dataclass
class BartDenoising(_Denoising):
    """BART: reconstruct the original window from a noised one (bart_noise.py).

    Defaults are BART's: text infilling of 30% of the tokens (whole words) in spans of
    Poisson(3) length, each span -> one <mask>, plus sentence permutation (sentences end
    at '.', '!', '?' tokens and at document ends).
    """

    bos_id: int = 0
    eos_id: int = 2
    mask_id: int = 3
    mask: str | None = "infill"
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    random_ratio: float = 0.0
    permute_sentences: bool = True
    rotate: bool = False
    stop_ids: list[int] = field(default_factory=list)
    special_ids: list[int] = field(default_factory=list)
    vocab_size: int | None = None
    tokenizer: object = None  # for whole-word spans (None: spans of tokens)
    name = "bart"

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0) -> BartDenoising:
        pad, start = _special_ids(model_config, tokenizer)
        bos = _need(tokenizer.bos_id, "config key 'tokenizer.special_tokens': BART wraps "
                                      "windows in <s> ... </s>; the tokenizer has no '<s>'")
        eos = _need(tokenizer.eos_id, "config key 'tokenizer.special_tokens': BART needs an "
                                      "end token ('</s>')")
        mask = cfg.bart_mask if cfg.bart_mask != "none" else None
        mask_id = tokenizer.mask_id
        if mask in ("infill", "token") and mask_id is None:
            raise ConfigError("config key 'tokenizer.special_tokens': BART's text infilling "
                              "needs a mask token ('<mask>' or '[MASK]'); the tokenizer has none")
        for key in ("mask_ratio", "random_ratio"):
            v = getattr(cfg, key)
            if not 0 <= v < 1 or (key == "mask_ratio" and v == 0 and mask is not None):
                raise ConfigError(f"config key 'objective.{key}': expected a number in "
                                  f"{'(0' if key == 'mask_ratio' else '[0'}, 1), got {v!r}")
        if not cfg.poisson_lambda > 0:
            raise ConfigError(f"config key 'objective.poisson_lambda': expected a number > 0, "
                              f"got {cfg.poisson_lambda!r}")
        specials = sorted(set(tokenizer.special_tokens.values()))
        return cls(
            seed=seed, pad_id=pad, decoder_start_id=start, bos_id=bos, eos_id=eos,
            mask_id=mask_id if mask_id is not None else -1, mask=mask,
            mask_ratio=cfg.mask_ratio, poisson_lambda=cfg.poisson_lambda,
            random_ratio=cfg.random_ratio, permute_sentences=cfg.permute_sentences,
            rotate=cfg.rotate, stop_ids=[*stop_token_ids(tokenizer), eos],
            special_ids=specials, vocab_size=tokenizer.vocab_size,
            tokenizer=tokenizer if cfg.whole_word_spans else None,
        )  # fmt: skip

    def window_len(self, seq_len: int) -> int:
        """seq_len - 2 raw tokens: <s> and </s> go around them."""
        if seq_len < 3:
            raise ConfigError(f"config key 'train.seq_len': BART needs at least 3 tokens "
                              f"(<s>, one token, </s>), got {seq_len}")
        return seq_len - 2

    def target_len(self, seq_len: int) -> int:
        return seq_len

    def source_len(self, window: int) -> int:
        return window + 2

    def corrupt(self, window: np.ndarray, rng: np.random.Generator):
        """(<s> noise(window) </s>, <s> window </s>); an input longer than the target
        (only when zero-length spans insert more <mask>s than spans remove tokens: rare)
        is cut to its length, </s> kept last."""
        src, tgt, _ = self.corrupt_hidden(window, rng)
        return src, tgt

    def corrupt_hidden(self, window: np.ndarray, rng: np.random.Generator):
        """`corrupt`, and the bool mask over <s> window </s> of the tokens the input does
        not show (<s> and </s> never hidden; see bart_noise's return_hidden)."""
        ws = None if self.tokenizer is None else word_starts(window, self.tokenizer)
        src, tgt, hidden = bart_noise(
            window, rng, mask_id=self.mask_id, mask=self.mask, mask_ratio=self.mask_ratio,
            poisson_lambda=self.poisson_lambda, random_ratio=self.random_ratio,
            permute_sentences=self.permute_sentences, rotate=self.rotate,
            stop_ids=self.stop_ids, word_starts=ws, vocab_size=self.vocab_size,
            special_ids=self.special_ids, max_len=len(window), return_hidden=True,
        )  # fmt: skip
        return (np.concatenate([[self.bos_id], src, [self.eos_id]]),
                np.concatenate([[self.bos_id], tgt, [self.eos_id]]),
                np.concatenate([[False], hidden, [False]]))

    def inferred(self, batch: dict[str, Tensor]) -> tuple[str, Tensor] | None:
        """"infill": the target tokens the encoder input does not show (batch["hidden"]:
        removed by infilling, masked, deleted). A batch without "hidden" (not made by
        `prepare`) has none."""
        if "hidden" not in batch:
            return None
        return "infill", batch["hidden"].to(batch["targets"].device)


# -- T5 --------------------------------------------------------------------------------------


def count_sentinels(tokenizer) -> int:
    """How many of <extra_id_0>, <extra_id_1>, ... the tokenizer holds (in a row from 0)."""
    special = tokenizer.special_tokens
    n = 0
    while f"<extra_id_{n}>" in special:
        n += 1
    return n


@dataclass
class T5SpanCorruption(_Denoising):
    """T5: predict the hidden spans (t5_span.py). noise_density 0.15 of the tokens in
    spans of mean length 3, each -> its own sentinel <extra_id_i>; windows are as long as
    makes the corrupted input exactly seq_len tokens."""

    eos_id: int = 1
    sentinel_ids: list[int] = field(default_factory=list)
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    name = "t5"

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0) -> T5SpanCorruption:
        pad, start = _special_ids(model_config, tokenizer)
        eos = _need(tokenizer.eos_id, "config key 'tokenizer.special_tokens': T5 needs an "
                                      "end token ('</s>')")
        n = count_sentinels(tokenizer)
        if n == 0:
            raise ConfigError("T5 span corruption needs sentinel tokens <extra_id_0>, ...; the "
                              "tokenizer has none (set tokenizer.sentinels, e.g. 100)")
        if not 0 < cfg.noise_density < 1:
            raise ConfigError(f"config key 'objective.noise_density': expected a number in "
                              f"(0, 1), got {cfg.noise_density!r}")
        if not cfg.mean_span_length >= 1:
            raise ConfigError(f"config key 'objective.mean_span_length': expected a number "
                              f">= 1, got {cfg.mean_span_length!r}")
        return cls(seed=seed, pad_id=pad, decoder_start_id=start, eos_id=eos,
                   sentinel_ids=tokenizer.sentinel_ids(n), noise_density=cfg.noise_density,
                   mean_span_length=cfg.mean_span_length)

    def _lengths(self, seq_len: int) -> tuple[int, int]:
        """(raw window, target length) for an encoder input of exactly seq_len tokens."""
        if seq_len < 3:
            raise ConfigError(f"config key 'train.seq_len': T5 span corruption needs at least "
                              f"3 tokens (a token, a sentinel, </s>), got {seq_len}")
        window, target = compute_input_and_target_lengths(seq_len, self.noise_density,
                                                          self.mean_span_length)
        _, spans = noise_counts(window, self.noise_density, self.mean_span_length)
        if spans > len(self.sentinel_ids):
            raise ConfigError(
                f"config key 'tokenizer.sentinels': seq_len {seq_len} gives {spans} noise spans "
                f"per sequence but the tokenizer has only {len(self.sentinel_ids)} sentinels"
            )
        return window, target

    def window_len(self, seq_len: int) -> int:
        return self._lengths(seq_len)[0]

    def target_len(self, seq_len: int) -> int:
        return self._lengths(seq_len)[1]

    def inferred(self, batch: dict[str, Tensor]) -> tuple[str, Tensor] | None:
        """"span": the hidden tokens alone, without the sentinels and </s> (which the
        input's sentinels give away)."""
        targets = batch["targets"]
        markers = torch.tensor([*self.sentinel_ids, self.eos_id], device=targets.device)
        return "span", ~torch.isin(targets, markers)

    def corrupt(self, window: np.ndarray, rng: np.random.Generator):
        return span_corrupt(window, rng, self.sentinel_ids, self.eos_id,
                            noise_density=self.noise_density,
                            mean_noise_span_length=self.mean_span_length)


# -- prompts for generation ------------------------------------------------------------------


def source_ids(tokenizer, text: str, family: str | None) -> list[int]:
    """The encoder input for `text`, as the objectives build it: special tokens in the text
    (<mask>, <extra_id_0>) are recognised; BART wraps it in <s> ... </s>, T5 ends it
    with </s>."""
    ids = tokenizer.encode(text, allowed_special="all")
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    if family == "bart" and bos is not None:
        ids = [bos, *ids]
    return ids + ([eos] if eos is not None else [])


def target_text(tokenizer, ids: list[int], decoder_start_id: int | None) -> str:
    """The decoded target of generated ids: the start token, a leading <s> and everything
    from the first </s> on are dropped; other special tokens (sentinels) are shown."""
    ids = list(ids)
    if ids and ids[0] == decoder_start_id:
        ids = ids[1:]
    if ids and ids[0] == tokenizer.bos_id:
        ids = ids[1:]
    if tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    pad = tokenizer.pad_id
    return tokenizer.decode([i for i in ids if i != pad])


__all__ = ["MASK_KINDS", "BartDenoising", "T5SpanCorruption", "count_sentinels",
           "seq2seq_batch", "source_ids", "target_text"]
