"""The encoder's behaviour: bidirectional attention, padding, token types, pooler, sharing."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models import Encoder, build, presets
from lmforge.models.config import ModelConfig
from lmforge.models.encoder import roberta_positions


def _model(name: str = "tiny-bert", **overrides) -> Encoder:
    torch.manual_seed(0)
    return build(presets.get(name, **overrides)).eval()


def _hidden(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kw).last_hidden_state


def test_attention_is_bidirectional():
    model = _model()
    ids = torch.randint(5, 256, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 256
    a, b = _hidden(model, ids), _hidden(model, changed)
    # A later token changes the earlier positions (a causal decoder would leave 0..6 alone).
    assert (a[0, :7] - b[0, :7]).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta", "tiny-electra", "tiny-albert"])
def test_padding_does_not_change_real_tokens(name):
    model = _model(name)
    pad = model.config.pad_token_id
    ids = torch.randint(5, 256, (1, 6))
    padded = torch.cat([ids, torch.full((1, 4), pad)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    alone = _hidden(model, ids)
    with_pads = _hidden(model, padded, attention_mask=mask)[:, :6]
    assert (alone - with_pads).abs().max() < 1e-5
    # Without the mask the pads are attended to and the outputs move.
    assert (alone - _hidden(model, padded)[:, :6]).abs().max() > 1e-4


def test_token_types_matter():
    model = _model()
    ids = torch.randint(5, 256, (1, 8))
    types = torch.tensor([[0] * 4 + [1] * 4])
    a = _hidden(model, ids)
    b = _hidden(model, ids, token_type_ids=types)
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, _hidden(model, ids, token_type_ids=torch.zeros_like(ids)))


def test_pooler_is_tanh_of_dense_on_cls():
    model = _model()
    ids = torch.randint(5, 256, (3, 8))
    with torch.no_grad():
        out = model(ids)
        expected = torch.tanh(model.pooler.dense(out.last_hidden_state[:, 0]))
    assert out.pooler_output.shape == (3, 64)
    assert torch.allclose(out.pooler_output, expected)
    assert out.seq_relationship_logits.shape == (3, 2)
    assert out.prediction_logits.shape == (3, 8, 256)
    assert _model("tiny-roberta")(ids).pooler_output is None


def test_albert_layers_share_parameters():
    shared = _model("tiny-albert")
    unshared = _model("tiny-albert", share_layers=False)
    assert len(shared.blocks) == 1 and len(unshared.blocks) == 2
    block = sum(p.numel() for p in unshared.blocks[0].parameters())
    assert unshared.num_parameters() - shared.num_parameters() == block
    # The one block really is applied n_layer times: an unshared model whose two blocks
    # both hold the shared block's weights gives the same output.
    with torch.no_grad():
        unshared.load_state_dict(
            {**shared.state_dict(), **{
                k.replace("blocks.0.", "blocks.1."): v
                for k, v in shared.state_dict().items() if k.startswith("blocks.0.")
            }}
        )  # fmt: skip
    ids = torch.randint(5, 256, (2, 8))
    assert torch.allclose(_hidden(shared, ids), _hidden(unshared, ids), atol=1e-6)


def test_mlm_decoder_is_tied_to_the_embeddings():
    model = _model()
    assert model.mlm_head.decoder.weight is model.tok_embed.weight
    # ALBERT / ELECTRA: the decoder reads the E-wide transform, tied to E-wide embeddings.
    albert = _model("tiny-albert")
    assert albert.mlm_head.decoder.weight.shape == (256, 32)


def test_rtd_head_gives_one_logit_per_token():
    model = _model("tiny-electra")
    out = model(torch.randint(5, 256, (2, 9)))
    assert out.logits.shape == (2, 9) and out.pooler_output is None


def test_pre_ln_option():
    model = _model(norm_position="pre")
    assert model.config.has_final_norm
    ids = torch.randint(5, 256, (1, 8))
    assert torch.isfinite(_hidden(model, ids)).all()
    assert not torch.allclose(_hidden(model, ids), _hidden(_model(), ids))


def test_rope_encoder_sees_only_relative_positions():
    # ModernBERT-style: no position table; q.k depends on positions through m - n only,
    # so shifting every position id by the same amount leaves the outputs alone ...
    model = _model(positions="rope", norm_position="pre")
    assert model.pos_embed is None and model.rope is not None
    ids = torch.randint(5, 256, (2, 8))
    base = _hidden(model, ids)
    shifted = _hidden(model, ids, position_ids=torch.arange(5, 13)[None])
    assert (base - shifted).abs().max() < 1e-5
    # ... while the order of the tokens still matters (a bag of words would not see it).
    swapped = ids[:, [1, 0, *range(2, 8)]]
    assert (base[:, 2:] - _hidden(model, swapped)[:, 2:]).abs().max() > 1e-4
    learned = _model(norm_position="pre")
    moved = _hidden(learned, ids, position_ids=torch.arange(5, 13)[None])
    assert (_hidden(learned, ids) - moved).abs().max() > 1e-4


def test_roberta_positions():
    ids = torch.tensor([[1, 1, 7, 8, 9], [7, 8, 1, 9, 1]])  # pad id 1
    assert roberta_positions(ids, 1).tolist() == [[1, 1, 2, 3, 4], [2, 3, 1, 4, 1]]


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(5, 256, (2, 8))
    grads = []
    for ckpt in (False, True):
        model = _model(gradient_checkpointing=ckpt).train()
        model(ids).prediction_logits.sum().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    assert torch.allclose(*grads, atol=1e-6)


def test_bad_encoder_configs_are_refused():
    base = dict(arch="encoder", d_model=16, n_head=2, n_layer=1, vocab_size=50, max_seq_len=16)
    with pytest.raises(ConfigError, match="encoder_head"):
        ModelConfig(**base, encoder_head="nsp")
    with pytest.raises(ConfigError, match="position_offset"):
        ModelConfig(**base, position_offset=2)  # no pad_token_id
    with pytest.raises(ConfigError, match="only applies to arch=encoder"):
        ModelConfig(share_layers=True)
    with pytest.raises(ConfigError, match="learned or rope positions"):
        ModelConfig(**base, positions="sinusoidal")
    with pytest.raises(ConfigError, match="rope encoders"):
        ModelConfig(**base, positions="rope", pad_token_id=1, position_offset=2)
    with pytest.raises(ConfigError, match="pooler"):
        build(ModelConfig(**base, encoder_head="mlm_nsp", pooler=False))
    with pytest.raises(ValueError, match="max_seq_len"):
        build(ModelConfig(**base))(torch.zeros(1, 17, dtype=torch.long))
