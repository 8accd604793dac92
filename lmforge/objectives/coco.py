"""COCO-LM (Meng et al. 2021): pretraining by correcting and contrasting corrupted text.

An auxiliary MLM (ELECTRA's generator, `Electra.corrupt_with_generator`) corrupts the
window; the main model learns two tasks on the result:

    window -> [CLS] w [SEP] -> mask 15% (85% [MASK], 15% unchanged: ELECTRA_MASKING)
    auxiliary MLM: predicts the masked tokens                      L_MLM (mean over n)
    x^cor: its samples at the masked positions, the originals elsewhere (no gradient)

  Corrective language modeling (CLM), at every position i of h = Enc(x^cor):
    copy head  p_copy(1 | h_i) = sigmoid(w^T h_i + b)     "x^cor_i is the original token"
    L_copy = -1[x^orig_i = x^cor_i] log p_copy(1|h_i) - 1[x^orig_i != x^cor_i] log p_copy(0|h_i)
    LM head    softmax(LM(h_i)) over the vocabulary (the model's own MLM head, tied)
    p_CLM(x^orig_i | h_i) = 1[x^orig_i = x^cor_i] p_copy(1|h_i)
                            + p_copy(0|h_i) softmax(LM(h_i))[x^orig_i]
    L_LM = -log p_CLM(x^orig_i | h_i), p_copy under stop-gradient (the copy head learns
           from L_copy alone, as in the paper)

  Sequence contrastive learning (SCL):
    x^crop = [CLS] a contiguous crop of crop_ratio (90%) of w [SEP]: the positive view
    s = LN(act(W h_[CLS] + b)) / ||.||, for x^cor and x^crop of each of the B windows
    L_SCL = -1/(2B) sum_v log exp(s_v . s_v+ / tau) / sum_{u != v} exp(s_v . s_u / tau)
            (v+: the other view of v's window; the other 2B - 2 views are negatives)

    L = L_MLM + copy_weight * L_copy + L_LM + scl_weight * L_SCL

Defaults as the paper's code (microsoft/COCO-LM, fairseq `cocolm` base architecture):
copy_weight 50, scl_weight 1, tau 1, an auxiliary model as wide as the main one with a
third of its layers (4 of 12: `generator_layers`, default n_layer // 3), sharing its
token / position / type embeddings and embedding LayerNorm (`ElectraPair`).

The trainer divides a SUM by N = m, the input tokens (no padding):

    loss_sum = L_MLM m + copy_weight sum_i BCE_i + sum_i -log p_CLM_i + scl_weight L_SCL m

Saving: model.safetensors holds the main model alone (an MLM encoder whose MLM head is
the CLM head: `load_run`, fine-tuning and `convert --to-hf` see a plain RoBERTa/BERT MLM);
generator.safetensors and coco_heads.safetensors (copy and SCL heads) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..models.layers import ACTIVATIONS, LayerNorm, init_normal_
from .electra import Electra, ElectraPair
from .masking import ELECTRA_MASKING, check_probability
from .mlm import as_windows, check_encoder, masking_fields

# -- the pieces, as pure functions -------------------------------------------------------


def crop_len(window: int, ratio: float) -> int:
    """Tokens in the cropped view of a `window`-token text: round(ratio * window), >= 1."""
    return max(1, min(window, round(ratio * window)))


def crop_windows(windows: np.ndarray, starts, length: int, cls_id: int,
                 sep_id: int) -> np.ndarray:  # fmt: skip
    """[CLS] w[s : s + length] [SEP] for each row w and its start s: (B, length + 2)."""
    B, L = windows.shape
    out = np.empty((B, length + 2), dtype=np.int64)
    out[:, 0], out[:, -1] = cls_id, sep_id
    for b, s in enumerate(starts):
        if not 0 <= s <= L - length:
            raise ValueError(f"crop start {s} leaves fewer than {length} of {L} tokens")
        out[b, 1:-1] = windows[b, s : s + length]
    return out


def copy_targets(corrupted: Tensor, original: Tensor) -> Tensor:
    """The copy head's labels: 1 where the input token is the original, else 0."""
    return (corrupted == original).float()


def clm_log_prob(copy_logit: Tensor, lm_logits: Tensor, original: Tensor,
                 corrupted: Tensor) -> Tensor:  # fmt: skip
    """log p_CLM(x^orig | h) per position, p_copy under stop-gradient:

        p_CLM = 1[x^orig = x^cor] p_copy(1|h) + p_copy(0|h) softmax(LM(h))[x^orig]

    copy_logit (...,), lm_logits (..., V), original / corrupted (...,) -> (...,).
    """
    z = copy_logit.detach().float()
    log_p1, log_p0 = F.logsigmoid(z), F.logsigmoid(-z)  # log p_copy(1|h), log p_copy(0|h)
    log_lm = torch.log_softmax(lm_logits.float(), -1).gather(-1, original[..., None])[..., 0]
    generated = log_p0 + log_lm  # the "write a token" branch
    return torch.where(corrupted == original, torch.logaddexp(log_p1, generated), generated)


def contrastive_logits(a: Tensor, b: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """InfoNCE over the 2B views of a batch, a (B, D) and b (B, D) the two views of each
    sequence. Views are interleaved [a_0, b_0, a_1, b_1, ...] and cosine-compared:

        logits[v, u] = s_v . s_u / tau  (s = x / ||x||),  logits[v, v] = -inf
        labels[v]    = v's other view: [1, 0, 3, 2, ...]

    so cross_entropy(logits, labels) is -log exp(s_v . s_v+ / tau) / sum_{u != v} (...)."""
    B = a.shape[0]
    views = F.normalize(torch.stack([a, b], 1).reshape(2 * B, -1).float(), dim=-1)  # (2B, D)
    logits = views @ views.T / temperature  # (2B, 2B)
    eye = torch.eye(2 * B, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(eye, float("-inf"))
    labels = torch.arange(2 * B, device=logits.device) ^ 1  # 0 <-> 1, 2 <-> 3, ...
    return logits, labels


# -- the models ---------------------------------------------------------------------------


class CocoHeads(nn.Module):
    """The main model's pretraining-only heads: the copy head (one logit per position,
    > 0 means "the input token is the original") and the SCL projection of h_[CLS]."""

    def __init__(self, config):
        super().__init__()
        d = config.d_model
        self.copy = nn.Linear(d, 1)
        self.scl_dense = nn.Linear(d, d)
        self.act = ACTIVATIONS[config.activation]
        self.scl_norm = LayerNorm(d, config.norm_eps)
        init_normal_(self, config.init_std)

    def copy_logit(self, h: Tensor) -> Tensor:
        return self.copy(h).squeeze(-1)  # (B, T)

    def sequence(self, h: Tensor) -> Tensor:
        return self.scl_norm(self.act(self.scl_dense(h[:, 0])))  # (B, d), from [CLS]


class CocoPair(ElectraPair):
    """ElectraPair (auxiliary MLM + main model, shared embeddings) + the COCO heads."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, heads: CocoHeads):
        super().__init__(generator, discriminator)
        self.heads = heads


def generator_config(main_config, layers: int | None):
    """The auxiliary MLM: the main model's width with `layers` blocks (None: a third)."""
    n = max(1, main_config.n_layer // 3) if layers is None else layers
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= main_config.n_layer:
        raise ConfigError(f"config key 'objective.generator_layers': expected an integer in "
                          f"[1, {main_config.n_layer}] (model.n_layer), got {layers!r}")
    return main_config.replace(n_layer=n, encoder_head="mlm", pooler=False)


@dataclass
class Coco(Electra):
    """COCO-LM's objective; masking as ELECTRA's (prepare, sampling: inherited)."""

    generator_layers: int | None = None
    copy_weight: float = 50.0
    scl_weight: float = 1.0
    temperature: float = 1.0
    crop_ratio: float = 0.9
    name = "coco"

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0) -> Coco:
        common = masking_fields(cfg, tokenizer, model_config, seed, "coco")
        check_probability("config key 'objective.crop_ratio'", cfg.crop_ratio, one_ok=True)
        check_encoder(model_config, ("mlm",), "coco")
        for key in ("copy_weight", "scl_weight"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"config key 'objective.{key}': expected a number >= 0, "
                                  f"got {getattr(cfg, key)!r}")
        if not cfg.temperature > 0:
            raise ConfigError(f"config key 'objective.temperature': expected a number > 0, "
                              f"got {cfg.temperature!r}")
        if model_config is not None:
            generator_config(model_config, cfg.generator_layers)  # fails now, not mid-run
        return cls(
            **common, **ELECTRA_MASKING, generator_layers=cfg.generator_layers,
            copy_weight=cfg.copy_weight, scl_weight=cfg.scl_weight,
            temperature=cfg.temperature, crop_ratio=cfg.crop_ratio,
        )

    # -- the models ----------------------------------------------------------------------

    def build_model(self, model_config) -> CocoPair:
        from ..models import build

        main = build(model_config)
        generator = build(generator_config(model_config, self.generator_layers))
        return CocoPair(generator, main, CocoHeads(model_config))

    def checkpoint_parts(self, model: CocoPair) -> dict[str, nn.Module]:
        """model.safetensors = the main model; generator and heads beside it."""
        return {"model": model.discriminator, "generator": model.generator,
                "coco_heads": model.heads}

    def eval_model(self, run) -> CocoPair:
        """The trio of a run dir: its main model (run.model) + the saved generator and heads."""
        from ..models import build
        from ..training.checkpoint import load_weights

        config = run.model.config
        pair = CocoPair(build(generator_config(config, self.generator_layers)), run.model,
                        CocoHeads(config))
        for name, part in (("generator", pair.generator), ("coco_heads", pair.heads)):
            file = run.checkpoint / f"{name}.safetensors"
            if not file.is_file():
                raise CheckpointError(f"{run.checkpoint} has no {file.name}: COCO-LM's "
                                      "evaluation needs the auxiliary model and heads the "
                                      "run trained")
            load_weights(file, part)
        return pair.to(next(run.model.parameters()).device).eval()

    def flops_per_token(self, model: CocoPair, seq_len: int) -> float:
        """Per input token, forward + backward: the auxiliary MLM (head at the masked
        share), the main model with its LM head at every position (+ the copy head), and
        the main model again on the cropped view (crop_len + 2 tokens, no LM head) and the
        SCL projection once per view."""
        from ..flops import encoder_flops_per_token

        main, d = model.discriminator, model.config.d_model
        T_crop = crop_len(seq_len - 2, self.crop_ratio) + 2
        crop = encoder_flops_per_token(main, T_crop, mlm_fraction=0.0) * T_crop / seq_len
        heads = 6.0 * d + 2 * 6.0 * d * d / seq_len  # copy per token, SCL per view
        return (encoder_flops_per_token(model.generator, seq_len, mlm_fraction=self.mask_prob)
                + encoder_flops_per_token(main, seq_len, mlm_fraction=1.0) + crop + heads)

    # -- inputs --------------------------------------------------------------------------

    def corrupt(self, raw, draw: int | None = None) -> dict[str, np.ndarray]:
        """ELECTRA's masked inputs + crop_ids: [CLS] a contiguous crop_ratio share of the
        window [SEP], the start drawn from the row's generator."""
        out = super().corrupt(raw, draw)
        windows = as_windows(raw)
        L = windows.shape[1]
        n = crop_len(L, self.crop_ratio)
        starts = [int(rng.integers(L - n + 1)) for rng in out["_rngs"]]
        out["crop_ids"] = crop_windows(windows, starts, n, self.cls_id, self.sep_id)
        return out

    # -- loss ----------------------------------------------------------------------------

    def losses(self, model: CocoPair, batch: dict[str, Tensor]) -> dict:
        """The four terms: mlm_sum over n masked tokens (auxiliary), copy_sum and lm_sum
        over m tokens, scl_mean over the 2B views; with the logits behind them."""
        t = self.corrupt_with_generator(model, batch)
        corrupted, original = t["disc_input"], t["original"]
        main, heads = model.discriminator, model.heads
        h = main.encode(corrupted)  # (B, T, d)
        copy_logit = heads.copy_logit(h).float()  # (B, T)
        is_original = copy_targets(corrupted, original)
        copy_sum = F.binary_cross_entropy_with_logits(copy_logit, is_original, reduction="sum")
        lm_logits = main.mlm_head(h)  # (B, T, V): the all-token LM head
        log_p = clm_log_prob(copy_logit, lm_logits, original, corrupted)
        h_crop = main.encode(batch["crop_ids"])  # the positive view, uncorrupted
        scl_logits, scl_labels = contrastive_logits(
            heads.sequence(h), heads.sequence(h_crop), self.temperature)
        scl_mean = F.cross_entropy(scl_logits, scl_labels)
        return {**t, "copy_sum": copy_sum, "lm_sum": -log_p.sum(), "scl_mean": scl_mean,
                "m": int(corrupted.numel()), "copy_logit": copy_logit,
                "is_original": is_original, "lm_logits": lm_logits, "scl_logits": scl_logits,
                "scl_labels": scl_labels}

    def total(self, t: dict) -> Tensor:
        """L_MLM m + copy_weight sum BCE + sum -log p_CLM + scl_weight L_SCL m."""
        m = t["m"]
        mlm_mean = t["mlm_sum"] / max(t["n"], 1)
        return (mlm_mean * m + self.copy_weight * t["copy_sum"] + t["lm_sum"]
                + self.scl_weight * t["scl_mean"] * m)

    def loss(self, model: CocoPair, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """(the sum above, m): divided by m, L_MLM + 50 L_copy + L_LM + L_SCL."""
        t = self.losses(model, batch)
        return self.total(t), t["m"]

    @torch.no_grad()
    def evaluate(self, model, batch: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
        """loss: the training loss; acc: the copy head's accuracy over all tokens
        (replaced_acc: on the replaced ones); correct_acc, lm_acc: the LM head's top-1 =
        the original on the replaced / the masked tokens; copy_loss, lm_loss (per token); scl_loss,
        scl_acc (the other view ranks first) per view; gen_loss, gen_acc: the auxiliary
        MLM's."""
        t = self.losses(model, batch)
        n, m = t["n"], t["m"]
        right = (t["copy_logit"] > 0).float() == t["is_original"]
        replaced = t["is_original"] == 0
        corrected = t["lm_logits"].argmax(-1) == t["original"]  # (B, T)
        chosen = t["chosen"]
        views = len(t["scl_labels"])
        return {
            "loss": (float(self.total(t)), m),
            "acc": (float(right.sum()), m),
            "replaced_acc": (float(right[replaced].sum()), int(replaced.sum())),
            "correct_acc": (float(corrected[replaced].sum()), int(replaced.sum())),
            "lm_acc": (float(corrected[chosen].sum()), n),
            "copy_loss": (float(t["copy_sum"]), m),
            "lm_loss": (float(t["lm_sum"]), m),
            "scl_loss": (float(t["scl_mean"]) * views, views),
            "scl_acc": (float((t["scl_logits"].argmax(-1) == t["scl_labels"]).sum()), views),
            "gen_loss": (float(t["mlm_sum"]), n),
            "gen_acc": (float((t["gen_logits"].argmax(-1) == t["targets"]).sum()), n),
        }
