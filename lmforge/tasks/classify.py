"""Sequence classification and regression: one label (or one score) per text or pair.

How a row becomes tokens depends on the body (the lecture's fine-tuning slides):

    encoder     [CLS] A [SEP]            pair: [CLS] A [SEP] B [SEP]
                token types 0 ... 0            0 ...     0  1 ... 1   (BERT segments)
                reads the pooled [CLS] vector (or h_[CLS] + dense/tanh without a pooler)
    xlnet       A [SEP] [CLS]            pair: A [SEP] B [SEP] [CLS]
                token types 0 ... 0 2          0 ... 0 1 ... 1 2      ([CLS] its own)
                reads h at the last token, [CLS], + dense/tanh (XLNet's sequence summary)
    decoder     [BOS] A EOS              pair: [BOS] A EOS B EOS
                reads h at the last non-pad token (the only one that saw the whole input)
    seq2seq     [BOS] A EOS              pair: [BOS] A EOS B EOS   (BART: <s> A </s></s>..)
                the same ids go to the encoder and, shifted right, to the decoder;
                reads the decoder's h at the last EOS (BartForSequenceClassification)

[BOS] only where the tokenizer has one distinct from EOS. An encoder tokenizer without
[CLS] / [SEP] (nor <s> / </s>, RoBERTa's) cannot mark the segments: ConfigError.
Too long? Pairs lose tokens from the longer side first ("longest first", as HF), single
texts from the end, so that the whole sequence fits `max_len`.

Loss, summed over the batch (the trainer divides by the batch size):
    classification   CE = -sum_i log softmax(z_i)[y_i]
    regression       MSE = sum_i (s_i - y_i)^2        (num_labels = 1, STS-B style)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..models.heads import ClassificationHead, TaskModel
from ..models.layers import ACTIVATIONS
from .modes import Mode, boundary_ids, chunks, model_device, pad


class Classify(Mode):
    name = "classify"
    options_known = ("classifier_dropout",)

    def __init__(self, task, tokenizer, model_config, **kw):
        super().__init__(task, tokenizer, model_config, **kw)
        if task.type not in ("classification", "pair-classification", "regression"):
            raise ConfigError(f"mode 'classify' does not fit task type {task.type!r}")
        self.regression = task.type == "regression"
        self.num_labels = task.num_labels
        arch = model_config.arch
        tok = tokenizer
        self.prefix, self.sep = boundary_ids(tok, arch, "mode 'classify'")
        self.eos_id = self.sep[0]
        self.pad_id = tok.pad_id if tok.pad_id is not None else (model_config.pad_token_id or 0)
        self.use_types = arch in ("encoder", "xlnet") and model_config.type_vocab_size >= 2
        # XLNet reads the class at the end: A [SEP] [CLS] (the [CLS] in segment 2)
        self.suffix = [tok.cls_id] if arch == "xlnet" and tok.cls_id is not None else []
        self.dropout = float(self.options.get("classifier_dropout", 0.1))

    # -- the model ----------------------------------------------------------------------

    def build_model(self, backbone: nn.Module) -> TaskModel:
        cfg = backbone.config
        d = cfg.d_model
        if cfg.arch == "encoder":
            pooling = "pooler" if cfg.pooler else "first"
        elif cfg.arch == "xlnet":
            pooling = "last"
        else:
            pooling = "last" if cfg.arch == "decoder" else "eos"
        # DeBERTa's ContextPooler: dense + the body's activation on h_[CLS]
        act = ACTIVATIONS[cfg.activation] if cfg.attention == "disentangled" else torch.tanh
        head = ClassificationHead(d, self.num_labels, self.dropout,
                                  dense=pooling in ("first", "eos") or cfg.arch == "xlnet",
                                  activation=act)
        nn.init.normal_(head.out.weight, 0.0, cfg.init_std)
        nn.init.zeros_(head.out.bias)
        if head.dense is not None:
            nn.init.normal_(head.dense.weight, 0.0, cfg.init_std)
            nn.init.zeros_(head.dense.bias)
        return TaskModel(backbone, head, pooling, eos_token_id=self.eos_id)

    # -- data ---------------------------------------------------------------------------

    def check(self, rows: list[dict], where: str) -> None:
        if not rows:
            raise DataError(f"{where}: no examples")
        paired = self.task.type == "pair-classification"
        for i, r in enumerate(rows):
            text = r.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}, row {i}: empty 'text'")
            pair = r.get("text_pair")
            if (paired or "text_pair" in r) and (not isinstance(pair, str) or not pair.strip()):
                raise DataError(f"{where}, row {i}: pair with a missing side ('text_pair')")
            label = r.get("label")
            if self.regression:
                if not isinstance(label, (int, float)) or not math.isfinite(label):
                    raise DataError(f"{where}, row {i}: label {label!r} is not a number")
            elif not isinstance(label, int) or isinstance(label, bool) \
                    or not 0 <= label < self.num_labels:
                raise DataError(f"{where}, row {i}: label {label!r} is not in the label set "
                                f"(0..{self.num_labels - 1}: {', '.join(self.task.labels)})")

    def encode(self, row: dict) -> tuple[list[int], list[int]]:
        """(ids, token types) of one row, cut to max_len (see the module docstring)."""
        a = self.tokenizer.encode_ordinary(row["text"])
        pair = row.get("text_pair")
        b = self.tokenizer.encode_ordinary(pair) if pair is not None else None
        n_special = (len(self.prefix) + len(self.sep) * (2 if b is not None else 1)
                     + len(self.suffix))
        room = max(self.max_len - n_special, 2)
        if b is None:
            a = a[:room]
        else:
            while len(a) + len(b) > room:  # longest first
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
        ids = self.prefix + a + self.sep
        types = [0] * len(ids)
        if b is not None:
            ids += b + self.sep
            types += [1] * (len(b) + len(self.sep))
        ids += self.suffix
        types += [2] * len(self.suffix)
        return ids, types

    def prepare(self, rows: list[dict], draw=None) -> dict[str, Tensor]:
        encoded = [self.encode(r) for r in rows]
        ids = pad([e[0] for e in encoded], self.pad_id)
        mask = pad([[1] * len(e[0]) for e in encoded], 0)
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.use_types:
            batch["token_type_ids"] = pad([e[1] for e in encoded], 0)
        if rows and "label" in rows[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=dtype)
        return batch

    # -- loss and predictions --------------------------------------------------------------

    def num_targets(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])

    def logits(self, model: nn.Module, batch: dict) -> Tensor:
        return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        z = self.logits(model, batch).float()  # (B, num_labels)
        y = batch["labels"]
        if self.regression:
            loss = F.mse_loss(z.squeeze(-1), y.float(), reduction="sum")  # sum (s - y)^2
        else:
            loss = F.cross_entropy(z, y, reduction="sum")  # -sum log p(y)
        return loss, int(y.shape[0])

    @torch.no_grad()
    def predict(self, model: nn.Module, rows: list[dict]) -> list:
        """Label indexes (classification) or scores (regression), one per row."""
        device = model_device(model)
        out: list = []
        for part in chunks(rows, self.eval_batch_size):
            batch = {k: v.to(device) for k, v in self.prepare(part).items() if k != "labels"}
            z = self.logits(model, batch).float()
            out += z.squeeze(-1).tolist() if self.regression else z.argmax(-1).tolist()
        return out
