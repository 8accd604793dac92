import pytest
import torch

from lmforge.flops import (
    flops_per_token,
    gpu_peak_flops,
    matmul_params,
    measure_matmul_flops,
    mfu,
    model_flops_per_token,
    peak_flops,
)
from lmforge.models import build, presets


def on_meta(name, **kw):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return build(presets.get(name, **kw))


def test_gpt2_124m_flops_per_token_matches_palm_formula():
    model = on_meta("gpt2")
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    # N: everything but the 1024 x 768 position table (the tied head is a matmul)
    assert matmul_params(model) == 124_439_808 - 1024 * 768 == 123_653_376
    # 6N + 12 L d T at T = 1024 (nanoGPT's estimate_mfu gives the same figure)
    expected = 6 * 123_653_376 + 12 * 12 * 768 * 1024
    assert expected == 855_166_464
    assert model_flops_per_token(model, 1024) == expected
    assert flops_per_token(123_653_376, 12, 768, 1024) == expected


def test_untied_head_counts_and_the_embedding_table_does_not():
    tied, untied = on_meta("tiny-gpt2"), on_meta("tiny-gpt2", tie_embeddings=False)
    # untying adds a separate head matrix; the lookup table itself is never counted
    assert matmul_params(untied) == matmul_params(tied)
    assert sum(p.numel() for p in untied.parameters()) == sum(
        p.numel() for p in tied.parameters()) + 256 * 64
    llama = on_meta("tiny-llama")  # RoPE: no position table
    assert matmul_params(llama) == sum(p.numel() for p in llama.parameters()) - (
        0 if llama.config.tie_embeddings else llama.tok_embed.weight.numel())


def test_mfu_and_peaks():
    assert mfu(1e9, 1000.0, 1e13) == pytest.approx(0.1)
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989.5e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA H200") == 989.5e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert gpu_peak_flops("Some Future GPU") is None


def test_measured_cpu_ceiling_is_plausible():
    flops = measure_matmul_flops(n=256, seconds=0.05)
    assert 1e8 < flops < 1e13


def test_cpu_ceiling_is_measured_in_the_training_precision():
    """bf16 autocast runs its matmuls in bf16: MFU is against the bf16 ceiling, not fp32's
    (a native-bf16 CPU otherwise reports MFU above 1)."""
    for precision, name in (("fp32", "fp32"), ("bf16", "bf16")):
        peak, source = peak_flops("cpu", precision)
        assert source.startswith(f"CPU {name} matmul ceiling") and 1e8 < peak < 1e14
