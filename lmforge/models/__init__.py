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
from .seq2seq import Seq2Seq, Seq2SeqCache, Seq2SeqLMOutput, shift_right
from .xlnet import XLNet, XLNetOutput


def build(config: ModelConfig) -> nn.Module:
    """The model for `config.arch`: "decoder", "encoder", "seq2seq" or "xlnet"."""
    if config.arch == "decoder":
        return Decoder(config)
    if config.arch == "encoder":
        return Encoder(config)
    if config.arch == "seq2seq":
        return Seq2Seq(config)
    if config.arch == "xlnet":
        return XLNet(config)
    raise ConfigError(f"model.arch: {config.arch!r} (known: decoder, encoder, seq2seq, xlnet)")


__all__ = [
    "CausalLMOutput",
    "Decoder",
    "Encoder",
    "EncoderOutput",
    "KVCache",
    "ModelConfig",
    "Seq2Seq",
    "Seq2SeqCache",
    "Seq2SeqLMOutput",
    "XLNet",
    "XLNetOutput",
    "build",
    "presets",
    "shift_right",
]
