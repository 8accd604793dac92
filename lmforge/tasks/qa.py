"""Extractive span QA (SQuAD-style): point at the answer's first and last token.

Rows are {"question", "context", "answers": [str], "answer_starts": [char offset]}.
The input is the question and (a window of) the context as a pair:

    encoder   [CLS] question [SEP] context [SEP]     token types 0 ... 0 1 ... 1
    xlnet     question [SEP] context [SEP]           (the same types; no [CLS] needed)
    decoder   [BOS] question EOS context EOS         seq2seq: the same (BART's recipe)

Offsets without a tokenizer offset map: the context is cut into words and punctuation
marks (regex `\\w+|[^\\w\\s]`), each piece is encoded on its own (with a leading space
where the text has one, as it would read), and every subword of a piece maps back to the
piece's characters. Answers therefore resolve to whole pieces ("1879" out of "1879,").
The same code runs for byte-level BPE and WordPiece tokenizers.

Long contexts: sliding windows (Hugging Face's `run_qa.py`, `doc_stride`). The question
is cut to at most half of `max_len - specials`; the context room is what is left,

    room = max_len - specials - len(question),   step = room - doc_stride

and each row becomes one *feature* per window, `prefix + question + sep + window + sep`.
Consecutive windows overlap by `options.doc_stride` tokens (default max_len // 4) and the
last one reaches the context's end (it may be shorter). E.g. 10 context tokens, room 4,
doc_stride 1 (step 3):

    context    c0 c1 c2 c3 c4 c5 c6 c7 c8 c9
    window 0   c0 c1 c2 c3
    window 1            c3 c4 c5 c6
    window 2                     c6 c7 c8 c9      the last window ends at c9

A context that fits in `room` gives exactly one feature (no window at all). An answer of
up to doc_stride + 1 tokens always lies whole in some window; a longer one may not.

Training targets: every feature is an example. A window holding the whole first gold
answer points at it: the first token of the first piece the answer touches (start) and
the last token of the last one (end). Any other window points at position 0 (the [CLS] /
first token, "no answer in this window", as BERT does for SQuAD), so a batch of B rows
has B or more rows of features.

    loss = sum over features of (CE(start logits, s) + CE(end logits, e)) / 2

Prediction: in each window, the span (i, j) of context tokens, i <= j < i +
max_answer_tokens, that maximizes start_i + end_j; over the windows of a row, the span
with the highest start_i + end_j wins, and its text is the context's characters from
piece(i) to piece(j) (through that window's spans). Position 0, the question and the
separators are never predicted. `options.max_answer_tokens` (default 30).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..models.heads import SpanHead, TaskModel
from .modes import Mode, boundary_ids, chunks, model_device, pad

_PIECE = re.compile(r"\w+|[^\w\s]")


class SpanQA(Mode):
    name = "qa"
    options_known = ("max_answer_tokens", "doc_stride")

    def __init__(self, task, tokenizer, model_config, **kw):
        super().__init__(task, tokenizer, model_config, **kw)
        if task.type != "qa":
            raise ConfigError(f"mode 'qa' does not fit task type {task.type!r}")
        tok = tokenizer
        self.prefix, self.sep = boundary_ids(tok, model_config.arch, "mode 'qa'")
        self.pad_id = tok.pad_id if tok.pad_id is not None else (model_config.pad_token_id or 0)
        self.use_types = (model_config.arch in ("encoder", "xlnet")
                          and model_config.type_vocab_size >= 2)
        self.max_answer_tokens = int(self.options.get("max_answer_tokens", 30))
        self.n_special = len(self.prefix) + 2 * len(self.sep)
        self.question_max = max(1, (self.max_len - self.n_special) // 2)  # a long one keeps half
        self.doc_stride = self._doc_stride()

    def _doc_stride(self) -> int:
        """options.doc_stride, checked: 0 <= doc_stride < the smallest context room (the
        room beside the longest question), so every window moves on by step >= 1 token."""
        min_room = self.context_room(self.question_max)
        default = min(self.max_len // 4, min_room - 1)  # below max_len // 4 only for tiny max_len
        stride = self.options.get("doc_stride", default)
        if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < min_room:
            raise ConfigError(f"config key 'options.doc_stride': {stride!r} is not an integer "
                              f"in [0, {min_room}) (the context room that max_len "
                              f"{self.max_len} leaves beside the special tokens and a question "
                              f"of up to {self.question_max} tokens)")
        return stride

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

    def question_ids(self, question: str) -> list[int]:
        """The question's tokens, cut to `question_max`."""
        return self.tokenizer.encode_ordinary(question)[: self.question_max]

    def context_room(self, n_question: int) -> int:
        """Context tokens per window: max_len - specials - question (at least 1)."""
        return max(self.max_len - self.n_special - n_question, 1)

    def context_ids(self, context: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The whole context's tokens and each token's (char start, char end) piece."""
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for m in _PIECE.finditer(context):
            spaced = m.start() > 0 and context[m.start() - 1].isspace()
            pieces = self.tokenizer.encode_ordinary((" " if spaced else "") + m.group())
            ids += pieces
            spans += [(m.start(), m.end())] * len(pieces)
        return ids, spans

    def windows(self, n: int, room: int) -> list[tuple[int, int]]:
        """[w0, w1) context token ranges: w0 = k * (room - doc_stride), w1 = min(w0 + room,
        n); the last one has w1 = n. n <= room gives the one window [0, n)."""
        step = room - self.doc_stride
        out = [(0, min(room, n))]
        while out[-1][1] < n:
            w0 = out[-1][0] + step
            out.append((w0, min(w0 + room, n)))
        return out

    @staticmethod
    def answer_tokens(row: dict, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
        """Context token range [s, e] of the first gold answer: the tokens of the pieces it
        touches; None without answers, or when the pieces do not reach the answer's end."""
        if not row.get("answers"):
            return None
        a0 = row["answer_starts"][0]
        a1 = a0 + len(row["answers"][0])
        inside = [t for t, (s, e) in enumerate(spans) if s < a1 and e > a0]
        if not inside or spans[inside[-1]][1] < a1:
            return None
        return inside[0], inside[-1]

    def features(self, row: dict) -> list[dict]:
        """One feature per context window: ids, token types, the window's (w0, w1), each of
        its context tokens' (char start, char end), the first context position (offset),
        and the span targets (0, 0 where the window does not hold the whole answer)."""
        q = self.question_ids(row["question"])
        ids_c, spans = self.context_ids(row["context"])
        answer = self.answer_tokens(row, spans)
        offset = len(self.prefix) + len(q) + len(self.sep)  # first context token
        out = []
        for w0, w1 in self.windows(len(ids_c), self.context_room(len(q))):
            ids = self.prefix + q + self.sep + ids_c[w0:w1] + self.sep
            types = [0] * offset + [1] * (w1 - w0 + len(self.sep))
            start = end = 0  # "not in this window"
            if answer is not None and w0 <= answer[0] and answer[1] < w1:
                start, end = offset + answer[0] - w0, offset + answer[1] - w0
            out.append({"input_ids": ids, "token_type_ids": types, "window": (w0, w1),
                        "spans": spans[w0:w1], "offset": offset, "start": start, "end": end})
        return out

    def batch(self, feats: list[dict]) -> dict[str, Tensor]:
        """(F, T) ids and mask (and token types) of F features, right-padded."""
        out = {
            "input_ids": pad([f["input_ids"] for f in feats], self.pad_id),
            "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
        }
        if self.use_types:
            out["token_type_ids"] = pad([f["token_type_ids"] for f in feats], 0)
        return out

    def prepare(self, rows: list[dict], draw=None) -> dict[str, Tensor]:
        feats = [f for r in rows for f in self.features(r)]  # F >= len(rows) examples
        batch = self.batch(feats)
        batch["start_positions"] = torch.tensor([f["start"] for f in feats])
        batch["end_positions"] = torch.tensor([f["end"] for f in feats])
        return batch

    def references(self, rows: list[dict]) -> list:
        return [list(r["answers"]) for r in rows]

    # -- loss and predictions --------------------------------------------------------------

    def num_targets(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])  # features, not rows

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
        """The predicted answer text of each row: the best span over all its windows."""
        device = model_device(model)
        feats = [(k, f) for k, r in enumerate(rows)
                 for f in self.features({"question": r["question"], "context": r["context"]})]
        best: list[tuple[float, str]] = [(float("-inf"), "")] * len(rows)  # (score, text)
        for part in chunks(feats, self.eval_batch_size):
            batch = {k: v.to(device) for k, v in self.batch([f for _, f in part]).items()}
            start, end = model(batch["input_ids"], batch["attention_mask"],
                               batch.get("token_type_ids"))
            for s, e, (k, f) in zip(start.float().tolist(), end.float().tolist(), part):
                if not f["spans"]:
                    continue
                i, j = self.best_span(s, e, f["offset"], len(f["spans"]))
                score = s[f["offset"] + i] + e[f["offset"] + j]
                if score > best[k][0]:  # a tie keeps the earlier window
                    best[k] = (score, rows[k]["context"][f["spans"][i][0]:f["spans"][j][1]])
        return [text for _, text in best]
