"""Prompt tuning, prefix-tuning and P-tuning adapters in the `peft` library's format.

    export_prompt_adapter(model, cfg, None, "out/")   # adapter_config.json + .safetensors
    peft.PeftModel.from_pretrained(hf_model, "out/")  # the same logits as `model`
    import_prompt_adapter(base_model, "out/")         # and back

peft saves what the virtual tokens *are*, not how they were trained: one tensor,
`prompt_embeddings`:

    PROMPT_TUNING   (n * s, d)          the prompt P
    P_TUNING        (n * s, d)          the prompt encoder's output f(E') (the encoder is
                                        not saved; loaded, P is used as it is)
    PREFIX_TUNING   (n, 2 L d_kv)       the folded prefix (the MLP's output)

with s = num_transformer_submodules: 2 for encoder-decoders (peft keeps a second set of n
prompt rows for the decoder that its prompt / P-tuning forward never reads; we write
zeros there), 1 otherwise. d_kv = n_kv_head * head_size (grouped-query attention keeps
the K/V width, as peft does).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..atomic import atomic_path, write_text
from ..errors import CheckpointError
from ..peft import prompts
from ..peft.config import PeftConfig
from .peft_format import CONFIG_FILE as CONFIG
from .peft_format import WEIGHTS_FILE as WEIGHTS

PEFT_TYPES = {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING", "ptuning": "P_TUNING"}
METHODS = {v: k for k, v in PEFT_TYPES.items()}
TASK_TYPES = {"decoder": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}


def _shape(body: nn.Module, method: str) -> dict:
    """token_dim / num_attention_heads / num_layers as peft derives them from the model."""
    config = body.config
    if method == "prefix":
        attn = (body.decoder_blocks if config.arch == "seq2seq" else body.blocks)[0].attn
        return dict(token_dim=attn.n_kv_head * attn.head_dim, num_attention_heads=attn.n_kv_head,
                    num_layers=config.n_layer)  # fmt: skip
    return dict(token_dim=body.tok_embed.weight.shape[1], num_attention_heads=config.n_head,
                num_layers=config.n_layer)  # fmt: skip


def export_prompt_adapter(model: nn.Module, cfg: PeftConfig, family: str | None,
                          out_dir: str | Path,
                          head: dict[str, Tensor] | None = None) -> None:  # fmt: skip
    """Write `model`'s virtual tokens as a peft adapter into `out_dir` (created if needed;
    keep it apart from the base model's folder, see docs/peft.md). `family` is peft's
    task_type (CAUSAL_LM, SEQ_2_SEQ_LM, FEATURE_EXTRACTION, SEQ_CLS, TOKEN_CLS, ...);
    None: from the model's architecture. `head`: the task head's tensors under their
    transformers names (e.g. {"classifier.weight": W, "classifier.bias": b} for BERT):
    peft saves them as its modules_to_save, and a SEQ_CLS / TOKEN_CLS adapter needs them.
    Each file is written whole or not at all."""
    body = prompts._body(model)
    pe = prompts.prompt_encoder(model)
    method, n = pe.method, pe.num_virtual_tokens
    seq2seq = body.config.arch == "seq2seq"
    with torch.no_grad():
        embeddings = pe().detach().float().cpu().contiguous()
    submodules = 2 if seq2seq else 1
    if method != "prefix" and seq2seq:
        embeddings = torch.cat((embeddings, torch.zeros_like(embeddings)))
    adapter = dict(
        peft_type=PEFT_TYPES[method],
        task_type=family or TASK_TYPES[body.config.arch],
        num_virtual_tokens=n,
        num_transformer_submodules=submodules,
        inference_mode=True,
        base_model_name_or_path=None,
        revision=None,
        modules_to_save=sorted({k.split(".")[0] for k in head}) if head else None,
        auto_mapping=None,
        **_shape(body, method),
    )
    if method == "prompt":
        adapter.update(prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                       tokenizer_name_or_path=None, tokenizer_kwargs=None)  # fmt: skip
    elif method == "ptuning":
        kind = getattr(pe, "kind", "mlp")
        adapter.update(encoder_reparameterization_type=kind.upper(),
                       encoder_hidden_size=cfg.encoder_hidden, encoder_num_layers=2,
                       encoder_dropout=0.0)  # fmt: skip
    else:  # the folded prefix is the parameter itself: no projection to apply on loading
        adapter.update(prefix_projection=False, encoder_hidden_size=cfg.encoder_hidden)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        tensors = {f"base_model.{k}": v.detach().float().cpu().contiguous()
                   for k, v in (head or {}).items()}  # fmt: skip
        tensors["prompt_embeddings"] = embeddings
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text(out / CONFIG, json.dumps(adapter, indent=2, sort_keys=True) + "\n")


def import_prompt_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Add a peft PROMPT_TUNING / P_TUNING / PREFIX_TUNING adapter to a base `model`
    (prompts.apply, then the saved virtual tokens); CheckpointError if it does not fit."""
    folder = Path(adapter_dir)
    try:
        adapter = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        peft_type = adapter["peft_type"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG}: not a readable peft adapter config "
                              f"({type(e).__name__}: {e})") from None  # fmt: skip
    if peft_type not in METHODS:
        raise CheckpointError(f"{folder / CONFIG}: peft_type {peft_type!r} is not a method this "
                              f"importer reads ({', '.join(METHODS)})")  # fmt: skip
    method = METHODS[peft_type]
    try:
        weights = load_file(str(folder / WEIGHTS))["prompt_embeddings"]
    except (OSError, SafetensorError, KeyError) as e:
        raise CheckpointError(f"{folder / WEIGHTS}: no prompt_embeddings tensor "
                              f"({type(e).__name__}: {e})") from None  # fmt: skip
    body = prompts._body(model)
    n = adapter.get("num_virtual_tokens")
    expected = _shape(body, method)
    got = {k: adapter.get(k) for k in expected}
    if got != expected:
        raise CheckpointError(f"{folder}: the adapter was made for {got}, the model has {expected}")
    width = expected["token_dim"] * (2 * expected["num_layers"] if method == "prefix" else 1)
    if not isinstance(n, int) or weights.ndim != 2 or weights.shape[0] < n \
            or weights.shape[1] != width:  # fmt: skip
        raise CheckpointError(f"{folder / WEIGHTS}: prompt_embeddings {tuple(weights.shape)} "
                              f"does not fit {n} virtual tokens of width {width}")  # fmt: skip
    cfg = PeftConfig(method=method, num_virtual_tokens=n,
                     encoder_hidden=adapter.get("encoder_hidden_size") or 128)  # fmt: skip
    prompts.apply(model, cfg)
    weights = weights[:n].to(body.tok_embed.weight.dtype)
    if method == "prefix":
        prompts.fold(model)
    else:  # only the prompt itself is saved: P-tuning loads as its encoder's output
        body.prompt_encoder = prompts.SoftPrompt(n, weights.shape[1], weights, method=method)
    with torch.no_grad():
        body.prompt_encoder.embedding.weight.copy_(weights)
    return model.to(body.tok_embed.weight.device)
