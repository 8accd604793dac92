"""The pretraining recipe: `lmforge pretrain CONFIG [key=value ...] [--resume]`.

One visible function, read top to bottom:

    1. check the run dir (refuse to overwrite a run; find the checkpoint to resume)
    2. tokenizer: load tokenizer.path, or the run's own on resume, or train one
    3. model config: preset + overrides, vocab size from the tokenizer
    4. token shards: reuse them when they match the tokenizer and corpus, else write
    5. RUN_DIR/config.yaml: the fully resolved config, so that
       `lmforge pretrain RUN_DIR/config.yaml run_dir=NEW` reproduces this run
    6. model, objective, trainer.fit (eval, logs, checkpoints, MFU)
    7. a sample from the prompt; the summary (also the last line of metrics.jsonl)

Bad input (a config key, a corpus, a checkpoint that does not fit) raises an
LmforgeError before anything is written.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import numpy as np
import torch

from .config import dump_yaml, load_config
from .errors import CheckpointError, ConfigError, DataError
from .models.config import resolve_model_config
from .training.checkpoint import read_meta
from .training.config import RunConfig
from .training.trainer import (
    LossEvaluator,
    Trainer,
    check_run_dir_state,
    full_model,
    main_first,
    torch_threads,
)

# Model-config fields that may change between a checkpoint and its resume.
RUNTIME_MODEL_KEYS = ("dropout", "gradient_checkpointing")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_docs(cfg: RunConfig) -> list[str]:
    """The corpus as documents, cut to `data.max_chars` characters when set."""
    from .data import read_corpus

    docs = read_corpus(cfg.data.corpus, text_field=cfg.data.text_field)
    return take_chars(docs, cfg.data.max_chars)


def take_chars(docs: list[str], limit: int | None) -> list[str]:
    """The first `limit` characters of the document list (the last one cut)."""
    if limit is None:
        return docs
    out, left = [], limit
    for d in docs:
        if left <= 0:
            break
        out.append(d[:left])
        left -= len(out[-1])
    return out


def _source(cfg: RunConfig) -> str:
    """What the shards were made from: they are reused only when this matches."""
    d = cfg.data
    corpus = d.corpus if isinstance(d.corpus, str) else ",".join(d.corpus)
    return f"{corpus}|field={d.text_field}|max_chars={d.max_chars}"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pretrain(cfg: RunConfig, resume: bool = False) -> dict:
    """Pretrain a model as `cfg` says (or resume its run); return the run summary. Under
    torchrun every process calls this; rank 0 writes the run dir."""
    from .training.distributed import init as init_distributed

    run_dir = Path(cfg.run_dir)
    train = cfg.train

    # 1. the run dir: resume needs a complete checkpoint; a fresh run never overwrites one
    latest = check_run_dir_state(run_dir, resume)

    with init_distributed(cfg.distributed, train.device) as dist:
        cfg.distributed.global_batch(train.batch_size, dist.world_size, train.grad_accum)
        with torch_threads(train.threads):
            seed_everything(cfg.seed)
            # 2-5: rank 0 first (it trains the tokenizer, writes the shards and config.yaml),
            # then the other ranks, which read what it wrote
            tokenizer, model_cfg, objective, shards, tok_hash = main_first(
                dist, lambda: prepare(cfg, resume, latest, dist.is_main))
            return _train(cfg, resume, dist, tokenizer, model_cfg, objective, shards, tok_hash)


def _train(cfg: RunConfig, resume: bool, dist, tokenizer, model_cfg, objective, shards,
           tok_hash: str) -> dict:
    """Steps 6-7 of the recipe: model, sampler, trainer, fit; the sample."""
    from .data import ChunkSampler, eval_batches

    run_dir, train = Path(cfg.run_dir), cfg.train
    # 6. objective, model (the objective's: ELECTRA trains two), trainer. The sampler
    # cuts windows of the length the objective asks for (CLM: seq_len + 1 tokens)
    torch.manual_seed(cfg.seed)
    model = objective.build_model(model_cfg)
    step = objective.window_len(train.seq_len) - 1  # windows are step + 1 tokens long
    sampler = ChunkSampler(shards.train, step, train.batch_size, seed=cfg.seed,
                           rank=dist.rank, world_size=dist.world_size)
    evaluator = None
    if shards.val:
        # the unigram loss beside every eval: how far the run is from "token frequencies
        # only" (special tokens left out: no objective predicts them from a mask)
        unigram = shards.unigram_loss(model_cfg.vocab_size,
                                      exclude=tokenizer.special_tokens.values())
        evaluator = LossEvaluator(objective, lambda: eval_batches(
            shards.val, step, train.batch_size, train.eval_batches),
            reference={"val_unigram_loss": unigram} if unigram is not None else None)
    n_params = sum(p.numel() for p in model.parameters())
    global_batch = cfg.distributed.global_batch(train.batch_size, dist.world_size,
                                                train.grad_accum)  # checked at the start
    if dist.is_main:
        _say(f"{run_dir}: {n_params / 1e6:.2f}M parameters, "
             f"{shards.tokens('train'):,} train tokens, global batch {global_batch} x "
             f"{train.seq_len} = {global_batch * train.seq_len:,} tokens/step "
             f"({dist.world_size} process{'es' if dist.world_size > 1 else ''}, "
             f"strategy {dist.strategy}), "
             f"{'resuming' if resume else 'training'} to step {train.max_steps}")
    trainer = Trainer(model, objective, train, run_dir, model_config=model_cfg.to_dict(),
                      meta={"tokenizer_hash": tok_hash}, dist=dist)
    summary = trainer.fit(sampler, evaluator, resume=resume)

    # 7. a sample from the trained model (rank 0, from the whole model)
    if cfg.sample.prompt:
        model = full_model(trainer, lambda: objective.build_model(model_cfg))
        if dist.is_main:
            summary["sample"] = sample_text(model, tokenizer, cfg)
    summary["run_dir"] = str(run_dir)
    return summary


def prepare(cfg: RunConfig, resume: bool, latest: Path | None, main: bool = True):
    """Steps 2-5 of the recipe: (tokenizer, model config, objective, shards, tokenizer
    hash). `main`: this process writes (the tokenizer, shards, config.yaml); on the other
    ranks it runs after rank 0's and reads what rank 0 wrote."""
    from .data import open_shards
    from .data.shards import fingerprint
    from .data.shards import read_meta as read_shard_meta
    from .objectives import build as build_objective
    from .tokenizer import Tokenizer

    run_dir, train = Path(cfg.run_dir), cfg.train
    tok_file = run_dir / "tokenizer.json"
    say = _say if main else (lambda msg: None)


    # 2. the tokenizer: given, the run's own (resume), or trained below
    tokenizer = None
    # the other ranks read the tokenizer rank 0 trained
    tok_source = cfg.tokenizer.path or (str(tok_file) if resume or not main else None)
    if tok_source is not None:
        tokenizer = Tokenizer.load(tok_source)
    vocab_size = tokenizer.vocab_size if tokenizer else cfg.tokenizer.vocab_size

    # 3. the model config (validated now, before anything is written)
    model_cfg = resolve_model_config(cfg.model, vocab_size, tokenizer)
    if train.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"config key 'train.seq_len': {train.seq_len} is longer than the model's "
            f"context (model.max_seq_len = {model_cfg.max_seq_len})"
        )
    if resume:
        check_resumable(latest, model_cfg.to_dict(), fingerprint(tokenizer))

    # 4. the data: read once if the tokenizer or the shards need it
    shards_dir = Path(cfg.data.shards) if cfg.data.shards else run_dir / "shards"
    shard_meta = read_shard_meta(shards_dir)
    docs = None
    if tokenizer is None:
        docs = read_docs(cfg)
        tokenizer = train_tokenizer(cfg, docs, say)
    model_cfg = resolve_model_config(cfg.model, tokenizer.vocab_size, tokenizer)
    # the objective checks what it needs (special tokens, lengths) before anything
    # is written
    objective = build_objective(cfg.objective, tokenizer=tokenizer, model_config=model_cfg,
                                seed=cfg.seed)
    objective.window_len(train.seq_len)  # T5 / BART: checks seq_len against the noising
    if tokenizer.eos_id is None:
        raise ConfigError("config key 'tokenizer.special_tokens': the tokenizer needs an "
                          "end-of-text token to separate documents")
    tok_hash = fingerprint(tokenizer)
    reuse = shards_match(cfg, shards_dir, shard_meta, tok_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    if main and Path(tok_source or "").resolve() != tok_file.resolve():
        tokenizer.save(tok_file)
    if not reuse:
        write_run_shards(cfg, tokenizer, shards_dir, docs, say)
    shards = open_shards(shards_dir, tokenizer_hash=tok_hash)

    # 5. the resolved config: no preset indirection, this run's tokenizer and shards
    resolved = dataclasses.replace(
        cfg,
        model=model_cfg.to_dict(),
        tokenizer=dataclasses.replace(cfg.tokenizer, path=str(tok_file),
                                      vocab_size=tokenizer.vocab_size),
        data=dataclasses.replace(cfg.data, shards=str(shards_dir)),
    )
    if main:
        dump_yaml(resolved, run_dir / "config.yaml")
    return tokenizer, model_cfg, objective, shards, tok_hash


def shards_match(cfg: RunConfig, shards_dir: Path, meta: dict | None, tok_hash: str) -> bool:
    """True when the shards in `shards_dir` (their `meta`, None if there are none) were
    made from this tokenizer, corpus and split; DataError when a shared `data.shards`
    folder holds other ones (they are not ours to overwrite)."""
    wanted = {"tokenizer_hash": tok_hash, "source": _source(cfg),
              "val_fraction": cfg.data.val_fraction, "seed": cfg.seed}
    reuse = meta is not None and all(meta.get(k) == v for k, v in wanted.items())
    if meta is not None and not reuse and cfg.data.shards is not None:
        raise DataError(
            f"token shards in {shards_dir} were made from another corpus, tokenizer or "
            "split; delete them or set data.shards to another folder"
        )
    return reuse


def write_run_shards(cfg: RunConfig, tokenizer, shards_dir: Path, docs=None, say=_say):
    from .data import write_shards

    docs = docs if docs is not None else read_docs(cfg)
    say(f"tokenizing {len(docs)} documents into {shards_dir}")
    write_shards(docs, tokenizer, shards_dir, val_fraction=cfg.data.val_fraction,
                 seed=cfg.seed, source=_source(cfg))


def ensure_shards(cfg: RunConfig) -> None:
    """Write the token shards of `cfg` (a given tokenizer.path and data.shards) unless
    matching ones are there: what a run would do first, done ahead by a caller that
    starts runs sharing the shards side by side."""
    from .data.shards import fingerprint
    from .data.shards import read_meta as read_shard_meta
    from .tokenizer import Tokenizer

    tokenizer = Tokenizer.load(cfg.tokenizer.path)
    shards_dir = Path(cfg.data.shards)
    if not shards_match(cfg, shards_dir, read_shard_meta(shards_dir), fingerprint(tokenizer)):
        write_run_shards(cfg, tokenizer, shards_dir)


def train_tokenizer(cfg: RunConfig, docs: list[str], say=_say):
    """The BPE tokenizer `cfg.tokenizer` describes, trained on the first
    `tokenizer.train_chars` characters of `docs`."""
    from .tokenizer import Tokenizer, sentinel_tokens

    texts = take_chars(docs, cfg.tokenizer.train_chars)
    say(f"training a {cfg.tokenizer.vocab_size}-token BPE tokenizer on "
        f"{sum(map(len, texts)):,} characters")
    # T5's sentinels come last, <extra_id_0> the very last id (as in T5's vocab)
    sentinels = sentinel_tokens(cfg.tokenizer.sentinels)[::-1]
    return Tokenizer.train(
        texts, vocab_size=cfg.tokenizer.vocab_size,
        special_tokens=[*cfg.tokenizer.special_tokens, *sentinels],
        pattern=cfg.tokenizer.pattern, progress=cfg.train.progress,
    )


def check_resumable(ckpt: Path, model_cfg: dict, tokenizer_hash: str) -> None:
    """Refuse a checkpoint whose architecture, vocab or tokenizer differs from the config."""
    meta = read_meta(ckpt)
    saved = meta.get("model_config") or {}
    diff = sorted(
        k for k in set(saved) | set(model_cfg)
        if k not in RUNTIME_MODEL_KEYS and saved.get(k) != model_cfg.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {model_cfg.get(k)!r}" for k in diff[:4])
        raise CheckpointError(
            f"checkpoint {ckpt} is from another model (differs in {shown}); "
            "resume with the run's own config.yaml"
        )
    saved_tok = meta.get("tokenizer_hash")
    if saved_tok is not None and saved_tok != tokenizer_hash:
        raise CheckpointError(f"checkpoint {ckpt} was trained with another tokenizer")


@torch.no_grad()
def sample_text(model, tokenizer, cfg: RunConfig) -> str:
    """Continue `sample.prompt` with the trained model (seeded; temperature 0 = greedy).
    An encoder-decoder reads the prompt as its source and returns the decoded target."""
    from .generation import generate

    s = cfg.sample
    model.eval()
    device = next(model.parameters()).device
    if model.config.arch == "seq2seq":  # the prompt is the encoder's input; show the target
        from .objectives.denoising import source_ids, target_text

        src = source_ids(tokenizer, s.prompt, model.config.family)
        room = model.config.max_seq_len - 1 if model.config.positions == "learned" else None
        out = generate(
            model, torch.tensor([src[-model.config.max_seq_len:]], device=device),
            max_new_tokens=max(1, min(s.max_new_tokens, room or s.max_new_tokens)),
            do_sample=s.temperature > 0, temperature=s.temperature or 1.0, top_k=s.top_k or 0,
            generator=torch.Generator(device).manual_seed(cfg.seed),
        )
        return target_text(tokenizer, out[0].tolist(), model.config.decoder_start_token_id)
    ids = tokenizer.encode(s.prompt)[-(model.config.max_seq_len - 1):]
    room = model.config.max_seq_len - len(ids)  # learned positions end at max_seq_len
    out = generate(
        model, torch.tensor([ids], device=device),
        max_new_tokens=max(1, min(s.max_new_tokens, room)),
        do_sample=s.temperature > 0, temperature=s.temperature or 1.0, top_k=s.top_k or 0,
        generator=torch.Generator(device).manual_seed(cfg.seed),
    )
    return tokenizer.decode(out[0].tolist())


def main(argv: list[str] | None = None) -> int:
    """`python -m lmforge.pretrain CONFIG [--resume] [key=value ...]` (the CLI's twin)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in argv
    args = [a for a in argv if a != "--resume"]
    if not args:
        print("usage: python -m lmforge.pretrain CONFIG [--resume] [key=value ...]",
              file=sys.stderr)
        return 2
    cfg = load_config(args[0], RunConfig, args[1:])
    summary = pretrain(cfg, resume=resume)
    for key in ("step", "final_loss", "val_loss", "val_ppl", "tok_per_s", "mfu", "train_flops"):
        if summary.get(key) is not None:
            print(f"{key}: {summary[key]:.6g}" if isinstance(summary[key], float)
                  else f"{key}: {summary[key]}")
    if "sample" in summary:
        print(f"sample:\n{summary['sample']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
