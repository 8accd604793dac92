"""The fine-tuning recipe: `lmforge finetune CONFIG [key=value ...] [--resume]`.

One visible function, read top to bottom (lecture: "Fine-tuning" -- a pretrained body,
a small new head, a few epochs at a small learning rate, model selection on val):

    1. the task: a built-in set (`task: rotten-tomatoes`) or your files (`data:`)
    2. the body (bodies.py): `init_from` an lmforge run dir or a Hugging Face checkpoint
       dir (its tokenizer.json comes along), or `model: {preset: ...}` + `tokenizer` from
       scratch
    3. the mode (tasks/modes.py; default by task type): checks every row, builds the head
    4. RUN_DIR/config.yaml, resolved (model config, tokenizer path, labels, mode), so that
       `lmforge eval RUN_DIR` rebuilds the model and `lmforge finetune RUN_DIR/config.yaml
       run_dir=NEW` reruns the run (with `init_from` as it was)
    5. the engine (training/trainer.py), as pretraining uses it: epochs of shuffled row
       batches (data/rows.py), the task's metrics on val after each epoch
       (tasks/evaluator.py), the best epoch's weights kept in RUN_DIR/best, early stopping
       after `patience` epochs without a better main metric, a checkpoint of the whole
       state after each epoch (exact resume with --resume), one process or many (torchrun)
    6. the best weights are scored on val and test: results.json, read by `lmforge report`

Bad input (a config key, a label outside the label set, an empty text, a pair with one
side missing, a checkpoint whose vocabulary does not fit the tokenizer) raises an
LmforgeError naming the file / row before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .atomic import write_text
from .bodies import Source, body_config, check_vocab, load_body, read_source
from .config import dump_yaml, load_config, read_yaml
from .errors import CheckpointError, ConfigError, DataError
from .peft.config import PeftConfig
from .report import RESULTS
from .training.config import TrainConfig
from .training.distributed import DistributedConfig


@dataclass
class FinetuneTrain(TrainConfig):
    """TrainConfig with fine-tuning defaults (BERT's: AdamW, linear decay, small lr).

    `max_steps` and `seq_len` are set by the recipe (epochs x batches, max_len)."""

    batch_size: int = 32
    lr: float = 5e-5
    min_lr: float = 0.0
    warmup_steps: int = 0  # see FinetuneConfig.warmup_frac
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "linear"
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eval_every: int = 0
    save_every: int = 0
    tensorboard: bool = False


@dataclass
class TaskData:
    """Your own task files (tasks.user.from_files); `type` set means "use these"."""

    type: str | None = None  # classification | pair-classification | regression | tagging | qa ...
    train: str | None = None
    val: str | None = None  # missing val / test are carved out of train (10% each)
    test: str | None = None
    text_field: str = "text"
    text_pair_field: str = "text_pair"
    label_field: str = "label"
    target_field: str = "target"
    tokens_field: str = "tokens"
    tags_field: str = "tags"
    messages_field: str = "messages"
    question_field: str = "question"
    context_field: str = "context"
    answers_field: str = "answers"
    labels: list[str] | None = None  # class / tag names; default: from the train file
    metrics: list[str] | None = None
    main_metric: str | None = None


@dataclass
class FinetuneConfig:
    run_dir: str = "runs/finetune"
    seed: int = 0
    name: str | None = None  # the model's row name in `lmforge report` (default: derived)
    task: str = "rotten-tomatoes"  # a built-in task, or the name of your files' task
    data: TaskData = field(default_factory=TaskData)
    init_from: str | None = None  # lmforge run dir, HF checkpoint dir or "minilm"; null = scratch
    tokenizer: str | None = None  # tokenizer.json or "minilm" (scratch; or to check init_from)
    model: dict = field(default_factory=dict)  # scratch: {preset: ..., ...}; else dropout
    mode: str | None = None  # tasks/modes.py; null = the task type's default
    options: dict = field(default_factory=dict)  # mode options (e.g. classifier_dropout)
    max_len: int = 128  # tokens per example (cut as the mode documents)
    epochs: int = 3
    patience: int = 2  # stop after this many epochs without a better val main metric (0 = never)
    warmup_frac: float = 0.1  # warmup steps = warmup_frac x total steps
    eval_batch_size: int = 64
    max_train_examples: int | None = None  # first N shuffled train rows (quick runs)
    max_eval_examples: int | None = None  # first N val / test rows
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # parameter-efficient fine-tuning (docs/peft.md): method null = every weight trains
    peft: PeftConfig = field(default_factory=PeftConfig)

    def __post_init__(self):
        for key in ("max_len", "epochs", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}': expected an integer >= 1, "
                                  f"got {getattr(self, key)!r}")
        if self.patience < 0:
            raise ConfigError(f"config key 'patience': expected an integer >= 0, "
                              f"got {self.patience!r}")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"config key 'warmup_frac': expected a number in [0, 1), "
                              f"got {self.warmup_frac!r}")
        for key in ("max_train_examples", "max_eval_examples"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"config key '{key}': expected an integer >= 1 or null, "
                                  f"got {v!r}")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- 1. the task --------------------------------------------------------------------------

def resolve_task(cfg: FinetuneConfig):
    """(Task, {"train", "val", "test"} rows) of the config."""
    from .tasks import from_files, get_task, load_task

    d = cfg.data
    if d.type is None:
        return get_task(cfg.task), load_task(cfg.task, cfg.seed)
    if d.train is None:
        raise ConfigError("config key 'data.train': your task's train file is required")
    return from_files(
        d.type, d.train, d.val, d.test, name=cfg.task, text_field=d.text_field,
        text_pair_field=d.text_pair_field, label_field=d.label_field,
        target_field=d.target_field, tokens_field=d.tokens_field, tags_field=d.tags_field,
        messages_field=d.messages_field, question_field=d.question_field,
        context_field=d.context_field, answers_field=d.answers_field, labels=d.labels,
        metrics=d.metrics, main_metric=d.main_metric, seed=cfg.seed)


def _where(cfg: FinetuneConfig, split: str) -> str:
    files = {"train": cfg.data.train, "val": cfg.data.val, "test": cfg.data.test}
    if cfg.data.type is not None and files[split]:
        return f"{files[split]} ({split} split)"
    return f"task {cfg.task}, {split} split"


# -- 5. the recipe -------------------------------------------------------------------------

def default_name(cfg: FinetuneConfig) -> str:
    if cfg.name:
        return cfg.name
    method = f" + {cfg.peft.method}" if cfg.peft.method else ""  # a row of its own in report
    if cfg.init_from:
        return Path(cfg.init_from).name + method
    return str(cfg.model.get("preset") or cfg.model.get("family") or "model") + " (scratch)" \
        + method


@dataclass
class Setup:
    """What a fine-tuning config resolves to before anything is written."""

    task: Any
    splits: dict
    source: Source
    mode_name: str
    model_config: Any
    mode: Any
    peft: PeftConfig = field(default_factory=PeftConfig)


ADAPTER = "adapter.safetensors"  # RUN_DIR/adapter.safetensors: the PEFT run's trained tensors


def setup(cfg: FinetuneConfig) -> Setup:
    """Task, body and mode of `cfg`, every check done (ConfigError / CheckpointError)."""
    from .tasks.modes import check_body, default_mode, get_mode

    task, splits = resolve_task(cfg)
    source = read_source(cfg)
    check_body(task.type, source.model_config.arch)
    mode_name = cfg.mode or default_mode(task.type, source.model_config.arch)
    mode_cls = get_mode(mode_name)
    model_cfg = body_config(source, cfg, getattr(mode_cls, "keeps_lm_head", False))
    check_vocab(source, model_cfg)
    if cfg.max_len > model_cfg.max_seq_len:
        raise ConfigError(f"config key 'max_len': {cfg.max_len} is longer than the model's "
                          f"context (max_seq_len = {model_cfg.max_seq_len})")
    mode = mode_cls.from_config(cfg, task, source.tokenizer, model_cfg)
    s = Setup(task, splits, source, mode_name, model_cfg, mode, cfg.peft)
    if cfg.peft.method is not None:  # targets, ranks, prompt length: checked on a meta model
        from .models import build
        from .peft import prompts

        with torch.device("meta"):
            try:
                model = s.mode.build_model(build(model_cfg))
            except NotImplementedError:  # a mode that reads values (chat's grown rows):
                model = build(model_cfg)  # the body alone; modules_to_save checked later
                cfg_peft = dataclasses.replace(cfg.peft, modules_to_save=None)
            else:
                cfg_peft = cfg.peft
            model = _apply_peft(model, cfg_peft)
        prompts.check_length(model, cfg.max_len)
    return s


def _apply_peft(model: nn.Module, peft: PeftConfig) -> nn.Module:
    """The PEFT method on the whole task model: the head stays trainable (peft's
    modules_to_save), the body freezes but for the method's new parameters."""
    from . import peft as peft_lib

    return peft_lib.apply(model, peft) if peft.method is not None else model


def build_model(s: Setup, seed: int) -> nn.Module:
    """The body (random init from `seed`, then the pretrained weights) with the mode's
    head or changes on it, then the PEFT method (`peft:`), if any."""
    from .models import build

    torch.manual_seed(seed)
    body = build(s.model_config)
    if s.source.state is not None:
        load_body(body, s.source.state, s.source.what)
    return _apply_peft(s.mode.build_model(body), s.peft)


def split_rows(cfg: FinetuneConfig, s: Setup) -> dict[str, list]:
    """The rows each split uses (train: the first max_train_examples of a seeded
    shuffle), every row checked."""
    train = list(s.splits["train"])
    random.Random(cfg.seed).shuffle(train)
    rows = {"train": train[:cfg.max_train_examples],
            "val": s.splits["val"][:cfg.max_eval_examples],
            "test": s.splits["test"][:cfg.max_eval_examples]}
    for split, part in rows.items():
        s.mode.check(part, _where(cfg, split))
    return rows


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict:
    """Fine-tune as `cfg` says (or resume its run); return the summary (best epoch, val
    and test metrics)."""
    from .training.distributed import init as init_distributed
    from .training.trainer import check_run_dir_state, main_first

    check_run_dir_state(Path(cfg.run_dir), resume)

    # 1-3. task, body, mode: every check before anything is written
    s = setup(cfg)
    rows = split_rows(cfg, s)
    with init_distributed(cfg.distributed, cfg.train.device) as dist:
        cfg.distributed.global_batch(cfg.train.batch_size, dist.world_size,
                                     cfg.train.grad_accum)
        main_first(dist, lambda: write_run_dir(cfg, s) if dist.is_main else None)
        return _train(cfg, s, rows, dist, resume)


def write_run_dir(cfg: FinetuneConfig, s: Setup) -> None:
    """4. RUN_DIR: the tokenizer and the resolved config.yaml."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    s.source.tokenizer.save(run_dir / "tokenizer.json")
    dump_yaml(resolved_config(cfg, s), run_dir / "config.yaml")


def resolved_config(cfg: FinetuneConfig, s: Setup) -> FinetuneConfig:
    data = dataclasses.replace(cfg.data, labels=list(s.task.labels) or cfg.data.labels)
    return dataclasses.replace(cfg, name=default_name(cfg), model=s.model_config.to_dict(),
                               tokenizer=str(Path(cfg.run_dir) / "tokenizer.json"),
                               mode=s.mode_name, data=data)


def _train(cfg: FinetuneConfig, s: Setup, rows: dict, dist, resume: bool) -> dict:
    """5-6: the engine, then the best weights scored on val and test (rank 0)."""
    from .data.rows import RowSampler
    from .peft import count_trainable
    from .tasks import greater_is_better
    from .tasks.evaluator import TaskEvaluator, score
    from .training.checkpoint import load_weights
    from .training.trainer import KeepBest, Trainer, full_model, torch_threads

    run_dir = Path(cfg.run_dir)
    task, source, model_cfg, mode = s.task, s.source, s.model_config, s.mode
    # 5. the engine: an epoch of batches per evaluation, the best epoch kept
    sampler = RowSampler(rows["train"], cfg.train.batch_size, seed=cfg.seed, rank=dist.rank,
                         world_size=dist.world_size)
    per_epoch = sampler.steps_per_epoch(cfg.train.grad_accum)
    total = per_epoch * cfg.epochs
    train = dataclasses.replace(
        cfg.train, max_steps=total, seq_len=cfg.max_len, eval_every=per_epoch,
        save_every=per_epoch, keep_last=1,
        warmup_steps=cfg.train.warmup_steps or round(cfg.warmup_frac * total))
    metric = task.main_metric
    keep_best = KeepBest(metric, greater_is_better(metric), cfg.patience)
    with torch_threads(train.threads):
        model = build_model(s, cfg.seed)
        trainer = Trainer(model, mode, train, run_dir, model_config=model_cfg.to_dict(),
                          meta={"tokenizer_hash": source.tokenizer.fingerprint,
                                "task": task.name, "mode": s.mode_name, "finetune": True},
                          dist=dist)
        trainable, n_params = count_trainable(model)
        if dist.is_main:
            what = "" if s.peft.method is None else \
                f" ({s.peft.method}: {trainable:,} trainable, {100 * trainable / n_params:.2f}%)"
            _say(f"{run_dir}: {task.name} ({task.type}, mode {s.mode_name}) on {source.what}, "
                 f"{n_params / 1e6:.2f}M parameters{what}, {len(rows['train'])} train rows, "
                 f"{cfg.epochs} epochs x {per_epoch} steps of {sampler.global_batch} x "
                 f"{train.grad_accum} rows ({dist.world_size} process"
                 f"{'es' if dist.world_size > 1 else ''}, strategy {dist.strategy})")
        fit = trainer.fit(sampler, TaskEvaluator(mode, rows["val"]), keep_best, resume=resume,
                          steps_per_epoch=per_epoch)
        if fit.get("best_checkpoint") is None:
            raise DataError(f"val {metric} was never finite: no checkpoint kept")

        # 6. the best weights, scored on val and test (rank 0)
        model = full_model(trainer, lambda: build_model(s, cfg.seed))
        summary = {}
        if dist.is_main:
            load_weights(fit["best_checkpoint"], model)
            summary = {
                "event": "summary", "task": task.name, "type": task.type,
                "mode": s.mode_name, "model": default_name(cfg), "arch": model_cfg.arch,
                "init_from": cfg.init_from, "main_metric": metric,
                "best_epoch": fit["best_epoch"],
                "epochs_run": math.ceil(trainer.step / per_epoch),
                "stopped_early": fit["stopped_early"], "step": trainer.step,
                "val": score(mode, model, rows["val"]), "test": score(mode, model, rows["test"]),
                "checkpoint": fit["best_checkpoint"], "train_time_s": fit["train_time_s"],
                "world_size": dist.world_size, "run_dir": str(run_dir),
                "trainable_params": trainable, "total_params": n_params,
                "trainable_pct": round(100 * trainable / n_params, 4),
            }
            if s.peft.method is not None:
                summary["peft"] = {"method": s.peft.method, **write_adapter(model, run_dir)}
            write_text(run_dir / RESULTS, json.dumps(summary, indent=2) + "\n")
        dist.barrier()
    return summary


def write_adapter(model: nn.Module, run_dir: Path) -> dict:
    """RUN_DIR/adapter.safetensors: the tensors a PEFT run trained (adapter + head), the
    small file to ship beside the base; written whole or not at all."""
    from safetensors.torch import save_file

    from .atomic import atomic_path
    from .peft import trainable_state_dict

    path = run_dir / ADAPTER
    state = {k: v.detach().cpu().contiguous() for k, v in trainable_state_dict(model).items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return {"adapter": str(path), "adapter_bytes": path.stat().st_size}


# -- a fine-tuned run, read back ------------------------------------------------------------

@dataclass
class FinetunedRun:
    path: Path
    config: FinetuneConfig
    task: object
    mode: object
    model: nn.Module
    tokenizer: object
    checkpoint: Path


def best_checkpoint(run_dir: str | Path) -> Path:
    """The kept best weights of a fine-tuned run (RUN_DIR/best/step-N)."""
    from .training.checkpoint import latest_checkpoint
    from .training.trainer import BEST

    path = latest_checkpoint(Path(run_dir) / BEST)
    if path is None:
        raise CheckpointError(f"{run_dir} has no kept best checkpoint ({BEST}/step-N): "
                              "the run has not finished an epoch")
    return path


def is_finetuned(run_dir: str | Path) -> bool:
    cfg = Path(run_dir) / "config.yaml"
    return cfg.is_file() and "epochs" in read_yaml(cfg) and "task" in read_yaml(cfg)


def load_finetuned(run_dir: str | Path, device: str = "cpu") -> FinetunedRun:
    """The best checkpoint of a fine-tuned run, with its task and mode, in eval mode."""
    from .models import ModelConfig, build
    from .tasks.modes import get_mode
    from .tokenizer import Tokenizer
    from .training.checkpoint import load_weights

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    if not is_finetuned(run_dir):
        raise CheckpointError(f"{run_dir} is not a fine-tuned run (a pretraining run?)")
    cfg = load_config(run_dir / "config.yaml", FinetuneConfig)
    task, _ = resolve_task(cfg)
    model_cfg = ModelConfig.from_dict(cfg.model)
    tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    mode = get_mode(cfg.mode).from_config(cfg, task, tokenizer, model_cfg)
    model = _apply_peft(mode.build_model(build(model_cfg)), cfg.peft)  # LoRA, prompts...
    ckpt = best_checkpoint(run_dir)
    load_weights(ckpt, model)
    model.to(device).eval()
    return FinetunedRun(run_dir, cfg, task, mode, model, tokenizer, ckpt)


def evaluate_run(run_dir: str | Path, task_name: str | None = None, split: str = "test",
                 device: str = "cpu") -> dict:
    """Every metric of the run's task on `split`, with the best checkpoint."""
    from .tasks import get_task, load_task
    from .tasks.evaluator import score

    if split not in ("train", "val", "test"):
        raise ConfigError(f"split {split!r}: expected train, val or test")
    run = load_finetuned(run_dir, device)
    cfg = run.config
    if task_name is None or task_name == cfg.task:
        _, splits = resolve_task(cfg)
        where = _where(cfg, split)
    else:  # another task of the same kind (e.g. another sentiment set)
        other = get_task(task_name)
        if other.type != run.task.type or tuple(other.labels) != tuple(run.task.labels):
            raise ConfigError(f"task {task_name!r} ({other.type}, {len(other.labels)} labels) "
                              f"does not fit this run's {cfg.task!r} ({run.task.type}, "
                              f"{len(run.task.labels)} labels)")
        splits = load_task(task_name, cfg.seed)
        where = f"task {task_name}, {split} split"
    rows = splits[split][:cfg.max_eval_examples]
    run.mode.check(rows, where)
    return score(run.mode, run.model, rows)


def main(argv: list[str] | None = None) -> int:
    """`python -m lmforge.finetune CONFIG [--resume] [key=value ...]` (the CLI's twin)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in argv
    argv = [a for a in argv if a != "--resume"]
    if not argv:
        print("usage: python -m lmforge.finetune CONFIG [--resume] [key=value ...]",
              file=sys.stderr)
        return 2
    summary = finetune(load_config(argv[0], FinetuneConfig, argv[1:]), resume=resume)
    print(json.dumps({k: summary[k] for k in ("best_epoch", "val", "test")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
