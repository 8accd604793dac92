"""The engine on several processes, launched the way users launch it:
`torchrun --nproc_per_node 2 -m lmforge pretrain|finetune CONFIG`, on CPU (gloo).

2 ranks x batch B train exactly as 1 process x batch 2B (DDP and FSDP2: the loss at
every step and the final weights within 1e-5), for a decoder pretraining run and an
encoder fine-tuning run; a 2-rank FSDP checkpoint (sharded) loads into one process,
generates and exports; a 2-rank run killed with SIGKILL resumes to the uninterrupted
run's weights; a 2-rank run leaves one run dir, one metrics.jsonl, one event file."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.config import dump_yaml, load_config
from lmforge.finetune import FinetuneConfig, finetune
from lmforge.models import ModelConfig, build
from lmforge.pretrain import pretrain
from lmforge.training import RunConfig
from lmforge.training.checkpoint import load_weights
from lmforge.training.logs import read_metrics

REPO = Path(__file__).resolve().parents[2]

def pretrain_yaml(tmp: Path, name: str, *args, **extra) -> str:
    path = tmp / f"{name}.yaml"
    dump_yaml(load_config(None, RunConfig, pretrain_args(*args, **extra)), path)
    return str(path)


# an encoder too: its MLM loss calls the model's encode and heads, not forward
BERT = {"model.preset": "tiny-bert", "objective.name": "mlm", "objective.masking": "dynamic",
        "tokenizer.special_tokens": '["<|endoftext|>", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]'}


def pretrain_args(run_dir, batch_size, strategy="none", **extra) -> list[str]:
    base = {"run_dir": run_dir, "seed": 7, "data.corpus": "shakespeare",
            "data.max_chars": 40_000, "data.val_fraction": 0.1, "tokenizer.vocab_size": 320,
            "model.preset": "tiny-gpt2", "model.max_seq_len": 32, "model.dropout": 0.0,
            "train.batch_size": batch_size, "train.seq_len": 32, "train.max_steps": 8,
            "train.lr": 3e-3, "train.warmup_steps": 2, "train.eval_every": 4,
            "train.eval_batches": 2, "train.save_every": 4, "train.log_every": 1,
            "train.threads": 1, "train.progress": False, "train.peak_flops": 1e11,
            "sample.prompt": "", "distributed.strategy": strategy, **extra}
    return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "train"]


def close(a: dict, b: dict, tol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max())


def plain_weights(run_dir: Path, step: int) -> dict:
    """The weights of checkpoint step-N, as one process loads them (sharded or not)."""
    cfg = load_config(run_dir / "config.yaml", RunConfig)
    model = build(ModelConfig.from_dict(cfg.model))
    load_weights(run_dir / "checkpoints" / f"step-{step}", model)
    return model.state_dict()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 8: the reference the 2-rank runs must equal (a decoder, CLM)."""
    run = tmp_path_factory.mktemp("single") / "run"
    pretrain(load_config(None, RunConfig, pretrain_args(run, 8)))
    return run


@pytest.fixture(scope="module")
def single_bert(tmp_path_factory):
    """The same for an encoder pretrained with (dynamic) MLM."""
    run = tmp_path_factory.mktemp("single_bert") / "run"
    pretrain(load_config(None, RunConfig, pretrain_args(run, 8, **BERT)))
    return run


@pytest.mark.parametrize("strategy,model", [("ddp", "gpt"), ("fsdp", "gpt"), ("ddp", "bert"),
                                            ("fsdp", "bert")])
def test_two_ranks_pretrain_exactly_as_one_process_with_the_global_batch(
        request, strategy, model, tmp_path, launch):
    single = request.getfixturevalue("single" if model == "gpt" else "single_bert")
    run = tmp_path / "run"
    extra = BERT if model == "bert" else {}
    err = launch("pretrain", pretrain_yaml(tmp_path, "run", run, 4, strategy, **extra),
                 ranks=2)
    assert "global batch 8 x 32" in err and err.count("global batch") == 1  # rank 0 speaks
    a, b = losses(single), losses(run)
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    close(plain_weights(single, 8), plain_weights(run, 8))
    # one run dir: one metrics file, one event file, checkpoints written once
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-8"]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["event"] == "train"] == list(range(1, 9))
    assert records[-1]["event"] == "summary" and records[-1]["world_size"] == 2
    if strategy == "fsdp" and model == "gpt":  # sharded: one process generates, exports
        assert (run / "checkpoints" / "step-8" / "sharded").is_dir()
        assert not (run / "checkpoints" / "step-8" / "model.safetensors").exists()
        assert main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "5",
                     "--temperature", "0"]) == 0
        assert main(["convert", "--to-hf", str(run), "--out", str(tmp_path / "hf")]) == 0
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
        ours = build(ModelConfig.from_dict(load_config(run / "config.yaml", RunConfig).model))
        load_weights(run / "checkpoints" / "step-8", ours)
        ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.allclose(ours.eval()(ids).logits, hf(ids).logits, atol=1e-5)


def test_a_killed_two_rank_fsdp_run_resumes_to_the_same_weights(tmp_path, launch):
    straight = tmp_path / "straight"
    launch("pretrain", pretrain_yaml(tmp_path, "straight", straight, 4, "fsdp"), ranks=2)
    run = tmp_path / "run"
    config = pretrain_yaml(tmp_path, "run", run, 4, "fsdp")
    launch("pretrain", config, slow=True, ranks=2, kill_at=(run, 5))  # torchrun + ranks
    assert (run / "checkpoints" / "step-4").is_dir()
    assert not (run / "checkpoints" / "step-8").exists()
    launch("pretrain", config, "--resume", ranks=2)
    close(plain_weights(straight, 8), plain_weights(run, 8), tol=0)  # bitwise
    assert losses(run) == losses(straight)


# -- fine-tuning an encoder ------------------------------------------------------------------

def finetune_args(run_dir, tok_file, batch_size, strategy="none") -> list[str]:
    return [f"run_dir={run_dir}", f"tokenizer={tok_file}", "model.preset=tiny-bert",
            "model.dropout=0.0", "options.classifier_dropout=0.0", "max_train_examples=32",
            "max_eval_examples=16", "epochs=2", "patience=0", f"train.batch_size={batch_size}",
            "train.lr=2e-3", "train.log_every=1", "train.threads=1", "train.progress=false",
            "train.tensorboard=false", f"distributed.strategy={strategy}"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_finetune_exactly_as_one_process_with_the_global_batch(tok_file, strategy,
                                                                        tmp_path, launch):
    one = finetune(load_config(None, FinetuneConfig, finetune_args(tmp_path / "one",
                                                                   tok_file, 8)))
    run = tmp_path / "two"
    dump_yaml(load_config(None, FinetuneConfig, finetune_args(run, tok_file, 4, strategy)),
              tmp_path / "two.yaml")
    launch("finetune", str(tmp_path / "two.yaml"), ranks=2)
    a, b = losses(tmp_path / "one"), losses(run)
    assert len(a) == len(b) == 8  # 32 rows / 8 a step x 2 epochs
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    two = json.loads((run / "results.json").read_text())
    assert two["world_size"] == 2 and two["best_epoch"] == one["best_epoch"]
    for split in ("val", "test"):
        for k, v in one[split].items():
            assert two[split][k] == pytest.approx(v, abs=1e-6), (split, k)
    best = f"best/step-{4 * one['best_epoch']}/model.safetensors"
    close(load_file(tmp_path / "one" / best), load_file(run / best))
