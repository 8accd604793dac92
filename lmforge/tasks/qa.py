"""Extractive span QA (SQuAD-style): point at the answer's first and last token.

Rows are {"question", "context", "answers": [str], "answer_starts": [char offset]}.
The input is the question and the context as a pair:

    encoder   [CLS] question [SEP] context [SEP]     token types 0 ... 0 1 ... 1
    decoder   [BOS] question EOS context EOS         seq2seq: the same (BART's recipe)

Offsets without a tokenizer offset map: the context is cut into words and punctuation
marks (regex `\\w+|[^\\w\\s]`), each piece is encoded on its own (with a leading space
where the text has one, as it would read), and every subword of a piece maps back to the
piece's characters. Answers therefore resolve to whole pieces ("1879" out of "1879,").
The same code runs for byte-level BPE and WordPiece tokenizers.

Training targets: the first token of the first piece the gold answer touches (start) and
the last token of the last one (end); the first gold answer is used.

    loss = sum over rows of (CE(start logits, s) + CE(end logits, e)) / 2    (n = rows)

Prediction: the span (i, j) of context tokens, i <= j < i + max_answer_tokens, that
maximizes start_i + end_j; its text is the context's characters from piece(i) to piece(j).

Long contexts are truncated to `max_len` (no sliding window): a training answer cut off
points at position 0 (the [CLS] / first token, "no answer here", as BERT does for
SQuAD 2.0), and at evaluation it simply cannot be found, which costs EM / F1 visibly.
Our wiki-qa contexts are single sentences; `options.max_answer_tokens` (default 30).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..models.heads import SpanHead, TaskModel
from .modes import Mode, chunks, model_device, pad

_PIECE = re.compile(r"\w+|[^\w\s]")


class SpanQA(Mode):
    name = "qa"
    options_known = ("max_answer_tokens",)

    def __init__(self, task, tokenizer, model_config, **kw):
        super().__init__(task, tokenizer, model_config, **kw)
        if task.type != "qa":
            raise ConfigError(f"mode 'qa' does not fit task type {task.type!r}")
        tok = tokenizer
        if model_config.arch == "encoder":
            start = tok.cls_id if tok.cls_id is not None else tok.bos_id
            sep = tok.sep_id if tok.sep_id is not None else tok.eos_id
            if start is None or sep is None:
                raise ConfigError("an encoder needs [CLS] and [SEP] (or <s> and </s>) special "
                                  f"tokens; tokenizer {tok!r} has neither")
            self.prefix, self.sep = [start], [sep]
        else:
            if tok.eos_id is None:
                raise ConfigError(f"span QA on a {model_config.arch} needs an end-of-text "
                                  f"token; {tok!r} has none")
            bos = tok.bos_id
            self.prefix = [bos] if bos is not None and bos != tok.eos_id else []
            self.sep = [tok.eos_id]
        self.pad_id = tok.pad_id if tok.pad_id is not None else (model_config.pad_token_id or 0)
        self.use_types = model_config.arch == "encoder" and model_config.type_vocab_size >= 2
        self.max_answer_tokens = int(self.options.get("max_answer_tokens", 30))

    def build_model(self, backbone: nn.Module) -> TaskModel:
        head = SpanHead(backbone.config.d_model)
        nn.init.normal_(head.out.weight, 0.0, backbone.config.init_std)
        nn.init.zeros_(head.out.bias)
        return TaskModel(backbone, head, "tokens")

    # -- data ---------------------------------------------------------------------------

    def check(self, rows: list[dict], where: str) -> None:
        if not rows:
            raise DataError(f"{where}: no examples")
        for i, r in enumerate(rows):
            for key in ("question", "context"):
                if not isinstance(r.get(key), str) or not r[key].strip():
                    raise DataError(f"{where}, row {i}: empty '{key}'")
            answers, starts = r.get("answers"), r.get("answer_starts")
            if not answers or not isinstance(answers, list) or not isinstance(starts, list) \
                    or len(answers) != len(starts):
                raise DataError(f"{where}, row {i}: 'answers' and 'answer_starts' must be "
                                "lists of equal, non-zero length")
            for a, s in zip(answers, starts):
                if r["context"][s:s + len(a)] != a:
                    raise DataError(f"{where}, row {i}: answer {a!r} is not at character "
                                    f"{s} of the context")

    def encode(self, row: dict) -> dict:
        """ids, token types, each context token's (char start, char end), span targets."""
        tok = self.tokenizer
        q = tok.encode_ordinary(row["question"])
        context = row["context"]
        ids_c: list[int] = []
        spans: list[tuple[int, int]] = []
        for m in _PIECE.finditer(context):
            spaced = m.start() > 0 and context[m.start() - 1].isspace()
            pieces = tok.encode_ordinary((" " if spaced else "") + m.group())
            ids_c += pieces
            spans += [(m.start(), m.end())] * len(pieces)
        n_special = len(self.prefix) + 2 * len(self.sep)
        q = q[: max(1, (self.max_len - n_special) // 2)]  # a long question keeps half
        room = max(self.max_len - n_special - len(q), 1)
        ids_c, spans = ids_c[:room], spans[:room]
        offset = len(self.prefix) + len(q) + len(self.sep)  # first context token
        ids = self.prefix + q + self.sep + ids_c + self.sep
        types = [0] * offset + [1] * (len(ids_c) + len(self.sep))
        start = end = 0  # "not in the window"
        if row.get("answers"):
            a0 = row["answer_starts"][0]
            a1 = a0 + len(row["answers"][0])
            inside = [t for t, (s, e) in enumerate(spans) if s < a1 and e > a0]
            if inside and spans[inside[-1]][1] >= a1:  # else the window cut the answer
                start, end = offset + inside[0], offset + inside[-1]
        return {"input_ids": ids, "token_type_ids": types, "spans": spans, "offset": offset,
                "start": start, "end": end}

    def prepare(self, rows: list[dict], draw=None) -> dict[str, Tensor]:
        enc = [self.encode(r) for r in rows]
        batch = {
            "input_ids": pad([e["input_ids"] for e in enc], self.pad_id),
            "attention_mask": pad([[1] * len(e["input_ids"]) for e in enc], 0),
            "start_positions": torch.tensor([e["start"] for e in enc]),
            "end_positions": torch.tensor([e["end"] for e in enc]),
        }
        if self.use_types:
            batch["token_type_ids"] = pad([e["token_type_ids"] for e in enc], 0)
        return batch

    def references(self, rows: list[dict]) -> list:
        return [list(r["answers"]) for r in rows]

    # -- loss and predictions --------------------------------------------------------------

    def num_targets(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        start, end = model(batch["input_ids"], batch["attention_mask"],
                           batch.get("token_type_ids"))
        mask = batch["attention_mask"] == 0
        start = start.float().masked_fill(mask, float("-inf"))  # pads are never the answer
        end = end.float().masked_fill(mask, float("-inf"))
        loss = (F.cross_entropy(start, batch["start_positions"], reduction="sum")
                + F.cross_entropy(end, batch["end_positions"], reduction="sum")) / 2
        return loss, int(start.shape[0])

    def best_span(self, start: list[float], end: list[float], first: int,
                  n: int) -> tuple[int, int]:
        """argmax over first <= i <= j < first + n, j - i < max_answer_tokens of s_i + e_j."""
        s = torch.tensor(start[first:first + n])
        e = torch.tensor(end[first:first + n])
        scores = s[:, None] + e[None, :]  # (n, n): score of span (i, j)
        i = torch.arange(n)
        allowed = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < self.max_answer_tokens)
        flat = int(scores.masked_fill(~allowed, float("-inf")).argmax())
        return flat // n, flat % n

    @torch.no_grad()
    def predict(self, model: nn.Module, rows: list[dict]) -> list[str]:
        """The predicted answer text of each row."""
        device = model_device(model)
        out = []
        for part in chunks(rows, self.eval_batch_size):
            enc = [self.encode({"question": r["question"], "context": r["context"]})
                   for r in part]
            ids = pad([e["input_ids"] for e in enc], self.pad_id).to(device)
            mask = pad([[1] * len(e["input_ids"]) for e in enc], 0).to(device)
            types = pad([e["token_type_ids"] for e in enc], 0).to(device) \
                if self.use_types else None
            start, end = model(ids, mask, types)
            for s, e_, enc_r, r in zip(start.float().tolist(), end.float().tolist(), enc, part):
                if not enc_r["spans"]:
                    out.append("")
                    continue
                i, j = self.best_span(s, e_, enc_r["offset"], len(enc_r["spans"]))
                out.append(r["context"][enc_r["spans"][i][0]:enc_r["spans"][j][1]])
        return out
