"""A task's evaluator: the second role of a fine-tuning mode.

A mode plays two parts. To the trainer it is an objective (`prepare`, `num_targets`,
`loss`); to the evaluator it is a predictor (`predict`, `references`). `TaskEvaluator`
scores a model on fixed rows with the task's metrics:

    evaluate = TaskEvaluator(mode, val_rows)
    scores = evaluate(model)      # {"accuracy": 0.81, ...}, the main metric included

and is what `Trainer.fit(evaluator=...)` calls after each epoch. "loss" (per target
token, the mode's own loss) is added where the mode reports it or it is the main metric.
"""

from __future__ import annotations

import torch
from torch import nn

from . import metrics as task_metrics
from .modes import chunks, model_device


class TaskEvaluator:
    def __init__(self, mode, rows: list[dict]):
        self.mode, self.rows = mode, rows

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return score(self.mode, model, self.rows)


@torch.no_grad()
def mean_loss(mode, model: nn.Module, rows: list[dict]) -> float:
    """The loss per target token over `rows` (the mode's own prepare and loss)."""
    device = model_device(model)
    total, n = 0.0, 0
    for part in chunks(rows, mode.eval_batch_size):
        batch = {k: v.to(device) for k, v in mode.prepare(part).items()}
        loss, k = mode.loss(model, batch)
        total, n = total + float(loss), n + k
    return total / max(n, 1)


@torch.no_grad()
def score(mode, model: nn.Module, rows: list[dict]) -> dict[str, float]:
    """Every metric of the mode's task on `rows`: predict, then score against the gold."""
    was_training = model.training
    model.eval()
    try:
        scores = {}
        if mode.reports_loss or mode.task.main_metric == "loss":
            scores["loss"] = mean_loss(mode, model, rows)
        if mode.task.metrics:
            scores.update(task_metrics.compute(
                mode.task.metrics, mode.predict(model, rows), mode.references(rows)))
    finally:
        model.train(was_training)
    return scores
