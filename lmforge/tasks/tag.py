"""Token classification (NER): one BIO tag per word, predicted at its first subword.

Rows are {"tokens": [words], "tags": [BIO names]}; `tagging.align` turns each into ids
and per-token labels: the first subword of a word carries the word's tag, the other
subwords and the special tokens carry IGNORE (-100), so each word counts once in the loss
whatever its length in tokens (BERT's NER recipe). Around the words:

    encoder    [CLS] words [SEP]      decoder   [BOS] words      seq2seq   [BOS] words EOS

([BOS] only where the tokenizer has one distinct from EOS.) A decoder tags causally: each
word is tagged from the words up to it. Words cut off by `max_len` are predicted "O" and
still count in the score (see tagging.py).

    loss = -sum over labelled tokens t of log softmax(z_t)[y_t]      (n = labelled tokens)

Predictions go back to words with `tagging.word_predictions` and seqeval scores entities
(metrics.entity_f1: an entity counts only if its type and both boundaries are right).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..models.heads import TaskModel, TokenClassificationHead
from ..objectives.clm import IGNORE
from .modes import Mode, boundary_ids, chunks, model_device, pad
from .tagging import align, word_predictions


class Tag(Mode):
    name = "tag"
    options_known = ("classifier_dropout",)

    def __init__(self, task, tokenizer, model_config, **kw):
        super().__init__(task, tokenizer, model_config, **kw)
        if task.type != "tagging":
            raise ConfigError(f"mode 'tag' does not fit task type {task.type!r}")
        tok, arch = tokenizer, model_config.arch
        if arch == "decoder":  # [BOS] words: nothing after them (a causal tagger)
            bos = tok.bos_id if tok.bos_id is not None and tok.bos_id != tok.eos_id else None
            self.prefix, self.suffix = ([bos] if bos is not None else []), []
        else:
            self.prefix, self.suffix = boundary_ids(tok, arch, "mode 'tag'")
        self.pad_id = tok.pad_id if tok.pad_id is not None else (model_config.pad_token_id or 0)
        self.labels = list(task.labels)
        self.dropout = float(self.options.get("classifier_dropout", 0.1))

    def build_model(self, backbone: nn.Module) -> TaskModel:
        cfg = backbone.config
        head = TokenClassificationHead(cfg.d_model, len(self.labels), self.dropout)
        nn.init.normal_(head.out.weight, 0.0, cfg.init_std)
        nn.init.zeros_(head.out.bias)
        return TaskModel(backbone, head, "tokens")

    # -- data ---------------------------------------------------------------------------

    def check(self, rows: list[dict], where: str) -> None:
        if not rows:
            raise DataError(f"{where}: no examples")
        known = set(self.labels)
        for i, r in enumerate(rows):
            words, tags = r.get("tokens"), r.get("tags")
            if not isinstance(words, list) or not words or not all(
                    isinstance(w, str) and w.strip() for w in words):
                raise DataError(f"{where}, row {i}: 'tokens' must be a non-empty list of "
                                "non-empty words")
            if not isinstance(tags, list) or len(tags) != len(words):
                raise DataError(f"{where}, row {i}: {len(words)} words but "
                                f"{len(tags) if isinstance(tags, list) else 'no'} tags")
            bad = next((t for t in tags if t not in known), None)
            if bad is not None:
                raise DataError(f"{where}, row {i}: tag {bad!r} is not in the label set")

    def encode(self, row: dict) -> dict:
        return align(row["tokens"], row.get("tags"), self.tokenizer, self.labels,
                     prefix_ids=self.prefix, suffix_ids=self.suffix, max_len=self.max_len)

    def prepare(self, rows: list[dict], draw=None) -> dict[str, Tensor]:
        enc = [self.encode(r) for r in rows]
        return {
            "input_ids": pad([e["input_ids"] for e in enc], self.pad_id),
            "attention_mask": pad([[1] * len(e["input_ids"]) for e in enc], 0),
            "labels": pad([e["labels"] for e in enc], IGNORE),
        }

    def references(self, rows: list[dict]) -> list:
        return [list(r["tags"]) for r in rows]

    # -- loss and predictions --------------------------------------------------------------

    def num_targets(self, batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        z = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, T, L)
        y = batch["labels"]
        loss = F.cross_entropy(z.flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                               reduction="sum")
        return loss, int((y != IGNORE).sum())

    @torch.no_grad()
    def predict(self, model: nn.Module, rows: list[dict]) -> list[list[str]]:
        """One list of word-level tag names per row."""
        device = model_device(model)
        out = []
        for part in chunks(rows, self.eval_batch_size):
            enc = [self.encode({"tokens": r["tokens"]}) for r in part]
            ids = pad([e["input_ids"] for e in enc], self.pad_id).to(device)
            mask = pad([[1] * len(e["input_ids"]) for e in enc], 0).to(device)
            pred = model(ids, mask).argmax(-1).tolist()  # (B, T)
            for p, e, r in zip(pred, enc, part):
                out.append(word_predictions(p, e["word_ids"], self.labels, len(r["tokens"])))
        return out
