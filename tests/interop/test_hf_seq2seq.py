"""BART and T5 (v1.0 ReLU tied, v1.1 gated-GELU untied) <-> transformers: logits parity,
also with unequal stacks (BART: decoder heads, FFN width and depth; T5: depth only).

Each transformers model is built offline from a tiny config with random weights, saved,
loaded into lmforge (and back), and compared on padded batches, real positions only.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.interop.hf import load_hf, save_hf  # noqa: E402
from lmforge.models import Seq2Seq  # noqa: E402

V = 300


def bart(decoder_heads: int = 4, decoder_ffn: int = 128, decoder_layers: int = 2):
    config = transformers.BartConfig(
        vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=decoder_layers,
        encoder_attention_heads=4, decoder_attention_heads=decoder_heads, encoder_ffn_dim=128,
        decoder_ffn_dim=decoder_ffn, max_position_embeddings=64, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True,
    )  # fmt: skip
    model = transformers.BartForConditionalGeneration(config)
    with torch.no_grad():  # non-zero final_logits_bias and norms, so the test sees them
        model.final_logits_bias.normal_()
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model


def t5(gated: bool, decoder_layers: int = 2):
    config = transformers.T5Config(
        vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2,
        num_decoder_layers=decoder_layers,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        dropout_rate=0.0, feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated, decoder_start_token_id=0,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.normal_(1.0, 0.1)
    return model


FAMILIES = {
    "bart": bart,
    # transformers' BART lets the decoder differ from the encoder in heads, FFN width and
    # depth (T5Config has only num_decoder_layers: one num_heads and d_ff for both stacks)
    "bart-unequal": lambda: bart(decoder_heads=2, decoder_ffn=96, decoder_layers=3),
    "t5": lambda: t5(False),
    "t5-v1.1": lambda: t5(True),
    "t5-deeper-decoder": lambda: t5(False, decoder_layers=3),  # T5's one unequal-stack case
}


def batch(pad: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding in the source
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    dec = torch.randint(3, V, (3, 9), generator=g)
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 6:] = 0  # and in the target
    dec_mask[2, 3:] = 0
    dec = dec.masked_fill(dec_mask == 0, pad)
    return dict(
        input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
    )


def assert_same_logits(a, b, inputs, tol=1e-4):
    real = inputs["decoder_attention_mask"].bool()
    with torch.no_grad():
        la, lb = a(**inputs).logits, b(**inputs).logits
    assert la.shape == lb.shape
    assert (la[real] - lb[real]).abs().max().item() <= tol


def tol(family: str) -> float:
    """BART matches to 1e-5 (measured 0.0); T5 v1.1's gated GELU to 1e-4 (1.3e-5)."""
    return 1e-5 if family.startswith("bart") else 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_logits_match(family, tmp_path):
    torch.manual_seed(0)
    theirs = FAMILIES[family]().eval()
    theirs.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert isinstance(ours, Seq2Seq)
    assert ours.num_parameters() == theirs.num_parameters()
    assert_same_logits(ours, theirs, batch(theirs.config.pad_token_id), tol(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_to_hf_logits_match(family, tmp_path):
    torch.manual_seed(1)
    theirs = FAMILIES[family]().eval()
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    with torch.no_grad():  # new weights, so the export is not just the file read back
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_hf(ours, tmp_path / "out")
    back = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(theirs)
    assert_same_logits(ours, back, batch(theirs.config.pad_token_id, seed=1), tol(family))
    again = load_hf(tmp_path / "out")
    assert again.config == ours.config


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_matches_transformers(family, tmp_path):
    """Greedy and beam search on a padded batch of sources give transformers' tokens."""
    from lmforge.generation import generate

    torch.manual_seed(2)
    theirs = FAMILIES[family]().eval()
    theirs.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    inputs = batch(theirs.config.pad_token_id, seed=2)
    src, mask = inputs["input_ids"], inputs["attention_mask"]
    # transformers 5 sizes T5's generation cache by num_layers (the encoder's): a deeper
    # decoder fails there (IndexError in cache_utils), so it decodes without a cache
    theirs_cache = dict(use_cache=False) if family == "t5-deeper-decoder" else {}
    # min_new_tokens: random weights would otherwise end on EOS at once
    for kw in (
        dict(num_beams=1),
        dict(num_beams=3, length_penalty=0.7),
        dict(num_beams=3, no_repeat_ngram_size=2),
        dict(num_beams=1, no_repeat_ngram_size=1),
    ):
        kw = dict(max_new_tokens=8, min_new_tokens=8, **kw)
        expected = theirs.generate(
            input_ids=src, attention_mask=mask, do_sample=False, forced_eos_token_id=None,
            forced_bos_token_id=None, early_stopping=False, **{"no_repeat_ngram_size": 0, **kw},
            **theirs_cache,
        )  # fmt: skip
        got = generate(ours, src, mask, **kw)
        assert torch.equal(got, expected)  # both start with decoder_start_token_id
        assert torch.equal(generate(ours, src, mask, use_cache=False, **kw), got)


def test_untied_t5_v11_round_trip(tmp_path):
    """lmforge's own v1.1 (untied head, no rescale) survives save_hf -> load_hf exactly.

    (transformers >= 5 always ties T5's head to the embedding, keeping only the rescale
    switch, so its T5ForConditionalGeneration cannot hold a distinct head.)
    """
    from lmforge.models import build, presets

    torch.manual_seed(3)
    ours = build(presets.get("tiny-t5-v1.1")).eval()
    save_hf(ours, tmp_path)
    back = load_hf(tmp_path)
    assert back.config == ours.config and not back.config.tie_embeddings
    inputs = batch(0, seed=3)
    inputs["input_ids"], inputs["decoder_input_ids"] = inputs["input_ids"] % 256, inputs[
        "decoder_input_ids"
    ] % 256
    assert_same_logits(ours, back, inputs)


def test_unsupported_seq2seq_checkpoints_are_refused(tmp_path):
    import json

    from lmforge.errors import CheckpointError

    bart().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "normalize_before": True}))
    with pytest.raises(CheckpointError, match="mBART"):
        load_hf(tmp_path)


def test_unequal_bart_config_round_trip(tmp_path):
    """Decoder heads / FFN width / depth land in n_decoder_head / d_decoder_ff /
    n_decoder_layer (None where they equal the encoder's) and are written back; a T5
    export refuses what T5Config cannot hold."""
    from lmforge.errors import CheckpointError
    from lmforge.models import build, presets

    bart(decoder_heads=2, decoder_ffn=96, decoder_layers=3).save_pretrained(tmp_path / "a")
    c = load_hf(tmp_path / "a").config
    assert (c.n_head, c.n_decoder_head, c.d_ff, c.d_decoder_ff, c.n_decoder_layer) == (
        4, 2, 128, 96, 3)  # fmt: skip
    assert (c.decoder_head_size, c.head_size) == (32, 16)
    bart().save_pretrained(tmp_path / "b")
    c = load_hf(tmp_path / "b").config
    assert (c.n_decoder_head, c.d_decoder_ff, c.n_decoder_layer) == (None, None, None)
    t5_unequal = build(presets.get("tiny-t5").replace(n_decoder_head=2))
    with pytest.raises(CheckpointError, match="one num_heads and d_ff"):
        save_hf(t5_unequal, tmp_path / "t5")
