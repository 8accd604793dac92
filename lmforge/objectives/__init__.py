"""Pretraining objectives, one file each: each turns raw token batches into model inputs
and targets and owns its loss. An objective knows nothing of the trainer.

What the recipe and the trainer call is in base.py (`Objective`): from_config,
build_model, window_len, prepare(raw, draw), num_targets, loss, evaluate, export.

Objectives: `clm` (causal LM, GPT / Llama).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Objective
from .clm import IGNORE, CausalLM, clm_loss, linear_cross_entropy

OBJECTIVES = {"clm": CausalLM}


def build(cfg, *, tokenizer=None, model_config=None, seed: int = 0) -> Objective:
    """The objective `cfg` names (an ObjectiveConfig, or just a name for the defaults)."""
    if isinstance(cfg, str):
        from ..training.config import ObjectiveConfig

        if cfg not in OBJECTIVES:
            _unknown(cfg)
        cfg = ObjectiveConfig(name=cfg)
    if cfg.name not in OBJECTIVES:
        _unknown(cfg.name)
    return OBJECTIVES[cfg.name].from_config(cfg, tokenizer=tokenizer,
                                            model_config=model_config, seed=seed)


def _unknown(name):
    raise ConfigError(
        f"config key 'objective.name': unknown objective {name!r} "
        f"(known: {', '.join(OBJECTIVES)})"
    )


__all__ = ["IGNORE", "CausalLM", "OBJECTIVES", "Objective", "build", "clm_loss",
           "linear_cross_entropy"]
