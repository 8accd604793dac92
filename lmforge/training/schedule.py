"""Learning-rate schedules: linear warmup, then cosine, linear, constant or WSD decay.

All are a pure function of the step, so the schedule has no state to lose on resume:

    warmup   lr(s) = lr * (s + 1) / (warmup + 1)                 s < warmup
    cosine   lr(s) = min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * p))
    linear   lr(s) = min_lr + (lr - min_lr) * (1 - p)
    constant lr(s) = lr
    wsd      lr(s) = lr until the last `decay_frac` of the steps, then linear to min_lr

with p = (s - warmup) / (max_steps - warmup) the progress after warmup, clamped to
[0, 1]. Warmup follows nanoGPT; WSD (warmup-stable-decay) follows MiniCPM (Hu et al.
2024): a long constant phase lets a run be extended or branched before the short decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "linear", "constant", "wsd")


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    max_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    kind: str = "cosine"
    decay_frac: float = 0.2  # wsd only: fraction of max_steps spent decaying

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r} (known: {', '.join(SCHEDULES)})")

    def __call__(self, step: int) -> float:
        """The learning rate for optimizer step `step` (0-based)."""
        lr, min_lr, warmup = self.lr, self.min_lr, self.warmup_steps
        if step < warmup:
            return lr * (step + 1) / (warmup + 1)
        if self.kind == "constant":
            return lr
        if self.kind == "wsd":
            decay_steps = max(1, round(self.decay_frac * self.max_steps))
            start = max(warmup, self.max_steps - decay_steps)
            if step < start:
                return lr
            p = min(1.0, (step - start) / max(1, self.max_steps - start))
            return min_lr + (lr - min_lr) * (1 - p)
        p = min(1.0, (step - warmup) / max(1, self.max_steps - warmup))
        if self.kind == "cosine":
            return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))
        return min_lr + (lr - min_lr) * (1 - p)  # linear

    def factor(self, step: int) -> float:
        """lr(step) / lr: the multiplier applied to every parameter group's base lr."""
        return self(step) / self.lr if self.lr else 0.0

    def state_dict(self) -> dict:
        return {
            "kind": self.kind, "lr": self.lr, "min_lr": self.min_lr, "max_steps": self.max_steps,
            "warmup_steps": self.warmup_steps, "decay_frac": self.decay_frac,
        }


def apply_lr(optimizers, schedule: LRSchedule, step: int) -> float:
    """Set every group's lr to its base lr (`group["base_lr"]`) times the schedule's factor."""
    f = schedule.factor(step)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * f
    return schedule(step)
