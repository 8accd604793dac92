"""Encoder-decoder presets: parameter counts against published figures, family flags.

The counts are also in `presets.PUBLISHED` (checked in test_presets.py); restated here so
the encoder-decoder figures and their sources read in one place. Exact = the count of the
transformers class at that checkpoint's config (BartForConditionalGeneration /
T5ForConditionalGeneration `num_parameters()`).
"""

import pytest
import torch

from lmforge.models import Seq2Seq, build, presets

SEQ2SEQ = {  # name: (published, source, exact count of the HF checkpoint's shapes)
    "bart-base": (139e6, "HF hub facebook/bart-base", 139_420_416),
    "bart-large": (406e6, "HF hub facebook/bart-large", 406_291_456),
    "t5-small": (60e6, "Raffel et al. 2020, Sec. 3.7", 60_506_624),
    "t5-base": (220e6, "Raffel et al. 2020, Sec. 3.7", 222_903_552),
    "t5-large": (738e6, "HF hub google-t5/t5-large (paper: 770M)", 737_668_096),
    "t5-v1.1-small": (77e6, "HF hub google/t5-v1_1-small", 76_961_152),
    "t5-v1.1-base": (248e6, "HF hub google/t5-v1_1-base", 247_577_856),
    "t5-v1.1-large": (783e6, "HF hub google/t5-v1_1-large", 783_150_080),
}


def _model(name: str):
    with torch.device("meta"):
        return build(presets.get(name))


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_parameter_count_matches_published(name):
    published, source, exact = SEQ2SEQ[name]
    count = _model(name).num_parameters()
    assert abs(count - published) / published < 0.02, f"{count:,} vs {source}"
    assert count == exact


def test_family_flags():
    bart, t5, v11 = presets.get("bart-base"), presets.get("t5-base"), presets.get("t5-v1.1-base")
    assert bart.norm_position == "post" and bart.position_offset == 2 and bart.embed_norm
    assert t5.norm == "rmsnorm" and not t5.bias and not t5.scale_attention
    assert t5.scale_decoder_outputs and t5.tie_embeddings and t5.ffn == "mlp"
    assert v11.ffn == "gated" and not v11.tie_embeddings and not v11.scale_decoder_outputs
    assert presets.get("t5-v1.1-small").head_size * 6 == 384  # 6 heads of 64 in a 512 model


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-t5", "tiny-t5-v1.1"])
def test_tiny_presets_run(name):
    model = build(presets.get(name)).eval()
    assert isinstance(model, Seq2Seq)
    out = model(torch.randint(0, 256, (2, 10)), decoder_input_ids=torch.randint(0, 256, (2, 6)))
    assert out.logits.shape == (2, 6, 256)
    assert out.encoder_last_hidden_state.shape == (2, 10, 64)
    assert model.num_parameters() < 300_000
