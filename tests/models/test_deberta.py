"""DeBERTa's disentangled attention in the Encoder (attention="disentangled"): the log
buckets equal transformers' make_log_bucket_position, the body and MLM logits equal
DebertaV2Model / DebertaV2ForMaskedLM's on random weights for odd shapes (buckets on and
off, share_att_key, each pos_att_type subset, clipped distances, E < d), the enhanced mask
decoder equals transformers' own last layer run twice with query_states = H + P, and the
config refuses what does not fit."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf_deberta  # noqa: E402

from lmforge.errors import ConfigError  # noqa: E402
from lmforge.interop.hf import hf_state_dict, load_hf  # noqa: E402
from lmforge.models import build, presets  # noqa: E402
from lmforge.models.config import ModelConfig  # noqa: E402
from lmforge.models.disentangled import log_bucket, relative_index  # noqa: E402

V, B, T = 90, 3, 13


def _inputs(types: int = 0):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    kw = dict(attention_mask=mask)
    if types:
        kw["token_type_ids"] = torch.randint(0, types, (B, T), generator=g)
    return ids, kw


def _hf_pair(tmp_path, cls=None, **extra):
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=V, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
        intermediate_size=56, max_position_embeddings=64, relative_attention=True,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
        **extra)  # fmt: skip
    hf = (cls or transformers.DebertaV2ForMaskedLM)(config).eval()
    hf.save_pretrained(tmp_path)
    return hf, load_hf(tmp_path)


def test_log_buckets_equal_transformers():
    rel = torch.arange(-300, 301)[:, None] - torch.zeros(1, dtype=torch.long)
    for buckets, max_pos in ((256, 512), (32, 128), (8, 20), (6, 64)):
        ours = log_bucket(rel, buckets, max_pos)
        theirs = hf_deberta.make_log_bucket_position(rel, buckets, max_pos).long()
        assert torch.equal(ours, theirs)
    # near distances are exact, far ones share buckets, the sign is kept
    b = log_bucket(torch.tensor([0, 3, -3, 40, 41, -40]), 8, 64)
    assert b.tolist() == [0, 3, -3, 7, 7, -7]


def test_relative_index_clips_distances():
    cfg = presets.get("tiny-deberta").replace(position_buckets=0, max_relative_positions=3)
    index = relative_index(6, cfg)
    # row k + (i - j), clipped to [0, 2k - 1] with k = 3
    expected = (torch.arange(6)[:, None] - torch.arange(6)[None, :] + 3).clamp(0, 5)
    assert torch.equal(index, expected)


@pytest.mark.parametrize("extra", [
    dict(pos_att_type="c2p|p2c"),
    dict(pos_att_type=["p2c"], position_buckets=8, max_relative_positions=20,
         share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False),
    dict(pos_att_type=["c2p"], max_relative_positions=4, type_vocab_size=2, embedding_size=24),
    dict(pos_att_type=None, legacy=False),
    dict(pos_att_type=["p2c", "c2p"], position_buckets=6, share_att_key=True,
         position_biased_input=False, hidden_act="gelu_new"),
], ids=["c2p-p2c", "p2c-buckets-shared-ln", "c2p-clipped-types-E24", "no-pos-terms-newhead",
        "v3-style-6-buckets"])
def test_mlm_logits_equal_transformers(tmp_path, extra):
    hf, ours = _hf_pair(tmp_path, **extra)
    ids, kw = _inputs(extra.get("type_vocab_size", 0))
    with torch.no_grad():
        a, b = hf(ids, **kw), ours(ids, **kw)
    assert a.logits.shape == b.logits.shape == (B, T, V)
    assert (a.logits - b.logits).abs().max() < 1e-5
    assert a.logits.std() > 0.5  # the weights are large enough for differences to show


def test_base_model_hidden_states_equal_transformers(tmp_path):
    hf, ours = _hf_pair(tmp_path, cls=transformers.DebertaV2Model, pos_att_type="c2p|p2c",
                        position_buckets=8, share_att_key=True, position_biased_input=False)
    assert ours.config.encoder_head == "none" and ours.pooler is None
    ids, kw = _inputs()
    with torch.no_grad():
        a, b = hf(ids, **kw).last_hidden_state, ours(ids, **kw).last_hidden_state
    assert (a - b).abs().max() < 1e-5


def test_position_terms_change_the_scores(tmp_path):
    """The relative table matters through c2p and p2c: a different table, other logits;
    with no position terms it is not read at all."""
    ids, _ = _inputs()
    for pos_att_type, changes in (("c2p|p2c", True), ("c2p", True), ("p2c", True), ("", False)):
        torch.manual_seed(0)
        model = build(presets.get("tiny-deberta", vocab_size=V, pos_att_type=pos_att_type,
                                  init_std=0.3))
        model.eval()
        with torch.no_grad():
            before = model(ids).logits
            model.rel_embed.weight.normal_()
            after = model(ids).logits
        assert ((before - after).abs().max() > 1e-3) == changes


def test_enhanced_mask_decoder_equals_transformers_layers(tmp_path):
    """EMD: the last layer re-run twice with keys / values H^(L-1) and queries
    H^(L-1) + P, computed with transformers' own DebertaV2Layer(query_states=...)."""
    cfg = presets.get("tiny-deberta", vocab_size=V, n_layer=3, emd=True, init_std=0.2)
    torch.manual_seed(0)
    ours = build(cfg).eval()
    plain = build(cfg.replace(emd=False)).eval()
    plain.load_state_dict({k: v for k, v in ours.state_dict().items()
                           if not k.startswith("pos_embed")})
    # the file transformers reads has no EMD: the body and the head on the last layer
    hf_cfg = transformers.DebertaV2Config(
        vocab_size=V, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, relative_attention=True,
        position_buckets=32, pos_att_type=["c2p", "p2c"], share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
        layer_norm_eps=1e-7, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.DebertaV2ForMaskedLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(plain), strict=False)
    assert not unexpected and all("decoder" in m for m in missing)
    hf.tie_weights()
    ids, kw = _inputs()
    mask = kw["attention_mask"]
    with torch.no_grad():
        out = hf.deberta(ids, attention_mask=mask, output_hidden_states=True)
        enc = hf.deberta.encoder
        att = enc.get_attention_mask(mask)
        rel_pos = enc.get_rel_pos(out.hidden_states[-2])
        h = out.hidden_states[-2]
        query = h + ours.pos_embed.weight[:T]
        for _ in range(2):
            query = enc.layer[-1](h, att, query_states=query, relative_pos=rel_pos,
                                  rel_embeddings=enc.get_rel_embedding())[0]
        expected = hf.cls(query)
        got = ours(ids, **kw)
        plain_logits = plain(ids, **kw).logits
    assert (got.logits - expected).abs().max() < 1e-5
    assert (got.last_hidden_state - out.last_hidden_state).abs().max() < 1e-5  # body: no EMD
    assert (got.logits - plain_logits).abs().max() > 1e-2  # the EMD changes the MLM logits
    # mlm_hidden is what the MLM objective reads
    with torch.no_grad():
        assert (ours.mlm_head(ours.mlm_hidden(ids, mask)) - expected).abs().max() < 1e-5


def test_config_refusals():
    base = presets.get("tiny-deberta")
    for change, fragment in (
        (dict(pos_att_type="c2p|q2q"), "model.pos_att_type"),
        (dict(position_buckets=1), "model.position_buckets"),
        (dict(max_relative_positions=1), "model.max_relative_positions"),
        (dict(emd=True, embedding_size=32), "model.emd"),
        (dict(emd=True, n_layer=1), "model.emd"),
        (dict(attention="sparse"), "model.attention"),
        (dict(norm_position="pre"), "DeBERTa's blocks are post-LN"),  # not silently ignored
        (dict(qk_norm=True), "model.qk_norm"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            base.replace(**change)
    with pytest.raises(ConfigError, match="model.attention"):
        presets.get("tiny-bert").replace(position_buckets=8)  # a BERT has no relative table
    with pytest.raises(ConfigError, match="model.positions"):
        presets.get("tiny-bert").replace(positions="none")
    assert isinstance(base, ModelConfig) and base.rel_span == 32
    assert base.pos_att_terms == ("c2p", "p2c")


def test_flops_hand_count():
    """tiny-deberta (V 256, d 64, L 2, 4 heads, d_ff 128, 2k = 64 rows, c2p + p2c, shared
    W_q / W_k), T = 64, MLM head at 15% of the positions, counted by hand."""
    from lmforge.flops import encoder_flops_per_token

    block = 4 * (64 * 64 + 64) + 128 + (64 * 128 + 128) + (128 * 64 + 64) + 128  # 33,472
    head = (64 * 64 + 64) + 128 + 256 * 64 + 256  # transform, LayerNorm, tied decoder, bias
    n_eff = 128 + 128 + 2 * block + 0.15 * head  # embedding and table LayerNorms
    base = 6 * n_eff + 12 * 2 * 64 * 64
    terms = 6 * 2 * 64 * 64 + 6 * 2 * (64 * 64 + 64) * 64 / 64  # scores + table projections
    torch.manual_seed(0)
    model = build(presets.get("tiny-deberta"))
    assert encoder_flops_per_token(model, 64, 0.15) == pytest.approx(base + 2 * terms)
    # separate W_{k,r} / W_{q,r}: counted once per sequence, the same total
    model = build(presets.get("tiny-deberta", share_att_key=False))
    assert encoder_flops_per_token(model, 64, 0.15) == pytest.approx(base + 2 * terms)
    # EMD: the last block twice more, with its attention and position terms
    model = build(presets.get("tiny-deberta", emd=True))
    emd = 2 * (6 * block + 12 * 64 * 64 + terms)
    assert encoder_flops_per_token(model, 64, 0.15) == pytest.approx(base + 2 * terms + emd)


@pytest.mark.learning
def test_mlm_with_emd_learns_on_a_fixed_batch():
    """tiny-deberta with the EMD under the MLM objective, one fixed batch of 8 windows,
    40 AdamW steps: the masked-token loss falls from 5.76 (about ln 300) to 0.71 (the same
    on default / avx2 / avx512 kernels); the bar is half the start."""
    import numpy as np

    from lmforge.models.config import resolve_model_config
    from lmforge.objectives import build as build_objective
    from lmforge.objectives.config import ObjectiveConfig
    from lmforge.tokenizer import Tokenizer

    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 30
    tok = Tokenizer.train([text], vocab_size=300, progress=False,
                          special_tokens=["<|endoftext|>", "[PAD]", "[CLS]", "[SEP]", "[MASK]"])
    mc = resolve_model_config({"preset": "tiny-deberta", "emd": True}, tok.vocab_size, tok)
    obj = build_objective(ObjectiveConfig(name="mlm", mask_prob=0.25), tokenizer=tok,
                          model_config=mc, seed=0)
    ids = np.array(tok.encode(text))
    W = obj.window_len(40)
    batch = obj.prepare(np.stack([ids[i * W : (i + 1) * W] for i in range(8)]), draw=0)
    torch.manual_seed(0)
    model = build(mc)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss_sum, n = obj.loss(model, batch)
        opt.zero_grad()
        (loss_sum / n).backward()
        opt.step()
        losses.append(float(loss_sum.detach() / n))
    assert losses[-1] < losses[0] / 2, losses[::10]
