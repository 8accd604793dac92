"""ELECTRA (Clark et al. 2020): replaced-token detection with a small generator.

    window -> [CLS] w [SEP] -> mask 15% (85% [MASK], 15% unchanged: ELECTRA_MASKING)
    generator (a small MLM)  : predicts the masked tokens          L_MLM (mean over n)
    sample x'_i ~ p_G(. | masked input) at each masked position    (no gradient)
    discriminator input      : the samples there, the originals elsewhere
    discriminator (RTD head) : is each token replaced (x'_i != x_i)? L_RTD (mean over m)

    L = L_MLM + rtd_weight * L_RTD            (rtd_weight = 50 in the paper)

The generator is the discriminator scaled down in width (`generator_size`, 1/4 for small:
`presets.electra_generator`) and shares its embeddings -- token, position, token-type
and the embedding LayerNorm, the whole `embeddings` scope of the paper's code -- as the
same Parameter objects; with d_gen < E the generator projects them up to its width. The
generator's MLM decoder is tied to the shared token table. Sampling uses a
torch.Generator seeded from the rows' masking generators, so a batch's corruption is
fixed by (seed, draw, tokens): evaluation (draw=None) sees the same samples every time,
and a resumed run redraws exactly.

Gradient-disentangled embedding sharing (DeBERTa v3, `embedding_sharing: gdes`): the
discriminator's token table is the generator's plus a delta behind a stop-gradient,

    E_D = sg(E_G) + E_Delta,      E_Delta initialised at 0

so the RTD loss trains E_Delta only and E_G learns from the generator's MLM alone (no
tug-of-war between the two losses); at step 0 the two tables are equal, as with plain
sharing. The other embeddings stay shared; a DeBERTa body's LayerNorm (over its own
width, after the projection) is its own. The discriminator's saved tok_embed.weight is
E_G + E_Delta (a plain encoder loads it); gdes.safetensors keeps E_Delta for exact resume.

The trainer divides a SUM by N; here N = m, the input tokens (none is padding) and

    loss_sum = L_MLM * m + rtd_weight * sum_t BCE_t,   loss_sum / m = L_MLM + w * L_RTD

so under gradient accumulation L_RTD is the exact token mean and L_MLM the token-weighted
mean of the micro-batches' means.

Saving: a checkpoint's model.safetensors holds the discriminator alone -- the run's
model, what `load_run`, `generate`, `convert --to-hf` and fine-tuning read -- and
generator.safetensors the generator, for exact resume and for `lmforge eval` (which
rebuilds the pair with `eval_model`). After pretraining the discriminator is the model;
the generator is kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from .clm import IGNORE
from .masking import ELECTRA_MASKING, sample_tokens
from .mlm import MaskedLM, check_encoder, masking_fields


class GdesEmbedding(nn.Module):
    """E_D = sg(E_G) + E_Delta: the generator's table, detached, plus a zero-initialised
    delta. Its state dict holds the sum as `weight` (a plain nn.Embedding's), ignored on
    load: E_Delta itself is restored from the pair's "gdes" part."""

    def __init__(self, source: nn.Embedding):
        super().__init__()
        self._source = [source]  # a list: the generator owns E_G, not this module
        self.delta = nn.Parameter(torch.zeros_like(source.weight))

    @property
    def weight(self) -> Tensor:
        return self._source[0].weight.detach() + self.delta

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args):
        pass  # the sum is derived; E_Delta comes from the "gdes" checkpoint part


class ElectraPair(nn.Module):
    """The generator and the discriminator trained together, sharing their embeddings
    (or, with `gdes`, the discriminator's token table as GdesEmbedding over the
    generator's). `config` is the discriminator's (the run's model)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, gdes: bool = False):
        super().__init__()
        names = ["tok_embed", "pos_embed", "type_embed", "embed_norm"]
        if getattr(discriminator, "deberta", False):
            names.remove("embed_norm")  # DeBERTa normalizes over the body's width
        if gdes:  # E_D = sg(E_G) + E_Delta; the generator keeps its own table
            names.remove("tok_embed")
            discriminator.tok_embed = GdesEmbedding(generator.tok_embed)
        for name in names:
            setattr(generator, name, getattr(discriminator, name))
        generator.tie_weights()  # its MLM decoder reads the shared token table
        self.generator = generator
        self.discriminator = discriminator

    @property
    def config(self):
        return self.discriminator.config

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.generator.gradient_checkpointing = enabled
        self.discriminator.gradient_checkpointing = enabled


def generator_config(disc_config, size: float):
    """The generator's ModelConfig: `presets.electra_generator` at width multiplier `size`."""
    from ..models import presets

    if not (isinstance(size, (int, float)) and 0 < size <= 1):
        raise ConfigError(f"config key 'objective.generator_size': expected a number in "
                          f"(0, 1], got {size!r}")
    try:
        return presets.electra_generator(disc_config, size)
    except ConfigError as e:
        raise ConfigError(f"config key 'objective.generator_size': {size} gives no valid "
                          f"generator ({e})") from None


@dataclass
class Electra(MaskedLM):
    """ELECTRA's objective; masking knobs as MaskedLM's (pair none, ELECTRA_MASKING)."""

    generator_size: float = 0.25
    rtd_weight: float = 50.0
    embedding_sharing: str = "shared"  # or "gdes" (DeBERTa v3)
    name = "electra"
    perplexity = False

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0) -> Electra:

        common = masking_fields(cfg, tokenizer, model_config, seed, "electra")
        check_encoder(model_config, ("rtd",), "electra")
        if cfg.rtd_weight < 0:
            raise ConfigError(f"config key 'objective.rtd_weight': expected a number >= 0, "
                              f"got {cfg.rtd_weight!r}")
        if cfg.embedding_sharing not in ("shared", "gdes"):
            raise ConfigError(f"config key 'objective.embedding_sharing': expected shared or "
                              f"gdes, got {cfg.embedding_sharing!r}")
        if model_config is not None:
            generator_config(model_config, cfg.generator_size)  # fails now, not mid-run
        return cls(
            **common, **ELECTRA_MASKING, generator_size=cfg.generator_size,
            rtd_weight=cfg.rtd_weight, embedding_sharing=cfg.embedding_sharing,
        )

    # -- the two models ------------------------------------------------------------------

    def build_model(self, model_config) -> ElectraPair:
        from ..models import build

        discriminator = build(model_config)
        generator = build(generator_config(model_config, self.generator_size))
        return ElectraPair(generator, discriminator, self.embedding_sharing == "gdes")

    def export(self, model: ElectraPair) -> nn.Module:
        return model.discriminator

    def checkpoint_parts(self, model: ElectraPair) -> dict[str, nn.Module]:
        """model.safetensors = the discriminator; generator.safetensors beside it (and
        gdes.safetensors = E_Delta with gdes)."""
        parts = {"model": model.discriminator, "generator": model.generator}
        if isinstance(model.discriminator.tok_embed, GdesEmbedding):
            parts["gdes"] = nn.ParameterDict({"tok_embed": model.discriminator.tok_embed.delta})
        return parts

    def eval_model(self, run) -> ElectraPair:
        """The pair of a run dir: its discriminator (run.model) + the saved generator."""
        from ..training.checkpoint import load_weights

        file = run.checkpoint / "generator.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{run.checkpoint} has no generator.safetensors: replaced-"
                                  "token detection needs the generator the run trained")
        from ..models import build

        generator = build(generator_config(run.model.config, self.generator_size))
        tables = run.model.tok_embed.weight.detach().clone()  # E_G + E_Delta, as saved
        pair = ElectraPair(generator, run.model, self.embedding_sharing == "gdes")
        load_weights(file, generator)
        if self.embedding_sharing == "gdes":  # the same E_D: E_Delta = saved - E_G
            pair.discriminator.tok_embed.delta.data = tables - generator.tok_embed.weight
        device = next(run.model.parameters()).device
        return pair.to(device).eval()

    def flops_per_token(self, model: ElectraPair, seq_len: int) -> float:
        """Generator (MLM head at the masked share) + discriminator, forward + backward
        each; sampling is free."""
        from ..flops import encoder_flops_per_token

        return (encoder_flops_per_token(model.generator, seq_len, mlm_fraction=self.mask_prob)
                + encoder_flops_per_token(model.discriminator, seq_len))

    # -- inputs --------------------------------------------------------------------------

    def prepare(self, raw, draw: int | None = None) -> dict[str, Tensor]:
        """Windows -> input_ids (masked, for the generator), labels (originals at the
        masked positions, IGNORE elsewhere) and sample_seed (seeds the sampling)."""
        out = self.corrupt(raw, draw)
        rngs = out.pop("_rngs")
        # one seed for the batch's samples, drawn from every row's generator
        seed = np.random.default_rng([int(r.integers(2**32)) for r in rngs]).integers(2**62)
        batch = {k: torch.from_numpy(v) for k, v in out.items()}
        batch["sample_seed"] = torch.tensor(int(seed))
        return batch

    @staticmethod
    def num_targets(batch: dict[str, Tensor]) -> int:
        """m: every input token counts in the RTD mean."""
        return int(batch["input_ids"].numel())

    # -- loss ----------------------------------------------------------------------------

    @staticmethod
    def corrupt_with_generator(model: ElectraPair, batch: dict[str, Tensor]) -> dict:
        """The generator's part (also COCO-LM's): its MLM loss mlm_sum over the n masked
        tokens, and the corrupted input -- its samples at the masked positions, the
        originals elsewhere."""
        masked, labels = batch["input_ids"], batch["labels"]
        chosen = labels != IGNORE
        gen = model.generator
        gen_logits = gen.mlm_head(gen.mlm_hidden(masked)[chosen])  # (n, V); DeBERTa: EMD
        targets = labels[chosen]
        mlm_sum = F.cross_entropy(gen_logits.float(), targets, reduction="sum")
        rng = torch.Generator(masked.device).manual_seed(int(batch["sample_seed"]))
        sampled = sample_tokens(gen_logits, rng)  # no gradient through the sample
        disc_input = masked.clone()
        disc_input[chosen] = sampled
        original = torch.where(chosen, labels, masked)
        return {"mlm_sum": mlm_sum, "n": int(targets.numel()), "gen_logits": gen_logits,
                "targets": targets, "chosen": chosen, "disc_input": disc_input,
                "original": original}

    def losses(self, model: ElectraPair, batch: dict[str, Tensor]) -> dict:
        """The two terms: mlm_sum over n masked tokens, rtd_sum over m tokens, with the
        logits and labels behind them."""
        t = self.corrupt_with_generator(model, batch)
        replaced = (t["disc_input"] != t["original"]).float()  # RTD labels: 1 = replaced
        disc = model.discriminator
        rtd_logits = disc.rtd_head(disc.encode(t["disc_input"])).float()  # (B, T)
        rtd_sum = F.binary_cross_entropy_with_logits(rtd_logits, replaced, reduction="sum")
        return {**t, "rtd_sum": rtd_sum, "m": int(replaced.numel()), "rtd_logits": rtd_logits,
                "replaced": replaced}

    def loss(self, model: ElectraPair, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """(L_MLM * m + rtd_weight * sum BCE, m): divided by m, L_MLM + w * L_RTD."""
        t = self.losses(model, batch)
        mlm_mean = t["mlm_sum"] / max(t["n"], 1)
        return mlm_mean * t["m"] + self.rtd_weight * t["rtd_sum"], t["m"]

    @torch.no_grad()
    def evaluate(self, model, batch: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
        """loss: the training loss; acc: RTD accuracy over all tokens (replaced_acc /
        original_acc: on the replaced / the other tokens); rtd_loss; gen_loss, gen_acc:
        the generator's masked-token loss and accuracy."""
        t = self.losses(model, batch)
        n, m = t["n"], t["m"]
        mlm_mean = float(t["mlm_sum"]) / max(n, 1)
        predicted = (t["rtd_logits"] > 0).float()
        right = predicted == t["replaced"]
        is_replaced = t["replaced"].bool()
        return {
            "loss": (mlm_mean * m + self.rtd_weight * float(t["rtd_sum"]), m),
            "acc": (float(right.sum()), m),
            "replaced_acc": (float(right[is_replaced].sum()), int(is_replaced.sum())),
            "original_acc": (float(right[~is_replaced].sum()), int((~is_replaced).sum())),
            "rtd_loss": (float(t["rtd_sum"]), m),
            "gen_loss": (float(t["mlm_sum"]), n),
            "gen_acc": (float((t["gen_logits"].argmax(-1) == t["targets"]).sum()), n),
        }
