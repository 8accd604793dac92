"""Encoder presets: published parameter counts, family flags, ELECTRA generator sizes.

The counts of every full-size preset are checked against `presets.PUBLISHED` (with its
source) in test_presets.py; here the encoder figures are restated so a reader sees them
in one place, and the shapes no paper counts (ELECTRA generators) are checked by design.
"""

import pytest
import torch

from lmforge.models import build, presets

ENCODERS = {  # name: (published count, source)
    "bert-base": (110e6, "Devlin et al. 2019, Sec. 3"),
    "bert-large": (340e6, "Devlin et al. 2019, Sec. 3"),
    "roberta-base": (125e6, "HF hub FacebookAI/roberta-base"),
    "roberta-large": (355e6, "HF hub FacebookAI/roberta-large"),
    "electra-small": (13.5e6, "HF hub google/electra-small-discriminator"),
    "electra-base": (110e6, "Clark et al. 2020, Table 1"),
    "electra-large": (335e6, "Clark et al. 2020, Table 1"),
    "albert-base": (12e6, "Lan et al. 2020, Table 1"),
    "albert-large": (18e6, "Lan et al. 2020, Table 1"),
}


def _model(name: str):
    with torch.device("meta"):
        return build(presets.get(name))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_parameter_count_matches_published(name):
    published, source = ENCODERS[name]
    count = _model(name).num_parameters()
    assert abs(count - published) / published < 0.02, f"{count:,} vs {source}"


def test_albert_sharing_is_what_makes_it_small():
    # Lan et al. 2020, Table 1: ALBERT-large (18M) vs BERT-large (334M) at the same L and H.
    shared = _model("albert-large").num_parameters()
    with torch.device("meta"):
        unshared = build(presets.get("albert-large", share_layers=False)).num_parameters()
    per_layer = (unshared - shared) / 23
    assert 12.5e6 < per_layer < 12.7e6  # one 1024-wide block: 4 d^2 + 2 * 4 d^2 + biases


@pytest.mark.parametrize(
    ("disc", "multiplier"),
    [("electra-small", 1 / 4), ("electra-base", 1 / 3), ("electra-large", 1 / 4)],
)
def test_electra_generator_is_the_discriminator_scaled_down(disc, multiplier):
    g_name = disc + "-generator"
    d, g = presets.get(disc), presets.get(g_name)
    assert g.encoder_head == "mlm" and d.encoder_head == "rtd"
    assert g.d_model == d.d_model * multiplier
    assert g.ffn_size == d.ffn_size * multiplier
    assert g.n_head == max(1, d.n_head * multiplier)
    assert g.n_layer == d.n_layer and g.vocab_size == d.vocab_size
    assert g.embed_size == d.embed_size  # shared embeddings need the same width
    assert _model(g_name).num_parameters() < _model(disc).num_parameters()
    assert g_name in presets.UNPUBLISHED


def test_family_flags():
    assert presets.get("bert-base").norm_position == "post"
    assert presets.get("bert-base").encoder_head == "mlm_nsp"
    roberta = presets.get("roberta-base")
    assert roberta.position_offset == roberta.pad_token_id + 1 == 2
    assert not roberta.pooler and roberta.type_vocab_size == 1
    assert presets.get("albert-base").share_layers
    assert presets.get("albert-base").embed_size == 128
    assert presets.get("electra-small").embed_size == 128


@pytest.mark.parametrize(
    ("name", "field", "shape"),
    [
        ("tiny-bert", "prediction_logits", (2, 16, 256)),
        ("tiny-roberta", "logits", (2, 16, 256)),
        ("tiny-electra", "logits", (2, 16)),
        ("tiny-albert", "sop_logits", (2, 2)),
    ],
)
def test_tiny_encoders_run(name, field, shape):
    model = build(presets.get(name)).eval()
    ids = torch.randint(3, 256, (2, 16))
    assert getattr(model(ids), field).shape == shape
    assert model.num_parameters() < 200_000
