"""`ModelConfig`: every shape and switch of an lmforge model, as plain fields.

One decoder class covers GPT-1/2/3, Llama 1/2/3, Mistral, Qwen2 and Gemma; what tells them
apart is a handful of flags here (see `presets.py` for the published shapes):

    family   norm       norm_position  ffn    activation  positions  bias  qkv_bias  tie
    gpt1     layernorm  post           mlp    gelu        learned    yes   yes       yes
    gpt2/3   layernorm  pre            mlp    gelu_tanh   learned    yes   yes       yes
    llama    rmsnorm    pre            gated  silu        rope       no    no        no*
    mistral  (llama) + sliding_window
    qwen2    (llama) + qkv_bias
    gemma    (llama) + rmsnorm (1 + w), gated gelu_tanh (GeGLU), embeddings * sqrt(d), tied

    * Llama 3.2 1B / 3B tie their embeddings.

Encoders (arch="encoder": BERT, RoBERTa, ELECTRA, ALBERT) add a few flags of their own,
tabled in encoder.py: encoder_head, type_vocab_size, pooler, position_offset,
embedding_size, share_layers; DeBERTa's disentangled attention adds attention,
pos_att_type, position_buckets, max_relative_positions, share_att_key, norm_rel_embed and
emd (models/disentangled.py).

Encoder-decoders (arch="seq2seq": BART, T5) add theirs, tabled in seq2seq.py:
n_decoder_layer / n_decoder_head / d_decoder_ff (the decoder's depth, heads and FFN
width when they differ from the encoder's), relative_attention_num_buckets /
_max_distance, scale_attention,
embed_norm, final_logits_bias, scale_decoder_outputs, decoder_start_token_id (and BART's
position_offset=2). scale_attention=False also picks T5's initialization (seq2seq.py),
scaled by initializer_factor.

XLNet (arch="xlnet", models/xlnet.py: two-stream relative attention, no position table)
adds mem_len (Transformer-XL memory kept per layer) and bi_data (the batch's second half
reads its relative positions backwards).

`__post_init__` checks every field and raises `ConfigError` naming the field and what was
expected, so a typo in a YAML recipe fails before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

FAMILIES = (
    "gpt1", "gpt2", "gpt3", "llama", "mistral", "qwen2", "gemma",
    "bert", "roberta", "electra", "albert", "bart", "t5", "xlnet", "deberta",
)  # fmt: skip
ARCHS = ("decoder", "encoder", "seq2seq", "xlnet")
# Encoder heads (see encoder.py): none = base model (BertModel), mlm = masked LM,
# mlm_nsp = MLM + next-sentence (BertForPreTraining), mlm_sop = MLM + sentence order
# (AlbertForPreTraining), rtd = replaced-token detection (ELECTRA discriminator).
ENCODER_HEADS = ("none", "mlm", "mlm_nsp", "mlm_sop", "rtd")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
FFNS = ("mlp", "gated")
ACTIVATIONS = ("relu", "relu2", "gelu", "gelu_tanh", "silu")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
ATTENTIONS = ("standard", "disentangled")  # disentangled: DeBERTa (models/disentangled.py)
POS_ATT_TYPES = ("c2p", "p2c")  # DeBERTa's content-to-position, position-to-content terms
ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len")


@dataclass
class ModelConfig:
    # --- what kind of model -------------------------------------------------------------
    arch: Literal["decoder", "encoder", "seq2seq", "xlnet"] = "decoder"
    family: str | None = None  # published family this shape follows; picks the HF class
    # --- sizes --------------------------------------------------------------------------
    vocab_size: int = 50257
    max_seq_len: int = 1024  # longest sequence (learned positions have this many rows)
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # grouped-query attention; None = n_head (plain MHA)
    head_dim: int | None = None  # None = d_model // n_head (Gemma uses 256 regardless)
    d_ff: int | None = None  # FFN hidden size; None = 4 * d_model
    # --- block layout -------------------------------------------------------------------
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    norm_unit_offset: bool = False  # Gemma's RMSNorm scales by (1 + w), w initialised at 0
    norm_position: Literal["pre", "post"] = "pre"  # pre-LN (GPT-2+) or post-LN (GPT-1)
    final_norm: bool | None = None  # norm after the last block; None = yes for pre-LN
    ffn: Literal["mlp", "gated"] = "mlp"  # W2 act(W1 x) or W2 (act(Wg x) * (Wu x))
    activation: Literal["relu", "relu2", "gelu", "gelu_tanh", "silu"] = "gelu_tanh"
    bias: bool = True  # biases on attention output and FFN linears
    qkv_bias: bool | None = None  # biases on q, k, v; None = same as `bias` (Qwen2: True)
    # --- positions ----------------------------------------------------------------------
    positions: Literal["learned", "sinusoidal", "rope", "none"] = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # Llama-3 style: keys in ROPE_SCALING_KEYS
    # --- attention ----------------------------------------------------------------------
    sliding_window: int | None = None  # Mistral: attend to at most this many recent tokens
    # --- embeddings and head ------------------------------------------------------------
    tie_embeddings: bool = True  # LM head shares the token embedding matrix
    qk_norm: bool = False  # RMSNorm on each head's q and k before attention (OLMo 2, Qwen3)
    logit_softcap: float | None = None  # logits = c tanh(logits / c) (Gemma 2); None = off
    zero_init_residual: bool = False  # attention out and FFN fc2 start at 0 (modded-nanogpt)
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (Gemma)
    # --- training-time switches ---------------------------------------------------------
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches
    init_std: float = 0.02
    gradient_checkpointing: bool = False  # recompute each block in backward to save memory
    # --- special tokens (carried through HF conversion and used by generation) ----------
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # --- encoders only (arch="encoder"; BERT / RoBERTa / ELECTRA / ALBERT) --------------
    encoder_head: str = "none"  # one of ENCODER_HEADS
    type_vocab_size: int = 2  # token-type (segment) embedding rows; 0 = none
    pooler: bool = True  # dense + tanh on the first ([CLS]) position
    position_offset: int | None = None  # RoBERTa: positions start at pad_token_id + 1
    embedding_size: int | None = None  # ELECTRA / ALBERT factorized E, projected to d_model
    share_layers: bool = False  # ALBERT: one block's weights reused by all n_layer layers
    # DeBERTa (attention="disentangled", models/disentangled.py; positions="none" = v2/v3's
    # position_biased_input=false): relative-position attention terms and their table
    attention: str = "standard"  # one of ATTENTIONS
    pos_att_type: str = "c2p|p2c"  # which relative terms, "|"-separated ("" = none)
    position_buckets: int = 0  # > 0: log buckets (v2/v3: 256); 0: exact clipped distances
    max_relative_positions: int | None = None  # distances clip here; None = max_seq_len
    share_att_key: bool = False  # positions projected by the content W_q / W_k (v2/v3)
    norm_rel_embed: bool = False  # LayerNorm on the relative table (norm_rel_ebd)
    emd: bool = False  # enhanced mask decoder: MLM reads the last layer re-run with H + P
    # --- encoder-decoders only (arch="seq2seq"; BART / T5, tabled in seq2seq.py) --------
    n_decoder_layer: int | None = None  # decoder depth; None = n_layer (encoder depth)
    n_decoder_head: int | None = None  # decoder attention heads; None = n_head (BART may differ)
    d_decoder_ff: int | None = None  # decoder FFN hidden size; None = the encoder's (ffn_size)
    relative_attention_num_buckets: int = 0  # T5 relative position bias; 0 = none
    relative_attention_max_distance: int = 128  # T5: distances past this share a bucket
    scale_attention: bool = True  # softmax(QK^T / sqrt(hs)); T5 folds 1/sqrt(hs) into init
    # scale_attention=False also selects T5's init (transformers' T5 _init_weights; the body
    # then ignores init_std), each std times initializer_factor (1.0: T5's own)
    initializer_factor: float = 1.0
    embed_norm: bool = False  # BART's layernorm_embedding after token + position embeddings
    final_logits_bias: bool = False  # BART: a (1, V) bias buffer added to the logits
    scale_decoder_outputs: bool = False  # T5: h * d_model^-0.5 before the tied LM head
    decoder_start_token_id: int | None = None  # first decoder input (shift_right)
    # --- XLNet only (arch="xlnet", models/xlnet.py) -------------------------------------
    mem_len: int | None = None  # hidden states kept as memory per layer; None = all
    bi_data: bool = False  # second half of each batch: relative positions reversed

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"model.{name}: expected one of {', '.join(allowed)}, got {value!r}"
                )

        def positive(name: str, value: Any = None) -> None:
            value = getattr(self, name) if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{name}: expected a positive integer, got {value!r}")

        choice("arch", ARCHS)
        if self.family is not None:
            choice("family", FAMILIES)
        choice("norm", NORMS)
        choice("norm_position", NORM_POSITIONS)
        choice("ffn", FFNS)
        choice("activation", ACTIVATIONS)
        choice("positions", POSITIONS)
        choice("encoder_head", ENCODER_HEADS)
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layer", "n_head"):
            positive(name)
        for name in ("n_kv_head", "head_dim", "d_ff", "sliding_window"):
            if getattr(self, name) is not None:
                positive(name)
        if self.head_dim is None and self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model: expected a multiple of n_head={self.n_head} "
                f"(or set head_dim), got {self.d_model}"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"model.n_kv_head: expected a divisor of n_head={self.n_head}, "
                f"got {self.n_kv_head}"
            )
        if self.positions == "rope" and self.head_size % 2:
            raise ConfigError(f"model.head_dim: RoPE needs an even head size, got {self.head_size}")
        if self.positions == "rope" and self.arch == "seq2seq" and self.decoder_head_size % 2:
            raise ConfigError(
                f"model.n_decoder_head: RoPE needs an even decoder head size, "
                f"got {self.decoder_head_size}"
            )
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ConfigError(
                f"model.d_model: sinusoidal positions need an even size, got {self.d_model}"
            )
        if self.logit_softcap is not None and not (
            isinstance(self.logit_softcap, (int, float)) and self.logit_softcap > 0
        ):
            raise ConfigError(
                f"model.logit_softcap: expected a positive number, got {self.logit_softcap!r}"
            )
        if self.embedding_size is not None:
            positive("embedding_size")
        n_types = self.type_vocab_size
        if isinstance(n_types, bool) or not isinstance(n_types, int) or n_types < 0:
            raise ConfigError(
                f"model.type_vocab_size: expected an integer >= 0, got {self.type_vocab_size!r}"
            )
        if self.position_offset is not None:
            positive("position_offset")
            if self.arch == "encoder" and (
                self.pad_token_id is None or self.position_offset != self.pad_token_id + 1
            ):
                raise ConfigError(
                    f"model.position_offset: RoBERTa-style offsets need "
                    f"position_offset = pad_token_id + 1, got {self.position_offset!r} with "
                    f"pad_token_id={self.pad_token_id!r}"
                )
        if self.arch != "encoder":
            for name, default in (
                ("encoder_head", "none"), ("embedding_size", None), ("share_layers", False),
            ) + ((("position_offset", None),) if self.arch != "seq2seq" else ()):  # fmt: skip
                if getattr(self, name) != default:
                    raise ConfigError(f"model.{name}: only applies to arch=encoder")
        if (self.attention, self.pos_att_type, self.position_buckets,
                self.max_relative_positions, self.share_att_key, self.norm_rel_embed,
                self.emd) != ("standard", "c2p|p2c", 0, None, False, False, False):
            self._check_disentangled()
        if self.arch != "seq2seq":
            for name, default in (
                ("n_decoder_layer", None), ("n_decoder_head", None), ("d_decoder_ff", None),
                ("relative_attention_num_buckets", 0),
                ("scale_attention", True), ("initializer_factor", 1.0), ("embed_norm", False),
                ("final_logits_bias", False),
                ("scale_decoder_outputs", False), ("decoder_start_token_id", None),
            ):  # fmt: skip
                if getattr(self, name) != default:
                    raise ConfigError(f"model.{name}: only applies to arch=seq2seq")
        else:
            for name in ("n_decoder_layer", "n_decoder_head", "d_decoder_ff"):
                if getattr(self, name) is not None:
                    positive(name)
            if self.head_dim is None and self.d_model % self.decoder_heads:
                raise ConfigError(
                    f"model.d_model: expected a multiple of n_decoder_head={self.decoder_heads} "
                    f"(or set head_dim), got {self.d_model}"
                )
            buckets = self.relative_attention_num_buckets
            if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 0:
                raise ConfigError(
                    f"model.relative_attention_num_buckets: expected an integer >= 0, "
                    f"got {buckets!r}"
                )
            if buckets and self.positions != "none":
                raise ConfigError("model.positions: T5 relative bias needs positions=none")
            if buckets:
                positive("relative_attention_max_distance")
            if self.positions not in ("learned", "none", "rope"):
                raise ConfigError(
                    f"model.positions: encoder-decoders use learned positions, rope or a "
                    f"relative bias (none), got {self.positions!r}"
                )
            if self.decoder_start_token_id is None:
                raise ConfigError("model.decoder_start_token_id: required for arch=seq2seq")
            if self.scale_attention and self.initializer_factor != 1.0:
                raise ConfigError(
                    "model.initializer_factor: only applies to T5's init (scale_attention=false); "
                    "set init_std instead"
                )
        if self.arch != "xlnet" and (self.mem_len is not None or self.bi_data):
            raise ConfigError("model.mem_len / model.bi_data: only apply to arch=xlnet")
        if self.mem_len is not None:
            positive("mem_len")
        if self.arch == "xlnet" and self.positions != "none":
            raise ConfigError("model.positions: XLNet uses relative positions (positions=none)")
        if self.arch == "encoder" and self.positions not in ("learned", "rope") and not (
                self.attention == "disentangled" and self.positions == "none"):
            raise ConfigError(
                f"model.positions: encoders use learned or rope positions, got {self.positions!r}"
            )
        if self.arch == "encoder" and self.positions == "rope" and (
                self.attention == "disentangled" or self.position_offset is not None):
            raise ConfigError("model.positions: rope encoders take no disentangled attention "
                              "and no position_offset")
        special = "XLNet" if self.arch == "xlnet" else (
            "DeBERTa" if self.attention == "disentangled" else None)  # their own blocks
        if special and self.norm_position == "pre":
            raise ConfigError(f"model.norm_position: {special}'s blocks are post-LN (pre-LN is "
                              f"not built for them)")
        if self.qk_norm and (special or self.arch == "seq2seq"):
            raise ConfigError(f"model.qk_norm: built for the self-attention of encoders and "
                              f"decoders only, not for {special or 'encoder-decoders'}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a number in [0, 1), got {self.dropout!r}")
        for name in ("norm_eps", "init_std", "rope_theta", "initializer_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"model.{name}: expected a positive number, got {value!r}")
        if self.norm_unit_offset and self.norm != "rmsnorm":
            raise ConfigError("model.norm_unit_offset: only applies to norm=rmsnorm")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict) or set(self.rope_scaling) != set(
                ROPE_SCALING_KEYS
            ):
                raise ConfigError(
                    f"model.rope_scaling: expected a mapping with keys "
                    f"{', '.join(ROPE_SCALING_KEYS)}, got {self.rope_scaling!r}"
                )
            if self.positions != "rope":
                raise ConfigError("model.rope_scaling: only applies to positions=rope")

    def _check_disentangled(self) -> None:
        """DeBERTa's fields: only on encoders with attention=disentangled."""
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"model.attention: expected one of {', '.join(ATTENTIONS)}, "
                              f"got {self.attention!r}")
        if self.arch != "encoder" or self.attention != "disentangled":
            raise ConfigError("model.attention: disentangled attention (and emd) only apply "
                              "to arch=encoder with attention=disentangled")
        if not isinstance(self.pos_att_type, str) or any(
                t not in POS_ATT_TYPES for t in self.pos_att_terms):
            raise ConfigError(f"model.pos_att_type: expected terms of {', '.join(POS_ATT_TYPES)}"
                              f" joined by '|' (or ''), got {self.pos_att_type!r}")
        b = self.position_buckets
        if isinstance(b, bool) or not isinstance(b, int) or b < 0 or b == 1:
            raise ConfigError(f"model.position_buckets: expected 0 (none) or an integer >= 2, "
                              f"got {b!r}")
        m = self.max_relative_positions
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 2):
            raise ConfigError(f"model.max_relative_positions: expected an integer >= 2, got {m!r}")
        if self.share_layers or self.position_offset is not None:
            raise ConfigError("model.attention: disentangled attention with share_layers or "
                              "position_offset is not supported")
        if self.emd and self.embed_size != self.d_model:
            raise ConfigError("model.emd: the enhanced mask decoder adds the position table to "
                              "the hidden states; it needs embedding_size = d_model")
        if self.emd and self.n_layer < 2:
            raise ConfigError("model.emd: the enhanced mask decoder re-runs the last layer on "
                              "the one before; it needs n_layer >= 2")

    # Derived sizes, so callers never repeat the defaulting rules above.
    @property
    def pos_att_terms(self) -> tuple[str, ...]:
        """DeBERTa's relative terms as a tuple: "c2p|p2c" -> ("c2p", "p2c")."""
        return tuple(t.strip() for t in self.pos_att_type.split("|") if t.strip())

    @property
    def rel_span(self) -> int:
        """k: the relative table has 2k rows (buckets, or clipped distances)."""
        return self.position_buckets or self.max_relative_positions or self.max_seq_len

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def ffn_size(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def has_final_norm(self) -> bool:
        return self.norm_position == "pre" if self.final_norm is None else self.final_norm

    @property
    def embed_size(self) -> int:
        return self.embedding_size or self.d_model

    @property
    def n_blocks(self) -> int:
        """Distinct blocks holding weights: 1 when ALBERT shares one across all layers."""
        return 1 if self.share_layers else self.n_layer

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layer or self.n_layer

    @property
    def decoder_heads(self) -> int:
        return self.n_decoder_head or self.n_head

    @property
    def decoder_head_size(self) -> int:
        return self.head_dim or self.d_model // self.decoder_heads

    @property
    def decoder_ffn_size(self) -> int:
        return self.d_decoder_ff or self.ffn_size

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise ConfigError(f"model.{unknown[0]}: unknown key (known: {known})")
        return cls(**d)


# -- a recipe's `model:` section ------------------------------------------------------

def check_model_section(model) -> None:
    """A recipe's `model:` section, checked when the recipe is loaded: a mapping of a
    `preset` name and ModelConfig fields (ConfigError naming the key otherwise)."""
    from . import presets

    if not isinstance(model, dict):
        raise ConfigError(f"config key 'model': expected a mapping, got {model!r}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(str(k) for k in model if k != "preset" and k not in fields)
    if unknown:
        known = ", ".join(["preset", *sorted(fields)])
        raise ConfigError(f"unknown config key 'model.{unknown[0]}' (known keys here: {known})")
    preset = model.get("preset")
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"config key 'model.preset': expected a name, got {preset!r}")
        presets.get(preset)  # ConfigError for an unknown preset


def resolve_model_config(model: dict, vocab_size: int, tokenizer=None) -> ModelConfig:
    """A recipe's `model:` section -> ModelConfig: the preset, then the other keys, then the vocab.

    The vocabulary size and the special-token ids (eos / bos / pad) come from the
    tokenizer unless the section sets them; a larger vocab_size pads the table.
    """
    from ..config import from_dict, to_dict
    from . import presets

    model = dict(model)
    preset = model.pop("preset", None)
    base: dict = {}
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"config key 'model.preset': expected a name, got {preset!r}")
        base = to_dict(presets.get(preset))
    merged = {**base, **model}
    requested = merged.get("vocab_size") if "vocab_size" in model else None
    if requested is not None and requested < vocab_size:
        raise ConfigError(
            f"config key 'model.vocab_size': {requested} is smaller than the tokenizer's "
            f"vocabulary ({vocab_size})"
        )
    merged["vocab_size"] = requested or vocab_size
    if tokenizer is not None:
        ids = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
               "bos_token_id": tokenizer.bos_id if tokenizer.bos_id is not None
               else tokenizer.eos_id}  # GPT-2 style: <|endoftext|> also begins
        if merged.get("arch") == "seq2seq":  # as HF: T5's decoder starts with <pad>, BART's </s>
            pad_start = merged.get("family") == "t5" and tokenizer.pad_id is not None
            ids["decoder_start_token_id"] = tokenizer.pad_id if pad_start else tokenizer.eos_id
        for key, value in ids.items():
            if key not in model:
                merged[key] = value
    return from_dict(ModelConfig, merged, prefix="model")
