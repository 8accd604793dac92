"""The `peft:` block of a fine-tuning recipe: which parameter-efficient method, and its knobs.

    peft: {method: lora, r: 8, alpha: 16, dropout: 0.05, targets: [q, v]}

method None (the default) is full fine-tuning: every parameter trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

METHODS = ("lora", "adapters", "prompt", "prefix", "ptuning")
# Linear layers LoRA can target, by their role in a Transformer block: self-attention
# q / k / v / out, cross-attention (encoder-decoders) cross_q / cross_k / cross_v /
# cross_out, FFN up / gate / down; "all-linear" is every one the model has.
TARGETS = ("q", "k", "v", "out", "cross_q", "cross_k", "cross_v", "cross_out",
           "up", "gate", "down")  # fmt: skip


def _check(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {what}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class PeftConfig:
    method: str | None = None  # lora | adapters | prompt | prefix | ptuning; None = full
    # LoRA: h = W0 x + (alpha / r) B A dropout(x)   (rsLoRA: alpha / sqrt(r))
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    rslora: bool = False
    # Houlsby adapters: y + up(act(down(y))), bottleneck width m
    bottleneck: int = 64
    adapter_activation: str = "relu"  # relu | gelu
    # prompt / prefix / P-tuning (lmforge/peft/prompts.py)
    num_virtual_tokens: int = 20
    prompt_init: str = "random"  # random | vocab (copies of token embeddings)
    encoder_hidden: int = 128  # prefix MLP / P-tuning encoder width
    prompt_encoder: str = "mlp"  # mlp | lstm (P-tuning)
    train_norms: bool = True  # adapters: LayerNorms train too, as in Houlsby et al.
    # Modules (by name in the model) that train in full beside the PEFT parameters;
    # None = every parameter outside "backbone." (the task head of a TaskModel).
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        _check(self.method is None or self.method in METHODS, "peft.method",
               f"one of {', '.join(METHODS)} or null", self.method)
        for key in ("r", "bottleneck", "num_virtual_tokens", "encoder_hidden"):
            v = getattr(self, key)
            _check(_is_int(v) and v >= 1, f"peft.{key}", "an integer >= 1", v)
        _check(isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
               and self.alpha > 0, "peft.alpha", "a number > 0", self.alpha)
        _check(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1,
               "peft.dropout", "a number in [0, 1)", self.dropout)
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        _check(isinstance(self.targets, (list, tuple)) and len(self.targets) > 0,
               "peft.targets", "a non-empty list of layer names", self.targets)
        for t in self.targets:
            _check(t in TARGETS or t == "all-linear", "peft.targets",
                   f"names from {', '.join(TARGETS)} or all-linear", t)
        _check(len(set(self.targets)) == len(self.targets), "peft.targets",
               "each name once", self.targets)
        _check(self.adapter_activation in ("relu", "gelu"), "peft.adapter_activation",
               "relu or gelu", self.adapter_activation)
        _check(self.prompt_init in ("random", "vocab"), "peft.prompt_init",
               "random or vocab", self.prompt_init)
        _check(self.prompt_encoder in ("mlp", "lstm"), "peft.prompt_encoder",
               "mlp or lstm", self.prompt_encoder)
        for key in ("rslora", "train_norms"):
            _check(isinstance(getattr(self, key), bool), f"peft.{key}", "true or false",
                   getattr(self, key))
        _check(self.modules_to_save is None or (
            isinstance(self.modules_to_save, (list, tuple))
            and all(isinstance(m, str) and m for m in self.modules_to_save)),
            "peft.modules_to_save", "a list of module names or null", self.modules_to_save)

    @property
    def scaling(self) -> float:
        """LoRA's multiplier of B A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (self.r ** 0.5 if self.rslora else self.r)
