"""Fine-tuning modes: how one kind of task meets one kind of model.

A *mode* turns task rows (plain dicts, see tasks/datasets.py) into tensors, owns the
task model's head, computes the training loss, and turns model outputs back into
predictions the task's metrics score. A mode object IS a trainer objective: the trainer
calls `prepare`, `num_targets` and `loss` on it exactly as on a pretraining objective.

    mode = get_mode("classify").from_config(cfg, task, tokenizer, model_config)
    model = mode.build_model(backbone)            # backbone (weights loaded) + head
    batch = mode.prepare(rows)                    # dict of tensors, with "input_ids"
    loss_sum, n = mode.loss(model, batch)         # a SUM over n targets
    scores = TaskEvaluator(mode, rows)(model)     # {metric: value} (tasks/evaluator.py)

The protocol (duck-typed; `Mode` below gives defaults you may inherit):

    name: str                                  the registry key
    keeps_lm_head: bool                        encoders: keep the pretraining head
                                               (False: the recipe builds the encoder with
                                               encoder_head="none" and drops those weights)
    from_config(cfg, task, tokenizer, model_config) -> Mode    (classmethod)
        cfg: finetune.FinetuneConfig (reads cfg.max_len, cfg.eval_batch_size and the
        free-form cfg.options dict); task: tasks.Task; model_config: models.ModelConfig
        of the backbone. Raise ConfigError when the mode cannot work with them (e.g. an
        encoder tokenizer without [CLS] / [SEP]).
    check(rows, where) -> None
        raise DataError naming `where` and the row index of the first bad row
        (empty text, a pair with a missing side, a label not in the label set)
    build_model(backbone) -> nn.Module
        the task model; keeps the backbone's parameters under "backbone." so a fine-tuned
        checkpoint loads back into build_model(build(model_config)). A mode that needs no
        new head (an LM mode) may return the backbone itself.
    prepare(rows, draw=None) -> dict[str, Tensor]    must hold "input_ids" (B, T)
    num_targets(batch) -> int                        targets the loss sums over
    loss(model, batch) -> (loss_sum: Tensor, n: int)
    predict(model, rows) -> list                     in the form metrics.compute expects
    references(rows) -> list                         the gold side, same form

A mode is the trainer's objective (prepare / num_targets / loss) and the evaluator's
predictor (predict / references): `tasks.evaluator.TaskEvaluator` scores rows with it.

Register a mode with one line in MODES below: "name": "module.path:ClassName". The class
is imported when first asked for, so modes may import the models freely.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError

# name -> "module:Class" (imported lazily by get_mode)
MODES: dict[str, str] = {
    "classify": "lmforge.tasks.classify:Classify",  # single sentence / pair, regression
    "tag": "lmforge.tasks.tag:Tag",  # token classification (NER)
    "qa": "lmforge.tasks.qa:SpanQA",  # extractive span QA
    "text2text": "lmforge.tasks.text2text:Text2Text",  # T5-style text-to-text (H4)
    "verbalizer": "lmforge.tasks.verbalizer:Verbalizer",  # decoder label words (H4)
    "chat": "lmforge.tasks.chat_tuning:ChatTuning",  # decoder SFT (H4)
}

# The mode a task type gets when the config names none: by task type, then by the
# body's architecture where one mode does not fit all three.
DEFAULT_MODES: dict[str, str] = {
    "classification": "classify",
    "pair-classification": "classify",
    "regression": "classify",
    "tagging": "tag",
    "qa": "qa",
    "seq2seq": "text2text",
    "chat": "chat",
}
DEFAULT_MODES_BY_ARCH: dict[tuple[str, str], str] = {
    ("seq2seq", "decoder"): "verbalizer",  # the target as the prompt's continuation
    ("chat", "seq2seq"): "text2text",  # history in, reply out
}


def get_mode(name: str) -> type:
    """The mode class registered as `name` (ConfigError if unknown or not installed)."""
    if name not in MODES:
        raise ConfigError(f"config key 'mode': unknown mode {name!r} (known: {', '.join(MODES)})")
    module, _, cls = MODES[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"config key 'mode': mode {name!r} is not available ({e})") from None


def check_body(task_type: str, arch: str | None) -> None:
    """ConfigError for a generation task on an encoder (it has nothing to write with)."""
    if arch in ("encoder", "xlnet") and task_type in ("seq2seq", "chat"):
        raise ConfigError(f"task type {task_type!r} is text generation, which an encoder "
                          "cannot do (it has no decoder to write with): fine-tune a decoder "
                          "or an encoder-decoder")


def default_mode(task_type: str, arch: str | None = None) -> str:
    check_body(task_type, arch)
    if (task_type, arch) in DEFAULT_MODES_BY_ARCH:
        return DEFAULT_MODES_BY_ARCH[task_type, arch]
    if task_type not in DEFAULT_MODES:
        raise ConfigError(f"no default mode for task type {task_type!r}; set 'mode'")
    return DEFAULT_MODES[task_type]


def boundary_ids(tokenizer, arch: str, who: str) -> tuple[list[int], list[int]]:
    """(prefix, separator) ids around a head mode's text segments:

        encoder            [CLS] ... [SEP]   (RoBERTa's <s> ... </s> where there is no [CLS])
        xlnet              ... [SEP]         (classification adds XLNet's [CLS] at the end)
        decoder, seq2seq   [BOS] ... EOS     ([BOS] only where it is not EOS itself)

    ConfigError naming `who` (the mode) when the tokenizer lacks them."""
    tok = tokenizer
    if arch == "encoder":
        start = tok.cls_id if tok.cls_id is not None else tok.bos_id
        sep = tok.sep_id if tok.sep_id is not None else tok.eos_id
        if start is None or sep is None:
            raise ConfigError(f"{who} on an encoder needs [CLS] and [SEP] (or <s> and </s>) "
                              f"special tokens to mark segments; tokenizer {tok!r} has neither")
        return [start], [sep]
    if arch == "xlnet":
        if tok.sep_id is None:
            raise ConfigError(f"{who} on XLNet needs a [SEP] special token to mark segments; "
                              f"tokenizer {tok!r} has none")
        return [], [tok.sep_id]
    if tok.eos_id is None:
        raise ConfigError(f"{who} on a {arch} needs an end-of-text token; tokenizer {tok!r} "
                          "has none")
    bos = tok.bos_id
    return ([bos] if bos is not None and bos != tok.eos_id else []), [tok.eos_id]


def pad(rows: list[list[int]], value: int, left: bool = False) -> Tensor:
    """(B, T) long tensor of `rows` padded with `value` to the longest (right by default)."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, T - len(r):] = torch.tensor(r)
            else:
                out[i, : len(r)] = torch.tensor(r)
    return out


def chunks(rows: list, size: int):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


class Mode(ABC):
    """Defaults shared by the modes: config, row checks, gold references."""

    name = "mode"
    keeps_lm_head = False
    reports_loss = False  # the evaluator adds "loss" per target token (always when main)
    options_known: tuple[str, ...] = ()  # keys of cfg.options this mode reads

    def __init__(self, task, tokenizer, model_config, max_len: int = 128,
                 eval_batch_size: int = 32, options: dict | None = None):
        self.task = task
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.max_len = min(max_len, model_config.max_seq_len)
        self.eval_batch_size = eval_batch_size
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.options_known))
        if unknown:
            raise ConfigError(f"config key 'options.{unknown[0]}': not an option of mode "
                              f"{self.name!r} (known: {', '.join(self.options_known) or 'none'})")

    @classmethod
    def from_config(cls, cfg, task, tokenizer, model_config):
        return cls(task, tokenizer, model_config, max_len=cfg.max_len,
                   eval_batch_size=cfg.eval_batch_size, options=cfg.options)

    # -- data ---------------------------------------------------------------------------

    def check(self, rows: list[dict], where: str) -> None:  # pragma: no cover - override
        if not rows:
            raise DataError(f"{where}: no examples")

    def references(self, rows: list[dict]) -> list:
        return [r["label"] for r in rows]

    # -- evaluation ---------------------------------------------------------------------

    @abstractmethod
    def predict(self, model: nn.Module, rows: list[dict]) -> list:
        """Predictions for `rows`, in the form `tasks.metrics.compute` expects."""


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
