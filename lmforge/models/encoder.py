"""One bidirectional Transformer encoder for BERT, RoBERTa, ELECTRA and ALBERT.

    tokens -> token + position + token-type embeddings -> LayerNorm (-> E-to-d projection)
           -> n_layer x Block (bidirectional self-attention + FFN; post-LN as in BERT)
           -> pooler (tanh on [CLS]) and / or a head: MLM, MLM + NSP / SOP, or RTD

The families differ only in `ModelConfig` flags:

    family   position_offset  embedding_size  share_layers  head(s) in pretraining
    bert     -                -               no            MLM + NSP
    roberta  pad_token_id + 1 -               no            MLM (no pooler)
    electra  -                E < d (small)   no            RTD (discriminator), MLM (generator)
    albert   -                E (factorized)  yes           MLM + SOP
    deberta  -                (E, no bias)    no            MLM (+ EMD), or RTD (v3)

DeBERTa (attention="disentangled", models/disentangled.py) changes three things: the
blocks use disentangled attention over one shared relative table (`rel_embed`, optionally
LayerNorm-ed), absolute positions are optional (positions="none": v2 / v3), and the
embedding LayerNorm comes after the E-to-d projection (bias-free), with padding rows
zeroed; `emd` makes the MLM head read the enhanced mask decoder (`mlm_hidden`).

The calling convention and output names follow `transformers`:

    out = model(input_ids, attention_mask=None, token_type_ids=None, position_ids=None)
    out.last_hidden_state (B, T, d)       out.pooler_output (B, d) if the model has a pooler
    encoder_head="mlm":      out.logits (B, T, V)
    encoder_head="mlm_nsp":  out.prediction_logits (B, T, V), out.seq_relationship_logits (B, 2)
    encoder_head="mlm_sop":  out.prediction_logits (B, T, V), out.sop_logits (B, 2)
    encoder_head="rtd":      out.logits (B, T), one replaced-token logit per position
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .config import ModelConfig
from .disentangled import DisentangledBlock, relative_index
from .heads import MLMHead, Pooler, RTDHead, pair_head
from .layers import (
    ACTIVATIONS,
    Block,
    KVCache,
    LayerNorm,
    RotaryEmbedding,
    attention_mask_4d,
    init_normal_,
    make_norm,
)


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, T, d)
    pooler_output: Tensor | None = None  # (B, d)
    logits: Tensor | None = None  # MLM (B, T, V) or RTD (B, T)
    prediction_logits: Tensor | None = None  # MLM logits of the pretraining classes
    seq_relationship_logits: Tensor | None = None  # NSP (B, 2)
    sop_logits: Tensor | None = None  # SOP (B, 2)
    virtual_hidden_state: Tensor | None = None  # (B, n, d) prompt tuning's virtual tokens


def roberta_positions(input_ids: Tensor, pad_token_id: int) -> Tensor:
    """RoBERTa's position ids (fairseq `make_positions`): real tokens count up from
    pad_token_id + 1 and skip pads; pads get pad_token_id (a row never trained)."""
    real = (input_ids != pad_token_id).long()  # (B, T)
    return real.cumsum(-1) * real + pad_token_id


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        E, d = config.embed_size, config.d_model
        self.deberta = config.attention == "disentangled"
        self.tok_embed = nn.Embedding(config.vocab_size, E)
        # DeBERTa v2 / v3 add no absolute positions to the input; the EMD still reads them
        has_pos = config.positions == "learned" or config.emd
        self.pos_embed = nn.Embedding(config.max_seq_len, E) if has_pos else None
        # ModernBERT-style: rotary positions in every attention layer instead of a table
        self.rope = (RotaryEmbedding(config.head_size, config.rope_theta, config.rope_scaling)
                     if config.positions == "rope" and not self.deberta else None)
        n_types = config.type_vocab_size
        self.type_embed = nn.Embedding(n_types, E) if n_types else None
        # DeBERTa normalizes after the projection (over d), BERT-style models before it (E)
        self.embed_norm = LayerNorm(d if self.deberta else E, config.norm_eps)
        # ELECTRA-small / ALBERT: embeddings of size E < d, projected up to the model width.
        self.embed_proj = (nn.Linear(E, d, bias=not self.deberta)
                           if config.embed_size != d or (config.embedding_size is not None
                                                         and not self.deberta) else None)
        self.drop = nn.Dropout(config.dropout)
        # ALBERT shares one block across all layers: n_blocks = 1, applied n_layer times.
        block = DisentangledBlock if self.deberta else Block
        self.blocks = nn.ModuleList(block(config) for _ in range(config.n_blocks))
        if self.deberta:  # the relative table P shared by every layer (2k rows)
            self.rel_embed = nn.Embedding(2 * config.rel_span, d)
            self.rel_norm = LayerNorm(d, config.norm_eps) if config.norm_rel_embed else None
        self.norm_out = make_norm(config) if config.has_final_norm else nn.Identity()
        self.pooler = Pooler(d) if config.pooler else None

        act = ACTIVATIONS[config.activation]
        head = config.encoder_head
        self.mlm_head = None
        if head in ("mlm", "mlm_nsp", "mlm_sop"):
            tied_to = self.tok_embed if config.tie_embeddings else None
            self.mlm_head = MLMHead(d, E, config.vocab_size, tied_to, act, config.norm_eps)
        self.pair_head = pair_head(d) if head in ("mlm_nsp", "mlm_sop") else None
        self.rtd_head = RTDHead(d, act) if head == "rtd" else None
        if self.pair_head is not None and self.pooler is None:
            raise ConfigError(f"model.pooler: encoder_head={head!r} reads the pooled vector")
        self.init_weights()

    # --- parameters ---------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT init: N(0, init_std) for weights and embeddings, zero biases, LayerNorm 1/0."""
        std = self.config.init_std
        init_normal_(self, std)
        if self.mlm_head is not None:
            nn.init.zeros_(self.mlm_head.bias)
            if not self.mlm_head.decoder.tied:
                nn.init.normal_(self.mlm_head.decoder.weight, 0.0, std)

    def tie_weights(self) -> None:
        if self.mlm_head is not None and self.config.tie_embeddings:
            self.mlm_head.decoder.tie(self.tok_embed)

    def reset_buffers(self) -> None:
        """Recompute the RoPE frequencies (after loading on the meta device)."""
        if self.rope is not None:
            self.rope.reset_buffers(self.tok_embed.weight.device)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count; tied and shared weights count once. `non_embedding` leaves out
        the token, position and token-type embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for emb in (self.tok_embed, self.pos_embed, self.type_embed,
                        getattr(self, "rel_embed", None)):
                n -= emb.weight.numel() if emb is not None else 0
        return n

    # --- forward ------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        past_key_values: KVCache | None = None,
    ) -> EncoderOutput:
        """input_ids (B, T); attention_mask (B, T), 1 = real token, 0 = padding;
        token_type_ids (B, T), the segment (0 = A, 1 = B), zeros when not given.
        `inputs_embeds` and `past_key_values`: see `encode`."""
        if self.config.emd and self.mlm_head is not None:
            x, mlm_x = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                                   inputs_embeds, past_key_values, emd=True)
            return self.heads(x, mlm_x)
        x = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                        inputs_embeds, past_key_values)  # fmt: skip
        return self.heads(x)

    def mlm_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                   token_type_ids: Tensor | None = None) -> Tensor:
        """The hidden states the MLM head reads (B, T, d): the final ones, or with `emd`
        the enhanced mask decoder's (the last layer re-run with absolute positions)."""
        if not self.config.emd:
            return self.encode(input_ids, attention_mask, token_type_ids)
        return self.encode(input_ids, attention_mask, token_type_ids, emd=True)[1]

    def heads(self, x: Tensor, mlm_x: Tensor | None = None) -> EncoderOutput:
        """The pooler and the head(s) on final hidden states x (B, T, d); the MLM head
        reads mlm_x (the EMD's output) when given."""
        out = EncoderOutput(last_hidden_state=x)
        if self.pooler is not None:
            out.pooler_output = self.pooler(x)
        head = self.config.encoder_head
        mlm_x = x if mlm_x is None else mlm_x
        if head == "mlm":
            out.logits = self.mlm_head(mlm_x)
        elif head in ("mlm_nsp", "mlm_sop"):
            out.prediction_logits = self.mlm_head(mlm_x)
            pair = self.pair_head(out.pooler_output)
            if head == "mlm_nsp":
                out.seq_relationship_logits = pair
            else:
                out.sop_logits = pair
        elif head == "rtd":
            out.logits = self.rtd_head(x)
        return out

    def encode(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        past_key_values: KVCache | None = None,
        emd: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The final hidden states (B, T, d), no head: for objectives that apply a head to
        some positions only (masked LM scores the ~15% masked ones). With `emd` (DeBERTa):
        (final hidden states, the enhanced mask decoder's output).

        `inputs_embeds` (B, T, E) replaces the token embeddings of `input_ids` (positions
        then count 0 .. T-1, or from pad_token_id + 1 in RoBERTa, as in transformers).
        `past_key_values`: a KVCache holding keys / values every token also attends to
        (prefix-tuning's per-layer prefixes); positions then start after them and
        attention_mask is (B, past + T)."""
        config = self.config
        source = input_ids if inputs_embeds is None else inputs_embeds
        B, T = source.shape[:2]
        past = past_key_values.length if past_key_values is not None else 0
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask must be (batch, past + seq) = {(B, past + T)}, "
                             f"got {tuple(attention_mask.shape)}")  # fmt: skip
        if position_ids is None:
            if config.position_offset is not None and input_ids is not None:
                real = input_ids != config.pad_token_id
                position_ids = roberta_positions(input_ids, config.pad_token_id) + past * real
            else:
                roberta = config.position_offset is not None
                start = past + (config.pad_token_id + 1 if roberta else 0)
                position_ids = torch.arange(start, start + T, device=source.device)[None]  # (1, T)
        if int(position_ids.max()) >= config.max_seq_len:
            raise ValueError(
                f"position {int(position_ids.max())} is beyond max_seq_len={config.max_seq_len}"
            )
        if self.deberta:
            if past_key_values is not None:
                raise ValueError("disentangled attention takes no past_key_values")
            return self._encode_disentangled(input_ids, attention_mask, token_type_ids,
                                             position_ids, inputs_embeds, emd)

        x = self.tok_embed(input_ids) if inputs_embeds is None else inputs_embeds
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)  # (B, T, E)
        if self.type_embed is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros((B, T), dtype=torch.long, device=x.device)
            x = x + self.type_embed(token_type_ids)
        x = self.drop(self.embed_norm(x))
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (B, T, d)
        # Bidirectional: every token sees every real token, before and after it.
        mask, _ = attention_mask_4d(attention_mask, 0, T, x.device, causal=False)
        rope = None
        if self.rope is not None:
            rope = self.rope(position_ids.expand(B, T), x.dtype)

        for i in range(config.n_layer):
            block = self.blocks[0 if config.share_layers else i]
            cache = past_key_values.layers[i] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, False, rope, cache, use_reentrant=False)
            else:
                x = block(x, mask, False, rope, cache)
        return self.norm_out(x)

    def _encode_disentangled(self, input_ids, attention_mask, token_type_ids, position_ids,
                             inputs_embeds, emd: bool):
        """DeBERTa: embeddings (+ absolute positions only if positions="learned") ->
        projection -> LayerNorm -> padding rows zeroed; blocks of disentangled attention
        over the shared relative table; with `emd` also the enhanced mask decoder."""
        config = self.config
        x = self.tok_embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if config.positions == "learned":
            x = x + self.pos_embed(position_ids)
        if self.type_embed is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros((B, T), dtype=torch.long, device=x.device)
            x = x + self.type_embed(token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (B, T, d)
        x = self.embed_norm(x)
        allowed = None
        if attention_mask is not None:
            real = attention_mask.bool()
            x = x * real[..., None].to(x.dtype)  # padding rows are zero
            allowed = (real[:, None, :, None] & real[:, None, None, :])  # (B, 1, T, T)
        x = self.drop(x)
        rel = self.rel_embed.weight  # (2k, d)
        if self.rel_norm is not None:
            rel = self.rel_norm(rel)
        index = relative_index(T, config, x.device)  # (T, T)
        for i, block in enumerate(self.blocks):
            if emd and i == config.n_layer - 1:
                before_last = x  # H^(L-1): the EMD's keys and values
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, allowed, rel, index, use_reentrant=False)
            else:
                x = block(x, allowed, rel, index)
        if not emd:
            return x
        # Enhanced mask decoder: I = H^(L-1) + P_abs, then the last layer twice as a
        # decoder with queries I and keys / values H^(L-1): I <- block_L(H^(L-1), query=I)
        query = before_last + self.pos_embed(position_ids)
        for _ in range(2):
            query = self.blocks[-1](before_last, allowed, rel, index, query)
        return x, query
