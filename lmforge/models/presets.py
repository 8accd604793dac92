"""Named model shapes from the literature, plus tiny shapes for tests.

    from lmforge.models import presets, build
    model = build(presets.get("gpt2"))
    presets.names()

`PUBLISHED` records the parameter count each paper or model card gives, with its source;
tests/models/test_presets.py checks every preset against it (building the big ones on the
`meta` device, which allocates nothing).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .config import ModelConfig

# ----------------------------------------------------------------------------------------
# Family templates: the flags that make a family, sizes filled in per preset.


def gpt1(**shape) -> ModelConfig:
    # Radford et al. 2018: post-LN (no final norm), learned positions, GELU,
    # 40,478 BPE tokens, 512 context.
    base = dict(
        family="gpt1",
        vocab_size=40478,
        max_seq_len=512,
        norm="layernorm",
        norm_position="post",
        activation="gelu",
        positions="learned",
    )
    return ModelConfig(**{**base, **shape})


def gpt2(**shape) -> ModelConfig:
    # Radford et al. 2019: pre-LN + final LN, tanh-GELU, 50,257 tokens, 1,024 context.
    base = dict(
        family="gpt2",
        vocab_size=50257,
        max_seq_len=1024,
        norm="layernorm",
        activation="gelu_tanh",
        positions="learned",
        bos_token_id=50256,
        eos_token_id=50256,
    )
    return ModelConfig(**{**base, **shape})


def gpt3(**shape) -> ModelConfig:
    # Brown et al. 2020: GPT-2's layout with a 2,048 context. Every layer is dense here;
    # the paper alternates dense and locally banded sparse attention.
    return gpt2(**{"family": "gpt3", "max_seq_len": 2048, **shape})


def llama(**shape) -> ModelConfig:
    # Touvron et al. 2023: RMSNorm (pre), SwiGLU, RoPE, no biases, untied head.
    base = dict(
        family="llama",
        vocab_size=32000,
        max_seq_len=2048,
        norm="rmsnorm",
        norm_eps=1e-6,
        ffn="gated",
        activation="silu",
        positions="rope",
        bias=False,
        tie_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    return ModelConfig(**{**base, **shape})


def mistral(**shape) -> ModelConfig:
    # Jiang et al. 2023: Llama layout + GQA + sliding-window attention.
    return llama(family="mistral", norm_eps=1e-5, **shape)


def qwen2(**shape) -> ModelConfig:
    # Qwen2 technical report (Yang et al. 2024): Llama layout + biases on q, k, v.
    return llama(family="qwen2", qkv_bias=True, rope_theta=1e6, **shape)


def gemma(**shape) -> ModelConfig:
    # Gemma team 2024: GeGLU (tanh GELU), RMSNorm(1 + w), embeddings * sqrt(d), tied,
    # head size 256, 256k vocabulary.
    base = dict(
        family="gemma",
        vocab_size=256000,
        max_seq_len=8192,
        norm_unit_offset=True,
        activation="gelu_tanh",
        embed_scale=True,
        tie_embeddings=True,
        head_dim=256,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    return llama(**{**base, **shape})


def bert(**shape) -> ModelConfig:
    # Devlin et al. 2019: post-LN encoder, exact GELU, 30,522 WordPiece tokens, 512
    # positions, two token types, pooler; pretrained with MLM + NSP (BertForPreTraining).
    base = dict(
        arch="encoder",
        family="bert",
        encoder_head="mlm_nsp",
        vocab_size=30522,
        max_seq_len=512,
        norm="layernorm",
        norm_eps=1e-12,
        norm_position="post",
        activation="gelu",
        positions="learned",
        pad_token_id=0,
    )
    return ModelConfig(**{**base, **shape})


def roberta(**shape) -> ModelConfig:
    # Liu et al. 2019: BERT's layout with GPT-2's byte-level BPE (50,265 tokens), MLM only
    # (no NSP, no pooler), one token type; positions start at pad_token_id + 1 = 2, so the
    # table has 512 + 2 rows.
    base = dict(
        family="roberta",
        encoder_head="mlm",
        pooler=False,
        vocab_size=50265,
        max_seq_len=514,
        norm_eps=1e-5,
        type_vocab_size=1,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        position_offset=2,
    )
    return bert(**{**base, **shape})


def electra(**shape) -> ModelConfig:
    # Clark et al. 2020: BERT's body; the discriminator carries the replaced-token-detection
    # head and no pooler. Small uses embeddings of size E=128 < d (projected up).
    return bert(**{"family": "electra", "encoder_head": "rtd", "pooler": False, **shape})


def electra_generator(disc: ModelConfig, multiplier: float) -> ModelConfig:
    # The generator is the discriminator scaled down in hidden size, FFN size and heads
    # (Clark et al. 2020, Table 6: 1/4 small, 1/3 base, 1/4 large); it shares the token and
    # position embeddings, so its embedding size is the discriminator's.
    d = int(disc.d_model * multiplier)
    return disc.replace(
        encoder_head="mlm",
        d_model=d,
        n_head=max(1, int(disc.n_head * multiplier)),
        d_ff=int(disc.ffn_size * multiplier) if disc.d_ff else None,
        embedding_size=disc.embed_size,
    )


def deberta_v3(**shape) -> ModelConfig:
    # He et al. 2021 / 2023 (DeBERTa v3): post-LN encoder with disentangled attention
    # (models/disentangled.py: c2p + p2c, 256 log buckets, W_q / W_k shared with the
    # positions, LayerNorm-ed relative table), no absolute positions at the input and no
    # token types, 128,100 SentencePiece tokens, exact GELU, LayerNorm eps 1e-7. The MLM
    # head is DebertaV2ForMaskedLM's; pretraining adds the EMD (emd) or RTD + GDES.
    base = dict(
        arch="encoder", family="deberta", encoder_head="mlm", vocab_size=128100,
        max_seq_len=512, norm="layernorm", norm_eps=1e-7, norm_position="post",
        activation="gelu", positions="none", type_vocab_size=0, pooler=False,
        attention="disentangled", pos_att_type="c2p|p2c", position_buckets=256,
        share_att_key=True, norm_rel_embed=True, pad_token_id=0,
    )  # fmt: skip
    return ModelConfig(**{**base, **shape})


def albert(**shape) -> ModelConfig:
    # Lan et al. 2020: factorized embeddings (E=128) projected to d, one block shared by all
    # layers, 30,000 SentencePiece tokens, tanh-GELU; pretrained with MLM + SOP.
    base = dict(
        family="albert",
        encoder_head="mlm_sop",
        vocab_size=30000,
        embedding_size=128,
        share_layers=True,
        activation="gelu_tanh",
        bos_token_id=2,
        eos_token_id=3,
    )
    return bert(**{**base, **shape})


LLAMA3_SCALING = dict(  # Llama 3.1 / 3.2: 8k pretraining context stretched 32x / 8x
    low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192
)

# ----------------------------------------------------------------------------------------
# The presets. Each entry: name -> (builder, published parameter count, source).

def bart(**shape) -> ModelConfig:
    # Lewis et al. 2020: post-LN, GELU, learned positions (offset 2, fairseq's layout) with a
    # LayerNorm on the embeddings, biases everywhere, tied head + final_logits_bias;
    # GPT-2's byte-level BPE (50,265 tokens), 1,024 positions (facebook/bart-*/config.json).
    base = dict(
        arch="seq2seq", family="bart", vocab_size=50265, max_seq_len=1024, norm="layernorm",
        norm_position="post", final_norm=False, activation="gelu", positions="learned",
        position_offset=2, embed_norm=True, final_logits_bias=True, bos_token_id=0,
        pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    return ModelConfig(**{**base, **shape})


def t5(**shape) -> ModelConfig:
    # Raffel et al. 2020: pre-LN with RMS-style LayerNorm (no bias, no centring), relative
    # position bias (32 buckets, max distance 128), no biases, no 1/sqrt(hs) (folded into
    # init), ReLU FFN, tied head with the d^-0.5 rescale; SentencePiece 32,128 tokens.
    base = dict(
        arch="seq2seq", family="t5", vocab_size=32128, max_seq_len=512, head_dim=64,
        norm="rmsnorm", norm_eps=1e-6, norm_position="pre", final_norm=True, activation="relu",
        bias=False, positions="none", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, scale_attention=False, scale_decoder_outputs=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return ModelConfig(**{**base, **shape})


def t5_v1_1(**shape) -> ModelConfig:
    # T5 v1.1 (google/t5-v1_1-*): gated-GELU FFN (GeGLU, tanh GELU), untied head, no rescale.
    base = dict(ffn="gated", activation="gelu_tanh", tie_embeddings=False)
    return t5(**{**base, "scale_decoder_outputs": False, **shape})


def xlnet(**shape) -> ModelConfig:
    # Yang et al. 2019: post-LN two-stream relative attention (models/xlnet.py), exact GELU,
    # SentencePiece 32,000 tokens, tied head with a bias; no position table (512 is the
    # pretraining length, not a limit).
    base = dict(
        arch="xlnet", family="xlnet", vocab_size=32000, max_seq_len=512, norm_eps=1e-12,
        norm_position="post", activation="gelu", positions="none", pad_token_id=5,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return ModelConfig(**{**base, **shape})


_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    # GPT-1 "117M" (Radford et al. 2018, Table / Sec. 4.1: 12 layers, 768 wide, 12 heads).
    "gpt1": lambda: gpt1(n_layer=12, d_model=768, n_head=12),
    # GPT-2 (openai/gpt-2 model names 124M / 355M / 774M / 1558M).
    "gpt2": lambda: gpt2(n_layer=12, d_model=768, n_head=12),
    "gpt2-medium": lambda: gpt2(n_layer=24, d_model=1024, n_head=16),
    "gpt2-large": lambda: gpt2(n_layer=36, d_model=1280, n_head=20),
    "gpt2-xl": lambda: gpt2(n_layer=48, d_model=1600, n_head=25),
    # GPT-3 (Brown et al. 2020, Table 2.1: n_layers, d_model, n_heads, d_head).
    "gpt3-small": lambda: gpt3(n_layer=12, d_model=768, n_head=12, head_dim=64),
    "gpt3-medium": lambda: gpt3(n_layer=24, d_model=1024, n_head=16, head_dim=64),
    "gpt3-large": lambda: gpt3(n_layer=24, d_model=1536, n_head=16, head_dim=96),
    # The table lists 24 heads of 128 for XL, which does not fit d_model=2048 (and would
    # give 1.5B, not 1.3B); 16 heads of 128, as in reproductions (GPT-Neo 1.3B), give 1.3B.
    "gpt3-xl": lambda: gpt3(n_layer=24, d_model=2048, n_head=16, head_dim=128),
    "gpt3-2.7b": lambda: gpt3(n_layer=32, d_model=2560, n_head=32, head_dim=80),
    "gpt3-6.7b": lambda: gpt3(n_layer=32, d_model=4096, n_head=32, head_dim=128),
    # The table gives d_model=5140 with 40 heads of 128 (5120): kept as printed.
    "gpt3-13b": lambda: gpt3(n_layer=40, d_model=5140, n_head=40, head_dim=128),
    "gpt3-175b": lambda: gpt3(n_layer=96, d_model=12288, n_head=96, head_dim=128),
    # Llama 1 (Touvron et al. 2023a, Table 2).
    "llama-7b": lambda: llama(n_layer=32, d_model=4096, n_head=32, d_ff=11008),
    # Llama 2 (Touvron et al. 2023b; shapes from the released config.json files).
    "llama2-7b": lambda: llama(n_layer=32, d_model=4096, n_head=32, d_ff=11008, max_seq_len=4096),
    "llama2-13b": lambda: llama(
        n_layer=40, d_model=5120, n_head=40, d_ff=13824, max_seq_len=4096
    ),
    "llama2-70b": lambda: llama(
        n_layer=80, d_model=8192, n_head=64, n_kv_head=8, d_ff=28672, max_seq_len=4096
    ),
    # Llama 3 (Llama team 2024; Meta-Llama-3-8B config.json).
    "llama3-8b": lambda: llama(
        n_layer=32,
        d_model=4096,
        n_head=32,
        n_kv_head=8,
        d_ff=14336,
        vocab_size=128256,
        max_seq_len=8192,
        rope_theta=500000.0,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    # Llama 3.2 1B / 3B (config.json of the released models): tied, RoPE scaled 32x.
    "llama3.2-1b": lambda: llama(
        n_layer=16,
        d_model=2048,
        n_head=32,
        n_kv_head=8,
        head_dim=64,
        d_ff=8192,
        vocab_size=128256,
        max_seq_len=131072,
        rope_theta=500000.0,
        rope_scaling=dict(factor=32.0, **LLAMA3_SCALING),
        tie_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "llama3.2-3b": lambda: llama(
        n_layer=28,
        d_model=3072,
        n_head=24,
        n_kv_head=8,
        head_dim=128,
        d_ff=8192,
        vocab_size=128256,
        max_seq_len=131072,
        rope_theta=500000.0,
        rope_scaling=dict(factor=32.0, **LLAMA3_SCALING),
        tie_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    # Mistral 7B (Jiang et al. 2023, Table 1; v0.1 config.json).
    "mistral-7b": lambda: mistral(
        n_layer=32,
        d_model=4096,
        n_head=32,
        n_kv_head=8,
        d_ff=14336,
        max_seq_len=32768,
        sliding_window=4096,
    ),
    # Qwen2 (Yang et al. 2024, Table 1; released config.json files).
    "qwen2-0.5b": lambda: qwen2(
        n_layer=24,
        d_model=896,
        n_head=14,
        n_kv_head=2,
        d_ff=4864,
        vocab_size=151936,
        max_seq_len=32768,
        tie_embeddings=True,
        bos_token_id=None,
        eos_token_id=151643,
    ),
    "qwen2-7b": lambda: qwen2(
        n_layer=28,
        d_model=3584,
        n_head=28,
        n_kv_head=4,
        d_ff=18944,
        vocab_size=152064,
        max_seq_len=32768,
        bos_token_id=None,
        eos_token_id=151643,
    ),
    # Gemma (Gemma team 2024, Table 1: d_model, layers, FFN, heads, KV heads, head size).
    "gemma-2b": lambda: gemma(n_layer=18, d_model=2048, n_head=8, n_kv_head=1, d_ff=16384),
    "gemma-7b": lambda: gemma(n_layer=28, d_model=3072, n_head=16, n_kv_head=16, d_ff=24576),
    # BERT (Devlin et al. 2019, Sec. 3: L=12/24, H=768/1024, A=12/16, FFN 4H).
    "bert-base": lambda: bert(n_layer=12, d_model=768, n_head=12),
    "bert-large": lambda: bert(n_layer=24, d_model=1024, n_head=16),
    # RoBERTa (Liu et al. 2019: BERT-base / BERT-large shapes; roberta-*/config.json).
    "roberta-base": lambda: roberta(n_layer=12, d_model=768, n_head=12),
    "roberta-large": lambda: roberta(n_layer=24, d_model=1024, n_head=16),
    # ELECTRA discriminators (Clark et al. 2020, Table 6) and their generators.
    "electra-small": lambda: electra(
        n_layer=12, d_model=256, n_head=4, d_ff=1024, embedding_size=128
    ),
    "electra-base": lambda: electra(n_layer=12, d_model=768, n_head=12),
    "electra-large": lambda: electra(n_layer=24, d_model=1024, n_head=16),
    "electra-small-generator": lambda: electra_generator(get("electra-small"), 1 / 4),
    "electra-base-generator": lambda: electra_generator(get("electra-base"), 1 / 3),
    "electra-large-generator": lambda: electra_generator(get("electra-large"), 1 / 4),
    # ALBERT (Lan et al. 2020, Table 1: L=12/24, H=768/1024, E=128, shared layers).
    "albert-base": lambda: albert(n_layer=12, d_model=768, n_head=12),
    "albert-large": lambda: albert(n_layer=24, d_model=1024, n_head=16),
    # BART (Lewis et al. 2020; facebook/bart-base, bart-large config.json).
    "bart-base": lambda: bart(n_layer=6, d_model=768, n_head=12, d_ff=3072),
    "bart-large": lambda: bart(n_layer=12, d_model=1024, n_head=16, d_ff=4096),
    # T5 v1.0 (Raffel et al. 2020, Sec. 3.7; google-t5/t5-* config.json).
    "t5-small": lambda: t5(n_layer=6, d_model=512, n_head=8, d_ff=2048),
    "t5-base": lambda: t5(n_layer=12, d_model=768, n_head=12, d_ff=3072),
    "t5-large": lambda: t5(n_layer=24, d_model=1024, n_head=16, d_ff=4096),
    # T5 v1.1 (google/t5-v1_1-* config.json: small has 8 layers, 6 heads of 64).
    "t5-v1.1-small": lambda: t5_v1_1(n_layer=8, d_model=512, n_head=6, d_ff=1024),
    "t5-v1.1-base": lambda: t5_v1_1(n_layer=12, d_model=768, n_head=12, d_ff=2048),
    "t5-v1.1-large": lambda: t5_v1_1(n_layer=24, d_model=1024, n_head=16, d_ff=2816),
    # DeBERTa v3 (microsoft/deberta-v3-* config.json).
    "deberta-v3-xsmall": lambda: deberta_v3(n_layer=12, d_model=384, n_head=6, d_ff=1536),
    "deberta-v3-small": lambda: deberta_v3(n_layer=6, d_model=768, n_head=12, d_ff=3072),
    "deberta-v3-base": lambda: deberta_v3(n_layer=12, d_model=768, n_head=12, d_ff=3072),
    "deberta-v3-large": lambda: deberta_v3(n_layer=24, d_model=1024, n_head=16, d_ff=4096),
    # XLNet (xlnet/xlnet-base-cased, xlnet-large-cased config.json).
    "xlnet-base-cased": lambda: xlnet(n_layer=12, d_model=768, n_head=12, d_ff=3072),
    "xlnet-large-cased": lambda: xlnet(n_layer=24, d_model=1024, n_head=16, d_ff=4096),
    # Tiny shapes for tests and quick experiments: one per family, a few 100k parameters.
    "tiny-gpt1": lambda: gpt1(n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=128),
    "tiny-gpt2": lambda: gpt2(n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=128),
    "tiny-llama": lambda: llama(
        n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128, vocab_size=256, max_seq_len=128
    ),
    "tiny-mistral": lambda: mistral(
        n_layer=2,
        d_model=64,
        n_head=4,
        n_kv_head=2,
        d_ff=128,
        vocab_size=256,
        max_seq_len=128,
        sliding_window=8,
    ),
    "tiny-qwen2": lambda: qwen2(
        n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128, vocab_size=256, max_seq_len=128
    ),
    "tiny-gemma": lambda: gemma(
        n_layer=2,
        d_model=64,
        n_head=4,
        n_kv_head=1,
        head_dim=32,
        d_ff=128,
        vocab_size=256,
        max_seq_len=128,
    ),
    "tiny-bert": lambda: bert(n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=128),
    "tiny-roberta": lambda: roberta(
        n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=130
    ),
    "tiny-electra": lambda: electra(
        n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=128, embedding_size=32
    ),
    "tiny-albert": lambda: albert(
        n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=128, embedding_size=32
    ),
    "tiny-bart": lambda: bart(n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=128),
    "tiny-t5": lambda: t5(
        n_layer=2, d_model=64, n_head=4, head_dim=16, d_ff=128, vocab_size=256,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
    ),  # fmt: skip
    "tiny-deberta": lambda: deberta_v3(n_layer=2, d_model=64, n_head=4, d_ff=128,
                                       vocab_size=256, max_seq_len=128, position_buckets=32),
    "tiny-xlnet": lambda: xlnet(n_layer=2, d_model=64, n_head=4, d_ff=128, vocab_size=256,
                                max_seq_len=128),
    "tiny-t5-v1.1": lambda: t5_v1_1(
        n_layer=2, d_model=64, n_head=4, head_dim=16, d_ff=128, vocab_size=256,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
    ),  # fmt: skip
}

# Published parameter counts: (count, exact?, source). Exact figures must match to the
# parameter, rounded ones within 2%. "HF hub" = the "Model size" a model's page shows,
# computed from its safetensors files (3 significant digits).
PUBLISHED: dict[str, tuple[int, bool, str]] = {
    "gpt1": (117_000_000, False, "Radford et al. 2018 (and the lecture): 117M"),
    "gpt2": (124_439_808, True, "HF gpt2 (openai/gpt-2 '124M'), tied embeddings"),
    "gpt2-medium": (355_000_000, False, "openai/gpt-2 release '355M'"),
    "gpt2-large": (774_000_000, False, "openai/gpt-2 release '774M'"),
    "gpt2-xl": (1_558_000_000, False, "openai/gpt-2 release '1558M'"),
    "gpt3-small": (125_000_000, False, "Brown et al. 2020, Table 2.1: 125M"),
    "gpt3-medium": (350_000_000, False, "Brown et al. 2020, Table 2.1: 350M"),
    "gpt3-large": (760_000_000, False, "Brown et al. 2020, Table 2.1: 760M"),
    "gpt3-xl": (1_300_000_000, False, "Brown et al. 2020, Table 2.1: 1.3B"),
    "gpt3-2.7b": (2_700_000_000, False, "Brown et al. 2020, Table 2.1: 2.7B"),
    "gpt3-6.7b": (6_700_000_000, False, "Brown et al. 2020, Table 2.1: 6.7B"),
    "gpt3-13b": (13_000_000_000, False, "Brown et al. 2020, Table 2.1: 13.0B"),
    "gpt3-175b": (175_000_000_000, False, "Brown et al. 2020, Table 2.1: 175.0B"),
    "llama-7b": (6_700_000_000, False, "Touvron et al. 2023a, Table 2: 6.7B"),
    "llama2-7b": (6_740_000_000, False, "HF hub meta-llama/Llama-2-7b-hf: 6.74B"),
    "llama2-13b": (13_000_000_000, False, "HF hub meta-llama/Llama-2-13b-hf: 13B"),
    "llama2-70b": (70_000_000_000, False, "Touvron et al. 2023b, Table 1: 70B"),
    "llama3-8b": (8_030_000_000, False, "HF hub meta-llama/Meta-Llama-3-8B: 8.03B"),
    "llama3.2-1b": (1_240_000_000, False, "HF hub meta-llama/Llama-3.2-1B: 1.24B"),
    "llama3.2-3b": (3_210_000_000, False, "HF hub meta-llama/Llama-3.2-3B: 3.21B"),
    "mistral-7b": (7_240_000_000, False, "HF hub mistralai/Mistral-7B-v0.1: 7.24B"),
    "qwen2-0.5b": (494_000_000, False, "Yang et al. 2024, Table 1: 0.49B; HF hub: 494M"),
    "qwen2-7b": (7_620_000_000, False, "HF hub Qwen/Qwen2-7B: 7.62B"),
    # Gemma's report gives embedding and non-embedding parameters separately (Table 2,
    # its embedding counts 256,128 rows); the non-embedding figures are exact.
    "gemma-2b": (1_981_884_416, True, "Gemma team 2024, Table 2: non-embedding 1,981,884,416"),
    "gemma-7b": (7_751_248_896, True, "Gemma team 2024, Table 2: non-embedding 7,751,248,896"),
    # Encoders: counted with their pretraining heads (the MLM decoder is tied, so it adds
    # only its transform and bias).
    "bert-base": (110_000_000, False, "Devlin et al. 2019, Sec. 3: BERT-BASE 110M"),
    "bert-large": (340_000_000, False, "Devlin et al. 2019, Sec. 3: BERT-LARGE 340M"),
    "roberta-base": (125_000_000, False, "HF hub FacebookAI/roberta-base: 125M"),
    "roberta-large": (355_000_000, False, "HF hub FacebookAI/roberta-large: 355M"),
    # The paper's Table 1 lists ELECTRA-Small at 14M; the discriminator alone (the model
    # kept after pretraining) is 13,549,057 = transformers' ElectraForPreTraining at its
    # default (small) config, 13.5M on the HF hub.
    "electra-small": (13_549_057, True, "transformers ElectraForPreTraining(ElectraConfig())"),
    "electra-base": (110_000_000, False, "Clark et al. 2020, Table 1: ELECTRA-Base 110M"),
    "electra-large": (335_000_000, False, "Clark et al. 2020, Table 1: ELECTRA-Large 335M"),
    "albert-base": (12_000_000, False, "Lan et al. 2020, Table 1: ALBERT base 12M"),
    "albert-large": (18_000_000, False, "Lan et al. 2020, Table 1: ALBERT large 18M"),
    # Encoder-decoders. BART: the paper gives no exact counts; the HF hub pages do.
    "bart-base": (139_000_000, False, "HF hub facebook/bart-base: 139M"),
    "bart-large": (406_000_000, False, "HF hub facebook/bart-large: 406M"),
    # T5 v1.0: Raffel et al. 2020, Sec. 3.7 gives 60M / 220M / 770M. The 770M of T5-Large
    # is ~4% above its checkpoint (737,668,096 with the head tied, as the HF hub's 738M
    # shows), beyond 2%, so Large is checked against the hub figure.
    "t5-small": (60_000_000, False, "Raffel et al. 2020, Sec. 3.7: Small 60M"),
    "t5-base": (220_000_000, False, "Raffel et al. 2020, Sec. 3.7: Base 220M"),
    "t5-large": (738_000_000, False, "HF hub google-t5/t5-large: 738M (paper: 770M)"),
    # T5 v1.1 (no paper; untied head counted): the HF hub pages of google/t5-v1_1-*.
    "t5-v1.1-small": (77_000_000, False, "HF hub google/t5-v1_1-small: 77M"),
    "t5-v1.1-base": (248_000_000, False, "HF hub google/t5-v1_1-base: 248M"),
    "t5-v1.1-large": (783_000_000, False, "HF hub google/t5-v1_1-large: 783M"),
    # DeBERTa v3: the model cards (microsoft/deberta-v3-*) give backbone + embedding counts.
    "deberta-v3-xsmall": (70_000_000, False, "model card: 22M backbone + 48M embedding"),
    "deberta-v3-small": (142_000_000, False, "model card: 44M backbone + 98M embedding"),
    "deberta-v3-base": (184_000_000, False, "model card: 86M backbone + 98M embedding"),
    "deberta-v3-large": (435_000_000, False, "model card: 304M backbone + 131M embedding"),
    # XLNet: the paper gives no counts; these are transformers' XLNetLMHeadModel at the
    # released config.json shapes (tied head + its bias), 117M / 360M on the HF hub.
    "xlnet-base-cased": (116_750_336, True, "transformers XLNetLMHeadModel, xlnet-base-cased"),
    "xlnet-large-cased": (360_300_800, True, "transformers XLNetLMHeadModel, xlnet-large-cased"),
}
# Presets whose size no source states (checked by shape instead, in test_encoder_presets.py).
UNPUBLISHED = ("electra-small-generator", "electra-base-generator", "electra-large-generator")
NON_EMBEDDING = ("gemma-2b", "gemma-7b")  # PUBLISHED counts that exclude the embedding


def names() -> list[str]:
    return list(_PRESETS)


def get(name: str, **overrides) -> ModelConfig:
    """The named shape, optionally with some fields changed (e.g. max_seq_len=256)."""
    if name not in _PRESETS:
        raise ConfigError(f"model preset {name!r} is unknown; known: {', '.join(_PRESETS)}")
    config = _PRESETS[name]()
    return config.replace(**overrides) if overrides else config
