"""DeBERTa-v2 / v3 checkpoints round-trip with transformers: a model written by `save_hf`
loads with `DebertaV2ForMaskedLM.from_pretrained` / `DebertaV2Model.from_pretrained` and
gives the same logits (1e-5), and back; a v3-style file (the authors' lm_predictions head,
the RTD head and an unused position table beside it, no `legacy` key) loads; variants
lmforge does not implement are refused in one line. (transformers' own files through
`load_hf`, odd shapes: tests/models/test_deberta.py.)"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.interop.hf import config_from_hf, config_to_hf, load_hf, save_hf  # noqa: E402
from lmforge.models import build, presets  # noqa: E402

V, B, T = 100, 3, 12


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 9:] = 0
    return ids, mask


def _model(**changes):
    torch.manual_seed(0)
    return build(presets.get("tiny-deberta", vocab_size=V, init_std=0.2, **changes)).eval()


@pytest.mark.parametrize("changes", [
    dict(),
    dict(share_att_key=False, pos_att_type="p2c", position_buckets=0,
         max_relative_positions=6, norm_rel_embed=False),
    dict(positions="learned", type_vocab_size=2, embedding_size=48, d_ff=96, n_head=8,
         pos_att_type="c2p"),
], ids=["v3", "own-projections-p2c-clipped", "v2-positions-types-E48"])
def test_save_hf_loads_in_transformers_and_back(tmp_path, changes):
    ours = _model(**changes)
    save_hf(ours, tmp_path)
    hf = transformers.DebertaV2ForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask = _inputs()
    types = torch.randint(0, 2, (B, T)) if changes.get("type_vocab_size") else None
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=types).logits
        b = hf(ids, attention_mask=mask, token_type_ids=types).logits
    assert (a - b).abs().max() < 1e-5 and a.std() > 0.5
    back = load_hf(tmp_path)
    assert back.config == ours.config.replace(dropout=back.config.dropout)
    assert config_from_hf(config_to_hf(ours.config)) == back.config
    with torch.no_grad():
        assert torch.equal(back(ids, attention_mask=mask, token_type_ids=types).logits, a)


def test_base_model_both_ways(tmp_path):
    ours = _model(encoder_head="none")
    save_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == \
        ["DebertaV2Model"]
    hf = transformers.DebertaV2Model.from_pretrained(tmp_path).eval()
    ids, mask = _inputs()
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).last_hidden_state
        b = hf(ids, attention_mask=mask).last_hidden_state
    assert (a - b).abs().max() < 1e-5
    assert load_hf(tmp_path).config.encoder_head == "none"


def test_emd_model_is_written_without_the_decoder(tmp_path):
    """transformers has no EMD: the file's MLM logits are the plain last layer's."""
    ours = _model(emd=True, n_layer=3)
    save_hf(ours, tmp_path)
    hf = transformers.DebertaV2ForMaskedLM.from_pretrained(tmp_path).eval()
    plain = load_hf(tmp_path)
    assert not plain.config.emd
    ids, mask = _inputs()
    with torch.no_grad():
        expected = ours.mlm_head(ours.encode(ids, mask))  # no EMD
        assert (hf(ids, attention_mask=mask).logits - expected).abs().max() < 1e-5
        assert (plain(ids, attention_mask=mask).logits - expected).abs().max() < 1e-5


def test_v3_style_file_loads(tmp_path):
    """microsoft/deberta-v3-*: config.json with no architectures and no legacy key; the
    weights hold lm_predictions.lm_head.* (the authors' head), mask_predictions.* (the
    RTD head) and a position table transformers ignores."""
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, relative_attention=True,
        position_buckets=16, pos_att_type=["p2c", "c2p"], share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, legacy=False,
        initializer_range=0.2)
    hf = transformers.DebertaV2ForMaskedLM(config).eval()
    hf.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["deberta.embeddings.position_embeddings.weight"] = torch.zeros(64, 32)
    tensors["mask_predictions.dense.weight"] = torch.zeros(32, 32)
    tensors["mask_predictions.classifier.weight"] = torch.zeros(1, 32)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("architectures", "legacy"):
        cfg.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = load_hf(tmp_path)
    assert ours.config.encoder_head == "mlm" and ours.config.positions == "none"
    ids, mask = _inputs()
    with torch.no_grad():
        a = hf(ids, attention_mask=mask).logits
        assert (ours(ids, attention_mask=mask).logits - a).abs().max() < 1e-5


@pytest.mark.parametrize("change, fragment", [
    (dict(relative_attention=False), "relative_attention=False is not supported"),
    (dict(conv_kernel_size=3), "conv_kernel_size=3 is not supported"),
    (dict(attention_head_size=16), "attention_head_size=16 is not supported"),
    (dict(pos_att_type=["c2p", "p2p"]), "pos_att_type 'p2p' is not supported"),
])
def test_unsupported_variants_are_refused(tmp_path, change, fragment):
    hf = {"architectures": ["DebertaV2ForMaskedLM"], "model_type": "deberta-v2",
          "vocab_size": V, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 64, "relative_attention": True,
          **change}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=fragment):
        load_hf(tmp_path)


def test_export_refuses_heads_without_a_class(tmp_path):
    with pytest.raises(CheckpointError, match="no Hugging Face DeBERTa-v2 class"):
        save_hf(_model(encoder_head="rtd"), tmp_path / "rtd")
    with pytest.raises(CheckpointError, match="no pooler"):
        save_hf(_model(pooler=True), tmp_path / "pooler")


@pytest.mark.parametrize("head, cls", [
    ("first", "DebertaV2ForSequenceClassification"),
    ("tokens", "DebertaV2ForTokenClassification"),
    ("span", "DebertaV2ForQuestionAnswering"),
])
def test_fine_tuned_heads_export_as_transformers_classes(tmp_path, head, cls):
    """Classification reads h_[CLS] through DeBERTa's ContextPooler (dense + the body's
    GELU, not tanh); tagging and span QA read every position."""
    from lmforge.interop.hf_heads import save_hf_task
    from lmforge.models.heads import ClassificationHead, SpanHead, TaskModel
    from lmforge.models.heads import TokenClassificationHead as Tag
    from lmforge.models.layers import ACTIVATIONS

    body = _model(encoder_head="none")
    d = body.config.d_model
    module = {"first": lambda: ClassificationHead(d, 3, dense=True,
                                                  activation=ACTIVATIONS["gelu"]),
              "tokens": lambda: Tag(d, 3), "span": lambda: SpanHead(d)}[head]()
    ours = TaskModel(body, module, head if head == "first" else "tokens").eval()
    with torch.no_grad():
        for p in ours.head.parameters():
            p.normal_(0.0, 0.05)
    assert save_hf_task(ours, tmp_path / "hf") == cls
    theirs, info = getattr(transformers, cls).from_pretrained(tmp_path / "hf",
                                                              output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = _inputs()
    with torch.no_grad():
        out, ref = ours(ids, mask), theirs.eval()(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    if head == "first":
        assert (out - ref.logits).abs().max() < 1e-5
    elif head == "tokens":
        assert (out[real] - ref.logits[real]).abs().max() < 1e-5
    else:
        assert (out[0][real] - ref.start_logits[real]).abs().max() < 1e-5
        assert (out[1][real] - ref.end_logits[real]).abs().max() < 1e-5


def test_checkpoint_keeps_its_tokenizer_json_and_refuses_unigram(tmp_path):
    """convert --from-hf reads the folder's own tokenizer.json; a Unigram (SentencePiece)
    one -- what DeBERTa-v2 / v3 ship -- is refused in one line."""
    from lmforge.cli import main
    from lmforge.errors import TokenizerError
    from lmforge.runs import load_run
    from lmforge.tokenizer import Tokenizer

    text = "To be, or not to be, that is the question. " * 20
    tok = Tokenizer.train([text], vocab_size=300, special_tokens=["[PAD]", "[CLS]", "[SEP]"],
                          progress=False)
    save_hf(build(presets.get("tiny-deberta", vocab_size=300)), tmp_path / "hf")
    tok.save(tmp_path / "hf" / "tokenizer.json")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out",
                 str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    assert run.tokenizer.fingerprint == tok.fingerprint
    assert run.model.config.attention == "disentangled"
    unigram = {"model": {"type": "Unigram", "vocab": [["<pad>", 0.0], ["a", -1.0]]}}
    (tmp_path / "unigram.json").write_text(json.dumps(unigram))
    with pytest.raises(TokenizerError, match="a Unigram .SentencePiece. tokenizer, which "
                                             "lmforge cannot run"):
        Tokenizer.load(tmp_path / "unigram.json")


def test_classify_mode_builds_the_context_pooler():
    """`lmforge finetune` on a DeBERTa body: h_[CLS] -> dense -> the body's GELU -> drop ->
    classifier (DebertaV2ForSequenceClassification), not BERT's tanh pooler."""
    from lmforge.models.layers import ACTIVATIONS
    from lmforge.tasks import get_task
    from lmforge.tasks.modes import get_mode
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(["To be, or not to be. " * 20], vocab_size=300,
                          special_tokens=["[PAD]", "[CLS]", "[SEP]"], progress=False)
    body = build(presets.get("tiny-deberta", vocab_size=300, encoder_head="none"))
    mode = get_mode("classify")(get_task("rotten-tomatoes"), tok, body.config)
    model = mode.build_model(body)
    assert model.pooling == "first" and model.head.dense is not None
    assert model.head.act is ACTIVATIONS["gelu"]
    bert = build(presets.get("tiny-bert", vocab_size=300, encoder_head="none"))
    assert mode.build_model(bert).head.dense is None  # BERT keeps its pooler
