"""The pretraining recipe end to end on a slice of Shakespeare."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from lmforge.config import from_dict, load_config
from lmforge.data import open_shards
from lmforge.errors import ConfigError, DataError
from lmforge.pretrain import pretrain
from lmforge.tokenizer import Tokenizer
from lmforge.training import RunConfig

VOCAB = 512
STEPS = 120  # at 60 the val loss was 0.06 below the unigram bar; at 120, 0.30


def recipe(run_dir, **train):
    return {
        "run_dir": str(run_dir),
        "seed": 3,
        "data": {"corpus": "shakespeare", "max_chars": 120_000, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": VOCAB},
        "model": {"preset": "tiny-gpt2", "max_seq_len": 64},
        "train": {"batch_size": 8, "seq_len": 32, "max_steps": STEPS, "lr": 4e-3, "min_lr": 4e-4,
                  "warmup_steps": 5, "eval_every": STEPS // 2, "eval_batches": 4,
                  "save_every": STEPS // 2,
                  "log_every": 10, "threads": 1, "progress": False, **train},
        "sample": {"prompt": "ROMEO:", "max_new_tokens": 8, "top_k": 20},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pretrain") / "gpt"
    return run_dir, pretrain(from_dict(RunConfig, recipe(run_dir)))


@pytest.mark.learning
def test_loss_falls_well_below_uniform_and_below_unigram(run):
    run_dir, summary = run
    assert summary["step"] == STEPS and summary["tokens"] == STEPS * 8 * 32
    uniform = math.log(VOCAB)  # 6.24 nats: a model that knows nothing
    assert summary["val_loss"] < uniform - 1.0
    assert summary["final_loss"] < uniform - 1.0
    # better than token frequencies alone (a unigram model fit on the train shards,
    # add-one smoothed): the model uses the context. Measured (default / avx2 / avx512
    # kernels alike): val 4.71, final 4.89, unigram 5.11
    shards = open_shards(run_dir / "shards")
    counts = np.bincount(np.concatenate(shards.train), minlength=VOCAB) + 1
    val = np.concatenate(shards.val)
    special = Tokenizer.load(run_dir / "tokenizer.json").special_tokens.values()
    counts[list(special)] = 0  # the run reports it with special tokens left out
    val = val[~np.isin(val, list(special))]
    unigram = float(-np.log(counts[val] / counts.sum()).mean())
    assert summary["val_unigram_loss"] == pytest.approx(unigram, rel=1e-9)
    assert summary["val_loss"] < unigram - 0.1
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    assert summary["train_flops"] == pytest.approx(summary["flops_per_token"] * STEPS * 8 * 32)
    assert 0 < summary["mfu"] < 1
    assert summary["sample"].startswith("ROMEO:") and len(summary["sample"]) > len("ROMEO:")


def test_run_dir_layout(run):
    run_dir, _ = run
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "loss.png",
                 f"checkpoints/step-{STEPS}/model.safetensors",
                 f"checkpoints/step-{STEPS}/state.pt", f"checkpoints/step-{STEPS // 2}/meta.json",
                 "shards/meta.json"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_saved_config_is_resolved(run):
    run_dir, _ = run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "preset" not in saved["model"]
    assert saved["model"]["vocab_size"] == VOCAB and saved["model"]["n_layer"] == 2
    assert saved["model"]["eos_token_id"] == VOCAB - 1  # <|endoftext|>, after the merges
    assert saved["tokenizer"]["path"] == str(run_dir / "tokenizer.json")
    assert saved["data"]["shards"] == str(run_dir / "shards")


def test_saved_config_reproduces_the_run(run, tmp_path):
    run_dir, summary = run
    again = load_config(run_dir / "config.yaml", RunConfig, [f"run_dir={tmp_path / 'again'}"])
    summary2 = pretrain(again)
    assert summary2["final_loss"] == summary["final_loss"]
    assert summary2["val_loss"] == summary["val_loss"]
    a = (run_dir / f"checkpoints/step-{STEPS}/model.safetensors").read_bytes()
    b = (tmp_path / f"again/checkpoints/step-{STEPS}/model.safetensors").read_bytes()
    assert a == b
    assert not (tmp_path / "again" / "shards").exists()  # the run's shards were reused
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (
        run_dir / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("override,message", [
    ("train.lrr=0.1", "unknown config key 'train.lrr'"),
    ("train.batch_size=many", "config key 'train.batch_size': expected an integer, got 'many'"),
    ("train.min_lr=1.0", "config key 'train.min_lr': expected a number in [0, lr]"),
    ("train.schedule=step", "config key 'train.schedule': expected one of"),
    ("model.n_layr=3", "unknown config key 'model.n_layr'"),
    ("model.preset=gpt9", "model preset 'gpt9' is unknown"),
    ("train.seq_len=128", "'train.seq_len': 128 is longer than the model's context"),
])
def test_bad_config_is_one_clear_error_and_writes_nothing(tmp_path, override, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path / "run")))
    with pytest.raises(ConfigError) as err:
        pretrain(load_config(path, RunConfig, [override]))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_unknown_corpus_writes_nothing(tmp_path):
    cfg = recipe(tmp_path / "run")
    cfg["data"]["corpus"] = str(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="neither a built-in corpus"):
        pretrain(from_dict(RunConfig, cfg))
    assert not Path(tmp_path / "run").exists()
