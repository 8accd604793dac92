"""Causal language modeling: predict every token from the ones before it.

The lecture's pretraining loss for decoders (GPT, Llama):

    L = -1/N * sum_i log p(x_i | x_<i)

over the N target positions of a batch. Training text is packed: documents are joined
with an end-of-text token after each one and cut into windows of `seq_len + 1` tokens,
so a window may hold the end of one document, EOS, and the start of the next; the model
learns to predict EOS and to start afresh after it. The input is the window without
its last token and the target is the window shifted left by one:

    window   x_0 x_1 x_2 ... x_T
    inputs   x_0 x_1 ... x_{T-1}
    targets  x_1 x_2 ... x_T        (target t is predicted from inputs 0..t)

Positions whose target is padding (`pad_id`) or `IGNORE` are left out of both the sum
and N. The loss is returned as a *sum* with its token count N, so that a trainer can
accumulate several micro-batches and divide once by the total N: the mean over the big
batch, whatever the number of valid tokens in each part.

The LM head and the loss are fused by default (`linear_cross_entropy`): the (B, T, V)
logits of a batch -- the largest tensor of a small model's step, with its log-softmax
and gradient copies -- are never held at once. Rows are taken `chunk` at a time; each
chunk's logits give its loss and, in the same pass, its gradients (softmax - one-hot),
which backward then only scales. Same loss and gradients as the plain path up to float
rounding (tested); less memory and fewer passes over memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Objective

IGNORE = -100  # target id that takes no part in the loss (the PyTorch / HF convention)


def clm_loss(
    logits: Tensor, targets: Tensor, reduction: str = "sum", ignore_index: int = IGNORE
) -> tuple[Tensor, int]:
    """Cross-entropy of `logits` (B, T, V) against `targets` (B, T); returns (loss, N).

    `reduction="sum"` gives sum_i -log p(x_i | x_<i); `"mean"` divides it by N, the number
    of targets that are not `ignore_index`. Computed in fp32 whatever the logits' dtype.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    n = int((targets != ignore_index).sum())
    # -log softmax(logits)[target], summed over the positions that count
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="sum",
    )
    if reduction == "mean":
        loss = loss / max(n, 1)
    return loss, n


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def _chunk_logp(h, w, targets, lo, hi, dtype):
    """log-softmax (fp32) of rows lo:hi's logits, their summed loss, targets and mask."""
    t = targets[lo:hi]
    valid = t != IGNORE
    all_valid = bool(valid.all())
    if not all_valid:
        t = torch.where(valid, t, 0)
    logp = torch.log_softmax((h[lo:hi].to(dtype) @ w.t()).float(), dim=-1)  # (c, V)
    picked = logp.gather(1, t[:, None]).squeeze(1)  # log p(x_i | x_<i)
    loss = -(picked.sum() if all_valid else (picked * valid).sum())
    return logp, t, None if all_valid else valid, loss


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i W^T, t_i) with the gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        dtype = _compute_dtype(h.device.type, h.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) \
                if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            rows = torch.arange(min(chunk, h.size(0)), device=h.device)
            for lo in range(0, h.size(0), chunk):
                hi = min(lo + chunk, h.size(0))
                logp, t, valid, loss = _chunk_logp(h, w, targets, lo, hi, dtype)
                total += loss
                # d(sum of losses) / d logits = softmax - onehot(t), 0 on ignored rows
                g = logp.exp_()
                g[rows[: hi - lo], t] -= 1.0
                if valid is not None:
                    g.mul_(valid[:, None])
                hc = h[lo:hi]
                if dtype == torch.float32 and hc.dtype == torch.float32:
                    if need_h:
                        torch.mm(g, w, out=grad_h[lo:hi])
                    if need_w:
                        grad_w.addmm_(g.t(), hc)
                else:
                    g = g.to(dtype)
                    if need_h:
                        grad_h[lo:hi] = (g @ w).to(h.dtype)
                    if need_w:
                        grad_w.add_((g.t() @ hc.to(dtype)).float())
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if need_w else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (
            grad_h * grad_out if grad_h is not None else None,
            grad_w * grad_out if grad_w is not None else None,
            None,
            None,
        )


def linear_cross_entropy(
    h: Tensor, weight: Tensor, targets: Tensor, chunk: int = 512
) -> tuple[Tensor, int]:
    """(sum_i -log softmax(h_i W^T)[t_i], N) without materializing all the logits.

    h (..., d) final hidden states, weight (V, d) the LM head, targets (...) with
    IGNORE for positions that do not count. Differentiable in h and weight.
    """
    h = h.reshape(-1, h.size(-1))
    targets = targets.reshape(-1)
    n = int((targets != IGNORE).sum())
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, chunk), n
    dtype = _compute_dtype(h.device.type, h.dtype)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for lo in range(0, h.size(0), chunk):
        total += _chunk_logp(h, weight.to(dtype), targets, lo, min(lo + chunk, h.size(0)),
                             dtype)[-1]
    return total, n


@dataclass
class CausalLM(Objective):
    """The CLM objective: raw token windows in, model inputs + targets out, and the loss.

    `pad_id`: targets equal to it are ignored (for batches padded on the right; packed
    pretraining windows have no padding). Right padding needs no attention mask under
    causal attention: a real token never attends to a later pad.
    `chunk`: rows per chunk of the fused LM head + loss (0 = plain logits path). Used
    when the model has a plain `lm_head` (lmforge decoders) and runs on a device listed
    in `fused_devices`; other models go the plain way. CPU only by default: there the
    fused path saves memory and time (docs/benchmarks.md), while on an H200 with
    torch.compile it ran at 0.57x the plain path's tokens/s (the compiled plain path
    fuses softmax and cross-entropy into a few kernels; the chunk loop stays eager).
    """

    pad_id: int | None = None
    chunk: int = 512
    fused_devices: tuple[str, ...] = ("cpu",)
    name = "clm"

    @classmethod
    def from_config(cls, cfg, *, tokenizer, model_config, seed: int = 0) -> CausalLM:
        return cls()  # packed windows: no padding to ignore

    def prepare(self, tokens: np.ndarray | Tensor, draw: int | None = None) -> dict[str, Tensor]:
        """A (B, T + 1) batch of token windows -> {"input_ids": (B, T), "targets": (B, T)}."""
        if not isinstance(tokens, Tensor):
            tokens = torch.from_numpy(np.asarray(tokens))
        if tokens.dim() != 2 or tokens.size(1) < 2:
            shape = tuple(tokens.shape)
            raise ValueError(f"expected a (batch, seq_len + 1) token array, got {shape}")
        tokens = tokens.long()
        input_ids = tokens[:, :-1]
        targets = tokens[:, 1:].clone()
        if self.pad_id is not None:
            targets[targets == self.pad_id] = IGNORE
        return {"input_ids": input_ids.contiguous(), "targets": targets}

    @staticmethod
    def num_targets(batch: dict[str, Tensor]) -> int:
        """N for this batch: the positions that count in the loss."""
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model, batch: dict[str, Tensor], reduction: str = "sum") -> tuple[Tensor, int]:
        """Run `model` on the inputs; return (summed or mean token loss, N).

        A batch of packed sequences (fine-tuning) may carry "position_ids" and
        "segment_ids"; they go to the model with the ids."""
        head = _plain_head(model)
        packed = {k: batch[k] for k in ("position_ids", "segment_ids") if k in batch}
        if self.chunk and head is not None and batch["input_ids"].device.type in self.fused_devices:
            # logits for one position only (cheap); the head is applied chunk-wise below
            out = model(batch["input_ids"], logits_to_keep=1, **packed)
            loss, n = linear_cross_entropy(out.last_hidden_state, head.weight,
                                           batch["targets"], self.chunk)
        elif batch["input_ids"].is_cuda:
            logits = model(batch["input_ids"], **packed).logits  # (B, T, V)
            loss = _compiled_cross_entropy()(logits, batch["targets"])
            n = self.num_targets(batch)
        else:
            logits = model(batch["input_ids"], **packed).logits  # (B, T, V)
            loss, n = clm_loss(logits, batch["targets"])
        return (loss / max(n, 1) if reduction == "mean" else loss), n


def _cross_entropy_sum(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


_COMPILED: dict = {}


def _compiled_cross_entropy():
    """`_cross_entropy_sum` compiled (once per process): on a GPU the fp32 upcast, the
    log-softmax and its gradient fuse into a few kernels instead of full-size copies."""
    if "ce" not in _COMPILED:
        _COMPILED["ce"] = torch.compile(_cross_entropy_sum)
    return _COMPILED["ce"]


def _plain_head(model):
    """The model's LM head when it is a plain h W^T (lmforge's LMHead, uncapped), else
    None."""
    from ..models.heads import LMHead

    head = getattr(model, "lm_head", None)
    return head if type(head) is LMHead and not head.softcap else None
