"""XLNet (Yang et al. 2019): a Transformer-XL body with two-stream self-attention.

Permutation language modeling predicts token x_{z_t} of a factorization order z from the
tokens before it in the order, x_{z<t}. One stream cannot do it: a representation that
sees x_{z_t} cannot predict it, and one that does not see it cannot serve the later
tokens. So every layer m keeps two streams over the same weights:

    content stream  h_{z_t}^(m) = Attn(Q = h_{z_t}^(m-1), KV = h_{z<=t}^(m-1))   sees itself
    query stream    g_{z_t}^(m) = Attn(Q = g_{z_t}^(m-1), KV = h_{z<t}^(m-1))    never itself

h^(0) is the token embedding e(x), g^(0) a learned vector w (`mask_emb`); the LM head reads
the query stream, p(x_{z_t} = x | x_{z<t}) = softmax(e(x)^T g_{z_t}^(M) + b). Which keys a
query sees is the permutation mask (perm_mask[b, i, j] = 1: i does not see j); which
positions the query stream runs at is the target mapping (target_mapping[b, k, j] = 1:
the k-th prediction is at position j). Without a target mapping only the content stream
runs (fine-tuning: plain bidirectional attention).

Attention is Transformer-XL's relative attention (Dai et al. 2019) plus XLNet's relative
segment term. For query i and key j at distance i - j, with head vectors q_i, k_j:

    score(i, j) = [ (q_i + u)^T k_j              content           u = r_w_bias
                  + (q_i + v)^T W_r R_{i-j}      position          v = r_r_bias
                  + (q_i + b)^T s_ij ] / sqrt(hs)  segment         b = r_s_bias

R_{i-j} is the sinusoid of the distance (no position table: any length works), and s_ij is
s_+ when i and j are in the same segment, s_- otherwise (`seg_embed`), so segments are
compared, never numbered. Transformer-XL memory: `mems` holds each layer's input hidden
states of the previous segment (B, M, d), read as extra keys every query may see; with
`use_mems` the model returns the next memory (the last mem_len states, no gradient).
`bi_data` (pretraining with both data directions): the first half of the batch reads
distances forwards, the second half backwards.

Shapes: B batch, T tokens, M memory length, S = M + T keys, R = S + T relative distances,
P predictions, n heads, hs head size. Post-LN blocks (attention, FFN) as in BERT.
Weights q, k, v, o, r are stored (d, n, hs) as in the paper's code and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .heads import LMHead
from .layers import FeedForward, LayerNorm


@dataclass
class XLNetOutput:
    last_hidden_state: Tensor  # content stream (B, T, d); query stream (B, P, d) if predicting
    logits: Tensor | None = None  # (B, T or P, V)
    mems: list[Tensor] | None = None  # per layer (B, M', d): the next segment's memory


def relative_positions(qlen: int, klen: int, d: int, bi_data: bool, batch: int,
                       device=None) -> Tensor:
    """(1 or B, klen + qlen, d): sinusoids of the distances klen, klen - 1, ..., 1 - qlen.

    R_p = [sin(p / 10000^(2i/d)), cos(p / 10000^(2i/d))] (sines first, then cosines). With
    bi_data the second half of the batch gets the negated distances.
    """
    inv_freq = 1.0 / torch.pow(10000, torch.arange(0, d, 2.0, device=device) / d)  # (d/2,)

    def sinusoid(pos: Tensor) -> Tensor:
        x = pos[:, None] * inv_freq
        return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)[None]  # (1, R, d)

    fwd = torch.arange(klen, -qlen, -1.0, device=device)
    if not bi_data:
        return sinusoid(fwd)
    if batch % 2:
        raise ValueError(f"bi_data needs an even batch (half forward, half backward), "
                         f"got {batch} rows")
    half = batch // 2
    return torch.cat([sinusoid(fwd).expand(half, -1, -1),
                      sinusoid(-fwd).expand(half, -1, -1)], dim=0)


class TwoStreamAttention(nn.Module):
    """Relative multi-head attention shared by the content and the query stream."""

    def __init__(self, d: int, n_head: int, head_size: int, eps: float, dropout: float):
        super().__init__()
        shape = (d, n_head, head_size)
        self.q, self.k, self.v, self.o, self.r = (
            nn.Parameter(torch.empty(shape)) for _ in range(5))  # r: W_r, positions -> keys
        self.r_w_bias = nn.Parameter(torch.empty(n_head, head_size))  # u (content)
        self.r_r_bias = nn.Parameter(torch.empty(n_head, head_size))  # v (position)
        self.r_s_bias = nn.Parameter(torch.empty(n_head, head_size))  # b (segment)
        self.seg_embed = nn.Parameter(torch.empty(2, n_head, head_size))  # s_+, s_-
        self.norm = LayerNorm(d, eps)
        self.drop = nn.Dropout(dropout)
        self.scale = head_size**-0.5

    def attend(self, q: Tensor, k: Tensor, v: Tensor, kr: Tensor, seg: Tensor | None,
               hidden: Tensor | None) -> Tensor:
        """q (B, T, n, hs) at positions M..M+T-1; k, v (B, S, n, hs); kr (B, R, n, hs);
        seg (B, T, S) True where the segments differ; hidden (B, T, S) True = not seen."""
        T, S = q.shape[1], k.shape[1]
        ac = torch.einsum("bind,bjnd->bnij", q + self.r_w_bias, k)  # content
        bd = torch.einsum("bind,brnd->bnir", q + self.r_r_bias, kr)  # every distance
        # query i (absolute M + i) and key j are M + i - j apart: row T - i + j of kr
        index = torch.arange(S, device=q.device)[None] - torch.arange(T, device=q.device)[:, None]
        bd = bd.gather(-1, (index + T).expand(*bd.shape[:2], T, S))  # (B, n, T, S)
        scores = ac + bd
        if seg is not None:
            ef = torch.einsum("bind,snd->bnis", q + self.r_s_bias, self.seg_embed)
            scores = scores + torch.where(seg[:, None], ef[..., 1:], ef[..., :1])
        scores = scores * self.scale
        if hidden is not None:
            scores = scores.masked_fill(hidden[:, None], torch.finfo(scores.dtype).min)
        probs = self.drop(torch.softmax(scores, dim=-1))
        return torch.einsum("bnij,bjnd->bind", probs, v)  # (B, T, n, hs)

    def project_out(self, x: Tensor, vec: Tensor) -> Tensor:
        """LayerNorm(x + drop(vec W_o)): the post-LN residual of both streams."""
        return self.norm(x + self.drop(torch.einsum("binh,dnh->bid", vec, self.o)))

    def forward(self, h: Tensor, g: Tensor | None, pos: Tensor, seg: Tensor | None,
                hidden_h: Tensor | None, hidden_g: Tensor | None, mem: Tensor | None,
                target_mapping: Tensor | None) -> tuple[Tensor, Tensor | None]:
        keys = h if mem is None else torch.cat([mem, h], dim=1)  # (B, S, d)
        k = torch.einsum("bjd,dnh->bjnh", keys, self.k)
        v = torch.einsum("bjd,dnh->bjnh", keys, self.v)
        kr = torch.einsum("brd,dnh->brnh", pos.to(h.dtype), self.r)
        if kr.shape[0] != h.shape[0]:
            kr = kr.expand(h.shape[0], -1, -1, -1)
        q = torch.einsum("bid,dnh->binh", h, self.q)
        out_h = self.project_out(h, self.attend(q, k, v, kr, seg, hidden_h))
        if g is None:
            return out_h, None
        # Query stream: the P queries are placed at their positions by the target mapping
        # (B, P, T), attend with the permutation mask, and are gathered back.
        qg = torch.einsum("bpnd,bpl->blnd", torch.einsum("bpd,dnh->bpnh", g, self.q),
                          target_mapping)
        vec = self.attend(qg, k, v, kr, seg, hidden_g)
        vec = torch.einsum("blnd,bpl->bpnd", vec, target_mapping)
        return out_h, self.project_out(g, vec)


class XLNetBlock(nn.Module):
    """Two-stream attention, then the same FFN on each stream: x = LN(x + FFN(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.attn = TwoStreamAttention(d, config.n_head, config.head_size, config.norm_eps,
                                       config.dropout)
        self.ffn = FeedForward(d, config.ffn_size, config.activation, bias=True,
                               dropout=config.dropout)
        self.ffn_norm = LayerNorm(d, config.norm_eps)

    def forward(self, h, g, pos, seg, hidden_h, hidden_g, mem, target_mapping):
        h, g = self.attn(h, g, pos, seg, hidden_h, hidden_g, mem, target_mapping)
        h = self.ffn_norm(h + self.ffn(h))
        if g is not None:
            g = self.ffn_norm(g + self.ffn(g))
        return h, g


class XLNet(nn.Module):
    """XLNet body + LM head (transformers' XLNetLMHeadModel).

        out = model(input_ids, attention_mask=None, token_type_ids=None, perm_mask=None,
                    target_mapping=None, mems=None, use_mems=False)
        out.logits (B, T, V), or (B, P, V) from the query stream with a target mapping
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        d = config.d_model
        self.tok_embed = nn.Embedding(config.vocab_size, d)
        self.mask_emb = nn.Parameter(torch.empty(1, 1, d))  # w: the query stream's g^(0)
        self.blocks = nn.ModuleList(XLNetBlock(config) for _ in range(config.n_layer))
        self.drop = nn.Dropout(config.dropout)
        tied_to = self.tok_embed if config.tie_embeddings else None
        self.lm_head = LMHead(d, config.vocab_size, tied_to)
        self.lm_bias = nn.Parameter(torch.zeros(config.vocab_size))  # b of the softmax
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for every weight, the attention biases u, v, b, the segment
        vectors and w (as transformers' XLNet); zero Linear biases and b; LayerNorm 1 / 0."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("norm.bias", "fc1.bias", "fc2.bias")) or name == "lm_bias":
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.tie(self.tok_embed)

    def reset_buffers(self) -> None:
        """No buffers (positions are computed per call); here for `load_hf`'s protocol."""

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embed.weight.numel() if non_embedding else n

    # --- forward ------------------------------------------------------------------------

    def forward(self, input_ids: Tensor | None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, perm_mask: Tensor | None = None,
                target_mapping: Tensor | None = None, mems: list[Tensor] | None = None,
                use_mems: bool = False, inputs_embeds: Tensor | None = None) -> XLNetOutput:
        x, new_mems = self.encode(input_ids, attention_mask, token_type_ids, perm_mask,
                                  target_mapping, mems, use_mems, inputs_embeds)
        return XLNetOutput(x, self.lm_head(x) + self.lm_bias, new_mems)

    def encode(self, input_ids: Tensor | None, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None, perm_mask: Tensor | None = None,
               target_mapping: Tensor | None = None, mems: list[Tensor] | None = None,
               use_mems: bool = False, inputs_embeds: Tensor | None = None,
               ) -> tuple[Tensor, list[Tensor] | None]:
        """(final query stream (B, P, d) with a target mapping, else the content stream
        (B, T, d); the next memory when use_mems). attention_mask (B, T): 1 = real token;
        perm_mask (B, T, T): 1 where query i may not see key j; target_mapping (B, P, T);
        token_type_ids (B, T): segment ids, only compared (memory counts as segment 0)."""
        config = self.config
        x = self.tok_embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        M = mems[0].shape[1] if mems else 0
        device = x.device

        # Which keys each query may not see (B, T, S): padding, then the permutation mask.
        hidden = None
        if attention_mask is not None:
            hidden = (attention_mask == 0)[:, None, :].expand(B, T, T)
        if perm_mask is not None:
            hidden = perm_mask > 0 if hidden is None else hidden | (perm_mask > 0)
        hidden_h = hidden_g = None
        if hidden is not None:
            if M:  # the memory is seen by everyone
                hidden = torch.cat([hidden.new_zeros(B, T, M), hidden], dim=2)
            hidden_g = hidden  # query stream: never itself (perm_mask hides the diagonal)
            own = torch.eye(T, dtype=torch.bool, device=device)
            own = torch.cat([own.new_zeros(T, M), own], dim=1)
            hidden_h = hidden & ~own  # content stream: always itself
        seg = None
        if token_type_ids is not None:
            keys = token_type_ids
            if M:
                keys = torch.cat([token_type_ids.new_zeros(B, M), token_type_ids], dim=1)
            seg = token_type_ids[:, :, None] != keys[:, None, :]  # (B, T, S): s_- if True
        pos = self.drop(relative_positions(T, M + T, config.d_model, config.bi_data, B, device))

        h = self.drop(x)
        g = None
        if target_mapping is not None:
            g = self.drop(self.mask_emb.expand(B, target_mapping.shape[1], -1))
        new_mems = [] if use_mems else None
        for i, block in enumerate(self.blocks):
            mem = mems[i] if mems else None
            if use_mems:  # Transformer-XL: this layer's input, kept for the next segment
                cached = h if mem is None else torch.cat([mem, h], dim=1)
                keep = config.mem_len or cached.shape[1]
                new_mems.append(cached[:, -keep:].detach())
            args = (h, g, pos, seg, hidden_h, hidden_g, mem, target_mapping)
            if self.gradient_checkpointing and self.training:
                h, g = checkpoint(block, *args, use_reentrant=False)
            else:
                h, g = block(*args)
        return self.drop(g if g is not None else h), new_mems
