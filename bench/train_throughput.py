"""Training throughput and peak memory: lmforge vs transformers' GPT2LMHeadModel on CPU.

    .venv/bin/python bench/train_throughput.py                    # 1 thread, CPU-time clock
    .venv/bin/python bench/train_throughput.py --threads 2 --clock wall
    .venv/bin/python bench/train_throughput.py --variants hf-gelu,lmforge-gelu --alloc off

Identical GPT-2 shapes on both sides (fp32, dropout 0, tied embeddings, context 256,
vocab 8192, batch 8): "small" = 4 layers x 256, "medium" = 6 layers x 384. One step is
what a training loop does: forward, causal-LM loss, backward, grad-norm clip at 1.0,
AdamW step, zero grads. lmforge runs through its `Trainer.train_step`; transformers the
way its users run it (`model(input_ids, labels=input_ids).loss`). Both sides use the same
optimizer: fused AdamW (lr 1e-4, betas 0.9 / 0.95, weight decay 0.1 on the 2-D+ tensors
only, lmforge.training.optim.param_groups) -- lmforge's CPU default, and transformers
Trainer's default on torch >= 2.8.

Like with like, in the same run: the allocator setting (`--alloc`: glibc's default
"off", or "on", the large-allocation cache lmforge's trainer turns on by default on CPU,
`train.malloc_cache`) is process-wide, so every (variant, allocator) pair runs in its
own fresh subprocess: import, build, `--warmup` steps, then `--steps` timed steps. That
is repeated `--rounds` times with the order of the variants reversed every other round,
so both sides see the same machine load. Each child reports the torch threads that
actually ran (torch.get_num_threads() inside it), the CPU time (time.thread_time with one
thread, time.process_time -- all its threads -- otherwise) and wall time of every step,
its losses, and its peak RSS (getrusage ru_maxrss) after build and after training.

The table gives, per clock, median tokens/s and the ratio to the first transformers
variant listed (default: `gelu_new`, its default activation) under the same allocator,
plus achieved GFLOP/s (6N + 12 L d T per token, lmforge/flops.py) as a share of an fp32
1024^3 matmul ceiling measured at the same thread count and clock. On a shared machine
the CPU-time clock is the fairer one: other processes' load does not inflate it (cache
and memory-bandwidth sharing still does).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

SHAPES = {
    "small": dict(n_layer=4, d_model=256, n_head=4),
    "medium": dict(n_layer=6, d_model=384, n_head=6),
}
VOCAB, CTX, BATCH = 8192, 256, 8
VARIANTS = ("hf-gelu_new", "hf-gelu", "lmforge", "lmforge-gelu", "lmforge-compile",
            "lmforge-bf16", "lmforge-unfused", "lmforge-chunk{128,256,1024,2048}")
DEFAULT_VARIANTS = ("hf-gelu_new", "lmforge")


# ---- the two libraries' training steps ------------------------------------------------


def hf_step_fn(shape: dict, activation: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.training.optim import param_groups

    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=CTX, n_embd=shape["d_model"], n_layer=shape["n_layer"],
        n_head=shape["n_head"], activation_function=activation, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).train()
    # the same optimizer as lmforge's trainer builds on CPU (training/optim.py)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=True)
    ids = torch.randint(0, VOCAB, (BATCH, CTX), generator=torch.Generator().manual_seed(0))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, step


def lmforge_step_fn(shape: dict, activation: str = "gelu_tanh", compile: bool = False,
                    precision: str = "fp32", chunk: int = 512):
    from lmforge.models import ModelConfig, build
    from lmforge.objectives import CausalLM
    from lmforge.training import TrainConfig, Trainer

    cfg = ModelConfig(vocab_size=VOCAB, max_seq_len=CTX, activation=activation, dropout=0.0,
                      tie_embeddings=True, **shape)
    torch.manual_seed(0)
    model = build(cfg)
    train = TrainConfig(batch_size=BATCH, seq_len=CTX, lr=1e-4, warmup_steps=0,
                        schedule="constant", grad_clip=1.0, compile=compile,
                        precision=precision, progress=False, tensorboard=False,
                        device="cpu", peak_flops=1.0,
                        malloc_cache=False)  # set by the child for both sides (--alloc)
    trainer = Trainer(model, CausalLM(chunk=chunk), train)
    raw = torch.randint(0, VOCAB, (BATCH, CTX + 1), generator=torch.Generator().manual_seed(0))

    def step():
        return trainer.train_step([raw]).loss

    return model, step


def make(variant: str, shape: dict):
    if variant.startswith("hf-"):
        return hf_step_fn(shape, variant[3:])
    options = {
        "lmforge": {}, "lmforge-gelu": {"activation": "gelu"},
        "lmforge-compile": {"compile": True}, "lmforge-bf16": {"precision": "bf16"},
        "lmforge-unfused": {"chunk": 0},  # plain (B, T, V) logits + F.cross_entropy
        **{f"lmforge-chunk{c}": {"chunk": c} for c in (128, 256, 1024, 2048)},
    }[variant]
    return lmforge_step_fn(shape, **options)


def cpu_clock(threads: int):
    """One thread: that thread's CPU time; more: the CPU time of all the process's threads."""
    return time.thread_time if threads == 1 else time.process_time


# ---- one side, in a fresh process -----------------------------------------------------


def child(args) -> None:
    torch.set_num_threads(args.threads)
    if args.alloc == "on":
        from lmforge.training.trainer import cache_large_allocations

        if not cache_large_allocations():
            raise SystemExit("--alloc on: mallopt is not available here (needs Linux + glibc)")
    from lmforge.flops import measure_matmul_flops, model_flops_per_token

    cpu = cpu_clock(args.threads)
    model, step = make(args.child, SHAPES[args.shapes])
    # every variant's FLOPs counted on lmforge's model of the same shape (same N, L, d, T)
    if args.child.startswith("hf-"):
        from lmforge.models import ModelConfig, build
        with torch.device("meta"):
            counted = build(ModelConfig(vocab_size=VOCAB, max_seq_len=CTX, tie_embeddings=True,
                                        **SHAPES[args.shapes]))
    else:
        counted = model
    fpt = model_flops_per_token(counted, CTX)
    built_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(args.warmup):
        step()
    cpu_s, wall_s, losses = [], [], []
    for _ in range(args.steps):
        c, w = cpu(), time.perf_counter()
        losses.append(step())
        cpu_s.append(cpu() - c)
        wall_s.append(time.perf_counter() - w)
    ceiling = {"cpu": measure_matmul_flops(1024, seconds=0.3, timer=cpu),
               "wall": measure_matmul_flops(1024, seconds=0.3, timer=time.perf_counter)}
    print(json.dumps({
        "cpu": cpu_s, "wall": wall_s, "loss": losses, "threads": torch.get_num_threads(),
        "fpt": fpt, "ceiling": ceiling, "built_mb": built_mb,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def run_child(args, variant: str, shape: str, alloc: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--shapes", shape, "--alloc", alloc,
           "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{variant} ({shape}, alloc {alloc}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the table ------------------------------------------------------------------------


def bench(args) -> None:
    variants = args.variants.split(",")
    base = next((v for v in variants if v.startswith("hf-")), variants[0])  # the ratios' 1.0
    allocs = ["off", "on"] if args.alloc == "both" else [args.alloc]
    load0 = os.getloadavg()[0]
    print(f"{datetime.date.today().isoformat()}; torch {torch.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; {args.rounds} alternating rounds "
          f"of a fresh process per (variant, allocator), {args.warmup} warm-up + "
          f"{args.steps} timed steps each; headline clock: {args.clock}\n")
    print("| shape | allocator cache | variant | threads ran | tokens/s CPU (median) "
          f"| tokens/s wall (median) | vs {base} ({args.clock}) | % of ceiling ({args.clock}) "
          "| peak RSS MB (after build) | last loss |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        for alloc in allocs:
            res = {v: [] for v in variants}
            for r in range(args.rounds):
                for v in (variants if r % 2 == 0 else variants[::-1]):  # alternate the order
                    t0 = time.perf_counter()
                    res[v].append(run_child(args, v, shape, alloc))
                    print(f"<!-- {shape} {alloc} {v} round {r}: "
                          f"{time.perf_counter() - t0:.0f}s -->", file=sys.stderr)
            tok = {v: {k: BATCH * CTX / statistics.median([t for x in rs for t in x[k]])
                       for k in ("cpu", "wall")} for v, rs in res.items()}
            for v, rs in res.items():
                threads = sorted({x["threads"] for x in rs})
                ceiling = max(x["ceiling"][args.clock] for x in rs)
                pct = 100 * rs[0]["fpt"] * tok[v][args.clock] / ceiling
                ratio = f"{tok[v][args.clock] / tok[base][args.clock]:.2f}x"
                peak = max(x["peak_mb"] for x in rs)
                built = max(x["built_mb"] for x in rs)
                print(f"| {shape} {SHAPES[shape]['n_layer']}L/{SHAPES[shape]['d_model']} | "
                      f"{alloc} | {v} | {','.join(map(str, threads))} | {tok[v]['cpu']:,.0f} | "
                      f"{tok[v]['wall']:,.0f} | {ratio} | {pct:.0f}% | {peak:,.0f} ({built:,.0f}) "
                      f"| {rs[-1]['loss'][-1]:.4f} |", flush=True)
    print(f"\nload average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="small,medium", help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="the clock of the ratio and ceiling columns (both are printed)")
    ap.add_argument("--alloc", choices=("both", "off", "on"), default="both",
                    help="large-allocation cache (mallopt) for both sides: off, on, or "
                         "both settings one after the other")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
