"""Prompt tuning, P-tuning and prefix-tuning (lmforge/peft/prompts.py) on a decoder (GPT-2:
learned positions, Llama: RoPE + grouped-query attention), an encoder (BERT) and
encoder-decoders (BART, T5).

The exact references: virtual tokens that *are* real tokens. A soft prompt set to the
embeddings of tokens t_1..t_n, or a prefix set to the keys / values the base model
computes for them, must give exactly the base model's outputs on [t; x] at x's positions.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, LmforgeError
from lmforge.generation import generate, pad_left
from lmforge.models import build, presets
from lmforge.models.heads import ClassificationHead, TaskModel, TokenClassificationHead
from lmforge.models.layers import KVCache
from lmforge.models.seq2seq import Seq2SeqCache
from lmforge.peft import prompts
from lmforge.peft.config import PeftConfig

N = 4  # virtual tokens
METHODS = ["prompt", "prefix", "ptuning"]
DECODERS = ["tiny-gpt2", "tiny-llama", "tiny-gemma"]  # Gemma: scaled embeddings
SEQ2SEQ = ["tiny-bart", "tiny-t5"]


def _base(preset):
    torch.manual_seed(0)
    model = build(presets.get(preset)).eval()
    with torch.no_grad():  # norms and biases off their 1 / 0 init too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _cfg(method, **kw):
    return PeftConfig(method=method, num_virtual_tokens=N, encoder_hidden=16, **kw)


def _apply(model, method, **kw):
    model = prompts.apply(model, _cfg(method, **kw))
    torch.manual_seed(1)
    with torch.no_grad():  # the prefix MLP's last layer is not zero-initialised; keep all random
        for p in prompts.prompt_encoder(model).parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(B=2, T=7, seed=2):
    return torch.randint(5, 250, (B, T), generator=torch.Generator().manual_seed(seed))


def _set_prompt_to_tokens(model, tokens):
    """Prompt tuning with P = E(tokens): the virtual tokens are these real tokens."""
    pe = prompts.prompt_encoder(model)
    with torch.no_grad():
        pe.embedding.weight.copy_(prompts._token_embeds(prompts._body(model), tokens))


def _set_prefix_to_tokens(model, base, tokens):
    """A folded prefix holding the K/V that `base` computes for `tokens` in every layer."""
    prompts.fold(model)
    pe = prompts.prompt_encoder(model)
    assert not pe.seq2seq
    cache = KVCache(base.config.n_layer)
    with torch.no_grad():
        base(tokens[None], past_key_values=cache, use_cache=True)
        rows = torch.stack([t for layer in cache.layers for t in (layer.k[0], layer.v[0])])
        # rows (2L, nkv, n, hs) -> (n, 2L * nkv * hs), the layout PrefixEncoder.layer_kv reads
        pe.embedding.weight.copy_(rows.permute(2, 0, 1, 3).reshape(N, -1))


# ----------------------------------------------------------------------------------------
# Virtual tokens that are real tokens: exact references


@pytest.mark.parametrize("preset", DECODERS)
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_decoder_virtual_tokens_equal_real_tokens(preset, method):
    base = _base(preset)
    model = _apply(_base(preset), method)
    tokens = torch.tensor([7, 11, 13, 17])
    if method == "prompt":
        _set_prompt_to_tokens(model, tokens)
    else:
        _set_prefix_to_tokens(model, base, tokens)
    ids = _ids()
    with torch.no_grad():
        ref = base(torch.cat((tokens.expand(2, N), ids), 1)).logits[:, N:]
        out = model(ids)
    assert out.logits.shape == (2, 7, 256) and out.last_hidden_state.shape[1] == 7
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    # left padding: the real tokens' positions count from n, pads skipped, as the base does
    ids_p, mask = pad_left([[3, 4, 5, 6, 7], [8, 9]])
    with torch.no_grad():
        ref = base(torch.cat((tokens.expand(2, N), ids_p), 1),
                   attention_mask=torch.cat((torch.ones(2, N, dtype=torch.long), mask), 1)).logits
        got = model(ids_p, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], ref[:, N:][mask.bool()], atol=1e-5, rtol=0)


def test_encoder_prompt_equals_real_tokens_and_pooler_reads_first_virtual():
    base, model = _base("tiny-bert"), _apply(_base("tiny-bert"), "prompt")
    tokens = torch.tensor([7, 11, 13, 17])
    _set_prompt_to_tokens(model, tokens)
    ids, types = _ids(), torch.tensor([[0] * 4 + [1] * 3] * 2)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # right padding
    full_mask = torch.cat((torch.ones(2, N, dtype=torch.long), mask), 1)
    full_types = torch.cat((torch.zeros(2, N, dtype=torch.long), types), 1)
    with torch.no_grad():
        ref = base(torch.cat((tokens.expand(2, N), ids), 1), full_mask, full_types)
        out = model(ids, mask, types)
        hidden = model.encode(ids, mask, types)
    assert out.last_hidden_state.shape == (2, 7, 64)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state[:, N:], atol=1e-5,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=0, rtol=0)
    # the pooler reads position 0, the first virtual token (transformers / peft)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", SEQ2SEQ)
def test_seq2seq_prompt_prepends_to_the_encoder(preset):
    base, model = _base(preset), _apply(_base(preset), "prompt")
    tokens = torch.tensor([7, 11, 13, 17])
    _set_prompt_to_tokens(model, tokens)
    src, tgt = _ids(), _ids(T=5, seed=3)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 6:] = 0
    full_mask = torch.cat((torch.ones(2, N, dtype=torch.long), mask), 1)
    with torch.no_grad():
        ref = base(torch.cat((tokens.expand(2, N), src), 1), full_mask, decoder_input_ids=tgt)
        out = model(src, mask, decoder_input_ids=tgt)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    assert out.encoder_last_hidden_state.shape[1] == N + 7  # the decoder reads them


@pytest.mark.parametrize("preset", SEQ2SEQ)
def test_seq2seq_prefix_is_decoder_self_attention_kv(preset):
    """A decoder self-attention prefix holding the K/V of n target tokens decoded before.

    One layer: peft's encoder-decoder layout gives decoder layers l and l + L/2 the same
    rows (4l mod 2L), so only with L = 1 can every layer hold its own tokens' K/V.
    """
    config = dataclasses.replace(presets.get(preset), n_layer=1)
    torch.manual_seed(0)
    base = build(config).eval()
    model = prompts.apply(build(config).eval(), _cfg("prefix"))
    model.load_state_dict(base.state_dict(), strict=False)
    prompts.fold(model)
    src, tgt = _ids(), _ids(T=5, seed=3)
    tokens = torch.tensor([[7, 11, 13, 17]] * 2)
    cache = Seq2SeqCache(1)
    with torch.no_grad():
        memory = base.encode(src).last_hidden_state
        base.decode(tokens, memory, cache=cache)
        ref = base.logits(base.decode(tgt, memory, cache=cache))  # = decoding [tokens; tgt]
        k, v = cache.self_attn.layers[0].k[0, :, :N], cache.self_attn.layers[0].v[0, :, :N]
        rows = torch.stack((k, v))  # (2L, nh, n, hs)
        pe = prompts.prompt_encoder(model)
        pe.embedding.weight.copy_(rows.permute(2, 0, 1, 3).reshape(N, -1))
        got = model(src, decoder_input_ids=tgt).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_seq2seq_prefix_layout_follows_peft():
    """Encoder-decoders: decoder layer l reads prefix rows 4l, 4l + 1 (mod 2L), as peft."""
    pe = prompts.PrefixEncoder(N, n_layer=4, n_kv_head=2, head_dim=8, hidden=16, seq2seq=True)
    rows = pe().view(N, 8, 2, 8).transpose(0, 2).transpose(0, 1)  # (2L, nkv, n, hs)
    kv = pe.layer_kv(1)
    for layer, (k, v) in enumerate(kv):
        assert torch.equal(k[0], rows[4 * layer % 8])
        assert torch.equal(v[0], rows[(4 * layer + 1) % 8])


# ----------------------------------------------------------------------------------------
# Training: only the PEFT parameters (and the head) learn; the base stays bit-identical


def _loss(model, preset):
    ids = _ids()
    arch = presets.get(preset).arch
    if isinstance(model, TaskModel):
        out = model(ids)
        if model.pooling == "tokens":
            return F.cross_entropy(out.flatten(0, 1), (ids % 3).flatten())
        return F.cross_entropy(out, torch.tensor([0, 1]))
    if arch == "decoder":
        logits = model(ids[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    if arch == "seq2seq":
        return model(ids, labels=_ids(T=5, seed=3)).loss
    out = model(ids)
    return out.last_hidden_state.pow(2).mean() + out.pooler_output.sum()


def _task(preset, pooling):
    body = _base(preset)
    d = body.config.d_model
    if pooling == "tokens":
        head = TokenClassificationHead(d, 3, dropout=0.0)
    else:
        head = ClassificationHead(d, 2, dropout=0.0, dense=pooling != "pooler")
    return TaskModel(body, head, pooling, eos_token_id=2 if pooling == "eos" else None).eval()


CASES = [(p, m) for p in [*DECODERS, "tiny-bert", *SEQ2SEQ] for m in METHODS]


@pytest.mark.parametrize("preset,method", CASES)
def test_only_peft_parameters_train_and_base_is_bit_identical(preset, method):
    model = _apply(_base(preset), method, prompt_encoder="lstm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prompt_encoder.") for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.1)  # fmt: skip
    model.train()
    for _ in range(3):
        opt.zero_grad()
        _loss(model, preset).backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == name.startswith("prompt_encoder."), name
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith("prompt_encoder."):
            continue
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items()
               if k.startswith("prompt_encoder."))  # fmt: skip


@pytest.mark.parametrize("preset,pooling", [("tiny-bert", "pooler"), ("tiny-bert", "tokens"),
                                            ("tiny-gpt2", "last"), ("tiny-bart", "eos")])
def test_task_head_trains_beside_the_prompt(preset, pooling):
    model = _task(preset, pooling)
    prompts.apply(model, _cfg("prompt"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("head.", "backbone.prompt_encoder."))}  # fmt: skip
    if pooling == "eos":
        return  # the gradient flow is the same as for the other poolings
    _loss(model, preset).backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


def test_token_head_drops_virtual_positions_so_labels_align():
    base = _task("tiny-bert", "tokens")
    model = _task("tiny-bert", "tokens")
    prompts.apply(model, _cfg("prompt"))
    tokens = torch.tensor([7, 11, 13, 17])
    _set_prompt_to_tokens(model, tokens)
    ids = _ids()
    with torch.no_grad():
        out = model(ids)
        ref = base(torch.cat((tokens.expand(2, N), ids), 1))[:, N:]
    assert out.shape == (2, 7, 3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_last_token_pooling_reads_the_last_real_token():
    base, model = _task("tiny-gpt2", "last"), _task("tiny-gpt2", "last")
    prompts.apply(model, _cfg("prompt"))
    tokens = torch.tensor([7, 11, 13, 17])
    _set_prompt_to_tokens(model, tokens)
    ids, mask = pad_left([[3, 4, 5, 6, 7], [8, 9]])
    ones = torch.ones(2, N, dtype=torch.long)
    with torch.no_grad():
        got = model(ids, mask)
        ref = base(torch.cat((tokens.expand(2, N), ids), 1), torch.cat((ones, mask), 1))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_first_token_pooling_reads_the_first_virtual_token():
    """RoBERTa-style heads read h[:, 0]: after prompt tuning, the first virtual token (as
    peft, whose model sees [P; x]); the pooler of BERT likewise (test above)."""
    base, model = _task("tiny-roberta", "first"), _task("tiny-roberta", "first")
    prompts.apply(model, _cfg("prompt"))
    tokens = torch.tensor([7, 11, 13, 17])
    _set_prompt_to_tokens(model, tokens)
    ids = _ids()
    with torch.no_grad():
        got, ref = model(ids), base(torch.cat((tokens.expand(2, N), ids), 1))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_modules_to_save_names_what_trains():
    model = _task("tiny-bert", "pooler")
    prompts.apply(model, _cfg("prefix", modules_to_save=["backbone.pooler"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    saved = ("backbone.pooler.", "backbone.prompt_encoder.")
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(saved)}


# ----------------------------------------------------------------------------------------
# The prompt encoders, folding


@pytest.mark.parametrize("preset", [*DECODERS, "tiny-bert", *SEQ2SEQ])
def test_folded_prefix_gives_the_same_outputs(preset):
    model = _apply(_base(preset), "prefix")
    pe = prompts.prompt_encoder(model)
    ids = _ids()
    kw = {"decoder_input_ids": _ids(T=5, seed=3)} if preset in SEQ2SEQ else {}
    with torch.no_grad():
        before = model(ids, **kw)
        prompts.fold(model)
        after = model(ids, **kw)
    assert pe.folded and set(dict(pe.named_parameters())) == {"embedding.weight"}
    assert pe.embedding.weight.requires_grad
    key = "last_hidden_state" if preset == "tiny-bert" else "logits"
    torch.testing.assert_close(getattr(after, key), getattr(before, key), atol=1e-6, rtol=0)


def test_prompt_encoders_shapes_and_vocab_init():
    body = _base("tiny-llama")
    torch.manual_seed(5)
    prompts.apply(body, _cfg("prompt", prompt_init="vocab"))
    torch.manual_seed(5)
    picked = torch.randint(0, 256, (N,))
    assert torch.equal(body.prompt_encoder().detach(), body.tok_embed.weight[picked].detach())
    for kind in ("mlp", "lstm"):
        pe = prompts.PromptEncoder(N, 64, 16, kind)
        assert pe().shape == (N, 64)
    pe = prompts.PrefixEncoder(N, n_layer=3, n_kv_head=2, head_dim=8, hidden=16)
    assert pe().shape == (N, 3 * 2 * 16)
    kv = pe.layer_kv(batch=5)
    assert len(kv) == 3 and kv[2][0].shape == (5, 2, N, 8)
    rows = pe().view(N, 6, 2, 8)
    assert torch.equal(kv[2][1][0], rows[:, 5].transpose(0, 1))  # layer 2's V is row 5


# ----------------------------------------------------------------------------------------
# Generation: the same tokens with and without the KV cache


@pytest.mark.parametrize("preset,method", [(p, m) for p in [*DECODERS, *SEQ2SEQ] for m in METHODS])
def test_generation_with_and_without_cache_agree(preset, method):
    model = _apply(_base(preset), method, prompt_encoder="lstm")
    ids, mask = pad_left([[3, 4, 5, 6, 7, 9], [8, 9, 10]])
    for kw in ({}, {"num_beams": 3}):
        a = generate(model, ids, mask, max_new_tokens=6, eos_token_id=[], **kw)
        b = generate(model, ids, mask, max_new_tokens=6, eos_token_id=[], use_cache=False, **kw)
        assert torch.equal(a, b), kw
    if preset in DECODERS:  # prompt lookup crops the cache after the virtual tokens
        one = torch.tensor([[3, 4, 5, 3, 4, 5, 3, 4]])
        a = generate(model, one, max_new_tokens=8, eos_token_id=[], prompt_lookup_tokens=3)
        b = generate(model, one, max_new_tokens=8, eos_token_id=[], use_cache=False)
        assert torch.equal(a, b)
        # and the greedy tokens are the argmax of the model's own forward
        with torch.no_grad():
            logits = model(b[:, :-1]).logits
        assert torch.equal(logits[:, 7:].argmax(-1), b[:, 8:])


# ----------------------------------------------------------------------------------------
# Bad input


def test_bad_input():
    model = build(presets.get("tiny-gpt2"))  # learned positions, max_seq_len 128
    with pytest.raises(ConfigError, match="no room"):
        prompts.apply(build(presets.get("tiny-gpt2")), PeftConfig(method="prompt",
                                                                  num_virtual_tokens=128))
    prompts.apply(model, PeftConfig(method="prompt", num_virtual_tokens=100))
    prompts.check_length(model, 28)
    with pytest.raises(ConfigError, match="100 virtual tokens \\+ 29 tokens") as e:
        prompts.check_length(model, 29)
    assert "\n" not in str(e.value)
    with pytest.raises(LmforgeError, match="context of 28"):
        generate(model, torch.ones(1, 20, dtype=torch.long), max_new_tokens=9, num_beams=2)
    with pytest.raises(ConfigError, match="already"):
        prompts.apply(model, _cfg("prefix"))
    with pytest.raises(ConfigError, match="packed"):
        model(torch.ones(1, 4, dtype=torch.long), segment_ids=torch.zeros(1, 4))
    gc = build(presets.get("tiny-llama"))
    gc.gradient_checkpointing = True
    with pytest.raises(ConfigError, match="checkpointing"):
        prompts.apply(gc, _cfg("prefix"))
    with pytest.raises(ConfigError, match="only prefix"):
        prompts.fold(model)
    with pytest.raises(ConfigError, match="no prompt"):
        prompts.prompt_encoder(build(presets.get("tiny-gpt2")))
    with pytest.raises(ConfigError, match="handles"):
        prompts.apply(build(presets.get("tiny-gpt2")), PeftConfig(method="lora"))


def test_folded_prefix_state_loads_into_a_fresh_model():
    model = prompts.fold(_apply(_base("tiny-llama"), "prefix"))
    fresh = prompts.apply(_base("tiny-llama"), _cfg("prefix"))
    fresh.load_state_dict(model.state_dict())  # folds itself: the state has no MLP
    assert prompts.prompt_encoder(fresh).folded
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_sliding_window_counts_the_virtual_tokens():
    """GPT-2 (128 learned positions) with 100 virtual tokens slides over 28 real ones."""
    model = prompts.apply(_base("tiny-gpt2"), PeftConfig(method="prompt", num_virtual_tokens=100))
    ids = _ids(B=1, T=20)
    a = generate(model, ids, max_new_tokens=15, eos_token_id=[])
    b = generate(model, ids, max_new_tokens=15, eos_token_id=[], use_cache=False)
    assert a.shape == (1, 35) and torch.equal(a, b)
    with torch.no_grad():  # the last token follows the last 28 tokens only
        last = model(a[:, -29:-1]).logits[:, -1].argmax(-1)
    assert int(last) == int(a[0, -1])


def test_prefix_in_bfloat16_and_checkpointing_switched_on_later():
    model = _apply(_base("tiny-llama"), "prefix").to(torch.bfloat16)
    ids, mask = pad_left([[3, 4, 5, 6, 7, 9], [8, 9, 10]])
    a = generate(model, ids, mask, max_new_tokens=5, eos_token_id=[])
    b = generate(model, ids, mask, max_new_tokens=5, eos_token_id=[], use_cache=False)
    assert torch.equal(a, b)
    model.gradient_checkpointing = True
    model.train()
    with pytest.raises(ConfigError, match="checkpointing"):
        model(ids)
