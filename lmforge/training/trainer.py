"""The training engine: one loop for every recipe (pretraining and fine-tuning), on one
process or many (torchrun: DDP or FSDP2, lmforge/training/distributed.py).

The trainer knows a model, an objective (`prepare`, `num_targets`, `loss`; see
lmforge/objectives and the fine-tuning modes in lmforge/tasks) and a `TrainConfig`. One
optimizer step:

    raw batches (grad_accum of them) -> objective.prepare -> N = total targets (all ranks)
    for each micro-batch:  loss_sum, n = objective.loss(model, batch)
                           (loss_sum / N).backward()        # token-weighted
                           (gradients are reduced across ranks on the last one only)
    loss = sum of the parts = the mean over all N targets, exactly as one big batch
    non-finite loss? skip the update (counted); too many in a row: stop
    clip the global grad norm, set the lr from the schedule, optimizer step

`fit` runs the steps and everything around them: periodic evaluation by an `evaluator`
(pretraining: val loss and the objective's statistics; fine-tuning: the task's metrics
on val rows), an optional keep-best policy (`KeepBest`: the best evaluation's weights
kept in RUN_DIR/best, early stopping after `patience` evaluations without a better one),
logs on rank 0 (progress bar, metrics.jsonl, TensorBoard, loss.png), atomic checkpoints
with the whole training state (exact resume, keep-best state and every rank's RNG
included), FLOPs per token and MFU.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import CheckpointError, ConfigError, LmforgeError
from ..flops import mfu, model_flops_per_token, peak_flops
from .checkpoint import (
    SHARDED,
    all_finite,
    clean_partial,
    latest_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
    save_state_dict_checkpoint,
    unwrap,
)
from .config import TrainConfig
from .logs import RunLogger
from .optim import build_optimizers
from .schedule import LRSchedule, apply_lr


@torch.no_grad()
def evaluate(objective, model: nn.Module, batches: Iterable, device: torch.device,
             autocast=contextlib.nullcontext) -> dict:
    """Validation statistics: val_loss (token-weighted), its perplexity when the
    objective's loss is one, and the objective's other statistics (val_acc, ...).

    Batches are prepared with draw=None: the same corruption every time, so evals along
    a run compare like with like.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for raw in batches:
        batch = {k: v.to(device, non_blocking=True)
                 for k, v in objective.prepare(raw).items()}
        with autocast():
            if hasattr(objective, "evaluate"):
                stats = objective.evaluate(model, batch)
            else:  # a plain objective: loss only
                loss, n = objective.loss(model, batch)
                stats = {"loss": (loss, n)}
        for key, (total, count) in stats.items():
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += float(total)
            acc[1] += float(count)
    model.train(was_training)
    loss_sum, n = sums.get("loss", (0.0, 0.0))
    if n == 0:
        return {}
    out = {"val_loss": loss_sum / n}
    if getattr(objective, "perplexity", True):
        out["val_ppl"] = math.exp(out["val_loss"]) if out["val_loss"] < 700 else float("inf")
    out["val_tokens"] = int(n)
    for key, (total, count) in sums.items():
        if key != "loss" and count:
            out[f"val_{key}"] = total / count
    return out


class NonFiniteLossError(LmforgeError):
    """Training stopped: the loss was NaN or inf for too many steps in a row."""


def _quiet(message: str) -> None:
    """Say nothing (a rank other than 0)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'train.device': unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.device': cuda requested but no GPU is available")
    return device


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with `n` torch CPU threads, restoring the previous setting afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cache_large_allocations() -> bool:
    """Keep freed large blocks in the C heap instead of returning them to the OS.

    glibc gives allocations above M_MMAP_THRESHOLD back to the kernel when freed, so a
    CPU training step page-faults its activations in again every time (~10% of a small
    model's step here). Raising the mmap and trim thresholds lets malloc reuse them, as
    jemalloc / tcmalloc do. Process-wide; Linux + glibc only (returns False elsewhere).
    Measured in docs/benchmarks.md: faster steps, the same peak RSS.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)
                    and libc.mallopt(m_trim_threshold, 1 << 31))
    except (OSError, AttributeError):
        return False


def _cpu_has_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 / amx_bf16); None = unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision=auto: bf16 where it is fast -- a GPU that supports it, a CPU with
    native bf16 (on this 2-core AVX-512 EPYC a training step of the speedrun's GPT takes
    0.61x the fp32 time) -- else fp32 (bf16 without it: 15x slower than fp32)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and _cpu_has_bf16() else "fp32"


def _warn_slow_bf16(device: torch.device, precision: str) -> None:
    if device.type != "cpu" or precision != "bf16":
        return
    if _cpu_has_bf16() is False:
        warnings.warn("train.precision=bf16 on a CPU without avx512_bf16 / amx_bf16: "
                      "expect it to be much slower than fp32 (15x measured here)",
                      stacklevel=3)


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn the model's activation (gradient) checkpointing on or off."""
    model = unwrap(model)
    if hasattr(model, "set_activation_checkpointing"):
        model.set_activation_checkpointing(enabled)
    elif hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = enabled
    elif hasattr(model, "gradient_checkpointing"):
        model.gradient_checkpointing = enabled
    elif enabled:
        raise ConfigError(
            f"train.activation_checkpointing: {type(model).__name__} has no "
            "activation checkpointing switch"
        )


def rng_state() -> dict:
    """Every RNG the run draws from: python, numpy, torch (and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ObjectiveLoss(nn.Module):
    """`objective.loss(model, batch)` as one module's forward: what DDP wraps, so that
    the whole loss -- whichever of the model's methods it calls -- runs inside DDP's
    forward (its gradient hooks, its search for unused parameters)."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective  # not a module: no parameters of its own

    def forward(self, batch: dict):
        return self.objective.loss(self.model, batch)


class LossEvaluator:
    """Pretraining's evaluator: `evaluate` (above) over a fresh iterable of validation
    batches from `batches()` each time it is called. `reference`: fixed numbers reported
    beside every eval (val_unigram_loss: the plateau the val loss is measured against)."""

    def __init__(self, objective, batches: Callable[[], Iterable],
                 reference: dict[str, float] | None = None):
        self.objective, self.batches = objective, batches
        self.reference = reference or {}

    def __call__(self, model: nn.Module) -> dict:
        device = next(model.parameters()).device
        out = evaluate(self.objective, model, self.batches(), device)
        return {**out, **self.reference} if out else out


@dataclass
class KeepBest:
    """Keep the weights of the best evaluation; stop after `patience` evaluations in a
    row without a better value (0 = never stop early). `metric` is a key of what the
    evaluator returns."""

    metric: str
    greater_is_better: bool = True
    patience: int = 0

    def better(self, value: float, best: float | None) -> bool:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best


@dataclass
class StepResult:
    loss: float  # mean loss over the step's target tokens (all ranks)
    n_targets: int  # N, the tokens that counted in the loss (all ranks)
    tokens: int  # input tokens processed (all ranks)
    grad_norm: float | None
    lr: float
    skipped: bool  # the update was skipped (non-finite loss or gradient)


BEST = "best"  # RUN_DIR/best/step-N: the keep-best policy's weights


class Trainer:
    """Trains `model` with `objective` as `cfg` says; logs and checkpoints into `run_dir`.

    `model_config` (a plain dict) and `meta` are stored with each checkpoint (meta.json)
    so that resuming with another architecture or tokenizer fails with a clear message.
    `dist` (training/distributed.py: `init(...)`) puts the run on several processes; None
    is one process, no process group.
    """

    def __init__(
        self,
        model: nn.Module,
        objective,
        cfg: TrainConfig,
        run_dir: str | Path | None = None,
        model_config: dict | None = None,
        meta: dict | None = None,
        dist=None,
    ):
        self.cfg = cfg
        self.meta = dict(meta or {})
        self.objective = objective
        self.dist = dist if dist is not None and dist.strategy != "none" else None
        self.world_size = self.dist.world_size if self.dist else 1
        self.is_main = self.dist is None or self.dist.is_main
        self.device = dist.device if dist is not None else resolve_device(cfg.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model_config = model_config
        self.model = model.to(self.device)
        if self.device.type == "cpu" and cfg.malloc_cache:
            cache_large_allocations()
        self.precision = resolve_precision(cfg.precision, self.device)
        _warn_slow_bf16(self.device, self.precision)
        if cfg.activation_checkpointing:  # (a model may also have it on by its own config)
            set_activation_checkpointing(self.model, True)
        # DDP / FSDP2 wrap the model before the optimizer is built (FSDP2 turns the
        # parameters into sharded DTensors); self.model stays the plain module
        self.strategy = self.dist.strategy if self.dist else "none"
        wrapped = self.model
        if self.dist is not None:
            from .distributed import wrap

            if self.strategy == "fsdp" and getattr(objective, "name", "") in ("electra", "coco"):
                raise ConfigError(
                    "distributed.strategy=fsdp: ELECTRA's (COCO-LM's) generator and "
                    "discriminator share their embeddings across two models, which FSDP "
                    "cannot shard; use ddp")
            # DDP wraps the objective's loss as one forward (ObjectiveLoss), so a loss that
            # calls the model's other methods (an encoder's encode + MLM head) still runs
            # inside DDP. A loss that may leave parameters without a gradient (a pooler, a
            # pair head, a frozen branch) needs DDP to look for them each step; CLM uses all
            target = ObjectiveLoss(self.model, objective) if self.strategy == "ddp" \
                else self.model
            wrapped = wrap(target, self.dist, self.precision,
                           find_unused_parameters=getattr(objective, "name", "") != "clm")
        self.wrapped = wrapped
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("nothing to train: every parameter of the model is frozen")
        self.optimizers = build_optimizers(
            self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps
        )
        self.schedule = LRSchedule(
            lr=cfg.lr, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
            min_lr=cfg.min_lr, kind=cfg.schedule, decay_frac=cfg.decay_frac,
        )
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        if self.strategy == "fsdp":  # FSDP2's mixed-precision policy casts; no autocast
            self.dtype = None
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        # torch.compile wraps the (wrapped) model; the plain module keeps the state dicts'
        # keys clean. Under FSDP2 compiling the whole root measured faster than compiling
        # each block before sharding (H200, world size 1: 201,696 vs 158,791 tokens/s)
        self.forward_model = (
            torch.compile(wrapped, backend=cfg.compile_backend) if cfg.compile else wrapped
        )
        self.step = 0
        self.tokens = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.train_time = 0.0  # wall-clock seconds inside train steps
        self.train_cpu_time = 0.0  # this process's CPU seconds there (all its threads)
        self.best: dict = {"value": None, "step": None, "bad": 0, "scores": None}
        self.flops_per_token = self._flops_per_token()
        self._peak: tuple[float, str] | None = None

    # ---- one step -------------------------------------------------------------------

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _sum_over_ranks(self, *values: float) -> list[float]:
        """Each value summed over the ranks (one all-reduce); as they are on one process."""
        if self.dist is None:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.dist.all_reduce_sum(t).tolist()

    def accumulate(self, raw_batches: Iterable) -> tuple[float, int, int]:
        """Forward + backward over micro-batches; gradients of the token-weighted mean.

        L = sum_k loss_sum_k / N with N the targets of all micro-batches of all ranks
        together: the same loss, and the same gradients, as one batch holding them all.
        DDP and FSDP average gradients over the W ranks, so each rank's part is scaled by W.
        Gradients are synchronized on the last micro-batch only (no_sync before it).
        Returns (L, N, input tokens); the gradients are left in `.grad` (scaled under fp16).
        """
        model = self.forward_model
        model.train()
        # draw = the step: corruption (masking, noise) is drawn afresh each step
        batches = [self.objective.prepare(raw, draw=self.step) for raw in raw_batches]
        n_local = sum(self.objective.num_targets(b) for b in batches)
        tokens_local = sum(int(b["input_ids"].numel()) for b in batches)
        n_total, tokens = (int(v) for v in self._sum_over_ranks(n_local, tokens_local))
        scale = self.world_size / max(n_total, 1)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            with self._grad_sync(last=i == len(batches) - 1), self._autocast():
                if self.strategy == "ddp":  # the wrapper's forward is the objective's loss
                    loss_sum, _ = model(self._to_device(batch))
                else:
                    loss_sum, _ = self.objective.loss(model, self._to_device(batch))
                part = loss_sum * scale
                (self.scaler.scale(part) if self.scaler else part).backward()
            total += part.detach()
        (loss,) = self._sum_over_ranks(float(total) / self.world_size)
        return loss, n_total, tokens

    def _grad_sync(self, last: bool):
        if self.dist is None:
            return contextlib.nullcontext()
        from .distributed import grad_sync

        return grad_sync(self.wrapped, self.dist, enabled=last)

    def _clip(self, max_norm: float) -> float:
        if self.strategy == "fsdp":
            from .distributed import clip_grad_norm

            return clip_grad_norm(self.model, max_norm)
        params = [p for p in self.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def train_step(self, raw_batches: Iterable) -> StepResult:
        """One optimizer update over the given micro-batches (token-weighted mean loss);
        the step counter moves on by one whether the update was applied or skipped."""
        lr = apply_lr(self.optimizers, self.schedule, self.step)
        loss, n_total, tokens = self.accumulate(raw_batches)
        grad_norm = None
        if math.isfinite(loss):
            for opt in self.optimizers:
                if self.scaler:
                    self.scaler.unscale_(opt)
            grad_norm = self._clip(self.cfg.grad_clip if self.cfg.grad_clip else float("inf"))
        # fp16: an inf gradient is the grad scaler's business (it skips and lowers the scale)
        finite = math.isfinite(loss) and (self.scaler is not None or math.isfinite(grad_norm))
        if finite:
            for opt in self.optimizers:
                if self.scaler:
                    self.scaler.step(opt)
                else:
                    opt.step()
            if self.scaler:
                self.scaler.update()
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.tokens += tokens
        self.step += 1
        return StepResult(loss, n_total, tokens, grad_norm, lr, skipped=not finite)

    # ---- checkpoints ------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        if self.run_dir is None:
            raise CheckpointError("this trainer has no run directory to keep checkpoints in")
        return self.run_dir / "checkpoints"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / BEST

    def _rng_states(self) -> list:
        """Every rank's RNG states, rank by rank (each rank draws its own dropout)."""
        if self.dist is None:
            return [rng_state()]
        import torch.distributed as tdist

        states: list = [None] * self.world_size
        tdist.all_gather_object(states, rng_state())
        return states

    def state_dict(self, sampler=None, optimizers: bool = True) -> dict:
        """The whole training state (tensors and plain values: torch.load weights_only)."""
        ranks = self._rng_states()
        return {
            "step": self.step,
            "tokens": self.tokens,
            "train_time": self.train_time,
            "train_cpu_time": self.train_cpu_time,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "optimizers": [opt.state_dict() for opt in self.optimizers] if optimizers else None,
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": ranks[0],  # one process: its own; several: rank 0's, the rest below
            "rng_ranks": ranks[1:],
            "world_size": self.world_size,
            "best": dict(self.best),
            "sampler": sampler.state_dict() if sampler is not None else None,
        }

    def _meta(self) -> dict:
        return {"tokens": self.tokens, "model_config": self.model_config,
                "lmforge_version": __version__, "world_size": self.world_size,
                "strategy": self.strategy, **self.meta}

    def save(self, sampler=None) -> Path:
        """A checkpoint of the whole state: rank 0 writes the plain checkpoint (one
        process, DDP); under FSDP every rank writes its shard of the model and optimizer
        state (torch.distributed.checkpoint) and rank 0 the rest."""
        if not all_finite(self.model):
            raise NonFiniteLossError(
                f"the weights became NaN/inf by step {self.step}; no checkpoint written "
                "(lower train.lr or set train.grad_clip)"
            )
        if self.strategy == "fsdp":
            return self._save_sharded(self.state_dict(sampler, optimizers=False))
        state = self.state_dict(sampler)
        path = self.ckpt_dir / f"step-{self.step}"
        if self.is_main:
            parts = self.checkpoint_parts()
            path = save_checkpoint(self.ckpt_dir, self.step, parts.pop("model"), state,
                                   self._meta(), self.cfg.keep_last, extra=parts)
        self._barrier()
        return path

    def _save_sharded(self, state: dict) -> Path:
        """FSDP: each rank writes its shard of the weights and optimizer state into a
        hidden folder (training/distributed.py: save_sharded); rank 0 adds the training
        state and meta.json and renames the folder into step-N (complete or absent)."""
        from .checkpoint import SHARDED, finish_sharded_checkpoint
        from .distributed import save_sharded

        pid = self.dist.broadcast_object(os.getpid())  # rank 0's: a live writer's temp
        tmp = self.ckpt_dir / f".step-{self.step}.{pid}.sharded.tmp"  # is never cleaned
        path = self.ckpt_dir / f"step-{self.step}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        save_sharded(tmp / SHARDED, self.model, self.optimizers, self.dist)
        if self.is_main:
            path = finish_sharded_checkpoint(tmp, self.ckpt_dir, self.step, state,
                                             self._meta(), self.cfg.keep_last)
        self._barrier()
        return path

    def save_best(self, scores: dict) -> Path:
        """RUN_DIR/best/step-N: the weights of the best evaluation (only the newest kept)."""
        state = {"step": self.step, "scores": scores}
        meta = {**self._meta(), "best": True, "scores": scores}
        path = self.best_dir / f"step-{self.step}"
        if self.strategy == "fsdp":
            from .distributed import full_state_dict

            full = full_state_dict(self.model, self.dist)  # every rank gathers, rank 0 keeps
            if self.is_main:
                path = save_state_dict_checkpoint(self.best_dir, self.step, full, state,
                                                  meta, keep_last=1)
        elif self.is_main:
            path = save_checkpoint(self.best_dir, self.step, self.model, state, meta,
                                   keep_last=1)
        self._barrier()
        return path

    def _barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def checkpoint_parts(self) -> dict[str, nn.Module]:
        """The weight files of a checkpoint: "model" (model.safetensors) is the run's model;
        an objective that trains more (ELECTRA: the generator beside the discriminator)
        names the other parts, each saved as NAME.safetensors for exact resume."""
        parts = getattr(self.objective, "checkpoint_parts", None)
        return dict(parts(unwrap(self.model))) if parts else {"model": self.model}

    def load(self, path: str | Path, sampler=None) -> None:
        """Restore weights and training state from checkpoint folder `path`."""
        path = Path(path)
        state = load_state(path)
        saved_world = int(state.get("world_size") or 1)
        sharded = (path / SHARDED).exists()
        if sharded != (self.strategy == "fsdp"):
            raise CheckpointError(
                f"checkpoint {path} is sharded (FSDP): resume it with distributed.strategy="
                "fsdp under torchrun" if sharded else f"checkpoint {path} is a plain (one "
                "process / DDP) checkpoint: resume it with distributed.strategy none or ddp")
        if sharded:
            from .distributed import load_sharded

            load_sharded(path / SHARDED, self.model, self.optimizers, self.dist)
        else:
            parts = self.checkpoint_parts()
            load_weights(path, parts.pop("model"))
            for name, part in parts.items():
                load_weights(path / f"{name}.safetensors", part)
            self._load_optimizers(path, state.get("optimizers"))
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.train_time = float(state.get("train_time", 0.0))
        self.train_cpu_time = float(state.get("train_cpu_time", 0.0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.best = dict(state.get("best") or self.best)
        if sampler is not None and state.get("sampler") is not None:
            sampler.load_state_dict(state["sampler"])
        ranks = [state["rng"], *(state.get("rng_ranks") or [])]
        rank = self.dist.rank if self.dist else 0
        if saved_world == self.world_size:
            set_rng_state(ranks[rank])
        else:  # the data position is re-derived by the sampler; dropout draws cannot be
            set_rng_state(ranks[0])
            if self.is_main:
                warnings.warn(f"checkpoint {path} was written by {saved_world} processes, "
                              f"this run has {self.world_size}: data order and weights resume "
                              "exactly, dropout draws do not", stacklevel=2)

    def _load_optimizers(self, path: Path, saved: list | None) -> None:
        if saved is None:
            raise CheckpointError(
                f"checkpoint {path} holds weights only, no training state to resume (an "
                "imported or converted model): start a new run from it instead of --resume")
        if len(saved) != len(self.optimizers):
            raise CheckpointError(f"checkpoint {path} was trained with another optimizer")
        try:
            for opt, s in zip(self.optimizers, saved):
                # moments and step counts come from the checkpoint; lr, betas and weight
                # decay from this run's config (which may have changed them)
                hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                opt.load_state_dict(s)
                for group, h in zip(opt.param_groups, hyper):
                    group.update(h)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit ({e})") \
                from None

    def resume(self, sampler=None) -> Path:
        """Load the latest complete checkpoint of the run dir (CheckpointError if none)."""
        if self.is_main:  # one cleaner (another node's writer may look dead from here)
            clean_partial(self.ckpt_dir)
        self._barrier()
        path = latest_checkpoint(self.ckpt_dir, **({} if self.is_main else {"say": _quiet}))
        if path is None:
            raise CheckpointError(f"nothing to resume: no complete checkpoint in {self.ckpt_dir}")
        self.load(path, sampler)
        return path

    # ---- the loop -----------------------------------------------------------------------

    def _flops_per_token(self) -> float | None:
        counter = getattr(self.objective, "flops_per_token", None)
        model = unwrap(self.model)
        try:
            if counter is not None:
                return counter(model, self.cfg.seq_len)
            return model_flops_per_token(model, self.cfg.seq_len)
        except AttributeError:  # a model without an lmforge config (a task model's head)
            backbone = getattr(model, "backbone", None)
            if backbone is not None and hasattr(backbone, "config"):
                return model_flops_per_token(backbone, self.cfg.seq_len)
            return None

    def peak(self) -> tuple[float, str]:
        if self._peak is None:
            if self.cfg.peak_flops:
                self._peak = (self.cfg.peak_flops, "train.peak_flops")
            else:
                self._peak = peak_flops(self.device, self.precision)
        return self._peak

    def fit(
        self,
        batches,
        evaluator: Callable[[nn.Module], dict] | None = None,
        keep_best: KeepBest | None = None,
        resume: bool = False,
        steps_per_epoch: int | None = None,
    ) -> dict:
        """Train until `cfg.max_steps` (or early stopping); return the run summary.

        `batches.next_batch()` gives raw micro-batches (with state_dict / load_state_dict
        for exact resume); `evaluator(model)` returns {name: value} -- every
        `cfg.eval_every` steps and at the end; `keep_best` keeps the weights of the best
        evaluation in RUN_DIR/best and may stop early. With `resume`, training continues
        from the latest complete checkpoint in the run dir. `steps_per_epoch` (fine-tuning)
        adds the epoch to the records.
        """
        cfg = self.cfg
        if keep_best is not None and (evaluator is None or self.run_dir is None):
            raise ConfigError("keep_best needs an evaluator and a run directory")
        with torch_threads(cfg.threads):
            if resume:
                self.resume(batches)
            elif self.run_dir is not None and self.is_main:
                clean_partial(self.ckpt_dir)
            peak, peak_source = self.peak()
            log = None
            if self.run_dir is not None and self.is_main:
                log = RunLogger(self.run_dir, cfg.max_steps, self.step, cfg.progress,
                                cfg.tensorboard,
                                metric=keep_best.metric if keep_best else None)
            try:
                return self._loop(batches, evaluator, keep_best, log, peak, peak_source,
                                  steps_per_epoch)
            finally:
                if log is not None:
                    log.close()

    def _evaluate_with(self, evaluator) -> dict:
        # DDP: evaluation needs no gradient sync, so it runs on the plain module
        model = self.model if self.strategy == "ddp" else self.forward_model
        with self._autocast():
            return evaluator(model)

    def _loop(self, batches, evaluator, keep_best: KeepBest | None, log: RunLogger | None,
              peak: float, peak_source: str, steps_per_epoch: int | None):
        cfg = self.cfg
        fpt = self.flops_per_token or 0.0
        window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
        last_loss = float("nan")
        evals: dict = {}
        saved_at = None
        # a run that stopped early stays stopped when resumed
        stopped_early = bool(keep_best and keep_best.patience
                             and self.best["bad"] >= keep_best.patience)

        def epoch_of(step: int) -> dict:
            return {"epoch": math.ceil(step / steps_per_epoch)} if steps_per_epoch else {}

        while self.step < cfg.max_steps and not stopped_early:
            raws = [batches.next_batch() for _ in range(cfg.grad_accum)]
            t0, c0 = time.perf_counter(), time.process_time()
            result = self.train_step(raws)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            self.train_time += dt
            self.train_cpu_time += time.process_time() - c0
            window_time += dt
            window_tokens += result.tokens
            if result.skipped:
                msg = {"event": "nonfinite", "step": self.step, "loss": result.loss,
                       "grad_norm": result.grad_norm, "in_a_row": self.nonfinite_in_a_row,
                       "total": self.nonfinite_total}
                if log:
                    log.log(msg)
                    log.write(f"step {self.step}: non-finite loss/gradient, update skipped "
                              f"({self.nonfinite_in_a_row} in a row)")
                if self.nonfinite_in_a_row >= cfg.max_nonfinite:
                    raise NonFiniteLossError(
                        f"training stopped at step {self.step}: the loss or gradient was "
                        f"NaN/inf for {self.nonfinite_in_a_row} steps in a row "
                        f"(train.max_nonfinite={cfg.max_nonfinite}); lower train.lr, set "
                        "train.grad_clip, or use fp32/bf16 instead of fp16"
                    )
            else:
                window_loss += result.loss
                window_steps += 1
                last_loss = result.loss
            tok_s = window_tokens / window_time if window_time > 0 else 0.0
            if log:
                log.progress(1, loss=f"{result.loss:.3f}", lr=f"{result.lr:.2e}",
                             tok_s=f"{tok_s:,.0f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                if window_steps and log:
                    log.log({
                        "event": "train", "step": self.step, **epoch_of(self.step),
                        "loss": window_loss / window_steps, "lr": result.lr,
                        "tokens": self.tokens, "tok_per_s": tok_s,
                        "mfu": mfu(fpt, tok_s, peak), "grad_norm": result.grad_norm,
                        "skipped": self.nonfinite_total, "time_s": self.train_time,
                        "cpu_time_s": self.train_cpu_time,
                    })
                window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
            at_end = self.step == cfg.max_steps
            if evaluator is not None and (at_end or (cfg.eval_every
                                                     and self.step % cfg.eval_every == 0)):
                evals = self._evaluate_with(evaluator)
                if log and evals:
                    log.log({"event": "eval", "step": self.step, **epoch_of(self.step),
                             **evals})
                    log.write(f"step {self.step}: " + ", ".join(
                        f"{k.removeprefix('val_').replace('_', ' ')} {v:.4g}"
                        for k, v in evals.items()
                        if k != "val_tokens" and isinstance(v, (int, float))))
                    log.plot()
                if keep_best is not None:
                    stopped_early = self._keep_best(keep_best, evals, log)
                at_end = at_end or stopped_early
            if self.run_dir is not None and (at_end or (cfg.save_every
                                                        and self.step % cfg.save_every == 0)):
                saved_at = self.save(batches)
        if evaluator is not None and not evals:  # resumed at the end: report the final eval
            evals = self._evaluate_with(evaluator)
        if self.run_dir is not None and saved_at is None:
            saved_at = latest_checkpoint(self.ckpt_dir)
        summary = {
            "event": "summary", "step": self.step, "tokens": self.tokens,
            "final_loss": last_loss if math.isfinite(last_loss) else None,
            **{k: v for k, v in evals.items() if k != "val_tokens"},
            "train_time_s": self.train_time,
            "train_cpu_time_s": self.train_cpu_time,
            "tok_per_s": self.tokens / self.train_time if self.train_time else 0.0,
            "flops_per_token": fpt,
            # total train FLOPs: F per token times every token trained on (resumes included)
            "train_flops": fpt * self.tokens,
            "mfu": mfu(fpt, self.tokens / self.train_time, peak) if self.train_time else 0.0,
            "peak_flops": peak, "peak_source": peak_source,
            "nonfinite_steps": self.nonfinite_total,
            "world_size": self.world_size, "strategy": self.strategy,
            "checkpoint": str(saved_at) if saved_at else None,
        }
        if keep_best is not None:
            best = latest_checkpoint(self.best_dir)
            summary.update({"best_step": self.best["step"], "best_value": self.best["value"],
                            "best_checkpoint": str(best) if best else None,
                            "stopped_early": self.step < cfg.max_steps})
            if steps_per_epoch and self.best["step"]:
                summary["best_epoch"] = math.ceil(self.best["step"] / steps_per_epoch)
        if log:
            log.log(summary)
            log.plot()
        return summary

    def _keep_best(self, policy: KeepBest, scores: dict, log: RunLogger | None) -> bool:
        """Save the weights when `scores` beat the best so far; True = stop early."""
        value = scores.get(policy.metric)
        if value is None:
            raise ConfigError(f"keep-best metric {policy.metric!r} is not among the "
                              f"evaluation's ({', '.join(scores) or 'none'})")
        if policy.better(value, self.best["value"]):
            self.best.update(value=float(value), step=self.step, bad=0, scores=dict(scores))
            self.save_best(scores)
            return False
        self.best["bad"] += 1
        if policy.patience and self.best["bad"] >= policy.patience:
            if log:
                log.write(f"early stop: no better {policy.metric} for {self.best['bad']} "
                          "evaluations")
            return True
        return False


def check_run_dir_state(run_dir: Path, resume: bool) -> Path | None:
    """A recipe's first check: `resume` needs a complete checkpoint, a fresh run never
    overwrites one (and run_dir must be a writable folder). Returns the latest
    checkpoint; rank 0 alone reports skipped damaged ones."""
    from ..atomic import check_run_dir
    from .distributed import quiet_unless_main

    check_run_dir(run_dir)  # a file, a read-only disk: before any work
    latest = latest_checkpoint(run_dir / "checkpoints", **quiet_unless_main())
    if resume and latest is None:
        raise CheckpointError(f"nothing to resume: no complete checkpoint in {run_dir}/checkpoints")
    if not resume and latest is not None:
        raise CheckpointError(
            f"{run_dir} already holds a run ({latest.name}); pass --resume to continue it, "
            "or set run_dir=NEW_DIR to train again from scratch")
    return latest


def main_first(dist, fn: Callable):
    """`fn()` on rank 0, then on the other ranks (which find what rank 0 wrote: its
    tokenizer, shards, run dir). An error on rank 0 is raised on every rank, so none is
    left waiting. One process: just `fn()`."""
    if dist is None or dist.world_size == 1:
        return fn()
    result, error = None, None
    if dist.is_main:
        try:
            result = fn()
        except LmforgeError as e:
            error = e
    error = dist.broadcast_object(error)
    if error is not None:
        raise error
    return result if dist.is_main else fn()


def full_model(trainer: Trainer, build: Callable[[], nn.Module]) -> nn.Module | None:
    """The trained model whole, on rank 0 (None on the others): the trainer's own module
    on one process or under DDP; under FSDP a fresh `build()` loaded with the gathered
    weights (every rank takes part in the gathering)."""
    if trainer.strategy != "fsdp":
        return trainer.model if trainer.is_main else None
    from .distributed import full_state_dict

    state = full_state_dict(trainer.model, trainer.dist)
    if not trainer.is_main:
        return None
    model = build()
    model.load_state_dict(state)
    return model.to(trainer.device)
