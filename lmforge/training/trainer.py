"""The training loop: a batch in, a loss out.

The trainer knows a model, an objective (`prepare`, `num_targets`, `loss`; see
lmforge/objectives) and a `TrainConfig`. One optimizer step:

    raw batches (grad_accum of them) -> objective.prepare -> N = total targets
    for each micro-batch:  loss_sum, n = objective.loss(model, batch)
                           (loss_sum / N).backward()        # token-weighted
    loss = sum of the parts = the mean over all N targets, exactly as one big batch
    non-finite loss? skip the update (counted); too many in a row: stop
    clip the global grad norm, set the lr from the schedule, optimizer step

Around it: periodic eval (val loss, perplexity), logs (progress bar, metrics.jsonl,
TensorBoard, loss.png), atomic checkpoints with the whole training state (exact
resume), FLOPs per token and MFU.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import random
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
    all_finite,
    clean_partial,
    latest_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
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


def _warn_slow_bf16(device: torch.device, precision: str) -> None:
    if device.type != "cpu" or precision != "bf16":
        return
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
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


@dataclass
class StepResult:
    loss: float  # mean loss over the step's target tokens
    n_targets: int  # N, the tokens that counted in the loss
    tokens: int  # input tokens processed
    grad_norm: float | None
    lr: float
    skipped: bool  # the update was skipped (non-finite loss or gradient)


class Trainer:
    """Trains `model` with `objective` as `cfg` says; logs and checkpoints into `run_dir`.

    `model_config` (a plain dict) and `meta` are stored with each checkpoint (meta.json)
    so that resuming with another architecture or tokenizer fails with a clear message.
    """

    def __init__(
        self,
        model: nn.Module,
        objective,
        cfg: TrainConfig,
        run_dir: str | Path | None = None,
        model_config: dict | None = None,
        meta: dict | None = None,
    ):
        self.cfg = cfg
        self.meta = dict(meta or {})
        self.objective = objective
        self.device = resolve_device(cfg.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model_config = model_config
        self.model = model.to(self.device)
        if self.device.type == "cpu" and cfg.malloc_cache:
            cache_large_allocations()
        _warn_slow_bf16(self.device, cfg.precision)
        if cfg.activation_checkpointing:  # (a model may also have it on by its own config)
            set_activation_checkpointing(self.model, True)
        self.optimizers = build_optimizers(
            self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps
        )
        self.schedule = LRSchedule(
            lr=cfg.lr, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
            min_lr=cfg.min_lr, kind=cfg.schedule, decay_frac=cfg.decay_frac,
        )
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        # torch.compile wraps the model; we keep the plain module for state dicts (clean keys)
        self.forward_model = (
            torch.compile(self.model, backend=cfg.compile_backend) if cfg.compile else self.model
        )
        self.step = 0
        self.tokens = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.train_time = 0.0
        self.flops_per_token = self._flops_per_token()
        self._peak: tuple[float, str] | None = None

    # ---- one step -------------------------------------------------------------------

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def accumulate(self, raw_batches: Iterable) -> tuple[float, int, int]:
        """Forward + backward over micro-batches; gradients of the token-weighted mean.

        L = sum_k loss_sum_k / N with N the targets of all micro-batches together: the
        same loss, and the same gradients, as one batch holding them all. Returns
        (L, N, input tokens); the gradients are left in `.grad` (scaled under fp16).
        """
        model = self.forward_model
        model.train()
        # draw = the step: corruption (masking, noise) is drawn afresh each step
        batches = [self.objective.prepare(raw, draw=self.step) for raw in raw_batches]
        n_total = sum(self.objective.num_targets(b) for b in batches)
        tokens = sum(int(b["input_ids"].numel()) for b in batches)
        total = torch.zeros((), device=self.device)
        for batch in batches:
            with self._autocast():
                loss_sum, _ = self.objective.loss(model, self._to_device(batch))
            part = loss_sum / max(n_total, 1)
            (self.scaler.scale(part) if self.scaler else part).backward()
            total += part.detach()
        return float(total), n_total, tokens

    def train_step(self, raw_batches: Iterable) -> StepResult:
        """One optimizer update over the given micro-batches (token-weighted mean loss)."""
        lr = apply_lr(self.optimizers, self.schedule, self.step)
        loss, n_total, tokens = self.accumulate(raw_batches)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = None
        if math.isfinite(loss):
            for opt in self.optimizers:
                if self.scaler:
                    self.scaler.unscale_(opt)
            max_norm = self.cfg.grad_clip if self.cfg.grad_clip else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
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
        return StepResult(loss, n_total, tokens, grad_norm, lr, skipped=not finite)

    def evaluate(self, batches: Iterable) -> dict:
        """Validation statistics over `batches` (see `evaluate` below)."""
        return evaluate(self.objective, self.forward_model, batches, self.device,
                        self._autocast)

    # ---- checkpoints ------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        if self.run_dir is None:
            raise CheckpointError("this trainer has no run directory to keep checkpoints in")
        return self.run_dir / "checkpoints"

    def state_dict(self, sampler=None) -> dict:
        """The whole training state (tensors and plain values: torch.load weights_only)."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "train_time": self.train_time,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(),
            "sampler": sampler.state_dict() if sampler is not None else None,
        }

    def save(self, sampler=None) -> Path:
        if not all_finite(self.model):
            raise NonFiniteLossError(
                f"the weights became NaN/inf by step {self.step}; no checkpoint written "
                "(lower train.lr or set train.grad_clip)"
            )
        meta = {"tokens": self.tokens, "model_config": self.model_config,
                "lmforge_version": __version__, **self.meta}
        parts = self.checkpoint_parts()
        return save_checkpoint(self.ckpt_dir, self.step, parts.pop("model"),
                               self.state_dict(sampler), meta, self.cfg.keep_last, extra=parts)

    def checkpoint_parts(self) -> dict[str, nn.Module]:
        """The weight files of a checkpoint: "model" (model.safetensors) is the run's model;
        an objective that trains more (ELECTRA: the generator beside the discriminator)
        names the other parts, each saved as NAME.safetensors for exact resume."""
        parts = getattr(self.objective, "checkpoint_parts", None)
        return dict(parts(unwrap(self.model))) if parts else {"model": self.model}

    def load(self, path: str | Path, sampler=None) -> None:
        """Restore weights and training state from checkpoint folder `path`."""
        path = Path(path)
        parts = self.checkpoint_parts()
        load_weights(path, parts.pop("model"))
        for name, part in parts.items():
            load_weights(path / f"{name}.safetensors", part)
        state = load_state(path)
        if len(state["optimizers"]) != len(self.optimizers):
            raise CheckpointError(f"checkpoint {path} was trained with another optimizer")
        try:
            for opt, s in zip(self.optimizers, state["optimizers"]):
                # moments and step counts come from the checkpoint; lr, betas and weight
                # decay from this run's config (which may have changed them)
                hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                opt.load_state_dict(s)
                for group, h in zip(opt.param_groups, hyper):
                    group.update(h)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit ({e})") \
                from None
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.train_time = float(state.get("train_time", 0.0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        if sampler is not None and state.get("sampler") is not None:
            sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])

    def resume(self, sampler=None) -> Path:
        """Load the latest complete checkpoint of the run dir (CheckpointError if none)."""
        clean_partial(self.ckpt_dir)
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            raise CheckpointError(f"nothing to resume: no complete checkpoint in {self.ckpt_dir}")
        self.load(path, sampler)
        return path

    # ---- the loop -----------------------------------------------------------------------

    def _flops_per_token(self) -> float | None:
        counter = getattr(self.objective, "flops_per_token", None)
        if counter is not None:
            return counter(unwrap(self.model), self.cfg.seq_len)
        try:
            return model_flops_per_token(unwrap(self.model), self.cfg.seq_len)
        except AttributeError:  # a model without an lmforge decoder config
            return None

    def peak(self) -> tuple[float, str]:
        if self._peak is None:
            if self.cfg.peak_flops:
                self._peak = (self.cfg.peak_flops, "train.peak_flops")
            else:
                self._peak = peak_flops(self.device, self.cfg.precision)
        return self._peak

    def fit(
        self,
        sampler,
        eval_data: Callable[[], Iterable] | None = None,
        resume: bool = False,
    ) -> dict:
        """Train until `cfg.max_steps`; return the run summary.

        `sampler.next_batch()` gives raw batches; `eval_data()` gives a fresh iterable of
        validation batches each time it is called. With `resume`, training continues from
        the latest complete checkpoint in the run dir.
        """
        cfg = self.cfg
        with torch_threads(cfg.threads):
            if resume:
                self.resume(sampler)
            elif self.run_dir is not None:
                clean_partial(self.ckpt_dir)
            peak, peak_source = self.peak()
            log = None
            if self.run_dir is not None:
                log = RunLogger(self.run_dir, cfg.max_steps, self.step, cfg.progress,
                                cfg.tensorboard)
            try:
                return self._loop(sampler, eval_data, log, peak, peak_source)
            finally:
                if log is not None:
                    log.close()

    def _loop(self, sampler, eval_data, log: RunLogger | None, peak: float, peak_source: str):
        cfg = self.cfg
        fpt = self.flops_per_token or 0.0
        window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
        last_loss = float("nan")
        evals: dict = {}
        saved_at = None
        while self.step < cfg.max_steps:
            raws = [sampler.next_batch() for _ in range(cfg.grad_accum)]
            t0 = time.perf_counter()
            result = self.train_step(raws)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            self.step += 1
            self.train_time += dt
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
                        "event": "train", "step": self.step,
                        "loss": window_loss / window_steps, "lr": result.lr,
                        "tokens": self.tokens, "tok_per_s": tok_s,
                        "mfu": mfu(fpt, tok_s, peak), "grad_norm": result.grad_norm,
                        "skipped": self.nonfinite_total, "time_s": self.train_time,
                    })
                window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
            at_end = self.step == cfg.max_steps
            if eval_data is not None and (at_end or (cfg.eval_every
                                                     and self.step % cfg.eval_every == 0)):
                evals = self.evaluate(eval_data())
                if log and evals:
                    log.log({"event": "eval", "step": self.step, **evals})
                    log.write(f"step {self.step}: " + ", ".join(
                        f"{k.removeprefix('val_').replace('_', ' ')} {v:.4g}"
                        for k, v in evals.items() if k != "val_tokens"))
                    log.plot()
            if self.run_dir is not None and (at_end or (cfg.save_every
                                                        and self.step % cfg.save_every == 0)):
                saved_at = self.save(sampler)
        if eval_data is not None and not evals:  # resumed at the end: report the final eval
            evals = self.evaluate(eval_data())
        if self.run_dir is not None and saved_at is None:
            saved_at = latest_checkpoint(self.ckpt_dir)
        summary = {
            "event": "summary", "step": self.step, "tokens": self.tokens,
            "final_loss": last_loss if math.isfinite(last_loss) else None,
            **{k: v for k, v in evals.items() if k != "val_tokens"},
            "train_time_s": self.train_time,
            "tok_per_s": self.tokens / self.train_time if self.train_time else 0.0,
            "flops_per_token": fpt,
            # total train FLOPs: F per token times every token trained on (resumes included)
            "train_flops": fpt * self.tokens,
            "mfu": mfu(fpt, self.tokens / self.train_time, peak) if self.train_time else 0.0,
            "peak_flops": peak, "peak_source": peak_source,
            "nonfinite_steps": self.nonfinite_total,
            "checkpoint": str(saved_at) if saved_at else None,
        }
        if log:
            log.log(summary)
            log.plot()
        return summary
