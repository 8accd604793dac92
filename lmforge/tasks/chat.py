"""The chat template: conversations -> token ids, with the loss on assistant turns only.

A conversation is a list of messages {"role": "system" | "user" | "assistant",
"content": str}. Each message becomes its role marker, its content and an end-of-turn
marker, all markers being special tokens (`tokenizer.CHAT_TOKENS`); one BOS opens the
conversation:

    piece    <BOS>  <|system|> Be terse <|end|>  <|user|> Hi <|end|>  <|assistant|> Yo <|end|>
    labels   -      -          -        -        -        -  -        -             Yo <|end|>

(`-` = IGNORE; in the ids, each content is the tokens of its text.)

`labels` is aligned with `input_ids` (the Hugging Face convention): `labels[t]` is the
token the model must produce at position t, or IGNORE (-100) when position t takes no
part in the loss. Only an assistant turn's content *and its <|end|>* are kept, so the
model learns to answer and to stop; the system and user turns, every role marker and
the BOS are IGNORE. A causal LM trains on `next_token_targets(labels)`: the target at
position t is `labels[t + 1]`.

- Exactly one BOS: the template adds it; the tokenizer adds none of its own, and
  content is encoded as ordinary text (`encode_ordinary`), so "<|endoftext|>" or
  "<|assistant|>" typed inside a message stays text and cannot forge a turn.
- BOS is the tokenizer's BOS token, or its end-of-text token when it has no BOS (GPT-2's
  convention: pretraining put end-of-text between documents, so it is what the model saw
  before a document's first token).
- Inference: `generation_prompt(messages)` ends with "<|assistant|>"; generation stops at
  `stop_ids` (<|end|>, and end-of-text if the tokenizer has one).
- No whitespace is inserted between markers and text: every byte of a rendered
  conversation is a marker or a message's content.

Packing (`pack`) puts whole conversations into rows of a fixed length, first-fit
decreasing by length, and pads the rest. Labels respect the boundaries: the BOS that
opens each conversation is IGNORE, so the target after one conversation's last <|end|>
is never the next conversation. Attention does too: `segment_ids` number the
conversations of a row (1, 2, ...; 0 = padding) and `position_ids` restart at 0 for each,
so a decoder given both (its block-diagonal causal mask) computes for every conversation
exactly what it computes for that conversation alone -- packing changes the speed, not
the loss (tested). (trl's original `packing=True` let attention cross conversations.)
A conversation longer than a row is cut to the row length (its start is kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError, TokenizerError
from ..objectives.clm import IGNORE
from ..tokenizer import CHAT_TOKENS

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = dict(zip(ROLES, CHAT_TOKENS[:3]))  # role -> "<|system|>", "<|user|>", ...
END_TOKEN = CHAT_TOKENS[3]  # "<|end|>"


def check_messages(messages, where: str = "conversation", need_assistant: bool = True) -> None:
    """DataError (naming `where`) unless `messages` is a valid conversation."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has role {m['role']!r} "
                            f"(known: {', '.join(ROLES)})")
        if m["role"] == "system" and i != 0:
            raise DataError(f"{where}: a system message may only come first (message {i})")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise DataError(f"{where}: message {i} has empty content")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant turn, nothing to learn from")


class ChatTemplate:
    """Renders conversations with `tokenizer`, whose special tokens must include
    CHAT_TOKENS (add them with `tokenizer.add_special_tokens(CHAT_TOKENS)`, then resize
    the model's embeddings) and a BOS or end-of-text token."""

    def __init__(self, tokenizer):
        special = tokenizer.special_tokens
        missing = [t for t in CHAT_TOKENS if t not in special]
        if missing:
            raise TokenizerError(
                f"the tokenizer lacks the chat tokens {', '.join(missing)}: add them with "
                "tokenizer.add_special_tokens(CHAT_TOKENS) and resize the model's embeddings")
        bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if bos is None:
            raise TokenizerError("the tokenizer has neither a BOS nor an end-of-text token")
        self.tokenizer = tokenizer
        self.bos_id: int = bos
        self.role_ids = {role: special[tok] for role, tok in ROLE_TOKENS.items()}
        self.end_id: int = special[END_TOKEN]
        stops = [self.end_id]
        if tokenizer.eos_id is not None and tokenizer.eos_id != self.end_id:
            stops.append(tokenizer.eos_id)
        self.stop_ids: list[int] = stops

    def encode(self, messages: Sequence[dict], where: str = "conversation") -> dict[str, list]:
        """{"input_ids", "labels"} of one conversation, labels aligned with the ids."""
        check_messages(messages, where)
        ids, labels = [self.bos_id], [IGNORE]
        for m in messages:
            content = self.tokenizer.encode_ordinary(m["content"])
            turn = [self.role_ids[m["role"]], *content, self.end_id]
            ids += turn
            if m["role"] == "assistant":  # content and <|end|> are learned, the marker not
                labels += [IGNORE, *content, self.end_id]
            else:
                labels += [IGNORE] * len(turn)
        return {"input_ids": ids, "labels": labels}

    def generation_prompt(self, messages: Sequence[dict]) -> list[int]:
        """Ids of the conversation so far followed by "<|assistant|>": the model's cue."""
        check_messages(messages, "prompt", need_assistant=False)
        ids = [self.bos_id]
        for m in messages:
            ids += [self.role_ids[m["role"]], *self.tokenizer.encode_ordinary(m["content"]),
                    self.end_id]
        return ids + [self.role_ids["assistant"]]


def next_token_targets(labels: np.ndarray) -> np.ndarray:
    """Targets for a causal LM fed the aligned ids: targets[..., t] = labels[..., t + 1],
    the last position IGNORE. Same shape as `labels`, ready for `clm_loss`."""
    labels = np.asarray(labels)
    targets = np.full_like(labels, IGNORE)
    targets[..., :-1] = labels[..., 1:]
    return targets


def pack(encoded: Sequence[dict], seq_len: int, pad_id: int) -> dict:
    """Rows of `seq_len` tokens holding whole encoded conversations (see module docstring).

    Returns int64 arrays (rows, seq_len): "input_ids", "labels" (IGNORE on padding),
    "attention_mask" (1 on tokens, 0 on padding), "position_ids" (restart per
    conversation), "segment_ids" (1, 2, ... per conversation in a row, 0 on padding),
    and "truncated": how many conversations were cut to fit.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if not encoded:
        raise DataError("no conversations to pack")
    convs = [(e["input_ids"][:seq_len], e["labels"][:seq_len]) for e in encoded]
    truncated = sum(len(e["input_ids"]) > seq_len for e in encoded)
    # first-fit decreasing: longest first, each into the first row with room
    order = sorted(range(len(convs)), key=lambda i: -len(convs[i][0]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(convs[i][0])
        r = next((r for r, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([])
            room.append(seq_len)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= n
    shape = (len(rows), seq_len)
    out = {"input_ids": np.full(shape, pad_id, np.int64),
           "labels": np.full(shape, IGNORE, np.int64),
           "attention_mask": np.zeros(shape, np.int64),
           "position_ids": np.zeros(shape, np.int64),
           "segment_ids": np.zeros(shape, np.int64)}
    for r, members in enumerate(rows):
        t = 0
        for seg, i in enumerate(sorted(members), 1):  # in a row, conversations keep their order
            ids, labels = convs[i]
            n = len(ids)
            out["input_ids"][r, t:t + n] = ids
            out["labels"][r, t:t + n] = labels
            out["attention_mask"][r, t:t + n] = 1
            out["position_ids"][r, t:t + n] = np.arange(n)
            out["segment_ids"][r, t:t + n] = seg
            t += n
    out["truncated"] = truncated
    return out
