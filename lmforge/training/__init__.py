"""Training engine: the loop, optimizers, lr schedules, checkpoints, logs.

    from lmforge.training import LossEvaluator, Trainer, TrainConfig
    trainer = Trainer(model, objective, TrainConfig(max_steps=100), run_dir="runs/x")
    summary = trainer.fit(sampler, LossEvaluator(objective, lambda: val_batches))
    # fine-tuning: fit(rows, TaskEvaluator(mode, val_rows), KeepBest("accuracy", True, 2))

See docs/training.md for every config key, resume and the files a run writes.
"""

from .checkpoint import latest_checkpoint, list_checkpoints, load_weights, save_checkpoint
from .config import RunConfig, TrainConfig
from .optim import build_optimizers, param_groups
from .schedule import LRSchedule
from .trainer import KeepBest, LossEvaluator, NonFiniteLossError, StepResult, Trainer

__all__ = [
    "KeepBest", "LRSchedule", "LossEvaluator", "NonFiniteLossError", "RunConfig",
    "StepResult", "TrainConfig", "Trainer",
    "build_optimizers", "latest_checkpoint", "list_checkpoints", "load_weights",
    "param_groups", "save_checkpoint",
]
