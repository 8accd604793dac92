"""Fine-tuning heads: pooling positions, loss values, and parity with transformers."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import build, presets
from lmforge.models.heads import (
    ClassificationHead,
    SpanHead,
    TaskModel,
    TokenClassificationHead,
    gather_positions,
    last_match_index,
    last_token_index,
)


def _tiny(name, **kw):
    torch.manual_seed(0)
    return build(dataclasses.replace(presets.get(name), **kw))


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_last_match_index_ignores_padding_that_reuses_the_eos_id():
    eos = 2
    ids = torch.tensor([[0, 5, 2, 2, 2], [0, 2, 7, 8, 2]])  # row 0: pads are eos too
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert last_match_index(ids, eos, mask).tolist() == [2, 4]
    assert last_match_index(ids, eos).tolist() == [4, 4]
    with pytest.raises(ValueError, match="row 0 has no token"):
        last_match_index(torch.tensor([[0, 5, 6]]), eos)


def test_gather_positions_picks_one_vector_per_row():
    h = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    assert gather_positions(h, torch.tensor([2, 0])).tolist() == [[4.0, 5.0], [6.0, 7.0]]


def test_encoder_classifier_reads_the_pooler_and_its_loss_is_cross_entropy():
    body = _tiny("tiny-bert", dropout=0.0)
    head = ClassificationHead(64, 3, dropout=0.0)
    model = TaskModel(body, head, "pooler").eval()
    ids = torch.randint(5, 200, (4, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    logits = model(ids, mask)
    pooled = body(ids, mask).pooler_output
    by_hand = pooled @ head.out.weight.T + head.out.bias  # z = W x + b
    assert logits.shape == (4, 3)
    torch.testing.assert_close(logits, by_hand)
    y = torch.tensor([0, 2, 1, 2])
    nll = -torch.log_softmax(by_hand, -1)[torch.arange(4), y].sum()
    torch.testing.assert_close(F.cross_entropy(logits, y, reduction="sum"), nll)


def test_decoder_classifier_reads_the_last_real_token_with_either_padding():
    body = _tiny("tiny-gpt2", dropout=0.0)
    model = TaskModel(body, ClassificationHead(64, 2, dropout=0.0), "last").eval()
    seq = torch.randint(1, 250, (5,))
    right = torch.zeros(1, 8, dtype=torch.long)
    right[0, :5] = seq
    left = torch.zeros(1, 8, dtype=torch.long)
    left[0, 3:] = seq
    m_right = (torch.arange(8) < 5).long()[None]
    m_left = (torch.arange(8) >= 3).long()[None]
    alone = model(seq[None])
    torch.testing.assert_close(model(right, m_right), alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(left, m_left), alone, atol=1e-5, rtol=0)
    h = body(seq[None]).last_hidden_state[:, -1]
    torch.testing.assert_close(alone, model.head(h))


def test_bart_classifier_reads_the_decoder_at_the_last_eos():
    body = _tiny("tiny-bart", dropout=0.0)
    eos = body.config.eos_token_id
    model = TaskModel(body, ClassificationHead(64, 2, dropout=0.0, dense=True), "eos",
                      eos_token_id=eos).eval()
    ids = torch.tensor([[0, 11, 12, eos, 1, 1], [0, 13, eos, eos, 14, eos]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    memory = body.encode(ids, mask).last_hidden_state
    h = body.decode(body.shift_right(ids), memory, mask)  # the same input, shifted right
    expected = model.head(torch.stack([h[0, 3], h[1, 5]]))
    torch.testing.assert_close(model(ids, mask), expected)


def test_token_and_span_heads_shapes_and_values():
    h = torch.randn(2, 5, 8)
    tok = TokenClassificationHead(8, 4, dropout=0.0)
    torch.testing.assert_close(tok(h), h @ tok.out.weight.T + tok.out.bias)
    span = SpanHead(8)
    start, end = span(h)
    assert start.shape == end.shape == (2, 5)
    both = h @ span.out.weight.T + span.out.bias
    torch.testing.assert_close(start, both[..., 0])
    torch.testing.assert_close(end, both[..., 1])


def test_regression_head_is_one_score():
    head = ClassificationHead(8, 1, dropout=0.0)
    x = torch.randn(3, 8)
    s = head(x).squeeze(-1)
    y = torch.tensor([0.5, 1.0, -2.0])
    torch.testing.assert_close(F.mse_loss(s, y, reduction="sum"), ((s - y) ** 2).sum())


def test_sequence_classification_matches_transformers_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import load_hf

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    hf = transformers.BertForSequenceClassification(config).eval()
    hf.bert.save_pretrained(tmp_path)  # BertModel weights: body + pooler
    body = load_hf(tmp_path, dtype=torch.float32)
    head = ClassificationHead(32, 3, dropout=0.0)
    with torch.no_grad():
        head.out.weight.copy_(hf.classifier.weight)
        head.out.bias.copy_(hf.classifier.bias)
    ours = TaskModel(body, head, "pooler").eval()
    ids = torch.randint(1, 120, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-bart"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    body = _tiny(name, dropout=0.0)
    pooling = {"tiny-bert": "pooler", "tiny-gpt2": "last", "tiny-bart": "eos"}[name]
    eos = 2  # any id: only the "eos" pooling reads it
    model = TaskModel(body, ClassificationHead(64, 2, dropout=0.0), pooling, eos_token_id=eos)
    ids = torch.randint(5, 200, (2, 6))
    ids[:, -1] = eos

    def grads():
        model.zero_grad()
        model(ids).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_activation_checkpointing(True)
    assert model.backbone.gradient_checkpointing if name != "tiny-bart" \
        else model.config.gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)
