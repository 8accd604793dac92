"""The fine-tuning recipe: `lmforge finetune CONFIG [key=value ...]`.

One visible function, read top to bottom (lecture: "Fine-tuning" -- a pretrained body,
a small new head, a few epochs at a small learning rate, model selection on val):

    1. the task: a built-in set (`task: rotten-tomatoes`) or your files (`data:`)
    2. the body: `init_from` an lmforge run dir or a Hugging Face checkpoint dir (its
       tokenizer.json comes along), or `model: {preset: ...}` + `tokenizer` from scratch
    3. the mode (tasks/modes.py; default by task type): checks every row, builds the head
    4. RUN_DIR/config.yaml, resolved (model config, tokenizer path, labels, mode), so that
       `lmforge eval RUN_DIR` rebuilds the model and `lmforge finetune RUN_DIR/config.yaml
       run_dir=NEW` reruns the run (with `init_from` as it was)
    5. epochs of `Trainer.train_step` over shuffled batches; after each epoch every task
       metric on val (metrics.jsonl, tqdm, val_metric.png); a better main metric saves
       the checkpoint (atomic; only the best is kept); `patience` epochs without one
       stop the run early
    6. the best checkpoint is loaded back and scored on val and test: results.json, the
       summary (also the last line of metrics.jsonl), read by `lmforge report`

Not exact-resume: a killed run leaves its best checkpoint so far (complete, atomic) but
is rerun from the start. Bad input (a config key, a label outside the label set, an empty
text, a pair with one side missing, a checkpoint whose vocabulary does not fit the
tokenizer) raises an LmforgeError naming the file / row before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .atomic import atomic_path, write_text
from .config import dump_yaml, load_config, read_yaml
from .errors import CheckpointError, ConfigError, DataError
from .training.config import TrainConfig

# Pretraining heads an encoder's checkpoint may hold; a fine-tuning body drops them.
PRETRAINING_HEADS = ("mlm_head.", "pair_head.", "rtd_head.")
# Model-config keys a fine-tuning config may change on a pretrained body.
RUNTIME_MODEL_KEYS = ("dropout", "gradient_checkpointing")
RESULTS = "results.json"


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


# -- 2. the body ---------------------------------------------------------------------------

@dataclass
class Source:
    """Where the body comes from: its config, its weights (None: from scratch), tokenizer."""

    model_config: object  # models.ModelConfig
    state: dict | None
    tokenizer: object
    tokenizer_path: str
    tokenizer_hash: str | None = None  # as recorded with the checkpoint, if any
    what: str = ""


def read_source(cfg: FinetuneConfig) -> Source:
    """The body's config, weights and tokenizer, from `init_from` or from scratch."""
    from .models import ModelConfig
    from .pretrain import resolve_model_config
    from .tokenizer import Tokenizer

    src = cfg.init_from
    if src is None:
        if cfg.tokenizer is None:
            raise ConfigError("config key 'tokenizer': a model trained from scratch needs a "
                              "tokenizer.json (or set init_from)")
        if "preset" not in cfg.model and "arch" not in cfg.model:
            raise ConfigError("config key 'model.preset': name a preset (or set init_from)")
        tok_path = tokenizer_file(cfg.tokenizer)
        tok = Tokenizer.load(tok_path)
        mc = resolve_model_config(cfg.model, tok.vocab_size, tok)
        return Source(mc, None, tok, tok_path,
                      what=f"scratch:{cfg.model.get('preset', mc.family or mc.arch)}")
    path = builtin_weights(src) or Path(src)
    if (path / "config.yaml").is_file():  # an lmforge run (pretraining or fine-tuning)
        from safetensors.torch import load_file

        from .runs import find_checkpoint
        from .training.checkpoint import WEIGHTS, read_meta

        data = read_yaml(path / "config.yaml")
        model = data.get("model") or {}
        if not isinstance(model, dict) or "preset" in model or "arch" not in model:
            raise CheckpointError(f"{path}/config.yaml: model section is not resolved")
        mc = ModelConfig.from_dict(model)
        ckpt = find_checkpoint(path)
        state = load_file(str(ckpt / WEIGHTS))
        if any(k.startswith("backbone.") for k in state):  # a fine-tuned run: its body
            state = {k[len("backbone."):]: v for k, v in state.items()
                     if k.startswith("backbone.")}
        else:  # a pretraining run: load it whole, so that tied weights stored under a
            # head's name (mlm_head.decoder.weight = tok_embed.weight) come back by both
            from .models import build
            from .training.checkpoint import load_weights

            full = build(mc)
            load_weights(ckpt, full)
            state = full.state_dict()
        tok_path = tokenizer_file(cfg.tokenizer) or str(path / "tokenizer.json")
        return Source(mc, state, Tokenizer.load(tok_path), tok_path,
                      read_meta(ckpt).get("tokenizer_hash"), what=str(path))
    if (path / "config.json").is_file():  # a Hugging Face checkpoint folder
        from .interop.hf import load_hf

        model = load_hf(path, dtype=torch.float32)
        tok_path = path / "tokenizer.json"
        if cfg.tokenizer is None and not tok_path.is_file():
            raise CheckpointError(f"{path}: no tokenizer.json (set 'tokenizer')")
        tok_path = tokenizer_file(cfg.tokenizer) or str(tok_path)
        return Source(model.config, model.state_dict(), Tokenizer.load(tok_path), str(tok_path),
                      what=str(path))
    raise CheckpointError(f"init_from {path}: neither an lmforge run dir (config.yaml) nor "
                          "a Hugging Face checkpoint dir (config.json)")


def builtin_weights(name: str) -> Path | None:
    """The folder of built-in weights `name` (e.g. "minilm"), when it is not a path."""
    from .data import registry

    if Path(name).exists() or name not in registry.BUILTINS \
            or registry.BUILTINS[name].kind != "weights":
        return None
    return next(f for f in registry.files(name) if f.name == "config.json").parent


def tokenizer_file(name: str | None) -> str | None:
    """`tokenizer:` as a path: a built-in's name (e.g. "minilm") means its tokenizer.json."""
    weights = builtin_weights(name) if name else None
    return str(weights / "tokenizer.json") if weights else name


def body_config(source: Source, cfg: FinetuneConfig, keeps_lm_head: bool):
    """The body's ModelConfig for fine-tuning: encoders drop their pretraining head."""
    changes = {}
    mc = source.model_config
    if source.state is not None:  # a rerun's resolved config repeats the body's keys: fine
        bad = sorted(k for k, v in cfg.model.items() if k not in RUNTIME_MODEL_KEYS
                     and k != "encoder_head" and getattr(mc, k, None) != v)
        if bad:
            raise ConfigError(f"config key 'model.{bad[0]}': a pretrained body keeps its shape; "
                              f"only {', '.join(RUNTIME_MODEL_KEYS)} may change")
        changes.update({k: v for k, v in cfg.model.items() if k in RUNTIME_MODEL_KEYS})
    if mc.arch == "encoder" and not keeps_lm_head:
        changes["encoder_head"] = "none"
    return dataclasses.replace(mc, **changes) if changes else mc


def check_vocab(source: Source, model_config) -> None:
    """The tokenizer must fit the embedding table (and be the checkpoint's own)."""
    tok = source.tokenizer
    if tok.vocab_size > model_config.vocab_size:
        raise CheckpointError(
            f"tokenizer {source.tokenizer_path} has {tok.vocab_size} tokens but the model's "
            f"vocabulary ({source.what}) has {model_config.vocab_size}: they do not match")
    if source.tokenizer_hash is not None and tok.fingerprint != source.tokenizer_hash:
        raise CheckpointError(f"tokenizer {source.tokenizer_path} is not the one checkpoint "
                              f"{source.what} was trained with")


def load_body(body: nn.Module, state: dict, what: str) -> None:
    """Load pretrained weights into the body by name; pretraining heads are left out.

    Tied parameters (an LM head sharing the embedding) may be stored once."""
    expected = body.state_dict()
    keep = {}
    for key, value in state.items():
        if key not in expected:
            if key.startswith(PRETRAINING_HEADS):
                continue
            raise CheckpointError(f"{what}: tensor '{key}' does not belong to this model")
        if tuple(value.shape) != tuple(expected[key].shape):
            hint = " (the vocabulary does not match)" if "embed" in key or "lm_head" in key \
                else ""
            raise CheckpointError(f"{what}: tensor '{key}' has shape {list(value.shape)}, the "
                                  f"model expects {list(expected[key].shape)}{hint}")
        keep[key] = value
    missing, _ = body.load_state_dict(keep, strict=False)
    loaded = {expected[k].data_ptr() for k in keep}
    missing = [k for k in missing if expected[k].data_ptr() not in loaded]  # tied: shared
    if missing:
        raise CheckpointError(f"{what}: lacks weights the model needs: {', '.join(missing[:4])}")


# -- 5. the loop ---------------------------------------------------------------------------

def better(value: float, best: float | None, metric: str) -> bool:
    from .tasks import greater_is_better

    if best is None:
        return math.isfinite(value)
    return value > best if greater_is_better(metric) else value < best


def plot_metric(records: list[dict], metric: str, path: Path) -> None:
    """val_metric.png: the val main metric after each epoch (written atomically)."""
    from matplotlib.figure import Figure

    points = [(r["epoch"], r[metric]) for r in records
              if r.get("event") == "eval" and isinstance(r.get(metric), (int, float))]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    if points:
        ax.plot(*zip(*points), "o-", label=f"val {metric}")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def default_name(cfg: FinetuneConfig) -> str:
    if cfg.name:
        return cfg.name
    if cfg.init_from:
        return Path(cfg.init_from).name
    return str(cfg.model.get("preset") or cfg.model.get("family") or "model") + " (scratch)"


@dataclass
class Setup:
    """What a fine-tuning config resolves to before anything is written."""

    task: Any
    splits: dict
    source: Source
    mode_name: str
    model_config: Any
    mode: Any


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
    return Setup(task, splits, source, mode_name, model_cfg, mode)


def build_model(s: Setup, seed: int) -> nn.Module:
    """The body (random init from `seed`, then the pretrained weights) with the mode's
    head or changes on it."""
    from .models import build

    torch.manual_seed(seed)
    body = build(s.model_config)
    if s.source.state is not None:
        load_body(body, s.source.state, s.source.what)
    return s.mode.build_model(body)


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune as `cfg` says; return the summary (best epoch, val and test metrics)."""
    from .training.checkpoint import latest_checkpoint, load_weights, save_checkpoint
    from .training.logs import RunLogger
    from .training.trainer import NonFiniteLossError, Trainer, torch_threads

    run_dir = Path(cfg.run_dir)
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        raise CheckpointError(f"{run_dir} already holds a run; set run_dir=NEW_DIR")

    # 1-3. task, body, mode: every check before anything is written
    s = setup(cfg)
    task, splits, source, mode_name, model_cfg, mode = (
        s.task, s.splits, s.source, s.mode_name, s.model_config, s.mode)
    rng = random.Random(cfg.seed)
    train_rows = list(splits["train"])
    rng.shuffle(train_rows)
    train_rows = train_rows[:cfg.max_train_examples]
    val_rows = splits["val"][:cfg.max_eval_examples]
    test_rows = splits["test"][:cfg.max_eval_examples]
    for split, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        mode.check(rows, _where(cfg, split))

    # 4. the run dir and its resolved config
    run_dir.mkdir(parents=True, exist_ok=True)
    tok_file = run_dir / "tokenizer.json"
    source.tokenizer.save(tok_file)
    data = dataclasses.replace(cfg.data, labels=list(task.labels) or cfg.data.labels)
    resolved = dataclasses.replace(cfg, name=default_name(cfg), model=model_cfg.to_dict(),
                                   tokenizer=str(tok_file), mode=mode_name, data=data)
    dump_yaml(resolved, run_dir / "config.yaml")

    # 5. model, trainer, epochs
    train = cfg.train
    steps_per_epoch = math.ceil(len(train_rows) / (train.batch_size * train.grad_accum))
    total = steps_per_epoch * cfg.epochs
    train = dataclasses.replace(train, max_steps=total, seq_len=cfg.max_len,
                                warmup_steps=train.warmup_steps or round(cfg.warmup_frac * total))
    metric = task.main_metric
    with torch_threads(train.threads):
        model = build_model(s, cfg.seed)
        trainer = Trainer(model, mode, train, model_config=model_cfg.to_dict())
        model = trainer.model
        meta = {"tokenizer_hash": source.tokenizer.fingerprint, "task": task.name,
                "mode": mode_name, "finetune": True}
        n_params = sum(p.numel() for p in model.parameters())
        _say(f"{run_dir}: {task.name} ({task.type}, mode {mode_name}) on {source.what}, "
             f"{n_params / 1e6:.2f}M parameters, {len(train_rows)} train rows, "
             f"{cfg.epochs} epochs x {steps_per_epoch} steps")
        log = RunLogger(run_dir, total, 0, train.progress, train.tensorboard)
        best, best_epoch, best_ckpt, bad, epoch = None, 0, None, 0, 0
        t0 = time.perf_counter()
        try:
            for epoch in range(1, cfg.epochs + 1):
                order = list(range(len(train_rows)))
                rng.shuffle(order)
                B = train.batch_size
                for s in range(steps_per_epoch):
                    idx = order[s * B * train.grad_accum:(s + 1) * B * train.grad_accum]
                    micro = [[train_rows[i] for i in idx[k:k + B]]
                             for k in range(0, len(idx), B)]
                    result = trainer.train_step(micro)
                    trainer.step += 1
                    if trainer.nonfinite_in_a_row >= train.max_nonfinite:
                        raise NonFiniteLossError(
                            f"training stopped at step {trainer.step}: the loss was NaN/inf "
                            f"{trainer.nonfinite_in_a_row} steps in a row; lower train.lr")
                    log.progress(1, loss=f"{result.loss:.4f}", epoch=epoch)
                    if trainer.step % train.log_every == 0 or s == steps_per_epoch - 1:
                        log.log({"event": "train", "step": trainer.step, "epoch": epoch,
                                 "loss": result.loss, "lr": result.lr,
                                 "grad_norm": result.grad_norm})
                scores = mode.evaluate(model, val_rows)
                log.log({"event": "eval", "step": trainer.step, "epoch": epoch, **scores})
                log.write(f"epoch {epoch}: val " + ", ".join(
                    f"{k} {v:.4f}" for k, v in scores.items()))
                plot_metric(log.history, metric, run_dir / "val_metric.png")
                if better(scores[metric], best, metric):
                    best, best_epoch, bad = scores[metric], epoch, 0
                    best_ckpt = save_checkpoint(
                        run_dir / "checkpoints", trainer.step, model,
                        state={"step": trainer.step, "epoch": epoch},
                        meta={"model_config": model_cfg.to_dict(), "epoch": epoch,
                              "val": scores, **meta}, keep_last=1)
                else:
                    bad += 1
                    if cfg.patience and bad >= cfg.patience:
                        log.write(f"early stop: no better val {metric} for {bad} epochs")
                        break
            if best_ckpt is None:
                raise DataError(f"val {metric} was never finite: no checkpoint kept")

            # 6. the best checkpoint, scored on val and test
            load_weights(best_ckpt, model)
            summary = {
                "event": "summary", "task": task.name, "type": task.type, "mode": mode_name,
                "model": resolved.name, "arch": model_cfg.arch, "init_from": cfg.init_from,
                "main_metric": metric,
                "best_epoch": best_epoch, "epochs_run": epoch,
                "stopped_early": epoch < cfg.epochs, "step": trainer.step,
                "val": mode.evaluate(model, val_rows), "test": mode.evaluate(model, test_rows),
                "checkpoint": str(best_ckpt), "train_time_s": time.perf_counter() - t0,
                "run_dir": str(run_dir),
            }
            write_text(run_dir / RESULTS, json.dumps(summary, indent=2) + "\n")
            log.log(summary)
            log.plot()
        finally:
            log.close()
    return summary


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


def is_finetuned(run_dir: str | Path) -> bool:
    cfg = Path(run_dir) / "config.yaml"
    return cfg.is_file() and "epochs" in read_yaml(cfg) and "task" in read_yaml(cfg)


def load_finetuned(run_dir: str | Path, device: str = "cpu") -> FinetunedRun:
    """The best checkpoint of a fine-tuned run, with its task and mode, in eval mode."""
    from .models import ModelConfig, build
    from .runs import find_checkpoint
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
    model = mode.build_model(build(model_cfg))
    ckpt = find_checkpoint(run_dir)
    load_weights(ckpt, model)
    model.to(device).eval()
    return FinetunedRun(run_dir, cfg, task, mode, model, tokenizer, ckpt)


def evaluate_run(run_dir: str | Path, task_name: str | None = None, split: str = "test",
                 device: str = "cpu") -> dict:
    """Every metric of the run's task on `split`, with the best checkpoint."""
    from .tasks import get_task, load_task

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
    return run.mode.evaluate(run.model, rows)


# -- lmforge report: a GLUE-style results table ------------------------------------------

def read_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {RESULTS} (not a finished fine-tuning run)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def results_table(run_dirs: list[str | Path], split: str = "test") -> str:
    """Markdown: one row per model, one column per task, the task's main metric on
    `split` x 100 (as the GLUE tables of the papers print it), and the row average.

    A loss (chat's main metric: lower is better) is printed as is, not x 100, and stays
    out of the average. An "arch" column appears when the runs record their body's
    architecture. Runs are grouped by their `name` (the model) and `task`; when one model
    has several runs of a task, the one listed last counts."""
    cells: dict[str, dict[str, float]] = {}
    arch_of: dict[str, str] = {}
    metric_of: dict[str, str] = {}
    for d in run_dirs:
        r = read_results(d)
        if split not in r:
            raise CheckpointError(f"{d}/{RESULTS}: no {split} metrics")
        metric_of[r["task"]] = r["main_metric"]
        value = r[split][r["main_metric"]]
        cells.setdefault(r["model"], {})[r["task"]] = \
            value if r["main_metric"] == "loss" else 100 * value
        if r.get("arch"):
            arch_of[r["model"]] = r["arch"]
    tasks = list(metric_of)
    scored = [t for t in tasks if metric_of[t] != "loss"]  # higher is better: averaged
    head = ["Model"] + (["arch"] if arch_of else [])
    head += [f"{t} ({'loss, lower is better' if metric_of[t] == 'loss' else metric_of[t]})"
             for t in tasks]
    if len(scored) > 1:
        head.append("Average")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, row in cells.items():
        values = [("-" if t not in row else
                   f"{row[t]:.3f}" if metric_of[t] == "loss" else f"{row[t]:.1f}")
                  for t in tasks]
        if len(scored) > 1:
            full = all(t in row for t in scored)
            values.append(f"{sum(row[t] for t in scored) / len(scored):.1f}" if full else "-")
        first = [model] + ([arch_of.get(model, "-")] if arch_of else [])
        lines.append("| " + " | ".join(first + values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m lmforge.finetune CONFIG [key=value ...]` (the CLI's twin)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m lmforge.finetune CONFIG [key=value ...]", file=sys.stderr)
        return 2
    summary = finetune(load_config(argv[0], FinetuneConfig, argv[1:]))
    print(json.dumps({k: summary[k] for k in ("best_epoch", "val", "test")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
