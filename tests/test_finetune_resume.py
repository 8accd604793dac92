"""Fine-tuning resumes exactly: a run killed with SIGKILL mid-epoch and resumed with
--resume keeps the same best checkpoint (bitwise) and scores as an uninterrupted run,
because it runs on the same engine as pretraining (one checkpoint of the whole state per
epoch: weights, optimizer, RNG, the row sampler's position, the keep-best state)."""

from pathlib import Path

import pytest

from lmforge.config import dump_yaml, load_config
from lmforge.errors import CheckpointError
from lmforge.finetune import FinetuneConfig, finetune
from lmforge.training.logs import read_metrics


def args(run_dir, tok_file) -> list[str]:
    # 32 rows / batch 8 = 4 steps an epoch, 4 epochs; dropout on, so RNG state matters
    return [f"run_dir={run_dir}", f"tokenizer={tok_file}", "model.preset=tiny-bert",
            "model.dropout=0.1", "max_train_examples=32", "max_eval_examples=24",
            "epochs=4", "patience=0", "train.batch_size=8", "train.lr=2e-3",
            "train.threads=1", "train.progress=false", "train.tensorboard=false"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tok_file, tmp_path, launch):
    straight = finetune(load_config(None, FinetuneConfig, args(tmp_path / "a", tok_file)))

    run = tmp_path / "b"
    dump_yaml(load_config(None, FinetuneConfig, args(run, tok_file)), tmp_path / "b.yaml")
    # killed in epoch 2, after epoch 1's checkpoint (step 4)
    launch("finetune", str(tmp_path / "b.yaml"), slow=True, kill_at=(run, 6))
    assert (run / "checkpoints" / "step-4").is_dir()
    assert not (run / "results.json").exists()
    with pytest.raises(CheckpointError, match="already holds a run"):
        finetune(load_config(None, FinetuneConfig, args(run, tok_file)))

    resumed = finetune(load_config(None, FinetuneConfig, args(run, tok_file)), resume=True)

    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["val"] == straight["val"] and resumed["test"] == straight["test"]
    best_a = Path(straight["checkpoint"]) / "model.safetensors"
    best_b = Path(resumed["checkpoint"]) / "model.safetensors"
    assert best_a.relative_to(tmp_path / "a") == best_b.relative_to(run)
    assert best_a.read_bytes() == best_b.read_bytes()
    last = "checkpoints/step-16/model.safetensors"
    assert (tmp_path / "a" / last).read_bytes() == (run / last).read_bytes()
    evals = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["event"] == "eval"]
    assert evals == [4, 8, 12, 16]  # epoch 2's records were not written twice


def test_resume_of_a_finished_run_trains_no_further(tok_file, tmp_path):
    first = finetune(load_config(None, FinetuneConfig, args(tmp_path / "r", tok_file)))
    again = finetune(load_config(None, FinetuneConfig, args(tmp_path / "r", tok_file)),
                     resume=True)
    assert again["step"] == first["step"] == 16
    assert again["test"] == first["test"]
