"""Continuous prompts: prompt tuning, P-tuning, prefix-tuning (lecture: "Parameter-
efficient fine-tuning"). The pretrained model is frozen; only n virtual tokens are learned.

    prompt tuning (Lester et al. 2021)   n vectors P (n, d) prepended to the input
                                         embeddings: [P; E(x)]
    P-tuning (Liu et al., "GPT Understands, Too")   the same, but P = f(E') comes from a
                                         small prompt encoder f (MLP, or a bidirectional
                                         LSTM + MLP) over n learned inputs E'
    prefix-tuning (Li & Liang 2021)      in every layer l, n extra key and value rows
                                         [K_l^P; K] and [V_l^P; V] that every real token
                                         attends to; trained through an MLP
                                         P = W2 tanh(W1 E' + b1) + b2 (n, 2 L d_kv) and
                                         folded into P itself after training (`fold`)

    from lmforge.peft import PeftConfig
    from lmforge.peft import prompts
    model = prompts.apply(model, PeftConfig(method="prefix", num_virtual_tokens=20))

`apply` works in place: the learned module is `prompt_encoder` on the model (on the
backbone of a TaskModel), the model's class becomes its `Virtual*` subclass below, and the
base's state-dict keys are unchanged. Callers keep passing real tokens only: masks,
positions and outputs are (B, T) as for the base model; the virtual tokens are handled
inside. Everything follows the `peft` library, so that an adapter exported with
lmforge/interop/peft_prompts.py gives the same logits under `peft.PeftModel`:

- the virtual tokens come first and take positions 0 .. n-1 (prompt / P-tuning: they are
  tokens; prefix: they sit in the KV cache), so the real tokens' positions start at n
  and n + length must fit a learned-position context (`check_length`);
- the attention mask gains n ones in front: every real token sees every virtual one
  (causal among the real tokens in a decoder);
- the outputs drop the virtual positions (logits, hidden states), except the pooler of an
  encoder, which reads position 0 as in transformers: the first virtual token (and so does
  a TaskModel's "first" pooling; "last" and "eos" read the last real / EOS token);
- encoder-decoders: prompt / P-tuning prepend to the encoder input (the decoder reads
  the n extra memory rows); prefix-tuning adds prefixes to the decoder's self-attention
  only, laid out as peft lays them out (see `PrefixEncoder.layer_kv`);
- with a KV cache, the virtual tokens enter the cache on the first forward; generation
  with and without the cache gives the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.decoder import CausalLMOutput, Decoder
from ..models.encoder import Encoder, EncoderOutput, roberta_positions
from ..models.layers import KVBuffer, KVCache
from ..models.seq2seq import Seq2Seq, Seq2SeqCache
from .config import PeftConfig

METHODS = ("prompt", "prefix", "ptuning")

# ----------------------------------------------------------------------------------------
# The learned modules (names of their parameters as in peft's prompt encoders)


class SoftPrompt(nn.Module):
    """Prompt tuning: the prompt P (n, d) is a parameter, prepended as it is. (A P-tuning
    prompt read back from a peft adapter is one too: peft saves only the encoder's output.)"""

    def __init__(self, n: int, d: int, init: Tensor | None = None, method: str = "prompt"):
        super().__init__()
        self.num_virtual_tokens, self.method = n, method
        self.embedding = nn.Embedding(n, d)  # N(0, 1), peft's RANDOM init
        if init is not None:  # peft's SAMPLE_VOCAB: embeddings of random vocabulary tokens
            with torch.no_grad():
                self.embedding.weight.copy_(init)

    def forward(self) -> Tensor:
        return self.embedding.weight  # (n, d)


class PromptEncoder(nn.Module):
    """P-tuning: P = f(E') with E' (n, d) learned and f a prompt encoder (peft's layout):

        mlp:   f(e) = W3 relu(W2 relu(W1 e))                    (d -> h -> h -> d)
        lstm:  f(e) = W2 relu(W1 BiLSTM(e))                     (2 layers, h per direction)

    The LSTM reads the n inputs as a sequence, so the prompt vectors depend on each other.
    """

    method = "ptuning"

    def __init__(self, n: int, d: int, hidden: int, kind: str = "mlp"):
        super().__init__()
        self.num_virtual_tokens, self.kind = n, kind
        self.embedding = nn.Embedding(n, d)
        if kind == "lstm":
            self.lstm_head = nn.LSTM(d, hidden, num_layers=2, bidirectional=True,
                                     batch_first=True)  # fmt: skip
            self.mlp_head = nn.Sequential(
                nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, d)
            )
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                nn.Linear(hidden, d),
            )  # fmt: skip

    def forward(self) -> Tensor:
        e = self.embedding.weight[None]  # (1, n, d)
        if self.kind == "lstm":
            e = self.lstm_head(e)[0]  # (1, n, 2h)
        return self.mlp_head(e)[0]  # (n, d)


class PrefixEncoder(nn.Module):
    """Prefix-tuning: per virtual token, the keys and values of every layer, (n, 2 L d_kv).

    Trained reparameterized (Li & Liang: optimizing P directly is unstable):
        P = W2 tanh(W1 E' + b1) + b2,   E' (n, d_kv), W1 (h, d_kv), W2 (2 L d_kv, h)
    `fold()` replaces E' and the MLP by the resulting P (what peft saves and loads).
    """

    method = "prefix"

    def __init__(self, n: int, n_layer: int, n_kv_head: int, head_dim: int, hidden: int,
                 seq2seq: bool = False):  # fmt: skip
        super().__init__()
        self.num_virtual_tokens, self.n_layer = n, n_layer
        self.n_kv_head, self.head_dim, self.seq2seq = n_kv_head, head_dim, seq2seq
        kv = n_kv_head * head_dim
        self.embedding = nn.Embedding(n, kv)
        self.transform: nn.Sequential | None = nn.Sequential(
            nn.Linear(kv, hidden), nn.Tanh(), nn.Linear(hidden, n_layer * 2 * kv)
        )

    @property
    def folded(self) -> bool:
        return self.transform is None

    def forward(self) -> Tensor:
        if self.transform is None:
            return self.embedding.weight  # (n, 2 L d_kv)
        return self.transform(self.embedding.weight)

    @torch.no_grad()
    def fold(self) -> None:
        prefix = self.forward()
        self.transform = None
        self.embedding = nn.Embedding(*prefix.shape, device=prefix.device, dtype=prefix.dtype)
        self.embedding.weight.copy_(prefix)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A folded prefix's state (embedding (n, 2 L d_kv), no MLP) folds this one first."""
        weight = state_dict.get(prefix + "embedding.weight")
        mlp = any(k.startswith(prefix + "transform.") for k in state_dict)
        if weight is not None and not mlp and not self.folded:
            self.fold()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def layer_kv(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        """(K_l, V_l), each (batch, nkv, n, hs), for each layer l that gets a prefix.

        The row of a virtual token is [layer 0: K, V; layer 1: K, V; ...], each K / V the
        heads side by side (peft's view(n, 2L, nkv, hs)). Decoders: layer l reads rows
        2l, 2l+1. Encoder-decoders, as peft 0.21 builds its cache for them: the row list is
        doubled and cut in fours, (self K, self V, cross K, cross V) per decoder layer, and
        the cross-attention part is dropped: decoder layer l reads rows 4l, 4l+1 (mod 2L).
        """
        n = self.num_virtual_tokens
        rows = self.forward().view(n, 2 * self.n_layer, self.n_kv_head, self.head_dim)
        rows = rows.permute(1, 2, 0, 3)  # (2L, nkv, n, hs)
        step, n_rows = (4 if self.seq2seq else 2), 2 * self.n_layer
        out = []
        for layer in range(self.n_layer):
            k, v = rows[(step * layer) % n_rows], rows[(step * layer + 1) % n_rows]
            out.append((k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)))
        return out


def _fill(model: nn.Module, buffers: list[KVBuffer], batch: int) -> None:
    """Write each layer's prefix into its (empty) cache buffer: positions 0 .. n-1."""
    if model.training and (model.config.gradient_checkpointing
                           or getattr(model, "gradient_checkpointing", False)):  # fmt: skip
        raise ConfigError("peft.method prefix: does not work with activation checkpointing "
                          "(the prefix lives in the KV cache)")  # fmt: skip
    dtype = model.tok_embed.weight.dtype
    for buffer, (k, v) in zip(buffers, model.prompt_encoder.layer_kv(batch), strict=True):
        buffer.update(k.to(dtype), v.to(dtype))


def _token_embeds(body: nn.Module, input_ids: Tensor) -> Tensor:
    """E(x) as the model uses it: Gemma / BART scale_embedding multiply by sqrt(d). The
    prompt joins them unscaled, as peft's (transformers 5 scales inside the embedding)."""
    x = body.tok_embed(input_ids)
    scale = getattr(body, "embed_scale", None)
    return x if scale is None else x * scale


def _extend(mask: Tensor | None, n: int) -> Tensor | None:
    """(B, S) -> (B, n + S): the virtual tokens are always real (ones in front)."""
    if mask is None:
        return None
    return torch.cat((mask.new_ones(mask.shape[0], n), mask), dim=1)


def _prepend(pe: nn.Module, embeds: Tensor) -> Tensor:
    """[P; E(x)]: the prompt (n, d) before every row of embeds (B, T, d)."""
    prompt = pe().to(embeds.dtype)
    return torch.cat((prompt.expand(embeds.shape[0], -1, -1), embeds), dim=1)


def _virtual_positions(position_ids: Tensor | None, n: int, start: int = 0) -> Tensor | None:
    """Given positions of the real tokens: virtual tokens at start .. start + n-1, real +n."""
    if position_ids is None:
        return None
    virtual = torch.arange(start, start + n, device=position_ids.device)
    return torch.cat((virtual.expand(position_ids.shape[0], n), position_ids + n), dim=1)


# ----------------------------------------------------------------------------------------
# The models with virtual tokens (apply() swaps a model's class to one of these)


class VirtualDecoder(Decoder):
    """A Decoder whose `prompt_encoder` adds n virtual tokens; see the module docstring."""

    prompt_encoder: nn.Module

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_encoder.num_virtual_tokens

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False, logits_to_keep=0, cache=None,
                segment_ids=None, inputs_embeds=None) -> CausalLMOutput:  # fmt: skip
        pe, n = self.prompt_encoder, self.num_virtual_tokens
        if segment_ids is not None:
            raise ConfigError("peft: packed sequences (segment_ids) cannot share one set of "
                              "virtual tokens; turn packing off")  # fmt: skip
        cache = past_key_values if past_key_values is not None else cache
        B, T = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        attention_mask = _extend(attention_mask, n)
        if pe.method == "prefix":
            own = cache is None
            cache = KVCache(self.config.n_layer) if own else cache
            if cache.length == 0:  # the prefix goes in first: positions 0 .. n-1
                _fill(self, cache.layers, B)
            if position_ids is not None:
                position_ids = position_ids + n
            out = super().forward(input_ids, attention_mask, position_ids, cache, True,
                                  logits_to_keep, inputs_embeds=inputs_embeds)  # fmt: skip
            if own and not use_cache:
                out.past_key_values = None
            return out
        if cache is not None and cache.length:  # the virtual tokens are in the cache
            position_ids = None if position_ids is None else position_ids + n
            return super().forward(input_ids, attention_mask, position_ids, cache, use_cache,
                                   logits_to_keep, inputs_embeds=inputs_embeds)  # fmt: skip
        embeds = _token_embeds(self, input_ids) if inputs_embeds is None else inputs_embeds
        out = super().forward(
            None, attention_mask, _virtual_positions(position_ids, n), cache, use_cache,
            logits_to_keep or T, inputs_embeds=_prepend(pe, embeds),
        )  # fmt: skip
        out.last_hidden_state = out.last_hidden_state[:, n:]
        return out


class VirtualEncoder(Encoder):
    """An Encoder whose `prompt_encoder` adds n virtual tokens; see the module docstring."""

    prompt_encoder: nn.Module

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_encoder.num_virtual_tokens

    def _encode_all(self, input_ids, attention_mask, token_type_ids, position_ids,
                    inputs_embeds) -> Tensor:  # fmt: skip
        """Hidden states of the virtual tokens too (prompt / P-tuning): (B, n + T, d)."""
        pe, n, config = self.prompt_encoder, self.num_virtual_tokens, self.config
        B = (input_ids if inputs_embeds is None else inputs_embeds).shape[0]
        attention_mask = _extend(attention_mask, n)
        if pe.method == "prefix":
            cache = KVCache(config.n_layer)
            _fill(self, cache.layers, B)
            position_ids = None if position_ids is None else position_ids + n
            return Encoder.encode(self, input_ids, attention_mask, token_type_ids,
                                  position_ids, inputs_embeds, cache)  # fmt: skip
        if token_type_ids is not None:  # the virtual tokens are segment A
            token_type_ids = torch.cat((token_type_ids.new_zeros(B, n), token_type_ids), dim=1)
        start = 0 if config.position_offset is None else config.pad_token_id + 1
        if position_ids is None and input_ids is not None and config.position_offset is not None:
            position_ids = roberta_positions(input_ids, config.pad_token_id)
        embeds = _token_embeds(self, input_ids) if inputs_embeds is None else inputs_embeds
        return Encoder.encode(self, None, attention_mask, token_type_ids,
                              _virtual_positions(position_ids, n, start), _prepend(pe, embeds))

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               inputs_embeds=None, past_key_values=None) -> Tensor:  # fmt: skip
        if past_key_values is not None:
            raise ValueError("a prompt-tuned encoder makes its own past_key_values")
        x = self._encode_all(input_ids, attention_mask, token_type_ids, position_ids,
                             inputs_embeds)  # fmt: skip
        return x if self.prompt_encoder.method == "prefix" else x[:, self.num_virtual_tokens :]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None,
                past_key_values=None) -> EncoderOutput:  # fmt: skip
        if past_key_values is not None:
            raise ValueError("a prompt-tuned encoder makes its own past_key_values")
        x = self._encode_all(input_ids, attention_mask, token_type_ids, position_ids,
                             inputs_embeds)  # fmt: skip
        out = self.heads(x)  # the pooler reads position 0: the first virtual token (as peft)
        if self.prompt_encoder.method != "prefix":
            n = self.num_virtual_tokens
            out.virtual_hidden_state = x[:, :n]  # "first" pooling reads these (peft)
            out.last_hidden_state = out.last_hidden_state[:, n:]
            for name in ("logits", "prediction_logits"):
                if getattr(out, name) is not None:
                    setattr(out, name, getattr(out, name)[:, n:])
        return out


class VirtualSeq2Seq(Seq2Seq):
    """A Seq2Seq whose `prompt_encoder` adds n virtual tokens; see the module docstring."""

    prompt_encoder: nn.Module

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_encoder.num_virtual_tokens

    def encode(self, input_ids, attention_mask=None, inputs_embeds=None) -> EncoderOutput:
        """The memory; with prompt / P-tuning it holds the n virtual tokens first."""
        pe, n = self.prompt_encoder, self.num_virtual_tokens
        if pe.method == "prefix":  # peft: no prefix in the encoder
            return super().encode(input_ids, attention_mask, inputs_embeds)
        embeds = _token_embeds(self, input_ids) if inputs_embeds is None else inputs_embeds
        return super().encode(None, _extend(attention_mask, n), _prepend(pe, embeds))

    def decode(self, decoder_input_ids, memory, attention_mask=None,
               decoder_attention_mask=None, cache=None) -> Tensor:  # fmt: skip
        pe, n = self.prompt_encoder, self.num_virtual_tokens
        if pe.method != "prefix":
            if attention_mask is not None and attention_mask.shape[1] + n == memory.shape[1]:
                attention_mask = _extend(attention_mask, n)  # a mask of the real source
            return super().decode(decoder_input_ids, memory, attention_mask,
                                  decoder_attention_mask, cache)  # fmt: skip
        if cache is None:
            cache = Seq2SeqCache(self.config.decoder_layers)
        if cache.length == 0:
            _fill(self, cache.self_attn.layers, decoder_input_ids.shape[0])
        return super().decode(decoder_input_ids, memory, attention_mask,
                              _extend(decoder_attention_mask, n), cache)  # fmt: skip


VIRTUAL = {Decoder: VirtualDecoder, Encoder: VirtualEncoder, Seq2Seq: VirtualSeq2Seq}


# ----------------------------------------------------------------------------------------
# apply / fold / checks


def _body(model: nn.Module) -> nn.Module:
    """The model that gets the virtual tokens: a TaskModel's backbone, or the model."""
    return getattr(model, "backbone", model)


def _learned_positions(config) -> bool:
    return config.arch in ("encoder", "seq2seq") and config.positions == "learned" or (
        config.arch == "decoder" and config.positions in ("learned", "sinusoidal")
    )


def _trainable(name: str, modules_to_save: list[str] | None, has_head: bool) -> bool:
    if modules_to_save is None:
        return has_head and not name.startswith("backbone.")
    return any(name == m or name.startswith(m + ".") or f".{m}." in f".{name}"
               for m in modules_to_save)  # fmt: skip


def make_prompt_encoder(body: nn.Module, cfg: PeftConfig) -> nn.Module:
    """The method's learned module for `body` (a Decoder, Encoder or Seq2Seq)."""
    config, n = body.config, cfg.num_virtual_tokens
    d = body.tok_embed.weight.shape[1]
    if cfg.method == "prompt":
        init = None
        if cfg.prompt_init == "vocab":
            ids = torch.randint(0, body.tok_embed.num_embeddings, (n,))
            init = _token_embeds(body, ids).detach().float()
        return SoftPrompt(n, d, init)
    if cfg.method == "ptuning":
        return PromptEncoder(n, d, cfg.encoder_hidden, cfg.prompt_encoder)
    if config.arch == "seq2seq":
        attn = body.decoder_blocks[0].attn
    else:
        attn = body.blocks[0].attn
    return PrefixEncoder(n, config.n_layer, attn.n_kv_head, attn.head_dim, cfg.encoder_hidden,
                         seq2seq=config.arch == "seq2seq")  # fmt: skip


def apply(model: nn.Module, cfg: PeftConfig) -> nn.Module:
    """Freeze `model`, add the method's virtual tokens; returns the same object.

    Trainable afterwards: the prompt encoder, and `cfg.modules_to_save` (None: every
    parameter outside "backbone.", i.e. a TaskModel's head). ConfigError if the method
    cannot apply to this model.
    """
    if cfg.method not in METHODS:
        raise ConfigError(f"peft.method: prompts.apply handles {', '.join(METHODS)}, "
                          f"got {cfg.method!r}")  # fmt: skip
    body = _body(model)
    kind = VIRTUAL.get(type(body))
    if kind is None:
        known = "a virtual-token model already" if isinstance(body, tuple(VIRTUAL.values())) \
            else f"a {type(body).__name__}"
        raise ConfigError(f"peft.method {cfg.method}: needs an lmforge Decoder, Encoder or "
                          f"Seq2Seq body, got {known}")  # fmt: skip
    config, n = body.config, cfg.num_virtual_tokens
    if _learned_positions(config) and n >= config.max_seq_len:
        raise ConfigError(f"peft.num_virtual_tokens: {n} virtual tokens leave no room in the "
                          f"model's context of {config.max_seq_len} positions")  # fmt: skip
    if cfg.method == "prefix":
        if config.gradient_checkpointing or getattr(body, "gradient_checkpointing", False):
            raise ConfigError("peft.method prefix: does not work with activation "
                              "checkpointing (the prefix lives in the KV cache)")  # fmt: skip
        if config.arch == "seq2seq" and config.decoder_layers != config.n_layer:
            raise ConfigError(f"peft.method prefix: needs as many decoder layers as encoder "
                              f"layers (peft's layout), got {config.decoder_layers} and "
                              f"{config.n_layer}")  # fmt: skip
    has_head = body is not model
    for name, p in model.named_parameters():
        p.requires_grad_(_trainable(name, cfg.modules_to_save, has_head))
    pe = make_prompt_encoder(body, cfg).to(body.tok_embed.weight.device)
    body.__class__ = kind
    body.prompt_encoder = pe  # a new submodule: trainable, keys "prompt_encoder.*"
    return model


def prompt_encoder(model: nn.Module) -> nn.Module:
    """The learned module of a model after `apply` (ConfigError if there is none)."""
    pe = getattr(_body(model), "prompt_encoder", None)
    if pe is None:
        raise ConfigError("the model has no prompt / prefix / P-tuning parameters")
    return pe


def fold(model: nn.Module) -> nn.Module:
    """Prefix-tuning: replace the MLP reparameterization by its output P (same logits)."""
    pe = prompt_encoder(model)
    if pe.method != "prefix":
        raise ConfigError(f"fold: only prefix-tuning has a reparameterization, not {pe.method}")
    if not pe.folded:
        trainable = pe.embedding.weight.requires_grad
        pe.fold()
        pe.embedding.weight.requires_grad_(trainable)
    return model


def check_length(model: nn.Module, max_len: int) -> None:
    """ConfigError if n virtual tokens + `max_len` real ones overflow learned positions."""
    body = _body(model)
    n = getattr(body, "num_virtual_tokens", 0)
    config = body.config
    if n and _learned_positions(config) and n + max_len > config.max_seq_len:
        raise ConfigError(
            f"peft.num_virtual_tokens: {n} virtual tokens + {max_len} tokens of input is "
            f"longer than the model's context of {config.max_seq_len} (learned positions)"
        )
