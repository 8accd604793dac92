"""Greedy decoding speed: lmforge `generate` vs transformers `generate`, same weights.

    .venv/bin/python bench/generate.py [--runs 5] [--new-tokens 200] [--threads 1]
                                       [--clock cpu|wall]

A GPT-2-style model (6 layers, d=384, 6 heads, vocab 8192, context 256) is built by
transformers with random weights, saved, and loaded into lmforge with `load_hf`. Batch 1,
a 16-token prompt, 200 new tokens, KV cache on both sides, EOS never allowed
(min_new_tokens) so every run produces exactly 200 tokens. Two modes per library: plain
greedy, and greedy with prompt lookup decoding (transformers: `prompt_lookup_num_tokens`,
lmforge: `prompt_lookup_tokens`; both give the greedy output, with fewer forwards when the
text repeats itself, which random-weight models do a lot).

One warm-up call of each, then `--runs` rounds; the order of the modes is reversed every
other round, and every timed output is checked to equal transformers' plain greedy output.
Each call is timed by the wall clock and by CPU time (time.thread_time with one torch
thread, time.process_time -- all the process's threads -- with more; other processes'
load does not inflate it); `--clock` picks the one of the table's ratios, both are
printed. The threads are those torch reports inside the timed loop. The table gives
medians; the ratio is against transformers' plain greedy in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.generation import GenerationConfig, generate
from lmforge.interop.hf import load_hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="the clock of the ratios (both are printed)")
    ap.add_argument("--lookup", type=int, default=10, help="prompt lookup tokens (0 = skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hf_config = GPT2Config(
        vocab_size=8192, n_positions=256, n_embd=384, n_layer=6, n_head=6,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    hf = GPT2LMHeadModel(hf_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_hf(tmp)
    prompt = torch.randint(2, 8192, (1, args.prompt_tokens))
    n = args.new_tokens

    def run_hf(lookup: int = 0) -> torch.Tensor:
        extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
        return hf.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
            eos_token_id=1, pad_token_id=1, **extra,
        )  # fmt: skip

    def run_ours(lookup: int = 0) -> torch.Tensor:
        config = GenerationConfig(
            max_new_tokens=n, min_new_tokens=n, eos_token_id=1, prompt_lookup_tokens=lookup
        )
        return generate(ours, prompt, config=config)

    runs = {
        "transformers, greedy": run_hf,
        "lmforge, greedy": run_ours,
    }
    if args.lookup:
        runs["transformers, greedy + prompt lookup"] = lambda: run_hf(args.lookup)
        runs["lmforge, greedy + prompt lookup"] = lambda: run_ours(args.lookup)
    reference = run_hf()
    for fn in runs.values():  # warm-up
        fn()
    cpu = time.thread_time if args.threads == 1 else time.process_time
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in runs}
    load0, threads = os.getloadavg()[0], set()
    for r in range(args.runs):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):  # alternate the order
            c, w = cpu(), time.perf_counter()
            out = runs[name]()
            times[name]["cpu"].append(cpu() - c)
            times[name]["wall"].append(time.perf_counter() - w)
            threads.add(torch.get_num_threads())
            if not torch.equal(out, reference):  # parity on the timed outputs themselves
                raise SystemExit(f"{name} produced other tokens than transformers' greedy")

    tok_s = {name: {k: n / statistics.median(v) for k, v in t.items()}
             for name, t in times.items()}
    base = tok_s["transformers, greedy"][args.clock]
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{platform.processor() or platform.machine()}; torch threads that ran: "
        f"{','.join(map(str, sorted(threads)))}; {args.runs} alternating rounds, medians; "
        f"every timed output identical to transformers' greedy; load average "
        f"{load0:.1f} -> {os.getloadavg()[0]:.1f}\n"
    )
    print(f"| run | tokens/s, CPU clock | tokens/s, wall clock | vs transformers greedy "
          f"({args.clock}) |")
    print("|---|---:|---:|---:|")
    for name, value in tok_s.items():
        print(f"| {name} | {value['cpu']:.0f} | {value['wall']:.0f} | "
              f"{value[args.clock] / base:.2f}x |")


if __name__ == "__main__":
    main()
