"""The Transformer block, piece by piece (lecture: "(Recap) Transformer Block").

    norms        LayerNorm, RMSNorm (and Gemma's (1 + w) variant)
    FFN          two weight matrices with ReLU / GELU, or gated (SwiGLU, GeGLU)
    positions    learned, sinusoidal, rotary (RoPE, with Llama-3 frequency scaling)
    attention    multi-head / grouped-query self-attention on torch SDPA, masks, KV cache
    Block        attention + FFN with residual connections, pre-LN or post-LN

Shapes: B batch, T new tokens, S keys (past + new), nh query heads, nkv key/value heads,
hs head size, d model width. Layers know nothing of models: a model picks and stacks them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

# ----------------------------------------------------------------------------------------
# Normalization


@torch.no_grad()
def init_normal_(model: nn.Module, std: float) -> None:
    """The init every family starts from: N(0, std) for each Linear and Embedding weight,
    zero Linear biases (norms keep their own 1 / 0 init). Models add their own twists."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)


class LayerNorm(nn.Module):
    """LayerNorm(x) = gamma * (x - mu) / sigma + beta, over the last dimension.

    mu = mean_i x_i,  sigma = sqrt(mean_i (x_i - mu)^2 + eps); gamma, beta are learned.
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))  # gamma
        self.bias = nn.Parameter(torch.zeros(d))  # beta

    def forward(self, x: Tensor) -> Tensor:
        # torch's fused kernel computes exactly the formula above.
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm(x) = w * x / sqrt(mean_i x_i^2 + eps): LayerNorm without centring or beta.

    `unit_offset` (Gemma) scales by (1 + w) with w starting at 0. Computed in float32 and
    cast back, as the reference implementations do.
    """

    def __init__(self, d: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(d) if unit_offset else torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x32 * (1.0 + self.weight.float())).type_as(x)
        return self.weight * x32.type_as(x)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return LayerNorm(config.d_model, config.norm_eps)
    return RMSNorm(config.d_model, config.norm_eps, config.norm_unit_offset)


# ----------------------------------------------------------------------------------------
# Feed-forward network

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),  # ReLU^2 (So et al., Primer; modded-nanogpt)
    "gelu": F.gelu,  # exact: x * Phi(x)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new"
    "silu": F.silu,  # x * sigmoid(x), "swish"
}


class FeedForward(nn.Module):
    """FFN(x) = act(x W1) W2, applied to every position separately (lecture).

    Gated (SwiGLU with silu, GeGLU with gelu): FFN(x) = (act(x Wg) * (x Wu)) W2.
    Wg and Wu are stored stacked in `fc1` ([Wg; Wu]) so both come from one matmul.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        gated: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.gated = gated
        self.act = ACTIVATIONS[activation]
        self.fc1 = nn.Linear(d_model, 2 * d_ff if gated else d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)  # (B, T, d_ff) or (B, T, 2 * d_ff)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.fc2(h))


# ----------------------------------------------------------------------------------------
# Positions


def sinusoidal_table(n_pos: int, d: int) -> Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (n_pos, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    table = torch.zeros(n_pos, d)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


class SinusoidalPositions(nn.Module):
    """Fixed positional encodings of "Attention Is All You Need", added to the embeddings."""

    def __init__(self, n_pos: int, d: int):
        super().__init__()
        self.n_pos, self.d = n_pos, d
        self.register_buffer("table", sinusoidal_table(n_pos, d), persistent=False)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        self.table = sinusoidal_table(self.n_pos, self.d).to(device)

    def forward(self, position_ids: Tensor) -> Tensor:
        return self.table[position_ids]  # (B, T, d)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> Tensor:
    """theta_i = theta^(-2i / hs) for i = 0 .. hs/2 - 1: the rotation speed of pair i.

    Llama-3 scaling stretches the context: wavelengths longer than
    original_max_seq_len / low_freq_factor are slowed by `factor`, those shorter than
    original_max_seq_len / high_freq_factor are kept, and the band between is interpolated.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_seq_len"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the low edge, 1 at the high edge
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """RoPE: rotate each (q, k) pair i by the angle pos * theta_i.

    Then q_m . k_n depends on positions only through m - n. Pairs are (x_i, x_{i + hs/2})
    ("rotate half"), the layout of the Hugging Face Llama checkpoints.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling), persistent=False)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        self.inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling).to(device)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        angles = position_ids[..., None].float() * self.inv_freq  # (B, T, hs/2)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, hs)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """[x1; x2] -> [x1 cos - x2 sin; x2 cos + x1 sin] for x (B, nh, T, hs), cos/sin (B, T, hs)."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs): same angle for every head
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def positions_from_mask(attention_mask: Tensor | None, past: int, T: int, device) -> Tensor:
    """Position ids of the T new tokens, (B, T) or (1, T).

    With an attention mask (left padding), a token's position is the number of real
    tokens before it, as in Hugging Face's generate: cumsum(mask) - 1, pads set to 1.
    """
    if attention_mask is None:
        return torch.arange(past, past + T, device=device)[None]  # (1, T)
    position_ids = attention_mask.long().cumsum(-1) - 1  # (B, S)
    position_ids = position_ids.masked_fill(attention_mask == 0, 1)
    return position_ids[:, -T:]


# ----------------------------------------------------------------------------------------
# Attention


class KVBuffer:
    """Keys and values of one attention layer: (B, nkv, capacity, hs), filled left to right.

    `capacity` (if given) preallocates once; otherwise the buffer doubles when full.
    """

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, nkv, T, hs); return all keys and values so far (B, nkv, S, hs)."""
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            self._grow(k, end)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, k: Tensor, needed: int) -> None:
        old = 0 if self.k is None else self.k.shape[2]
        size = max(needed, self.capacity or 0, 2 * old)
        shape = (k.shape[0], k.shape[1], size, k.shape[3])
        new_k, new_v = k.new_zeros(shape), k.new_zeros(shape)
        if self.k is not None:
            new_k[:, :, : self.length] = self.k[:, :, : self.length]
            new_v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = new_k, new_v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search picks which beams continue)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)

    def crop(self, length: int) -> None:
        """Forget everything after the first `length` positions (rejected draft tokens)."""
        self.length = min(self.length, length)


class KVCache:
    """One `KVBuffer` per layer. Inference only: buffers are written in place."""

    def __init__(self, n_layer: int, capacity: int | None = None):
        self.layers = [KVBuffer(capacity) for _ in range(n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index: Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)

    def crop(self, length: int) -> None:
        for layer in self.layers:
            layer.crop(length)


def attention_mask_4d(
    attention_mask: Tensor | None,
    past: int,
    T: int,
    device: torch.device | str | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    segment_ids: Tensor | None = None,
) -> tuple[Tensor | None, bool]:
    """Turn a (B, S) padding mask (1 = real token) into SDPA's (mask, is_causal).

    The mask is boolean (B, 1, T, S), True where query t may attend to key s:
        causal:          s <= t            (t counts past tokens too)
        sliding window:  s > t - window    (Mistral: only the last `window` keys)
        padding:         key s is a real token
        segments:        segment_ids[s] == segment_ids[t]   (packed sequences: a token
                         sees only its own sequence, a block-diagonal causal mask)
    Where no mask is needed it returns None (with is_causal=True for a plain causal prefill),
    which lets SDPA use its fastest kernels.
    """
    S = past + T
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not causal:
        if not padded:
            return None, False
        return attention_mask[:, None, None, :].bool(), False  # (B, 1, 1, S)
    windowed = sliding_window is not None and S > sliding_window
    if segment_ids is not None:
        if past or segment_ids.shape[-1] != S:
            raise ValueError("segment_ids need the whole sequence (no KV cache): "
                             f"{tuple(segment_ids.shape)} for {S} keys")
        padded = True  # the segments make the mask per row
        same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, S)
        attention_mask = attention_mask if attention_mask is not None else \
            torch.ones_like(segment_ids)
    if not padded and not windowed and (past == 0 or T == 1):
        return None, T > 1  # a single new token may see every cached key
    q = torch.arange(past, S, device=device)[:, None]  # (T, 1) query positions
    k = torch.arange(S, device=device)[None, :]  # (1, S) key positions
    allowed = k <= q  # (T, S)
    if windowed:
        allowed = allowed & (k > q - sliding_window)
    allowed = allowed[None]  # (1, T, S)
    if padded:
        allowed = allowed & attention_mask[:, None, :].bool()  # (B, T, S)
        if segment_ids is not None:
            allowed = allowed & same
        # Every query sees at least itself, so rows of pad queries are never empty (NaN on
        # some kernels); their outputs are never read by real tokens.
        allowed = allowed | (k == q)
    return allowed[:, None], False  # (B, 1, T, S)


class Attention(nn.Module):
    """Multi-head self-attention: head_i = softmax(Q_i K_i^T / sqrt(hs) + mask) V_i.

    Q = x Wq, K = x Wk, V = x Wv come from one fused matmul (`qkv`); the heads are
    concatenated and projected back by `out`. With nkv < nh key/value heads, each group of
    nh / nkv query heads shares one K/V head (grouped-query attention; nkv = 1 is
    multi-query attention).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.scale = scale  # None = 1 / sqrt(hs); T5 uses 1.0
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = head_dim or d_model // n_head
        self.dropout = dropout
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.split_sizes = (q_size, kv_size, kv_size)
        self.qkv = nn.Linear(d_model, q_size + 2 * kv_size, bias=qkv_bias)
        self.out = nn.Linear(q_size, d_model, bias=out_bias)
        self.resid_dropout = nn.Dropout(dropout)
        # QK-norm: q and k of every head scaled to unit RMS (times a learned gain), so the
        # attention logits q.k / sqrt(hs) stay bounded however large the weights grow
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVBuffer | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nkv, S, hs)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # heads side by side
        return self.resid_dropout(self.out(y))


# ----------------------------------------------------------------------------------------
# The block


class Block(nn.Module):
    """Attention and FFN sublayers, each wrapped in a residual connection y = x + f(x).

    pre-LN  (GPT-2 onwards):  x = x + Attn(LN(x));  x = x + FFN(LN(x))
    post-LN (GPT-1, 2017):    x = LN(x + Attn(x));  x = LN(x + FFN(x))
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attn_norm = make_norm(config)
        self.attn = Attention(
            config.d_model,
            config.n_head,
            config.kv_heads,
            config.head_size,
            qkv_bias=config.has_qkv_bias,
            out_bias=config.bias,
            dropout=config.dropout,
            scale=None if config.scale_attention else 1.0,
            qk_norm=config.qk_norm,
            norm_eps=config.norm_eps,
        )
        self.ffn_norm = make_norm(config)
        self.ffn = FeedForward(
            config.d_model,
            config.ffn_size,
            config.activation,
            gated=config.ffn == "gated",
            bias=config.bias,
            dropout=config.dropout,
        )

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVBuffer | None = None,
    ) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), mask, is_causal, rope, cache)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, mask, is_causal, rope, cache))
        return self.ffn_norm(x + self.ffn(x))


# ----------------------------------------------------------------------------------------
# Encoder-decoder pieces: cross-attention and T5's relative position bias


class CrossAttention(nn.Module):
    """Decoder queries attend to the encoder's output ("memory"): Q = x Wq, [K; V] = m Wkv.

    K and V depend only on the memory, so they are computed once per input and kept in
    `cache` (a KVBuffer) for every later decoding step.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
    ):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim or d_model // n_head
        self.dropout, self.scale = dropout, scale
        inner = n_head * self.head_dim
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.kv = nn.Linear(d_model, 2 * inner, bias=bias)  # [Wk; Wv]
        self.out = nn.Linear(inner, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        mask: Tensor | None = None,
        cache: KVBuffer | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None and cache.length:
            k, v = cache.k[:, :, : cache.length], cache.v[:, :, : cache.length]
        else:
            S = memory.shape[1]
            k, v = self.kv(memory).view(B, S, 2, self.n_head, self.head_dim).unbind(2)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, S, hs)
            if cache is not None:
                k, v = cache.update(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.out(y))


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """T5's bucket of each (key - query) distance: exact for small distances, then
    logarithmically wider buckets up to `max_distance`; beyond it, the last bucket.

    Bidirectional (encoder): half the buckets for keys after the query, half for before.
    Causal (decoder): only keys at or before the query, all buckets for the past.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)  # how far into the past
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log-spaced: max_exact + log(n / max_exact) / log(max_distance / max_exact) * (nb - me)
    large = max_exact + (
        torch.log(distance.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5: a learned scalar per (bucket, head) added to the attention scores.

    Computed once per stack (in its first layer, in Hugging Face's files) and shared by the
    other layers. Returns (1, nh, T, S) for queries at positions past .. past + T - 1.
    """

    def __init__(self, num_buckets: int, max_distance: int, n_head: int, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional = bidirectional
        self.embed = nn.Embedding(num_buckets, n_head)

    def forward(self, past: int, T: int, S: int, device=None) -> Tensor:
        query = torch.arange(past, past + T, device=device)[:, None]  # (T, 1)
        key = torch.arange(S, device=device)[None, :]  # (1, S)
        bucket = relative_position_bucket(
            key - query, self.bidirectional, self.num_buckets, self.max_distance
        )  # (T, S)
        return self.embed(bucket).permute(2, 0, 1)[None]  # (1, nh, T, S)
