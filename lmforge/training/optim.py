"""Optimizers: AdamW with decay / no-decay groups, and Muon for hidden matrices.

Weight decay, the nanoGPT / Hugging Face convention: every parameter with two or more
dimensions (the weight matrices of attention and FFN, and the token / position
embeddings) is decayed; one-dimensional ones (biases, LayerNorm / RMSNorm gains) are
not. Decaying a norm gain or a bias towards zero regularizes nothing useful and can
hurt; embeddings are decayed as in both references (GPT-2 ties them to the LM head).

Muon (Jordan et al. 2024; `torch.optim.Muon`) orthogonalizes the momentum of a 2-D
weight with a few Newton-Schulz iterations. It is meant for the hidden matrices only:
embeddings, the LM head and all 1-D parameters stay on AdamW, as in the Muon
reference code. With `adjust_lr_fn="match_rms_adamw"` (Moonshot, "Muon is Scalable")
the update has AdamW's RMS, so the same lr and weight decay carry over.

`build_optimizers` returns a list (one or two optimizers) that the trainer steps
together; each group carries `base_lr`, which the lr schedule scales.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


def _unique_params(model: nn.Module):
    """(name, param) for every trainable parameter, each tied tensor listed once."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The Muon set: weights of the `nn.Linear` layers inside the blocks.

    Left out: embedding tables, anything tied to one, and the LM head (a module named
    `lm_head`, a Linear or not).
    """
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = {
        id(p)
        for name, m in model.named_modules()
        if name.split(".")[-1] == "lm_head"
        for p in m.parameters()
    }
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.weight.requires_grad:
            pid = id(m.weight)
            if pid not in embedding and pid not in head and pid not in seen:
                seen.add(pid)
                out.append(m.weight)
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: 2-D+ parameters decayed, 1-D (biases, norm gains) not."""
    params = _unique_params(model)
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizers(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.95,
) -> list[torch.optim.Optimizer]:
    """The optimizers for `model`: [AdamW] or, for name="muon", [Muon, AdamW]."""
    groups = param_groups(model, weight_decay)
    fused = {"fused": True} if _fused_ok(model) else {}
    if name == "adamw":
        opts = [torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **fused)]
    elif name == "muon":
        muon_cls = getattr(torch.optim, "Muon", None)
        if muon_cls is None:
            raise ConfigError(
                f"config key 'train.optimizer': muon needs torch.optim.Muon "
                f"(torch >= 2.9); this torch is {torch.__version__}"
            )
        hidden = hidden_matrices(model)
        hidden_ids = {id(p) for p in hidden}
        rest = [
            {**g, "params": [p for p in g["params"] if id(p) not in hidden_ids]} for g in groups
        ]
        muon = muon_cls(
            [{"params": hidden, "name": "muon"}], lr=lr, weight_decay=weight_decay,
            momentum=momentum, adjust_lr_fn="match_rms_adamw",
        )
        opts = [muon, torch.optim.AdamW(rest, lr=lr, betas=tuple(betas), eps=eps, **fused)]
    else:
        raise ConfigError(f"config key 'train.optimizer': unknown optimizer {name!r}")
    for opt in opts:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return opts


def _fused_ok(model: nn.Module) -> bool:
    """Fused AdamW (one kernel for all params) where every parameter is a float tensor on
    the GPU, or all on the CPU (torch >= 2.4 fuses there too: the optimizer step of a
    MiniLM fine-tune takes 42 ms instead of 311 ms, bench/finetune.py)."""
    params = list(model.parameters())
    if not params or not all(p.is_floating_point() for p in params):
        return False
    return all(p.is_cuda for p in params) or all(p.device.type == "cpu" for p in params)
