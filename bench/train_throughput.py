"""Training throughput and peak memory: lmforge vs transformers' GPT2LMHeadModel on CPU.

    .venv/bin/python bench/train_throughput.py                  # speed table, both shapes
    .venv/bin/python bench/train_throughput.py --rss            # peak RSS table
    .venv/bin/python bench/train_throughput.py --variants lmforge,hf-gelu_new --rounds 9

Identical GPT-2 shapes on both sides (fp32, dropout 0, tied embeddings, context 256,
vocab 8192, batch 8): "small" = 4 layers x 256, "medium" = 6 layers x 384. One step is
what a training loop does: forward, causal-LM loss, backward, grad-norm clip at 1.0,
AdamW step, zero grads. lmforge runs through its `Trainer.train_step`; transformers the
way its users run it (`model(input_ids, labels=input_ids).loss`, same optimizer).

Variants are run alternately in one process (`--steps` steps of each, `--rounds`
times) so that both sides see the same machine load; the table gives median and best
tokens/s (on a shared machine the best step is the closest to an idle machine's), the
ratio to transformers' default (`gelu_new`), and achieved GFLOP/s (6N + 12 L d T per
token, lmforge/flops.py) against a measured fp32 matmul ceiling at the same thread count.

On a shared machine, `--threads 1 --clock cpu` times each step by the CPU time of the
(single) compute thread, which other processes' load does not inflate: the fairest
ratio there, though not the 2-thread wall-clock speed.

The allocator setting is process-wide, so the in-process comparison runs both libraries
with glibc's default (lmforge's `train.malloc_cache` off) or, with `--alloc`, both with
the large-allocation cache that lmforge turns on by default on CPU.

`--rss` runs each side in a fresh subprocess (import, build, `--rss-steps` steps) and
reports the peak resident set size from getrusage(ru_maxrss).
"""

from __future__ import annotations

import argparse
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
DEFAULT_VARIANTS = ("hf-gelu_new", "hf-gelu", "lmforge", "lmforge-gelu")


# ---- the two libraries' training steps ------------------------------------------------


def hf_step_fn(shape: dict, activation: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=CTX, n_embd=shape["d_model"], n_layer=shape["n_layer"],
        n_head=shape["n_head"], activation_function=activation, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, VOCAB, (BATCH, CTX))

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
                        device="cpu", peak_flops=1.0, malloc_cache=False)  # see --alloc
    trainer = Trainer(model, CausalLM(chunk=chunk), train)
    raw = torch.randint(0, VOCAB, (BATCH, CTX + 1))

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


# ---- speed ----------------------------------------------------------------------------


def bench_speed(args) -> None:
    from lmforge.flops import measure_matmul_flops, model_flops_per_token

    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu measures the main thread's CPU time: use --threads 1")
    timer = time.thread_time if args.clock == "cpu" else time.perf_counter
    # re-measured every round, the best kept
    ceiling = measure_matmul_flops(1024, seconds=2.0, timer=timer)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or 'cpu'}, "
          f"{'CPU-time' if args.clock == 'cpu' else 'wall'} clock")
    print(f"allocator cache (mallopt): {'on' if args.alloc else 'off'}; "
          f"load average at start: {os.getloadavg()[0]:.1f}\n")
    print("| shape | variant | tokens/s median | best | vs hf-gelu_new (median / best) "
          "| GFLOP/s (median) | % of ceiling (median / best) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        steps, fpt = {}, None
        for v in variants:
            t0 = time.perf_counter()
            model, step = make(v, shape)
            if v == "lmforge":
                fpt = model_flops_per_token(model, CTX)
            for _ in range(args.warmup):
                step()
            steps[v] = step
            print(f"<!-- {shape_name} {v}: ready in {time.perf_counter() - t0:.1f}s -->",
                  file=sys.stderr)
        if fpt is None:
            from lmforge.models import ModelConfig, build
            with torch.device("meta"):
                fpt = model_flops_per_token(build(ModelConfig(vocab_size=VOCAB,
                                                              max_seq_len=CTX, **shape)), CTX)
        times = {v: [] for v in variants}
        for _ in range(args.rounds):
            ceiling = max(ceiling, measure_matmul_flops(1024, seconds=0.2, timer=timer))
            for v in variants:
                for _ in range(args.steps):
                    t0 = timer()
                    steps[v]()
                    times[v].append(timer() - t0)
        med = {v: BATCH * CTX / statistics.median(ts) for v, ts in times.items()}
        best = {v: BATCH * CTX / min(ts) for v, ts in times.items()}
        for v in variants:
            ratio = "-"
            if "hf-gelu_new" in med:
                ratio = f"{med[v] / med['hf-gelu_new']:.2f}x / {best[v] / best['hf-gelu_new']:.2f}x"
            pct = f"{100 * fpt * med[v] / ceiling:.0f}% / {100 * fpt * best[v] / ceiling:.0f}%"
            print(f"| {shape_name} {shape['n_layer']}L/{shape['d_model']} | {v} | "
                  f"{med[v]:,.0f} | {best[v]:,.0f} | {ratio} | {fpt * med[v] / 1e9:.0f} | {pct} |",
                  flush=True)
    print(f"\nfp32 matmul ceiling (1024^3, best seen): {ceiling / 1e9:.0f} GFLOP/s; "
          f"load average at end: {os.getloadavg()[0]:.1f}")


# ---- peak memory ----------------------------------------------------------------------


def rss_child(args) -> None:
    """One side, in this fresh process: build, train `--rss-steps` steps, report ru_maxrss."""
    torch.set_num_threads(args.threads)
    if args.alloc:
        from lmforge.training.trainer import cache_large_allocations

        cache_large_allocations()
    _, step = make(args.rss_child, SHAPES[args.shapes.split(",")[0]])
    built_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(args.rss_steps):
        step()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": args.rss_child, "peak_rss_mb": peak_mb, "built_mb": built_mb}))


def bench_rss(args) -> None:
    print("| shape | variant | RSS after import + build (MB) | peak RSS training (MB) "
          "| peak vs hf-gelu_new |")
    print("|---|---|---:|---:|---:|")
    for shape_name in args.shapes.split(","):
        peaks = {}
        for v in args.variants.split(","):
            cmd = [sys.executable, __file__, "--rss-child", v, "--shapes", shape_name,
                   "--rss-steps", str(args.rss_steps), "--threads", str(args.threads)]
            if args.alloc:
                cmd.append("--alloc")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            peaks[v] = json.loads(out.strip().splitlines()[-1])
        base = peaks.get("hf-gelu_new", {}).get("peak_rss_mb")
        for v, r in peaks.items():
            mb = r["peak_rss_mb"]
            ratio = f"{mb / base:.2f}x" if base else "-"
            print(f"| {shape_name} | {v} | {r['built_mb']:,.0f} | {mb:,.0f} | {ratio} |",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="small,medium", help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: tokens per CPU-second of one thread (robust to machine load)")
    ap.add_argument("--steps", type=int, default=1, help="steps of one variant in a row")
    ap.add_argument("--rounds", type=int, default=10, help="alternations of all variants")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--alloc", action="store_true",
                    help="cache large allocations (mallopt; lmforge's train.malloc_cache, "
                         "its default) for the whole process, so for both libraries")
    ap.add_argument("--rss", action="store_true", help="peak RSS table instead of speed")
    ap.add_argument("--rss-steps", type=int, default=10)
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args)
    elif args.rss:
        bench_rss(args)
    else:
        if args.alloc:
            from lmforge.training.trainer import cache_large_allocations

            cache_large_allocations()
        bench_speed(args)


if __name__ == "__main__":
    main()
