"""MaskedLM: windows -> [CLS] ... [SEP] inputs, static / dynamic masks, NSP / SOP pairs,
and the loss against a hand computation on the model's own logits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import build as build_model
from lmforge.models.config import resolve_model_config
from lmforge.objectives import IGNORE, MaskedLM, build
from lmforge.objectives.config import ObjectiveConfig
from lmforge.objectives.pairs import stop_token_ids
from lmforge.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]
TEXT = ("To be, or not to be, that is the question. Whether 'tis nobler in the mind to "
        "suffer the slings and arrows of outrageous fortune? Or to take arms! ") * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], vocab_size=300, special_tokens=SPECIALS, progress=False)


def objective(tok, preset="tiny-bert", seed=0, **kw):
    model = {"preset": preset}
    if preset == "tiny-roberta":
        model["position_offset"] = None
    mc = resolve_model_config(model, tok.vocab_size, tok)
    return build(ObjectiveConfig(name="mlm", **kw), tokenizer=tok, model_config=mc,
                 seed=seed), mc


def ordinary(tok, rng, shape):
    """Random ids of ordinary (non-special, non-stop) tokens."""
    bad = set(tok.special_tokens.values()) | set(stop_token_ids(tok))
    pool = np.array([i for i in range(tok.vocab_size) if i not in bad])
    return pool[rng.integers(len(pool), size=shape)]


def within(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_inputs_and_labels_exact(tok):
    obj, _ = objective(tok, preset="tiny-roberta", pair="none")
    raw = ordinary(tok, np.random.default_rng(0), (400, 30))
    raw[:, 7] = tok.eos_id  # a document boundary inside every window: never chosen
    b = obj.prepare(raw, draw=3)
    ids, labels = b["input_ids"].numpy(), b["labels"].numpy()
    assert ids.shape == labels.shape == (400, 32) and set(b) == {"input_ids", "labels"}
    assert obj.window_len(32) == 30
    assert (ids[:, 0] == tok.cls_id).all() and (ids[:, -1] == tok.sep_id).all()
    chosen = labels != IGNORE
    assert not chosen[:, [0, 8, 31]].any()  # [CLS], EOS, [SEP]
    original = np.concatenate([np.full((400, 1), tok.cls_id), raw,
                               np.full((400, 1), tok.sep_id)], axis=1)
    assert (labels[chosen] == original[chosen]).all()
    assert (ids[~chosen] == original[~chosen]).all()  # untouched outside the targets
    n_eligible = 400 * 29
    assert within(chosen.sum(), n_eligible, 0.15)
    masked = (ids == tok.mask_id) & chosen
    kept = (ids == original) & chosen
    assert within(masked.sum(), chosen.sum(), 0.8) and within(kept.sum(), chosen.sum(), 0.1)
    assert obj.num_targets(b) == chosen.sum()


def test_static_masks_ignore_the_draw_dynamic_ones_follow_it(tok):
    raw = ordinary(tok, np.random.default_rng(1), (16, 40))
    static, _ = objective(tok, preset="tiny-roberta", masking="static")
    dynamic, _ = objective(tok, preset="tiny-roberta", masking="dynamic")
    s1, s2, s0 = (static.prepare(raw, draw=d)["labels"] for d in (1, 2, None))
    assert torch.equal(s1, s2) and torch.equal(s1, s0)
    # the same window in another batch (another row) gets the same static mask
    other = np.concatenate([ordinary(tok, np.random.default_rng(2), (3, 40)), raw[:1]])
    assert torch.equal(static.prepare(other, draw=9)["labels"][3], s1[0])
    d1, d1b, d2 = (dynamic.prepare(raw, draw=d)["labels"] for d in (1, 1, 2))
    assert torch.equal(d1, d1b) and not torch.equal(d1, d2)
    # draw=None (evaluation) is the static draw under either setting
    assert torch.equal(dynamic.prepare(raw, draw=None)["labels"], s0)


def hand_windows(tok, rng, n, length=30, stop_at=11):
    """Windows of ordinary tokens with exactly one sentence end: a stop token at `stop_at`,
    so A is w[:stop_at + 1] and B the rest."""
    raw = ordinary(tok, rng, (n, length))
    raw[:, stop_at] = tok.encode(".")[0]
    return raw


def originals(batch):
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    return np.where(labels != IGNORE, labels, ids)


def test_nsp_pairs_token_types_and_balance(tok):
    obj, _ = objective(tok, pair="nsp", masking="dynamic")
    assert obj.window_len(33) == 30
    raw = hand_windows(tok, np.random.default_rng(3), 64)
    s = 12  # A = w[:12] (ends with the stop token)
    labels = []
    for draw in range(8):
        b = obj.prepare(raw, draw=draw)
        orig, types, nsp = originals(b), b["token_type_ids"].numpy(), b["pair_labels"].numpy()
        assert orig.shape == (64, 33)
        expected_types = np.r_[np.zeros(s + 2), np.ones(33 - s - 2)]
        assert (types == expected_types).all()
        assert (orig[:, 0] == tok.cls_id).all() and (orig[:, s + 1] == tok.sep_id).all()
        assert (orig[:, -1] == tok.sep_id).all()
        assert (orig[:, 1 : s + 1] == raw[:, :s]).all()  # A is always the window's start
        for i in range(64):
            b_part = orig[i, s + 2 : -1]
            if nsp[i] == 0:  # IsNext: the rest of the same window
                assert (b_part == raw[i, s:]).all()
            else:  # NotNext: a same-length slice of another window of the batch
                hits = [j for j in range(64) if j != i and any(
                    (raw[j, t : t + len(b_part)] == b_part).all() for t in range(s + 1))]
                assert hits, (draw, i)
        labels += nsp.tolist()
        # the MLM targets skip [CLS] and both [SEP]s
        assert not (b["labels"].numpy()[:, [0, s + 1, 32]] != IGNORE).any()
    assert within(sum(labels), len(labels), 0.5)


def test_nsp_with_a_single_window_is_always_isnext(tok):
    obj, _ = objective(tok, pair="nsp")
    raw = hand_windows(tok, np.random.default_rng(4), 1)
    assert all(int(obj.prepare(raw, draw=d)["pair_labels"][0]) == 0 for d in range(20))


def test_sop_swaps_exactly_when_labelled(tok):
    obj, _ = objective(tok, preset="tiny-albert", pair="sop")
    raw = hand_windows(tok, np.random.default_rng(5), 200)
    b = obj.prepare(raw, draw=0)
    orig, types, sop = originals(b), b["token_type_ids"].numpy(), b["pair_labels"].numpy()
    a, rest = raw[:, :12], raw[:, 12:]
    for i in range(200):
        first, second = (a[i], rest[i]) if sop[i] == 0 else (rest[i], a[i])
        want = np.r_[tok.cls_id, first, tok.sep_id, second, tok.sep_id]
        assert (orig[i] == want).all()
        assert (types[i] == np.r_[np.zeros(len(first) + 2), np.ones(len(second) + 1)]).all()
    assert within(sop.sum(), 200, 0.5)


def test_whole_word_masking_takes_whole_words(tok):
    obj, _ = objective(tok, preset="tiny-roberta", whole_word=True)
    ids = np.array(tok.encode(TEXT))
    raw = np.stack([ids[i * 40 : i * 40 + 40] for i in range(20)])
    b = obj.prepare(raw, draw=0)
    from lmforge.objectives.masking import byte_level_word_starts

    full = np.concatenate([np.full((20, 1), tok.cls_id), raw, np.full((20, 1), tok.sep_id)], 1)
    starts = byte_level_word_starts(full, tok)
    chosen = b["labels"].numpy() != IGNORE
    inner = ~starts[:, 1:] & (full[:, 1:] != tok.sep_id)  # continues the word before it
    assert (chosen[:, 1:][inner] == chosen[:, :-1][inner]).all()
    assert chosen.any() and inner.any()


@pytest.mark.parametrize("preset,pair", [("tiny-bert", "nsp"), ("tiny-albert", "sop"),
                                         ("tiny-roberta", "none")])
def test_loss_and_accuracy_equal_a_hand_computation(tok, preset, pair):
    obj, mc = objective(tok, preset=preset, pair=pair, pair_weight=0.5)
    torch.manual_seed(0)
    model = build_model(mc).eval()
    raw = hand_windows(tok, np.random.default_rng(6), 6)
    b = obj.prepare(raw, draw=1)
    out = model(b["input_ids"], token_type_ids=b.get("token_type_ids"))
    logits = out.prediction_logits if pair != "none" else out.logits  # all positions
    labels = b["labels"]
    n = int((labels != IGNORE).sum())
    mlm_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                              reduction="sum")
    want = mlm_sum
    if pair != "none":
        pair_logits = out.seq_relationship_logits if pair == "nsp" else out.sop_logits
        pair_mean = F.cross_entropy(pair_logits, b["pair_labels"])
        want = mlm_sum + 0.5 * pair_mean * n
    loss, got_n = obj.loss(model, b)
    assert got_n == n and loss.item() == pytest.approx(want.item(), rel=1e-5)
    stats = obj.evaluate(model, b)
    assert stats["loss"][0] == pytest.approx(mlm_sum.item(), rel=1e-5)
    chosen = labels != IGNORE
    assert stats["acc"] == (float((logits.argmax(-1)[chosen] == labels[chosen]).sum()), n)
    if pair != "none":
        hits = float((pair_logits.argmax(-1) == b["pair_labels"]).sum())
        assert stats[f"{pair}_acc"] == (hits, 6)
        assert stats[f"{pair}_loss"][0] == pytest.approx(pair_mean.item() * 6, rel=1e-5)


def test_bad_input(tok):
    bare = Tokenizer.train([TEXT], vocab_size=300, special_tokens=["<|endoftext|>", "[PAD]"],
                           progress=False)
    mc = resolve_model_config({"preset": "tiny-bert"}, bare.vocab_size, bare)
    with pytest.raises(ConfigError, match=r"\[MASK\], \[CLS\], \[SEP\]"):
        build(ObjectiveConfig(name="mlm"), tokenizer=bare, model_config=mc)
    for p in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="objective.mask_prob"):
            objective(tok, mask_prob=p)
    with pytest.raises(ConfigError, match="encoder_head"):  # RoBERTa has no NSP head
        objective(tok, preset="tiny-roberta", pair="nsp")
    with pytest.raises(ConfigError, match="arch=encoder"):
        mc = resolve_model_config({"preset": "tiny-gpt2"}, tok.vocab_size, tok)
        build(ObjectiveConfig(name="mlm"), tokenizer=tok, model_config=mc)
    obj, _ = objective(tok, pair="nsp")
    with pytest.raises(ConfigError, match="train.seq_len"):
        obj.window_len(4)
    assert obj.window_len(5) == 2
    with pytest.raises(ConfigError, match="train.seq_len"):
        obj.window_len(129)  # tiny-bert: max_seq_len 128
    assert isinstance(obj, MaskedLM)


def test_flops_count_the_mlm_head_at_masked_positions_only(tok):
    obj, mc = objective(tok, mask_prob=0.2)
    model = build_model(mc)
    T = 64
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    head = numel(model.mlm_head.dense) + numel(model.mlm_head.norm) \
        + model.mlm_head.bias.numel() + model.tok_embed.weight.numel()
    per_seq = numel(model.pooler) + numel(model.pair_head)
    body = numel(model.blocks) + numel(model.embed_norm)
    want = 6 * (body + 0.2 * head + per_seq / T) + 12 * mc.n_layer * mc.d_model * T
    assert obj.flops_per_token(model, T) == pytest.approx(want, rel=1e-12)
