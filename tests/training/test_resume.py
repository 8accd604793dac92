"""Exact resume: a run killed with SIGKILL and resumed ends bitwise where a straight run
ends; and the ways a resume can go wrong fail with one clear message."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.config import dump_yaml, from_dict, to_dict
from lmforge.data import ChunkSampler
from lmforge.errors import CheckpointError
from lmforge.models import build, presets
from lmforge.objectives import CausalLM
from lmforge.pretrain import pretrain
from lmforge.training import RunConfig, TrainConfig, Trainer
from lmforge.training.logs import read_metrics

REPO = Path(__file__).resolve().parents[2]


def run_config(run_dir, **train) -> RunConfig:
    return from_dict(RunConfig, {
        "run_dir": str(run_dir),
        "seed": 11,
        "data": {"corpus": "shakespeare", "max_chars": 60_000, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 384},
        "model": {"preset": "tiny-gpt2", "max_seq_len": 32, "dropout": 0.1},
        "train": {"batch_size": 4, "seq_len": 32, "max_steps": 40, "lr": 3e-3,
                  "warmup_steps": 4, "eval_every": 20, "eval_batches": 2, "save_every": 20,
                  "log_every": 5, "threads": 1, "progress": False, "peak_flops": 1e11,
                  **train},
    })


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    cfg = run_config(tmp_path_factory.mktemp("straight") / "run")
    return cfg, pretrain(cfg)


# A real process, slowed by a global forward hook (0.002 s per module call) so that it
# is still training when the test kills it; the hook does not touch any value.
DRIVER = """
import sys, time
from torch.nn.modules.module import register_module_forward_hook
register_module_forward_hook(lambda m, a, o: time.sleep(0.002) if m.training else None)
from lmforge.pretrain import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_run_then_resume_is_bitwise_equal_to_a_straight_run(straight, tmp_path):
    cfg_a, summary_a = straight
    cfg = run_config(tmp_path / "run")
    dump_yaml(cfg, tmp_path / "run.yaml")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "run.yaml")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"

    def steps_done():
        return max((r["step"] for r in read_metrics(metrics)), default=0)

    deadline = time.monotonic() + 120
    while steps_done() < 25:  # past the step-20 checkpoint, mid-way to step 40
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never reached step 25"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "checkpoints" / "step-20" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoints" / "step-40").exists()

    summary = pretrain(cfg, resume=True)

    a = (Path(cfg_a.run_dir) / "checkpoints" / "step-40" / "model.safetensors").read_bytes()
    b = (tmp_path / "run" / "checkpoints" / "step-40" / "model.safetensors").read_bytes()
    assert a == b
    assert summary["val_loss"] == summary_a["val_loss"]
    assert summary["final_loss"] == summary_a["final_loss"]
    assert summary["tokens"] == summary_a["tokens"] == 40 * 4 * 32
    # the records of the steps re-run after the checkpoint are not duplicated
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if r["event"] == "train"]
    assert steps == list(range(5, 41, 5))


def test_trainer_state_restores_optimizer_rng_and_data_position(tmp_path):
    data = (np.arange(8000) * 7 % 251).astype(np.uint16)
    cfg = TrainConfig(batch_size=2, seq_len=16, max_steps=8, lr=1e-2, warmup_steps=2,
                      save_every=4, eval_every=0, log_every=2, progress=False,
                      tensorboard=False, device="cpu", peak_flops=1e11)

    def trainer(run_dir):
        torch.manual_seed(0)
        return Trainer(build(presets.get("tiny-gpt2", dropout=0.2)), CausalLM(), cfg, run_dir)

    straight = trainer(tmp_path / "a")
    straight.fit(ChunkSampler([data], 16, 2, seed=3))
    first = trainer(tmp_path / "b")
    first.cfg = TrainConfig(**{**to_dict(cfg), "max_steps": 4})  # stop at the checkpoint
    first.fit(ChunkSampler([data], 16, 2, seed=3))
    torch.manual_seed(123)  # a different RNG state: resume must restore the saved one
    np.random.seed(123)
    resumed = trainer(tmp_path / "b")
    resumed.fit(ChunkSampler([data], 16, 2, seed=3), resume=True)
    assert resumed.step == 8
    for (n, p), (_, q) in zip(straight.model.named_parameters(),
                              resumed.model.named_parameters()):
        assert torch.equal(p, q), n


def test_resume_with_nothing_to_resume_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume: no complete checkpoint"):
        pretrain(run_config(tmp_path / "empty"), resume=True)
    assert not (tmp_path / "empty").exists()


def test_a_fresh_run_never_overwrites_a_finished_one(straight):
    cfg, _ = straight
    with pytest.raises(CheckpointError, match=r"already holds a run \(step-40\).*--resume"):
        pretrain(cfg)


@pytest.mark.parametrize("change,key", [("n_layer", "n_layer"), ("vocab_size", "vocab_size")])
def test_resume_with_another_model_is_refused_before_anything_is_written(straight, change, key):
    cfg, _ = straight
    run_dir = Path(cfg.run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    other = to_dict(cfg)
    other["model"][change] = {"n_layer": 3, "vocab_size": 512}[change]
    with pytest.raises(CheckpointError, match=f"another model.*{key}"):
        pretrain(from_dict(RunConfig, other), resume=True)
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_resume_keeps_optimizer_moments_but_takes_the_new_lr(tmp_path):
    data = (np.arange(4000) * 3 % 200).astype(np.uint16)
    cfg = TrainConfig(batch_size=2, seq_len=16, max_steps=2, lr=1e-2, warmup_steps=0,
                      schedule="constant", eval_every=0, progress=False, tensorboard=False,
                      device="cpu", peak_flops=1e11)
    first = Trainer(build(presets.get("tiny-gpt2")), CausalLM(), cfg, tmp_path)
    first.fit(ChunkSampler([data], 16, 2, seed=0))
    longer = TrainConfig(**{**to_dict(cfg), "max_steps": 3, "lr": 5e-3})
    resumed = Trainer(build(presets.get("tiny-gpt2")), CausalLM(), longer, tmp_path)
    resumed.fit(ChunkSampler([data], 16, 2, seed=0), resume=True)
    (opt,) = resumed.optimizers
    assert all(g["base_lr"] == 5e-3 and g["lr"] == 5e-3 for g in opt.param_groups)
    # AdamW's step counters went on from the checkpoint's 2
    assert all(int(s["step"]) == 3 for s in opt.state.values())
