"""Models: `build(config)` turns a `ModelConfig` into a module; `presets` names the shapes.

    from lmforge.models import build, presets
    model = build(presets.get("tiny-gpt2"))
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from . import presets
from .config import ModelConfig
from .decoder import CausalLMOutput, Decoder
from .layers import KVCache


def build(config: ModelConfig) -> nn.Module:
    """The model for `config.arch` ("decoder"; encoders and seq2seq come later)."""
    if config.arch == "decoder":
        return Decoder(config)
    raise ConfigError(f"model.arch: {config.arch!r} is not available yet (known: decoder)")


__all__ = ["CausalLMOutput", "Decoder", "KVCache", "ModelConfig", "build", "presets"]
