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
from .encoder import Encoder, EncoderOutput
from .layers import KVCache


def build(config: ModelConfig) -> nn.Module:
    """The model for `config.arch` ("decoder" or "encoder"; seq2seq comes later)."""
    if config.arch == "decoder":
        return Decoder(config)
    if config.arch == "encoder":
        return Encoder(config)
    raise ConfigError(f"model.arch: {config.arch!r} is not available yet (known: decoder, encoder)")


__all__ = [
    "CausalLMOutput",
    "Decoder",
    "Encoder",
    "EncoderOutput",
    "KVCache",
    "ModelConfig",
    "build",
    "presets",
]
