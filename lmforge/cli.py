"""`lmforge <command>`: a plain map from command names to functions.

Each command's docstring is its help. Problems the user can fix print one line on
stderr and exit with code 2 (add --debug for the traceback); nothing half-written is
ever left behind (outputs are written to a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import LmforgeError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- commands


def cmd_recipes_list(args) -> int:
    """List the recipes that ship with lmforge: name and what each one is."""
    from .recipes import all_recipes, describe

    recipes = all_recipes()
    width = max(map(len, recipes))
    for name, path in recipes.items():
        print(f"{name.ljust(width)}  {describe(path)}".rstrip())
    return 0


def cmd_recipes_cp(args) -> int:
    """Copy a recipe to edit: lmforge recipes cp NAME DEST (a file or a folder)."""
    from .recipes import copy

    print(f"{args.name} -> {copy(args.name, args.dest)}")
    return 0


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

    from .atomic import check_run_dir
    from .data import read_corpus
    from .tokenizer import Tokenizer

    if not args.out.is_dir():  # a folder gets tokenizer.json; else its folder must be one
        check_run_dir(args.out.parent, f"--out {args.out}: the folder")
    docs = read_corpus(args.corpus, text_field=args.text_field)
    start = time.perf_counter()
    tok = Tokenizer.train(
        docs, vocab_size=args.vocab_size, special_tokens=args.special,
        pattern=args.pattern, progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    out = tok.save(args.out)  # a folder gets tokenizer.json inside
    chars = sum(len(d) for d in docs)
    print(f"trained a {tok.vocab_size}-token BPE tokenizer on {len(docs)} documents "
          f"({chars / 1e6:.1f}M characters) in {seconds:.1f}s -> {out}")
    return 0


def cmd_tokenize(args) -> int:
    """Tokenize a corpus into token shards (np.memmap files + meta.json)."""
    import time

    from .atomic import check_run_dir
    from .data import read_corpus, write_shards
    from .tokenizer import Tokenizer

    check_run_dir(args.out, "--out")  # a file, a read-only disk: before any work
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


def cmd_pretrain(args) -> int:
    """Pretrain a model from a YAML recipe: lmforge pretrain CONFIG [key=value ...].

    CONFIG may be a recipe from configs/ or a run's own RUN_DIR/config.yaml (which
    reruns it; add run_dir=NEW). Keys are overridden with dotted key=value pairs,
    e.g. train.max_steps=100 model.n_layer=2. --resume continues the run in run_dir
    from its latest complete checkpoint, exactly as if it had not stopped.
    """
    from .atomic import check_run_dir
    from .pretrain import pretrain
    from .recipes import resolve
    from .runs import load_run_config
    from .training.config import RunConfig

    cfg = load_run_config(resolve(args.config), RunConfig, args.overrides)  # a run's: its own
    check_run_dir(cfg.run_dir)  # a file, a read-only disk: before any work
    summary = pretrain(cfg, resume=args.resume)
    if not main_rank():  # torchrun: rank 0 reports
        return 0
    shown = {"step": "steps", "val_loss": "val loss", "val_ppl": "val perplexity",
             "final_loss": "train loss", "tok_per_s": "tokens/s", "train_flops": "train FLOPs"}
    shown.update({k: k.replace("_", " ") for k in summary
                  if k.startswith("val_") and k not in shown})  # val_acc, val_nsp_acc ...
    for key, label in shown.items():
        value = summary.get(key)
        if value is not None:
            print(f"{label}: {value:.4g}" if isinstance(value, float) else f"{label}: {value}")
    print(f"run directory: {summary['run_dir']} (metrics.jsonl, loss.png, checkpoints/)")
    if "sample" in summary:
        print(f"sample:\n{summary['sample']}")
    return 0


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    from .errors import LmforgeError

    ids = tokenizer.encode(prompt)
    if not ids:
        raise LmforgeError("the prompt is empty: give some text with --prompt")
    return ids


def _check_generation_flags(args) -> None:
    """The sampling flags in the user's words, before any model is loaded."""
    checks = [("--max-new-tokens", args.max_new_tokens >= 1, "at least 1"),
              ("--temperature", args.temperature >= 0, ">= 0 (0 = greedy)"),
              ("--top-k", args.top_k >= 0, ">= 0 (0 = off)"),
              ("--top-p", 0 < args.top_p <= 1, "in (0, 1]"),
              ("--repetition-penalty", args.repetition_penalty > 0, "> 0"),
              ("--num-beams", args.num_beams >= 1, "at least 1")]  # fmt: skip
    for flag, ok, expected in checks:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            raise LmforgeError(f"{flag} {value}: must be {expected}")


def cmd_generate(args) -> int:
    """Continue a prompt with a trained model: lmforge generate RUN_DIR --prompt TEXT.

    For an encoder-decoder (BART, T5) the prompt is the encoder's input and the output is
    the decoded target, e.g. --prompt "To be or <extra_id_0> to be" (T5) or "<mask>"
    (BART): special tokens in the prompt are recognised.
    """
    import torch

    from .generation import GenerationConfig, generate, pad_left
    from .runs import load_run

    _check_generation_flags(args)
    from .finetune import is_finetuned, load_finetuned

    if is_finetuned(args.run_dir):  # a generative fine-tune (PEFT too): its best checkpoint
        if args.step is not None:
            raise LmforgeError("--step: a fine-tuned run generates with its kept best checkpoint")
        run = load_finetuned(args.run_dir)
        if hasattr(run.model, "backbone"):
            raise LmforgeError(f"{args.run_dir} is a {run.task.type} model (task "
                               f"{run.config.task}), not a language model: use lmforge eval")
    else:
        run = load_run(args.run_dir, step=args.step)
    if run.model.config.arch in ("encoder", "xlnet"):
        raise LmforgeError(f"{args.run_dir} is an encoder ({run.model.config.family or 'encoder'}"
                           "): it scores text but does not generate it; use lmforge eval")
    tok = run.tokenizer
    seq2seq = run.model.config.arch == "seq2seq"
    if seq2seq:  # encoder-decoder: the prompt is the source (<mask>, <extra_id_0> allowed)
        from .objectives.denoising import source_ids, target_text

        for p in args.prompt:
            _prompt_ids(tok, p)  # one clear error for an empty prompt
        prompts = [source_ids(tok, p, run.model.config.family) for p in args.prompt]
    else:
        prompts = [_prompt_ids(tok, p) for p in args.prompt]
    gen = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0 and args.num_beams == 1,
        temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, num_beams=args.num_beams,
        stop_strings=list(args.stop),
    )
    ids, mask = pad_left(prompts, pad_id=tok.pad_id if tok.pad_id is not None else 0)
    g = torch.Generator().manual_seed(args.seed)
    out = generate(run.model, ids, mask, gen, generator=g, decode=tok.decode)
    width = ids.shape[1]
    if seq2seq:  # the output is the decoded target
        for row in out.tolist():
            print(target_text(tok, row, run.model.config.decoder_start_token_id))
            if len(out) > 1:
                print("-" * 40)
        return 0
    for i, row in enumerate(out.tolist()):
        new = row[width:]
        if tok.eos_id in new:
            new = new[: new.index(tok.eos_id)]
        print(args.prompt[i // gen.num_return_sequences] + tok.decode(new))
        if len(out) > 1:
            print("-" * 40)
    return 0


def main_rank() -> bool:
    """Not under torchrun, or its rank 0: the process that prints."""
    from .training.distributed import launched_rank

    return launched_rank() == 0


def cmd_finetune(args) -> int:
    """Fine-tune a model on a task: lmforge finetune CONFIG [key=value ...] [--resume].

    CONFIG is a recipe from configs/finetune/ (or a fine-tuned run's config.yaml, with
    run_dir=NEW). init_from names an lmforge run dir or a Hugging Face checkpoint dir.
    Every task metric is measured on val after each epoch; the best checkpoint is kept
    and scored on test (RUN_DIR/results.json). --resume continues a killed run exactly
    where its last checkpoint (one per epoch) left it.
    """
    from .atomic import check_run_dir
    from .finetune import FinetuneConfig, finetune
    from .recipes import resolve
    from .runs import load_run_config

    cfg = load_run_config(resolve(args.config), FinetuneConfig, args.overrides)  # a run's: its own
    check_run_dir(cfg.run_dir)  # a file, a read-only disk: before any work
    summary = finetune(cfg, resume=args.resume)
    if not main_rank():  # torchrun: rank 0 reports
        return 0
    print(f"best epoch: {summary['best_epoch']} of {summary['epochs_run']}"
          + (" (stopped early)" if summary["stopped_early"] else ""))
    for split in ("val", "test"):
        print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[split].items()))
    print(f"run directory: {summary['run_dir']} (results.json, metrics.jsonl, checkpoints/)")
    return 0


def _eval_task(args) -> int:
    """`lmforge eval RUN_DIR --task NAME --split test` for a fine-tuned run."""
    import json

    from .finetune import evaluate_run

    scores = evaluate_run(args.run_dir, args.task, args.split or "test")
    if args.json:
        print(json.dumps(scores))
    else:
        for k, v in scores.items():
            print(f"{k}: {v:.4f}")
    return 0


def cmd_report(args) -> int:
    """A markdown results table of fine-tuned runs: task columns, model rows (GLUE-style).

    Each cell is the task's main metric on the test split x 100, from RUN_DIR/results.json.
    """
    from .atomic import write_text
    from .report import results_table

    table = results_table(args.run_dirs, args.split)
    if args.out:
        write_text(args.out, table)
    print(table, end="")
    return 0


def cmd_experiment(args) -> int:
    """Rerun one of the lecture's claims: lmforge experiment NAME [scale=S] [seeds=N].

    NAME: pretrain-helps, electra-vs-mlm, lora-vs-full, scaling, encoder-vs-decoder,
    dynamic-masking, encoders (configs/experiments/NAME.yaml). Its runs land in
    runs/experiments/NAME/ (out=DIR elsewhere), then report.md (tables in the lecture's
    form, mean +- spread over seeds) and PNG plots. A second call redoes no finished run
    and continues a killed one. scale=test is a seconds-long check of the pipeline;
    jobs=N runs N runs at a time (each in its own process, the cores shared out).
    """
    from .experiments import load_spec, run_experiment

    spec = load_spec(args.name, args.overrides)
    run_experiment(spec)  # writes OUT/report.md
    print((spec.out / "report.md").read_text(encoding="utf-8"), end="")
    return 0


def cmd_eval(args) -> int:
    """Evaluate a trained model: perplexity on a text file (or the run's val split);
    for a fine-tuned run, its task's metrics on --split (see --task)."""
    from .finetune import is_finetuned

    if args.task or is_finetuned(args.run_dir):  # a fine-tuned run: its task's metrics
        return _eval_task(args)
    if args.split is not None:
        from .errors import ConfigError

        raise ConfigError(f"--split {args.split}: only for fine-tuned runs; {args.run_dir} is "
                          "a pretraining run, scored on its val split or on --data")
    import json

    import numpy as np

    from .data import read_corpus
    from .errors import LmforgeError
    from .runs import load_run, perplexity

    run = load_run(args.run_dir, step=args.step)
    seq_len = args.seq_len or run.config.train.seq_len
    if seq_len > run.model.config.max_seq_len:
        raise LmforgeError(f"--seq-len {seq_len} is longer than the model's context "
                           f"({run.model.config.max_seq_len})")
    if args.data:
        docs = read_corpus(args.data, text_field=args.text_field)
        eos = run.tokenizer.eos_id
        ids = []
        for d in docs:
            ids += run.tokenizer.encode(d) + ([eos] if eos is not None else [])
        source = ",".join(map(str, args.data))
    else:
        from .data import open_shards

        shards = open_shards(run.config.data.shards, run.tokenizer.fingerprint)
        if not shards.val:
            raise LmforgeError("the run has no val split; give --data FILE")
        ids = np.concatenate(shards.val).astype(np.int64).tolist()
        source = "val split"
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    if run.model.config.arch != "decoder":  # encoders, encoder-decoders: their objective
        from .runs import objective_eval

        result = objective_eval(run, ids, seq_len=seq_len)
        result = {"run": str(run.path), "checkpoint": run.checkpoint.name, "data": source,
                  "seq_len": seq_len, "objective": run.config.objective.name, **result}
        if args.json:
            print(json.dumps(result))
        else:
            stats = ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                              if isinstance(v, float))
            print(f"{source}: {result['tokens']:,} targets, {run.config.objective.name} "
                  f"{stats} ({run.checkpoint.name}, seq_len {seq_len})")
        return 0
    result = perplexity(run.model, ids, seq_len=seq_len, stride=args.stride)
    result = {"run": str(run.path), "checkpoint": run.checkpoint.name, "data": source,
              "seq_len": seq_len, **result}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{source}: {result['tokens']:,} tokens, loss {result['nll']:.4f}, "
              f"perplexity {result['ppl']:.2f} ({run.checkpoint.name}, seq_len {seq_len})")
    return 0


def cmd_convert(args) -> int:
    """Convert checkpoints: --from-hf HF_DIR --out RUN_DIR, or --to-hf RUN_DIR --out HF_DIR."""
    from .errors import LmforgeError
    from .interop.hf import load_hf, save_hf
    from .tokenizer import Tokenizer

    if bool(args.from_hf) == bool(args.to_hf):
        raise LmforgeError("give exactly one of --from-hf HF_DIR or --to-hf RUN_DIR")
    if args.from_hf:
        from .runs import write_run

        src = Path(args.from_hf)
        model = load_hf(src)
        adapter = args.adapter or (src if (src / "adapter_config.json").is_file() else None)
        if adapter is not None:  # a peft LoRA adapter: folded into the imported weights
            from .interop.peft_format import import_lora
            from .peft import merge_and_unload

            model = merge_and_unload(import_lora(model, adapter))
        if (src / "tokenizer.json").is_file():
            tok = Tokenizer.from_hf_json(src / "tokenizer.json")
        elif (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
            tok = Tokenizer.from_gpt2_files(src / "vocab.json", src / "merges.txt")
        elif (src / "vocab.txt").is_file():  # BERT's WordPiece vocab
            from .wordpiece import WordPieceTokenizer

            tok = WordPieceTokenizer.from_vocab_txt(src / "vocab.txt")
        elif any(src.glob("*.model")):  # SentencePiece (DeBERTa-v2 / v3's spm.model, ALBERT)
            raise LmforgeError(f"{src}: its tokenizer is SentencePiece only "
                               f"({min(p.name for p in src.glob('*.model'))}, no "
                               "tokenizer.json), which lmforge cannot run")
        else:
            raise LmforgeError(f"{src} has no tokenizer.json (or vocab.json + merges.txt, "
                               "or vocab.txt)")
        write_run(model, tok, args.out, source=str(src))
        print(f"converted {src} ({model.config.family or 'decoder'}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) -> {args.out}")
        return 0
    from .finetune import is_finetuned
    from .runs import load_run

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise LmforgeError(f"{out} exists and is not empty; choose a new folder")
    if is_finetuned(args.to_hf):
        return _export_finetuned(args.to_hf, out, args.step, args.merge)
    if args.merge:
        raise LmforgeError("--merge: only a LoRA fine-tuned run has weights to merge")
    run = load_run(args.to_hf, step=args.step)
    save_hf(run.model, out)
    run.tokenizer.save(out / "tokenizer.json")
    print(f"exported {run.path} ({run.checkpoint.name}) -> {out} (transformers format)")
    return 0


def _export_finetuned(run_dir: Path, out: Path, step: int | None, merge: bool = False) -> int:
    """convert --to-hf on a fine-tuned run: its best checkpoint as the task's transformers
    class (...ForSequenceClassification ...), or as the LM class for chat / text2text /
    verbalizer runs; the run's tokenizer (chat tokens included) beside it. A PEFT run
    (`peft:`): the base and the adapter in peft's format (LoRA beside the weights, prompt
    methods in OUT/adapter), or with --merge (LoRA) the merged weights alone."""
    from .finetune import load_finetuned
    from .interop.hf import hf_architecture, save_hf
    from .interop.hf_heads import save_hf_task
    from .models.heads import TaskModel

    if step is not None:
        raise LmforgeError("--step: a fine-tuned run exports its kept best checkpoint")
    run = load_finetuned(run_dir)
    method = run.config.peft.method
    if merge and method != "lora":
        raise LmforgeError(f"--merge: only a LoRA run has weights to merge; this run's peft "
                           f"method is {method or 'none (full fine-tuning)'}")
    labels = getattr(run.mode, "labels", None) or getattr(run.task, "labels", None)
    n = getattr(getattr(getattr(run.model, "head", None), "out", None), "out_features", None)
    labels = list(labels) if labels and len(labels) == n else None
    if method is not None:
        from .interop.peft_format import PROMPT_ADAPTER_DIR, export_hf

        cls = export_hf(run.model, out, run.config.peft, merge=merge, labels=labels)
        where = "merged" if merge else (f"adapter in {out / PROMPT_ADAPTER_DIR}"
                                        if method in ("prompt", "prefix", "ptuning")
                                        else "peft adapter beside it")
        cls = f"{cls}, {method}: {where}"
    elif isinstance(run.model, TaskModel):
        cls = save_hf_task(run.model, out, labels=labels)
    else:  # a generative fine-tune is an LM
        save_hf(run.model, out)
        cls = hf_architecture(run.model.config)
    run.tokenizer.save(out / "tokenizer.json")
    print(f"exported {run.path} ({run.checkpoint.name}, task {run.config.task}) -> {out} ({cls})")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lmforge", description="Pretrain and fine-tune Transformer LMs.")
    p.add_argument("--version", action="version", version=f"lmforge {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--verbose", action="store_true", help="list every file skipped, and why")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    sub.required = True

    def add(name, fn, sp=sub):
        q = sp.add_parser(name, help=fn.__doc__.splitlines()[0], description=fn.__doc__)
        q.set_defaults(fn=fn)
        # also after the command (SUPPRESS: the subparser leaves `lmforge --verbose X` be)
        q.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="list every file skipped when reading folders, and why")
        return q

    add("datasets", cmd_datasets)

    rc = sub.add_parser("recipes", help="list and copy the YAML recipes that ship with lmforge")
    rc_sub = rc.add_subparsers(dest="recipes_command", metavar="command", parser_class=_Parser)
    rc_sub.required = True
    add("list", cmd_recipes_list, rc_sub)
    q = add("cp", cmd_recipes_cp, rc_sub)
    q.add_argument("name", help="a recipe name (lmforge recipes list)")
    q.add_argument("dest", type=Path, help="a new file, or a folder to copy it into")

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

    q = add("pretrain", cmd_pretrain)
    q.add_argument("config", type=Path,
                   help="YAML file (RUN_DIR/config.yaml, your own) or a recipe name "
                        "(lmforge recipes list)")
    q.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    q.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")

    q = add("generate", cmd_generate)
    q.add_argument("run_dir", type=Path)
    q.add_argument("--prompt", nargs="+", required=True, help="one or more prompts (batched)")
    q.add_argument("--max-new-tokens", type=int, default=100)
    q.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    q.add_argument("--top-k", type=int, default=50, help="0 = off")
    q.add_argument("--top-p", type=float, default=1.0)
    q.add_argument("--repetition-penalty", type=float, default=1.0)
    q.add_argument("--num-beams", type=int, default=1, help="> 1: beam search")
    q.add_argument("--stop", nargs="*", default=[], help="stop strings")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")

    q = add("eval", cmd_eval)
    q.add_argument("run_dir", type=Path)
    q.add_argument("--data", nargs="+", default=None,
                   help="corpus names / files (default: the run's val split)")
    q.add_argument("--text-field", default="text")
    q.add_argument("--seq-len", type=int, default=None, help="default: the run's train.seq_len")
    q.add_argument("--stride", type=int, default=None, help="sliding-window stride")
    q.add_argument("--max-tokens", type=int, default=None)
    q.add_argument("--step", type=int, default=None)
    q.add_argument("--json", action="store_true", help="print one JSON line")
    q.add_argument("--task", default=None,
                   help="fine-tuned runs: the task to score (default: the run's own)")
    q.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="fine-tuned runs: the split to score (default: test)")

    q = add("finetune", cmd_finetune)
    q.add_argument("config", type=Path,
                   help="YAML file or a recipe name (e.g. wnut16-bert; lmforge recipes list)")
    q.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    q.add_argument("overrides", nargs="*", help="dotted key=value overrides")

    q = add("report", cmd_report)
    q.add_argument("run_dirs", nargs="+", type=Path, help="fine-tuned run directories")
    q.add_argument("--split", default="test", choices=["val", "test"])
    q.add_argument("--out", type=Path, default=None, help="also write the table here")

    q = add("experiment", cmd_experiment)
    q.add_argument("name", help="an experiment (configs/experiments/NAME.yaml)")
    q.add_argument("overrides", nargs="*",
                   help="scale=NAME (default, test), seeds=N, pretrain_seeds=N, tasks=[...], "
                        "out=DIR, jobs=N (runs side by side, each in its own process)")

    q = add("convert", cmd_convert)
    q.add_argument("--from-hf", type=Path, help="a transformers checkpoint folder")
    q.add_argument("--to-hf", type=Path, help="an lmforge run directory")
    q.add_argument("--adapter", type=Path, help="with --from-hf: a peft LoRA adapter folder "
                   "(default: the one beside the weights, if any), merged into the weights")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--step", type=int, default=None)
    q.add_argument("--merge", action="store_true", help="with --to-hf on a LoRA run: the "
                   "merged weights (W0 + (alpha / r) B A), a plain transformers model")
    return p


def _log_to_stderr(verbose: bool) -> logging.Handler:
    """lmforge's notes (files read / skipped, ...) as plain lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("lmforge")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return handler


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _log_to_stderr(args.verbose)
    try:
        return args.fn(args) or 0
    except LmforgeError as e:
        if args.debug:
            raise
        if main_rank():  # torchrun: every rank has the error, rank 0 says it
            print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
            NotADirectoryError) as e:
        if args.debug:
            raise
        print(f"lmforge: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk met outside lmforge's own writers
        from .atomic import disk_errno

        if args.debug or disk_errno(e) is None:
            raise
        print(f"lmforge: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmforge recipes list | head`: the reader has gone, fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        logging.getLogger("lmforge").removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
