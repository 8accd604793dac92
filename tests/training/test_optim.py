import pytest
import torch

from lmforge.models import build, presets
from lmforge.training.optim import build_optimizers, hidden_matrices, param_groups


def tiny(**kw):
    torch.manual_seed(0)
    return build(presets.get("tiny-gpt2", **kw))


def names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_decay_on_matrices_and_embeddings_not_on_biases_and_norms():
    model = tiny()
    decay, no_decay = param_groups(model, 0.1)
    d, nd = names(model, decay["params"]), names(model, no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "tok_embed.weight" in d and "pos_embed.weight" in d
    assert "blocks.0.attn.qkv.weight" in d and "blocks.1.ffn.fc2.weight" in d
    assert "blocks.0.attn.qkv.bias" in nd and "blocks.0.attn_norm.weight" in nd
    assert "norm_out.bias" in nd
    assert not d & nd
    assert d | nd == {n for n, _ in model.named_parameters()}
    # the tied LM head is the embedding: listed once
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == sum(
        p.numel() for p in model.parameters()
    )


def test_adamw_step_with_zero_grads_decays_only_the_decay_group():
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (opt,) = build_optimizers(model, "adamw", lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    # AdamW, zero gradient: p <- p - lr * wd * p, exactly the decoupled decay
    assert torch.allclose(after["blocks.0.attn.qkv.weight"],
                          before["blocks.0.attn.qkv.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(after["blocks.0.attn.qkv.bias"], before["blocks.0.attn.qkv.bias"])
    assert torch.equal(after["norm_out.weight"], before["norm_out.weight"])


def test_groups_carry_base_lr_for_the_schedule():
    opts = build_optimizers(tiny(), "adamw", lr=3e-4)
    assert all(g["base_lr"] == 3e-4 for o in opts for g in o.param_groups)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon not available")
@pytest.mark.learning
def test_muon_takes_hidden_matrices_adamw_the_rest():
    model = tiny(tie_embeddings=False)
    muon, adamw = build_optimizers(model, "muon", lr=0.02)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    m = names(model, [p for g in muon.param_groups for p in g["params"]])
    a = names(model, [p for g in adamw.param_groups for p in g["params"]])
    assert m == {f"blocks.{i}.{w}.weight" for i in range(2)
                 for w in ("attn.qkv", "attn.out", "ffn.fc1", "ffn.fc2")}
    assert {"tok_embed.weight", "pos_embed.weight", "lm_head.weight"} <= a
    assert not m & a and len(m | a) == len(list(model.parameters()))
    assert {p for p in hidden_matrices(model)} == {
        p for g in muon.param_groups for p in g["params"]
    }
    # and it trains: a few steps on one batch lower the loss
    from lmforge.objectives import CausalLM

    obj, raw = CausalLM(), torch.randint(0, 256, (4, 17))
    losses = []
    for _ in range(5):
        loss, _ = obj.loss(model, obj.prepare(raw), reduction="mean")
        losses.append(loss.item())
        loss.backward()
        for o in (muon, adamw):
            o.step()
            o.zero_grad()
    assert losses[-1] < losses[0] - 0.3
