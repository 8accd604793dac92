"""PEFT in the fine-tuning recipe: `peft: {method: lora, ...}` in any recipe. Only the
adapter and the head train (the body's weights stay bit-identical to the pretrained ones),
RUN_DIR/adapter.safetensors holds exactly the trained tensors, the run dir is a normal run
dir (eval, --resume after SIGKILL, torchrun DDP / FSDP = one process), and a prompt too
long for the context fails in one line before anything is written."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config import dump_yaml, load_config
from lmforge.finetune import FinetuneConfig, build_model, evaluate_run, finetune, setup
from lmforge.training.logs import read_metrics

QUIET = ["train.threads=1", "train.progress=false", "train.tensorboard=false"]

def args(run_dir, tok_file, *extra, batch_size=8) -> list[str]:
    # 32 rows / batch 8 = 4 steps an epoch
    return [f"run_dir={run_dir}", f"tokenizer={tok_file}", "model.preset=tiny-bert",
            "max_len=48", "max_train_examples=32", "max_eval_examples=16", "epochs=2",
            "patience=0", f"train.batch_size={batch_size}", "train.lr=5e-3",
            "train.log_every=1", "peft.method=lora", "peft.r=4", "peft.alpha=8", *QUIET,
            *extra]


def cfg_of(*a) -> FinetuneConfig:
    return load_config(None, FinetuneConfig, list(a))


def test_lora_trains_the_adapter_and_head_only_and_writes_them_as_the_adapter(tok_file,
                                                                             tmp_path):
    cfg = cfg_of(*args(tmp_path / "run", tok_file))
    summary = finetune(cfg)
    start = build_model(setup(cfg), cfg.seed).state_dict()  # the same init, before training
    best = load_file(Path(summary["checkpoint"]) / "model.safetensors")
    adapter = load_file(tmp_path / "run" / "adapter.safetensors")
    changed = {k for k in best if not torch.equal(best[k], start[k])}
    assert adapter.keys() == {k for k in best if ".lora." in k or k.startswith("head.")}
    assert changed == set(adapter)  # every trained tensor moved; the body did not (bitwise)
    for k, v in adapter.items():
        assert torch.equal(v, best[k])
    # tiny-bert, r=4 on q, v: 2 layers x 2 x 4 x (64 + 64) = 2,048; head 64 x 2 + 2 = 130
    assert summary["trainable_params"] == 2048 + 130 == sum(v.numel() for v in adapter.values())
    total = sum(v.numel() for v in best.values())
    assert summary["total_params"] == total
    assert summary["peft"]["method"] == "lora"
    size = (tmp_path / "run" / "adapter.safetensors").stat().st_size
    assert summary["peft"]["adapter_bytes"] == size
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["peft"] == summary["peft"] and saved["trainable_pct"] == pytest.approx(
        100 * 2178 / total, abs=1e-4)
    # the run dir reads back (lmforge eval): the PEFT model rebuilt, the same scores
    assert evaluate_run(tmp_path / "run") == summary["test"]


@pytest.mark.parametrize("method", ["adapters", "prompt", "prefix", "ptuning"])
def test_every_method_runs_as_a_recipe_and_evaluates_from_its_run_dir(method, tok_file,
                                                                      tmp_path):
    run = tmp_path / method
    summary = finetune(cfg_of(*args(run, tok_file, f"peft.method={method}",
                                    "peft.num_virtual_tokens=4", "epochs=1")))
    assert evaluate_run(run, split="val") == summary["val"]
    adapter = load_file(run / "adapter.safetensors")
    assert sum(v.numel() for v in adapter.values()) == summary["trainable_params"]
    assert all(k.startswith("head.") or "adapter" in k or "prompt_encoder" in k
               or "norm" in k for k in adapter)


def test_a_prompt_longer_than_the_context_is_one_line_before_anything_is_written(
        tok_file, tmp_path, capsys):
    run = tmp_path / "run"
    dump_yaml(cfg_of(*args(run, tok_file, "peft.method=prompt", "peft.num_virtual_tokens=90",
                           "max_len=64")), tmp_path / "c.yaml")
    assert main(["finetune", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        "lmforge: error: peft.num_virtual_tokens: 90 virtual tokens + 64 tokens of input "
        "is longer than the model's context of 128 (learned positions)"]
    assert not run.exists()
    assert main(["finetune", str(tmp_path / "c.yaml"), "peft.method=lora",
                 "peft.targets=[gate]"]) == 2
    assert "'gate' matches no layer of this model" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_generate_on_a_peft_run_dir_continues_greedily_with_the_adapter(method, tok_file,
                                                                       tmp_path, capsys):
    from lmforge.finetune import load_finetuned

    run = tmp_path / "run"
    finetune(cfg_of(*args(run, tok_file, "model.preset=tiny-gpt2", "mode=verbalizer",
                          "options.template={text} is", f"peft.method={method}",
                          "peft.num_virtual_tokens=4", "epochs=1", "train.lr=3e-2",
                          "options.label_words={negative: ' bad', positive: ' good'}")))
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "the film", "--max-new-tokens", "6",
                 "--temperature", "0"]) == 0
    printed = capsys.readouterr().out.strip()
    r = load_finetuned(run)  # greedy by hand: argmax of the full forward, no cache
    ids = r.tokenizer.encode("the film")
    for _ in range(6):
        with torch.no_grad():
            nxt = int(r.model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == r.tokenizer.eos_id:
            break
        ids.append(nxt)
    assert printed == r.tokenizer.decode(ids).strip()
    assert "+ " + method in json.loads((run / "results.json").read_text())["model"]


def test_lora_on_a_chat_run_trains_the_lora_only(tok_file, tmp_path):
    """chat's mode grows the vocabulary (a value-dependent build the meta check cannot
    run: the body alone is checked); the grown rows stay frozen, the LoRA trains."""
    run = tmp_path / "chat"
    summary = finetune(cfg_of(*args(run, tok_file, "task=chatterbot", "mode=chat",
                                    "model.preset=tiny-gpt2", "max_len=64", "epochs=1")))
    adapter = load_file(run / "adapter.safetensors")
    assert adapter and all(".lora." in k for k in adapter)
    assert summary["trainable_params"] == sum(v.numel() for v in adapter.values())


def test_a_killed_lora_run_resumes_to_the_uninterrupted_run(tok_file, tmp_path, launch):
    # LoRA dropout on: the RNG state in the checkpoint matters
    extra = ("peft.dropout=0.1", "epochs=4")
    straight = finetune(cfg_of(*args(tmp_path / "a", tok_file, *extra)))
    run = tmp_path / "b"
    dump_yaml(cfg_of(*args(run, tok_file, *extra)), tmp_path / "b.yaml")
    # killed in epoch 2, after epoch 1's checkpoint
    launch("finetune", str(tmp_path / "b.yaml"), slow=True, kill_at=(run, 6))
    assert (run / "checkpoints" / "step-4").is_dir() and not (run / "adapter.safetensors").exists()
    resumed = finetune(cfg_of(*args(run, tok_file, *extra)), resume=True)
    assert resumed["val"] == straight["val"] and resumed["test"] == straight["test"]
    assert (tmp_path / "a" / "adapter.safetensors").read_bytes() == \
        (run / "adapter.safetensors").read_bytes()
    last = "checkpoints/step-16/model.safetensors"
    assert (tmp_path / "a" / last).read_bytes() == (run / last).read_bytes()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_of_lora_train_exactly_as_one_process(strategy, tok_file, tmp_path, launch):
    def losses(run):
        return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["event"] == "train"]

    same = ("model.dropout=0.0", "options.classifier_dropout=0.0")
    one = finetune(cfg_of(*args(tmp_path / "one", tok_file, *same)))
    run = tmp_path / "two"
    dump_yaml(cfg_of(*args(run, tok_file, *same, f"distributed.strategy={strategy}",
                           batch_size=4)), tmp_path / "two.yaml")
    launch("finetune", str(tmp_path / "two.yaml"), ranks=2)
    a, b = losses(tmp_path / "one"), losses(run)
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    two = json.loads((run / "results.json").read_text())
    assert two["world_size"] == 2 and two["trainable_params"] == one["trainable_params"]
    for split in ("val", "test"):
        for k, v in one[split].items():
            assert two[split][k] == pytest.approx(v, abs=1e-6), (split, k)
    x = load_file(tmp_path / "one" / "adapter.safetensors")
    y = load_file(run / "adapter.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        assert torch.allclose(x[k], y[k], atol=1e-5, rtol=0), k
