"""GPU training throughput of GPT-2 124M through lmforge's engine, for one strategy:
tokens/s, MFU and peak memory (bench/gpu.sh runs it for none, ddp and fsdp).

    python bench/gpu_train.py                                     # strategy none
    torchrun --standalone --nproc_per_node 1 bench/gpu_train.py   # STRATEGY=ddp / fsdp

Synthetic tokens (throughput does not depend on the text), context 1024, vocab 50257,
dropout 0, AdamW (fused), grad clip 1.0, bf16 (autocast; FSDP2: its mixed-precision
policy, bf16 parameters and fp32 reduction), torch.compile, through `Trainer.train_step`
-- the same step `lmforge pretrain` takes. MFU counts 6N + 12 L d T FLOPs per token
(lmforge/flops.py) against the card's dense bf16 peak from its data sheet.
Environment: STRATEGY (none | ddp | fsdp), BATCH (16), STEPS (30), WARMUP (10),
COMPILE (1), CHUNK (512: the fused head + loss chunk; 0 = plain logits).
"""

import os
import statistics
import time

import torch

from lmforge.flops import mfu, model_flops_per_token, peak_flops
from lmforge.models import build, presets
from lmforge.objectives import CausalLM
from lmforge.training import TrainConfig, Trainer
from lmforge.training.distributed import DistributedConfig, init

if not torch.cuda.is_available():
    raise SystemExit("bench/gpu_train.py: no CUDA GPU visible to torch; nothing to measure")
env = os.environ
strategy = env.get("STRATEGY", "none")
B, steps, warmup = int(env.get("BATCH", 16)), int(env.get("STEPS", 30)), int(env.get("WARMUP", 10))
compile_, chunk = env.get("COMPILE", "1") == "1", int(env.get("CHUNK", 512))
T, V = 1024, 50257
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
dist = init(DistributedConfig(strategy=strategy), "cuda")
peak, source = peak_flops("cuda", "bf16")
if dist.is_main:
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; peak "
          f"{peak / 1e12:.1f} TFLOP/s ({source}); strategy {strategy}, world size "
          f"{dist.world_size}", flush=True)

torch.manual_seed(0)
model = build(presets.get("gpt2", dropout=0.0))
fpt = model_flops_per_token(model, T)
cfg = TrainConfig(batch_size=B, seq_len=T, lr=6e-4, warmup_steps=0, schedule="constant",
                  precision="bf16", compile=compile_, progress=False, tensorboard=False,
                  device="cuda")
trainer = Trainer(model, CausalLM(chunk=chunk), cfg, dist=dist)
raw = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(dist.rank))
torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
for _ in range(warmup):
    trainer.train_step([raw])
torch.cuda.synchronize()
compile_s = time.perf_counter() - t0
times, losses = [], []
for _ in range(steps):
    t0 = time.perf_counter()
    losses.append(trainer.train_step([raw]).loss)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
tok_s = B * T * dist.world_size / statistics.median(times)
if dist.is_main:
    label = f"{strategy} (world {dist.world_size}), bf16{' + compile' if compile_ else ''}"
    print(f"warm-up {warmup} steps (compile included) {compile_s:.0f}s; loss {losses[0]:.3f} "
          f"-> {losses[-1]:.3f}")
    print(f"| {label} | {B}x{T} | {tok_s:,.0f} | {100 * mfu(fpt, tok_s, peak):.1f}% | "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |", flush=True)
dist.close()

if env.get("HF") == "1" and strategy == "none":  # transformers' GPT-2, the same step
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

    for _ in range(warmup):
        hf_step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        hf_step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tok_s = B * T / statistics.median(times)
    print(f"| transformers, bf16{' + compile' if compile_ else ''} | {B}x{T} | {tok_s:,.0f} | "
          f"{100 * mfu(fpt, tok_s, peak):.1f}% | "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |", flush=True)
