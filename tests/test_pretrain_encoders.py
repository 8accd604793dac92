"""Encoder pretraining end to end (MLM + NSP, ELECTRA) on a slice of Shakespeare: the run
dir, exact resume with the generator saved apart, `lmforge eval` against the trainer's own
eval, and bad input through the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lmforge.cli import main as cli
from lmforge.config import load_config
from lmforge.pretrain import pretrain
from lmforge.runs import load_run
from lmforge.training.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.max_chars=60000", "tokenizer.vocab_size=400", "train.batch_size=8",
         "train.seq_len=32", "train.warmup_steps=2", "train.log_every=2", "train.threads=1",
         "train.progress=false", "train.tensorboard=false"]


def config(name, run_dir, *overrides):
    return load_config(ROOT / "configs" / "tiny" / f"{name}.yaml", RunConfig,
                       [f"run_dir={run_dir}", *SMALL, *overrides])


def cli_json(capsys, *args):
    capsys.readouterr()
    assert cli([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def electra(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("electra") / "run"
    cfg = config("electra", run_dir, "train.max_steps=6", "train.save_every=3",
                 "train.eval_every=0", "train.eval_batches=2", "train.keep_last=null")
    return cfg, pretrain(cfg)


def test_electra_resume_is_exact_for_both_models(electra, tmp_path):
    cfg, summary = electra
    run_dir = Path(cfg.run_dir)
    step3, step6 = run_dir / "checkpoints" / "step-3", run_dir / "checkpoints" / "step-6"
    # the discriminator alone is the model; the generator is saved beside it
    disc = load_file(step6 / "model.safetensors")
    gen = load_file(step6 / "generator.safetensors")
    assert "rtd_head.out.weight" in disc and not any(k.startswith("generator") for k in disc)
    assert "mlm_head.dense.weight" in gen
    # resume from step 3 in a copy of the run: step 6 comes out bit for bit the same
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "step-6")
    resumed = config("electra", copy, "train.max_steps=6", "train.save_every=3",
                     "train.eval_every=0", "train.eval_batches=2", "train.keep_last=null",
                     f"data.shards={copy / 'shards'}")
    again = pretrain(resumed, resume=True)
    for name in ("model.safetensors", "generator.safetensors"):
        a, b = load_file(step6 / name), load_file(copy / "checkpoints" / "step-6" / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
    assert again["val_acc"] == summary["val_acc"] and step3.is_dir()
    assert summary["flops_per_token"] > 0


def test_electra_run_loads_as_its_discriminator_and_evals_rtd(electra, capsys):
    cfg, summary = electra
    run = load_run(cfg.run_dir)
    assert run.model.config.encoder_head == "rtd" and run.model.rtd_head is not None
    for key in ("val_acc", "val_replaced_acc", "val_original_acc", "val_gen_acc",
                "val_rtd_loss"):
        assert 0 <= summary[key] < float("inf"), key
    assert 0.5 < summary["val_acc"] <= 1  # most tokens are not replaced
    # the same windows as the trainer's eval: the CLI reports the same RTD accuracy
    step = 32 - 2 - 1  # windows of seq_len - 2 tokens, cut every 29
    out = cli_json(capsys, "eval", cfg.run_dir, "--max-tokens", 2 * 8 * step + 1)
    assert out["objective"] == "electra"
    assert out["acc"] == pytest.approx(summary["val_acc"], rel=1e-9)
    assert out["gen_acc"] == pytest.approx(summary["val_gen_acc"], rel=1e-9)
    gen_file = run.checkpoint / "generator.safetensors"
    gen_file.rename(gen_file.with_suffix(".moved"))
    try:
        assert cli(["eval", str(cfg.run_dir)]) == 2
        assert "generator.safetensors" in capsys.readouterr().err
    finally:
        gen_file.with_suffix(".moved").rename(gen_file)


def test_bert_eval_reports_the_trainers_masked_token_accuracy(tmp_path, capsys):
    run_dir = tmp_path / "bert"
    cfg = config("bert", run_dir, "train.max_steps=8", "train.save_every=8",
                 "train.eval_every=0", "train.eval_batches=1000")  # the whole val split
    summary = pretrain(cfg)
    assert {"val_loss", "val_acc", "val_nsp_acc", "val_nsp_loss"} <= set(summary)
    assert "val_ppl" not in summary  # MLM loss is no perplexity
    out = cli_json(capsys, "eval", run_dir)
    assert out["objective"] == "mlm"
    assert out["acc"] == pytest.approx(summary["val_acc"], rel=1e-9)
    assert out["loss"] == pytest.approx(summary["val_loss"], rel=1e-6)
    assert out["nsp_acc"] == pytest.approx(summary["val_nsp_acc"], rel=1e-9)


def lmforge(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("recipe,override,fragment", [
    ("bert", 'tokenizer.special_tokens=["<|endoftext|>", "[PAD]"]', "[MASK], [CLS], [SEP]"),
    ("roberta", "objective.mask_prob=1.5", "objective.mask_prob"),
    ("albert", "train.seq_len=4", "train.seq_len"),
    ("electra", "objective.generator_size=0", "objective.generator_size"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, recipe, override, fragment):
    run_dir = tmp_path / "run"
    r = lmforge("pretrain", ROOT / "configs" / "tiny" / f"{recipe}.yaml", f"run_dir={run_dir}",
                "data.max_chars=20000", "tokenizer.vocab_size=300", "train.progress=false",
                override)
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == [r.stderr.strip().splitlines()[-1]], r.stderr  # one line, the last
    assert errors[0].startswith("lmforge: error: ") and fragment in errors[0], r.stderr
    assert not run_dir.exists()
