import math

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models import build, presets
from lmforge.objectives import IGNORE, CausalLM, clm_loss, linear_cross_entropy
from lmforge.objectives import build as build_objective


def test_prepare_shifts_targets_left_by_one():
    raw = np.array([[5, 6, 7, 8], [1, 2, 3, 4]], dtype=np.uint16)
    batch = CausalLM().prepare(raw)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 2, 3]]
    assert batch["targets"].tolist() == [[6, 7, 8], [2, 3, 4]]
    assert batch["input_ids"].dtype == torch.int64


def test_padding_targets_are_ignored_and_not_counted():
    raw = torch.tensor([[5, 6, 0, 0], [1, 2, 3, 4]])
    obj = CausalLM(pad_id=0)
    batch = obj.prepare(raw)
    assert batch["targets"].tolist() == [[6, IGNORE, IGNORE], [2, 3, 4]]
    assert obj.num_targets(batch) == 4


def test_loss_is_minus_mean_log_prob_of_the_next_token():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    targets = torch.tensor([[1, 2, IGNORE], [4, IGNORE, 6]])
    total, n = clm_loss(logits, targets)
    mean, n2 = clm_loss(logits, targets, reduction="mean")
    logp = torch.log_softmax(logits, -1)
    expected = -sum(logp[b, t, targets[b, t]] for b, t in [(0, 0), (0, 1), (1, 0), (1, 2)])
    assert n == n2 == 4
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert mean.item() == pytest.approx(expected.item() / 4, rel=1e-6)


def test_fresh_decoder_loss_is_near_uniform_ln_vocab():
    torch.manual_seed(0)
    model = build(presets.get("tiny-gpt2"))  # vocab 256, std-0.02 init: near-uniform logits
    raw = torch.randint(0, 256, (4, 17))
    loss, n = CausalLM().loss(model, CausalLM().prepare(raw), reduction="mean")
    assert n == 4 * 16
    assert loss.item() == pytest.approx(math.log(256), abs=0.05)


def test_unknown_objective_names_the_key():
    with pytest.raises(ConfigError, match="objective.name.*'mlmx'"):
        build_objective("mlmx")
    assert isinstance(build_objective("clm"), CausalLM)


@pytest.mark.parametrize("chunk", [7, 1024])
def test_fused_head_and_loss_match_the_plain_path(chunk):
    # chunk 7 does not divide the 4 x 32 rows; row 1 is padded from position 20 on
    raw = torch.randint(1, 256, (4, 33), generator=torch.Generator().manual_seed(0))
    raw[1, 20:] = 0
    results = []
    for c in (0, chunk):
        torch.manual_seed(0)
        model = build(presets.get("tiny-gpt2"))
        obj = CausalLM(pad_id=0, chunk=c)
        batch = obj.prepare(raw)
        loss, n = obj.loss(model, batch)
        (loss / n).backward()
        with torch.no_grad():  # the eval path computes no gradients
            eval_loss, _ = obj.loss(model, batch)
        grads = {k: p.grad for k, p in model.named_parameters()}
        results.append((loss.item(), n, eval_loss.item(), grads))
    (plain, n0, ev0, g0), (fused, n1, ev1, g1) = results
    assert n0 == n1 == 4 * 32 - 13
    assert fused == pytest.approx(plain, rel=1e-6)
    assert ev1 == pytest.approx(ev0, rel=1e-6)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-7), k


def test_linear_cross_entropy_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    h = torch.randn(10, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (10,))
    ref, _ = clm_loss(h @ w.t(), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = linear_cross_entropy(h, w, t, chunk=4)
    loss.backward()
    assert n == 10 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_cuda_loss_function_matches_clm_loss():
    """The cross-entropy the GPU path compiles gives clm_loss's summed value (run eagerly)."""
    from lmforge.objectives.clm import _cross_entropy_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    targets[0, 1] = IGNORE
    expected, n = clm_loss(logits, targets)
    assert n == 9
    torch.testing.assert_close(_cross_entropy_sum(logits, targets), expected)
