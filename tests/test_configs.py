"""Every YAML recipe in configs/ is valid, and every tiny family recipe trains."""

import math
from pathlib import Path

import pytest

from lmforge.config import load_config
from lmforge.pretrain import pretrain, resolve_model_config
from lmforge.training.config import RunConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
TINY = [p for p in CONFIGS if p.parent.name == "tiny"]


def test_there_is_a_tiny_recipe_for_every_decoder_family():
    assert {p.stem for p in TINY} >= {"gpt1", "gpt2", "llama", "mistral", "qwen2", "gemma"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_loads_and_resolves(path):
    cfg = load_config(path, RunConfig)
    model = resolve_model_config(cfg.model, cfg.tokenizer.vocab_size)
    assert cfg.train.seq_len <= model.max_seq_len


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_recipe_trains(path, tmp_path):
    cfg = load_config(path, RunConfig, [
        f"run_dir={tmp_path / 'run'}", "data.max_chars=120000", "train.max_steps=30",
        "train.eval_every=30", "train.save_every=30", "train.progress=false",
        "train.tensorboard=false", "sample.max_new_tokens=5",
    ])
    summary = pretrain(cfg)
    # well below the loss of a uniform guess over the vocabulary
    assert summary["val_loss"] < math.log(cfg.tokenizer.vocab_size) - 1.0
    assert summary["sample"].startswith("KING:")
    assert (tmp_path / "run" / "checkpoints" / "step-30" / "model.safetensors").is_file()
