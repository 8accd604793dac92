"""`ModelConfig`: every shape and switch of an lmforge model, as plain fields.

One decoder class covers GPT-1/2/3, Llama 1/2/3, Mistral, Qwen2 and Gemma; what tells them
apart is a handful of flags here (see `presets.py` for the published shapes):

    family   norm       norm_position  ffn    activation  positions  bias  qkv_bias  tie
    gpt1     layernorm  post           mlp    gelu        learned    yes   yes       yes
    gpt2/3   layernorm  pre            mlp    gelu_tanh   learned    yes   yes       yes
    llama    rmsnorm    pre            gated  silu        rope       no    no        no*
    mistral  (llama) + sliding_window
    qwen2    (llama) + qkv_bias
    gemma    (llama) + rmsnorm (1 + w), gated gelu_tanh (GeGLU), embeddings * sqrt(d), tied

    * Llama 3.2 1B / 3B tie their embeddings.

`__post_init__` checks every field and raises `ConfigError` naming the field and what was
expected, so a typo in a YAML recipe fails before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

FAMILIES = ("gpt1", "gpt2", "gpt3", "llama", "mistral", "qwen2", "gemma")
ARCHS = ("decoder",)  # "encoder" and "seq2seq" arrive with their own issues
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
FFNS = ("mlp", "gated")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len")


@dataclass
class ModelConfig:
    # --- what kind of model -------------------------------------------------------------
    arch: Literal["decoder"] = "decoder"
    family: str | None = None  # published family this shape follows; picks the HF class
    # --- sizes --------------------------------------------------------------------------
    vocab_size: int = 50257
    max_seq_len: int = 1024  # longest sequence (learned positions have this many rows)
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # grouped-query attention; None = n_head (plain MHA)
    head_dim: int | None = None  # None = d_model // n_head (Gemma uses 256 regardless)
    d_ff: int | None = None  # FFN hidden size; None = 4 * d_model
    # --- block layout -------------------------------------------------------------------
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    norm_unit_offset: bool = False  # Gemma's RMSNorm scales by (1 + w), w initialised at 0
    norm_position: Literal["pre", "post"] = "pre"  # pre-LN (GPT-2+) or post-LN (GPT-1)
    final_norm: bool | None = None  # norm after the last block; None = yes for pre-LN
    ffn: Literal["mlp", "gated"] = "mlp"  # W2 act(W1 x) or W2 (act(Wg x) * (Wu x))
    activation: Literal["relu", "gelu", "gelu_tanh", "silu"] = "gelu_tanh"
    bias: bool = True  # biases on attention output and FFN linears
    qkv_bias: bool | None = None  # biases on q, k, v; None = same as `bias` (Qwen2: True)
    # --- positions ----------------------------------------------------------------------
    positions: Literal["learned", "sinusoidal", "rope", "none"] = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # Llama-3 style: keys in ROPE_SCALING_KEYS
    # --- attention ----------------------------------------------------------------------
    sliding_window: int | None = None  # Mistral: attend to at most this many recent tokens
    # --- embeddings and head ------------------------------------------------------------
    tie_embeddings: bool = True  # LM head shares the token embedding matrix
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (Gemma)
    # --- training-time switches ---------------------------------------------------------
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches
    init_std: float = 0.02
    gradient_checkpointing: bool = False  # recompute each block in backward to save memory
    # --- special tokens (carried through HF conversion and used by generation) ----------
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"model.{name}: expected one of {', '.join(allowed)}, got {value!r}"
                )

        def positive(name: str, value: Any = None) -> None:
            value = getattr(self, name) if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{name}: expected a positive integer, got {value!r}")

        choice("arch", ARCHS)
        if self.family is not None:
            choice("family", FAMILIES)
        choice("norm", NORMS)
        choice("norm_position", NORM_POSITIONS)
        choice("ffn", FFNS)
        choice("activation", ACTIVATIONS)
        choice("positions", POSITIONS)
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layer", "n_head"):
            positive(name)
        for name in ("n_kv_head", "head_dim", "d_ff", "sliding_window"):
            if getattr(self, name) is not None:
                positive(name)
        if self.head_dim is None and self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model: expected a multiple of n_head={self.n_head} "
                f"(or set head_dim), got {self.d_model}"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"model.n_kv_head: expected a divisor of n_head={self.n_head}, "
                f"got {self.n_kv_head}"
            )
        if self.positions == "rope" and self.head_size % 2:
            raise ConfigError(f"model.head_dim: RoPE needs an even head size, got {self.head_size}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ConfigError(
                f"model.d_model: sinusoidal positions need an even size, got {self.d_model}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a number in [0, 1), got {self.dropout!r}")
        for name in ("norm_eps", "init_std", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"model.{name}: expected a positive number, got {value!r}")
        if self.norm_unit_offset and self.norm != "rmsnorm":
            raise ConfigError("model.norm_unit_offset: only applies to norm=rmsnorm")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict) or set(self.rope_scaling) != set(
                ROPE_SCALING_KEYS
            ):
                raise ConfigError(
                    f"model.rope_scaling: expected a mapping with keys "
                    f"{', '.join(ROPE_SCALING_KEYS)}, got {self.rope_scaling!r}"
                )
            if self.positions != "rope":
                raise ConfigError("model.rope_scaling: only applies to positions=rope")

    # Derived sizes, so callers never repeat the defaulting rules above.
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def ffn_size(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def has_final_norm(self) -> bool:
        return self.norm_position == "pre" if self.final_norm is None else self.final_norm

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise ConfigError(f"model.{unknown[0]}: unknown key (known: {known})")
        return cls(**d)
