"""DeBERTa's disentangled attention (He et al. 2021; v2 / v3 layout as transformers'
DebertaV2Model), used by the Encoder when `attention="disentangled"`.

Each token carries its content H_i; positions enter only as relative distances
delta(i, j) = i - j, looked up in one table P (2k, d) of relative embeddings shared by all
layers. With Q^c = H W_q, K^c = H W_k, V^c = H W_v and the projected table
Q^r = P W_{q,r}, K^r = P W_{k,r}:

    A_ij =  Q^c_i . K^c_j                  content-to-content
          + Q^c_i . K^r_{delta(i,j)}       content-to-position  (c2p)
          + K^c_j . Q^r_{delta(i,j)}       position-to-content  (p2c)
    H' = softmax(A / sqrt(s * hs)) V^c,    s = 1 + the number of position terms

(the p2c row index follows transformers / the authors' code: the bucket of i - j.)
`share_att_key` (v2 / v3) projects the table with the content W_q, W_k themselves, so
W_{q,r} = W_q and W_{k,r} = W_k. The table index is delta clipped to [-k, k - 1] and
shifted by k; with `position_buckets` = 2m > 0 distances beyond m fall into log-spaced
buckets up to `max_relative_positions`, so far tokens share rows.

Enhanced mask decoder (EMD, `emd`): absolute positions enter only at the very end. The MLM
head reads the last layer run again -- twice, same weights -- with H^(L-1) as keys and
values and queries I = H^(L-1) + P_abs, then I = the previous output (Encoder.mlm_hidden).

Shapes: B batch, T tokens, nh heads, hs head size, d width, 2k relative rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .layers import FeedForward, make_norm


def log_bucket(rel: Tensor, buckets: int, max_position: int) -> Tensor:
    """DeBERTa's log buckets of distances rel (any shape, integer): with m = buckets // 2,
    |rel| < m is kept exactly; beyond, sign(rel) * (m + ceil(log(|rel| / m) /
    log((max_position - 1) / m) * (m - 1))): log-spaced up to max_position."""
    sign = torch.sign(rel)
    mid = buckets // 2
    near = (rel < mid) & (rel > -mid)
    abs_pos = torch.where(near, torch.full_like(rel, mid - 1), rel.abs())
    # float32 exactly as the authors' code computes it (ceil is sensitive to rounding)
    log_pos = torch.ceil(torch.log(abs_pos / mid)
                         / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, rel.to(log_pos.dtype), log_pos * sign).long()


def relative_index(T: int, config: ModelConfig, device=None) -> Tensor:
    """(T, T): the row of the relative table query i reads for key j,
    clip(bucket(i - j) + k, 0, 2k - 1)."""
    pos = torch.arange(T, device=device)
    rel = pos[:, None] - pos[None, :]  # delta(i, j) = i - j
    if config.position_buckets > 0:
        rel = log_bucket(rel, config.position_buckets,
                         config.max_relative_positions or config.max_seq_len)
    k = config.rel_span
    return (rel + k).clamp(0, 2 * k - 1)


class DisentangledAttention(nn.Module):
    """Multi-head attention with the content-to-position and position-to-content terms."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, nh, hs = config.d_model, config.n_head, config.head_size
        self.n_head, self.head_dim = nh, hs
        self.terms = config.pos_att_terms
        self.q = nn.Linear(d, nh * hs)
        self.k = nn.Linear(d, nh * hs)
        self.v = nn.Linear(d, nh * hs)
        self.out = nn.Linear(nh * hs, d)
        # separate position projections unless share_att_key (v2 / v3 share W_q, W_k)
        self.pos_k = nn.Linear(d, nh * hs) if "c2p" in self.terms and not \
            config.share_att_key else None
        self.pos_q = nn.Linear(d, nh * hs) if "p2c" in self.terms and not \
            config.share_att_key else None
        self.share_att_key = config.share_att_key
        # 1 / sqrt(s * hs): s = 1 + the number of position terms keeps the sum's scale
        self.scale = 1.0 / math.sqrt(hs * (1 + len(self.terms)))
        self.drop = nn.Dropout(config.dropout)
        self.pos_drop = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def heads(self, x: Tensor) -> Tensor:
        """(..., R, nh * hs) -> (..., nh, R, hs)."""
        return x.unflatten(-1, (self.n_head, self.head_dim)).transpose(-3, -2)

    def forward(self, x: Tensor, allowed: Tensor | None, rel_table: Tensor, index: Tensor,
                query: Tensor | None = None) -> Tensor:
        """x (B, T, d): keys and values (and queries unless `query` (B, T, d) is given, as
        in the EMD); allowed (B, 1, T, T) True where i may attend to j, or None;
        rel_table (2k, d) the (normed) relative embeddings; index (T, T) relative_index."""
        query = x if query is None else query
        q = self.heads(self.q(query))  # (B, nh, T, hs)
        k, v = self.heads(self.k(x)), self.heads(self.v(x))
        scores = q @ k.transpose(-1, -2)  # content-to-content (B, nh, T, T)
        rel = self.pos_drop(rel_table)
        T = x.shape[1]
        if "c2p" in self.terms:  # Q^c_i . K^r_{delta(i,j)}
            k_r = self.heads(self.k(rel) if self.share_att_key else self.pos_k(rel))  # (nh,2k,hs)
            c2p = q @ k_r.transpose(-1, -2)  # (B, nh, T, 2k): every relative row
            scores = scores + c2p.gather(-1, index.expand(*c2p.shape[:2], T, T))
        if "p2c" in self.terms:  # K^c_j . Q^r_{delta(i,j)}
            q_r = self.heads(self.q(rel) if self.share_att_key else self.pos_q(rel))
            p2c = k @ q_r.transpose(-1, -2)  # (B, nh, T_key, 2k)
            p2c = p2c.gather(-1, index.t().expand(*p2c.shape[:2], T, T))  # [j, i]
            scores = scores + p2c.transpose(-1, -2)  # [i, j]
        scores = scores * self.scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = self.drop(torch.softmax(scores, dim=-1))
        y = (probs @ v).transpose(1, 2).flatten(2)  # (B, T, nh * hs)
        return self.resid_dropout(self.out(y))


class DisentangledBlock(nn.Module):
    """Post-LN block as BERT's, on disentangled attention; the residual is the query:
    h = LN(query + Attn(x, query)); out = LN(h + FFN(h))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn = DisentangledAttention(config)
        self.attn_norm = make_norm(config)
        self.ffn = FeedForward(config.d_model, config.ffn_size, config.activation,
                               bias=True, dropout=config.dropout)
        self.ffn_norm = make_norm(config)

    def forward(self, x: Tensor, allowed: Tensor | None, rel_table: Tensor, index: Tensor,
                query: Tensor | None = None) -> Tensor:
        residual = x if query is None else query
        h = self.attn_norm(residual + self.attn(x, allowed, rel_table, index, query))
        return self.ffn_norm(h + self.ffn(h))
