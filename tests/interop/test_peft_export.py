"""`lmforge convert --to-hf RUN --out DIR` of a PEFT fine-tuned run, end to end: a tiny
run fine-tuned with `peft:` -> convert -> transformers (+ peft) computes the run's logits.

- LoRA: the base as the task's transformers class (with the trained head) and the LoRA
  beside it in peft's format (the head again as modules_to_save):
  `PeftModel.from_pretrained(Cls.from_pretrained(DIR), DIR)`; `--merge`: a plain
  transformers model, no adapter.
- prompt / prefix / P-tuning: the adapter in DIR/adapter.
- Houlsby adapters, and --merge of a run that has no LoRA: one line, exit 2."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft_lib = pytest.importorskip("peft")

from lmforge import peft  # noqa: E402
from lmforge.cli import main  # noqa: E402
from lmforge.config import load_config  # noqa: E402
from lmforge.finetune import FinetuneConfig, finetune, load_finetuned  # noqa: E402

QUIET = ["train.threads=1", "train.progress=false", "train.tensorboard=false"]
IDS = torch.randint(5, 290, (3, 12), generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1] * 12, [1] * 8 + [0] * 4, [1] * 10 + [0] * 2])


def run(tmp_path, tok_file, name, preset, method, *extra):
    """A tiny fine-tune; lr high enough that the adapter moves the logits."""
    cfg = load_config(None, FinetuneConfig, [
        f"run_dir={tmp_path / name}", f"tokenizer={tok_file}", f"model.preset={preset}",
        "max_len=32", "max_train_examples=32", "max_eval_examples=8", "epochs=1",
        "train.batch_size=8", "train.lr=3e-2", f"peft.method={method}",
        "peft.num_virtual_tokens=4", *QUIET, *extra])
    finetune(cfg)
    return tmp_path / name


def convert(run_dir, out, *flags):
    assert main(["convert", "--to-hf", str(run_dir), "--out", str(out), *flags]) == 0
    return out


def close(a, b):
    """Equal to 1e-5 on the logits' scale."""
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def bert_logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask,
                     token_type_ids=torch.zeros_like(ids)).logits


def ours_classify(run_dir=None, r=None):
    r = r or load_finetuned(run_dir)
    batch = {"input_ids": IDS, "attention_mask": MASK, "token_type_ids": torch.zeros_like(IDS)}
    with torch.no_grad():
        return r.mode.logits(r.model, batch), r


def test_lora_classifier_exports_as_task_class_plus_peft_adapter_and_merged(tok_file,
                                                                          tmp_path):
    run_dir = run(tmp_path, tok_file, "lora", "tiny-bert", "lora", "peft.targets=[q,v,up]")
    ours, r = ours_classify(run_dir)
    with torch.no_grad():  # the LoRA matters: without it, other logits
        for layer in peft.lora.lora_layers(r.model):
            for x in layer.lora.values():
                x.B.zero_()
    without, _ = ours_classify(r=r)
    assert (ours - without).abs().max() > 1e-3

    out = convert(run_dir, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors",
                                               "tokenizer.json", "adapter_config.json",
                                               "adapter_model.safetensors"}
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"] == ["classifier"]
    assert adapter["auto_mapping"]["base_model_class"] == "BertForSequenceClassification"
    base = transformers.BertForSequenceClassification.from_pretrained(out)
    hf = peft_lib.PeftModel.from_pretrained(base, out).eval()
    assert close(bert_logits(hf), ours)

    merged = convert(run_dir, tmp_path / "merged", "--merge")
    assert not (merged / "adapter_config.json").exists()
    plain = transformers.BertForSequenceClassification.from_pretrained(merged).eval()
    assert close(bert_logits(plain), ours)


def test_lora_decoder_exports_as_the_lm_plus_peft_adapter(tok_file, tmp_path):
    run_dir = run(tmp_path, tok_file, "gpt", "tiny-gpt2", "lora", "mode=verbalizer",
                  "options.template={text} is", "peft.targets=[q,v,down]",
                  "options.label_words={negative: ' bad', positive: ' good'}")
    r = load_finetuned(run_dir)
    with torch.no_grad():
        ours = r.model(IDS, attention_mask=MASK).logits
    out = convert(run_dir, tmp_path / "hf")
    base = transformers.GPT2LMHeadModel.from_pretrained(out)
    hf = peft_lib.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        theirs = hf(input_ids=IDS, attention_mask=MASK).logits
    keep = MASK.bool()  # padded positions differ by design (no one reads them)
    assert close(theirs[keep], ours[keep])
    plain = transformers.GPT2LMHeadModel.from_pretrained(convert(run_dir, tmp_path / "m",
                                                                 "--merge")).eval()
    with torch.no_grad():
        assert close(plain(input_ids=IDS, attention_mask=MASK).logits[keep], ours[keep])


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_prompt_methods_export_their_adapter_to_dir_adapter(method, tok_file, tmp_path):
    run_dir = run(tmp_path, tok_file, method, "tiny-bert", method)
    ours, _ = ours_classify(run_dir)
    out = convert(run_dir, tmp_path / "hf")
    assert not (out / "adapter_config.json").exists()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"] == ["classifier"]
    base = transformers.BertForSequenceClassification.from_pretrained(out)
    hf = peft_lib.PeftModel.from_pretrained(base, out / "adapter").eval()
    assert close(bert_logits(hf), ours)


def test_what_has_no_peft_export_is_one_line(tok_file, tmp_path, capsys):
    houlsby = run(tmp_path, tok_file, "adapters", "tiny-bert", "adapters")
    prompt = run(tmp_path, tok_file, "prompt", "tiny-bert", "prompt")
    full = run(tmp_path, tok_file, "full", "tiny-bert", "null")
    capsys.readouterr()
    for run_dir, flags, message in [
        (houlsby, [], "Houlsby adapters have no peft format"),
        (prompt, ["--merge"], "--merge: only a LoRA run has weights to merge; this run's "
                              "peft method is prompt"),
        (full, ["--merge"], "peft method is none (full fine-tuning)")]:
        assert main(["convert", "--to-hf", str(run_dir), "--out", str(tmp_path / "x"),
                     *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
        assert not (tmp_path / "x").exists()
