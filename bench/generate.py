"""Greedy decoding speed: lmforge `generate` vs transformers `generate`, same weights.

    .venv/bin/python bench/generate.py [--runs 5] [--new-tokens 200] [--threads 2]

A GPT-2-style model (6 layers, d=384, 6 heads, vocab 8192, context 256) is built by
transformers with random weights, saved, and loaded into lmforge with `load_hf`. Batch 1,
a 16-token prompt, 200 new tokens, KV cache on both sides, EOS never allowed
(min_new_tokens) so every run produces exactly 200 tokens, and all token sequences are
checked to be identical. Two modes per library: plain greedy, and greedy with prompt
lookup decoding (transformers: `prompt_lookup_num_tokens`, lmforge:
`prompt_lookup_tokens`; both give the greedy output, with fewer forwards when the text
repeats itself, which random-weight models do a lot). Runs alternate; the table gives
medians, the ratio is against transformers' plain greedy. Prints the markdown table of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--threads", type=int, default=2)
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
    for name, fn in runs.items():  # warm-up, and the parity check
        assert torch.equal(fn(), reference), f"{name} produced other tokens"
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.runs):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    tok_s = {name: n / statistics.median(t) for name, t in times.items()}
    base = tok_s["transformers, greedy"]
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}; "
        f"{args.runs} alternating runs, medians; all outputs identical\n"
    )
    print("| run | tokens/s (batch 1, 200 new, KV cache) | vs transformers greedy |")
    print("|---|---:|---:|")
    for name, value in tok_s.items():
        print(f"| {name} | {value:.0f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
