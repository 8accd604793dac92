"""Benchmark: lmforge's WordPiece against HF `tokenizers`, on the real MiniLM vocab.

    .venv/bin/python bench/wordpiece.py [--repeat 3]

Encodes every non-empty line of the built-in Shakespeare and Wikipedia corpora with the
uncased BERT WordPiece of all-MiniLM-L6-v2 (its own tokenizer.json, 30,522 tokens):
lmforge's `WordPieceTokenizer.encode` per line (cold, then again with its word cache
warm) and HF `tokenizers` on one thread (RAYON_NUM_THREADS=1), per line and with
`encode_batch`. No [CLS] / [SEP], no padding or truncation, special tokens recognised on
both sides. Each measurement runs in a fresh subprocess; the best of `--repeat` runs is
reported, and the script checks that all ids are identical. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def lines() -> list[str]:
    from lmforge.data.corpora import read_corpus

    docs = read_corpus("shakespeare") + read_corpus("wiki-sample")
    return [line for d in docs for line in d.split("\n") if line.strip()]


def tokenizer_json() -> Path:
    from lmforge.data import registry

    return next(f for f in registry.files("minilm") if f.name == "tokenizer.json")


def measure(what: str) -> dict:
    texts = lines()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    if what == "lmforge":
        from lmforge.wordpiece import WordPieceTokenizer

        tok = WordPieceTokenizer.load(tokenizer_json())
        t = time.perf_counter()
        ids = [tok.encode(s, allowed_special="all") for s in texts]
        cold = time.perf_counter() - t
        t = time.perf_counter()
        ids = [tok.encode(s, allowed_special="all") for s in texts]
        warm = time.perf_counter() - t
        return {"seconds": cold, "warm_seconds": warm, "mb": mb, "n": len(texts),
                "ids": _digest(ids)}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json()))
    tok.no_padding()
    tok.no_truncation()
    t = time.perf_counter()
    if what == "hf-batch":
        ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    else:
        ids = [tok.encode(s, add_special_tokens=False).ids for s in texts]
    return {"seconds": time.perf_counter() - t, "mb": mb, "n": len(texts), "ids": _digest(ids)}


def _digest(ids: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def run(what: str, repeat: int) -> dict:
    """Best of `repeat` fresh subprocesses, HF on one thread."""
    env = dict(os.environ, RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    best = None
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--measure", what], env=env,
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or r["seconds"] < best["seconds"]:
            best = r
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="best of N fresh processes")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return

    import tokenizers

    results = {
        "HF tokenizers encode, 1 thread": run("hf", args.repeat),
        "HF tokenizers encode_batch, 1 thread": run("hf-batch", args.repeat),
        "lmforge encode": run("lmforge", args.repeat),
    }
    ours = results["lmforge encode"]
    mb, n = ours["mb"], ours["n"]
    print(f"{n} lines (Shakespeare + Wikipedia sample), {mb:.2f} MB; all-MiniLM-L6-v2 "
          f"WordPiece; {datetime.date.today().isoformat()}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}, tokenizers "
          f"{tokenizers.__version__}; best of {args.repeat} fresh processes.\n")
    base = mb / results["HF tokenizers encode, 1 thread"]["seconds"]
    print("| encoding | seconds | MB/s | speed / HF encode 1 thread |")
    print("|---|---:|---:|---:|")
    rows = [(name, r["seconds"]) for name, r in results.items()]
    rows.append(("lmforge encode, word cache warm", ours["warm_seconds"]))
    for name, seconds in rows:
        speed = mb / seconds
        print(f"| {name} | {seconds:.2f} | {speed:.2f} | {speed / base:.2f}x |")
    same = len({r["ids"] for r in results.values()}) == 1
    print(f"\nToken ids of lmforge and HF on every line: {'identical' if same else 'DIFFERENT'}.")


if __name__ == "__main__":
    main()
