"""Houlsby adapters (Houlsby et al. 2019): a small bottleneck after each sublayer.

    adapter(y) = y + W_up act(W_down y + b_down) + b_up      W_down (m, d), W_up (d, m), m << d

Placement, as in the paper: after the attention output projection and after the FFN's
second matrix, before the residual add (and before the post-LN of BERT / BART), so every
Transformer layer has two. The Linear that projects (`attn.out`, `ffn.fc2`) is wrapped: its
output goes through the adapter. W_up and b_up start at zero, so adapter(y) = y and the
model starts exactly as it was.

Every self-attention gets one: the encoder's, the decoder's, and both stacks of an
encoder-decoder. Decoder cross-attention gets none (Houlsby's two per layer; AdapterHub's
`double_seq_bn` places them the same way).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.layers import Attention, FeedForward
from .config import PeftConfig

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class Adapter(nn.Module):
    """y -> y + up(act(down(y))): the bottleneck with its own residual connection."""

    def __init__(self, d: int, bottleneck: int, activation: str = "relu"):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        nn.init.normal_(self.down.weight, 0.0, 0.02)  # small, as BERT's init
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero: the adapter starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, y: Tensor) -> Tensor:
        return y + self.up(self.act(self.down(y)))


class AdapterLinear(nn.Linear):
    """A projection followed by an adapter: adapter(W x + b). Keeps the Linear's
    parameters and their state-dict keys (`blocks.0.attn.out.weight`)."""

    def __init__(self, base: nn.Linear, bottleneck: int, activation: str = "relu"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.adapter = Adapter(base.out_features, bottleneck, activation)
        self.adapter.to(device=base.weight.device, dtype=base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(F.linear(x, self.weight, self.bias))


def apply(model: nn.Module, cfg: PeftConfig) -> nn.Module:
    """Wrap every self-attention `out` and FFN `fc2` with an adapter (in place). Freezing
    is the caller's (`lmforge.peft.apply`): this only adds the adapter parameters."""
    for m in list(model.modules()):
        if isinstance(m, Attention) and cfg.bottleneck > m.out.out_features:
            raise ConfigError(
                f"config key 'peft.bottleneck': {cfg.bottleneck} is wider than the model "
                f"({m.out.out_features}); an adapter's bottleneck is narrower than d_model"
            )
        if isinstance(m, Attention) and not isinstance(m.out, AdapterLinear):
            m.out = AdapterLinear(m.out, cfg.bottleneck, cfg.adapter_activation)
        elif isinstance(m, FeedForward) and not isinstance(m.fc2, AdapterLinear):
            m.fc2 = AdapterLinear(m.fc2, cfg.bottleneck, cfg.adapter_activation)
    return model


def adapter_layers(model: nn.Module) -> list[AdapterLinear]:
    return [m for m in model.modules() if isinstance(m, AdapterLinear)]
