"""One decoder-only Transformer LM for GPT-1/2/3, Llama 1/2/3, Mistral, Qwen2 and Gemma.

    tokens -> embeddings (+ learned / sinusoidal positions, or RoPE inside attention)
           -> n_layer x Block (causal self-attention + FFN, residuals, pre- or post-LN)
           -> final norm (pre-LN only) -> LM head -> logits over the vocabulary

The families differ only in `ModelConfig` flags. The calling convention follows the
matching `transformers` class (`GPT2LMHeadModel`, `LlamaForCausalLM`, ...):

    out = model(input_ids, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False)
    out.logits            (B, T, V)
    out.past_key_values   a `KVCache` to pass back in for the next tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .heads import LMHead
from .layers import (
    Block,
    KVCache,
    RotaryEmbedding,
    SinusoidalPositions,
    attention_mask_4d,
    init_normal_,
    make_norm,
    positions_from_mask,
)


@dataclass
class CausalLMOutput:
    logits: Tensor  # (B, T, V), or (B, logits_to_keep, V)
    past_key_values: KVCache | None = None
    last_hidden_state: Tensor | None = None  # (B, T, d), after the final norm

    @property
    def cache(self) -> KVCache | None:  # the name transformers >= 5.x uses
        return self.past_key_values


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        d = config.d_model
        self.tok_embed = nn.Embedding(config.vocab_size, d)
        self.pos_embed: nn.Module | None = None
        if config.positions == "learned":
            self.pos_embed = nn.Embedding(config.max_seq_len, d)
        elif config.positions == "sinusoidal":
            self.pos_embed = SinusoidalPositions(config.max_seq_len, d)
        self.rope = None
        if config.positions == "rope":
            self.rope = RotaryEmbedding(config.head_size, config.rope_theta, config.rope_scaling)
        self.embed_scale = math.sqrt(d) if config.embed_scale else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_out = make_norm(config) if config.has_final_norm else nn.Identity()
        tied_to = self.tok_embed if config.tie_embeddings else None
        self.lm_head = LMHead(d, config.vocab_size, tied_to, config.logit_softcap)
        self.init_weights()

    # --- parameters ---------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02) for weights, zero biases, and the two projections that
        write into the residual stream (attention out, FFN fc2) scaled by 1/sqrt(2 n_layer),
        so the residual's variance does not grow with depth."""
        std = self.config.init_std
        init_normal_(self, std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        # zero_init_residual: every block starts as the identity (modded-nanogpt)
        residual_std = 0.0 if self.config.zero_init_residual else std / math.sqrt(
            2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, 0.0, residual_std)
            nn.init.normal_(block.ffn.fc2.weight, 0.0, residual_std)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.tie(self.tok_embed)

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (RoPE frequencies, sinusoid table), e.g. after
        the model was built on the `meta` device and its weights loaded with assign=True."""
        device = self.tok_embed.weight.device
        for module in self.modules():
            if module is not self and hasattr(module, "reset_buffers"):
                module.reset_buffers(device)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count; tied weights count once. `non_embedding` leaves out the token
        and learned position embeddings (the convention of Kaplan et al. and nanoGPT)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embed.weight.numel()
            if isinstance(self.pos_embed, nn.Embedding):
                n -= self.pos_embed.weight.numel()
        return n

    # --- forward ------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        cache: KVCache | None = None,
        segment_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids (B, T); attention_mask (B, past + T), 1 = real token, 0 = padding.

        Without `position_ids`, positions come from the attention mask (left padding:
        the first real token is at position 0), or count up from the cache length.
        `logits_to_keep=n` computes logits for the last n positions only (0 = all).
        `cache` is another name for `past_key_values` (the transformers 5.x spelling).
        `segment_ids` (B, T) marks packed sequences: a token attends only to earlier
        tokens of its own segment (pass each sequence's `position_ids` with it).
        `inputs_embeds` (B, T, d) replaces the token embeddings of `input_ids` (pass None
        for those), taken as already scaled (Gemma's sqrt(d)); positions apply as to
        looked-up ones (prompt tuning prepends learned vectors this way, peft/prompts.py).
        """
        config = self.config
        past_key_values = past_key_values if past_key_values is not None else cache
        B, T = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        device = (input_ids if inputs_embeds is None else inputs_embeds).device
        if use_cache and past_key_values is None:
            past_key_values = KVCache(config.n_layer)
        past = past_key_values.length if past_key_values is not None else 0
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(
                f"attention_mask must be (batch, past + new) = {(B, past + T)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if self.pos_embed is not None and past + T > config.max_seq_len:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than max_seq_len={config.max_seq_len}"
            )
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past, T, device)

        if inputs_embeds is None:
            x = self.tok_embed(input_ids)  # (B, T, d)
            if self.embed_scale is not None:
                x = x * self.embed_scale  # Gemma: embeddings * sqrt(d)
        else:
            x = inputs_embeds  # scaled already (transformers 5: the scale is in the embedding)
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)  # learned or sinusoidal positions
        x = self.drop(x)
        rope = self.rope(position_ids, x.dtype) if self.rope is not None else None
        mask, is_causal = attention_mask_4d(
            attention_mask, past, T, x.device, sliding_window=config.sliding_window,
            segment_ids=segment_ids,
        )

        for i, block in enumerate(self.blocks):
            layer_cache = past_key_values.layers[i] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, is_causal, rope, layer_cache, use_reentrant=False)
            else:
                x = block(x, mask, is_causal, rope, layer_cache)
        x = self.norm_out(x)

        h = x[:, -logits_to_keep:] if logits_to_keep else x
        return CausalLMOutput(
            logits=self.lm_head(h), past_key_values=past_key_values, last_hidden_state=x
        )
