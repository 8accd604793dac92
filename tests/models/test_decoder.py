"""The decoder: one class for every family; cache, padding, checkpointing, init, tying."""

import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models import CausalLMOutput, Decoder, KVCache, ModelConfig, build, presets

FAMILIES = ["tiny-gpt1", "tiny-gpt2", "tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gemma"]


def _model(name, **kw):
    torch.manual_seed(0)
    return build(presets.get(name, **kw)).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_output_fields(name):
    model = _model(name)
    ids = torch.randint(0, 256, (2, 9))
    out = model(ids)
    assert isinstance(out, CausalLMOutput)
    assert out.logits.shape == (2, 9, 256)
    assert out.last_hidden_state.shape == (2, 9, 64)
    assert out.past_key_values is None
    out = model(ids, use_cache=True, logits_to_keep=1)
    assert out.logits.shape == (2, 1, 256)
    assert out.past_key_values.length == 9 and out.cache is out.past_key_values


@pytest.mark.parametrize("name", FAMILIES)
def test_kv_cache_decoding_equals_full_sequence(name):
    model = _model(name)  # tiny-mistral: window 8 < 14 tokens, so the window is active
    ids = torch.randint(0, 256, (2, 14))
    full = model(ids).logits
    out = model(ids[:, :5], use_cache=True)
    parts = [out.logits]
    out = model(ids[:, 5:8], past_key_values=out.past_key_values)  # a chunk on top of a cache
    parts.append(out.logits)
    for t in range(8, 14):
        out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
        parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_left_padding_matches_unpadded_rows(name):
    """Positions come from the mask, so a left-padded row equals the row alone."""
    model = _model(name)
    short, long = torch.randint(0, 256, (1, 6)), torch.randint(0, 256, (1, 10))
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0
    batched = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(batched[0, 4:], model(short).logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[1], model(long).logits[0], atol=1e-5, rtol=1e-4)
    # ... and so does cached decoding with the growing mask
    out = model(ids, attention_mask=mask, use_cache=True)
    nxt = torch.randint(0, 256, (2, 1))
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    step = model(nxt, attention_mask=mask2, past_key_values=out.past_key_values).logits
    alone = model(torch.cat([short, nxt[:1]], 1)).logits[0, -1]
    torch.testing.assert_close(step[0, 0], alone, atol=1e-5, rtol=1e-4)


def test_causal_logits_do_not_see_the_future():
    model = _model("tiny-llama")
    ids = torch.randint(0, 256, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 256
    torch.testing.assert_close(model(ids).logits[:, :6], model(changed).logits[:, :6])


def test_weight_tying_and_parameter_count():
    tied = _model("tiny-gpt2")
    assert tied.lm_head.weight is tied.tok_embed.weight
    untied = _model("tiny-gpt2", tie_embeddings=False)
    assert untied.num_parameters() == tied.num_parameters() + 256 * 64
    # GPT-2 124M counts its shared embedding once
    with torch.device("meta"):
        assert build(presets.get("gpt2")).num_parameters() == 124_439_808
    # non-embedding: minus token and learned position embeddings
    assert tied.num_parameters(non_embedding=True) == tied.num_parameters() - 256 * 64 - 128 * 64


def test_gpt2_init():
    torch.manual_seed(0)
    model = build(presets.get("gpt2", n_layer=4, vocab_size=4096))
    block = model.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.ffn.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 4)  # residual projections: 0.02 / sqrt(2 n_layer)
    assert block.attn.out.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.ffn.fc2.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.tok_embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.qkv.bias.abs().max().item() == 0
    assert torch.equal(block.attn_norm.weight, torch.ones(768))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 256, (2, 12))
    grads = []
    for flag in (False, True):
        model = _model("tiny-llama", gradient_checkpointing=flag, dropout=0.0).train()
        assert model.gradient_checkpointing is flag
        model(ids).logits.logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_post_ln_gpt1_has_no_final_norm():
    model = _model("tiny-gpt1")
    assert isinstance(model.norm_out, torch.nn.Identity)
    assert not model.blocks[0].pre_norm


def test_gemma_scales_embeddings_by_sqrt_d():
    model = _model("tiny-gemma")
    ids = torch.randint(0, 256, (1, 4))
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    model(ids)
    torch.testing.assert_close(captured["x"], model.tok_embed(ids) * math.sqrt(64))


def test_sinusoidal_positions_and_no_positions():
    for positions in ("sinusoidal", "none"):
        model = _model("tiny-gpt2", positions=positions)
        assert model(torch.randint(0, 256, (1, 5))).logits.shape == (1, 5, 256)


def test_meta_build_then_reset_buffers():
    with torch.device("meta"):
        model = build(presets.get("tiny-llama"))
    model.to_empty(device="cpu")
    model.reset_buffers()
    model.tie_weights()
    reference = _model("tiny-llama")
    torch.testing.assert_close(model.rope.inv_freq, reference.rope.inv_freq)


def test_bad_inputs():
    model = _model("tiny-gpt2")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))
    with pytest.raises(ConfigError, match="model.arch"):
        build(ModelConfig(arch="mixture"))  # no such arch


def test_cache_grows_and_reorders():
    cache = KVCache(n_layer=1)
    layer = cache.layers[0]
    for t in range(5):
        k = torch.full((3, 2, 1, 4), float(t))
        layer.update(k, k + 10)
    assert layer.length == 5 and layer.k.shape[2] >= 5
    assert layer.k[0, 0, :5, 0].tolist() == [0, 1, 2, 3, 4]
    layer.k[:, :, :5] += torch.arange(3.0)[:, None, None, None] * 100
    cache.reorder(torch.tensor([2, 2, 0]))
    assert layer.k[:, 0, 0, 0].tolist() == [200, 200, 0]


def test_decoder_is_the_class_for_every_family():
    for name in FAMILIES:
        assert type(build(presets.get(name))) is Decoder


def test_cache_crop_drops_rejected_positions():
    model = _model("tiny-llama")
    ids = torch.randint(0, 256, (1, 10))
    full = model(ids).logits
    out = model(ids[:, :6], use_cache=True)
    wrong = torch.randint(0, 256, (1, 3))
    model(wrong, past_key_values=out.past_key_values)  # 3 guesses, all rejected
    out.past_key_values.crop(6)
    rest = model(ids[:, 6:], past_key_values=out.past_key_values).logits
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-5, rtol=1e-4)


# --- the speedrun's switches: QK-norm, logit soft-capping, zero-init residual -------------


def test_qk_norm_normalizes_each_heads_q_and_k():
    """With qk_norm, attention is SDPA over RMS-normalized q and k (times their gains)."""
    from lmforge.models.layers import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4, qk_norm=True, norm_eps=1e-6).eval()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32)
    q, k, v = (t.view(2, 5, 4, 8).transpose(1, 2) for t in attn.qkv(x).split(32, dim=-1))

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    att = (rms(q, attn.q_norm.weight) @ rms(k, attn.k_norm.weight).transpose(-1, -2)) / 8**0.5
    att = att.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 32)
    torch.testing.assert_close(attn(x, is_causal=True), attn.out(y), atol=1e-5, rtol=1e-5)


def test_logit_softcap_bounds_the_logits_and_the_loss_uses_them():
    from lmforge.objectives.clm import CausalLM

    torch.manual_seed(0)
    plain = _model("tiny-llama")
    capped = _model("tiny-llama", logit_softcap=0.5)
    ids = torch.randint(0, 256, (2, 9))
    raw, out = plain(ids).logits, capped(ids).logits
    torch.testing.assert_close(out, 0.5 * torch.tanh(raw / 0.5))
    assert out.abs().max() < 0.5 < raw.abs().max()
    with capped.lm_head.decoding_layout(), torch.no_grad():  # generation's layout caps too
        torch.testing.assert_close(capped(ids).logits, out)
    batch = CausalLM().prepare(torch.randint(0, 256, (2, 10)))
    loss, n = CausalLM().loss(capped, batch)  # not the fused h W^T path: capped logits
    logits = capped(batch["input_ids"]).logits
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch["targets"].reshape(-1),
                                             reduction="sum")
    assert n == 18
    torch.testing.assert_close(loss, want)


def test_zero_init_residual_makes_every_block_the_identity_at_init():
    model = _model("tiny-llama", zero_init_residual=True, norm_position="pre")
    for block in model.blocks:
        assert block.attn.out.weight.abs().sum() == 0 and block.ffn.fc2.weight.abs().sum() == 0
    x = torch.randn(2, 7, 64)
    rope = model.rope(torch.arange(7)[None], x.dtype)
    torch.testing.assert_close(model.blocks[0](x, None, True, rope), x)
    assert _model("tiny-llama").blocks[0].attn.out.weight.abs().sum() > 0  # off by default


def test_hf_export_refuses_what_transformers_cannot_hold():
    from lmforge.errors import CheckpointError
    from lmforge.interop.hf import config_to_hf

    for extra in (dict(qk_norm=True), dict(logit_softcap=30.0)):
        with pytest.raises(CheckpointError, match=next(iter(extra))):
            config_to_hf(presets.get("tiny-llama", **extra))
    assert config_to_hf(presets.get("tiny-llama", zero_init_residual=True))["hidden_act"]
    with pytest.raises(ConfigError, match="logit_softcap"):
        presets.get("tiny-llama", logit_softcap=-1.0)
