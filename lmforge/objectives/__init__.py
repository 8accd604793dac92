"""Pretraining objectives, one file each: each turns raw token batches into model inputs
and targets and owns its loss. An objective knows nothing of the trainer.

The trainer relies on three methods:

    batch = objective.prepare(raw)           # raw (B, T + 1) token windows -> tensors
    n = objective.num_targets(batch)         # positions that count in the loss
    loss_sum, n = objective.loss(model, batch)

Objectives: `clm` (causal LM, GPT / Llama). Planned: `mlm` (+ NSP / SOP), `electra`,
`bart_noise`, `t5_span`.
"""

from __future__ import annotations

from ..errors import ConfigError
from .clm import IGNORE, CausalLM, clm_loss, linear_cross_entropy

OBJECTIVES = {"clm": CausalLM}


def build(name: str, **kwargs):
    """The objective called `name`, constructed with `kwargs`."""
    if name not in OBJECTIVES:
        raise ConfigError(
            f"config key 'objective.name': unknown objective {name!r} "
            f"(known: {', '.join(OBJECTIVES)})"
        )
    return OBJECTIVES[name](**kwargs)


__all__ = ["IGNORE", "CausalLM", "OBJECTIVES", "build", "clm_loss", "linear_cross_entropy"]
