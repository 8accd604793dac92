"""lmforge's train-FLOPs accounting (flops.py, what `lmforge experiment` sets max_steps
from) against a hand count for one small config of each architecture, and the runner's
budget -> max_steps.

The convention (flops.py): N counts every parameter that takes part in a matmul -- all
but lookup-only embedding tables (a tied LM / MLM head's table counts, once) -- and a
training token costs 6 N (forward 2 N + backward 4 N) plus 12 L d_attn T for attention.
Shapes below: d = 8, 2 heads (d_attn = 8), one layer, vocabulary 10.
"""

import pytest

from lmforge.flops import (
    encoder_flops_per_token,
    model_flops_per_token,
    seq2seq_flops_per_token,
)
from lmforge.models import build
from lmforge.models.config import resolve_model_config

D, V = 8, 10


def ln():  # LayerNorm weight + bias
    return 2 * D


def linear(n_in, n_out):  # weight + bias
    return n_in * n_out + n_out


def self_attention():  # fused q/k/v projection + output projection
    return linear(D, 3 * D) + linear(D, D)


def ffn(d_ff):
    return linear(D, d_ff) + linear(d_ff, D)


def test_decoder_gpt2_by_hand():
    """GPT-2 block (pre-LN, d_ff = 4d), final LN, LM head tied to the token table;
    learned positions are a lookup: N = 872 + 16 + 80 = 968, T = 4."""
    model = build(resolve_model_config(
        {"preset": "gpt2", "n_layer": 1, "n_head": 2, "d_model": D, "max_seq_len": 4}, V))
    block = ln() + self_attention() + ln() + ffn(4 * D)
    n = block + ln() + V * D
    assert (block, n) == (872, 968)
    T = 4
    assert model_flops_per_token(model, T) == 6 * n + 12 * 1 * D * T == 6192


def test_encoder_roberta_mlm_by_hand():
    """RoBERTa block (d_ff 16), embedding LN; the MLM head (dense + LN + tied decoder +
    its bias) runs only at the 15% masked positions."""
    model = build(resolve_model_config(
        {"preset": "roberta-base", "n_layer": 1, "n_head": 2, "d_model": D, "d_ff": 16,
         "max_seq_len": 4, "position_offset": None}, V))
    block = ln() + self_attention() + ln() + ffn(16)
    head = linear(D, D) + ln() + V * D + V
    assert (block, head) == (600, 178)
    T, p = 4, 0.15
    hand = 6 * (ln() + block + p * head) + 12 * 1 * D * T
    assert encoder_flops_per_token(model, T, mlm_fraction=p) == pytest.approx(hand)
    assert hand == pytest.approx(4240.2)


def test_encoder_decoder_bart_by_hand():
    """BART 1 + 1 layers, S = 4 source tokens, T = 6 target tokens, per source token:
    encoder (and the cross-attention K/V, which read the S memory tokens) on S tokens,
    the rest of the decoder and the tied LM head on T tokens; attention 12 d L per
    (query, key) pair: encoder S x S, decoder T x T and T x S."""
    model = build(resolve_model_config(
        {"preset": "bart-base", "n_layer": 1, "n_head": 2, "d_model": D, "d_ff": 16,
         "max_seq_len": 8}, V))
    enc = ln() + self_attention() + ln() + ffn(16)
    cross_kv = D * 2 * D  # the K/V weight (its bias runs with the decoder's count)
    dec_block = (ln() + self_attention() + ln() + linear(D, D) + linear(D, 2 * D)
                 + linear(D, D) + ln() + ffn(16))
    dec = dec_block - cross_kv + V * D
    assert (enc, dec_block, dec) == (600, 904, 856)
    S, T = 4, 6
    per_example = (6 * (enc + cross_kv) * S + 6 * dec * T
                   + 12 * D * (S * S + T * T + T * S))
    assert seq2seq_flops_per_token(model, S, T) == pytest.approx(per_example / S)
    assert per_example / S == 13896


def test_budget_sets_max_steps(tmp_path, tok_file):
    """The runner's max_steps = budget / (F x tokens per step), F by hand (the decoder
    above with the 300-token vocabulary: N = 872 + 16 + 300 x 8 = 3288)."""
    from lmforge.config import from_dict
    from lmforge.experiments.runner import (
        _with_steps,
        flops_and_params,
        non_embedding_params,
        steps_for_budget,
        tokens_per_step,
    )
    from lmforge.training.config import RunConfig

    cfg = from_dict(RunConfig, {
        "run_dir": str(tmp_path / "run"), "tokenizer": {"path": str(tok_file)},
        "model": {"preset": "gpt2", "n_layer": 1, "n_head": 2, "d_model": D,
                  "max_seq_len": 4},
        "train": {"batch_size": 3, "seq_len": 4, "max_steps": 100, "warmup_steps": 10}})
    fpt, params = flops_and_params(cfg)
    hand = 6 * (872 + 16 + 300 * D) + 12 * D * 4
    assert fpt == hand == 20112
    assert params == 3288 + 4 * D  # + the position table
    assert non_embedding_params(cfg) == 872 + 16  # the block and the final LN (Kaplan's N)
    assert tokens_per_step(cfg) == 3 * 4
    assert steps_for_budget(cfg, 7 * hand * 12) == 7  # seven steps' worth
    assert steps_for_budget(cfg, 7.4 * hand * 12) == 7  # the nearest whole step
    train = _with_steps(cfg.train, 7)
    assert (train.max_steps, train.warmup_steps) == (7, 1)  # warmup scaled 10/100 -> 0.7
