"""Text-to-text fine-tuning for encoder-decoders (T5: every task is text in, text out).

A row becomes a source text with a task prefix and a target text; classes are words:

    rotten-tomatoes    source "sentiment: A fine film."                  target "positive"
    debian-match       source "match description: <description> synopsis: <synopsis>"
                       target "match" / "mismatch"
    debian-summaries   source "summarize: <description>"                 target "<synopsis>"
    another task       "<task name> sentence: {text}" (pairs: "... sentence1: {text}
                       sentence2: {text_pair}", T5's GLUE format); seq2seq "summarize: {text}"
    chatterbot         source "User: Hi\\nAssistant: Yo\\nUser: Ok?"         target "No."
                       (each assistant turn is an example: the turns before it, one per
                       line as "Role: content", in; the reply out -- BlenderBot's shape.
                       A long history keeps its last tokens, the ones the reply answers.)

    source ids   [<s>]  tokens(source)  EOS     (<s>: BART only, as in its pretraining
    labels       [<s>]  tokens(target)  EOS      and in HF: "<s> ... </s>" both sides)
    decoder in   START  [<s>] tokens(target)    (= shift_right(labels): teacher forcing)

Padding: labels IGNORE, ids the model's pad token (else the tokenizer's, else EOS) with
attention_mask 0. START is the model config's decoder_start_token_id (T5: pad, BART: </s>).

Loss: L = -sum_t log p(y_t | y_<t, x), summed over the target tokens and their EOS (the
model learns to stop), as BartForConditionalGeneration / T5ForConditionalGeneration
compute it (they average; we return the sum and its count, the trainer divides).

Prediction: greedy or beam decoding (`lmforge.generation.generate`) until EOS; the text is
the prediction. Classification scores it by exact match with the label words (after
stripping spaces, as T5's evaluation): text that spells no label is *invalid* and counted
wrong (`self.invalid` counts them). `predict_by: rank` instead scores each label's target
by its likelihood and takes the best, so every answer is a label. Summaries are scored
with ROUGE-1/2/L (rouge-score, stemmed; tasks/metrics.py). Chat tasks report the loss
per reply token (the main metric, as in mode `chat`) and ROUGE-L of the generated reply
to each conversation's last assistant turn.

    options: {template: "...", label_words: {...}, predict_by: generate | rank,
              max_target_len: 64, max_new_tokens: (the longest label word, else
              max_target_len), num_beams: 1, no_repeat_ngram_size: 0}
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..generation import GenerationConfig, generate
from ..models.seq2seq import shift_right
from ..objectives.clm import IGNORE, clm_loss
from .chat import check_messages
from .modes import Mode, chunks, model_device, pad
from .prompts import (
    check_rows,
    check_template,
    label_index,
    label_words,
    labels_of_texts,
    render_ids,
    row_fields,
    task_fields,
)

TEMPLATES = {
    "rotten-tomatoes": "sentiment: {text}",
    "debian-match": "match description: {text} synopsis: {text_pair}",
    "debian-summaries": "summarize: {text}",
}


def default_template(task) -> str:
    if task.name in TEMPLATES:
        return TEMPLATES[task.name]
    if task.type == "chat":
        return "{text}"  # the history itself
    if task.type == "seq2seq":
        return "summarize: {text}"
    if task.type == "pair-classification":
        return f"{task.name} sentence1: {{text}} sentence2: {{text_pair}}"
    return f"{task.name} sentence: {{text}}"


class Text2Text(Mode):
    name = "text2text"
    keeps_lm_head = True
    options_known = ("template", "label_words", "predict_by", "max_target_len",
                     "max_new_tokens", "num_beams", "no_repeat_ngram_size")

    def __init__(self, task, tokenizer, model_config, **kw):
        super().__init__(task, tokenizer, model_config, **kw)
        if model_config.arch != "seq2seq":
            raise ConfigError(f"mode 'text2text' needs an encoder-decoder (BART, T5), got a "
                              f"{model_config.arch} (for decoders use mode 'verbalizer')")
        if task.type not in ("classification", "pair-classification", "seq2seq", "chat"):
            raise ConfigError(f"mode 'text2text' does not fit task type {task.type!r}")
        self.classes = task.type not in ("seq2seq", "chat")
        self.chat = task.type == "chat"
        self.reports_loss = self.chat
        opts = self.options
        self.template = opts.get("template", default_template(task))
        check_template(self.template, task_fields(task.type))
        self.words = label_words(task.labels, opts.get("label_words"),
                                 {label: label for label in task.labels}) if self.classes else []
        self.predict_by = opts.get("predict_by", "generate")
        if self.predict_by not in ("generate", "rank") or (
                self.predict_by == "rank" and not self.classes):
            raise ConfigError(f"config key 'options.predict_by': {self.predict_by!r} (known: "
                              "generate; rank for classification)")
        tok = tokenizer
        if tok.eos_id is None:
            raise ConfigError(f"mode 'text2text' needs an end-of-text token; {tok!r} has none")
        self.eos_id = tok.eos_id
        self.pad_id = next(i for i in (model_config.pad_token_id, tok.pad_id, tok.eos_id)
                           if i is not None)
        self.start_id = model_config.decoder_start_token_id
        if self.start_id is None:
            self.start_id = self.pad_id
        bart = model_config.family == "bart" and tok.bos_id is not None
        self.prefix = [tok.bos_id] if bart else []  # BART: <s> opens source and target
        self.max_target_len = min(int(opts.get("max_target_len", 64)), model_config.max_seq_len)
        self.answers = [self.prefix + tok.encode_ordinary(w) + [self.eos_id]
                        for w in self.words]
        longest = max(len(a) for a in self.answers) if self.classes else self.max_target_len
        self.generation = GenerationConfig(
            max_new_tokens=int(opts.get("max_new_tokens", longest)),
            num_beams=int(opts.get("num_beams", 1)),
            no_repeat_ngram_size=int(opts.get("no_repeat_ngram_size", 0)),
            eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        self.invalid = 0

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return backbone  # the encoder-decoder LM itself: its LM head writes the answer

    # -- data ---------------------------------------------------------------------------

    def check(self, rows: list[dict], where: str) -> None:
        if not self.chat:
            return check_rows(rows, where, self.task)
        if not rows:
            raise DataError(f"{where}: no examples")
        for i, r in enumerate(rows):
            check_messages(r.get("messages"), f"{where}, row {i}")

    @staticmethod
    def history(messages: list[dict]) -> str:
        """The turns as text, one per line: "User: Hi\\nAssistant: Yo"."""
        return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)

    def examples(self, rows: list[dict], last_only: bool = False) -> list[dict]:
        """Chat: one {"text": history, "target": reply} per assistant turn (or only the
        last one); other tasks: the rows themselves."""
        if not self.chat:
            return rows
        out = []
        for i, r in enumerate(rows):
            messages = r["messages"]
            turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
            if not turns:
                raise DataError(f"row {i}: no assistant turn, nothing to learn from")
            for k in turns[-1:] if last_only else turns:
                out.append({"text": self.history(messages[:k]),
                            "target": messages[k]["content"]})
        return out

    def source(self, row: dict) -> list[int]:
        """[<s>] + the filled template + EOS, cut to max_len."""
        budget = self.max_len - len(self.prefix) - 1
        if self.chat:  # a history keeps its end: the turn the reply answers
            ids = render_ids(self.template, row_fields(row, "seq2seq"), self.tokenizer)
            return self.prefix + ids[max(0, len(ids) - budget):] + [self.eos_id]
        return self.prefix + render_ids(
            self.template, row_fields(row, self.task.type), self.tokenizer, budget
        ) + [self.eos_id]

    def target(self, row: dict, where: str = "row") -> list[int]:
        """[<s>] + the answer's tokens + EOS: the label word, or the target text cut to fit."""
        if self.classes:
            return self.answers[label_index(row, self.task.labels, where)]
        room = self.max_target_len - len(self.prefix) - 1
        return self.prefix + self.tokenizer.encode_ordinary(row["target"])[:room] + [self.eos_id]

    def prepare(self, rows: list[dict], draw=None) -> dict[str, Tensor]:
        """input_ids, attention_mask (B, S); labels, decoder_input_ids (B, T)."""
        rows = self.examples(rows)
        sources = [self.source(r) for r in rows]
        labels = pad([self.target(r, f"row {i}") for i, r in enumerate(rows)], IGNORE)
        return {
            "input_ids": pad(sources, self.pad_id),
            "attention_mask": pad([[1] * len(s) for s in sources], 0),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.start_id, self.pad_id),
        }

    # -- loss and predictions --------------------------------------------------------------

    def num_targets(self, batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        """-sum_t log p(y_t | y_<t, x) over the target tokens (teacher forcing)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits  # (B, T, V)
        return clm_loss(logits, batch["labels"])

    @torch.no_grad()
    def generate_text(self, model: nn.Module, rows: list[dict]) -> list[str]:
        """The decoded answer of each row (greedy, or beam search with num_beams > 1)."""
        device = model_device(model)
        texts = []
        for part in chunks(self.examples(rows, last_only=True), self.eval_batch_size):
            sources = [self.source(r) for r in part]
            ids = pad(sources, self.pad_id).to(device)
            mask = pad([[1] * len(s) for s in sources], 0).to(device)
            out = generate(model, ids, mask, self.generation)[:, 1:]  # drop the start token
            for row in out.tolist():
                row = row[len(self.prefix):] if row[:len(self.prefix)] == self.prefix else row
                if self.eos_id in row:
                    row = row[:row.index(self.eos_id)]
                texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    @torch.no_grad()
    def scores(self, model: nn.Module, rows: list[dict]) -> Tensor:
        """(N, K): log p(label k's word + EOS | row n's source), teacher-forced."""
        device = model_device(model)
        K = len(self.answers)
        out = []
        for part in chunks(rows, max(1, self.eval_batch_size // K)):
            expanded = [{**r, "label": k} for r in part for k in range(K)]
            batch = {k: v.to(device) for k, v in self.prepare(expanded).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=batch["decoder_input_ids"]).logits
            labels = batch["labels"]
            logp = torch.log_softmax(logits.float(), dim=-1)
            picked = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
            out.append((picked * (labels != IGNORE)).sum(-1).view(len(part), K).cpu())
        return torch.cat(out)

    def predict(self, model: nn.Module, rows: list[dict]) -> list:
        """Label indexes (classification) or generated texts (summaries)."""
        if self.classes and self.predict_by == "rank":
            return self.scores(model, rows).argmax(-1).tolist()
        texts = self.generate_text(model, rows)
        if not self.classes:
            return texts
        preds, self.invalid = labels_of_texts(texts, rows, self.words, self.task.labels)
        return preds

    def references(self, rows: list[dict]) -> list:
        if not self.classes:
            return [r["target"] for r in self.examples(rows, last_only=True)]
        return [label_index(r, self.task.labels, f"row {i}") for i, r in enumerate(rows)]
