"""The Transformer block's pieces against their formulas and defining properties."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import ModelConfig
from lmforge.models.layers import (
    Attention,
    Block,
    FeedForward,
    KVBuffer,
    LayerNorm,
    RMSNorm,
    RotaryEmbedding,
    apply_rope,
    attention_mask_4d,
    rope_inv_freq,
    sinusoidal_table,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_layernorm_equals_formula_and_torch():
    d = 16
    ln = LayerNorm(d, eps=1e-5)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 5, d) * 4 + 2
    mu = x.mean(-1, keepdim=True)
    sigma = ((x - mu) ** 2).mean(-1, keepdim=True).add(1e-5).sqrt()
    by_hand = ln.weight * (x - mu) / sigma + ln.bias  # gamma * (x - mu) / sigma + beta
    ref = torch.nn.LayerNorm(d, eps=1e-5)
    ref.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ln(x), ref(x), atol=1e-6, rtol=1e-6)
    # gamma and beta are learnable parameters
    assert {n for n, _ in ln.named_parameters()} == {"weight", "bias"}


@pytest.mark.parametrize("unit_offset", [False, True])
def test_rmsnorm_equals_formula(unit_offset):
    d = 16
    norm = RMSNorm(d, eps=1e-6, unit_offset=unit_offset)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 7, d) * 3
    rms = x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    scale = 1 + norm.weight if unit_offset else norm.weight
    torch.testing.assert_close(norm(x), scale * x / rms, atol=1e-5, rtol=1e-5)


def test_rmsnorm_unit_offset_starts_as_identity_scale():
    x = torch.randn(4, 8)
    a, b = RMSNorm(8, unit_offset=True), RMSNorm(8)
    torch.testing.assert_close(a(x), b(x))  # w = 0 -> (1 + w) = 1, same as w = 1


@pytest.mark.parametrize(
    "activation,fn",
    [
        ("relu", torch.relu),
        ("gelu", lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))),
        (
            "gelu_tanh",
            lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))),
        ),
    ],
)
def test_ffn_is_two_matrices_with_activation(activation, fn):
    ffn = FeedForward(8, 32, activation)
    x = torch.randn(2, 3, 8)
    w1, b1, w2, b2 = ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias
    torch.testing.assert_close(ffn(x), fn(x @ w1.T + b1) @ w2.T + b2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation,act", [("silu", F.silu), ("gelu_tanh", None)])
def test_gated_ffn_swiglu_geglu(activation, act):
    act = act or (lambda h: F.gelu(h, approximate="tanh"))
    ffn = FeedForward(8, 16, activation, gated=True, bias=False)
    wg, wu = ffn.fc1.weight[:16], ffn.fc1.weight[16:]
    x = torch.randn(2, 3, 8)
    expected = (act(x @ wg.T) * (x @ wu.T)) @ ffn.fc2.weight.T  # (act(x Wg) * x Wu) W2
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_formula():
    table = sinusoidal_table(50, 8)
    pos, i = 17, 3  # pair i covers dims 2i, 2i+1
    angle = pos / 10000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rope_dot_product_depends_only_on_offset():
    hs = 16
    rope = RotaryEmbedding(hs, theta=10000.0)
    q, k = torch.randn(1, 1, 1, hs), torch.randn(1, 1, 1, hs)

    def score(m, n):
        cos_m, sin_m = rope(torch.tensor([[m]]), torch.float32)
        cos_n, sin_n = rope(torch.tensor([[n]]), torch.float32)
        return (apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum().item()

    for m, n in [(5, 2), (9, 9), (3, 11)]:
        for shift in (1, 7, 100):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)  # the offset does matter
    # rotation keeps the norm
    cos, sin = rope(torch.tensor([[42]]), torch.float32)
    assert apply_rope(q, cos, sin).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_rope_llama3_scaling_bands():
    base = rope_inv_freq(64, 500000.0)
    scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)
    scaled = rope_inv_freq(64, 500000.0, scaling)
    wavelen = 2 * math.pi / base
    high = wavelen < 64 / 4  # short wavelengths: unchanged
    low = wavelen > 64 / 1  # long wavelengths: slowed by `factor`
    assert high.any() and low.any()
    torch.testing.assert_close(scaled[high], base[high])
    torch.testing.assert_close(scaled[low], base[low] / 8)
    mid = ~high & ~low
    assert ((scaled[mid] < base[mid]) & (scaled[mid] > base[mid] / 8)).all()


def _attention(n_kv_head=None, **kw):
    return Attention(32, 4, n_kv_head, qkv_bias=True, **kw).eval()


def test_causal_mask_future_tokens_do_not_change_the_past():
    attn = _attention()
    x = torch.randn(2, 9, 32)
    y = x.clone()
    y[:, 5:] = torch.randn(2, 4, 32)  # change everything after position 4
    mask, is_causal = attention_mask_4d(None, 0, 9)
    out_x, out_y = attn(x, mask, is_causal), attn(y, mask, is_causal)
    torch.testing.assert_close(out_x[:, :5], out_y[:, :5])
    assert not torch.allclose(out_x[:, 5:], out_y[:, 5:])


def test_padding_mask_pad_tokens_do_not_change_real_tokens():
    attn = _attention()
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # left and right padding
    x = torch.randn(2, 6, 32)
    y = x.clone()
    y[am == 0] = torch.randn(int((am == 0).sum()), 32) * 10
    for causal in (True, False):
        mask, is_causal = attention_mask_4d(am, 0, 6, causal=causal)
        out_x, out_y = attn(x, mask, is_causal), attn(y, mask, is_causal)
        real = am.bool()
        torch.testing.assert_close(out_x[real], out_y[real])


def test_segment_mask_is_block_diagonal_causal():
    """Packed sequences: a query sees earlier keys of its own segment only (0 = padding)."""
    seg = torch.tensor([[1, 1, 1, 2, 2, 0]])
    am = torch.tensor([[1, 1, 1, 1, 1, 0]])
    mask, is_causal = attention_mask_4d(am, 0, 6, segment_ids=seg)
    assert not is_causal
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # a pad query sees only itself
    ]
    with pytest.raises(ValueError, match="segment_ids need the whole sequence"):
        attention_mask_4d(None, 2, 1, segment_ids=seg)


def test_bidirectional_attention_sees_the_future():
    attn = _attention()
    x = torch.randn(1, 5, 32)
    y = x.clone()
    y[:, 4] += 1
    mask, is_causal = attention_mask_4d(None, 0, 5, causal=False)
    assert not torch.allclose(attn(x, mask, is_causal)[:, 0], attn(y, mask, is_causal)[:, 0])


def test_gqa_equals_mha_with_repeated_kv_heads():
    n_head, n_kv, hs, d = 4, 2, 8, 32
    gqa = _attention(n_kv_head=n_kv)
    mha = _attention(n_kv_head=n_head)
    w, b = gqa.qkv.weight, gqa.qkv.bias
    q_w, k_w, v_w = w.split([n_head * hs, n_kv * hs, n_kv * hs])
    q_b, k_b, v_b = b.split([n_head * hs, n_kv * hs, n_kv * hs])

    def repeat(t):  # (n_kv * hs, ...) -> (n_head * hs, ...): each KV head serves 2 q heads
        return t.view(n_kv, hs, *t.shape[1:]).repeat_interleave(n_head // n_kv, 0).flatten(0, 1)

    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q_w, repeat(k_w), repeat(v_w)]))
        mha.qkv.bias.copy_(torch.cat([q_b, repeat(k_b), repeat(v_b)]))
        mha.out.load_state_dict(gqa.out.state_dict())
    x = torch.randn(2, 7, d)
    torch.testing.assert_close(gqa(x, None, True), mha(x, None, True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_kv_cache_incremental_equals_full_sequence(window):
    attn = _attention(n_kv_head=2)
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 8, 32)
    pos = torch.arange(8)[None]
    full_mask, causal = attention_mask_4d(None, 0, 8, sliding_window=window)
    full = attn(x, full_mask, causal, rope(pos, x.dtype))
    cache = KVBuffer()
    mask, is_causal = attention_mask_4d(None, 0, 3, sliding_window=window)
    steps = [attn(x[:, :3], mask, is_causal, rope(pos[:, :3], x.dtype), cache)]
    for t in range(3, 8):
        mask, is_causal = attention_mask_4d(None, t, 1, sliding_window=window)
        new = slice(t, t + 1)
        steps.append(attn(x[:, new], mask, is_causal, rope(pos[:, new], x.dtype), cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 8


def test_sliding_window_mask_values():
    mask, _ = attention_mask_4d(None, 0, 6, sliding_window=3)
    expected = torch.tensor(
        [[1 if t - 3 < s <= t else 0 for s in range(6)] for t in range(6)], dtype=torch.bool
    )
    assert torch.equal(mask[0, 0], expected)
    # no mask is built while the sequence fits in the window
    assert attention_mask_4d(None, 0, 3, sliding_window=3) == (None, True)


def test_sliding_window_tokens_beyond_the_window_do_not_matter():
    attn = _attention()
    x = torch.randn(1, 10, 32)
    y = x.clone()
    y[:, :4] = torch.randn(1, 4, 32)  # positions 0..3 are > 3 back from position 7
    mask, is_causal = attention_mask_4d(None, 0, 10, sliding_window=4)
    out_x, out_y = attn(x, mask, is_causal), attn(y, mask, is_causal)
    torch.testing.assert_close(out_x[:, 7:], out_y[:, 7:])
    assert not torch.allclose(out_x[:, 6], out_y[:, 6])  # position 6 still sees position 3


def test_attention_is_softmax_qk_v():
    attn = _attention()
    x = torch.randn(1, 5, 32)
    q, k, v = attn.qkv(x).split(32, -1)
    q, k, v = (t.view(1, 5, 4, 8).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 5, 32)
    torch.testing.assert_close(attn(x, None, True), attn.out(y), atol=1e-5, rtol=1e-5)


def test_pre_and_post_ln_blocks():
    cfg = ModelConfig(d_model=16, n_head=2, n_layer=1, vocab_size=10, max_seq_len=8)
    x = torch.randn(1, 4, 16)
    pre = Block(cfg).eval()
    by_hand = x + pre.attn(pre.attn_norm(x), None, True)
    by_hand = by_hand + pre.ffn(pre.ffn_norm(by_hand))
    torch.testing.assert_close(pre(x, None, True), by_hand)
    post = Block(cfg.replace(norm_position="post")).eval()
    by_hand = post.attn_norm(x + post.attn(x, None, True))
    by_hand = post.ffn_norm(by_hand + post.ffn(by_hand))
    torch.testing.assert_close(post(x, None, True), by_hand)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.norm"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ConfigError, match="model.n_kv_head"):
        ModelConfig(n_head=12, n_kv_head=5)
    with pytest.raises(ConfigError, match="model.d_model"):
        ModelConfig(d_model=100, n_head=12)
    with pytest.raises(ConfigError, match="model.dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="model.rope_scaling"):
        ModelConfig(positions="rope", rope_scaling={"factor": 8.0})
