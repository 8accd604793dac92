"""Label-word NLU and prompted generation for decoders (lecture: decoders do NLU by
generating the label as words).

A *verbalizer* maps each class to a word. A row becomes a prompt, and the answer is the
label's word, which the LM learns to continue the prompt with:

    ids      <BOS> Review : ␣A ␣fine ␣film . \\n Sentiment :  ␣positive  <EOS>
    targets    -     -    -  -    -     -   -  -     -      ␣positive <EOS>   -
                                                    (target t = ids[t + 1]; - = IGNORE)

- Loss: cross-entropy on the label word's tokens (and the EOS after it) only; the prompt
  is context. Same numbers as the CLM loss restricted to those positions.
- Prediction by likelihood (default, `predict_by: rank`): for each label k,
      score_k = sum_j log p(w_k,j | prompt, w_k,<j)      (+ log p(EOS | prompt, w_k))
  and the prediction is argmax_k score_k. Words of several tokens are summed over all
  their tokens; the closing EOS makes the comparison fair when one word is a prefix of
  another (" pos" vs " positive"). `predict_by: generate` lets the model write freely
  (greedy) and matches its text against the words; text matching no word is *invalid*
  and scored as wrong.
- One BOS: the tokenizer's BOS, else its end-of-text token (what pretraining put before
  every document), as in the chat template. Prompt and word are encoded separately, so
  the label's tokens are exactly encode(word) whatever text comes before.

Seq2seq tasks (summaries) work the same way with the target text as the answer (GPT-2's
"TL;DR:" summarization): the loss is on " " + the target's tokens + EOS, cut to
`max_target_len`; predictions are generated (greedy, up to `max_new_tokens`) and scored
with the task's metrics (ROUGE):

    ids      <BOS> Description : ␣... \\n Synopsis :  ␣fast ␣web ␣server  <EOS>
    targets    -       -       -  -    -    -      -  ␣fast ␣web ␣server <EOS>  -

Defaults (override with `options`): rotten-tomatoes "Review: {text}\\nSentiment:" with
" negative" / " positive"; debian-match "Description: {text}\\nSynopsis: {text_pair}\\n
Match:" with " no" / " yes"; debian-summaries (and any seq2seq task)
"Description: {text}\\nSynopsis:"; other tasks "Text: {text}\\nLabel:" (pairs add
"\\nText 2: {text_pair}") with " " + the label name.

    options: {template: "...", label_words: {negative: " bad", positive: " good"},
              predict_by: rank | generate, eos: true,
              max_target_len: 64, max_new_tokens: max_target_len (seq2seq only),
              num_beams: 1, no_repeat_ngram_size: 0}
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..generation import GenerationConfig, generate
from ..objectives.clm import IGNORE, CausalLM
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
    "rotten-tomatoes": ("Review: {text}\nSentiment:",
                        {"negative": " negative", "positive": " positive"}),
    "debian-match": ("Description: {text}\nSynopsis: {text_pair}\nMatch:",
                     {"mismatch": " no", "match": " yes"}),
}


def default_template(task) -> tuple[str, dict[str, str]]:
    if task.name in TEMPLATES:
        return TEMPLATES[task.name]
    if task.type == "seq2seq":
        return "Description: {text}\nSynopsis:", {}
    template = "Text: {text}\nLabel:"
    if task.type == "pair-classification":
        template = "Text: {text}\nText 2: {text_pair}\nLabel:"
    return template, {label: " " + label for label in task.labels}


def sequence_log_probs(model: nn.Module, input_ids: Tensor, targets: Tensor) -> Tensor:
    """(B,) sum over t of log p(targets[b, t] | input_ids[b, :t+1]), IGNORE'd t left out.

    Only the rows of h at target positions go through the LM head (lmforge decoders);
    other models give full logits.
    """
    valid = targets != IGNORE
    head = getattr(model, "lm_head", None)
    out = model(input_ids, logits_to_keep=1) if head is not None else model(input_ids)
    h = getattr(out, "last_hidden_state", None)
    if head is not None and h is not None:
        logits = head(h[valid])  # (M, V): only the positions that are scored
    else:
        logits = out.logits[valid]
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, targets[valid][:, None]).squeeze(1)  # (M,)
    rows = valid.nonzero()[:, 0]
    return torch.zeros(input_ids.shape[0], device=logp.device).index_add_(0, rows, picked)


class Verbalizer(Mode):
    name = "verbalizer"
    keeps_lm_head = True
    options_known = ("template", "label_words", "predict_by", "eos", "max_target_len",
                     "max_new_tokens", "num_beams", "no_repeat_ngram_size")

    def __init__(self, task, tokenizer, model_config, **kw):
        super().__init__(task, tokenizer, model_config, **kw)
        if task.type not in ("classification", "pair-classification", "seq2seq"):
            raise ConfigError(f"mode 'verbalizer' does not fit task type {task.type!r} "
                              "(classification, pair-classification or seq2seq)")
        if model_config.arch != "decoder":
            raise ConfigError(f"mode 'verbalizer' needs a decoder, got a {model_config.arch} "
                              "(for encoder-decoders use mode 'text2text')")
        self.classes = task.type != "seq2seq"
        opts = self.options
        template, words = default_template(task)
        self.template = opts.get("template", template)
        check_template(self.template, task_fields(task.type))
        self.words = label_words(task.labels, opts.get("label_words"), words) \
            if self.classes else []
        self.predict_by = opts.get("predict_by", "rank" if self.classes else "generate")
        if self.predict_by not in ("rank", "generate") or (
                self.predict_by == "rank" and not self.classes):
            raise ConfigError(f"config key 'options.predict_by': {self.predict_by!r} "
                              "(known: generate; rank for classification)")
        tok = tokenizer
        self.bos_id = tok.bos_id if tok.bos_id is not None else tok.eos_id
        self.eos_id = tok.eos_id
        use_eos = bool(opts.get("eos", True)) and self.eos_id is not None
        self.end = [self.eos_id] if use_eos else []
        # the answer tokens of each label: its word, then EOS (the model learns to stop)
        self.answers: list[list[int]] = [tok.encode_ordinary(w) + self.end for w in self.words]
        if len({tuple(a) for a in self.answers}) < len(self.answers):
            raise ConfigError(f"label_words: two labels have the same tokens ({self.words})")
        self.pad_id = tok.pad_id if tok.pad_id is not None else (
            self.eos_id if self.eos_id is not None else 0)
        self.prefix = [self.bos_id] if self.bos_id is not None else []
        self.max_target_len = int(opts.get("max_target_len", 64))
        longest = max(len(a) for a in self.answers) if self.classes else \
            self.max_target_len + len(self.end)
        self.generation = GenerationConfig(
            max_new_tokens=int(opts.get("max_new_tokens", longest)),
            num_beams=int(opts.get("num_beams", 1)),
            no_repeat_ngram_size=int(opts.get("no_repeat_ngram_size", 0)),
            eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        self.budget = self.max_len - len(self.prefix) - longest
        if self.budget < 1:
            raise ConfigError(f"max_len ({self.max_len}) leaves no room for a prompt before "
                              f"an answer of {longest} tokens")
        self.clm = CausalLM()

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return backbone  # the LM itself: its own head scores the words

    # -- data ---------------------------------------------------------------------------

    def check(self, rows: list[dict], where: str) -> None:
        check_rows(rows, where, self.task)

    def prompt(self, row: dict) -> list[int]:
        """BOS + the filled template, cut so that the longest answer still fits max_len."""
        return self.prefix + render_ids(self.template, row_fields(row, self.task.type),
                                        self.tokenizer, self.budget)

    def answer(self, row: dict, where: str = "row") -> list[int]:
        """The gold answer's tokens: the label's word, or " " + the target cut to fit; EOS."""
        if self.classes:
            return self.answers[label_index(row, self.task.labels, where)]
        target = self.tokenizer.encode_ordinary(" " + row["target"].strip())
        return target[:self.max_target_len] + self.end

    def prepare(self, rows: list[dict], draw=None) -> dict[str, Tensor]:
        """input_ids (B, T) and targets (B, T): the gold answer's tokens, IGNORE elsewhere."""
        ids, targets = [], []
        for i, r in enumerate(rows):
            prompt = self.prompt(r)
            answer = self.answer(r, f"row {i}")
            seq = prompt + answer
            ids.append(seq[:-1])
            # target t = seq[t + 1]; only the answer (positions len(prompt) - 1 ...) counts
            targets.append([IGNORE] * (len(prompt) - 1) + answer)
        return {"input_ids": pad(ids, self.pad_id), "targets": pad(targets, IGNORE)}

    # -- loss and predictions --------------------------------------------------------------

    def num_targets(self, batch: dict) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        return self.clm.loss(model, batch)  # CE summed over the answer tokens

    @torch.no_grad()
    def scores(self, model: nn.Module, rows: list[dict]) -> Tensor:
        """(N, K): sum of log p over label k's answer tokens given row n's prompt."""
        device = model_device(model)
        K = len(self.answers)
        out = []
        for part in chunks(rows, max(1, self.eval_batch_size // K)):
            ids, targets = [], []
            for r in part:
                prompt = self.prompt(r)
                for answer in self.answers:  # row-major: (row, label)
                    ids.append((prompt + answer)[:-1])
                    targets.append([IGNORE] * (len(prompt) - 1) + answer)
            lp = sequence_log_probs(model, pad(ids, self.pad_id).to(device),
                                    pad(targets, IGNORE).to(device))
            out.append(lp.view(len(part), K).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def generate_text(self, model: nn.Module, rows: list[dict]) -> list[str]:
        """The continuation of each prompt (greedy, or beam search with num_beams > 1; up
        to max_new_tokens), as text."""
        from ..generation import pad_left

        device = model_device(model)
        cfg = self.generation
        texts = []
        for part in chunks(rows, self.eval_batch_size):
            ids, mask = pad_left([self.prompt(r) for r in part], self.pad_id)
            out = generate(model, ids.to(device), mask.to(device), cfg)
            for row in out[:, ids.shape[1]:].tolist():
                if self.eos_id in row:
                    row = row[:row.index(self.eos_id)]
                texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts

    def predict(self, model: nn.Module, rows: list[dict]) -> list:
        """Label indexes: argmax of the label scores, or the label the generated text
        spells (invalid text -> a wrong label; `self.invalid` counts them). Seq2seq: the
        generated texts."""
        if self.predict_by == "rank":
            return self.scores(model, rows).argmax(-1).tolist()
        texts = self.generate_text(model, rows)
        if not self.classes:
            return [t.strip() for t in texts]
        preds, self.invalid = labels_of_texts(texts, rows, self.words, self.task.labels)
        return preds

    def references(self, rows: list[dict]) -> list:
        if not self.classes:
            return [r["target"] for r in rows]
        return [label_index(r, self.task.labels, f"row {i}") for i, r in enumerate(rows)]
