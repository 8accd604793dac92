"""LoRA (Hu et al. 2021): a frozen weight W0 plus a trainable low-rank update B A.

    h = W0 x + (alpha / r) B A dropout(x)        A (r, d_in), B (d_out, r), r << d

A starts Kaiming-uniform and B at zero, so B A = 0 and the model is unchanged at the start.
rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead, so larger ranks still learn.

lmforge fuses projections into one matmul: attention's `qkv` holds [Wq; Wk; Wv] (GQA: k and
v may be narrower), the gated FFN's `fc1` holds [Wgate; Wup], cross-attention's `kv` holds
[Wk; Wv]. A LoRA on "q" and "v" adds its update to those output rows only: one (A, B) pair
per slice, exactly the model a LoRA on separate q_proj / v_proj layers gives.

`LoRALinear` is an `nn.Linear` that keeps the wrapped layer's parameters (same tensors,
same state-dict keys: `blocks.0.attn.qkv.weight` stays that key) and adds `lora.<name>.A`
/ `lora.<name>.B` beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.layers import Attention, CrossAttention, FeedForward
from .config import TARGETS, PeftConfig


class LoRA(nn.Module):
    """One low-rank update for output rows [start, end) of a Linear: scale * B A drop(x)."""

    def __init__(self, d_in: int, start: int, end: int, r: int, alpha: float,
                 rslora: bool = False, dropout: float = 0.0):
        super().__init__()
        self.start, self.end, self.r, self.alpha, self.rslora = start, end, r, alpha, rslora
        self.scale = alpha / (math.sqrt(r) if rslora else r)
        self.A = nn.Parameter(torch.empty(r, d_in))
        self.B = nn.Parameter(torch.zeros(end - start, r))  # zero: B A = 0 at the start
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear (and peft)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> Tensor:
        """(alpha / r) B A: the (end - start, d_in) update of W0's rows."""
        return self.scale * (self.B @ self.A)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.linear(F.linear(self.drop(x), self.A), self.B)  # (..., end-start)


class LoRALinear(nn.Linear):
    """y = W0 x + b + sum over slices s of pad_s((alpha / r) B_s A_s dropout(x)).

    pad_s puts slice s's output at its rows [start, end) of y, zeros elsewhere.
    """

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter: W0 keeps its key and its tying
        self.bias = base.bias
        self.lora = nn.ModuleDict()
        self.merged = False

    def add(self, name: str, start: int, end: int, r: int, alpha: float,
            rslora: bool = False, dropout: float = 0.0) -> LoRA:
        if name in self.lora:
            raise ConfigError(f"peft: this layer already has a LoRA on {name!r}")
        lora = LoRA(self.in_features, start, end, r, alpha, rslora, dropout)
        lora.to(device=self.weight.device, dtype=self.weight.dtype)
        self.lora[name] = lora
        return lora

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)  # W0 x + b
        if self.merged:
            return y
        for lora in self.lora.values():
            y = y + F.pad(lora(x), (lora.start, self.out_features - lora.end))
        return y

    @torch.no_grad()
    def merge(self) -> None:
        """W0[rows] += (alpha / r) B A: one matmul at inference, no LoRA path."""
        if not self.merged:
            for lora in self.lora.values():
                self.weight[lora.start : lora.end] += lora.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0[rows] -= (alpha / r) B A: back to the frozen weight and the separate path."""
        if self.merged:
            for lora in self.lora.values():
                self.weight[lora.start : lora.end] -= lora.delta_weight()
            self.merged = False


# ----------------------------------------------------------------------------------------
# Where the targets are: target name -> (Linear, output rows)


@dataclass(frozen=True)
class Site:
    target: str  # q, k, v, out, cross_q, ..., up, gate, down
    path: str  # the Linear's name in the model, e.g. "blocks.0.attn.qkv"
    start: int
    end: int


def sites(model: nn.Module) -> list[Site]:
    """Every Linear slice a LoRA target can name, in module order."""
    out = []
    for path, m in model.named_modules():
        p = path + "." if path else ""
        if isinstance(m, Attention):
            q, kv, _ = m.split_sizes  # [q; k; v] rows of the fused qkv
            out += [Site("q", p + "qkv", 0, q), Site("k", p + "qkv", q, q + kv),
                    Site("v", p + "qkv", q + kv, q + 2 * kv),
                    Site("out", p + "out", 0, m.out.out_features)]  # fmt: skip
        elif isinstance(m, CrossAttention):
            inner = m.q.out_features  # kv = [k; v], each n_head * head_dim rows
            out += [Site("cross_q", p + "q", 0, inner), Site("cross_k", p + "kv", 0, inner),
                    Site("cross_v", p + "kv", inner, 2 * inner),
                    Site("cross_out", p + "out", 0, m.out.out_features)]  # fmt: skip
        elif isinstance(m, FeedForward):
            n = m.fc1.out_features
            if m.gated:  # fc1 = [gate; up], see FeedForward.forward's chunk(2)
                out += [Site("gate", p + "fc1", 0, n // 2), Site("up", p + "fc1", n // 2, n)]
            else:
                out.append(Site("up", p + "fc1", 0, n))
            out.append(Site("down", p + "fc2", 0, m.fc2.out_features))
    return out


def wrap(model: nn.Module, path: str) -> LoRALinear:
    """The LoRALinear at `path`, replacing the plain Linear there on first use."""
    module = model.get_submodule(path)
    if isinstance(module, LoRALinear):
        return module
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"peft: {path} is a {type(module).__name__}, not a Linear layer")
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    wrapped = LoRALinear(module)
    setattr(parent, name, wrapped)
    return wrapped


def apply(model: nn.Module, cfg: PeftConfig) -> nn.Module:
    """Add LoRA on every slice the targets name (in place). Freezing is the caller's
    (`lmforge.peft.apply`): this only adds the A, B parameters."""
    all_sites = sites(model)
    present = [t for t in TARGETS if any(s.target == t for s in all_sites)]
    targets = present if "all-linear" in cfg.targets else cfg.targets
    for t in targets:
        if t not in present:
            raise ConfigError(
                f"config key 'peft.targets': {t!r} matches no layer of this model "
                f"(it has: {', '.join(present) or 'none'})"
            )
    chosen = [s for s in all_sites if s.target in targets]
    for s in chosen:
        d_in = model.get_submodule(s.path).in_features
        if cfg.r > min(d_in, s.end - s.start):
            raise ConfigError(
                f"config key 'peft.r': {cfg.r} is larger than the layer it adapts "
                f"({s.path} [{s.target}]: {d_in} -> {s.end - s.start})"
            )
    for s in chosen:
        wrap(model, s.path).add(s.target, s.start, s.end, cfg.r, cfg.alpha, cfg.rslora,
                                cfg.dropout)
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The plain model's weights with every B A folded in (W0 + (alpha / r) B A) and no
    LoRA tensors: loads into the model without LoRA. The model itself is not changed."""
    state = {k: v for k, v in model.state_dict().items() if ".lora." not in k}
    for path, m in model.named_modules():
        if isinstance(m, LoRALinear) and not m.merged:
            key = f"{path}.weight"
            w = state[key].clone()
            for lora in m.lora.values():
                w[lora.start : lora.end] += lora.delta_weight().detach()
            state[key] = w
    return state


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every LoRA into its weight and put plain `nn.Linear` layers back (in place):
    the model without PEFT, its state dict loadable into a model built from its config."""
    for path, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            m.merge()
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                              device="meta")
            plain.weight, plain.bias = m.weight, m.bias  # the same (merged) tensors
            parent_path, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, name, plain)
    return model
