"""Houlsby adapters: two per layer, identity at the start, only adapters + norms + head
train (base weights bit-identical after training), the adapter formula, the small file."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmforge import peft
from lmforge.errors import ConfigError
from lmforge.models import build, presets
from lmforge.models.heads import ClassificationHead, TaskModel
from lmforge.models.layers import LayerNorm, RMSNorm
from lmforge.peft.adapters import AdapterLinear
from lmforge.training.optim import build_optimizers

PRESETS = ["tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-bart", "tiny-t5-v1.1"]
IDS = torch.randint(4, 200, (2, 10), generator=torch.Generator().manual_seed(1))


def _model(name, **overrides):
    torch.manual_seed(0)
    return build(dataclasses.replace(presets.get(name), **overrides)).eval()


def _out(model):
    arch = model.config.arch
    if arch == "seq2seq":
        return model(IDS, decoder_input_ids=IDS).logits
    if arch == "encoder":
        return model(IDS).prediction_logits
    return model(IDS).logits


def _adapters(**kw):
    return peft.PeftConfig(method="adapters", bottleneck=8, **kw)


def _is_norm_param(model, name):
    module = model.get_submodule(name.rpartition(".")[0])
    return isinstance(module, (LayerNorm, RMSNorm))


@pytest.mark.parametrize("name", PRESETS)
def test_two_adapters_per_layer_identity_at_start(name):
    model = _model(name)
    with torch.no_grad():
        before = _out(model)
    keys = set(model.state_dict())
    peft.apply(model, _adapters())
    with torch.no_grad():
        assert torch.equal(_out(model), before)  # W_up = 0, b_up = 0: exactly the identity
    c = model.config
    layers = c.n_layer + (c.decoder_layers if c.arch == "seq2seq" else 0)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, AdapterLinear)]
    assert len(wrapped) == 2 * layers
    assert all(n.endswith(("attn.out", "ffn.fc2")) for n in wrapped)  # no cross-attention
    assert keys <= set(model.state_dict())  # the wrapped weights keep their keys
    for n, p in model.named_parameters():  # adapters and norms train, nothing else
        assert p.requires_grad == (".adapter." in n or _is_norm_param(model, n)), n


@pytest.mark.parametrize("name", PRESETS)
def test_training_moves_only_adapters_and_norms(name):
    model = _model(name, dropout=0.0)
    peft.apply(model, _adapters())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    (opt,) = build_optimizers(model, "adamw", lr=1e-2, weight_decay=0.1)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    model.train()
    for _ in range(3):
        F.cross_entropy(_out(model).flatten(0, 1), IDS.roll(1).flatten()).backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # bit-identical
            assert p not in opt.state
    ups = [m.adapter.up.weight for m in model.modules() if isinstance(m, AdapterLinear)]
    assert all(w.abs().max() > 0 for w in ups)  # the adapters learned something


def test_adapter_formula_after_the_projection():
    model = _model("tiny-bert")
    peft.apply(model, _adapters(adapter_activation="gelu"))
    layer = model.blocks[0].attn.out
    with torch.no_grad():
        for p in layer.adapter.parameters():
            p.normal_(0.0, 0.1)
        x = torch.randn(3, 64)
        y = x @ layer.weight.T + layer.bias  # the projection W x + b
        a = layer.adapter
        expect = y + (F.gelu(y @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
        assert torch.allclose(layer(x), expect, atol=1e-6)


def test_task_model_head_and_norm_switch():
    task = TaskModel(_model("tiny-bert"), ClassificationHead(64, 2), "first")
    peft.apply(task, _adapters(train_norms=False))
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in task.named_parameters()
                         if ".adapter." in n or n.startswith("head.")}  # fmt: skip
    n_train, n_total = peft.count_trainable(task)
    # per adapter: d*m + m + m*d + d = 2*64*8 + 8 + 64; 2 per layer, 2 layers; head 64*2 + 2
    assert n_train == 4 * (2 * 64 * 8 + 8 + 64) + 130
    assert n_total == sum(p.numel() for p in task.parameters())


def test_adapter_state_round_trip():
    model = peft.apply(_model("tiny-bart"), _adapters())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdapterLinear):
                m.adapter.up.weight.normal_(0.0, 0.1)
    state = peft.trainable_state_dict(model)
    assert all(".adapter." in n or "norm" in n for n in state)
    fresh = peft.apply(_model("tiny-bart"), _adapters())
    peft.load_trainable(fresh, state)
    with torch.no_grad():
        assert torch.equal(_out(fresh), _out(model))


def test_adapters_do_not_merge_and_bad_widths():
    model = peft.apply(_model("tiny-gpt2"), _adapters())
    with pytest.raises(ConfigError, match="nonlinear and cannot be merged"):
        peft.merge(model)
    with pytest.raises(ConfigError, match=r"'peft.bottleneck': 128 is wider than the model "
                       r"\(64\)") as e:
        peft.apply(_model("tiny-gpt2"), peft.PeftConfig(method="adapters", bottleneck=128))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="'peft.bottleneck': expected an integer >= 1, got 0"):
        peft.PeftConfig(method="adapters", bottleneck=0)
    with pytest.raises(ConfigError, match="'peft.adapter_activation': expected relu or gelu"):
        peft.PeftConfig(method="adapters", adapter_activation="swish")
