"""Hugging Face checkpoints <-> lmforge models (decoder and encoder families).

    model = load_hf("hf_dir")       # config.json + model.safetensors (or a sharded index)
    save_hf(model, "out_dir")       # config.json + model.safetensors, written atomically

Supported classes: GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, GemmaForCausalLM; BertModel, BertForPreTraining, BertForMaskedLM,
RobertaForMaskedLM, ElectraForPreTraining, ElectraForMaskedLM, AlbertForPreTraining;
XLNetLMHeadModel (its table and config mapping in hf_xlnet.py); DebertaV2Model,
DebertaV2ForMaskedLM (hf_deberta.py).
Each family is two small pieces of data:

- a config translation, `config.json` dict <-> `ModelConfig` (`config_from_hf`,
  `config_to_hf`), with the transformers defaults for keys `save_pretrained` leaves out;
- a weight table: for every lmforge tensor, the HF tensor(s) it is made of. Several HF
  names are concatenated along dim 0 (q, k, v -> our fused qkv; gate, up -> our fc1);
  GPT-2's Conv1D stores weights as (in, out), so those are transposed.

Encoder MLM decoders are tied to the token embeddings, so their HF copies are never read
or written. Seq2seq families will add their own tables next to these. Tensors are only
ever read from safetensors files; pickled checkpoints are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..atomic import atomic_dir
from ..errors import CheckpointError, ConfigError
from ..models import build
from ..models.config import ModelConfig
from . import hf_deberta, hf_xlnet

# ----------------------------------------------------------------------------------------
# Weight tables. "{i}" is the layer index. Rows whose lmforge tensor does not exist in the
# model (biases a family lacks, an untied head) are skipped.


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]  # several: concatenated along dim 0 in this order
    transpose: bool = False  # GPT-2 Conv1D weights are (in, out)
    ffn: str | None = None  # only for this config.ffn (T5 v1.0 "mlp" vs v1.1 "gated")


def _rule(ours: str, *theirs: str, transpose: bool = False, ffn: str | None = None) -> Rule:
    return Rule(ours, theirs, transpose, ffn)


GPT2_TABLE = [
    _rule("tok_embed.weight", "transformer.wte.weight"),
    _rule("pos_embed.weight", "transformer.wpe.weight"),
    _rule("blocks.{i}.attn_norm.weight", "transformer.h.{i}.ln_1.weight"),
    _rule("blocks.{i}.attn_norm.bias", "transformer.h.{i}.ln_1.bias"),
    _rule("blocks.{i}.attn.qkv.weight", "transformer.h.{i}.attn.c_attn.weight", transpose=True),
    _rule("blocks.{i}.attn.qkv.bias", "transformer.h.{i}.attn.c_attn.bias"),
    _rule("blocks.{i}.attn.out.weight", "transformer.h.{i}.attn.c_proj.weight", transpose=True),
    _rule("blocks.{i}.attn.out.bias", "transformer.h.{i}.attn.c_proj.bias"),
    _rule("blocks.{i}.ffn_norm.weight", "transformer.h.{i}.ln_2.weight"),
    _rule("blocks.{i}.ffn_norm.bias", "transformer.h.{i}.ln_2.bias"),
    _rule("blocks.{i}.ffn.fc1.weight", "transformer.h.{i}.mlp.c_fc.weight", transpose=True),
    _rule("blocks.{i}.ffn.fc1.bias", "transformer.h.{i}.mlp.c_fc.bias"),
    _rule("blocks.{i}.ffn.fc2.weight", "transformer.h.{i}.mlp.c_proj.weight", transpose=True),
    _rule("blocks.{i}.ffn.fc2.bias", "transformer.h.{i}.mlp.c_proj.bias"),
    _rule("norm_out.weight", "transformer.ln_f.weight"),
    _rule("norm_out.bias", "transformer.ln_f.bias"),
    _rule("lm_head.weight", "lm_head.weight"),
]

_L = "model.layers.{i}."
LLAMA_TABLE = [  # also Mistral, Qwen2 and Gemma: same names, different flags
    _rule("tok_embed.weight", "model.embed_tokens.weight"),
    _rule("blocks.{i}.attn_norm.weight", _L + "input_layernorm.weight"),
    _rule(
        "blocks.{i}.attn.qkv.weight",
        _L + "self_attn.q_proj.weight",
        _L + "self_attn.k_proj.weight",
        _L + "self_attn.v_proj.weight",
    ),
    _rule(
        "blocks.{i}.attn.qkv.bias",
        _L + "self_attn.q_proj.bias",
        _L + "self_attn.k_proj.bias",
        _L + "self_attn.v_proj.bias",
    ),
    _rule("blocks.{i}.attn.out.weight", _L + "self_attn.o_proj.weight"),
    _rule("blocks.{i}.attn.out.bias", _L + "self_attn.o_proj.bias"),
    _rule("blocks.{i}.ffn_norm.weight", _L + "post_attention_layernorm.weight"),
    _rule("blocks.{i}.ffn.fc1.weight", _L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"),
    _rule("blocks.{i}.ffn.fc1.bias", _L + "mlp.gate_proj.bias", _L + "mlp.up_proj.bias"),
    _rule("blocks.{i}.ffn.fc2.weight", _L + "mlp.down_proj.weight"),
    _rule("blocks.{i}.ffn.fc2.bias", _L + "mlp.down_proj.bias"),
    _rule("norm_out.weight", "model.norm.weight"),
    _rule("lm_head.weight", "lm_head.weight"),
]


def _encoder_table(p: str, layer: str, names: dict[str, str], pooler: str) -> list[Rule]:
    """Embeddings + blocks + pooler of a BERT-style body under prefix `p` ("bert." ...).

    `layer` is the HF prefix of block {i}; `names` maps our block tensors to HF suffixes.
    """
    rows = [
        _rule("tok_embed.weight", p + "embeddings.word_embeddings.weight"),
        _rule("pos_embed.weight", p + "embeddings.position_embeddings.weight"),
        _rule("type_embed.weight", p + "embeddings.token_type_embeddings.weight"),
        _rule("embed_norm.weight", p + "embeddings.LayerNorm.weight"),
        _rule("embed_norm.bias", p + "embeddings.LayerNorm.bias"),
        _rule("pooler.dense.weight", p + pooler + ".weight"),
        _rule("pooler.dense.bias", p + pooler + ".bias"),
    ]
    for kind in ("weight", "bias"):
        qkv = (layer + names[n] + f".{kind}" for n in ("query", "key", "value"))
        rows.append(_rule(f"blocks.{{i}}.attn.qkv.{kind}", *qkv))
        for ours in ("attn.out", "attn_norm", "ffn.fc1", "ffn.fc2", "ffn_norm"):
            rows.append(_rule(f"blocks.{{i}}.{ours}.{kind}", layer + names[ours] + f".{kind}"))
    return rows


_BERT_LAYER = dict(
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    **{"attn.out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
       "ffn.fc1": "intermediate.dense", "ffn.fc2": "output.dense",
       "ffn_norm": "output.LayerNorm"},
)  # fmt: skip
_ALBERT_LAYER = dict(
    query="attention.query", key="attention.key", value="attention.value",
    **{"attn.out": "attention.dense", "attn_norm": "attention.LayerNorm", "ffn.fc1": "ffn",
       "ffn.fc2": "ffn_output", "ffn_norm": "full_layer_layer_norm"},
)  # fmt: skip


def _bert_body(p: str) -> list[Rule]:
    return _encoder_table(p, p + "encoder.layer.{i}.", _BERT_LAYER, "pooler.dense")


def _mlm_rows(dense: str, norm: str, bias: str) -> list[Rule]:
    """MLM transform + output bias; the decoder matrix is tied to the token embedding."""
    return [
        _rule("mlm_head.dense.weight", dense + ".weight"),
        _rule("mlm_head.dense.bias", dense + ".bias"),
        _rule("mlm_head.norm.weight", norm + ".weight"),
        _rule("mlm_head.norm.bias", norm + ".bias"),
        _rule("mlm_head.bias", bias),
    ]


def _pair_rows(name: str) -> list[Rule]:
    return [_rule("pair_head.weight", name + ".weight"), _rule("pair_head.bias", name + ".bias")]


BERT_TABLE = _bert_body("")  # BertModel files hold the body without a prefix
BERT_PRETRAINING_TABLE = [
    *_bert_body("bert."),
    *_mlm_rows("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
               "cls.predictions.bias"),
    *_pair_rows("cls.seq_relationship"),
]  # fmt: skip
BERT_MLM_TABLE = BERT_PRETRAINING_TABLE[:-2]
ROBERTA_MLM_TABLE = [
    *_bert_body("roberta."),
    *_mlm_rows("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
]
_ELECTRA_BODY = [
    *_bert_body("electra."),
    _rule("embed_proj.weight", "electra.embeddings_project.weight"),
    _rule("embed_proj.bias", "electra.embeddings_project.bias"),
]
ELECTRA_PRETRAINING_TABLE = [
    *_ELECTRA_BODY,
    _rule("rtd_head.dense.weight", "discriminator_predictions.dense.weight"),
    _rule("rtd_head.dense.bias", "discriminator_predictions.dense.bias"),
    _rule("rtd_head.out.weight", "discriminator_predictions.dense_prediction.weight"),
    _rule("rtd_head.out.bias", "discriminator_predictions.dense_prediction.bias"),
]
ELECTRA_MLM_TABLE = [
    *_ELECTRA_BODY,
    *_mlm_rows("generator_predictions.dense", "generator_predictions.LayerNorm",
               "generator_lm_head.bias"),
]  # fmt: skip
# ALBERT: one shared layer (num_hidden_groups = inner_group_num = 1), so block 0 only.
ALBERT_PRETRAINING_TABLE = [
    *_encoder_table(
        "albert.", "albert.encoder.albert_layer_groups.0.albert_layers.0.", _ALBERT_LAYER, "pooler"
    ),
    _rule("embed_proj.weight", "albert.encoder.embedding_hidden_mapping_in.weight"),
    _rule("embed_proj.bias", "albert.encoder.embedding_hidden_mapping_in.bias"),
    *_mlm_rows("predictions.dense", "predictions.LayerNorm", "predictions.bias"),
    *_pair_rows("sop_classifier.classifier"),
]
# Encoder-decoders: "{i}" is an encoder layer, "{j}" a decoder layer.
def _bart_layer(p: str, ours: str, cross: bool) -> list[Rule]:
    names = [("attn_norm", "self_attn_layer_norm"), ("ffn_norm", "final_layer_norm"),
             ("ffn.fc1", "fc1"), ("ffn.fc2", "fc2"), ("attn.out", "self_attn.out_proj")]
    if cross:
        names += [("cross_norm", "encoder_attn_layer_norm"), ("cross.q", "encoder_attn.q_proj"),
                  ("cross.out", "encoder_attn.out_proj")]  # fmt: skip
    rows = []
    for kind in ("weight", "bias"):
        rows += [_rule(f"{ours}.{a}.{kind}", f"{p}.{b}.{kind}") for a, b in names]
        qkv = [f"{p}.self_attn.{x}_proj.{kind}" for x in "qkv"]
        rows.append(_rule(f"{ours}.attn.qkv.{kind}", *qkv))
        if cross:
            kv = [f"{p}.encoder_attn.{x}_proj.{kind}" for x in "kv"]
            rows.append(_rule(f"{ours}.cross.kv.{kind}", *kv))
    return rows


BART_TABLE = [
    _rule("tok_embed.weight", "model.shared.weight"),
    _rule("enc_pos.weight", "model.encoder.embed_positions.weight"),
    _rule("dec_pos.weight", "model.decoder.embed_positions.weight"),
    _rule("enc_embed_norm.weight", "model.encoder.layernorm_embedding.weight"),
    _rule("enc_embed_norm.bias", "model.encoder.layernorm_embedding.bias"),
    _rule("dec_embed_norm.weight", "model.decoder.layernorm_embedding.weight"),
    _rule("dec_embed_norm.bias", "model.decoder.layernorm_embedding.bias"),
    *_bart_layer("model.encoder.layers.{i}", "encoder_blocks.{i}", cross=False),
    *_bart_layer("model.decoder.layers.{j}", "decoder_blocks.{j}", cross=True),
    _rule("logits_bias", "final_logits_bias"),
    _rule("lm_head.weight", "lm_head.weight"),
]


def _t5_stack(p: str, ours: str, cross: bool) -> list[Rule]:
    attn = f"{p}.layer.0.SelfAttention"
    ff = f"{p}.layer.{2 if cross else 1}"
    rows = [
        _rule(f"{ours}.attn_norm.weight", f"{p}.layer.0.layer_norm.weight"),
        _rule(f"{ours}.attn.qkv.weight", *(f"{attn}.{x}.weight" for x in "qkv")),
        _rule(f"{ours}.attn.out.weight", f"{attn}.o.weight"),
        _rule(f"{ours}.ffn_norm.weight", f"{ff}.layer_norm.weight"),
        _rule(f"{ours}.ffn.fc1.weight", f"{ff}.DenseReluDense.wi.weight", ffn="mlp"),
        _rule(
            f"{ours}.ffn.fc1.weight",
            f"{ff}.DenseReluDense.wi_0.weight",
            f"{ff}.DenseReluDense.wi_1.weight",
            ffn="gated",
        ),
        _rule(f"{ours}.ffn.fc2.weight", f"{ff}.DenseReluDense.wo.weight"),
    ]
    if cross:
        x = f"{p}.layer.1.EncDecAttention"
        rows += [
            _rule(f"{ours}.cross_norm.weight", f"{p}.layer.1.layer_norm.weight"),
            _rule(f"{ours}.cross.q.weight", f"{x}.q.weight"),
            _rule(f"{ours}.cross.kv.weight", f"{x}.k.weight", f"{x}.v.weight"),
            _rule(f"{ours}.cross.out.weight", f"{x}.o.weight"),
        ]
    return rows


_T5_BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
T5_TABLE = [
    _rule("tok_embed.weight", "shared.weight"),
    _rule("enc_rel_bias.embed.weight", "encoder." + _T5_BIAS),
    _rule("dec_rel_bias.embed.weight", "decoder." + _T5_BIAS),
    *_t5_stack("encoder.block.{i}", "encoder_blocks.{i}", cross=False),
    *_t5_stack("decoder.block.{j}", "decoder_blocks.{j}", cross=True),
    _rule("enc_norm_out.weight", "encoder.final_layer_norm.weight"),
    _rule("dec_norm_out.weight", "decoder.final_layer_norm.weight"),
    _rule("lm_head.weight", "lm_head.weight"),
]
# Copies of the shared embedding that transformers may write beside it.
SEQ2SEQ_TIED_NAMES = (
    "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
    "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
)  # fmt: skip

# Tied MLM decoders: transformers writes none or both of these; ours is the embedding.
TIED_HF_NAMES = (
    "cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.decoder.weight",
    "lm_head.decoder.bias", "generator_lm_head.weight", "predictions.decoder.weight",
    "predictions.decoder.bias",
)  # fmt: skip

# HF class -> (family, model_type, weight table)
ARCHITECTURES = {
    "GPT2LMHeadModel": ("gpt2", "gpt2", GPT2_TABLE),
    "LlamaForCausalLM": ("llama", "llama", LLAMA_TABLE),
    "MistralForCausalLM": ("mistral", "mistral", LLAMA_TABLE),
    "Qwen2ForCausalLM": ("qwen2", "qwen2", LLAMA_TABLE),
    "GemmaForCausalLM": ("gemma", "gemma", LLAMA_TABLE),
    "BertModel": ("bert", "bert", BERT_TABLE),
    "BertForPreTraining": ("bert", "bert", BERT_PRETRAINING_TABLE),
    "BertForMaskedLM": ("bert", "bert", BERT_MLM_TABLE),
    "RobertaForMaskedLM": ("roberta", "roberta", ROBERTA_MLM_TABLE),
    "ElectraForPreTraining": ("electra", "electra", ELECTRA_PRETRAINING_TABLE),
    "ElectraForMaskedLM": ("electra", "electra", ELECTRA_MLM_TABLE),
    "AlbertForPreTraining": ("albert", "albert", ALBERT_PRETRAINING_TABLE),
    "BartForConditionalGeneration": ("bart", "bart", BART_TABLE),
    "T5ForConditionalGeneration": ("t5", "t5", T5_TABLE),
    hf_xlnet.ARCHITECTURE: ("xlnet", "xlnet", [_rule(o, t) for o, t in hf_xlnet.RENAMES]),
    **{arch: ("deberta", hf_deberta.MODEL_TYPE, [_rule(o, t) for o, t in
                                                 hf_deberta.renames(arch)])
       for arch in hf_deberta.CLASSES},
}
SEQ2SEQ_CLASSES = ("BartForConditionalGeneration", "T5ForConditionalGeneration")
# Encoder class -> (encoder_head, has a pooler)
ENCODER_CLASSES = {
    "BertModel": ("none", True),
    "BertForPreTraining": ("mlm_nsp", True),
    "BertForMaskedLM": ("mlm", False),
    "RobertaForMaskedLM": ("mlm", False),
    "ElectraForPreTraining": ("rtd", False),
    "ElectraForMaskedLM": ("mlm", False),
    "AlbertForPreTraining": ("mlm_sop", True),
}
FAMILY_TO_ARCH = {
    family: arch for arch, (family, _, _) in ARCHITECTURES.items() if arch not in ENCODER_CLASSES
}
FAMILY_TO_ARCH["gpt3"] = "GPT2LMHeadModel"  # GPT-3 shapes are GPT-2's layout
MODEL_TYPE_TO_ARCH = {
    model_type: arch
    for arch, (_, model_type, _) in ARCHITECTURES.items()
    if arch not in ENCODER_CLASSES
}
MODEL_TYPE_TO_ARCH.update(
    bert="BertModel", roberta="RobertaForMaskedLM", electra="ElectraForPreTraining",
    albert="AlbertForPreTraining",
)  # fmt: skip

# HF tensors we know and do not need (causal-mask buffers of old GPT-2 files, RoPE tables).
IGNORED_SUFFIXES = (
    ".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq",
    "embeddings.position_ids", "embeddings.token_type_ids",  # BERT-family buffers
    "EncDecAttention.relative_attention_bias.weight",  # in old T5 files, never used
)  # fmt: skip


def _expand(table: list[Rule], n_layer: int, n_decoder_layer: int = 0) -> list[Rule]:
    rules = []
    for rule in table:
        key, n = ("j", n_decoder_layer) if "{j}" in rule.ours else ("i", n_layer)
        layers = range(n) if "{" + key + "}" in rule.ours else [None]
        for i in layers:
            rules.append(
                Rule(
                    rule.ours.format(**{key: i}),
                    tuple(name.format(**{key: i}) for name in rule.theirs),
                    rule.transpose,
                    rule.ffn,
                )
            )
    return rules


def _rules_for(model_keys: set[str], config: ModelConfig, table: list[Rule]) -> list[Rule]:
    """The table's rows that apply to this model (its own tensors, the head only if untied)."""
    return [
        r
        for r in _expand(table, config.n_layer, config.decoder_layers)
        if r.ours in model_keys
        and r.ffn in (None, config.ffn)
        and not (r.ours in ("lm_head.weight", "mlm_head.decoder.weight") and config.tie_embeddings)
    ]


# ----------------------------------------------------------------------------------------
# Config translation

ACT_FROM_HF = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "relu2": "relu2",
    "swish": "silu",
}
ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu",
             "relu2": "relu2"}

# transformers' defaults for keys `save_pretrained` omits when they equal the default.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "bart": dict(
        vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
        decoder_ffn_dim=4096, activation_function="gelu", max_position_embeddings=1024,
        scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, tie_word_embeddings=True,
    ),
    "t5": dict(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None,
        num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6, feed_forward_proj="relu", tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=None,
    ),
    "gpt2": dict(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
        activation_function="gelu_new", resid_pdrop=0.1, layer_norm_epsilon=1e-5,
        bos_token_id=50256, eos_token_id=50256, pad_token_id=None, tie_word_embeddings=True,
    ),
    "llama": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
        pad_token_id=None, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    ),
    "mistral": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=None, hidden_act="silu",
        max_position_embeddings=131072, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
        pad_token_id=None, tie_word_embeddings=False, sliding_window=4096,
    ),
    "qwen2": dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=None, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=None,
        eos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
        use_sliding_window=False,
    ),
    "gemma": dict(
        vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=16, head_dim=256,
        hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
        attention_bias=False,
    ),
    "bert": dict(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
        max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
        bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
        position_embedding_type="absolute",
    ),
    "roberta": dict(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
        max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, tie_word_embeddings=True,
        position_embedding_type="absolute",
    ),
    "electra": dict(
        vocab_size=30522, embedding_size=128, hidden_size=256, num_hidden_layers=12,
        num_attention_heads=4, intermediate_size=1024, hidden_act="gelu",
        hidden_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=0, bos_token_id=None, eos_token_id=None,
        tie_word_embeddings=True, position_embedding_type="absolute",
    ),
    "albert": dict(
        vocab_size=30000, embedding_size=128, hidden_size=4096, num_hidden_layers=12,
        num_hidden_groups=1, num_attention_heads=64, intermediate_size=16384, inner_group_num=1,
        hidden_act="gelu_new", hidden_dropout_prob=0.0, max_position_embeddings=512,
        type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, tie_word_embeddings=True, position_embedding_type="absolute",
    ),
}  # fmt: skip


def _token_id(value: Any) -> int | None:
    """HF allows a list of EOS ids; lmforge keeps the first (generation accepts lists)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _architecture(hf: dict[str, Any]) -> str:
    archs = hf.get("architectures") or []
    if archs:
        arch = archs[0]
    elif hf.get("model_type") in MODEL_TYPE_TO_ARCH:
        arch = MODEL_TYPE_TO_ARCH[hf["model_type"]]
    else:
        raise CheckpointError("config.json names no architecture and no known model_type")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"architecture {arch} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    return arch


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A transformers `config.json` dict -> `ModelConfig`."""
    family, model_type, _ = ARCHITECTURES[_architecture(hf)]
    c = {**HF_DEFAULTS.get(model_type, {}), **{k: v for k, v in hf.items() if v is not None}}
    c.setdefault("pad_token_id", None)
    try:
        if model_type == "xlnet":  # its own defaults and refusals (hf_xlnet.py)
            return hf_xlnet.config_from_hf(hf)
        if model_type == hf_deberta.MODEL_TYPE:  # the same (hf_deberta.py)
            return hf_deberta.config_from_hf(hf, _architecture(hf))
        if _architecture(hf) in SEQ2SEQ_CLASSES:
            return _seq2seq_config_from_hf(c, family)
        if _architecture(hf) in ENCODER_CLASSES:
            return _encoder_config_from_hf(c, _architecture(hf))
        if model_type == "gpt2":
            return _canonical(_gpt2_config_from_hf(c))
        return _canonical(_llama_config_from_hf(c, family))
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"config.json does not describe a valid {family} model: {e}") from e


def _canonical(config: ModelConfig) -> ModelConfig:
    """Sizes that equal their defaults become None, as in the presets (so round trips are
    exact: config_from_hf(config_to_hf(c)) == c)."""
    d, n_head = config.d_model, config.n_head
    return config.replace(
        d_ff=None if config.ffn_size == 4 * d else config.d_ff,
        head_dim=None if d % n_head == 0 and config.head_size == d // n_head else config.head_dim,
        n_kv_head=None if config.kv_heads == n_head else config.n_kv_head,
        qkv_bias=None if config.has_qkv_bias == config.bias else config.qkv_bias,
    )


def _activation(name: str) -> str:
    if name not in ACT_FROM_HF:
        raise CheckpointError(f"activation {name!r} is not supported")
    return ACT_FROM_HF[name]


def _gpt2_config_from_hf(c: dict[str, Any]) -> ModelConfig:
    if c.get("scale_attn_by_inverse_layer_idx") or c.get("scale_attn_weights") is False:
        raise CheckpointError("GPT-2 attention-scaling variants are not supported")
    if c.get("add_cross_attention"):
        raise CheckpointError("GPT-2 with cross-attention is not supported")
    return ModelConfig(
        family="gpt2",
        vocab_size=c["vocab_size"],
        max_seq_len=c["n_positions"],
        d_model=c["n_embd"],
        n_layer=c["n_layer"],
        n_head=c["n_head"],
        d_ff=c["n_inner"],
        norm="layernorm",
        norm_eps=c["layer_norm_epsilon"],
        activation=_activation(c["activation_function"]),
        positions="learned",
        dropout=c["resid_pdrop"],
        tie_embeddings=c["tie_word_embeddings"],
        bos_token_id=_token_id(c["bos_token_id"]),
        eos_token_id=_token_id(c["eos_token_id"]),
        pad_token_id=_token_id(c["pad_token_id"]),
    )


def _rope_from_hf(c: dict[str, Any]) -> tuple[float, dict | None]:
    # transformers 5 nests RoPE settings in `rope_parameters`; older files use a top-level
    # `rope_theta` plus an optional `rope_scaling` dict.
    params = c.get("rope_parameters") or c.get("rope_scaling") or {}
    theta = params.get("rope_theta", c.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type == "llama3":
        scaling = dict(
            factor=params["factor"],
            low_freq_factor=params["low_freq_factor"],
            high_freq_factor=params["high_freq_factor"],
            original_max_seq_len=params.get(
                "original_max_position_embeddings", c["max_position_embeddings"]
            ),
        )
        return theta, scaling
    raise CheckpointError(f"RoPE type {rope_type!r} is not supported (default, llama3)")


def _llama_config_from_hf(c: dict[str, Any], family: str) -> ModelConfig:
    n_head = c["num_attention_heads"]
    theta, scaling = _rope_from_hf(c)
    act = c.get("hidden_activation") or c["hidden_act"]
    if family == "gemma" and act == "gelu":
        act = "gelu_pytorch_tanh"  # transformers' own rule: legacy Gemma files meant tanh
    qkv_bias = bias = False
    if family == "llama":
        qkv_bias = c["attention_bias"]  # on q, k, v and o
        if c["mlp_bias"] != qkv_bias:
            raise CheckpointError("Llama with attention_bias != mlp_bias is not supported")
        bias = qkv_bias
    elif family == "qwen2":
        qkv_bias = True
        if c.get("use_sliding_window") or "sliding_attention" in (c.get("layer_types") or []):
            raise CheckpointError("Qwen2 per-layer sliding-window attention is not supported")
    elif family == "gemma" and c["attention_bias"]:
        raise CheckpointError("Gemma with attention_bias is not supported")
    return ModelConfig(
        family=family,
        vocab_size=c["vocab_size"],
        max_seq_len=c["max_position_embeddings"],
        d_model=c["hidden_size"],
        n_layer=c["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=c.get("num_key_value_heads") or n_head,
        head_dim=c.get("head_dim") or c["hidden_size"] // n_head,
        d_ff=c["intermediate_size"],
        norm="rmsnorm",
        norm_eps=c["rms_norm_eps"],
        norm_unit_offset=family == "gemma",
        ffn="gated",
        activation=_activation(act),
        bias=bias,
        qkv_bias=qkv_bias,
        positions="rope",
        rope_theta=float(theta),
        rope_scaling=scaling,
        sliding_window=c.get("sliding_window") if family == "mistral" else None,
        tie_embeddings=c["tie_word_embeddings"],
        embed_scale=family == "gemma",
        dropout=c.get("attention_dropout", 0.0),
        bos_token_id=_token_id(c["bos_token_id"]),
        eos_token_id=_token_id(c["eos_token_id"]),
        pad_token_id=_token_id(c["pad_token_id"]),
    )


def _encoder_config_from_hf(c: dict[str, Any], arch: str) -> ModelConfig:
    family = ARCHITECTURES[arch][0]
    head, pooler = ENCODER_CLASSES[arch]
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError("only absolute position embeddings are supported")
    if family == "albert" and (c["num_hidden_groups"] != 1 or c["inner_group_num"] != 1):
        raise CheckpointError("ALBERT with num_hidden_groups or inner_group_num != 1")
    act = _activation(c["hidden_act"])
    fixed_gelu = family == "roberta" or arch == "ElectraForMaskedLM"
    if fixed_gelu and head == "mlm" and act != "gelu":  # their MLM heads always use gelu
        raise CheckpointError(f"{arch} with hidden_act={c['hidden_act']!r} is not supported")
    embedding_size = c.get("embedding_size")
    if family == "electra" and embedding_size == c["hidden_size"]:
        embedding_size = None  # no embeddings_project layer then
    pad = _token_id(c["pad_token_id"])
    return ModelConfig(
        arch="encoder",
        family=family,
        encoder_head=head,
        pooler=pooler,
        vocab_size=c["vocab_size"],
        max_seq_len=c["max_position_embeddings"],
        d_model=c["hidden_size"],
        n_layer=c["num_hidden_layers"],
        n_head=c["num_attention_heads"],
        d_ff=None if c["intermediate_size"] == 4 * c["hidden_size"] else c["intermediate_size"],
        norm="layernorm",
        norm_eps=c["layer_norm_eps"],
        norm_position="post",
        activation=act,
        positions="learned",
        type_vocab_size=c["type_vocab_size"],
        position_offset=pad + 1 if family == "roberta" else None,
        embedding_size=embedding_size if family in ("electra", "albert") else None,
        share_layers=family == "albert",
        tie_embeddings=c["tie_word_embeddings"],
        dropout=c["hidden_dropout_prob"],
        init_std=c.get("initializer_range", 0.02),
        bos_token_id=_token_id(c["bos_token_id"]),
        eos_token_id=_token_id(c["eos_token_id"]),
        pad_token_id=pad,
    )


ENCODER_ARCH = {
    ("bert", "none"): "BertModel",
    ("bert", "mlm_nsp"): "BertForPreTraining",
    ("bert", "mlm"): "BertForMaskedLM",
    ("roberta", "mlm"): "RobertaForMaskedLM",
    ("electra", "rtd"): "ElectraForPreTraining",
    ("electra", "mlm"): "ElectraForMaskedLM",
    ("albert", "mlm_sop"): "AlbertForPreTraining",
}


def encoder_family(config: ModelConfig) -> str:
    """bert, roberta, electra or albert: the config's family, or guessed from its flags."""
    if config.family is not None:
        return config.family
    if config.share_layers:
        return "albert"
    if config.position_offset is not None:
        return "roberta"
    return "electra" if config.embedding_size is not None else "bert"


def _encoder_architecture(config: ModelConfig) -> str:
    family = encoder_family(config)
    key = (family, config.encoder_head)
    if key not in ENCODER_ARCH:
        known = ", ".join(f"{f}+{h}" for f, h in ENCODER_ARCH)
        raise CheckpointError(
            f"no Hugging Face class for family={family!r} with encoder_head="
            f"{config.encoder_head!r} (supported: {known})"
        )
    return ENCODER_ARCH[key]


def _encoder_config_to_hf(config: ModelConfig) -> dict[str, Any]:
    arch = _encoder_architecture(config)
    family = ARCHITECTURES[arch][0]
    head, pooler = ENCODER_CLASSES[arch]

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{arch} cannot represent this model: {what}")

    need(config.norm_position == "post" and not config.has_final_norm, "needs post-LN")
    need(config.norm == "layernorm" and config.ffn == "mlp", "needs LayerNorm and a plain FFN")
    need(config.positions == "learned", "positions must be learned")
    need(config.bias and config.has_qkv_bias, "needs biases")
    need(config.kv_heads == config.n_head, "no grouped-query attention")
    need(config.head_size * config.n_head == config.d_model, "head_dim * n_head == d_model")
    need(config.pooler == pooler, f"pooler must be {pooler}")
    need(config.tie_embeddings, "the MLM decoder must be tied to the embeddings")
    need(config.type_vocab_size > 0, "needs token-type embeddings")
    need(config.share_layers == (family == "albert"), "only ALBERT shares layers")
    need((config.position_offset is not None) == (family == "roberta"), "position_offset")
    if family in ("bert", "roberta"):
        need(config.embedding_size is None, "no factorized embedding_size")
    if family == "albert":
        need(config.embedding_size is not None, "ALBERT needs embedding_size")
    if family == "roberta" or arch == "ElectraForMaskedLM":
        need(config.activation == "gelu", "activation must be gelu")
    hf = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=config.ffn_size,
        hidden_act=ACT_TO_HF[config.activation],
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=config.max_seq_len,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.norm_eps,
        initializer_range=config.init_std,
        position_embedding_type="absolute",
        tie_word_embeddings=True,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    if family in ("electra", "albert"):
        hf["embedding_size"] = config.embed_size
    if family == "albert":
        hf.update(num_hidden_groups=1, inner_group_num=1, classifier_dropout_prob=config.dropout)
    return {"architectures": [arch], "model_type": family, **hf}


def hf_architecture(config: ModelConfig) -> str:
    """The transformers class that can hold this config's model."""
    if config.attention == "disentangled":
        return hf_deberta.architecture(config)
    if config.arch == "encoder":
        return _encoder_architecture(config)
    if config.arch == "xlnet":
        return hf_xlnet.ARCHITECTURE
    if config.arch == "seq2seq":
        if config.relative_attention_num_buckets or config.family == "t5":
            return "T5ForConditionalGeneration"
        return "BartForConditionalGeneration"
    family = config.family
    if family is None:  # a hand-made config: guess from the flags
        if config.norm == "layernorm":
            family = "gpt2"
        elif config.norm_unit_offset:
            family = "gemma"
        elif config.sliding_window is not None:
            family = "mistral"
        elif config.has_qkv_bias and not config.bias:
            family = "qwen2"
        else:
            family = "llama"
    if family not in FAMILY_TO_ARCH:
        raise CheckpointError(f"family {family!r} has no Hugging Face export (GPT-1 is post-LN)")
    return FAMILY_TO_ARCH[family]


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """`ModelConfig` -> a transformers `config.json` dict (every key written out)."""
    for name in ("qk_norm", "logit_softcap"):  # no family we export has them
        if getattr(config, name):
            raise CheckpointError(
                f"a model with {name}={getattr(config, name)!r} has no transformers "
                "equivalent among the exported families; keep it as an lmforge run")
    if config.attention == "disentangled":
        return hf_deberta.config_to_hf(config)
    if config.arch == "encoder":
        return _encoder_config_to_hf(config)
    if config.arch == "seq2seq":
        return _seq2seq_config_to_hf(config)
    if config.arch == "xlnet":
        return hf_xlnet.config_to_hf(config)
    arch = hf_architecture(config)
    family, model_type, _ = ARCHITECTURES[arch]

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{arch} cannot represent this model: {what}")

    need(config.norm_position == "pre" and config.has_final_norm, "needs pre-LN + final norm")
    need(config.sliding_window is None or family == "mistral", "sliding_window")
    ids = dict(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    if model_type == "gpt2":
        need(config.norm == "layernorm", "norm must be layernorm")
        need(config.positions == "learned", "positions must be learned")
        need(config.ffn == "mlp", "ffn must be mlp")
        need(config.bias and config.has_qkv_bias, "needs biases")
        need(config.kv_heads == config.n_head, "no grouped-query attention")
        need(config.head_size * config.n_head == config.d_model, "head_dim * n_head == d_model")
        need(not config.embed_scale, "embed_scale")
        hf = dict(
            vocab_size=config.vocab_size,
            n_positions=config.max_seq_len,
            n_ctx=config.max_seq_len,
            n_embd=config.d_model,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=config.ffn_size,
            activation_function=ACT_TO_HF[config.activation],
            layer_norm_epsilon=config.norm_eps,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            initializer_range=config.init_std,
            tie_word_embeddings=config.tie_embeddings,
            **ids,
        )
    else:
        need(config.norm == "rmsnorm", "norm must be rmsnorm")
        need(config.positions == "rope", "positions must be rope")
        need(config.ffn == "gated", "ffn must be gated")
        need(config.norm_unit_offset == (family == "gemma"), "RMSNorm (1 + w) is Gemma's")
        need(config.embed_scale == (family == "gemma"), "embedding scale is Gemma's")
        if family == "llama":
            need(config.has_qkv_bias == config.bias, "qkv_bias must equal bias")
        elif family == "qwen2":
            need(config.has_qkv_bias and not config.bias, "Qwen2 has q/k/v biases only")
        else:
            need(not config.has_qkv_bias and not config.bias, "no biases")
        rope = {"rope_type": "default", "rope_theta": config.rope_theta}
        if config.rope_scaling is not None:
            s = config.rope_scaling
            rope.update(
                rope_type="llama3",
                factor=s["factor"],
                low_freq_factor=s["low_freq_factor"],
                high_freq_factor=s["high_freq_factor"],
                original_max_position_embeddings=s["original_max_seq_len"],
            )
        hf = dict(
            vocab_size=config.vocab_size,
            max_position_embeddings=config.max_seq_len,
            hidden_size=config.d_model,
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            num_key_value_heads=config.kv_heads,
            head_dim=config.head_size,
            intermediate_size=config.ffn_size,
            hidden_act="gelu_pytorch_tanh" if config.activation == "gelu_tanh" else "silu",
            rms_norm_eps=config.norm_eps,
            rope_theta=config.rope_theta,
            rope_parameters=rope,
            attention_dropout=config.dropout,
            initializer_range=config.init_std,
            tie_word_embeddings=config.tie_embeddings,
            **ids,
        )
        if family in ("llama", "mistral", "qwen2"):
            need(config.activation == "silu", "activation must be silu (SwiGLU)")
        if family == "gemma":
            need(config.activation == "gelu_tanh", "activation must be gelu_tanh (GeGLU)")
        if family == "llama":
            hf.update(attention_bias=config.bias, mlp_bias=config.bias)
        if family == "gemma":
            hf.update(attention_bias=False)
        if family == "mistral":
            hf.update(sliding_window=config.sliding_window)
        if family == "qwen2":
            hf.update(use_sliding_window=False, sliding_window=None)
    return {"architectures": [arch], "model_type": model_type, **hf}


# ----------------------------------------------------------------------------------------
# Encoder-decoders (BART, T5)


def _depth(decoder: int | None, encoder: int) -> int | None:
    """A decoder size (layers, heads, FFN width) as the presets write it: None when it
    equals the encoder's."""
    return None if decoder in (None, encoder) else decoder


def _seq2seq_config_from_hf(c: dict[str, Any], family: str) -> ModelConfig:
    ids = dict(
        bos_token_id=_token_id(c.get("bos_token_id")),
        eos_token_id=_token_id(c["eos_token_id"]),
        pad_token_id=c["pad_token_id"],
        decoder_start_token_id=c.get("decoder_start_token_id"),
    )
    if family == "bart":
        if c.get("normalize_before") or c.get("add_final_layer_norm"):
            raise CheckpointError("pre-LN BART variants (mBART) are not supported")
        n_head, d_ff = c["encoder_attention_heads"], c["encoder_ffn_dim"]
        return ModelConfig(
            arch="seq2seq", family="bart", vocab_size=c["vocab_size"],
            max_seq_len=c["max_position_embeddings"], d_model=c["d_model"],
            n_layer=c["encoder_layers"],
            n_decoder_layer=_depth(c["decoder_layers"], c["encoder_layers"]),
            n_head=n_head, d_ff=d_ff, norm="layernorm",
            n_decoder_head=_depth(c["decoder_attention_heads"], n_head),
            d_decoder_ff=_depth(c["decoder_ffn_dim"], d_ff),
            norm_eps=1e-5, norm_position="post", final_norm=False,
            activation=_activation(c["activation_function"]), positions="learned",
            position_offset=2, embed_norm=True, final_logits_bias=True,
            embed_scale=bool(c["scale_embedding"]),
            tie_embeddings=bool(c.get("tie_word_embeddings", True)), **ids,
        )  # fmt: skip
    act = c["feed_forward_proj"]
    gated = act.startswith("gated-")
    if ids["decoder_start_token_id"] is None:
        ids["decoder_start_token_id"] = ids["pad_token_id"]  # T5 starts decoding with pad
    tied = bool(c.get("tie_word_embeddings", True))
    # v1.1 files say tie_word_embeddings=false, meaning both "untied head" and "no d^-0.5
    # rescale"; transformers >= 5 keeps the rescale as its own key and always ties the head.
    scale = bool(c.get("scale_decoder_outputs", tied))
    return ModelConfig(
        arch="seq2seq", family="t5", vocab_size=c["vocab_size"], max_seq_len=512,
        d_model=c["d_model"], n_layer=c["num_layers"],
        n_decoder_layer=_depth(c.get("num_decoder_layers"), c["num_layers"]), n_head=c["num_heads"],
        head_dim=c["d_kv"], d_ff=c["d_ff"], norm="rmsnorm", norm_eps=c["layer_norm_epsilon"],
        norm_position="pre", final_norm=True, ffn="gated" if gated else "mlp",
        activation="gelu_tanh" if act == "gated-gelu" else _activation(act.removeprefix("gated-")),
        bias=False, positions="none",
        relative_attention_num_buckets=c["relative_attention_num_buckets"],
        relative_attention_max_distance=c["relative_attention_max_distance"],
        scale_attention=False, scale_decoder_outputs=scale, tie_embeddings=tied,
        initializer_factor=c.get("initializer_factor", 1.0), **ids,
    )  # fmt: skip


def _seq2seq_config_to_hf(config: ModelConfig) -> dict[str, Any]:
    arch = hf_architecture(config)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{arch} cannot represent this model: {what}")

    ids = dict(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, decoder_start_token_id=config.decoder_start_token_id,
    )  # fmt: skip
    n_dec = config.decoder_layers
    if arch == "BartForConditionalGeneration":
        need(config.norm == "layernorm" and config.norm_position == "post", "needs post-LN")
        need(not config.has_final_norm and config.embed_norm, "needs layernorm_embedding only")
        need(config.position_offset == 2 and config.bias and config.ffn == "mlp", "BART layout")
        need(config.final_logits_bias and config.scale_attention, "BART layout")
        need(config.positions == "learned", "positions must be learned")
        return {
            "architectures": [arch], "model_type": "bart", "vocab_size": config.vocab_size,
            "max_position_embeddings": config.max_seq_len, "d_model": config.d_model,
            "encoder_layers": config.n_layer, "decoder_layers": n_dec,
            "encoder_attention_heads": config.n_head,
            "decoder_attention_heads": config.decoder_heads,
            "encoder_ffn_dim": config.ffn_size, "decoder_ffn_dim": config.decoder_ffn_size,
            "activation_function": ACT_TO_HF[config.activation],
            "scale_embedding": config.embed_scale, "tie_word_embeddings": config.tie_embeddings,
            "init_std": config.init_std, "dropout": config.dropout, "attention_dropout": 0.0,
            "activation_dropout": 0.0, "is_encoder_decoder": True, **ids,
        }  # fmt: skip
    need(config.norm == "rmsnorm" and config.norm_position == "pre", "needs pre-RMSNorm")
    need(config.positions == "none" and config.relative_attention_num_buckets > 0,
         "positions must be T5's relative bias")  # fmt: skip
    need(not config.bias and not config.scale_attention, "T5 has no biases, no 1/sqrt(hs)")
    need(config.tie_embeddings or not config.scale_decoder_outputs, "rescale needs a tied head")
    need(config.decoder_heads == config.n_head and config.decoder_ffn_size == config.ffn_size,
         "T5Config has one num_heads and d_ff for both stacks")  # fmt: skip
    act = ACT_TO_HF[config.activation]
    if config.ffn == "gated" and act == "gelu_new":
        act = "gelu"  # T5Config reads "gated-gelu" as gelu_new (tanh) on the gate
    return {
        "architectures": [arch], "model_type": "t5", "vocab_size": config.vocab_size,
        "d_model": config.d_model, "d_kv": config.head_size, "d_ff": config.ffn_size,
        "num_layers": config.n_layer, "num_decoder_layers": n_dec, "num_heads": config.n_head,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "layer_norm_epsilon": config.norm_eps, "dropout_rate": config.dropout,
        "feed_forward_proj": f"gated-{act}" if config.ffn == "gated" else act,
        "tie_word_embeddings": config.tie_embeddings, "is_encoder_decoder": True,
        "scale_decoder_outputs": config.scale_decoder_outputs,
        "initializer_factor": config.initializer_factor, **ids,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------
# Reading and writing


def _read_tensors(path: Path) -> dict[str, Tensor]:
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
        files = [path / name for name in sorted(set(weight_map.values()))]
    elif any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise CheckpointError(
            f"{path}: only safetensors checkpoints are read (pickle files are never loaded)"
        )
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for file in files:
        if not file.exists():
            raise CheckpointError(f"{file}: shard listed in the index is missing")
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from e
    return tensors


def load_hf(path: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Read a transformers checkpoint folder; return the lmforge model, in eval mode.

    Weights keep the checkpoint's dtype unless `dtype` is given.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path}: no config.json (is this a Hugging Face model folder?)")
    try:
        hf = json.loads(config_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from e
    try:
        arch = _architecture(hf)
        config = config_from_hf(hf)
    except CheckpointError as e:
        raise CheckpointError(f"{config_file}: {e}") from e
    tensors = _read_tensors(path)
    if arch == "GPT2LMHeadModel" and "wte.weight" in tensors:  # original OpenAI files
        tensors = {
            (k if k.startswith("lm_head.") else "transformer." + k): v for k, v in tensors.items()
        }

    table = ARCHITECTURES[arch][2]
    if arch in hf_deberta.CLASSES:  # which MLM head layout the file holds
        table = [_rule(o, t) for o, t in hf_deberta.renames(arch, hf_deberta.legacy(hf, tensors))]
    with torch.device("meta"):  # no memory for weights that are about to be replaced
        model = build(config)
    expected = model.state_dict()
    state, used = {}, set()
    for rule in _rules_for(set(expected), config, table):
        parts = []
        for name in rule.theirs:
            if name not in tensors:
                raise CheckpointError(f"{path}: missing weight {name!r} for {arch}")
            parts.append(tensors[name].t() if rule.transpose else tensors[name])
            used.add(name)
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tensor.shape != expected[rule.ours].shape:
            got = [tuple(tensors[n].shape) for n in rule.theirs]
            raise CheckpointError(
                f"{path}: weight {', '.join(rule.theirs)} has shape {', '.join(map(str, got))}, "
                f"which does not fit config.json (expected {tuple(expected[rule.ours].shape)})"
            )
        state[rule.ours] = tensor.contiguous()
    unexpected = [
        name
        for name in tensors
        if name not in used
        and not name.endswith(IGNORED_SUFFIXES)
        and not (name in ("lm_head.weight", "lm_loss.weight") and config.tie_embeddings)
        and not (name in TIED_HF_NAMES and config.arch == "encoder")
        and not (name in SEQ2SEQ_TIED_NAMES and config.arch == "seq2seq")
        and not (arch in hf_deberta.CLASSES and hf_deberta.unused(name))
    ]
    if unexpected:
        raise CheckpointError(
            f"{path}: tensor {unexpected[0]!r} (and {len(unexpected) - 1} more) does not belong "
            f"to {arch} as configured"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.reset_buffers()
    unfilled = [name for name, p in model.named_parameters() if p.is_meta]
    if unfilled:  # a table row is missing: a bug here, not in the checkpoint
        raise CheckpointError(f"{path}: no {arch} weight maps to lmforge's {unfilled[0]!r}")
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _split_sizes(config: ModelConfig, ours: str, n_parts: int) -> list[int]:
    if ours.startswith("decoder_blocks."):  # an encoder-decoder's decoder: its own sizes
        inner = config.decoder_heads * config.decoder_head_size
        if ".cross.kv." in ours:
            return [inner] * 2
        if ".attn.qkv." in ours:
            return [inner] * 3
        return [config.decoder_ffn_size] * n_parts
    if ".attn.qkv." in ours:
        q, kv = config.n_head * config.head_size, config.kv_heads * config.head_size
        return [q, kv, kv]
    return [config.ffn_size] * n_parts  # fc1 = [gate; up]


def hf_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """The model's weights under transformers names and layouts (fresh tensors)."""
    return table_state_dict(model, ARCHITECTURES[hf_architecture(model.config)][2])


def table_state_dict(model: torch.nn.Module, table: list[Rule]) -> dict[str, Tensor]:
    """The model's tensors renamed (split, transposed) by a weight table's rows."""
    config = model.config
    ours = model.state_dict()
    out = {}
    for rule in _rules_for(set(ours), config, table):
        tensor = ours[rule.ours].detach()
        parts = (
            [tensor]
            if len(rule.theirs) == 1
            else tensor.split(_split_sizes(config, rule.ours, len(rule.theirs)), dim=0)
        )
        for name, part in zip(rule.theirs, parts):
            part = part.t() if rule.transpose else part
            out[name] = part.clone(memory_format=torch.contiguous_format).cpu()
    return out


def save_hf(model: torch.nn.Module, path: str | Path) -> None:
    """Write `model` as a transformers checkpoint folder (config.json + model.safetensors).

    The folder appears complete or not at all; an existing one is replaced.
    """
    config: ModelConfig = model.config
    hf = config_to_hf(config)
    tensors = hf_state_dict(model)
    dtype = next(iter(tensors.values())).dtype
    hf["dtype"] = str(dtype).removeprefix("torch.")
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})

