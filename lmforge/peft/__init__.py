"""Parameter-efficient fine-tuning: train a few new parameters, freeze the pretrained ones.

    from lmforge.peft import PeftConfig, apply, trainable_state_dict
    model = apply(model, PeftConfig(method="lora", r=8, alpha=16, targets=["q", "v"]))
    # only LoRA's A, B (and the task head) have requires_grad; the optimizer sees nothing else
    adapter = trainable_state_dict(model)      # kilobytes: save beside the full checkpoint

Methods: "lora" (lora.py), "adapters" (Houlsby, adapters.py), "prompt" | "prefix" |
"ptuning" (prompts.py). What trains after `apply`: the parameters the method added, the
`modules_to_save` (default: everything outside "backbone.", i.e. a TaskModel's head) and,
for adapters with `train_norms`, every LayerNorm / RMSNorm (as Houlsby et al.).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..models.layers import LayerNorm, RMSNorm
from . import adapters, lora
from .config import PeftConfig
from .lora import LoRALinear, merge_and_unload, merged_state_dict


def apply(model: nn.Module, cfg: PeftConfig) -> nn.Module:
    """Add the method's parameters to `model` (in place) and freeze everything else except
    the modules to save. Returns the model (prompt methods may wrap it in a new module)."""
    if cfg.method is None:
        return model
    if cfg.method in ("prompt", "prefix", "ptuning"):
        from . import prompts  # another file; imported only when asked for

        return prompts.apply(model, cfg)
    before = {id(p) for p in model.parameters()}
    (lora if cfg.method == "lora" else adapters).apply(model, cfg)
    save = _modules_to_save(model, cfg.modules_to_save)
    norms = {
        id(p)
        for m in model.modules()
        if cfg.method == "adapters" and cfg.train_norms and isinstance(m, (LayerNorm, RMSNorm))
        for p in m.parameters()
    }
    for name, p in model.named_parameters():
        trains = id(p) not in before or id(p) in norms or any(
            name == s or name.startswith(s + ".") for s in save
        )
        p.requires_grad_(trains)
    return model


def _modules_to_save(model: nn.Module, names: list[str] | None) -> list[str]:
    """Full module paths that train in full. None: a TaskModel's modules outside its
    backbone (the head); a bare model has none."""
    if names is None:
        return [n for n, _ in model.named_children() if n != "backbone"] \
            if hasattr(model, "backbone") else []  # fmt: skip
    paths = []
    all_paths = [n for n, _ in model.named_modules() if n]
    for want in names:
        found = [p for p in all_paths if p == want or p.endswith("." + want)]
        if not found:
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"config key 'peft.modules_to_save': no module named {want!r} "
                              f"(the model's modules: {top})")
        paths += found
    return paths


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The tensors that train (adapter, modules to save), by their names in the model."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy a `trainable_state_dict` back into a model prepared with the same `apply`."""
    expected = dict(model.named_parameters())
    trainable = {n for n, p in expected.items() if p.requires_grad}
    unknown = sorted(set(state) - trainable)
    missing = sorted(trainable - set(state))
    if unknown or missing:
        what = f"has {unknown[0]!r}, which" if unknown else f"lacks {missing[0]!r}, which"
        raise CheckpointError(
            f"adapter {what} the model prepared with this peft config "
            f"{'does not train' if unknown else 'trains'} (another method, targets or base?)"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"adapter tensor {name!r} has shape {tuple(tensor.shape)}, the model's "
                f"{tuple(expected[name].shape)} (a base of another shape?)"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor)


def merge(model: nn.Module) -> None:
    """Fold every LoRA update into its frozen weight: W0 <- W0 + (alpha / r) B A."""
    if adapters.adapter_layers(model):
        raise ConfigError("peft: Houlsby adapters are nonlinear and cannot be merged")
    for layer in lora.lora_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo `merge`: W0 <- W0 - (alpha / r) B A."""
    for layer in lora.lora_layers(model):
        layer.unmerge()


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied tensors count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = [
    "LoRALinear",
    "PeftConfig",
    "apply",
    "count_trainable",
    "load_trainable",
    "merge",
    "merge_and_unload",
    "merged_state_dict",
    "trainable_state_dict",
    "unmerge",
]
