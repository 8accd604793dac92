"""Encoder-decoder pretraining end to end: the tiny BART and T5 recipes, resume, and the
CLI's generate / eval / errors on their run directories."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.data import open_shards
from lmforge.generation import generate
from lmforge.objectives.denoising import source_ids, target_text
from lmforge.pretrain import pretrain
from lmforge.runs import load_run, objective_eval
from lmforge.training.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = ["data.max_chars=80000", "tokenizer.vocab_size=400", "train.seq_len=32",
        "train.batch_size=8", "train.max_steps=24", "train.warmup_steps=4",
        "train.eval_every=12", "train.eval_batches=3", "train.save_every=12",
        "train.log_every=4", "train.threads=1", "train.progress=false",
        "train.tensorboard=false", "sample.max_new_tokens=6"]


def lmforge(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def one_line_error(r, fragment):
    """Exit 2 and one error line (after any progress notes, e.g. tokenizer training)."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [x for x in r.stderr.splitlines() if x.startswith("lmforge: error:")]
    assert len(errors) == 1 and fragment in errors[0], r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in r.stderr


@pytest.fixture(scope="module", params=["bart", "t5"])
def run(request, tmp_path_factory):
    name = request.param
    run_dir = tmp_path_factory.mktemp(name) / "run"
    cfg = load_config(ROOT / "configs" / "tiny" / f"{name}.yaml", RunConfig,
                      [f"run_dir={run_dir}", *FAST])
    return name, run_dir, pretrain(cfg)


def records(run_dir, event):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.mark.learning
def test_tiny_recipe_trains_and_reports_reconstruction_loss_and_accuracy(run):
    name, run_dir, summary = run
    assert summary["step"] == 24 and summary["tokens"] == 24 * 8 * 32  # encoder tokens
    losses = [r["loss"] for r in records(run_dir, "train")]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5
    evals = records(run_dir, "eval")
    assert [e["step"] for e in evals] == [12, 24]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert summary["val_loss"] < math.log(400) - 0.5  # well below a uniform guess
    assert 0 < summary["val_acc"] < 1 and "val_ppl" not in summary  # not a perplexity
    # FLOPs per encoder token, consistent with the trainer's token count
    assert summary["train_flops"] == pytest.approx(summary["flops_per_token"] * 24 * 8 * 32)
    cfg = load_config(run_dir / "config.yaml", RunConfig)
    assert cfg.objective.name == name and cfg.model["arch"] == "seq2seq"
    tok = load_run(run_dir).tokenizer
    start = tok.pad_id if name == "t5" else tok.eos_id  # as HF's T5 / BART
    assert cfg.model["decoder_start_token_id"] == start
    if name == "t5":
        assert cfg.tokenizer.sentinels == 32
        assert tok.sentinel_ids(32) == list(range(tok.vocab_size - 1, tok.vocab_size - 33, -1))
    assert isinstance(summary["sample"], str)


def test_resume_from_the_middle_is_exact(run, tmp_path):
    _, run_dir, _ = run
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    shutil.rmtree(again / "checkpoints" / "step-24")
    cfg = load_config(again / "config.yaml", RunConfig, [f"run_dir={again}"])
    summary = pretrain(cfg, resume=True)
    assert summary["step"] == 24
    a = load_file(run_dir / "checkpoints" / "step-24" / "model.safetensors")
    b = load_file(again / "checkpoints" / "step-24" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_generate_feeds_the_prompt_to_the_encoder(run):
    name, run_dir, _ = run
    prompt = "KING: My lord, <extra_id_0> the queen." if name == "t5" else "KING: <mask> lord."
    r = lmforge("generate", run_dir, "--prompt", prompt, "--temperature", "0",
                "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    loaded = load_run(run_dir)
    tok, model = loaded.tokenizer, loaded.model
    src = torch.tensor([source_ids(tok, prompt, model.config.family)])
    assert src[0, -1] == tok.eos_id and (tok.mask_id in src[0] if name == "bart"
                                         else tok.sentinel_ids(1)[0] in src[0])
    out = generate(model, src, max_new_tokens=12)[0].tolist()
    assert out[0] == model.config.decoder_start_token_id
    assert r.stdout == target_text(tok, out, model.config.decoder_start_token_id) + "\n"


def test_eval_reports_the_objective(run):
    name, run_dir, summary = run
    r = lmforge("eval", run_dir, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    loaded = load_run(run_dir)
    shards = open_shards(loaded.config.data.shards, loaded.tokenizer.fingerprint)
    ids = np.concatenate(shards.val).astype(np.int64).tolist()
    want = objective_eval(loaded, ids, seq_len=32)
    assert got["objective"] == name and "ppl" not in got
    assert got["loss"] == pytest.approx(want["loss"]) and got["acc"] == pytest.approx(want["acc"])
    assert got["tokens"] == want["tokens"]
    # the trainer's last eval is the first 3 batches of the same windows, corrupted alike
    part = objective_eval(loaded, ids, seq_len=32, max_batches=3)
    assert part["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert part["acc"] == pytest.approx(summary["val_acc"])
    r = lmforge("eval", run_dir)
    assert r.returncode == 0 and f"{name} loss {want['loss']:.4f}" in r.stdout
    assert f"acc {want['acc']:.4f}" in r.stdout


@pytest.mark.parametrize("recipe, overrides, message", [
    ("bart", ['tokenizer.special_tokens=["<s>", "<pad>", "</s>"]'], "needs a mask token"),
    ("t5", ["tokenizer.sentinels=0"], "needs sentinel tokens"),
    ("t5", ["tokenizer.sentinels=2"], "only 2 sentinels"),
    ("t5", ["train.seq_len=2"], "at least 3 tokens"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, recipe, overrides, message):
    run_dir = tmp_path / "run"
    r = lmforge("pretrain", ROOT / "configs" / "tiny" / f"{recipe}.yaml", f"run_dir={run_dir}",
                "data.max_chars=20000", "tokenizer.vocab_size=300", "train.progress=false",
                *overrides)
    one_line_error(r, message)
    assert not run_dir.exists()
