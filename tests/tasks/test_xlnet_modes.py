"""XLNet bodies in the fine-tuning modes: XLNet's own token layouts (the class read at
the end, from [CLS]), segment ids, and the refusal of generation tasks."""

import dataclasses
import types

import pytest

from lmforge.errors import ConfigError
from lmforge.models import build, presets
from lmforge.tasks import get_task
from lmforge.tasks.modes import default_mode, get_mode
from lmforge.tokenizer import Tokenizer

SPECIAL = ["<|endoftext|>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


@pytest.fixture(scope="module")
def tok():
    text = "A fine film , great fun . When was it built ? It opened in 1931 . " * 20
    return Tokenizer.train([text], vocab_size=290, special_tokens=SPECIAL, progress=False)


def _mode(name, task, tok):
    mc = dataclasses.replace(presets.get("tiny-xlnet"), vocab_size=tok.vocab_size,
                             pad_token_id=tok.pad_id)
    cfg = types.SimpleNamespace(max_len=64, eval_batch_size=8, options={})
    return get_mode(name).from_config(cfg, get_task(task), tok, mc), mc


def test_classification_layout_ends_with_cls(tok):
    mode, mc = _mode("classify", "rotten-tomatoes", tok)
    a = tok.encode_ordinary("A fine film")
    ids, types_ = mode.encode({"text": "A fine film", "label": 1})
    assert ids == a + [tok.sep_id, tok.cls_id] and types_ == [0] * (len(a) + 1) + [2]
    b = tok.encode_ordinary("great fun")
    ids, types_ = mode.encode({"text": "A fine film", "text_pair": "great fun", "label": 0})
    assert ids == a + [tok.sep_id] + b + [tok.sep_id, tok.cls_id]
    assert types_ == [0] * (len(a) + 1) + [1] * (len(b) + 1) + [2]
    model = mode.build_model(build(mc))
    assert model.pooling == "last" and model.head.dense is not None  # XLNet's summary
    batch = mode.prepare([{"text": "A fine film", "label": 1},
                          {"text": "A fine film , great fun . It opened", "label": 0}])
    assert "token_type_ids" in batch
    loss, n = mode.loss(model, batch)
    assert n == 2 and loss.item() > 0


def test_qa_layout_has_segments(tok):
    mode, _ = _mode("qa", "wiki-qa", tok)
    assert mode.prefix == [] and mode.sep == [tok.sep_id] and mode.use_types


def test_generation_tasks_are_refused():
    for task_type in ("seq2seq", "chat"):
        with pytest.raises(ConfigError, match="an encoder cannot do"):
            default_mode(task_type, "xlnet")
