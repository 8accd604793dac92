"""Where a fine-tuning body comes from: `init_from` an lmforge run dir (pretraining or
fine-tuning), a Hugging Face checkpoint folder, a built-in (`minilm`), or nothing (a
preset from scratch) -- its config, weights and tokenizer, checked against each other.

    source = read_source(cfg)                        # config, weights, tokenizer
    model_cfg = body_config(source, cfg, keeps_lm_head=False)   # encoders drop their head
    check_vocab(source, model_cfg)
    load_body(build(model_cfg), source.state, source.what)      # weights by name
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import read_yaml
from .errors import CheckpointError, ConfigError

# Pretraining heads an encoder's checkpoint may hold; a fine-tuning body drops them.
PRETRAINING_HEADS = ("mlm_head.", "pair_head.", "rtd_head.")
# Model-config keys a fine-tuning config may change on a pretrained body.
RUNTIME_MODEL_KEYS = ("dropout", "gradient_checkpointing")


@dataclass
class Source:
    """Where the body comes from: its config, its weights (None: from scratch), tokenizer."""

    model_config: object  # models.ModelConfig
    state: dict | None
    tokenizer: object
    tokenizer_path: str
    tokenizer_hash: str | None = None  # as recorded with the checkpoint, if any
    what: str = ""


def read_source(cfg) -> Source:
    """The body's config, weights and tokenizer, from `init_from` or from scratch
    (`cfg`: a FinetuneConfig; reads init_from, tokenizer and model)."""
    from .models import ModelConfig
    from .models.config import resolve_model_config
    from .tokenizer import Tokenizer

    src = cfg.init_from
    if src is None:
        if cfg.tokenizer is None:
            raise ConfigError("config key 'tokenizer': a model trained from scratch needs a "
                              "tokenizer.json (or set init_from)")
        if "preset" not in cfg.model and "arch" not in cfg.model:
            raise ConfigError("config key 'model.preset': name a preset (or set init_from)")
        tok_path = tokenizer_file(cfg.tokenizer)
        tok = Tokenizer.load(tok_path)
        mc = resolve_model_config(cfg.model, tok.vocab_size, tok)
        return Source(mc, None, tok, tok_path,
                      what=f"scratch:{cfg.model.get('preset', mc.family or mc.arch)}")
    path = builtin_weights(src) or Path(src)
    if (path / "config.yaml").is_file():  # an lmforge run (pretraining or fine-tuning)
        from safetensors.torch import load_file

        from .runs import find_checkpoint
        from .training.checkpoint import WEIGHTS, read_meta, verify

        data = read_yaml(path / "config.yaml")
        model = data.get("model") or {}
        if not isinstance(model, dict) or "preset" in model or "arch" not in model:
            raise CheckpointError(f"{path}/config.yaml: model section is not resolved")
        mc = ModelConfig.from_dict(model)
        if "epochs" in data and "task" in data:  # a fine-tuned run: its best weights' body
            from .finetune import best_checkpoint

            ckpt = best_checkpoint(path)
            verify(ckpt, [WEIGHTS])
            state = load_file(str(ckpt / WEIGHTS))
            state = {k[len("backbone."):]: v for k, v in state.items()
                     if k.startswith("backbone.")}
        else:  # a pretraining run (plain or FSDP-sharded): loaded whole, so that tied
            # weights stored under a head's name (mlm_head.decoder.weight =
            # tok_embed.weight) come back by both names
            from .models import build
            from .training.checkpoint import load_weights

            ckpt = find_checkpoint(path)
            full = build(mc)
            load_weights(ckpt, full)
            state = full.state_dict()
        tok_path = tokenizer_file(cfg.tokenizer) or str(path / "tokenizer.json")
        return Source(mc, state, Tokenizer.load(tok_path), tok_path,
                      read_meta(ckpt).get("tokenizer_hash"), what=str(path))
    if (path / "config.json").is_file():  # a Hugging Face checkpoint folder
        from .interop.hf import load_hf

        model = load_hf(path, dtype=torch.float32)
        tok_path = path / "tokenizer.json"
        if cfg.tokenizer is None and not tok_path.is_file():
            spm = sorted(p.name for p in path.glob("*.model"))  # DeBERTa-v2 / v3: spm.model
            if spm:
                raise CheckpointError(f"{path}: its tokenizer is SentencePiece only ({spm[0]}, "
                                      "no tokenizer.json), which lmforge cannot run; set "
                                      "'tokenizer' to a tokenizer.json (BPE or WordPiece)")
            raise CheckpointError(f"{path}: no tokenizer.json (set 'tokenizer')")
        tok_path = tokenizer_file(cfg.tokenizer) or str(tok_path)
        return Source(model.config, model.state_dict(), Tokenizer.load(tok_path), str(tok_path),
                      what=str(path))
    raise CheckpointError(f"init_from {path}: neither an lmforge run dir (config.yaml) nor "
                          "a Hugging Face checkpoint dir (config.json)")


def builtin_weights(name: str) -> Path | None:
    """The folder of built-in weights `name` (e.g. "minilm"), when it is not a path."""
    from .data import registry

    if Path(name).exists() or name not in registry.BUILTINS \
            or registry.BUILTINS[name].kind != "weights":
        return None
    return next(f for f in registry.files(name) if f.name == "config.json").parent


def tokenizer_file(name: str | None) -> str | None:
    """`tokenizer:` as a path: a built-in's name (e.g. "minilm") means its tokenizer.json."""
    weights = builtin_weights(name) if name else None
    return str(weights / "tokenizer.json") if weights else name


def body_config(source: Source, cfg, keeps_lm_head: bool):
    """The body's ModelConfig for fine-tuning: encoders drop their pretraining head."""
    changes = {}
    mc = source.model_config
    if source.state is not None:  # a rerun's resolved config repeats the body's keys: fine
        bad = sorted(k for k, v in cfg.model.items() if k not in RUNTIME_MODEL_KEYS
                     and k != "encoder_head" and getattr(mc, k, None) != v)
        if bad:
            raise ConfigError(f"config key 'model.{bad[0]}': a pretrained body keeps its shape; "
                              f"only {', '.join(RUNTIME_MODEL_KEYS)} may change")
        changes.update({k: v for k, v in cfg.model.items() if k in RUNTIME_MODEL_KEYS})
    if mc.arch == "encoder" and not keeps_lm_head:
        changes["encoder_head"] = "none"
    return dataclasses.replace(mc, **changes) if changes else mc


def check_vocab(source: Source, model_config) -> None:
    """The tokenizer must fit the embedding table (and be the checkpoint's own)."""
    tok = source.tokenizer
    if tok.vocab_size > model_config.vocab_size:
        raise CheckpointError(
            f"tokenizer {source.tokenizer_path} has {tok.vocab_size} tokens but the model's "
            f"vocabulary ({source.what}) has {model_config.vocab_size}: they do not match")
    if source.tokenizer_hash is not None and tok.fingerprint != source.tokenizer_hash:
        raise CheckpointError(f"tokenizer {source.tokenizer_path} is not the one checkpoint "
                              f"{source.what} was trained with")


def load_body(body: nn.Module, state: dict, what: str) -> None:
    """Load pretrained weights into the body by name; pretraining heads are left out.

    Tied parameters (an LM head sharing the embedding) may be stored once."""
    expected = body.state_dict()
    keep = {}
    for key, value in state.items():
        if key not in expected:
            if key.startswith(PRETRAINING_HEADS):
                continue
            raise CheckpointError(f"{what}: tensor '{key}' does not belong to this model")
        if tuple(value.shape) != tuple(expected[key].shape):
            hint = " (the vocabulary does not match)" if "embed" in key or "lm_head" in key \
                else ""
            raise CheckpointError(f"{what}: tensor '{key}' has shape {list(value.shape)}, the "
                                  f"model expects {list(expected[key].shape)}{hint}")
        keep[key] = value
    missing, _ = body.load_state_dict(keep, strict=False)
    loaded = {expected[k].data_ptr() for k in keep}
    missing = [k for k in missing if expected[k].data_ptr() not in loaded]  # tied: shared
    if missing:
        raise CheckpointError(f"{what}: lacks weights the model needs: {', '.join(missing[:4])}")
