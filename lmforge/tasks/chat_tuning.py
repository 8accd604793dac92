"""Instruction / multi-turn chat tuning of a decoder (supervised fine-tuning, SFT).

Conversations go through the chat template (tasks/chat.py): one BOS, each message as its
role marker + content + <|end|>, the loss only on assistant turns -- their content and
their <|end|>, so the model learns to answer and to stop; every other target is IGNORE.

    ids      <BOS> <|user|> H i <|end|> <|assistant|> Y o <|end|>
    targets    -      -     - - -           Y        o <|end|>  -     (target t = label t+1)

- Role markers are special tokens. A pretrained tokenizer without them gets them added
  (`add_chat_tokens`), and the model's token embeddings (and an untied LM head) grow to
  match: each new row starts at the mean of the existing rows, a neutral point in the
  embedding space (a random row could be far from every real token).
- Packing (`options.packing`, on by default): the conversations of a batch are packed
  into rows of max_len tokens (first-fit decreasing, `tasks.chat.pack`). Each
  conversation keeps its own positions (from 0) and attends only to itself
  (`segment_ids`: a block-diagonal causal mask), so the loss equals that of the
  conversations one by one; only fewer pad tokens are computed. Off: one padded row per
  conversation.
- Evaluation: the reply to each held-out conversation's last assistant turn is generated
  (greedy, stopping at <|end|>) from the turns before it and scored with ROUGE-L against
  the real reply; the main metric for model selection is the eval loss on assistant
  tokens (the `chatterbot` task declares both).

    options: {packing: true, max_new_tokens: 48}
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..generation import GenerationConfig, generate, pad_left
from ..objectives.clm import IGNORE, CausalLM
from ..tokenizer import CHAT_TOKENS
from .chat import ChatTemplate, check_messages, next_token_targets
from .chat import pack as pack_conversations
from .modes import Mode, chunks, model_device, pad


def add_chat_tokens(tokenizer) -> list[int]:
    """Give `tokenizer` the chat role markers; return the ids that are new to it."""
    before = tokenizer.vocab_size
    ids = tokenizer.add_special_tokens(CHAT_TOKENS)
    return [i for i in ids if i >= before]


@torch.no_grad()
def resize_token_embeddings(model: nn.Module, vocab_size: int, new_ids=()) -> nn.Module:
    """Grow (never shrink) `model`'s token embeddings -- and its LM head when untied -- to
    `vocab_size` rows; rows past the old size and the rows `new_ids` are set to the mean
    of the old rows that are not in `new_ids`. Updates `model.config.vocab_size`."""
    embed: nn.Embedding = model.tok_embed
    old = embed.weight.shape[0]
    if vocab_size < old:
        raise ConfigError(f"cannot shrink the embeddings from {old} to {vocab_size} rows")
    new_ids = sorted({int(i) for i in new_ids} | set(range(old, vocab_size)))
    keep = torch.ones(old, dtype=torch.bool)
    keep[[i for i in new_ids if i < old]] = False

    def grown(weight: Tensor) -> Tensor:
        w = torch.empty(vocab_size, weight.shape[1], dtype=weight.dtype, device=weight.device)
        w[:old] = weight
        w[new_ids] = weight[keep.to(weight.device)].mean(0)
        return w

    head = getattr(model, "lm_head", None)
    tied = head is not None and head.weight is embed.weight
    embed.weight = nn.Parameter(grown(embed.weight))
    embed.num_embeddings = vocab_size
    if head is not None:
        if tied:
            head.tie(embed)
        else:
            head.weight = nn.Parameter(grown(head.weight))
    if getattr(model, "logits_bias", None) is not None:  # BART's final_logits_bias
        bias = torch.zeros(1, vocab_size, dtype=model.logits_bias.dtype,
                           device=model.logits_bias.device)
        bias[:, :old] = model.logits_bias
        model.logits_bias = bias
    if vocab_size != model.config.vocab_size:
        model.config = model.config.replace(vocab_size=vocab_size)
    return model


def last_reply(messages: list[dict], where: str) -> tuple[list[dict], str]:
    """(the turns before the last assistant turn, that turn's content)."""
    for k in range(len(messages) - 1, -1, -1):
        if messages[k]["role"] == "assistant":
            return messages[:k], messages[k]["content"]
    raise DataError(f"{where}: no assistant turn, nothing to learn from")


class ChatTuning(Mode):
    name = "chat"
    keeps_lm_head = True
    reports_loss = True  # the mean loss per assistant token, then ROUGE-L of replies
    options_known = ("packing", "max_new_tokens")

    def __init__(self, task, tokenizer, model_config, **kw):
        super().__init__(task, tokenizer, model_config, **kw)
        if model_config.arch != "decoder":
            raise ConfigError(f"mode 'chat' needs a decoder (GPT, Llama), got a "
                              f"{model_config.arch}")
        if task.type != "chat":
            raise ConfigError(f"mode 'chat' does not fit task type {task.type!r}")
        # the role markers join the tokenizer here; build_model grows the embeddings
        self.new_ids = add_chat_tokens(tokenizer)
        self.template = ChatTemplate(tokenizer)
        self.packing = bool(self.options.get("packing", True))
        self.max_new_tokens = int(self.options.get("max_new_tokens", 48))
        self.pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)
        self.clm = CausalLM()

    def build_model(self, backbone: nn.Module) -> nn.Module:
        """The LM itself, its embeddings grown to the tokenizer with the chat tokens."""
        size = max(backbone.config.vocab_size, self.tokenizer.vocab_size)
        return resize_token_embeddings(backbone, size, self.new_ids)

    # -- data ---------------------------------------------------------------------------

    def check(self, rows: list[dict], where: str) -> None:
        if not rows:
            raise DataError(f"{where}: no examples")
        for i, r in enumerate(rows):
            check_messages(r.get("messages"), f"{where}, row {i}")

    def prepare(self, rows: list[dict], draw=None) -> dict[str, Tensor]:
        """input_ids, targets (B, T): one padded row per conversation, or packed rows of
        max_len with each conversation's position_ids and segment_ids."""
        encoded = [self.template.encode(r.get("messages"), f"row {i}")
                   for i, r in enumerate(rows)]
        if not self.packing:
            ids = pad([e["input_ids"][: self.max_len] for e in encoded], self.pad_id)
            labels = pad([e["labels"][: self.max_len] for e in encoded], IGNORE)
            return {"input_ids": ids, "targets": torch.from_numpy(
                next_token_targets(labels.numpy()))}
        packed = pack_conversations(encoded, self.max_len, self.pad_id)
        width = int(packed["attention_mask"].sum(1).max())  # drop all-padding columns
        batch = {k: torch.from_numpy(np.ascontiguousarray(packed[k][:, :width]))
                 for k in ("input_ids", "position_ids", "segment_ids")}
        batch["targets"] = torch.from_numpy(next_token_targets(packed["labels"][:, :width]))
        return batch

    # -- loss and predictions --------------------------------------------------------------

    def num_targets(self, batch: dict) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        return self.clm.loss(model, batch)  # CE summed over assistant tokens and <|end|>

    @torch.no_grad()
    def predict(self, model: nn.Module, rows: list[dict]) -> list[str]:
        """The generated reply to each conversation's last assistant turn (greedy)."""
        device = model_device(model)
        cfg = GenerationConfig(max_new_tokens=self.max_new_tokens,
                               eos_token_id=self.template.stop_ids, pad_token_id=self.pad_id)
        room = self.max_len - self.max_new_tokens
        if room < 2:
            raise ConfigError(f"max_len ({self.max_len}) leaves no room for a prompt before "
                              f"max_new_tokens ({self.max_new_tokens})")
        replies = []
        for part in chunks(rows, self.eval_batch_size):
            prompts = []
            for i, r in enumerate(part):
                before, _ = last_reply(r["messages"], f"row {i}")
                ids = self.template.generation_prompt(before) if before else \
                    [self.template.bos_id, self.template.role_ids["assistant"]]
                prompts.append(ids if len(ids) <= room else ids[:1] + ids[-(room - 1):])
            ids, mask = pad_left(prompts, self.pad_id)
            out = generate(model, ids.to(device), mask.to(device), cfg)
            for row in out[:, ids.shape[1]:].tolist():
                cut = [k for k, t in enumerate(row) if t in self.template.stop_ids]
                row = row[:cut[0]] if cut else row
                replies.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return replies

    def references(self, rows: list[dict]) -> list[str]:
        return [last_reply(r["messages"], f"row {i}")[1] for i, r in enumerate(rows)]
