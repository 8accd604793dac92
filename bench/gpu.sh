#!/usr/bin/env bash
# GPU training throughput: GPT-2 124M, bf16 autocast, torch.compile; tokens/s and MFU.
#
#     bash bench/gpu.sh                       # defaults below; ~3-5 minutes on one H100
#     BATCH=8 STEPS=20 COMPILE=0 bash bench/gpu.sh
#     HF=1 bash bench/gpu.sh                  # also time transformers' GPT2LMHeadModel
#     CHUNK=0 bash bench/gpu.sh               # plain logits + cross-entropy, no fused head
#
# Synthetic tokens (throughput does not depend on the text), context 1024, vocab 50257,
# dropout 0, AdamW, grad clip 1.0, through lmforge's Trainer.train_step. MFU counts
# 6N + 12 L d T FLOPs per token (lmforge/flops.py) against the card's dense bf16 peak
# from its data sheet (H100 SXM / H200: 989.5 TFLOP/s). Needs only torch (+ safetensors,
# numpy, pyyaml, tqdm, regex: imported by lmforge) -- not the package installed: it runs
# from the repo root with PYTHONPATH set. Finishes well inside 8 minutes: compile ~1 min,
# then WARMUP + STEPS steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BATCH=${BATCH:-16} STEPS=${STEPS:-30} WARMUP=${WARMUP:-10} COMPILE=${COMPILE:-1}
export HF=${HF:-0} CHUNK=${CHUNK:-512}

"$PYTHON" - <<'EOF'
import os
import statistics
import time

import torch

from lmforge.flops import mfu, model_flops_per_token, peak_flops
from lmforge.models import build, presets
from lmforge.objectives import CausalLM
from lmforge.training import TrainConfig, Trainer

if not torch.cuda.is_available():
    raise SystemExit("bench/gpu.sh: no CUDA GPU visible to torch; nothing to measure")
B, steps, warmup = int(os.environ["BATCH"]), int(os.environ["STEPS"]), int(os.environ["WARMUP"])
compile_ = os.environ["COMPILE"] == "1"
T, V = 1024, 50257
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
name = torch.cuda.get_device_name()
peak, source = peak_flops("cuda", "bf16")
print(f"{name}; torch {torch.__version__}; peak {peak / 1e12:.1f} TFLOP/s ({source})")


def timed(step, label, fpt):
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    print(f"{label}: warm-up ({warmup} steps, compile included) {time.perf_counter() - t0:.0f}s")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tok_s = B * T / statistics.median(times)
    print(f"| {label} | {B}x{T} | {tok_s:,.0f} | {100 * mfu(fpt, tok_s, peak):.1f}% | "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |")
    return tok_s


torch.manual_seed(0)
model = build(presets.get("gpt2", dropout=0.0))
n_params = sum(p.numel() for p in model.parameters())
fpt = model_flops_per_token(model, T)
print(f"GPT-2 124M: {n_params:,} parameters, {fpt / 1e9:.3f} GFLOP per token (6N + 12LdT)")
cfg = TrainConfig(batch_size=B, seq_len=T, lr=6e-4, warmup_steps=0, schedule="constant",
                  precision="bf16", compile=compile_, progress=False, tensorboard=False,
                  device="cuda")
chunk = int(os.environ["CHUNK"])
trainer = Trainer(model, CausalLM(chunk=chunk), cfg)
raw = torch.randint(0, V, (B, T + 1))
print("| run | batch | tokens/s (median) | MFU | peak memory |")
print("|---|---|---:|---:|---:|")
label = f"lmforge bf16{' + compile' if compile_ else ''}, loss chunk {chunk or 'off'}"
timed(lambda: trainer.train_step([raw]), label, fpt)

if os.environ["HF"] == "1":
    from transformers import GPT2Config, GPT2LMHeadModel

    del trainer, model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    hf = GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).cuda()
    hf_c = torch.compile(hf) if compile_ else hf
    opt = torch.optim.AdamW(hf.parameters(), lr=6e-4, fused=True)
    ids = raw[:, :T].cuda()

    def hf_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = hf_c(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    timed(hf_step, f"transformers bf16{' + compile' if compile_ else ''}", fpt)
EOF
