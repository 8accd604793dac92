"""One encoder-decoder Transformer for BART and T5 (lecture: "Encoder-Decoder").

    source -> embeddings -> n_layer x Block (bidirectional self-attention + FFN) -> memory
    target -> embeddings -> n_decoder_layer x DecoderBlock
              (causal self-attention + cross-attention to the memory + FFN) -> LM head

The decoder may have its own head count and FFN width (n_decoder_head, d_decoder_ff;
transformers' BART allows decoder_attention_heads / decoder_ffn_dim != the encoder's).

The families differ only in `ModelConfig` flags:

    family  positions            norm (where)         bias  scale_attention  ffn          head
    bart    learned, offset 2    LayerNorm (post-LN)  yes   1/sqrt(hs)       GELU         tied
            + embed_norm (layernorm_embedding), final_logits_bias, embed_scale (optional)
    t5      relative bias        RMSNorm (pre-LN)     no    none (in init)   ReLU         tied,
            (buckets, computed once per stack)                                            h*d^-0.5
    t5 v1.1 (t5)                                                             gated GELU   untied
    positions="rope" (either family, not an HF layout): rotary q / k in every self-attention
            of both stacks instead of learned positions or the relative bias; cross-attention
            stays position-free (the memory's positions are already in its states)

    init    bart: every weight N(0, init_std).  t5 (scale_attention=False): per-role stds,
            as transformers' T5PreTrainedModel._init_weights (see `init_t5_weights`).

The calling convention and output names follow `transformers`'
BartForConditionalGeneration / T5ForConditionalGeneration:

    out = model(input_ids, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, labels=None, encoder_outputs=None,
                past_key_values=None, use_cache=False)
    out.logits (B, T, V)   out.encoder_last_hidden_state (B, S, d)   out.loss (with labels)
    out.past_key_values    a Seq2SeqCache: decoder self-attention K/V (grows by one token per
                           step) and cross-attention K/V (computed once from the memory)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .encoder import EncoderOutput
from .heads import LMHead
from .layers import (
    Attention,
    Block,
    CrossAttention,
    FeedForward,
    KVCache,
    LayerNorm,
    RelativePositionBias,
    RMSNorm,
    RotaryEmbedding,
    init_normal_,
    make_norm,
)


@dataclass
class Seq2SeqLMOutput:
    logits: Tensor  # (B, T, V)
    loss: Tensor | None = None
    past_key_values: Seq2SeqCache | None = None
    encoder_last_hidden_state: Tensor | None = None  # (B, S, d)
    decoder_last_hidden_state: Tensor | None = None  # (B, T, d), after the final norm


class Seq2SeqCache:
    """Decoder K/V: self-attention (one buffer per layer, appended each step) and
    cross-attention (one per layer, filled on the first step from the memory)."""

    def __init__(self, n_layer: int, capacity: int | None = None):
        self.self_attn = KVCache(n_layer, capacity)
        self.cross_attn = KVCache(n_layer)

    @property
    def length(self) -> int:
        return self.self_attn.length

    def reorder(self, index: Tensor) -> None:
        self.self_attn.reorder(index)
        self.cross_attn.reorder(index)


def shift_right(labels: Tensor, decoder_start_token_id: int, pad_token_id: int) -> Tensor:
    """Decoder inputs from targets: [start, y_1, ..., y_{T-1}], with -100 (ignored) -> pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def additive_mask(allowed: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """SDPA's float mask: bias where allowed, the dtype's minimum elsewhere (as in HF)."""
    if allowed is None:
        return None if bias is None else bias.to(dtype)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return mask if bias is None else mask + bias.to(dtype)


class DecoderBlock(nn.Module):
    """Self-attention (causal), cross-attention (to the memory) and FFN, each residual.

    pre-LN (T5):    x = x + SelfAttn(LN(x));  x = x + CrossAttn(LN(x), m);  x = x + FFN(LN(x))
    post-LN (BART): x = LN(x + SelfAttn(x));  x = LN(x + CrossAttn(x, m));  x = LN(x + FFN(x))
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        scale = None if config.scale_attention else 1.0
        n_head, head_size = config.decoder_heads, config.decoder_head_size  # BART: may differ
        self.attn_norm = make_norm(config)
        self.attn = Attention(
            config.d_model, n_head, None, head_size, qkv_bias=config.bias,
            out_bias=config.bias, dropout=config.dropout, scale=scale,
        )  # fmt: skip
        self.cross_norm = make_norm(config)
        self.cross = CrossAttention(
            config.d_model, n_head, head_size, config.bias, config.dropout, scale
        )
        self.ffn_norm = make_norm(config)
        self.ffn = FeedForward(
            config.d_model, config.decoder_ffn_size, config.activation,
            gated=config.ffn == "gated", bias=config.bias, dropout=config.dropout,
        )  # fmt: skip

    def forward(self, x, memory, self_mask, cross_mask, self_cache=None, cross_cache=None,
                rope=None):  # fmt: skip
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), self_mask, False, rope, self_cache)
            x = x + self.cross(self.cross_norm(x), memory, cross_mask, cross_cache)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, self_mask, False, rope, self_cache))
        x = self.cross_norm(x + self.cross(x, memory, cross_mask, cross_cache))
        return self.ffn_norm(x + self.ffn(x))


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d, V = config.d_model, config.vocab_size
        self.tok_embed = nn.Embedding(V, d)  # shared by encoder, decoder (and tied head)
        self.embed_scale = math.sqrt(d) if config.embed_scale else None
        self.offset = config.position_offset or 0
        learned = config.positions == "learned"
        n_pos = config.max_seq_len + self.offset
        self.enc_pos = nn.Embedding(n_pos, d) if learned else None
        self.dec_pos = nn.Embedding(n_pos, d) if learned else None
        self.enc_rope = self.dec_rope = None
        if config.positions == "rope":  # the stacks' head sizes may differ (BART)
            args = (config.rope_theta, config.rope_scaling)
            self.enc_rope = RotaryEmbedding(config.head_size, *args)
            self.dec_rope = RotaryEmbedding(config.decoder_head_size, *args)
        self.enc_embed_norm = LayerNorm(d, config.norm_eps) if config.embed_norm else None
        self.dec_embed_norm = LayerNorm(d, config.norm_eps) if config.embed_norm else None
        self.enc_rel_bias = self.dec_rel_bias = None
        if config.relative_attention_num_buckets:
            args = (config.relative_attention_num_buckets, config.relative_attention_max_distance)
            self.enc_rel_bias = RelativePositionBias(*args, config.n_head, bidirectional=True)
            self.dec_rel_bias = RelativePositionBias(
                *args, config.decoder_heads, bidirectional=False
            )
        self.drop = nn.Dropout(config.dropout)
        self.encoder_blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.enc_norm_out = make_norm(config) if config.has_final_norm else nn.Identity()
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(config) for _ in range(config.decoder_layers)
        )
        self.dec_norm_out = make_norm(config) if config.has_final_norm else nn.Identity()
        self.lm_head = LMHead(d, V, self.tok_embed if config.tie_embeddings else None)
        if config.final_logits_bias:
            self.register_buffer("logits_bias", torch.zeros(1, V))  # (1, V) as in HF
        else:
            self.logits_bias = None
        self.init_weights()

    # --- parameters ---------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for weights and embeddings, zero biases, norms at 1 / 0 (BART);
        T5's own scheme when attention is unscaled (`init_t5_weights`)."""
        if not self.config.scale_attention:
            self.init_t5_weights()
            return
        std = self.config.init_std
        init_normal_(self, std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)

    @torch.no_grad()
    def init_t5_weights(self) -> None:
        """T5's initialization (Mesh TensorFlow's, as transformers' T5PreTrainedModel
        `_init_weights`), every std times f = `initializer_factor`:

            token embeddings (and the tied head)    N(0, f)
            untied LM head (v1.1)                    N(0, f)         (as transformers)
            attention Wq                             N(0, f (d * d_kv)^-0.5)
            attention Wk, Wv                         N(0, f d^-0.5)
            attention Wo                             N(0, f (n_head * d_kv)^-0.5)
            relative position bias                   N(0, f d^-0.5)
            FFN wi (gated: wi_0 and wi_1)            N(0, f d^-0.5)
            FFN wo                                   N(0, f d_ff^-0.5)
            norm weights                             f (biases, if any, 0)

        Wq's (d * d_kv)^-0.5 is the 1/sqrt(d_kv) that the unscaled attention leaves out;
        the same rules hold for the decoder's cross-attention.
        """
        c, f = self.config, self.config.initializer_factor
        d = c.d_model

        def normal_(weight: Tensor, std: float) -> None:
            nn.init.normal_(weight, 0.0, f * std)

        if not c.tie_embeddings:
            normal_(self.lm_head.weight, 1.0)
        for module in self.modules():
            if isinstance(module, (Attention, CrossAttention)):  # this stack's heads
                hs, inner = module.head_dim, module.n_head * module.head_dim
            if isinstance(module, Attention):  # fused [Wq; Wk; Wv]
                normal_(module.qkv.weight[:inner], (d * hs) ** -0.5)
                normal_(module.qkv.weight[inner:], d**-0.5)
                normal_(module.out.weight, inner**-0.5)
            elif isinstance(module, CrossAttention):  # Wq, [Wk; Wv]
                normal_(module.q.weight, (d * hs) ** -0.5)
                normal_(module.kv.weight, d**-0.5)
                normal_(module.out.weight, inner**-0.5)
            elif isinstance(module, FeedForward):  # fc1 = wi or [wi_0; wi_1], fc2 = wo
                normal_(module.fc1.weight, d**-0.5)
                normal_(module.fc2.weight, module.fc2.weight.shape[1] ** -0.5)  # d_ff^-0.5
            elif isinstance(module, nn.Embedding):  # tokens; relative bias (learned positions)
                normal_(module.weight, 1.0 if module is self.tok_embed else d**-0.5)
            elif isinstance(module, (RMSNorm, LayerNorm)):
                nn.init.constant_(module.weight, f - 1.0 if c.norm_unit_offset else f)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, LayerNorm):
                nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.tie(self.tok_embed)

    def reset_buffers(self) -> None:
        """Recompute the RoPE frequencies (after loading on the meta device); `logits_bias`
        is persistent and loaded with the weights."""
        for rope in (self.enc_rope, self.dec_rope):
            if rope is not None:
                rope.reset_buffers(self.tok_embed.weight.device)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count; tied weights count once. `non_embedding` leaves out the token
        and learned position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embed.weight.numel()
            for emb in (self.enc_pos, self.dec_pos):
                n -= emb.weight.numel() if emb is not None else 0
        return n

    # --- forward ------------------------------------------------------------------------

    def _embed(self, ids: Tensor | None, pos: nn.Embedding | None, norm: nn.Module | None,
               past: int, embeds: Tensor | None = None):  # fmt: skip
        x = self.tok_embed(ids) if embeds is None else embeds  # (B, T, d)
        if self.embed_scale is not None and embeds is None:  # embeds come scaled (as in HF)
            x = x * self.embed_scale  # BART scale_embedding: * sqrt(d)
        if pos is not None:  # BART: learned positions, row = position + offset (2)
            x = x + pos(torch.arange(past, past + x.shape[1], device=x.device) + self.offset)
        if norm is not None:
            x = norm(x)  # BART's layernorm_embedding
        return self.drop(x)

    def encode(self, input_ids: Tensor | None, attention_mask: Tensor | None = None,
               inputs_embeds: Tensor | None = None) -> EncoderOutput:  # fmt: skip
        """The memory: (B, S, d) hidden states of the source (bidirectional attention).
        `inputs_embeds` (B, S, d) replaces the (scaled) token embeddings of `input_ids`
        (prompt tuning prepends learned vectors this way)."""
        B, S = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        if self.enc_pos is not None and S > self.config.max_seq_len:
            raise ValueError(f"source of {S} tokens is longer than max_seq_len")
        x = self._embed(input_ids, self.enc_pos, self.enc_embed_norm, 0, inputs_embeds)
        allowed = None
        if attention_mask is not None and not bool(attention_mask.all()):
            allowed = attention_mask[:, None, None, :].bool()  # (B, 1, 1, S): real keys
        bias = self.enc_rel_bias(0, S, S, x.device) if self.enc_rel_bias is not None else None
        mask = additive_mask(allowed, bias, x.dtype)
        rope = None
        if self.enc_rope is not None:
            rope = self.enc_rope(torch.arange(S, device=x.device)[None], x.dtype)
        for block in self.encoder_blocks:
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, False, rope, use_reentrant=False)
            else:
                x = block(x, mask, False, rope)
        return EncoderOutput(last_hidden_state=self.enc_norm_out(x))

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        cache: Seq2SeqCache | None = None,
    ) -> Tensor:
        """Decoder hidden states (B, T, d) after the final norm, for T new target tokens.

        decoder_attention_mask is (B, past + T); attention_mask (B, S) masks source pads.
        """
        B, T = decoder_input_ids.shape
        past = cache.length if cache is not None else 0
        S = past + T
        if self.dec_pos is not None and S > self.config.max_seq_len:
            raise ValueError(f"target of {S} tokens is longer than max_seq_len")
        x = self._embed(decoder_input_ids, self.dec_pos, self.dec_embed_norm, past)
        q = torch.arange(past, S, device=x.device)[:, None]  # (T, 1) query positions
        allowed = (torch.arange(S, device=x.device)[None, :] <= q)[None, None]  # (1, 1, T, S)
        if decoder_attention_mask is not None:
            allowed = allowed & decoder_attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
        bias = self.dec_rel_bias(past, T, S, x.device) if self.dec_rel_bias is not None else None
        self_mask = additive_mask(allowed, bias, x.dtype)
        cross_allowed = None
        if attention_mask is not None and not bool(attention_mask.all()):
            cross_allowed = attention_mask[:, None, None, :].bool()  # (B, 1, 1, S_src)
        cross_mask = additive_mask(cross_allowed, None, x.dtype)
        rope = None
        if self.dec_rope is not None:
            rope = self.dec_rope(torch.arange(past, S, device=x.device)[None], x.dtype)
        for i, block in enumerate(self.decoder_blocks):
            self_cache = cache.self_attn.layers[i] if cache is not None else None
            cross_cache = cache.cross_attn.layers[i] if cache is not None else None
            args = (x, memory, self_mask, cross_mask, self_cache, cross_cache, rope)
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        return self.dec_norm_out(x)

    def logits(self, h: Tensor) -> Tensor:
        if self.config.scale_decoder_outputs:
            h = h * self.config.d_model**-0.5  # T5: rescale before the tied head
        logits = self.lm_head(h)
        return logits if self.logits_bias is None else logits + self.logits_bias

    def shift_right(self, labels: Tensor) -> Tensor:
        pad = self.config.pad_token_id
        return shift_right(labels, self.config.decoder_start_token_id, 0 if pad is None else pad)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        encoder_outputs: Any = None,
        past_key_values: Seq2SeqCache | None = None,
        use_cache: bool = False,
        cache: Seq2SeqCache | None = None,
    ) -> Seq2SeqLMOutput:
        """input_ids (B, S) source; decoder_input_ids (B, T) target inputs (default:
        shift_right(labels)). `encoder_outputs` (a tensor, an object with
        .last_hidden_state, or a tuple) skips the encoder; `cache` = `past_key_values`."""
        past_key_values = past_key_values if past_key_values is not None else cache
        if encoder_outputs is None:
            memory = self.encode(input_ids, attention_mask).last_hidden_state
        elif isinstance(encoder_outputs, Tensor):
            memory = encoder_outputs
        elif hasattr(encoder_outputs, "last_hidden_state"):
            memory = encoder_outputs.last_hidden_state
        else:
            memory = encoder_outputs[0]
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            decoder_input_ids = self.shift_right(labels)
        if use_cache and past_key_values is None:
            past_key_values = Seq2SeqCache(self.config.decoder_layers)
        h = self.decode(
            decoder_input_ids, memory, attention_mask, decoder_attention_mask, past_key_values
        )
        logits = self.logits(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
            )
        return Seq2SeqLMOutput(
            logits=logits,
            loss=loss,
            past_key_values=past_key_values,
            encoder_last_hidden_state=memory,
            decoder_last_hidden_state=h,
        )
