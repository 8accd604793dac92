"""Every preset counts the parameters its paper or model card reports."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models import build, presets


def _count(name: str) -> int:
    with torch.device("meta"):  # shapes only: no memory for 175B parameters
        model = build(presets.get(name))
    return model.num_parameters(non_embedding=name in presets.NON_EMBEDDING)


def test_gpt2_124m_is_exact():
    assert _count("gpt2") == 124_439_808


@pytest.mark.parametrize("name", sorted(presets.PUBLISHED))
def test_parameter_count_matches_published(name):
    published, exact, source = presets.PUBLISHED[name]
    count = _count(name)
    if exact:
        assert count == published, source
    else:
        assert abs(count - published) / published < 0.02, f"{count:,} vs {source}"


def test_every_full_size_preset_has_a_published_count():
    full = [
        n for n in presets.names() if not n.startswith("tiny-") and n not in presets.UNPUBLISHED
    ]
    assert sorted(full) == sorted(presets.PUBLISHED)


def test_family_flags():
    assert presets.get("gpt1").norm_position == "post"
    assert presets.get("llama2-70b").kv_heads == 8
    assert presets.get("mistral-7b").sliding_window == 4096
    assert presets.get("qwen2-7b").has_qkv_bias and not presets.get("qwen2-7b").bias
    gemma = presets.get("gemma-7b")
    assert gemma.head_size == 256 and gemma.embed_scale and gemma.norm_unit_offset
    assert gemma.ffn == "gated" and gemma.activation == "gelu_tanh"
    assert presets.get("llama3.2-1b").rope_scaling["factor"] == 32.0


TINY_DECODERS = [
    n for n in presets.names() if n.startswith("tiny-") and presets.get(n).arch == "decoder"
]  # tiny encoders: tests/models/test_encoder_presets.py


@pytest.mark.parametrize("name", TINY_DECODERS)
def test_tiny_presets_run(name):
    model = build(presets.get(name)).eval()
    assert model(torch.randint(0, 256, (1, 16))).logits.shape == (1, 16, 256)
    assert model.num_parameters() < 200_000


def test_get_with_overrides_and_unknown_name():
    assert presets.get("gpt2", max_seq_len=256).max_seq_len == 256
    with pytest.raises(ConfigError, match="unknown"):
        presets.get("gpt5")
