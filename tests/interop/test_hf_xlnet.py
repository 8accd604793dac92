"""XLNet checkpoints round-trip with transformers' XLNetLMHeadModel: a folder written by
`save_pretrained` loads with `load_hf` and gives the same logits (content stream and
query stream, 1e-5), and a folder written by `save_hf` loads with `from_pretrained` and
gives them back; settings lmforge does not implement are refused in one line."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.interop.hf import hf_architecture, load_hf, save_hf  # noqa: E402
from lmforge.models import build, presets  # noqa: E402

V, B, T = 120, 4, 10


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    types = torch.randint(0, 2, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, 7:] = 0
    perm = (torch.rand(B, T, T, generator=g) > 0.5).float()
    mapping = torch.zeros(B, 2, T)
    mapping[:, 0, 3] = mapping[:, 1, 8] = 1.0
    return dict(attention_mask=mask, token_type_ids=types), \
        dict(token_type_ids=types, perm_mask=perm, target_mapping=mapping), ids


def _same_logits(hf, ours):
    content, query, ids = _inputs()
    with torch.no_grad():
        for kw in (content, query):
            a, b = hf(ids, **kw).logits, ours(ids, **kw).logits
            assert a.shape == b.shape
            assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("extra", [
    dict(n_head=3, d_model=48, mem_len=None, bi_data=False),
    dict(n_head=5, d_model=40, mem_len=16, bi_data=True),
    dict(n_head=4, d_model=32, tie_word_embeddings=False, ff_activation="relu"),
], ids=["3-heads", "5-heads-mem-bi", "untied-relu"])
def test_load_hf_matches_transformers(tmp_path, extra):
    torch.manual_seed(0)
    config = transformers.XLNetConfig(vocab_size=V, n_layer=2, d_inner=72, dropout=0.0, **extra)
    hf = transformers.XLNetLMHeadModel(config).eval()
    if not config.tie_word_embeddings:  # make the untied head differ from the embedding
        torch.nn.init.normal_(hf.lm_loss.weight, 0.0, 0.02)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    cfg = ours.config
    assert (cfg.arch, cfg.n_head, cfg.d_model, cfg.d_ff) == ("xlnet", extra["n_head"],
                                                             extra["d_model"], 72)
    assert cfg.mem_len == extra.get("mem_len", 512) and cfg.bi_data == extra.get("bi_data", False)
    assert cfg.tie_embeddings == extra.get("tie_word_embeddings", True)
    _same_logits(hf, ours)


@pytest.mark.parametrize("overrides", [{}, dict(tie_embeddings=False, mem_len=8)],
                         ids=["tied", "untied-mem"])
def test_save_hf_loads_in_transformers(tmp_path, overrides):
    torch.manual_seed(0)
    ours = build(presets.get("tiny-xlnet", vocab_size=V, n_head=3, d_model=48, **overrides))
    for p in ours.parameters():  # every tensor random, biases and LayerNorms too
        torch.nn.init.normal_(p, 0.0, 0.05)
    ours.tie_weights()
    ours.eval()
    assert hf_architecture(ours.config) == "XLNetLMHeadModel"
    save_hf(ours, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["architectures"] == ["XLNetLMHeadModel"] and written["d_head"] == 16
    hf = transformers.XLNetLMHeadModel.from_pretrained(tmp_path / "out").eval()
    _same_logits(hf, ours)
    back = load_hf(tmp_path / "out")
    assert back.config == ours.config.replace(max_seq_len=512, init_std=back.config.init_std)
    _same_logits(hf, back)


@pytest.mark.parametrize("key,value,message", [
    ("attn_type", "uni", "attn_type='uni' is not supported"),
    ("same_length", True, "same_length=True is not supported"),
    ("clamp_len", 64, "clamp_len=64 is not supported"),
    ("reuse_len", 32, "reuse_len=32 is not supported"),
])
def test_unsupported_settings_are_refused(tmp_path, key, value, message):
    hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(
        vocab_size=V, n_layer=1, d_model=32, n_head=4, d_inner=64))
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as e:
        load_hf(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["classify", "tag", "qa"])
def test_fine_tuned_xlnet_exports_as_its_task_class(tmp_path, kind):
    """A body + head (classification from the last token through dense + tanh, tagging,
    span QA) written by save_hf_task loads in XLNetForSequenceClassification /
    ...ForTokenClassification / ...ForQuestionAnsweringSimple with the same outputs."""
    from lmforge.interop.hf_heads import save_hf_task
    from lmforge.models.heads import (
        ClassificationHead,
        SpanHead,
        TaskModel,
        TokenClassificationHead,
    )

    torch.manual_seed(0)
    body = build(presets.get("tiny-xlnet", vocab_size=V, n_head=3, d_model=48))
    head, pooling = {"classify": (ClassificationHead(48, 3, 0.0, dense=True), "last"),
                     "tag": (TokenClassificationHead(48, 5, 0.0), "tokens"),
                     "qa": (SpanHead(48), "tokens")}[kind]
    for p in head.parameters():
        torch.nn.init.normal_(p, 0.0, 0.2)
    model = TaskModel(body, head, pooling).eval()
    cls = save_hf_task(model, tmp_path / "out")
    assert cls == {"classify": "XLNetForSequenceClassification",
                   "tag": "XLNetForTokenClassification",
                   "qa": "XLNetForQuestionAnsweringSimple"}[kind]
    hf = getattr(transformers, cls).from_pretrained(tmp_path / "out").eval()
    _, _, ids = _inputs()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: transformers' XLNet summary reads the last position
    types = torch.tensor([[0] * 6 + [1] * 4] * B)
    with torch.no_grad():
        ours = model(ids, mask, types)
        theirs = hf(ids, attention_mask=mask, token_type_ids=types)
    if kind == "qa":
        assert (theirs.start_logits - ours[0]).abs().max() < 1e-5
        assert (theirs.end_logits - ours[1]).abs().max() < 1e-5
    else:
        assert (theirs.logits - ours).abs().max() < 1e-5
