"""Encoder checkpoints round-trip with `transformers`: same outputs both ways (fp32, 1e-4).

Each transformers class is built offline from a tiny config with random weights, saved with
`save_pretrained`, loaded with `load_hf`, and run on a padded batch with token types; the
outputs are compared at real positions only. Then `save_hf` writes the lmforge model back
and `from_pretrained` must give the same outputs again.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.interop.hf import load_hf, save_hf  # noqa: E402
from lmforge.models import build  # noqa: E402
from lmforge.models.config import ModelConfig  # noqa: E402

V, T, B = 300, 12, 3
TINY = dict(
    vocab_size=V,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

# class name -> (config class, extra config, output fields to compare)
CASES = {
    "BertModel": ("BertConfig", {}, ["last_hidden_state", "pooler_output"]),
    "BertForPreTraining": (
        "BertConfig",
        {},
        ["prediction_logits", "seq_relationship_logits"],
    ),
    "BertForMaskedLM": ("BertConfig", {}, ["logits"]),
    "RobertaForMaskedLM": (
        "RobertaConfig",
        dict(type_vocab_size=1, pad_token_id=1, max_position_embeddings=40 + 2),
        ["logits"],
    ),
    "ElectraForPreTraining": ("ElectraConfig", dict(embedding_size=32), ["logits"]),
    "ElectraForMaskedLM": ("ElectraConfig", dict(embedding_size=32), ["logits"]),
    "AlbertForPreTraining": (
        "AlbertConfig",
        dict(embedding_size=32, classifier_dropout_prob=0.0),
        ["prediction_logits", "sop_logits"],
    ),
}


def _hf_model(name: str):
    config_cls, extra, _ = CASES[name]
    config = getattr(transformers, config_cls)(**{**TINY, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, name)(config).eval()
    with torch.no_grad():  # random (not zero) biases and LayerNorm gains, so all rows matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _batch(pad_id: int, types: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # right padding
    mask[2, 5:] = 0
    ids[mask == 0] = pad_id
    token_types = torch.zeros(B, T, dtype=torch.long)
    if types:
        token_types[:, T // 2 :] = 1
        token_types[mask == 0] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=token_types)


def _compare(name: str, ours, theirs, mask) -> None:
    for field in CASES[name][2]:
        a, b = getattr(ours, field), getattr(theirs, field)
        assert a is not None, field
        assert a.shape == b.shape, field
        if a.dim() >= 2 and a.shape[1] == T:  # per-position outputs: real positions only
            a, b = a[mask.bool()], b[mask.bool()]
        assert (a - b).abs().max().item() <= 1e-4, field


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_and_save_match_transformers(name, tmp_path):
    hf_model = _hf_model(name)
    hf_model.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    assert ours.config.arch == "encoder"
    batch = _batch(hf_model.config.pad_token_id, hf_model.config.type_vocab_size > 1)
    with torch.no_grad():
        expected = hf_model(**batch)
        _compare(name, ours(**batch), expected, batch["attention_mask"])

    save_hf(ours, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == [name]
    again = getattr(transformers, name).from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        _compare(name, ours(**batch), again(**batch), batch["attention_mask"])


def test_roberta_positions_skip_pads_and_start_after_pad_id(tmp_path):
    hf_model = _hf_model("RobertaForMaskedLM")
    hf_model.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.position_offset == 2 and ours.config.pad_token_id == 1
    # Left padding: HF positions depend on where the pads are, so outputs of the real tokens
    # equal those of the unpadded sequence only if positions skip pads.
    ids = torch.randint(3, V, (1, 6))
    padded = torch.cat([torch.ones(1, 3, dtype=torch.long), ids], dim=1)
    mask = (padded != 1).long()
    with torch.no_grad():
        plain = ours(input_ids=ids).logits
        left = ours(input_ids=padded, attention_mask=mask).logits[:, 3:]
        ref = hf_model(input_ids=padded, attention_mask=mask).logits[:, 3:]
    assert (plain - left).abs().max() < 1e-4
    assert (left - ref).abs().max() < 1e-4


def test_encoder_without_hf_class_is_refused(tmp_path):
    config = ModelConfig(
        arch="encoder", family="roberta", encoder_head="rtd", pooler=False, vocab_size=50,
        d_model=16, n_layer=1, n_head=2, max_seq_len=16, norm_position="post",
        pad_token_id=1, position_offset=2,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="no Hugging Face class"):
        save_hf(build(config), tmp_path / "x")


def test_rope_encoder_is_refused(tmp_path):
    from lmforge.models import presets

    with pytest.raises(CheckpointError, match="positions must be learned"):
        save_hf(build(presets.get("tiny-bert", positions="rope")), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta", "tiny-electra", "tiny-albert"])
def test_config_round_trip_is_exact(name):
    from lmforge.interop.hf import config_from_hf, config_to_hf
    from lmforge.models import presets

    config = presets.get(name)
    assert config_from_hf(config_to_hf(config)) == config
