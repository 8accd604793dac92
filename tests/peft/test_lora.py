"""LoRA: identity at the start, per-slice updates of fused weights, only A and B train
(base weights bit-identical after training), merge / unmerge, the small adapter file."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lmforge import peft
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models import build, presets
from lmforge.models.heads import ClassificationHead, TaskModel
from lmforge.peft.lora import LoRALinear
from lmforge.training.optim import build_optimizers

# a decoder (GPT-2; Llama: GQA, gated FFN), an encoder (BERT), encoder-decoders (BART, T5)
PRESETS = ["tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-bart", "tiny-t5-v1.1"]
IDS = torch.randint(4, 200, (2, 10), generator=torch.Generator().manual_seed(1))


def _model(name, **overrides):
    torch.manual_seed(0)
    config = dataclasses.replace(presets.get(name), **overrides)
    return build(config).eval()


def _out(model, ids=IDS):
    arch = model.config.arch
    if arch == "seq2seq":
        return model(ids, decoder_input_ids=ids).logits
    if arch == "encoder":
        return model(ids).prediction_logits
    return model(ids).logits


def _close(a, b):
    """Equal to 1e-5 on the logits' scale (T5's untied logits reach ~20)."""
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def _randomize_B(model, std=0.02):
    with torch.no_grad():
        for layer in peft.lora.lora_layers(model):
            for lora in layer.lora.values():
                lora.B.normal_(0.0, std)


def _lora(**kw):
    return peft.PeftConfig(method="lora", r=4, alpha=8, **kw)


@pytest.mark.parametrize("name", PRESETS)
def test_identity_at_start_and_only_lora_trains(name):
    model = _model(name)
    with torch.no_grad():
        before = _out(model)
    peft.apply(model, _lora(targets=["all-linear"]))
    with torch.no_grad():
        assert torch.equal(_out(model), before)  # B = 0: exactly the same model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n for n in trainable)
    assert trainable == {n for n, _ in model.named_parameters() if ".lora." in n}
    # the frozen weights keep their keys: a merged state loads into the plain model
    plain = _model(name)
    assert set(peft.merged_state_dict(model)) == set(plain.state_dict())


@pytest.mark.parametrize("name", PRESETS)
def test_training_moves_only_lora_and_the_optimizer_holds_nothing_else(name):
    model = _model(name, dropout=0.0)
    peft.apply(model, _lora(targets=["q", "v", "down"], dropout=0.1))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    (opt,) = build_optimizers(model, "adamw", lr=1e-2, weight_decay=0.1)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    model.train()
    for _ in range(3):
        logits = _out(model)
        loss = F.cross_entropy(logits.flatten(0, 1), IDS.roll(1).flatten())
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == (n in lora), n
        opt.step()
        opt.zero_grad()
    assert all(p not in opt.state for p in model.parameters() if not p.requires_grad)
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # bit-identical
    assert all(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)


def test_q_and_v_adapt_exactly_their_rows_of_the_fused_qkv():
    """Per-projection LoRA: q' = Wq x + s B_q A_q x, k unchanged, v' = Wv x + s B_v A_v x."""
    model = _model("tiny-llama")  # GQA: k and v rows are narrower than q's
    peft.apply(model, _lora(targets=["q", "v"]))
    _randomize_B(model, 0.5)
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear)
    q, kv, _ = model.blocks[0].attn.split_sizes
    x = torch.randn(3, 64)
    W, s = layer.weight, 8 / 4
    Aq, Bq = layer.lora["q"].A, layer.lora["q"].B
    Av, Bv = layer.lora["v"].A, layer.lora["v"].B
    with torch.no_grad():
        y = layer(x)
        assert torch.allclose(y[:, :q], x @ W[:q].T + s * x @ Aq.T @ Bq.T, atol=1e-6)
        assert torch.equal(y[:, q : q + kv], x @ W[q : q + kv].T)  # k: no update
        assert torch.allclose(y[:, q + kv :], x @ W[q + kv :].T + s * x @ Av.T @ Bv.T, atol=1e-6)


def test_gated_ffn_gate_and_up_are_the_two_halves_of_fc1():
    model = _model("tiny-llama")
    peft.apply(model, _lora(targets=["gate", "up", "down"]))
    fc1 = model.blocks[0].ffn.fc1
    d_ff = model.config.ffn_size
    assert (fc1.lora["gate"].start, fc1.lora["gate"].end) == (0, d_ff)  # [gate; up]
    assert (fc1.lora["up"].start, fc1.lora["up"].end) == (d_ff, 2 * d_ff)
    assert isinstance(model.blocks[0].ffn.fc2, LoRALinear)


def test_cross_attention_targets_on_the_encoder_decoder():
    model = _model("tiny-bart")
    peft.apply(model, _lora(targets=["cross_k", "cross_v"]))
    kv = model.decoder_blocks[0].cross.kv
    inner = model.config.n_head * model.config.head_size
    assert {n: (x.start, x.end) for n, x in kv.lora.items()} == {
        "cross_k": (0, inner), "cross_v": (inner, 2 * inner)
    }
    assert not isinstance(model.encoder_blocks[0].attn.qkv, LoRALinear)


@pytest.mark.parametrize("name", PRESETS)
def test_merge_and_unmerge(name):
    model = _model(name)
    peft.apply(model, _lora(targets=["all-linear"]))
    _randomize_B(model)
    key = next(k for k in model.state_dict() if k.endswith("0.attn.qkv.weight"))
    w0 = model.state_dict()[key].clone()
    with torch.no_grad():
        lora = _out(model)
        peft.merge(model)
        merged = _out(model)
        peft.unmerge(model)
        again = _out(model)
    assert (lora - _out(_model(name))).abs().max() > 1e-3  # the update matters
    assert _close(merged, lora) and _close(again, lora)
    assert (model.state_dict()[key] - w0).abs().max() <= 1e-6  # W0 back (to rounding)
    # the merged weights in a plain model (no LoRA modules) give the same logits
    plain = _model(name)
    plain.load_state_dict(peft.merged_state_dict(model))
    with torch.no_grad():
        assert _close(_out(plain), lora)


def test_merge_and_unload_gives_the_plain_model():
    model = _model("tiny-llama")
    peft.apply(model, _lora(targets=["all-linear"]))
    _randomize_B(model)
    with torch.no_grad():
        lora = _out(model)
        peft.merge_and_unload(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        assert _close(_out(model), lora)
    plain = _model("tiny-llama")
    plain.load_state_dict(model.state_dict())  # strict: exactly the plain model's keys


def test_tied_embeddings_survive_apply_and_merge():
    model = _model("tiny-gpt2")
    assert model.config.tie_embeddings
    peft.apply(model, _lora(targets=["all-linear"]))
    assert model.lm_head.weight is model.tok_embed.weight
    assert not model.tok_embed.weight.requires_grad
    peft.merge(model)
    assert model.lm_head.weight is model.tok_embed.weight


def test_rslora_scale_and_dropout_on_the_lora_path_only():
    model = _model("tiny-gpt2")
    peft.apply(model, peft.PeftConfig(method="lora", r=4, alpha=8, rslora=True, dropout=0.5))
    lora = model.blocks[0].attn.qkv.lora["q"]
    assert lora.scale == 8 / 2  # alpha / sqrt(r)
    _randomize_B(model, 0.5)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(4, 64)
    layer.train()
    torch.manual_seed(3)
    with torch.no_grad():
        y_train = layer(x)
        base = F.linear(x, layer.weight, layer.bias)
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
    q = model.blocks[0].attn.split_sizes[0]
    assert not torch.allclose(y_train[:, :q], y_eval[:, :q])  # dropout(x) on the LoRA path
    k_rows = slice(q, 2 * q)
    assert torch.equal(y_train[:, k_rows], base[:, k_rows])  # W0 x never sees dropout


def test_task_head_trains_as_modules_to_save():
    body = _model("tiny-bert")
    task = TaskModel(body, ClassificationHead(64, 3), "first")
    peft.apply(task, _lora())
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert {n for n in trainable if not n.startswith("head.")} == {
        n for n, _ in task.named_parameters() if ".lora." in n
    }
    assert {"head.out.weight", "head.out.bias"} <= trainable
    n_train, n_total = peft.count_trainable(task)
    assert n_train == sum(p.numel() for n, p in task.named_parameters() if n in trainable)
    assert n_total == sum(p.numel() for p in task.parameters())
    # an explicit list replaces the default: here the pooler trains too, the head not
    task2 = TaskModel(_model("tiny-bert"), ClassificationHead(64, 3), "first")
    peft.apply(task2, _lora(modules_to_save=["pooler"]))
    names = {n for n, p in task2.named_parameters() if p.requires_grad and ".lora." not in n}
    assert names == {"backbone.pooler.dense.weight", "backbone.pooler.dense.bias"}


def test_adapter_file_round_trip_and_mismatches(tmp_path):
    model = _model("tiny-llama")
    cfg = _lora(targets=["q", "v"])
    peft.apply(model, cfg)
    _randomize_B(model)
    state = peft.trainable_state_dict(model)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "adapter.safetensors")
    size = (tmp_path / "adapter.safetensors").stat().st_size
    assert size < 0.1 * sum(p.numel() * 4 for p in model.parameters())  # kilobytes, not MB
    fresh = peft.apply(_model("tiny-llama"), cfg)
    peft.load_trainable(fresh, load_file(tmp_path / "adapter.safetensors"))
    with torch.no_grad():
        assert torch.equal(_out(fresh), _out(model))
    other_targets = peft.apply(_model("tiny-llama"), _lora(targets=["q", "k", "v"]))
    with pytest.raises(CheckpointError, match="lacks 'blocks.0.attn.qkv.lora.k.A'"):
        peft.load_trainable(other_targets, state)
    other_shape = peft.apply(_model("tiny-llama", d_model=96, d_ff=128), cfg)
    with pytest.raises(CheckpointError, match=r"has shape \(4, 64\), the model.s \(4, 96\)"):
        peft.load_trainable(other_shape, state)
    other_family = peft.apply(_model("tiny-bert"), cfg)
    with pytest.raises(CheckpointError, match="does not train"):
        peft.load_trainable(other_family, {"tok_embed.weight": torch.zeros(1)})


# ---- bad input: one line, ConfigError


def _one_line(exc_info):
    assert "\n" not in str(exc_info.value)


def test_target_that_matches_no_layer_lists_the_layers():
    with pytest.raises(ConfigError, match=r"'gate' matches no layer of this model \(it has: "
                       r"q, k, v, out, up, down\)") as e:
        peft.apply(_model("tiny-gpt2"), _lora(targets=["q", "gate"]))
    _one_line(e)
    with pytest.raises(ConfigError, match="'cross_q' matches no layer"):
        peft.apply(_model("tiny-bert"), _lora(targets=["cross_q"]))


def test_rank_larger_than_the_layer_and_bad_config_values():
    model = _model("tiny-llama")  # k rows: n_kv_head * head_size = 32
    with pytest.raises(ConfigError, match=r"'peft.r': 48 is larger than the layer it adapts "
                       r"\(blocks.0.attn.qkv \[k\]: 64 -> 32\)") as e:
        peft.apply(model, peft.PeftConfig(method="lora", r=48, targets=["k"]))
    _one_line(e)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing half-done
    for bad, msg in [
        (dict(r=0), "config key 'peft.r': expected an integer >= 1, got 0"),
        (dict(r=-2), "config key 'peft.r': expected an integer >= 1, got -2"),
        (dict(method="qlora"), "'peft.method': expected one of lora, adapters"),
        (dict(targets=["query"]), "'peft.targets': expected names from q, k, v"),
        (dict(targets=[]), "'peft.targets': expected a non-empty list"),
        (dict(alpha=0), "'peft.alpha': expected a number > 0"),
        (dict(dropout=1.0), "'peft.dropout': expected a number in \\[0, 1\\)"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            peft.PeftConfig(**{"method": "lora", **bad})


def test_unknown_module_to_save():
    task = TaskModel(_model("tiny-bert"), ClassificationHead(64, 3), "first")
    with pytest.raises(ConfigError, match="no module named 'classifier' .*backbone, head"):
        peft.apply(task, _lora(modules_to_save=["classifier"]))
