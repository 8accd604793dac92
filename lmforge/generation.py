"""Text generation from a decoder LM: greedy, sampling, beam search.

    from lmforge.generation import GenerationConfig, generate, pad_left
    ids, mask = pad_left([tok.encode("To be"), tok.encode("Once upon a")], pad_id=0)
    out = generate(model, ids, mask, GenerationConfig(max_new_tokens=50, do_sample=True,
                                                      temperature=0.8, top_k=40))
    out.shape == (2, ids.shape[1] + n_generated)      # prompt + new tokens, like HF

Everything here is a plain function of an lmforge decoder (or any model with its calling
convention: `model(input_ids, attention_mask=, position_ids=, past_key_values=,
use_cache=, logits_to_keep=)` returning `.logits`, and taking a `KVCache`).

Encoder-decoders (BART, T5) use the same loops: `generate(model, source_ids, source_mask)`
encodes the source once (padding on either side), starts every target with
`decoder_start_token_id` and returns the targets (start token included, as transformers).

Semantics follow `transformers.generate`, so greedy and beam search give the same tokens:
- each step the next-token logits go through: repetition penalty, min_new_tokens (EOS
  forbidden), then, when sampling, temperature, top-k, top-p;
- batched prompts are left-padded; positions count real tokens only (one difference:
  the repetition penalty ignores prompt padding, which transformers counts as "seen");
- a sequence that has finished (EOS or a stop string) is filled with `pad_token_id`; the
  loop ends when all have finished or after `max_new_tokens`;
- beam search keeps `num_beams` hypotheses, scores a finished one by
  sum(log p) / generated_length ** length_penalty, and stops by `early_stopping`
  (True: as soon as num_beams hypotheses are finished; False: when no running beam can beat
  the worst finished one at its current length; "never": only when that is impossible even
  at max length).

`prompt_lookup_tokens=k` (greedy, one prompt) guesses up to k tokens by copying what
followed the last n-gram earlier in the text and checks them in one forward: the output is
still the greedy output, in fewer forwards when the text repeats itself.

Past the context: greedy decoding and sampling on a decoder go on past `max_seq_len` as
nanoGPT does: once the sequence is longer than the context, each step re-runs the model on
the last `max_seq_len` tokens (positions from 0 again), and a note says so once on the
"lmforge.generation" logger. The prompt itself must fit. (Trimming a KV cache instead is
not the same: a kept token's keys in deeper layers were computed while it still saw the
dropped tokens, and window attention without them degrades, StreamingLLM, Xiao et al.
2023.) Beam search and prompt lookup stay within the context.

Stop strings need a `decode(token_ids) -> str` callback (e.g. `tokenizer.decode`): after
each step the newly generated text is decoded and a sequence stops once it contains one
of `stop_strings`. The returned tokens still include the stop string (as in transformers);
cut the decoded text at it if you want it gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, LmforgeError
from .models.layers import KVCache

NEG_INF = -1.0e9  # "impossible" score for beams, as in transformers
log = logging.getLogger("lmforge.generation")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens
    do_sample: bool = False  # False: greedy (or beam search when num_beams > 1)
    temperature: float = 1.0  # sampling: p ~ softmax(logits / temperature)
    top_k: int = 0  # sampling: keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # sampling: keep the smallest set with probability >= top_p
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence
    no_repeat_ngram_size: int = 0  # > 0: never produce an n-gram of this size twice
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never"
    num_return_sequences: int = 1  # beam search: best n hypotheses per prompt
    eos_token_id: int | list[int] | None = None  # None: the model's; [] = never stop on EOS
    pad_token_id: int | None = None  # None: the first EOS id (or 0 without one)
    stop_strings: list[str] = dataclasses.field(default_factory=list)
    use_cache: bool = True
    prompt_lookup_tokens: int = 0  # greedy, one prompt: verify up to this many drafted tokens

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> ConfigError:
            value = getattr(self, field)
            return ConfigError(f"generation.{field}: expected {expected}, got {value!r}")

        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", "a positive integer")
        if not isinstance(self.min_new_tokens, int) or self.min_new_tokens < 0:
            raise bad("min_new_tokens", "a non-negative integer")
        if not self.temperature > 0:
            raise bad("temperature", "a positive number")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "a non-negative integer (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "a number in (0, 1]")
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "a positive number")
        if not isinstance(self.no_repeat_ngram_size, int) or self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "a non-negative integer (0 = off)")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise bad("num_beams", "a positive integer")
        if self.early_stopping not in (True, False, "never"):
            raise bad("early_stopping", "true, false or 'never'")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise bad("num_return_sequences", f"between 1 and num_beams={self.num_beams}")
        if self.num_beams > 1 and self.do_sample:
            raise ConfigError("generation.do_sample: beam search with sampling is not supported")
        if not isinstance(self.prompt_lookup_tokens, int) or self.prompt_lookup_tokens < 0:
            raise bad("prompt_lookup_tokens", "a non-negative integer (0 = off)")
        if self.prompt_lookup_tokens and (
            self.do_sample
            or self.num_beams > 1
            or self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size
        ):
            raise ConfigError(
                "generation.prompt_lookup_tokens: only for plain greedy decoding "
                "(no sampling, beams or repetition penalty)"
            )


# ----------------------------------------------------------------------------------------
# Logits processing (each a pure function, unit-tested on hand-made logits)


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float, seen_mask=None) -> Tensor:
    """For every token already in the sequence: s -> s * penalty if s < 0 else s / penalty
    (CTRL, Keskar et al. 2019; the transformers formula). logits (N, V), seen (N, L) ids;
    `seen_mask` (N, L) marks which entries count (padding does not)."""
    if seen_mask is not None:
        # Send ignored entries to an extra column V that is dropped afterwards.
        seen = seen.masked_fill(~seen_mask.bool(), logits.shape[-1])
    in_seq = torch.zeros(logits.shape[0], logits.shape[1] + 1, dtype=torch.bool, device=seen.device)
    in_seq.scatter_(1, seen, True)
    in_seq = in_seq[:, :-1]
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(in_seq, penalised, logits)


def no_repeat_ngram(logits: Tensor, seqs: Tensor, n: int) -> Tensor:
    """Forbid every token that would complete an n-gram already in the sequence: for each
    earlier window (w_1 .. w_n) whose first n - 1 tokens equal the last n - 1 generated,
    w_n gets -inf (the transformers rule; the whole sequence counts, prompt included).
    logits (N, V), seqs (N, L)."""
    L = seqs.shape[1]
    if L < n:  # no complete n-gram yet
        return logits
    windows = seqs.unfold(1, n, 1)  # (N, L - n + 1, n)
    tail = seqs[:, L - n + 1 :]  # (N, n - 1) the prefix the next token would complete
    match = (windows[:, :, :-1] == tail[:, None]).all(-1)  # (N, L - n + 1)
    V = logits.shape[-1]
    target = windows[:, :, -1].masked_fill(~match, V)  # non-matches go to a dropped column V
    banned = torch.zeros(logits.shape[0], V + 1, dtype=torch.bool, device=logits.device)
    banned.scatter_(1, target, True)
    return logits.masked_fill(banned[:, :V], float("-inf"))


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row (ties with the k-th are kept); the rest -> -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (N, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus: keep the most likely tokens whose total probability first reaches p.

    Sorted from least to most likely, a token is dropped while the probability mass up to
    and including it is <= 1 - p; the most likely token is always kept.
    """
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum_probs <= 1 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _process(
    scores: Tensor,
    seqs: Tensor,
    seq_mask: Tensor | None,
    n_new: int,
    cfg: GenerationConfig,
    eos: Tensor,
    sampling: bool,
) -> Tensor:
    if cfg.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, seqs, cfg.repetition_penalty, seq_mask)
    if cfg.no_repeat_ngram_size:
        scores = no_repeat_ngram(scores, seqs, cfg.no_repeat_ngram_size)
    if n_new < cfg.min_new_tokens and eos.numel():
        scores = scores.index_fill(-1, eos, float("-inf"))
    if sampling:
        if cfg.temperature != 1.0:
            scores = scores / cfg.temperature
        if cfg.top_k:
            scores = top_k_filter(scores, cfg.top_k)
        if cfg.top_p < 1.0:
            scores = top_p_filter(scores, cfg.top_p)
    return scores


# ----------------------------------------------------------------------------------------
# Helpers


def pad_left(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Token-id lists -> (input_ids, attention_mask), both (B, longest), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise LmforgeError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def _stop_string_hits(
    seqs: Tensor, start: int, end: int, stop_strings: Sequence[str], decode: Callable
) -> Tensor:
    """(N,) True where the text of tokens [start, end) ends in a new stop string.

    A stop string of L characters spans at most L tokens, so only the tail is decoded.
    """
    tail = max(len(s) for s in stop_strings)
    rows = seqs[:, max(start, end - tail) : end].tolist()
    return torch.tensor([any(s in decode(r) for s in stop_strings) for r in rows])


def _resolve(model: nn.Module, cfg: GenerationConfig) -> tuple[Tensor, int]:
    eos = cfg.eos_token_id
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    return torch.tensor(eos_ids, dtype=torch.long), pad


def _virtual_tokens(model: nn.Module) -> int:
    """Prompt- / prefix-tuned models (lmforge/peft/prompts.py) put n virtual tokens before
    the real ones: they take n positions of the context and n entries of the KV cache."""
    return getattr(model, "num_virtual_tokens", 0)


def _sliding_window(model: nn.Module, cfg: GenerationConfig) -> int | None:
    """The context that greedy decoding / sampling slides over: a decoder's max_seq_len
    (less its virtual tokens)."""
    config = getattr(model, "config", None)
    if getattr(config, "arch", None) != "decoder" or cfg.num_beams > 1 or cfg.prompt_lookup_tokens:
        return None
    max_len = getattr(config, "max_seq_len", None)
    return None if max_len is None else max_len - _virtual_tokens(model)


def _check_prompt(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, n: int,
                  window: int | None = None):
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise LmforgeError("the prompt is empty: give at least one token")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise LmforgeError("attention_mask must have the shape of input_ids")
        if not bool(attention_mask[:, -1].all()):
            raise LmforgeError("batched prompts must be padded on the left (see pad_left)")
        if not bool(attention_mask.sum(-1).gt(0).all()):
            raise LmforgeError("the prompt is empty: give at least one token")
    if window is not None:  # generation slides past the context; the prompt must fit
        if input_ids.shape[1] > window:
            raise LmforgeError(f"the prompt ({input_ids.shape[1]} tokens) is longer than "
                               f"the model's context of {window} tokens")
        return
    config = getattr(model, "config", None)
    max_len = getattr(config, "max_seq_len", None)
    if max_len is not None and getattr(config, "positions", "rope") in ("learned", "sinusoidal"):
        max_len -= _virtual_tokens(model)
        if input_ids.shape[1] + n > max_len:
            raise LmforgeError(
                f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({n}) is longer "
                f"than the model's context of {max_len} tokens"
            )


# ----------------------------------------------------------------------------------------
# The entry point


@torch.inference_mode()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    decode: Callable[[list[int]], str] | None = None,
    **overrides,
) -> Tensor:
    """Continue each prompt; return prompt + new tokens, (B * num_return_sequences, T + n).

    `overrides` change single fields of `config` (e.g. `max_new_tokens=20`).
    `generator` makes sampling reproducible; `decode` is needed for `stop_strings`.
    """
    cfg = dataclasses.replace(config or GenerationConfig(), **overrides)
    if getattr(getattr(model, "config", None), "arch", None) == "seq2seq":
        # Encoder-decoder: input_ids is the source; the same loops decode the target.
        model, input_ids = _Seq2SeqDecoding.start(model, input_ids, attention_mask)
        attention_mask = None
    if cfg.stop_strings and decode is None:
        raise ConfigError("generation.stop_strings: needs a decode function (token ids -> text)")
    window = _sliding_window(model, cfg)
    _check_prompt(model, input_ids, attention_mask, cfg.max_new_tokens, window)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: let attention take its mask-free fast path
    eos, pad = _resolve(model, cfg)
    eos = eos.to(input_ids.device)
    stop = (cfg.stop_strings, decode) if cfg.stop_strings else None
    with _decoding_layout(model):
        if cfg.num_beams > 1:
            return _beam_search(model, input_ids, attention_mask, cfg, eos, pad, stop)
        if cfg.prompt_lookup_tokens and input_ids.shape[0] == 1 and cfg.use_cache:
            return _prompt_lookup(model, input_ids, cfg, eos, stop)
        return _sample(model, input_ids, attention_mask, cfg, eos, pad, stop, generator, window)


def _new_cache(model: nn.Module, capacity: int):
    make = getattr(model, "new_cache", None)
    return make(capacity) if make is not None else KVCache(model.config.n_layer, capacity=capacity)


class _Seq2SeqDecoding:
    """An encoder-decoder seen as a decoder, so greedy / sampling / beam search are shared.

    The source is encoded once; the "prompt" is the decoder start token; each call runs
    the decoder on the new target tokens against the memory (repeated for beams), with
    the self-attention cache and the once-computed cross-attention K/V.
    """

    def __init__(self, model: nn.Module, memory: Tensor, source_mask: Tensor | None):
        self.model, self.config, self.lm_head = model, model.config, model.lm_head
        self.memory, self.source_mask = memory, source_mask

    @classmethod
    def start(cls, model, input_ids: Tensor, attention_mask: Tensor | None):
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise LmforgeError("the source is empty: give at least one token")
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        memory = model.encode(input_ids, attention_mask).last_hidden_state
        start = torch.full(
            (input_ids.shape[0], 1), model.config.decoder_start_token_id, device=input_ids.device
        )
        return cls(model, memory, attention_mask), start

    def new_cache(self, capacity: int):
        from .models.seq2seq import Seq2SeqCache

        return Seq2SeqCache(self.config.decoder_layers, capacity)

    def __call__(self, ids, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache=False, logits_to_keep=0):  # fmt: skip
        n = ids.shape[0] // self.memory.shape[0]  # beams per source
        if n > 1:  # once: the sources repeated for their beams
            mask = self.source_mask
            self.memory = self.memory.repeat_interleave(n, dim=0)
            self.source_mask = None if mask is None else mask.repeat_interleave(n, dim=0)
        memory, mask = self.memory, self.source_mask
        return self.model(
            attention_mask=mask, decoder_input_ids=ids, encoder_outputs=memory,
            past_key_values=past_key_values, use_cache=use_cache,
        )  # fmt: skip


def _decoding_layout(model: nn.Module) -> contextlib.AbstractContextManager:
    """On CPU, let the LM head keep a transposed weight copy (see LMHead.decoding_layout)."""
    head = getattr(model, "lm_head", None)
    if hasattr(head, "decoding_layout") and head.weight.device.type == "cpu":
        return head.decoding_layout()
    return contextlib.nullcontext()


def _forward_last(model, ids, mask, position_ids, cache) -> Tensor:
    """Next-token logits (N, V) in float32 for the last position."""
    out = model(
        ids,
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float()


def _sample(model, input_ids, attention_mask, cfg, eos, pad, stop, generator,
            window=None) -> Tensor:
    """Greedy decoding or sampling, one token per step for the whole batch.

    Past `window` tokens each step sees only the last `window` (re-run without the cache).
    """
    B, T0 = input_ids.shape
    device = input_ids.device
    total = T0 + cfg.max_new_tokens
    seqs = torch.full((B, total), pad, dtype=torch.long, device=device)
    seqs[:, :T0] = input_ids
    mask = None  # (B, total) 1 = real token, only needed with padding
    if attention_mask is not None:
        mask = torch.ones((B, total), dtype=torch.long, device=device)
        mask[:, :T0] = attention_mask
        # position of the next token = number of real tokens so far
        next_pos = attention_mask.sum(-1, keepdim=True)  # (B, 1)
    else:
        next_pos = torch.full((B, 1), T0, dtype=torch.long, device=device)
    # the cache holds the virtual tokens too, and is not used past the window
    span = total if window is None else min(total, window)
    cache = _new_cache(model, span + _virtual_tokens(model)) if cfg.use_cache else None
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    sampling = cfg.do_sample

    logits = _forward_last(model, input_ids, attention_mask, None, cache)  # prefill
    length = T0
    for step in range(cfg.max_new_tokens):
        seen = seqs[:, :length]
        scores = _process(
            logits, seen, None if mask is None else mask[:, :length], step, cfg, eos, sampling
        )
        if sampling:
            probs = scores.softmax(dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_token = scores.argmax(dim=-1)  # (B,)
        next_token = torch.where(unfinished, next_token, pad)
        seqs[:, length] = next_token
        length += 1
        if eos.numel():
            unfinished &= (next_token[:, None] != eos).all(-1)
        if stop is not None:
            unfinished &= ~_stop_string_hits(seqs, T0, length, *stop).to(device)
        if length == total or not bool(unfinished.any()):
            break
        step_mask = None if mask is None else mask[:, :length]
        if window is not None and length > window:  # slide: the last `window` tokens only
            if length == window + 1:
                log.warning(f"generation passed the model's context of {window} tokens: "
                            f"from here each step sees the last {window} (sliding window)")
            start = length - window
            window_mask = None if mask is None else mask[:, start:length]
            logits = _forward_last(model, seqs[:, start:length], window_mask, None, None)
        elif cache is not None:
            logits = _forward_last(model, seqs[:, length - 1 : length], step_mask, next_pos, cache)
            next_pos = next_pos + 1
        else:
            logits = _forward_last(model, seqs[:, :length], step_mask, None, None)
    return seqs[:, :length]


def _draft(seq: list[int], k: int, max_ngram: int = 3) -> list[int]:
    """Prompt lookup: up to k tokens that followed an earlier occurrence of the sequence's
    last n tokens (n = 3, then 2, then 1): the latest occurrence with k tokens after it,
    else the one with the most; [] if the n-gram never occurred before."""
    for n in range(min(max_ngram, len(seq) - 1), 0, -1):
        tail, best = seq[-n:], []
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start : start + n] == tail:
                follow = seq[start + n : start + n + k]
                if len(follow) > len(best):
                    best = follow
                if len(best) == k:
                    break
        if best:
            return best
    return []


def _prompt_lookup(model, input_ids, cfg, eos, stop) -> Tensor:
    """Greedy decoding of one prompt that checks several guessed tokens per forward.

    Decoding one token reads every weight for a handful of flops each, so a forward over
    k + 1 tokens costs about as much as over one. Guess k tokens by copying what followed
    the last n-gram earlier in the text (Saxena 2023, "prompt lookup decoding"), run them
    in one forward, keep the guesses that equal the greedy choice at their position plus
    the greedy token after them, and drop the rest from the cache. The output is the
    greedy output; only the number of forwards changes.
    """
    T0 = input_ids.shape[1]
    total = T0 + cfg.max_new_tokens
    eos_ids = set(eos.tolist())
    seq = input_ids[0].tolist()
    cache = KVCache(model.config.n_layer, capacity=total + cfg.prompt_lookup_tokens)
    logits = _forward_last(model, input_ids, None, None, cache)  # (1, V)
    guess: list[int] = []
    while True:
        # logits (n, V): row i follows seq + the first i accepted guesses
        choices = []
        for i in range(logits.shape[0]):
            scores = _process(logits[i : i + 1], None, None, len(seq) - T0, cfg, eos, False)
            choices.append(int(scores.argmax()))
            seq.append(choices[-1])
            finished = choices[-1] in eos_ids or len(seq) == total
            if stop is not None and not finished:
                finished = bool(_stop_string_hits(torch.tensor([seq]), T0, len(seq), *stop)[0])
            if finished:
                return torch.tensor([seq], device=input_ids.device)
            if i + 1 < logits.shape[0] and guess[i] != choices[-1]:
                break  # the rest of the guesses followed a different token
        past = len(seq) - 1  # the cache holds everything but the newest token
        cache.crop(past + _virtual_tokens(model))
        guess = _draft(seq, min(cfg.prompt_lookup_tokens, total - len(seq) - 1))
        tokens = torch.tensor([[seq[-1], *guess]], device=input_ids.device)
        out = model(tokens, past_key_values=cache, use_cache=True)
        logits = out.logits[0].float()  # (1 + len(guess), V)


def _beam_search(model, input_ids, attention_mask, cfg, eos, pad, stop) -> Tensor:
    """Beam search with transformers' bookkeeping (scores, finishing, early stopping).

    Per prompt: `running` beams (still growing) and `done` hypotheses (finished, scored
    with the length penalty). Each step scores all nb * V continuations, keeps the best
    K = max(2, 1 + n_eos) * nb, continues the best nb of those that did not finish, and
    files the finished ones among the top nb into `done` if they beat what is there.
    """
    B, T0 = input_ids.shape
    nb = cfg.num_beams
    device = input_ids.device
    total = T0 + cfg.max_new_tokens
    K = max(2, 1 + eos.numel()) * nb
    top_nb = torch.arange(K, device=device) < nb  # (K,) rank among candidates < nb

    running = torch.full((B, nb, total), pad, dtype=torch.long, device=device)
    running[:, :, :T0] = input_ids[:, None]
    running_scores = torch.zeros(B, nb, device=device)
    running_scores[:, 1:] = NEG_INF  # all beams start equal: only beam 0 may expand first
    done = running.clone()
    done_scores = torch.full((B, nb), NEG_INF, device=device)
    done_len = torch.zeros((B, nb), dtype=torch.long, device=device)  # generated tokens
    is_done = torch.zeros((B, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((B, 1), dtype=torch.bool, device=device)

    flat_mask = None
    if attention_mask is not None:
        flat_mask = torch.ones((B * nb, total), dtype=torch.long, device=device)
        flat_mask[:, :T0] = attention_mask.repeat_interleave(nb, dim=0)
        next_pos = attention_mask.sum(-1).repeat_interleave(nb)[:, None]  # (B*nb, 1)
    else:
        next_pos = torch.full((B * nb, 1), T0, dtype=torch.long, device=device)
    cache = _new_cache(model, total) if cfg.use_cache else None
    prompt = input_ids.repeat_interleave(nb, dim=0)  # (B*nb, T0)
    prompt_mask = None if flat_mask is None else flat_mask[:, :T0]
    logits = _forward_last(model, prompt, prompt_mask, None, cache)

    for cur in range(T0, total):
        seen = running[:, :, :cur].reshape(B * nb, cur)
        seen_mask = None if flat_mask is None else flat_mask[:, :cur]
        log_probs = F.log_softmax(logits, dim=-1)  # (B*nb, V)
        log_probs = _process(log_probs, seen, seen_mask, cur - T0, cfg, eos, sampling=False)
        V = log_probs.shape[-1]
        log_probs = log_probs.view(B, nb, V) + running_scores[:, :, None]
        cand_scores, cand_idx = torch.topk(log_probs.view(B, nb * V), K)  # (B, K)
        cand_beam, cand_token = cand_idx // V, cand_idx % V
        cand = running.gather(1, cand_beam[:, :, None].expand(B, K, total)).clone()
        cand[:, :, cur] = cand_token

        # Which candidates end here: EOS, a stop string, or the length limit.
        hits = torch.isin(cand_token, eos) | (cur + 1 == total)
        if stop is not None:
            texts = _stop_string_hits(cand.view(B * K, total), T0, cur + 1, *stop)
            hits |= texts.view(B, K).to(device)

        # Continue with the best nb candidates that are still open.
        open_scores = cand_scores + NEG_INF * hits.float()
        keep = torch.topk(open_scores, nb).indices  # (B, nb)
        running = cand.gather(1, keep[:, :, None].expand(B, nb, total))
        running_scores = open_scores.gather(1, keep)
        parent = cand_beam.gather(1, keep)  # which old beam each new one extends

        # File finished candidates (only those ranked in the top nb) into `done`.
        finished_now = hits & top_nb
        final = cand_scores / ((cur + 1 - T0) ** cfg.length_penalty)
        full = is_done.all(-1, keepdim=True) & (cfg.early_stopping is True)
        final = final + NEG_INF * (full | ~improvable | ~finished_now).float()
        merged_scores = torch.cat((done_scores, final), dim=1)  # (B, nb + K)
        best = torch.topk(merged_scores, nb).indices
        done = torch.cat((done, cand), dim=1).gather(1, best[:, :, None].expand(B, nb, total))
        done_scores = merged_scores.gather(1, best)
        new_len = torch.full((B, K), cur + 1 - T0, dtype=torch.long, device=device)
        done_len = torch.cat((done_len, new_len), dim=1).gather(1, best)
        is_done = torch.cat((is_done, finished_now), dim=1).gather(1, best)

        # Could a running beam still beat the worst finished hypothesis?
        if cfg.early_stopping == "never" and cfg.length_penalty > 0:
            best_len = total - T0
        else:
            best_len = cur + 1 - T0
        best_running = running_scores[:, :1] / (best_len**cfg.length_penalty)
        worst_done = torch.where(is_done, done_scores.min(-1, keepdim=True).values, NEG_INF)
        improvable = improvable & (best_running > worst_done).any(-1, keepdim=True)
        all_full = bool(is_done.all()) and cfg.early_stopping is True
        if not bool(improvable.any()) or all_full or bool(hits.all()):
            break

        # Feed the chosen tokens; the cache follows the beams they extend.
        rows = (torch.arange(B, device=device)[:, None] * nb + parent).view(-1)
        step_mask = None if flat_mask is None else flat_mask[:, : cur + 1]
        if cache is not None:
            cache.reorder(rows)
            tokens = running[:, :, cur].reshape(B * nb, 1)
            logits = _forward_last(model, tokens, step_mask, next_pos, cache)
            next_pos = next_pos + 1
        else:
            ids = running[:, :, : cur + 1].reshape(B * nb, cur + 1)
            logits = _forward_last(model, ids, step_mask, None, None)

    n = cfg.num_return_sequences
    out = done[:, :n].reshape(B * n, total)
    return out[:, : T0 + int(done_len[:, :n].max())]
