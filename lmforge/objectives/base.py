"""What every pretraining objective offers the recipe and the trainer.

    objective = SomeObjective.from_config(cfg.objective, tokenizer=..., model_config=...,
                                          seed=...)
    model = objective.build_model(model_config)     # ELECTRA: generator + discriminator
    window = objective.window_len(seq_len)          # raw tokens per sampled window
    batch = objective.prepare(raw, draw=step)       # (B, window) tokens -> tensors
    n = objective.num_targets(batch)                # positions that count in the loss
    loss_sum, n = objective.loss(model, batch)      # a SUM over n targets
    stats = objective.evaluate(model, batch)        # {"loss": (sum, n), "acc": (hits, n)}
    saved = objective.export(model)                 # the model a run dir holds

`draw` makes corruption reproducible: `None` gives the same inputs for the same tokens
every time (evaluation, static masking), an integer (the trainer's step) a fresh draw
(dynamic masking); corruption RNGs are seeded from (seed, draw, sequence key), so an
exact resume needs no RNG state of the objective's own.

Base-class defaults suit a model that is trained as it is saved; an objective overrides
what differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Objective(ABC):
    name = "objective"
    perplexity = True  # exp(val loss) is a perplexity worth reporting

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0):
        """The objective for `cfg` (an ObjectiveConfig); raise ConfigError on bad input."""
        return cls()

    def window_len(self, seq_len: int) -> int:
        """Raw tokens per window the sampler cuts for a model input of `seq_len`."""
        return seq_len + 1

    def build_model(self, model_config) -> nn.Module:
        from ..models import build

        return build(model_config)

    def export(self, model: nn.Module) -> nn.Module:
        """The part of the trained `model` that is the run's model."""
        return model

    def flops_per_token(self, model: nn.Module, seq_len: int) -> float | None:
        """Training FLOPs per input token (None when they cannot be counted)."""
        from ..flops import model_flops_per_token

        try:
            return model_flops_per_token(model, seq_len)
        except AttributeError:  # not an lmforge model
            return None

    @abstractmethod
    def prepare(self, raw, draw: int | None = None) -> dict[str, Tensor]:
        """Raw windows (B, window_len) -> the tensors `loss` reads."""

    @abstractmethod
    def num_targets(self, batch: dict[str, Tensor]) -> int:
        """N: the positions (or sequences) the loss sums over."""

    @abstractmethod
    def loss(self, model, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """(loss summed over the N targets, N)."""

    def evaluate(self, model, batch: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
        """Validation statistics of one batch as (sum, count) pairs; "loss" at least."""
        loss, n = self.loss(model, batch)
        return {"loss": (float(loss), n)}
