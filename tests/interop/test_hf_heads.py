"""Fine-tuned models out as transformers task classes: the same logits, head by head."""

import json

import pytest
import torch

from lmforge.errors import CheckpointError
from lmforge.interop.hf_heads import save_hf_task, task_architecture
from lmforge.models import build, presets
from lmforge.models.heads import (
    ClassificationHead,
    SpanHead,
    TaskModel,
    TokenClassificationHead,
)

transformers = pytest.importorskip("transformers")

B, T = 2, 10


def _model(preset: str, head: str, n: int = 3) -> TaskModel:
    torch.manual_seed(0)
    body = build(presets.get(preset))
    d, cfg = body.config.d_model, body.config
    if head == "tokens":
        model = TaskModel(body, TokenClassificationHead(d, n), "tokens")
    elif head == "span":
        model = TaskModel(body, SpanHead(d), "tokens")
    else:  # a sequence head pooling as named
        dense = head in ("first", "eos")
        model = TaskModel(body, ClassificationHead(d, n, dense=dense), head,
                          eos_token_id=cfg.eos_token_id if head == "eos" else None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.head.parameters():  # a trained head: no zero biases
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def _inputs(cfg):
    """Two rows, the second right-padded by 3; BART rows are <s> ... </s> (one EOS each)."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -3:] = 0
    if cfg.arch == "seq2seq":
        ids[:, 0] = cfg.bos_token_id
        ids[0, -1] = ids[1, -4] = cfg.eos_token_id
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    return ids.masked_fill(mask == 0, pad), mask


CASES = [  # (preset, our head, the transformers class)
    ("tiny-bert", "pooler", "BertForSequenceClassification"),
    ("tiny-albert", "pooler", "AlbertForSequenceClassification"),
    ("tiny-roberta", "first", "RobertaForSequenceClassification"),
    ("tiny-bart", "eos", "BartForSequenceClassification"),
    ("tiny-bert", "tokens", "BertForTokenClassification"),
    ("tiny-roberta", "tokens", "RobertaForTokenClassification"),
    ("tiny-electra", "tokens", "ElectraForTokenClassification"),
    ("tiny-gpt2", "tokens", "GPT2ForTokenClassification"),
    ("tiny-llama", "tokens", "LlamaForTokenClassification"),
    ("tiny-bert", "span", "BertForQuestionAnswering"),
    ("tiny-gpt2", "span", "GPT2ForQuestionAnswering"),
    ("tiny-llama", "span", "LlamaForQuestionAnswering"),
    ("tiny-bart", "span", "BartForQuestionAnswering"),
]


@pytest.mark.parametrize("preset,head,cls", CASES, ids=lambda x: str(x))
def test_task_class_gives_the_same_logits(preset, head, cls, tmp_path):
    ours = _model(preset, head)
    labels = ["neg", "neu", "pos"]
    name = save_hf_task(ours, tmp_path / "hf", labels=None if head == "span" else labels)
    assert name == cls
    theirs, info = getattr(transformers, cls).from_pretrained(
        tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    theirs.eval()
    ids, mask = _inputs(ours.config)
    kwargs = {"token_type_ids": torch.zeros_like(ids)} if ours.config.arch == "encoder" else {}
    with torch.no_grad():
        out = ours(ids, mask, **kwargs)
        ref = theirs(input_ids=ids, attention_mask=mask, **kwargs)
    real = mask.bool()
    if head == "span":
        assert torch.allclose(out[0][real], ref.start_logits[real], atol=1e-5)
        assert torch.allclose(out[1][real], ref.end_logits[real], atol=1e-5)
    elif head == "tokens":
        assert torch.allclose(out[real], ref.logits[real], atol=1e-5)
    else:
        assert out.shape == (B, 3) and torch.allclose(out, ref.logits, atol=1e-5)
    if head != "span":
        assert theirs.config.id2label == dict(enumerate(labels))


def test_regression_head_is_marked(tmp_path):
    save_hf_task(_model("tiny-bert", "pooler", n=1), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "LABEL_0"}


@pytest.mark.parametrize("preset,head,why", [
    ("tiny-gpt2", "last", "GPT2ForSequenceClassification: its score layer has no bias"),
    ("tiny-llama", "last", "LlamaForSequenceClassification: its score layer has no bias"),
    ("tiny-electra", "first", "ElectraForSequenceClassification: its head uses gelu"),
    ("tiny-bert", "first", "BertForSequenceClassification: it pools with pooler"),
    ("tiny-bart", "tokens", "BartForTokenClassification: transformers has no such class"),
])
def test_heads_transformers_computes_differently_are_refused(preset, head, why, tmp_path):
    with pytest.raises(CheckpointError, match=f"cannot export as {why}"):
        task_architecture(_model(preset, head))
    with pytest.raises(CheckpointError):
        save_hf_task(_model(preset, head), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_convert_to_hf_on_a_finetuned_run(tmp_path, capsys):
    """lmforge finetune -> lmforge convert --to-hf: BertForSequenceClassification with the
    task's labels gives the run's own logits on a prepared batch."""
    from lmforge.cli import main
    from lmforge.config import load_config
    from lmforge.finetune import FinetuneConfig, finetune, load_finetuned
    from lmforge.tasks import load_task
    from lmforge.tokenizer import Tokenizer

    rows = load_task("rotten-tomatoes")["train"][:200]
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=300, progress=False,
                          special_tokens=["<|endoftext|>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    tok.save(tmp_path / "tok.json")
    finetune(load_config(None, FinetuneConfig, [
        f"run_dir={tmp_path / 'run'}", "task=rotten-tomatoes", f"tokenizer={tmp_path / 'tok.json'}",
        "model.preset=tiny-bert", "max_train_examples=16", "max_eval_examples=8", "epochs=1",
        "train.batch_size=8", "train.progress=false", "train.tensorboard=false"]))
    capsys.readouterr()
    assert main(["convert", "--to-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert "(BertForSequenceClassification)" in capsys.readouterr().out
    run = load_finetuned(tmp_path / "run")
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.id2label == dict(enumerate(run.task.labels))
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    batch = run.mode.prepare(rows[:4])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        ours = run.model(inputs["input_ids"], inputs.get("attention_mask"),
                         inputs.get("token_type_ids"))
        ref = theirs(**inputs).logits
    assert torch.allclose(ours, ref, atol=1e-5)


def test_convert_to_hf_on_a_chat_run_is_the_lm_with_chat_tokens(tmp_path, capsys):
    """A chat fine-tune exports as GPT2LMHeadModel: the run's logits, the grown vocabulary,
    and the chat tokens as special tokens of the exported tokenizer.json."""
    import dataclasses

    from lmforge.cli import main
    from lmforge.config import load_config
    from lmforge.finetune import FinetuneConfig, finetune, load_finetuned
    from lmforge.runs import write_run
    from lmforge.tokenizer import CHAT_TOKENS, Tokenizer

    tok = Tokenizer.train(["Hello there, how are you? I am fine, thank you. " * 20],
                          vocab_size=280, special_tokens=["<|endoftext|>"], progress=False)
    cfg = dataclasses.replace(presets.get("tiny-gpt2"), vocab_size=tok.vocab_size,
                              eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    write_run(build(cfg), tok, tmp_path / "pre")
    finetune(load_config(None, FinetuneConfig, [
        f"run_dir={tmp_path / 'run'}", "task=chatterbot", f"init_from={tmp_path / 'pre'}",
        "max_train_examples=8", "max_eval_examples=4", "epochs=1", "max_len=64",
        "options.max_new_tokens=8",
        "train.batch_size=4", "train.progress=false", "train.tensorboard=false"]))
    capsys.readouterr()
    assert main(["convert", "--to-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert "(GPT2LMHeadModel)" in capsys.readouterr().out
    run = load_finetuned(tmp_path / "run")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.vocab_size == run.model.config.vocab_size == tok.vocab_size + 4
    exported = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    specials = {t["content"] for t in exported["added_tokens"] if t["special"]}
    assert set(CHAT_TOKENS) <= specials
    ids = torch.tensor([run.tokenizer.encode("<|user|>Hello there<|end|><|assistant|>",
                                             allowed_special="all")])
    assert int(ids.max()) >= tok.vocab_size  # the chat tokens are in the prompt
    with torch.no_grad():
        assert torch.allclose(run.model(ids).logits, theirs(ids).logits, atol=1e-5)
