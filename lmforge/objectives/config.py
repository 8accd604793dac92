"""`ObjectiveConfig`: the `objective:` section of a pretraining recipe -- which objective,
and its knobs. It lives with the objectives it configures (lmforge/objectives/__init__.py
builds one from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ObjectiveConfig:
    """Which pretraining objective, and its knobs (each used by the objectives named).

    The recipes in configs/ show one per objective; docs/objectives.md says what each
    key does.
    """

    name: Literal["clm", "mlm", "electra", "coco", "bart", "t5", "xlnet"] = "clm"
    # -- mlm / electra (encoders) --
    mask_prob: float = 0.15  # share of the tokens chosen as targets (mlm, electra)
    masking: Literal["static", "dynamic"] = "dynamic"  # static = BERT, dynamic = RoBERTa
    whole_word: bool = False  # choose whole words (all their tokens) rather than tokens
    mask_replace_prob: float = 0.8  # mlm: chosen tokens -> [MASK] (BERT's 80 / 10 / 10)
    random_replace_prob: float = 0.1  # mlm: -> a random token; the rest stay unchanged
    pair: Literal["none", "nsp", "sop"] = "none"  # mlm: + next-sentence / sentence-order
    pair_weight: float = 1.0  # mlm: loss = MLM mean + pair_weight * NSP/SOP mean
    generator_size: float = 0.25  # electra: generator width / discriminator width
    rtd_weight: float = 50.0  # electra: loss = MLM(generator) + rtd_weight * RTD
    embedding_sharing: Literal["shared", "gdes"] = "shared"  # electra: gdes = DeBERTa v3's
    # -- coco (COCO-LM; mask_prob / masking / whole_word as electra) --
    generator_layers: int | None = None  # auxiliary MLM depth, same width; None = n_layer // 3
    copy_weight: float = 50.0  # lambda_copy: loss = MLM(aux) + 50 L_copy + L_LM + scl L_SCL
    scl_weight: float = 1.0  # weight of the sequence contrastive loss
    temperature: float = 1.0  # InfoNCE temperature tau on cosine similarities
    crop_ratio: float = 0.9  # the positive view: a contiguous crop of this share of the text
    # -- xlnet (permutation LM) --
    partial_k: int = 6  # predict the last 1/K of each factorization order (paper: K = 6, 7)
    # -- bart / t5 (encoder-decoders) --
    bart_mask: Literal["infill", "token", "delete", "none"] = "infill"  # bart: which masking
    mask_ratio: float = 0.3  # bart: share of tokens masked (infill: covered by spans)
    poisson_lambda: float = 3.0  # bart: infill span lengths ~ Poisson(lambda)
    random_ratio: float = 0.0  # bart: share of masks replaced by a random token instead
    permute_sentences: bool = True  # bart: shuffle the sentences of each window
    rotate: bool = False  # bart: document rotation
    whole_word_spans: bool = True  # bart: infill spans cover whole words (fairseq)
    noise_density: float = 0.15  # t5: share of tokens in noise spans
    mean_span_length: float = 3.0  # t5: mean noise span length
