"""XLNet <-> transformers' XLNetLMHeadModel: the weight table and the config translation.

hf.py reads and writes the files; this module only says which tensor is which and how
`config.json` maps to `ModelConfig`. Our attention keeps transformers' (d, n, hs) layout
for q, k, v, o, r, so every row is a plain rename. The head is tied to the word
embedding (`lm_loss.weight` is never read, and written only for an untied head); its bias
is `lm_loss.bias`.

Settings lmforge's XLNet does not implement are refused on load, one line each:
attn_type="uni", same_length, reuse_len, clamp_len > 0, untie_r=false.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from ..models.config import ModelConfig

ARCHITECTURE = "XLNetLMHeadModel"

_L = "transformer.layer.{i}."


def _renames() -> list[tuple[str, str]]:
    rows = [
        ("tok_embed.weight", "transformer.word_embedding.weight"),
        ("mask_emb", "transformer.mask_emb"),
        ("lm_head.weight", "lm_loss.weight"),  # only when untied
        ("lm_bias", "lm_loss.bias"),
    ]
    for name in ("q", "k", "v", "o", "r", "r_w_bias", "r_r_bias", "r_s_bias", "seg_embed"):
        rows.append((f"blocks.{{i}}.attn.{name}", _L + f"rel_attn.{name}"))
    for kind in ("weight", "bias"):
        rows += [
            (f"blocks.{{i}}.attn.norm.{kind}", _L + f"rel_attn.layer_norm.{kind}"),
            (f"blocks.{{i}}.ffn.fc1.{kind}", _L + f"ff.layer_1.{kind}"),
            (f"blocks.{{i}}.ffn.fc2.{kind}", _L + f"ff.layer_2.{kind}"),
            (f"blocks.{{i}}.ffn_norm.{kind}", _L + f"ff.layer_norm.{kind}"),
        ]
    return rows


# The weight table: (our tensor, transformers' tensor), "{i}" = the layer; hf.py makes
# its Rules from it.
RENAMES = _renames()


# transformers' XLNetConfig defaults for keys save_pretrained may leave out.
HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32000, d_model=1024, n_layer=24, n_head=16, d_inner=4096, ff_activation="gelu",
    attn_type="bi", initializer_range=0.02, layer_norm_eps=1e-12, dropout=0.1, mem_len=512,
    reuse_len=None, bi_data=False, clamp_len=-1, same_length=False, pad_token_id=5,
    bos_token_id=1, eos_token_id=2, tie_word_embeddings=True, untie_r=True,
)  # fmt: skip


def config_from_hf(c: dict[str, Any]) -> ModelConfig:
    """An XLNet config.json (defaults filled in) -> ModelConfig."""
    from .hf import _activation, _token_id

    c = {**HF_DEFAULTS, **c}
    for key, ok, what in (
        ("attn_type", c["attn_type"] == "bi", "only bidirectional attention (attn_type='bi')"),
        ("same_length", not c["same_length"], "same_length=false only"),
        ("reuse_len", not c["reuse_len"], "reuse_len=null only"),
        ("clamp_len", c["clamp_len"] is None or c["clamp_len"] <= 0, "no distance clamping"),
        ("untie_r", c["untie_r"], "per-layer attention biases (untie_r=true) only"),
    ):
        if not ok:
            raise CheckpointError(f"XLNet {key}={c[key]!r} is not supported: {what}")
    d_head = c.get("d_head") or c["d_model"] // c["n_head"]
    if d_head * c["n_head"] != c["d_model"]:
        raise CheckpointError(f"XLNet d_head={d_head} x n_head={c['n_head']} != d_model")
    return ModelConfig(
        arch="xlnet", family="xlnet", vocab_size=c["vocab_size"], max_seq_len=512,
        d_model=c["d_model"], n_layer=c["n_layer"], n_head=c["n_head"], d_ff=c["d_inner"],
        norm_eps=c["layer_norm_eps"], norm_position="post",
        activation=_activation(c["ff_activation"]), positions="none",
        init_std=c["initializer_range"], dropout=0.0, mem_len=c["mem_len"] or None,
        bi_data=bool(c["bi_data"]), tie_embeddings=bool(c["tie_word_embeddings"]),
        pad_token_id=c["pad_token_id"], bos_token_id=_token_id(c["bos_token_id"]),
        eos_token_id=_token_id(c["eos_token_id"]),
    )  # fmt: skip


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig (arch="xlnet") -> an XLNetLMHeadModel config.json dict."""
    from .hf import ACT_TO_HF

    if config.norm != "layernorm" or config.norm_position != "post" or config.ffn != "mlp":
        raise CheckpointError(f"{ARCHITECTURE} cannot represent this model: needs post-LN "
                              "LayerNorm blocks with a plain FFN")
    return {
        "architectures": [ARCHITECTURE], "model_type": "xlnet",
        "vocab_size": config.vocab_size, "d_model": config.d_model, "n_layer": config.n_layer,
        "n_head": config.n_head, "d_head": config.head_size, "d_inner": config.ffn_size,
        "ff_activation": ACT_TO_HF[config.activation], "attn_type": "bi",
        "initializer_range": config.init_std, "layer_norm_eps": config.norm_eps,
        "dropout": config.dropout, "mem_len": config.mem_len, "reuse_len": None,
        "bi_data": config.bi_data, "clamp_len": -1, "same_length": False, "untie_r": True,
        "tie_word_embeddings": config.tie_embeddings, "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
    }  # fmt: skip
