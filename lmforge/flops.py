"""FLOPs per token and model FLOPs utilization (MFU).

Training FLOPs per token of a decoder (PaLM, Chowdhery et al. 2022, appendix B; the
Chinchilla paper's appendix F counts the same terms):

    F = 6 * N  +  12 * L * d_attn * T

- 6N: each matrix parameter costs 2 FLOPs (multiply + add) per token in the forward
  pass and 4 in the backward pass. N counts the parameters that take part in a matrix
  multiply: every parameter except the embedding tables looked up by index -- but the
  LM head, tied to the token embedding or not, is a matmul and is counted.
- 12 L d_attn T: attention scores Q K^T and the weighted sum A V, 2 * T * d_attn FLOPs
  each per token and layer forward, times 3 for forward + backward; T is the context
  length, d_attn = n_head * head_dim. Like PaLM and nanoGPT we do not halve it for the
  causal mask, so MFU figures stay comparable with theirs.

MFU = achieved FLOP/s (F * tokens per second) / the hardware's peak FLOP/s. Peaks: a
table of dense bf16 tensor-core figures for common GPUs, or on CPU a measured fp32
matmul ceiling (`measure_matmul_flops`), the most any model could reach there.
"""

from __future__ import annotations

import time

import torch
from torch import nn

# Dense (no sparsity) peak FLOP/s from the vendors' data sheets.
GPU_PEAK_FLOPS = {
    # name fragment: {dtype: FLOP/s}
    "H200": {"bf16": 989.5e12, "fp16": 989.5e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.0e12, "fp16": 756.0e12, "fp32": 51.2e12},
    "H100": {"bf16": 989.5e12, "fp16": 989.5e12, "fp32": 66.9e12},  # SXM
    "A100": {"bf16": 312.0e12, "fp16": 312.0e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362.0e12, "fp16": 362.0e12, "fp32": 91.6e12},
    "A10": {"bf16": 125.0e12, "fp16": 125.0e12, "fp32": 31.2e12},
    "V100": {"bf16": 0.0, "fp16": 125.0e12, "fp32": 15.7e12},
}


def matmul_params(model: nn.Module) -> int:
    """N: parameters that take part in a matmul (all but index-lookup embedding tables).

    An embedding table that another module also owns (a tied LM head) is a matmul weight
    too and counts, once.
    """
    owners: dict[int, list[nn.Module]] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(m)
    lookup_only = {
        pid for pid, mods in owners.items() if all(isinstance(m, nn.Embedding) for m in mods)
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in lookup_only)


def flops_per_token(n_params: int, n_layer: int, d_attn: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 L d_attn T (forward + backward)."""
    return 6.0 * n_params + 12.0 * n_layer * d_attn * seq_len


def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """`flops_per_token` for an lmforge decoder, reading L and d_attn from `model.config`."""
    cfg = model.config
    n_head = cfg.n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.d_model // n_head
    return flops_per_token(matmul_params(model), cfg.n_layer, n_head * head_dim, seq_len)


def gpu_peak_flops(device_name: str, dtype: str = "bf16") -> float | None:
    """The data-sheet peak for a GPU name as `torch.cuda.get_device_name` reports it."""
    for fragment, peaks in GPU_PEAK_FLOPS.items():  # more specific names come first
        if fragment.lower() in device_name.lower():
            return peaks.get(dtype) or None
    return None


def measure_matmul_flops(
    n: int = 1024, dtype: torch.dtype = torch.float32, seconds: float = 0.3, device: str = "cpu",
    timer=time.perf_counter,
) -> float:
    """Best observed FLOP/s of an (n x n) @ (n x n) matmul: the practical ceiling.

    `timer` measures one matmul (wall clock by default; `time.thread_time` counts only
    the CPU time of a single-threaded run, which machine load does not inflate).
    """
    # a generator of its own: measuring must not move the run's RNG (exact resume)
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
    b = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
    out = torch.empty(n, n, dtype=dtype, device=device)
    torch.matmul(a, b, out=out)  # warm up
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        t0 = timer()
        torch.matmul(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2.0 * n**3 / max(timer() - t0, 1e-9))
        if time.perf_counter() > deadline:
            return best


def peak_flops(device: torch.device | str, precision: str = "fp32") -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for MFU on `device`, in the precision
    the matmuls run in: under bf16 autocast a CPU with native bf16 (AMX, avx512_bf16)
    multiplies faster than in fp32, and against the fp32 ceiling a run could report an
    MFU above 1."""
    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, precision)
        if peak:
            return peak, f"{name} data sheet ({precision})"
        return measure_matmul_flops(4096, dtype, device="cuda"), f"{name} measured matmul"
    label = precision if dtype != torch.float32 else "fp32"
    threads = torch.get_num_threads()
    return (measure_matmul_flops(dtype=dtype),
            f"CPU {label} matmul ceiling, {threads} threads (measured)")


def mfu(flops_per_tok: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilization: achieved FLOP/s over the peak."""
    return flops_per_tok * tokens_per_s / peak if peak else 0.0


def seq2seq_flops_per_token(model: nn.Module, source_len: int, target_len: int) -> float:
    """Training FLOPs of an lmforge encoder-decoder per *source* (encoder input) token.

    The trainer counts encoder input tokens (`input_ids`), so the FLOPs of one example
    (S source tokens, T target tokens) are divided by S:

        F * S = 6 * (N_enc + N_kv) * S  +  6 * N_dec * T             matmuls
              + 12 * (d_attn L_enc S^2 + d_dec L_dec (T^2 + T S))    attention

    N_enc: the encoder's matmul parameters; N_kv: the decoders' cross-attention K/V
    projections, which read the S memory tokens; N_dec: the rest of the decoder and the
    LM head, which run on the T target tokens. The attention terms are the decoder
    formula's 12 L d_attn T per token for encoder self-attention (S keys), decoder
    self-attention (T keys, not halved for the causal mask) and cross-attention (S keys
    per target token); d_dec is the decoder's n_head * head_dim (BART's may differ).
    """
    cfg = model.config
    d_attn = cfg.n_head * cfg.head_size  # encoder; the decoder's may differ (BART)
    d_dec = cfg.decoder_heads * cfg.decoder_head_size
    n_enc = matmul_params(model.encoder_blocks)
    n_kv = sum(b.cross.kv.weight.numel() for b in model.decoder_blocks)
    n_dec = matmul_params(model.decoder_blocks) - n_kv + model.lm_head.weight.numel()
    L_enc, L_dec = len(model.encoder_blocks), len(model.decoder_blocks)
    S, T = source_len, target_len
    per_example = (6.0 * (n_enc + n_kv) * S + 6.0 * n_dec * T
                   + 12.0 * (d_attn * L_enc * S * S + d_dec * L_dec * (T * T + T * S)))
    return per_example / S


def encoder_flops_per_token(model: nn.Module, seq_len: int, mlm_fraction: float = 1.0) -> float:
    """Training FLOPs per input token of an lmforge `Encoder` (BERT, RoBERTa, ELECTRA,
    ALBERT): 6 N_eff + 12 L d_attn T, where N_eff counts each matmul weight as often per
    token as it is applied:

    - blocks: ALBERT applies its one shared block n_layer times, so its weights count
      n_layer / n_blocks times;
    - the MLM head (transform + tied decoder) runs only at the scored positions:
      times `mlm_fraction` (the mask probability; 1 = every position);
    - pooler and NSP / SOP head run once per sequence: divided by seq_len;
    - DeBERTa (disentangled attention, `deberta_flops_per_token`): the c2p / p2c scores
      and the projections of the relative table, and the enhanced mask decoder.
    """
    cfg = model.config
    n_all = matmul_params(model)
    blocks = matmul_params(model.blocks)
    head = matmul_params(model.mlm_head) if getattr(model, "mlm_head", None) else 0
    per_seq = sum(matmul_params(m) for m in (getattr(model, "pooler", None),
                                             getattr(model, "pair_head", None)) if m)
    n_eff = (n_all - blocks - head - per_seq + blocks * cfg.n_layer / len(model.blocks)
             + head * mlm_fraction + per_seq / seq_len)
    d_attn = cfg.n_head * (cfg.head_dim or cfg.d_model // cfg.n_head)
    flops = 6.0 * n_eff + 12.0 * cfg.n_layer * d_attn * seq_len
    if getattr(model, "deberta", False):
        flops += deberta_flops_per_token(model, seq_len)
    return flops


def deberta_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """What disentangled attention adds to `encoder_flops_per_token` (per token, forward +
    backward), with 2k relative rows, s position terms (c2p, p2c), T = seq_len:

        L * 6 * s * 2k * d_attn          c2p: Q^c (K^r)^T, p2c: K^c (Q^r)^T against all
                                         2k rows (the gather by distance is free)
        L * 6 * s * (d d_attn) * 2k / T  the table projected once per sequence -- by
                                         W_q / W_k (share_att_key) or by their own
                                         W_{k,r} / W_{q,r}, which 6 N counted per token,
                                         so those are replaced by this term
        EMD: the last block twice more   2 * (6 N_block + 12 d_attn T + its two terms)

    The MLM head of the EMD runs at the masked share only, as without it."""
    cfg = model.config
    T, L, s = seq_len, cfg.n_layer, len(cfg.pos_att_terms)
    k2 = 2 * cfg.rel_span
    d_attn = cfg.n_head * cfg.head_size
    proj = cfg.d_model * d_attn + d_attn  # one projection of the table (weight + bias)
    own = sum(matmul_params(m) for b in model.blocks for m in (b.attn.pos_k, b.attn.pos_q)
              if m is not None)  # counted by 6 N as if applied to every token
    per_layer = 6.0 * s * k2 * d_attn + 6.0 * s * proj * k2 / T
    flops = L * per_layer - 6.0 * own
    if cfg.emd and getattr(model, "mlm_head", None) is not None:
        last = model.blocks[-1]
        flops += 2 * (6.0 * matmul_params(last) + 12.0 * d_attn * T + per_layer)
    return flops


def xlnet_flops_per_token(model: nn.Module, seq_len: int, n_predict: int) -> float:
    """Training FLOPs per input token of an lmforge XLNet under permutation LM: T tokens,
    P = n_predict of them predicted by the query stream, no memory (S = T keys, R = 2T
    relative distances):

        F = 6 (N_blocks + N_r + P/T (N_q + N_o + N_ffn + N_head))
            + L (48 d_attn T + 12 d_attn P)

    - the content stream applies every block weight once per token, and W_r to the R = 2T
      distance sinusoids of the sequence (2 rows per token: N_r once more);
    - the query stream applies W_q, W_o and the FFN, and the LM head, at the P targets only;
    - attention, per stream and query, forward: content scores (q + u) k (2 d_attn S),
      position scores (q + v) W_r R (2 d_attn R), the weighted sum of values (2 d_attn S):
      8 d_attn T; the query stream runs at all T positions (its P queries are placed by the
      target mapping, as transformers does), so both streams cost that, 16 d_attn T, times
      3 for forward + backward; placing and gathering the P queries adds 2 x 2 P d_attn,
      times 3.
    """
    cfg = model.config
    T, P = seq_len, n_predict
    d_attn = cfg.n_head * cfg.head_size
    blocks = model.blocks
    n_blocks = matmul_params(blocks)
    n_r = sum(b.attn.r.numel() for b in blocks)
    n_query = sum(b.attn.q.numel() + b.attn.o.numel() + matmul_params(b.ffn) for b in blocks)
    n_head = model.lm_head.weight.numel()
    n_eff = n_blocks + n_r + P / T * (n_query + n_head)
    return 6.0 * n_eff + cfg.n_layer * (48.0 * d_attn * T + 12.0 * d_attn * P)
