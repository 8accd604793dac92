"""`lmforge <command>`: a plain map from command names to functions.

Each command's docstring is its help. Problems the user can fix print one line on
stderr and exit with code 2 (add --debug for the traceback); nothing half-written is
ever left behind (outputs are written to a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LmforgeError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- commands


def cmd_datasets(args) -> int:
    """List the built-in corpora and task sets, with size, license and use."""
    from .data import registry

    rows = [("name", "kind", "size", "license", "what", "use")]
    for b in registry.BUILTINS.values():
        size = registry.size_bytes(b.name)
        shown = f"{size / 1e6:.1f} MB" if size else "not installed"
        rows.append((b.name, b.kind, shown, b.license, b.what, b.use))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_tokenizer_train(args) -> int:
    """Train a byte-level BPE tokenizer on corpora and save it as tokenizer.json."""
    import time

    from .data import read_corpus
    from .tokenizer import Tokenizer

    docs = read_corpus(args.corpus, text_field=args.text_field)
    start = time.perf_counter()
    tok = Tokenizer.train(
        docs, vocab_size=args.vocab_size, special_tokens=args.special,
        pattern=args.pattern, progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    tok.save(args.out)
    chars = sum(len(d) for d in docs)
    print(f"trained a {tok.vocab_size}-token BPE tokenizer on {len(docs)} documents "
          f"({chars / 1e6:.1f}M characters) in {seconds:.1f}s -> {args.out}")
    return 0


def cmd_tokenize(args) -> int:
    """Tokenize a corpus into token shards (np.memmap files + meta.json)."""
    import time

    from .data import read_corpus, write_shards
    from .tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    docs = read_corpus(args.corpus, text_field=args.text_field)
    start = time.perf_counter()
    meta = write_shards(docs, tok, args.out, val_fraction=args.val_fraction, seed=args.seed,
                        num_workers=args.workers, source=",".join(map(str, args.corpus)))
    seconds = time.perf_counter() - start
    s = meta["splits"]
    print(f"tokenized {len(docs)} documents in {seconds:.1f}s: "
          f"train {s['train']['tokens']:,} tokens ({s['train']['docs']} docs), "
          f"val {s['val']['tokens']:,} tokens ({s['val']['docs']} docs), "
          f"{meta['dtype']} -> {args.out}")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lmforge", description="Pretrain and fine-tune Transformer LMs.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    sub.required = True

    def add(name, fn, sp=sub):
        q = sp.add_parser(name, help=fn.__doc__.splitlines()[0], description=fn.__doc__)
        q.set_defaults(fn=fn)
        return q

    add("datasets", cmd_datasets)

    tk = sub.add_parser("tokenizer", help="train and inspect tokenizers")
    tk_sub = tk.add_subparsers(dest="tokenizer_command", metavar="command", parser_class=_Parser)
    tk_sub.required = True
    q = add("train", cmd_tokenizer_train, tk_sub)
    q.add_argument("--corpus", nargs="+", default=["shakespeare"],
                   help="built-in corpus names and/or files / folders (default: shakespeare)")
    q.add_argument("--text-field", default="text", help="field of jsonl/csv/parquet rows")
    q.add_argument("--vocab-size", type=int, default=8192)
    q.add_argument("--pattern", default="gpt2", help="pre-tokenizer: gpt2, gpt4 or a regex")
    q.add_argument("--special", nargs="*", default=["<|endoftext|>"],
                   help="special tokens to add (default: <|endoftext|>)")
    q.add_argument("--out", type=Path, default=Path("tokenizer.json"))
    q.add_argument("--quiet", action="store_true", help="no progress bar")

    q = add("tokenize", cmd_tokenize)
    q.add_argument("--corpus", nargs="+", default=["shakespeare"])
    q.add_argument("--text-field", default="text")
    q.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json")
    q.add_argument("--out", type=Path, required=True, help="folder for the shards")
    q.add_argument("--val-fraction", type=float, default=0.05)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--workers", type=int, default=None, help="encoding processes")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except LmforgeError as e:
        if args.debug:
            raise
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        if args.debug:
            raise
        print(f"lmforge: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
