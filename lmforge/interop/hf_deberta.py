"""DeBERTa-v2 / v3 <-> transformers' DebertaV2Model / DebertaV2ForMaskedLM: the weight
table and the config translation.

hf.py reads and writes the files; this module only says which tensor is which and how
`config.json` maps to `ModelConfig` (an Encoder with attention="disentangled"). Every row
is a plain rename. The MLM head is the legacy one (`cls.predictions.*`, transformers'
default `legacy=true`) or the authors' (`lm_predictions.lm_head.*`, legacy=false); both
decode with the tied word embeddings, so their decoder copies are never read.

transformers implements no enhanced mask decoder (its `z_steps` is 0): a checkpoint loads
with emd off, and a model trained with `emd` is written without it (the MLM logits of the
file are those of the plain last layer; the body is exact).

Refused on load, one line each: relative_attention=false (no disentangled terms: that is
BERT), conv_kernel_size > 0 (DeBERTa-v2-xlarge's convolution beside the first layer),
an attention_head_size other than hidden_size / num_attention_heads, and pooler sizes
other than hidden_size.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from ..models.config import ModelConfig

MODEL_TYPE = "deberta-v2"
BASE = "DebertaV2Model"
MLM = "DebertaV2ForMaskedLM"
CLASSES = {BASE: ("none", False), MLM: ("mlm", False)}  # class -> (encoder_head, pooler)

_L = "encoder.layer.{i}."


def _body(p: str) -> list[tuple[str, str]]:
    rows = [
        ("tok_embed.weight", p + "embeddings.word_embeddings.weight"),
        ("pos_embed.weight", p + "embeddings.position_embeddings.weight"),
        ("type_embed.weight", p + "embeddings.token_type_embeddings.weight"),
        ("embed_proj.weight", p + "embeddings.embed_proj.weight"),
        ("embed_norm.weight", p + "embeddings.LayerNorm.weight"),
        ("embed_norm.bias", p + "embeddings.LayerNorm.bias"),
        ("rel_embed.weight", p + "encoder.rel_embeddings.weight"),
        ("rel_norm.weight", p + "encoder.LayerNorm.weight"),
        ("rel_norm.bias", p + "encoder.LayerNorm.bias"),
    ]
    layer = p + _L
    for kind in ("weight", "bias"):
        for ours, theirs in (
            ("attn.q", "attention.self.query_proj"), ("attn.k", "attention.self.key_proj"),
            ("attn.v", "attention.self.value_proj"),
            ("attn.pos_k", "attention.self.pos_key_proj"),
            ("attn.pos_q", "attention.self.pos_query_proj"),
            ("attn.out", "attention.output.dense"), ("attn_norm", "attention.output.LayerNorm"),
            ("ffn.fc1", "intermediate.dense"), ("ffn.fc2", "output.dense"),
            ("ffn_norm", "output.LayerNorm"),
        ):  # fmt: skip
            rows.append((f"blocks.{{i}}.{ours}.{kind}", f"{layer}{theirs}.{kind}"))
    return rows


def renames(architecture: str, legacy: bool = True) -> list[tuple[str, str]]:
    """The weight table of one class: (our tensor, transformers' tensor), "{i}" = layer."""
    if architecture == BASE:
        return _body("")  # a base-model file holds the body without a prefix
    head = "cls.predictions." if legacy else "lm_predictions.lm_head."
    transform = head + "transform." if legacy else head
    return _body("deberta.") + [
        ("mlm_head.dense.weight", transform + "dense.weight"),
        ("mlm_head.dense.bias", transform + "dense.bias"),
        ("mlm_head.norm.weight", transform + "LayerNorm.weight"),
        ("mlm_head.norm.bias", transform + "LayerNorm.bias"),
        ("mlm_head.bias", head + "bias"),
    ]


# Copies transformers may write of the tied decoder, and the v3 RTD head it drops.
TIED_OR_UNUSED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
UNUSED_PREFIXES = ("mask_predictions.",)

# transformers' DebertaV2Config defaults for keys save_pretrained may leave out.
HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=128100, hidden_size=1536, num_hidden_layers=24, num_attention_heads=24,
    intermediate_size=6144, hidden_act="gelu", hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=0,
    initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=False,
    max_relative_positions=-1, pad_token_id=0, bos_token_id=None, eos_token_id=None,
    position_biased_input=True, pos_att_type=None, pooler_dropout=0, pooler_hidden_act="gelu",
    legacy=True, position_buckets=-1, share_att_key=False, norm_rel_ebd="none",
    conv_kernel_size=0,
)  # fmt: skip


def _pos_att_type(value: Any) -> str:
    if value is None:
        return ""
    terms = value.lower().split("|") if isinstance(value, str) else list(value)
    terms = [t.strip() for t in terms if t.strip()]
    unknown = [t for t in terms if t not in ("c2p", "p2c")]
    if unknown:
        raise CheckpointError(f"DeBERTa pos_att_type {unknown[0]!r} is not supported "
                              "(c2p and p2c only)")
    return "|".join(t for t in ("c2p", "p2c") if t in terms)


def config_from_hf(c: dict[str, Any], architecture: str) -> ModelConfig:
    """A DeBERTa-v2 config.json (defaults filled in) -> ModelConfig."""
    from .hf import _activation, _token_id

    c = {**HF_DEFAULTS, **{k: v for k, v in c.items() if v is not None}}
    d, n_head = c["hidden_size"], c["num_attention_heads"]
    for key, ok, what in (
        ("relative_attention", c["relative_attention"],
         "without relative attention DeBERTa is BERT with another layout"),
        ("conv_kernel_size", not c["conv_kernel_size"],
         "the convolution layer beside the first block (DeBERTa-v2-xlarge) is not implemented"),
        ("attention_head_size", c.get("attention_head_size", d // n_head) == d // n_head,
         "the head size must be hidden_size / num_attention_heads"),
        ("pooler_hidden_size", c.get("pooler_hidden_size", d) == d,
         "the pooler must keep hidden_size"),
        ("norm_rel_ebd", set(str(c["norm_rel_ebd"]).lower().split("|")) <= {"none",
                                                                             "layer_norm"},
         "only none or layer_norm"),
    ):
        if not ok:
            raise CheckpointError(f"DeBERTa-v2 {key}={c.get(key)!r} is not supported: {what}")
    if c.get("embedding_size") not in (None, d) and architecture == MLM and not c["legacy"]:
        raise CheckpointError("DeBERTa-v2 legacy=false MLM heads need embedding_size = "
                              "hidden_size")
    head, pooler = CLASSES[architecture]
    max_rel = c["max_relative_positions"]
    return ModelConfig(
        arch="encoder", family="deberta", encoder_head=head, pooler=pooler,
        vocab_size=c["vocab_size"], max_seq_len=c["max_position_embeddings"], d_model=d,
        n_layer=c["num_hidden_layers"], n_head=n_head,
        d_ff=None if c["intermediate_size"] == 4 * d else c["intermediate_size"],
        norm="layernorm", norm_eps=c["layer_norm_eps"], norm_position="post",
        activation=_activation(c["hidden_act"]),
        positions="learned" if c["position_biased_input"] else "none",
        type_vocab_size=c["type_vocab_size"],
        embedding_size=c.get("embedding_size") if c.get("embedding_size") not in (None, d)
        else None,
        attention="disentangled", pos_att_type=_pos_att_type(c["pos_att_type"]),
        position_buckets=max(c["position_buckets"], 0),
        max_relative_positions=max_rel if max_rel >= 1 else None,
        share_att_key=bool(c["share_att_key"]),
        norm_rel_embed="layer_norm" in str(c["norm_rel_ebd"]).lower(),
        tie_embeddings=True, dropout=c["hidden_dropout_prob"],
        init_std=c["initializer_range"], bos_token_id=_token_id(c["bos_token_id"]),
        eos_token_id=_token_id(c["eos_token_id"]), pad_token_id=_token_id(c["pad_token_id"]),
    )  # fmt: skip


def architecture(config: ModelConfig) -> str:
    """DebertaV2Model (no head) or DebertaV2ForMaskedLM; other heads have no class here."""
    for arch, (head, _) in CLASSES.items():
        if config.encoder_head == head:
            return arch
    raise CheckpointError(f"no Hugging Face DeBERTa-v2 class for encoder_head="
                          f"{config.encoder_head!r} (supported: none, mlm)")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig (family deberta) -> a DebertaV2 config.json dict (legacy MLM head)."""
    from .hf import ACT_TO_HF

    arch = architecture(config)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{arch} cannot represent this model: {what}")

    need(config.norm == "layernorm" and config.norm_position == "post"
         and not config.has_final_norm and config.ffn == "mlp",
         "needs post-LN LayerNorm blocks with a plain FFN")
    need(not config.pooler, "no pooler (its classifier heads add their own ContextPooler)")
    need(config.tie_embeddings, "the MLM decoder must be tied to the embeddings")
    need(config.head_size * config.n_head == config.d_model, "head_dim * n_head == d_model")
    return {
        "architectures": [arch], "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size, "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "intermediate_size": config.ffn_size, "hidden_act": ACT_TO_HF[config.activation],
        "hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout,
        "max_position_embeddings": config.max_seq_len,
        "type_vocab_size": config.type_vocab_size, "initializer_range": config.init_std,
        "layer_norm_eps": config.norm_eps, "relative_attention": True,
        "max_relative_positions": config.max_relative_positions or -1,
        "position_buckets": config.position_buckets or -1,
        "position_biased_input": config.positions == "learned",
        "pos_att_type": list(config.pos_att_terms), "share_att_key": config.share_att_key,
        "norm_rel_ebd": "layer_norm" if config.norm_rel_embed else "none",
        "embedding_size": config.embed_size, "legacy": True,
        "pooler_hidden_size": config.d_model, "pooler_dropout": config.dropout,
        "pooler_hidden_act": ACT_TO_HF[config.activation],
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }  # fmt: skip


def legacy(hf: dict[str, Any], tensors: dict) -> bool:
    """Which MLM head a file holds: the authors' lm_predictions.* (v3 checkpoints, whose
    config.json may not say legacy=false) or transformers' legacy cls.predictions.*."""
    if any(name.startswith("lm_predictions.") for name in tensors):
        return False
    return bool(hf.get("legacy", True))


def unused(name: str) -> bool:
    """Tensors a DeBERTa file may hold that the loaded model does not use: the tied decoder
    copies, v3's RTD head (mask_predictions.*), and the position table transformers keeps
    (and ignores) when position_biased_input=false."""
    return (name in TIED_OR_UNUSED or name.startswith(UNUSED_PREFIXES)
            or name.endswith("embeddings.position_embeddings.weight"))
