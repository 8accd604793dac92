"""The encoder-decoder (BART / T5 flags): masks, caches, T5 buckets, shift_right, config."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models import ModelConfig, Seq2SeqCache, build, presets, shift_right
from lmforge.models.layers import relative_position_bucket

NAMES = ["tiny-bart", "tiny-t5", "tiny-t5-v1.1", "tiny-t5+rope", "tiny-bart+rope"]
ROPE = dict(positions="rope", relative_attention_num_buckets=0)  # not HF layouts


def _config(name):
    base, _, rope = name.partition("+")
    return presets.get(base).replace(**ROPE) if rope else presets.get(base)


def _model(name):
    torch.manual_seed(0)
    model = build(_config(name)).eval()
    with torch.no_grad():  # BART's logits bias starts at zero; make it count
        if model.logits_bias is not None:
            model.logits_bias.normal_()
    return model


def _ids(*shape, seed=0):
    return torch.randint(3, 256, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_decoder_is_causal_encoder_is_bidirectional(name):
    model = _model(name)
    src, tgt = _ids(2, 9), _ids(2, 7, seed=1)
    ref = model(src, decoder_input_ids=tgt)
    later = tgt.clone()
    later[:, 4] = (later[:, 4] + 1) % 256  # change target token 4
    out = model(src, decoder_input_ids=later).logits
    torch.testing.assert_close(out[:, :4], ref.logits[:, :4])  # earlier positions unchanged
    assert not torch.allclose(out[:, 4:], ref.logits[:, 4:])
    src2 = src.clone()
    src2[:, -1] = (src2[:, -1] + 1) % 256  # the last source token reaches every position
    memory = model.encode(src2).last_hidden_state
    assert not torch.allclose(memory[:, 0], ref.encoder_last_hidden_state[:, 0])
    assert not torch.allclose(model(src2, decoder_input_ids=tgt).logits[:, 0], ref.logits[:, 0])


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_source_padding_does_not_change_the_output(name):
    model = _model(name)
    src, tgt = _ids(1, 6), _ids(1, 5, seed=1)
    alone = model(src, decoder_input_ids=tgt)
    pad = model.config.pad_token_id
    padded = torch.cat([src, torch.full((1, 4), pad)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    out = model(padded, attention_mask=mask, decoder_input_ids=tgt)
    torch.testing.assert_close(out.logits, alone.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.encoder_last_hidden_state[:, :6], alone.encoder_last_hidden_state, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_incremental_decoding_matches_full(name):
    model = _model(name)
    src, tgt = _ids(2, 8), _ids(2, 6, seed=1)
    mask = torch.ones_like(src)
    mask[1, 5:] = 0
    full = model(src, attention_mask=mask, decoder_input_ids=tgt).logits
    # float32 rounding grows with the logits: v1.1's untied head at T5's init (std 1, no
    # d^-0.5 rescale) gives logits of std ~sqrt(d) = 8
    tol = dict(atol=1e-5 * max(1.0, full.std().item()), rtol=1e-5)
    memory = model.encode(src, mask)
    cache, steps = Seq2SeqCache(model.config.decoder_layers), []
    for t in range(tgt.shape[1]):
        out = model(
            attention_mask=mask, decoder_input_ids=tgt[:, t : t + 1], encoder_outputs=memory,
            past_key_values=cache, use_cache=True,
        )  # fmt: skip
        assert out.past_key_values is cache and cache.length == t + 1
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **tol)
    # cross-attention K/V were computed once, from the memory: one row per source token
    assert cache.cross_attn.layers[0].length == src.shape[1]
    # a prefix of 3 then single steps also agrees, and beams can be reordered
    cache = Seq2SeqCache(model.config.decoder_layers)
    first = model(src, mask, decoder_input_ids=tgt[:, :3], cache=cache).logits
    rest = model(attention_mask=mask, decoder_input_ids=tgt[:, 3:], encoder_outputs=memory,
                 cache=cache).logits  # fmt: skip
    torch.testing.assert_close(torch.cat([first, rest], 1), full, **tol)
    cache.reorder(torch.tensor([1, 1]))
    assert torch.equal(cache.self_attn.layers[0].k[0], cache.self_attn.layers[0].k[1])


def test_relative_position_bucket_matches_transformers():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    q = torch.arange(0, 300, 7)[:, None]
    k = torch.arange(0, 300, 5)[None, :]
    relative = k - q  # a grid of distances from -299 to 295
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20), (64, 256)):
            ours = relative_position_bucket(relative, bidirectional, buckets, distance)
            theirs = t5.T5Attention._relative_position_bucket(
                relative, bidirectional, buckets, distance
            )
            assert torch.equal(ours, theirs)


def test_shift_right_and_labels_loss():
    labels = torch.tensor([[5, 6, 7, -100], [8, -100, -100, -100]])
    assert shift_right(labels, 2, 1).tolist() == [[2, 5, 6, 7], [2, 8, 1, 1]]
    model = _model("tiny-t5")
    src = _ids(2, 5)
    out = model(src, labels=labels)
    ref = model(src, decoder_input_ids=model.shift_right(labels)).logits
    real = labels != -100
    expected = torch.nn.functional.cross_entropy(ref[real], labels[real])
    torch.testing.assert_close(out.loss, expected)


def test_config_validation():
    base = presets.get("tiny-t5")
    with pytest.raises(ConfigError, match="decoder_start_token_id"):
        base.replace(decoder_start_token_id=None)
    with pytest.raises(ConfigError, match="positions"):
        base.replace(positions="learned")  # relative bias and learned positions: pick one
    with pytest.raises(ConfigError, match="relative_attention_num_buckets"):
        base.replace(relative_attention_num_buckets=-1)
    with pytest.raises(ConfigError, match="n_decoder_layer"):
        base.replace(n_decoder_layer=0)
    with pytest.raises(ConfigError, match="model.qk_norm"):  # the decoder would ignore it
        base.replace(qk_norm=True)
    with pytest.raises(ConfigError, match="only applies to arch=seq2seq"):
        ModelConfig(scale_decoder_outputs=True)
    assert base.replace(n_decoder_layer=3).decoder_layers == 3
    assert len(build(base.replace(n_decoder_layer=3)).decoder_blocks) == 3


def test_decoder_heads_and_ffn_width_of_their_own():
    """n_decoder_head / d_decoder_ff shape the decoder only (BART allows it); the encoder
    keeps n_head / d_ff."""
    bart = presets.get("tiny-bart")  # d_model 64, 4 heads, FFN 256
    model = build(bart.replace(n_decoder_head=2, d_decoder_ff=96))
    enc, dec = model.encoder_blocks[0], model.decoder_blocks[0]
    assert (enc.attn.n_head, enc.attn.head_dim, enc.ffn.fc1.out_features) == (4, 16, 256)
    assert (dec.attn.n_head, dec.attn.head_dim, dec.ffn.fc1.out_features) == (2, 32, 96)
    assert (dec.cross.n_head, dec.cross.head_dim) == (2, 32)
    src, tgt = _ids(2, 9), _ids(2, 7, seed=1)
    assert model(src, decoder_input_ids=tgt).logits.shape == (2, 7, 256)
    with pytest.raises(ConfigError, match="n_decoder_head=3"):
        bart.replace(n_decoder_head=3)  # 64 is no multiple of 3
    with pytest.raises(ConfigError, match="model.d_decoder_ff"):
        bart.replace(d_decoder_ff=0)
    with pytest.raises(ConfigError, match="only applies to arch=seq2seq"):
        ModelConfig(n_decoder_head=2)
    t5 = build(presets.get("tiny-t5").replace(n_decoder_head=2))  # head_dim fixed: 16
    assert t5.decoder_blocks[0].attn.n_head == 2 and t5.dec_rel_bias is not None
    assert t5.dec_rel_bias.embed.weight.shape[1] == 2
    assert t5.enc_rel_bias.embed.weight.shape[1] == 4


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = build(presets.get("tiny-bart", gradient_checkpointing=flag)).train()
        labels = _ids(2, 5, seed=1)
        model(_ids(2, 6), labels=labels).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@torch.no_grad()
def test_rope_positions_order_both_stacks():
    # Without positions (and no relative bias) attention is permutation-equivariant: the
    # encoder's memory of a reversed source is the reversed memory. RoPE breaks that in
    # the encoder and in the decoder's self-attention.
    src, tgt = _ids(1, 7), _ids(1, 5, seed=1)
    rev_src, rev_tgt = src.flip(1), tgt.flip(1)
    torch.manual_seed(0)
    bare = build(presets.get("tiny-t5").replace(relative_attention_num_buckets=0)).eval()
    memory = bare.encode(src).last_hidden_state
    torch.testing.assert_close(bare.encode(rev_src).last_hidden_state, memory.flip(1))
    model = _model("tiny-t5+rope")
    assert model.enc_rel_bias is None and model.enc_pos is None
    memory = model.encode(src).last_hidden_state
    assert (model.encode(rev_src).last_hidden_state - memory.flip(1)).abs().max() > 1e-3
    # decoder: the last target position sees the same set of tokens in another order
    last = model(src, decoder_input_ids=tgt).logits[:, -1]
    moved = model(src, decoder_input_ids=torch.cat([rev_tgt[:, :-1], tgt[:, -1:]], 1)).logits
    assert (moved[:, -1] - last).abs().max() > 1e-3


def test_rope_seq2seq_is_refused_by_hf_export(tmp_path):
    from lmforge.errors import CheckpointError
    from lmforge.interop.hf import save_hf

    for name in ("tiny-t5+rope", "tiny-bart+rope"):
        with pytest.raises(CheckpointError, match="positions must be"):
            save_hf(_model(name), tmp_path / name)
        assert not (tmp_path / name).exists()
    with pytest.raises(ConfigError, match="even decoder head size"):
        presets.get("tiny-bart").replace(**ROPE, n_decoder_head=16, d_model=48, n_head=8)
