"""A run directory, read back: its config, tokenizer and a checkpoint's weights.

    RUN_DIR/
      config.yaml            the fully resolved RunConfig (reruns the run as it stands)
      tokenizer.json         HF-compatible byte-level BPE (WordPiece for BERT checkpoints)
      checkpoints/step-N/    model.safetensors + state.pt + meta.json
      metrics.jsonl, events.out.tfevents.*, *.png

`lmforge generate`, `eval` and `convert --to-hf` start here; `convert --from-hf`
writes one (`write_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import dump_yaml
from .errors import CheckpointError, ConfigError
from .training.checkpoint import print_stderr
from .training.config import RunConfig


@dataclass
class Run:
    path: Path
    config: RunConfig
    model: nn.Module
    tokenizer: object
    checkpoint: Path


def find_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    """Checkpoint `step` of `run_dir` (default: the newest), its weights verified: a
    damaged file raises CheckpointError naming it (no silent fallback to an older one)."""
    from .training.checkpoint import SHARDED, WEIGHTS, list_checkpoints, step_dirs, verify

    ckpts = Path(run_dir) / "checkpoints"
    found = step_dirs(ckpts)
    if step is None:
        if not found:
            raise CheckpointError(f"{run_dir} has no complete checkpoint (checkpoints/step-N)")
        path = found[-1][1]
    else:
        path = dict(found).get(step)
        if path is None:
            steps = ", ".join(str(s) for s, _ in list_checkpoints(ckpts)) or "none"
            raise CheckpointError(
                f"{run_dir} has no complete checkpoint step-{step} (have: {steps})")
    verify(path, None if (path / SHARDED).is_dir() else [WEIGHTS])  # FSDP: every shard
    return path


def is_run_dir(folder: str | Path) -> bool:
    """Has `folder` been trained in (checkpoints/ or metrics.jsonl)?"""
    folder = Path(folder)
    return (folder / "checkpoints").is_dir() or (folder / "metrics.jsonl").is_file()


def load_run_config(path: str | Path, cls=RunConfig, overrides: list[str] = (),
                    say=print_stderr):
    """`load_config` for a recipe or a run's own RUN_DIR/config.yaml.

    A run dir's config refers to that run dir: when RUN_DIR/config.yaml names another
    run_dir (the run was copied or moved), its own folder is used instead, for run_dir and
    every path under the old one (tokenizer.path, data.shards), and `say` is told so.
    Otherwise `lmforge pretrain COPY/config.yaml --resume` would continue the original.
    Overrides (run_dir=NEW) apply after this.
    """
    from .config import apply_overrides, from_dict, read_yaml

    data = read_yaml(path)
    folder = Path(path).parent
    named = data.get("run_dir") if isinstance(data, dict) else None
    if (isinstance(named, str) and is_run_dir(folder)
            and Path(named).resolve() != folder.resolve()):
        old = named.rstrip("/") or "/"

        def rebase(v):
            if isinstance(v, dict):
                return {k: rebase(x) for k, x in v.items()}
            if isinstance(v, list):
                return [rebase(x) for x in v]
            if isinstance(v, str) and (v.rstrip("/") == old or v.startswith(old + "/")):
                return str(folder / v[len(old):].lstrip("/"))
            return v

        data = rebase(data)
        if not any(o.split("=", 1)[0].strip() == "run_dir" for o in overrides):
            say(f"lmforge: {path} names run_dir {named}, another folder: using the run "
                f"dir it is in, {folder} (a copied or moved run)")
    return from_dict(cls, apply_overrides(data, list(overrides)))


def load_run(run_dir: str | Path, step: int | None = None, device: str = "cpu") -> Run:
    """The model of `run_dir` (latest complete checkpoint, or `step`), in eval mode."""
    from .models import ModelConfig, build
    from .tokenizer import Tokenizer
    from .training.checkpoint import load_weights

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_run_config(run_dir / "config.yaml", say=lambda _: None)  # a copy: itself
    ckpt = find_checkpoint(run_dir, step)
    if "preset" in cfg.model:
        raise ConfigError(f"{run_dir}/config.yaml: model section is not resolved (has a preset)")
    model = build(ModelConfig.from_dict(cfg.model))
    load_weights(ckpt, model)
    tok_file = run_dir / "tokenizer.json"
    tokenizer = Tokenizer.load(tok_file)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{tok_file} has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}"
        )
    model.to(device).eval()
    return Run(run_dir, cfg, model, tokenizer, ckpt)


def write_run(model: nn.Module, tokenizer, run_dir: str | Path, source: str = "") -> Path:
    """A run directory holding `model` as checkpoint step-0 (used by convert --from-hf)."""
    from .atomic import atomic_dir
    from .training.checkpoint import save_checkpoint

    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CheckpointError(f"{run_dir} exists and is not empty; choose a new folder")
    with atomic_dir(run_dir) as tmp:
        cfg = RunConfig(run_dir=str(run_dir), model=model.config.to_dict())
        cfg.tokenizer.path = str(run_dir / "tokenizer.json")
        cfg.tokenizer.vocab_size = tokenizer.vocab_size
        dump_yaml(cfg, tmp / "config.yaml")
        tokenizer.save(tmp / "tokenizer.json")
        save_checkpoint(tmp / "checkpoints", 0, model, state={"step": 0},
                        meta={"model_config": model.config.to_dict(),
                              "tokenizer_hash": tokenizer.fingerprint, "source": source})
    return run_dir


@torch.no_grad()
def perplexity(model: nn.Module, ids: list[int], seq_len: int, stride: int | None = None,
               batch_size: int = 8) -> dict:
    """Mean negative log-likelihood per token and perplexity exp(NLL) of a token stream.

    Windows of `seq_len` tokens step by `stride` (default: seq_len, no overlap); with a
    smaller stride each window scores only its last `stride` tokens, which then see up to
    seq_len - stride tokens of context (the sliding-window evaluation of HF's docs).
    """
    import math

    stride = stride or seq_len
    if len(ids) < 2:
        raise ConfigError("the evaluation text is too short: it needs at least 2 tokens")
    device = next(model.parameters()).device
    x = torch.tensor(ids, dtype=torch.long)
    windows = []  # (start, end, first scored target index within the window)
    prev_end = 0
    for start in range(0, len(ids) - 1, stride):
        end = min(start + seq_len, len(ids) - 1)
        windows.append((start, end, prev_end - start))
        prev_end = end
        if end == len(ids) - 1:
            break
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        width = max(e - s for s, e, _ in group)
        inp = torch.zeros(len(group), width, dtype=torch.long)
        tgt = torch.full((len(group), width), -100, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, (s, e, first) in enumerate(group):
            inp[row, : e - s] = x[s:e]
            mask[row, : e - s] = 1
            tgt[row, first : e - s] = x[s + 1 + first : e + 1]
        logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits
        loss = nn.functional.cross_entropy(
            logits.float().flatten(0, 1), tgt.to(device).flatten(), ignore_index=-100,
            reduction="sum",
        )
        nll += loss.item()
        count += int((tgt != -100).sum())
    mean = nll / count
    return {"tokens": count, "nll": mean, "ppl": math.exp(mean)}


def objective_eval(run: Run, ids: list[int], seq_len: int, batch_size: int = 8,
                   max_batches: int | None = None) -> dict:
    """The run's own pretraining objective on a token stream: loss and its statistics.

    For models whose objective is not next-token prediction (MLM, ELECTRA, BART, T5):
    the stream is cut into the objective's windows and corrupted with draw=None (the
    same masks every time), as the trainer's evals are. Returns {"tokens", "loss",
    "ppl" (when the loss is a perplexity's log), and the objective's other statistics}.
    """
    import numpy as np

    from .data import eval_batches
    from .objectives import build
    from .training.trainer import evaluate

    objective = build(run.config.objective, tokenizer=run.tokenizer,
                      model_config=run.model.config, seed=run.config.seed)
    model = objective.eval_model(run) if hasattr(objective, "eval_model") else run.model
    step = objective.window_len(seq_len) - 1
    arrays = [np.asarray(ids, dtype=np.int64)]
    if len(ids) < step + 1:
        raise ConfigError(f"the evaluation text is too short: {len(ids)} tokens, the "
                          f"objective needs windows of {step + 1}")
    device = next(model.parameters()).device
    stats = evaluate(objective, model, eval_batches(arrays, step, batch_size, max_batches),
                     device)
    out = {"tokens": stats.pop("val_tokens"), "loss": stats.pop("val_loss")}
    out.update({k.removeprefix("val_"): v for k, v in stats.items()})
    return out
