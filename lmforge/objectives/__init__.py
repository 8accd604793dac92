"""Pretraining objectives, one file each: each turns raw token batches into model inputs
and targets and owns its loss. An objective knows nothing of the trainer.

What the recipe and the trainer call is in base.py (`Objective`): from_config,
build_model, window_len, prepare(raw, draw), num_targets, loss, evaluate, export.

Objectives: `clm` (causal LM, GPT / Llama), `mlm` (masked LM + NSP / SOP: BERT,
RoBERTa, ALBERT), `electra` (replaced-token detection) and `coco` (COCO-LM: corrective
LM + sequence contrastive learning) for encoders, `xlnet` (permutation LM), `bart`
(denoising) and `t5` (span corruption) for encoder-decoders.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Objective
from .clm import IGNORE, CausalLM, clm_loss, linear_cross_entropy
from .coco import Coco
from .denoising import BartDenoising, T5SpanCorruption
from .electra import Electra
from .mlm import MaskedLM
from .xlnet import PermutationLM

OBJECTIVES = {"clm": CausalLM}
OBJECTIVES["bart"] = BartDenoising  # BART denoising (encoder-decoders)
OBJECTIVES["t5"] = T5SpanCorruption  # T5 span corruption (encoder-decoders)
OBJECTIVES["mlm"] = MaskedLM  # masked LM (+ NSP / SOP): BERT, RoBERTa, ALBERT
OBJECTIVES["electra"] = Electra  # replaced-token detection (ELECTRA)
OBJECTIVES["coco"] = Coco  # corrective LM + sequence contrast (COCO-LM)
OBJECTIVES["xlnet"] = PermutationLM  # permutation LM, two-stream attention (XLNet)


def build(cfg, *, tokenizer=None, model_config=None, seed: int = 0) -> Objective:
    """The objective `cfg` names (an ObjectiveConfig, or just a name for the defaults)."""
    if isinstance(cfg, str):
        from .config import ObjectiveConfig

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


__all__ = ["IGNORE", "BartDenoising", "CausalLM", "Coco", "Electra", "MaskedLM", "OBJECTIVES",
           "Objective", "PermutationLM", "T5SpanCorruption", "build", "clm_loss",
           "linear_cross_entropy"]
