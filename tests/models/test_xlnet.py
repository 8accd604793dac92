"""XLNet against transformers' XLNetLMHeadModel on random weights (fp32, 1e-5): the content
stream (padding, segments), the query stream (perm_mask + target_mapping), Transformer-XL
memory over two segments, bi_data; shapes whose heads are no power of two. Plus what the
two streams promise: a prediction never sees its own token."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import ConfigError  # noqa: E402
from lmforge.interop.hf_xlnet import RENAMES  # noqa: E402
from lmforge.models import XLNet, build, presets  # noqa: E402
from lmforge.models.xlnet import relative_positions  # noqa: E402

V, B, T = 97, 4, 9


def _pair(n_head=4, d=64, mem_len=None, bi_data=False, n_layer=2):
    """(transformers model, ours) with the same random weights, eval mode."""
    torch.manual_seed(0)
    hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(
        vocab_size=V, d_model=d, n_layer=n_layer, n_head=n_head, d_inner=80, dropout=0.0,
        mem_len=mem_len, bi_data=bi_data, ff_activation="gelu")).eval()
    ours = build(presets.get("tiny-xlnet", vocab_size=V, d_model=d, n_head=n_head, d_ff=80,
                             n_layer=n_layer, mem_len=mem_len, bi_data=bi_data)).eval()
    theirs = hf.state_dict()
    state = {}
    for mine, name in RENAMES:
        for i in range(n_layer) if "{i}" in mine else [None]:
            if mine != "lm_head.weight":  # tied to the embedding
                state[mine.format(i=i)] = theirs[name.format(i=i)]
    ours.load_state_dict(state, strict=False)
    ours.tie_weights()
    return hf, ours


def _inputs(seed=1, t=T):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, t), generator=g)
    types = torch.randint(0, 2, (B, t), generator=g)
    mask = torch.ones(B, t)
    mask[1, t - 3:] = 0  # a padded row
    perm = (torch.rand(B, t, t, generator=g) > 0.5).float()
    mapping = torch.zeros(B, 3, t)
    for k, j in enumerate((1, 4, t - 2)):
        mapping[:, k, j] = 1.0
    return ids, types, mask, perm, mapping


SHAPES = [dict(n_head=4, d=64), dict(n_head=3, d=48), dict(n_head=5, d=40),
          dict(n_head=3, d=48, bi_data=True), dict(n_head=5, d=40, mem_len=4)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_logits_match_transformers(shape):
    hf, ours = _pair(**shape)
    ids, types, mask, perm, mapping = _inputs()
    with torch.no_grad():
        # content stream only (fine-tuning): padding and segments
        a = hf(ids, attention_mask=mask, token_type_ids=types).logits
        b = ours(ids, attention_mask=mask, token_type_ids=types).logits
        assert b.shape == (B, T, V)
        assert (a - b).abs().max() < 1e-5
        # query stream: 3 predictions per row under a permutation mask
        kw = dict(attention_mask=mask, token_type_ids=types, perm_mask=perm,
                  target_mapping=mapping)
        a, b = hf(ids, **kw).logits, ours(ids, **kw).logits
        assert b.shape == (B, 3, V)
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("mem_len", [None, 5])
def test_memory_over_two_segments_matches_transformers(mem_len):
    """Segment 1 fills the memory; segment 2 reads it (both streams) and returns the next
    one: the last mem_len inputs of every layer (all of them when mem_len is None)."""
    hf, ours = _pair(n_head=3, d=48, mem_len=mem_len)
    ids, types, _, perm, mapping = _inputs(t=7)
    ids2, types2, _, perm2, mapping2 = _inputs(seed=2, t=6)
    with torch.no_grad():
        a1, b1 = hf(ids, use_mems=True), ours(ids, use_mems=True)
        kw = dict(token_type_ids=types2, perm_mask=perm2, target_mapping=mapping2, use_mems=True)
        a2 = hf(ids2, mems=a1.mems, **kw)
        b2 = ours(ids2, mems=b1.mems, **kw)
    assert (a2.logits - b2.logits).abs().max() < 1e-5
    kept = mem_len or 7 + 6
    assert len(b2.mems) == 2 and b2.mems[0].shape == (B, kept, 48)
    for theirs, mine in zip(a2.mems, b2.mems):  # transformers' memory is (M, B, d)
        assert (theirs.transpose(0, 1) - mine).abs().max() < 1e-5
    # the memory changes what segment 2 computes
    with torch.no_grad():
        alone = ours(ids2, token_type_ids=types2, perm_mask=perm2, target_mapping=mapping2)
    assert (alone.logits - b2.logits).abs().max() > 1e-4


def test_bi_data_reads_the_second_half_backwards():
    pos = relative_positions(3, 3, 8, bi_data=True, batch=4)
    assert pos.shape == (4, 6, 8)
    fwd = relative_positions(3, 3, 8, bi_data=False, batch=4)[0]  # distances 3 .. -2
    assert torch.equal(pos[0], fwd) and torch.equal(pos[1], fwd)
    # backwards: distance p becomes -p: sin flips sign, cos does not
    assert torch.allclose(pos[2, :, :4], -fwd[:, :4]) and torch.equal(pos[3, :, 4:], fwd[:, 4:])
    _, ours = _pair(n_head=3, d=48, bi_data=True)
    with pytest.raises(ValueError, match="even batch"):
        ours(torch.randint(0, V, (3, 5)))


def test_a_prediction_never_sees_its_own_token():
    """Query stream: the prediction at position j under a mask that hides j from j is the
    same whatever x_j is; the content stream at j changes with x_j."""
    torch.manual_seed(0)
    model: XLNet = build(presets.get("tiny-xlnet")).eval()
    ids = torch.randint(5, 256, (1, 8))
    j = 5
    perm = torch.zeros(1, 8, 8)
    perm[0, :, j] = 1.0  # nobody sees x_j (the last in the order)
    mapping = torch.zeros(1, 1, 8)
    mapping[0, 0, j] = 1.0
    changed = ids.clone()
    changed[0, j] = (ids[0, j] + 1) % 256
    with torch.no_grad():
        a = model(ids, perm_mask=perm, target_mapping=mapping).logits
        b = model(changed, perm_mask=perm, target_mapping=mapping).logits
        assert (a - b).abs().max() < 1e-6
        h_a = model.encode(ids, perm_mask=perm)[0]
        h_b = model.encode(changed, perm_mask=perm)[0]
    assert (h_a[0, j] - h_b[0, j]).abs().max() > 1e-4  # its content stream sees itself
    assert (h_a[0, :j] - h_b[0, :j]).abs().max() < 1e-6  # ... and nobody else sees it


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    model = build(presets.get("tiny-xlnet")).eval()
    ids = torch.randint(5, 256, (1, 6))
    padded = torch.cat([ids, torch.full((1, 3), model.config.pad_token_id)], dim=1)
    with torch.no_grad():
        alone = model(ids).logits
        with_pads = model(padded, attention_mask=torch.tensor([[1] * 6 + [0] * 3])).logits
    assert (alone - with_pads[:, :6]).abs().max() < 1e-5


def _body_state(hf_body_state, n_layer):
    state = {}
    for mine, name in RENAMES:
        for i in range(n_layer) if "{i}" in mine else [None]:
            if not mine.startswith("lm_"):
                state[mine.format(i=i)] = hf_body_state[name.format(i=i)]
    return state


def test_classification_from_the_last_token_matches_transformers():
    """XLNetForSequenceClassification: the last position's hidden state, Linear + tanh
    (sequence_summary), Linear to the labels = our TaskModel pooling 'last' with a dense
    ClassificationHead; left padding, segments 0 / 1 and [CLS]'s own segment 2."""
    from lmforge.models.heads import ClassificationHead, TaskModel

    torch.manual_seed(0)
    hf = transformers.XLNetForSequenceClassification(transformers.XLNetConfig(
        vocab_size=V, d_model=48, n_layer=2, n_head=3, d_inner=80, dropout=0.0,
        summary_last_dropout=0.0, num_labels=3)).eval()
    body = build(presets.get("tiny-xlnet", vocab_size=V, d_model=48, n_head=3, d_ff=80))
    head = ClassificationHead(48, 3, dropout=0.0, dense=True)
    model = TaskModel(body, head, "last").eval()
    theirs = hf.state_dict()
    state = {"backbone." + k: v for k, v in _body_state(theirs, 2).items()}
    state.update({"head.dense.weight": theirs["sequence_summary.summary.weight"],
                  "head.dense.bias": theirs["sequence_summary.summary.bias"],
                  "head.out.weight": theirs["logits_proj.weight"],
                  "head.out.bias": theirs["logits_proj.bias"]})
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["backbone.lm_bias", "backbone.lm_head.weight"]  # unused head
    ids = torch.randint(6, V, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as XLNet's tokenizer pads
    types = torch.tensor([[0] * 4 + [1] * 3 + [2]] * 3)
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, token_type_ids=types).logits
        b = model(ids, mask, types)
    assert (a - b).abs().max() < 1e-5


def test_span_qa_matches_transformers():
    """XLNetForQuestionAnsweringSimple: a Linear(d, 2) on every position = SpanHead."""
    from lmforge.models.heads import SpanHead, TaskModel

    torch.manual_seed(0)
    hf = transformers.XLNetForQuestionAnsweringSimple(transformers.XLNetConfig(
        vocab_size=V, d_model=40, n_layer=2, n_head=5, d_inner=80, dropout=0.0)).eval()
    model = TaskModel(build(presets.get("tiny-xlnet", vocab_size=V, d_model=40, n_head=5,
                                        d_ff=80)), SpanHead(40), "tokens").eval()
    theirs = hf.state_dict()
    state = {"backbone." + k: v for k, v in _body_state(theirs, 2).items()}
    state.update({"head.out.weight": theirs["qa_outputs.weight"],
                  "head.out.bias": theirs["qa_outputs.bias"]})
    model.load_state_dict(state, strict=False)
    ids = torch.randint(6, V, (2, 11))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    types = torch.tensor([[0] * 4 + [1] * 7] * 2)
    with torch.no_grad():
        out = hf(ids, attention_mask=mask, token_type_ids=types)
        start, end = model(ids, mask, types)
    assert (out.start_logits - start).abs().max() < 1e-5
    assert (out.end_logits - end).abs().max() < 1e-5


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build(presets.get("tiny-xlnet")).train()
    ids, types, mask, perm, mapping = _inputs()
    ids = ids % 256

    def grads(checkpointing):
        model.gradient_checkpointing = checkpointing
        model.zero_grad()
        out = model(ids, attention_mask=mask, token_type_ids=types, perm_mask=perm,
                    target_mapping=mapping)
        out.logits.logsumexp(-1).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, recomputed = grads(False), grads(True)
    assert len(plain) == len(recomputed) > 0
    for a, b in zip(plain, recomputed):
        assert torch.allclose(a, b, atol=1e-6)


def test_flags_its_blocks_do_not_have_are_refused():
    base = presets.get("tiny-xlnet")
    with pytest.raises(ConfigError, match="XLNet's blocks are post-LN"):
        base.replace(norm_position="pre")
    with pytest.raises(ConfigError, match="model.qk_norm"):
        base.replace(qk_norm=True)
