"""Encoder-decoder initialization: T5 draws each weight as transformers' T5 does, BART keeps
its plain N(0, init_std).

T5's stds differ by role (embeddings 1, Wq (d * d_kv)^-0.5, Wk / Wv / wi / relative bias
d^-0.5, Wo (n_head * d_kv)^-0.5, wo d_ff^-0.5, norms 1), each times initializer_factor.
The test builds the same shape in lmforge and in `T5ForConditionalGeneration` (random
weights, offline) and compares every parameter's empirical std and mean, matched by the
transformers name (`hf_state_dict`). The shape has d_kv * n_head != d_model and
d_ff != 4 d, so a std taken from the wrong size fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.interop.hf import config_to_hf, hf_state_dict
from lmforge.models import build, presets
from lmforge.models.layers import init_normal_

transformers = pytest.importorskip("transformers")

SHAPE = dict(
    n_layer=2, d_model=64, n_head=8, head_dim=16, d_ff=384, vocab_size=512,
    relative_attention_num_buckets=64, relative_attention_max_distance=128,
)  # fmt: skip
# transformers keeps the shared embedding under these names too (and ties lm_head to it)
TIED_COPIES = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}


def _pair(gated: bool, factor: float = 1.0, seed: int = 0):
    builder = presets.t5_v1_1 if gated else presets.t5
    config = builder(**SHAPE, initializer_factor=factor)
    torch.manual_seed(seed)
    ours = build(config)
    hf_config = transformers.T5Config(**{**config_to_hf(config), "initializer_factor": factor})
    torch.manual_seed(seed + 1)
    theirs = transformers.T5ForConditionalGeneration(hf_config)
    return config, hf_state_dict(ours), theirs.state_dict()


def _tol(n_ours: int, n_theirs: int) -> float:
    """Four standard errors of the ratio of two std estimates (relative SE 1/sqrt(2n) each),
    at least 4%: 0.09 for 4k-element tensors, 0.18 for the 512-element relative bias."""
    return max(0.04, 4 * math.sqrt(1 / (2 * n_ours) + 1 / (2 * n_theirs)))


@pytest.mark.parametrize("factor", [1.0, 0.5])
@pytest.mark.parametrize("gated", [False, True], ids=["t5", "t5-v1.1"])
def test_t5_init_matches_transformers(gated, factor):
    config, ours, theirs = _pair(gated, factor)
    assert set(ours) <= set(theirs)
    assert set(theirs) - set(ours) <= TIED_COPIES  # every weight of theirs is compared
    assert ("lm_head.weight" in ours) == gated  # v1.1's untied head is checked too
    stds = {}
    for name, mine in ours.items():
        ref = theirs[name]
        assert mine.shape == ref.shape, name
        if "layer_norm" in name:  # norms start at the factor, exactly
            assert torch.equal(mine, torch.full_like(mine, factor)), name
            assert torch.equal(ref, torch.full_like(ref, factor)), name
            continue
        s_mine, s_ref = mine.std().item(), ref.std().item()
        stds[name] = s_mine
        assert abs(s_mine / s_ref - 1) < _tol(mine.numel(), ref.numel()), (name, s_mine, s_ref)
        for t, s in ((mine, s_mine), (ref, s_ref)):  # mean 0, within 5 standard errors
            assert abs(t.mean().item()) < 5 * s / math.sqrt(t.numel()), name
    # and the stds are the rules' (loosely: this only guards the rules above against both
    # sides drifting together)
    d, inner, f = config.d_model, config.n_head * config.head_size, factor
    expect = {
        "shared.weight": f,
        "encoder.block.0.layer.0.SelfAttention.q.weight": f * (d * config.head_size) ** -0.5,
        "encoder.block.0.layer.0.SelfAttention.k.weight": f * d**-0.5,
        "decoder.block.1.layer.1.EncDecAttention.o.weight": f * inner**-0.5,
        "decoder.block.1.layer.2.DenseReluDense.wo.weight": f * config.d_ff**-0.5,
    }
    if gated:
        expect["lm_head.weight"] = f
    for name, std in expect.items():
        assert stds[name] == pytest.approx(std, rel=0.1), name


def test_t5_init_is_seeded():
    a, b = (_pair(gated=True, seed=3)[1] for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_t5_init_ignores_init_std():
    """T5's stds come from its shape and initializer_factor; init_std (the task heads' std)
    leaves the body as it is."""
    sds = []
    for std in (0.02, 0.3):
        torch.manual_seed(0)
        sds.append(build(presets.get("tiny-t5", init_std=std)).state_dict())
    assert all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])


@pytest.mark.parametrize("tied", [True, False])
def test_bart_init_is_plain_normal(tied):
    """BART (scaled attention) keeps the generic init, draw for draw: N(0, init_std) for
    every Linear and Embedding weight in module order, then the untied head."""
    model = build(presets.get("tiny-bart", init_std=0.05, tie_embeddings=tied))
    torch.manual_seed(7)
    model.init_weights()
    got = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    with torch.no_grad():
        init_normal_(model, 0.05)
        if not tied:
            model.lm_head.weight.normal_(0.0, 0.05)
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    assert got["tok_embed.weight"].std().item() == pytest.approx(0.05, rel=0.05)


def test_initializer_factor_only_for_t5():
    with pytest.raises(ConfigError, match="model.initializer_factor"):
        presets.get("tiny-bart", initializer_factor=0.5)
    with pytest.raises(ConfigError, match="model.initializer_factor"):
        presets.get("tiny-gpt2", initializer_factor=0.5)
    with pytest.raises(ConfigError, match="model.initializer_factor"):
        presets.get("tiny-t5", initializer_factor=0.0)
    assert presets.get("tiny-t5", initializer_factor=0.5).initializer_factor == 0.5
