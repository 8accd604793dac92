"""BART denoising and T5 span corruption as objectives: prepare, loss, accuracy, checks."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.flops import seq2seq_flops_per_token
from lmforge.models import build as build_model
from lmforge.models import presets
from lmforge.models.seq2seq import shift_right
from lmforge.objectives import IGNORE, BartDenoising, T5SpanCorruption, build
from lmforge.objectives.bart_noise import bart_noise
from lmforge.objectives.config import ObjectiveConfig
from lmforge.objectives.denoising import count_sentinels, seq2seq_batch, source_ids, target_text
from lmforge.objectives.masking import byte_level_word_starts, make_rng, sequence_key
from lmforge.objectives.pairs import stop_token_ids
from lmforge.objectives.t5_span import compute_input_and_target_lengths, span_corrupt
from lmforge.tokenizer import Tokenizer, sentinel_tokens

TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak! "
    "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
    "resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people. "
) * 20


@pytest.fixture(scope="module")
def bart_tok():
    return Tokenizer.train([TEXT], vocab_size=300, progress=False,
                           special_tokens=["<s>", "<pad>", "</s>", "<mask>"])


@pytest.fixture(scope="module")
def t5_tok():
    return Tokenizer.train([TEXT], vocab_size=320, progress=False,
                           special_tokens=["<pad>", "</s>", *sentinel_tokens(16)[::-1]])


def model_config(preset, tok, **kw):
    start = tok.pad_id if preset.startswith("tiny-t5") else tok.eos_id
    return presets.get(preset, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                       eos_token_id=tok.eos_id, decoder_start_token_id=start, **kw)


def bart(tok, seed=7, **cfg):
    return build(ObjectiveConfig(name="bart", **cfg), tokenizer=tok,
                 model_config=model_config("tiny-bart", tok), seed=seed)


def t5(tok, seed=7, **cfg):
    return build(ObjectiveConfig(name="t5", **cfg), tokenizer=tok,
                 model_config=model_config("tiny-t5", tok), seed=seed)


def windows(tok, n, width, offset=0):
    ids = np.array(tok.encode(TEXT), dtype=np.int64)
    return np.stack([ids[offset + 13 * i: offset + 13 * i + width] for i in range(n)])


# -- BART ------------------------------------------------------------------------------------


def test_bart_prepare_is_the_pure_function_wrapped_in_bos_eos(bart_tok):
    obj = bart(bart_tok)
    assert isinstance(obj, BartDenoising) and obj.window_len(40) == 38
    raw = windows(bart_tok, 4, obj.window_len(40))
    batch = obj.prepare(raw, draw=5)
    bos, eos, pad = bart_tok.bos_id, bart_tok.eos_id, bart_tok.pad_id
    stops = [*stop_token_ids(bart_tok), eos]
    assert stops[:-1]  # the corpus has '.', '!' and '?' tokens
    for b, row in enumerate(raw):
        # the generator the objective must use: (seed, draw, the window's contents)
        rng = make_rng(7, 5, sequence_key(row), stream="bart/dynamic")
        src, tgt = bart_noise(row, rng, mask_id=bart_tok.mask_id, stop_ids=stops,
                              word_starts=byte_level_word_starts(row, bart_tok))
        src = [bos, *src, eos]
        assert batch["input_ids"][b, : len(src)].tolist() == src
        assert (batch["input_ids"][b, len(src):] == pad).all()
        assert batch["attention_mask"][b].tolist() == [1] * len(src) + [0] * (40 - len(src))
        assert batch["targets"][b].tolist() == [bos, *row.tolist(), eos] == [bos, *tgt, eos]
    assert batch["input_ids"].shape == batch["targets"].shape == (4, 40)
    assert torch.equal(batch["decoder_input_ids"], shift_right(batch["targets"], eos, pad))
    assert batch["decoder_input_ids"][0, :2].tolist() == [eos, bos]  # HF BART: </s> <s> ...
    # text infilling: 30% of the words hidden, BART's defaults
    n_mask = (batch["input_ids"] == bart_tok.mask_id).sum(1)
    assert (n_mask >= 1).all() and (batch["attention_mask"].sum(1) < 40).all()


def test_corruption_is_reproducible_per_window(bart_tok, t5_tok):
    for obj, tok in ((bart(bart_tok), bart_tok), (t5(t5_tok), t5_tok)):
        raw = windows(tok, 6, obj.window_len(32))
        fixed = obj.prepare(raw)  # draw=None: the evaluation's fixed corruption
        assert all(torch.equal(fixed[k], v) for k, v in obj.prepare(raw).items())
        a, b = obj.prepare(raw, draw=3), obj.prepare(raw, draw=3)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["input_ids"], obj.prepare(raw, draw=4)["input_ids"])
        assert not torch.equal(a["input_ids"], fixed["input_ids"])
        # keyed by contents, not by the row's place in the batch
        rev = obj.prepare(raw[::-1].copy(), draw=3)
        assert torch.equal(rev["input_ids"], a["input_ids"].flip(0))
        # and by the seed
        other = dataclasses.replace(obj, seed=8).prepare(raw, draw=3)
        assert not torch.equal(other["input_ids"], a["input_ids"])


def test_bart_noise_keys_reach_the_pure_function(bart_tok):
    raw = windows(bart_tok, 3, 30)
    plain = bart(bart_tok, bart_mask="none", permute_sentences=False).prepare(raw, draw=1)
    assert torch.equal(plain["input_ids"], plain["targets"])  # no noise: a copy
    perm = bart(bart_tok, bart_mask="none").prepare(raw, draw=1)
    assert not torch.equal(perm["input_ids"], perm["targets"])
    assert torch.equal(perm["input_ids"].sort(1).values, perm["targets"].sort(1).values)
    dense = bart(bart_tok, mask_ratio=0.6, permute_sentences=False).prepare(raw, draw=1)
    sparse = bart(bart_tok, mask_ratio=0.1, permute_sentences=False).prepare(raw, draw=1)
    assert dense["attention_mask"].sum() < sparse["attention_mask"].sum()
    deleted = bart(bart_tok, bart_mask="delete", permute_sentences=False).prepare(raw, draw=1)
    assert (deleted["input_ids"] != bart_tok.mask_id).all()
    assert (deleted["attention_mask"].sum(1) == 2 + 30 - math.ceil(30 * 0.3)).all()


def test_bart_batch_marks_the_hidden_target_tokens(bart_tok):
    """batch["hidden"] is bart_noise's hidden mask inside <s> ... </s>: never <s>, </s> or
    padding; the tokens it leaves are exactly those the encoder input shows."""
    obj = bart(bart_tok)
    raw = windows(bart_tok, 4, obj.window_len(40))
    batch = obj.prepare(raw, draw=5)
    hidden, targets = batch["hidden"], batch["targets"]
    assert hidden.dtype == torch.bool and hidden.shape == targets.shape
    assert not hidden[:, 0].any() and not hidden[:, -1].any()  # <s>, </s>
    stops = [*stop_token_ids(bart_tok), bart_tok.eos_id]
    for b, row in enumerate(raw):
        rng = make_rng(7, 5, sequence_key(row), stream="bart/dynamic")
        _, _, h = bart_noise(row, rng, mask_id=bart_tok.mask_id, stop_ids=stops,
                             word_starts=byte_level_word_starts(row, bart_tok),
                             return_hidden=True)
        assert hidden[b, 1:-1].tolist() == h.tolist()
        src = batch["input_ids"][b][batch["attention_mask"][b] == 1][1:-1]
        shown = src[src != bart_tok.mask_id]
        assert sorted(shown.tolist()) == sorted(targets[b][1:-1][~hidden[b, 1:-1]].tolist())
    # whole words, 30% of them (counts checked in test_bart_noise.py)
    assert ((hidden.sum(1) > 0) & (hidden.sum(1) < 38)).all()
    # the batch still trains: loss reads only what it needs
    assert obj.num_targets(batch) == 4 * 40
    # corrupt is corrupt_hidden without the mask: the same pair from the same generator
    for row in raw[:2]:
        src, tgt = obj.corrupt(row, np.random.default_rng(0))
        src2, tgt2, h = obj.corrupt_hidden(row, np.random.default_rng(0))
        assert src.tolist() == src2.tolist() and tgt.tolist() == tgt2.tolist()
        assert len(h) == len(tgt) and not h[0] and not h[-1]


def test_bart_infill_statistics_by_hand(bart_tok):
    torch.manual_seed(0)
    model = build_model(model_config("tiny-bart", bart_tok)).eval()
    obj = bart(bart_tok)
    batch = obj.prepare(windows(bart_tok, 3, obj.window_len(24)))  # draw=None, as evals
    # a padded row, cut just after its first hidden token: hidden tokens in the tail
    # never count
    t0 = int(batch["hidden"][2].nonzero()[0])
    assert batch["hidden"][2, t0 + 1 :].any()
    batch["targets"][2, t0 + 1 :] = IGNORE
    with torch.no_grad():
        stats = obj.evaluate(model, batch)
        logits = obj.logits(model, batch)
    logp = logits.float().log_softmax(-1)
    where = [(b, t) for b in range(3) for t in range(24)
             if batch["hidden"][b, t] and batch["targets"][b, t] != IGNORE]
    by_hand = -sum(float(logp[b, t, batch["targets"][b, t]]) for b, t in where)
    hits = sum(int(logits[b, t].argmax() == batch["targets"][b, t]) for b, t in where)
    assert stats["infill_loss"][1] == stats["infill_acc"][1] == len(where)
    assert stats["infill_loss"][0] == pytest.approx(by_hand, rel=1e-5)
    assert stats["infill_acc"][0] == hits
    assert 0 < len(where) < stats["loss"][1] == 3 * 24 - (23 - t0)
    assert len(where) < int(batch["hidden"].sum())  # some hidden tokens were in the cut tail
    # loss and acc are as before (the plain sum over every target token)
    with torch.no_grad():
        loss, n = obj.loss(model, batch)
    assert stats["loss"] == (pytest.approx(float(loss)), n)
    # a batch without "hidden" (made by hand) gets loss and acc only
    plain = {k: v for k, v in batch.items() if k != "hidden"}
    with torch.no_grad():
        assert set(obj.evaluate(model, plain)) == {"loss", "acc"}


def test_bart_eval_reports_infill_loss(bart_tok):
    """The trainer's evaluation averages infill loss over the hidden tokens of all batches
    (the log prints it as "infill loss ...")."""
    from lmforge.training.trainer import evaluate

    torch.manual_seed(0)
    model = build_model(model_config("tiny-bart", bart_tok))
    obj = bart(bart_tok)
    raws = [windows(bart_tok, 2, obj.window_len(24), offset=o) for o in (0, 50)]
    out = evaluate(obj, model, raws, torch.device("cpu"))
    sums = [obj.evaluate(model, obj.prepare(r)) for r in raws]
    total = sum(s["infill_loss"][0] for s in sums)
    count = sum(s["infill_loss"][1] for s in sums)
    assert out["val_infill_loss"] == pytest.approx(total / count, rel=1e-6)
    assert 0 <= out["val_infill_acc"] <= 1 and out["val_tokens"] == 4 * 24 > count


# -- T5 --------------------------------------------------------------------------------------


def test_t5_prepare_is_span_corrupt_and_input_is_exactly_seq_len(t5_tok):
    obj = t5(t5_tok)
    assert isinstance(obj, T5SpanCorruption) and count_sentinels(t5_tok) == 16
    assert t5_tok.sentinel_ids(1) == [t5_tok.vocab_size - 1]  # <extra_id_0> is the last id
    for seq_len in (16, 33, 64):
        width, target_len = compute_input_and_target_lengths(seq_len)
        assert obj.window_len(seq_len) == width and obj.target_len(seq_len) == target_len
        raw = windows(t5_tok, 3, width)
        batch = obj.prepare(raw, draw=2)
        assert batch["input_ids"].shape == (3, seq_len)
        assert batch["targets"].shape == (3, target_len)
        assert batch["attention_mask"].all() and (batch["targets"] != IGNORE).all()
        for b, row in enumerate(raw):
            rng = make_rng(7, 2, sequence_key(row), stream="t5/dynamic")
            src, tgt = span_corrupt(row, rng, t5_tok.sentinel_ids(16), t5_tok.eos_id)
            assert batch["input_ids"][b].tolist() == src.tolist()
            assert batch["targets"][b].tolist() == tgt.tolist()
        assert torch.equal(batch["decoder_input_ids"],
                           shift_right(batch["targets"], t5_tok.pad_id, t5_tok.pad_id))


# -- loss and accuracy -----------------------------------------------------------------------


def padded_batch(tok):
    """Two sources and targets of different lengths: padding in both."""
    return seq2seq_batch([np.array([5, 6, 7, tok.eos_id]), np.array([8, tok.eos_id])],
                         [np.array([9, 10, 11, tok.eos_id]), np.array([12, tok.eos_id])],
                         pad_id=tok.pad_id, decoder_start_id=tok.pad_id)


@pytest.mark.parametrize("preset", ["tiny-bart", "tiny-t5", "tiny-t5-v1.1"])
def test_loss_is_cross_entropy_over_the_real_target_tokens(t5_tok, preset):
    torch.manual_seed(0)
    model = build_model(model_config(preset, t5_tok)).eval()
    obj = t5(t5_tok)
    batch = padded_batch(t5_tok)
    assert batch["targets"][1].tolist() == [12, t5_tok.eos_id, IGNORE, IGNORE]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with torch.no_grad():
        loss, n = obj.loss(model, batch)
    assert n == obj.num_targets(batch) == 6
    # by hand: the model's logits (T5: after the d^-0.5 rescale inside the model)
    memory = model.encode(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    h = model.decode(batch["decoder_input_ids"], memory, batch["attention_mask"])
    logits = model.logits(h)
    keep = batch["targets"] != IGNORE
    expected = F.cross_entropy(logits[keep], batch["targets"][keep], reduction="sum")
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)
    # padding in the source is masked: changing a pad id changes nothing
    batch2 = {k: v.clone() for k, v in batch.items()}
    batch2["input_ids"][1, 2:] = 3
    with torch.no_grad():
        assert float(obj.loss(model, batch2)[0]) == pytest.approx(float(loss), rel=1e-6)


def t5_logits(t5_tok):
    """A seeded tiny T5, its objective, the padded batch and the model's logits on it."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny-t5", t5_tok)).eval()
    obj = t5(t5_tok)
    batch = padded_batch(t5_tok)
    with torch.no_grad():
        return model, obj, batch, obj.logits(model, batch)


def test_evaluate_counts_right_argmax_predictions(t5_tok):
    model, obj, batch, logits = t5_logits(t5_tok)
    pred = logits.argmax(-1)
    # targets: the prediction at 3 of the 6 real positions, something else at the others
    targets = torch.where(pred == 5, 6, 5)
    targets[0, 0], targets[0, 2], targets[1, 1] = pred[0, 0], pred[0, 2], pred[1, 1]
    targets[1, 2:] = IGNORE
    batch["targets"] = targets
    stats = obj.evaluate(model, batch)
    assert stats["acc"] == (3.0, 6)
    assert stats["loss"][0] == pytest.approx(float(obj.loss(model, batch)[0].detach()))
    assert stats["loss"][1] == 6


def test_t5_span_statistics_leave_out_sentinels_and_eos(t5_tok):
    model, obj, batch, logits = t5_logits(t5_tok)
    pred = logits.argmax(-1)
    x, eos = obj.sentinel_ids[0], obj.eos_id
    # row 0: <X> a b </s> ... ; row 1: <X> c, the rest padding
    targets = torch.full_like(pred, IGNORE)
    targets[0, :4] = torch.tensor([x, int(pred[0, 1]), (int(pred[0, 2]) + 1) % 50 + 5, eos])
    targets[1, :2] = torch.tensor([x, int(pred[1, 1])])
    batch["targets"] = targets
    stats = obj.evaluate(model, batch)
    assert stats["loss"][1] == 6 and stats["span_loss"][1] == 3
    assert stats["span_acc"] == (2.0, 3)  # a and c right, b wrong
    logp = logits.float().log_softmax(-1)
    by_hand = -(logp[0, 1, targets[0, 1]] + logp[0, 2, targets[0, 2]] + logp[1, 1, targets[1, 1]])
    assert stats["span_loss"][0] == pytest.approx(float(by_hand), rel=1e-5)


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_is_a_clear_config_error(bart_tok, t5_tok):
    plain = Tokenizer.train([TEXT], vocab_size=270, progress=False,
                            special_tokens=["<s>", "<pad>", "</s>"])
    with pytest.raises(ConfigError, match="mask token"):
        bart(plain)
    assert bart(plain, bart_mask="delete").mask == "delete"  # deletion needs no mask
    with pytest.raises(ConfigError, match="sentinel tokens"):
        build(ObjectiveConfig(name="t5"), tokenizer=plain,
              model_config=model_config("tiny-t5", plain))
    with pytest.raises(ConfigError, match="at least 3 tokens"):
        bart(bart_tok).window_len(2)
    with pytest.raises(ConfigError, match="at least 3 tokens"):
        t5(t5_tok).window_len(2)
    # 16 sentinels: enough for 64 tokens (5 spans), not for 512 (26 spans)
    t5(t5_tok).window_len(64)
    with pytest.raises(ConfigError, match="only 16 sentinels"):
        t5(t5_tok).window_len(512)
    with pytest.raises(ConfigError, match="arch=seq2seq"):
        build(ObjectiveConfig(name="t5"), tokenizer=t5_tok,
              model_config=presets.get("tiny-gpt2", vocab_size=t5_tok.vocab_size))
    with pytest.raises(ConfigError, match="noise_density"):
        t5(t5_tok, noise_density=1.5)
    with pytest.raises(ConfigError, match="mask_ratio"):
        bart(bart_tok, mask_ratio=1.0)


# -- prompts and FLOPs -----------------------------------------------------------------------


def test_source_ids_and_target_text(bart_tok, t5_tok):
    ids = source_ids(bart_tok, "Speak <mask> die.", "bart")
    assert ids[0] == bart_tok.bos_id and ids[-1] == bart_tok.eos_id
    assert bart_tok.mask_id in ids  # the special token is recognised in a prompt
    ids = source_ids(t5_tok, "to <extra_id_0> die", "t5")
    assert t5_tok.sentinel_ids(1)[0] in ids and ids[-1] == t5_tok.eos_id
    out = [t5_tok.pad_id, *t5_tok.encode("<extra_id_0> speak", allowed_special="all"),
           t5_tok.eos_id, 40, 41]
    assert target_text(t5_tok, out, t5_tok.pad_id) == "<extra_id_0> speak"
    out = [bart_tok.eos_id, bart_tok.bos_id, *bart_tok.encode("All: Speak"), bart_tok.eos_id]
    assert target_text(bart_tok, out, bart_tok.eos_id) == "All: Speak"


def test_seq2seq_flops_by_hand(bart_tok):
    cfg = model_config("tiny-bart", bart_tok)
    model = build_model(cfg)
    d, ff, V, L = cfg.d_model, cfg.ffn_size, cfg.vocab_size, cfg.n_layer
    attn = 4 * (d * d + d)  # q, k, v, out with biases
    ffn = d * ff + ff + ff * d + d
    enc_layer = attn + ffn + 2 * 2 * d  # two LayerNorms
    kv = 2 * d * d  # cross-attention K/V weights: they read the memory
    dec_layer = attn + attn + ffn + 3 * 2 * d - kv
    S, T = 40, 24
    per_example = (6 * (L * enc_layer + L * kv) * S + 6 * (L * dec_layer + V * d) * T
                   + 12 * d * (L * S * S + L * T * T + L * T * S))
    assert seq2seq_flops_per_token(model, S, T) == pytest.approx(per_example / S)
    # the objectives count per encoder token; BART's target is as long as its input
    assert bart(bart_tok).flops_per_token(model, S) == pytest.approx(
        seq2seq_flops_per_token(model, S, S))


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_training_steps_match_transformers(request, tmp_path, name):
    """The objective's batches and loss train lmforge's model exactly as they train the
    transformers model with the same weights (forward and backward parity)."""
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import save_hf

    tok = request.getfixturevalue(f"{name}_tok")
    obj = bart(tok) if name == "bart" else t5(tok)
    torch.manual_seed(0)
    ours = build_model(model_config(f"tiny-{name}", tok))
    save_hf(ours, tmp_path)
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    raw = windows(tok, 4, obj.window_len(24))
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (ours, theirs)]
    for step in range(3):
        batch = obj.prepare(raw, draw=step)
        losses = []
        for model, opt in zip((ours, theirs), opts):
            model.train()
            loss, n = obj.loss(model, batch)
            (loss / n).backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
