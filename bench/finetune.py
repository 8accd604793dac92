"""Fine-tuning speed: lmforge against transformers (and packed against padded chat SFT).

    .venv/bin/python bench/finetune.py                      # both parts, small defaults
    .venv/bin/python bench/finetune.py --part classify --steps 2 --repeats 8
    .venv/bin/python bench/finetune.py --part classify --profile   # + top ops of one step

Part 1, sequence classification on the real all-MiniLM-L6-v2 weights (a 6-layer BERT,
built in as "minilm"). lmforge's model is built exactly as
`lmforge finetune configs/finetune/rotten-tomatoes-minilm.yaml` builds it (read_source,
body_config, load_body, mode classify with 2 labels), with `model.dropout=0` and
`options.classifier_dropout=0`; the peer is `transformers.BertForSequenceClassification`
`.from_pretrained(<the same folder>, num_labels=2)` with its dropouts at 0 and
lmforge's freshly initialized classifier copied in, so the two models are the same
function. Both get the same batches: real rotten-tomatoes train rows (shuffled as the
recipe does) through the classify mode's `prepare` (input_ids, attention_mask,
token_type_ids, labels; batch 32, max_len 64, padded to the batch's longest row), made
before timing. A training step is forward + loss + backward + grad-norm clip at 1.0 +
AdamW step (lr 1e-4, weight decay 0.01 on matrices, betas 0.9/0.999, linear schedule):
lmforge through `Trainer.train_step` (the mode's loss), transformers as its `Trainer`
runs by default (`model(**batch).loss`, AdamW with `fused=True` -- its default optimizer
`adamw_torch_fused` on torch >= 2.8 -- and LambdaLR); lmforge builds a fused AdamW on
the CPU too (training/optim.py; before 2026-11-26 it built the plain single-tensor one
there, 0.78x transformers on this bench). Evaluation is one forward under
no_grad in eval mode (lmforge: the mode's `logits`, as `predict` calls it). lmforge's
`prepare` (tokenize + pad, which `lmforge finetune` runs inside each step) is timed on
its own.

Part 2, chat SFT: a gpt2-family decoder (4 layers x 256, 4 heads, context 128,
random init) with a 4,096-token BPE trained on the chatterbot texts; lmforge's chat mode
(`ChatTuning`) over real chatterbot train conversations, batch 16, max_len 128, with
`options.packing` off (one right-padded row per conversation: what transformers'
Trainer + DataCollatorWithPadding computes) and on (conversations packed into rows of
max_len, a block-diagonal causal mask from segment_ids). The step includes `prepare`
(chat template + padding or packing), as in `lmforge finetune`.

Every side runs in this one process, alternating (`--steps` steps of each side in a
row, `--repeats` rounds, the order flipped every round), after `--warmup` steps each;
the tables give medians. Times are taken both by the wall clock and by the CPU time of
the (single) compute thread, which other processes' load does not inflate; rates and
ratios use the CPU-time clock unless `--clock wall`. The allocator setting (lmforge's
`train.malloc_cache`) is process-wide, so both sides run on glibc's default allocator,
or with `--alloc` both with the cache.

Sanity checks (printed, and a mismatch is reported): the first-step losses of the two
sides on the same batch agree within 1e-4 (part 1: same weights, same batch; part 2:
packing must not change the loss).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import statistics
import sys
import time

import torch

SEED = 0
BATCH, MAX_LEN = 32, 64  # the rotten-tomatoes-minilm recipe
CHAT_BATCH, CHAT_LEN = 16, 128  # the chatterbot-gpt2 recipe
LR, WD, BETAS = 1e-4, 0.01, (0.9, 0.999)
TOL = 1e-4


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """Wall and thread-CPU seconds of each timed call, per side."""

    def __init__(self):
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def time(self, key: str, fn, *args):
        w, c = time.perf_counter(), time.thread_time()
        out = fn(*args)
        self.cpu.setdefault(key, []).append(time.thread_time() - c)
        self.wall.setdefault(key, []).append(time.perf_counter() - w)
        return out

    def median(self, key: str, clock: str) -> float:
        return statistics.median((self.cpu if clock == "cpu" else self.wall)[key])


class Prepared:
    """A mode fed batches it has already prepared: the trainer's step without `prepare`,
    so that both libraries are timed on the same tensors."""

    def __init__(self, mode):
        self.mode = mode

    def prepare(self, batch, draw=None):
        return batch

    def num_targets(self, batch):
        return self.mode.num_targets(batch)

    def loss(self, model, batch):
        return self.mode.loss(model, batch)


def train_config(steps: int, alloc: bool):
    from lmforge.finetune import FinetuneTrain

    return FinetuneTrain(max_steps=steps, seq_len=MAX_LEN, lr=LR, weight_decay=WD,
                         betas=list(BETAS), device="cpu", progress=False,
                         malloc_cache=alloc)


def alternate(sides: dict, rounds: int, steps: int, clock: Clock, batches: list,
              prefix: str) -> None:
    """`steps` calls of each side in a row, `rounds` times, the order flipped each round;
    side i of round r gets batches[(r * steps + i) % len]: every side sees the same ones."""
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for i in range(steps):
                batch = batches[(r * steps + i) % len(batches)]
                clock.time(f"{prefix}{name}", sides[name], batch)


# ---- part 1: classification, lmforge vs transformers ----------------------------------


def build_classify(args):
    """(lmforge mode, lmforge model, its cfg, HF model, prepared batches, raw row batches)."""
    from transformers import BertForSequenceClassification

    from lmforge.bodies import builtin_weights
    from lmforge.config import load_config
    from lmforge.finetune import FinetuneConfig, build_model, setup

    cfg = load_config("configs/finetune/rotten-tomatoes-minilm.yaml", FinetuneConfig,
                      ["model.dropout=0.0", "options.classifier_dropout=0.0"])
    s = setup(cfg)  # exactly what `lmforge finetune` builds
    task, splits, mode, mode_name = s.task, s.splits, s.mode, s.mode_name
    model = build_model(s, cfg.seed)

    hf = BertForSequenceClassification.from_pretrained(
        str(builtin_weights("minilm")), num_labels=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, classifier_dropout=0.0, local_files_only=True)
    with torch.no_grad():
        hf.classifier.weight.copy_(model.head.out.weight)
        hf.classifier.bias.copy_(model.head.out.bias)
    say(f"classify: mode {mode_name}, {task.num_labels} labels, "
        f"attention {hf.config._attn_implementation}, lmforge {n_params(model):,} / "
        f"HF {n_params(hf):,} parameters")

    rows = list(splits["train"])
    random.Random(cfg.seed).shuffle(rows)
    raw = [rows[i * BATCH:(i + 1) * BATCH] for i in range(args.batches)]
    mode.check([r for b in raw for r in b], "rotten-tomatoes train")
    batches = [mode.prepare(b) for b in raw]
    return mode, model, cfg, hf, batches, raw


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def hf_optimizer(model, total: int):
    """What transformers' Trainer builds by default: AdamW (fused on torch >= 2.8), no
    decay on biases and LayerNorm weights, linear decay of the lr."""
    decay = [p for n, p in model.named_parameters()
             if "bias" not in n and "LayerNorm" not in n and "layernorm" not in n]
    no_decay = [p for n, p in model.named_parameters()
                if "bias" in n or "LayerNorm" in n or "layernorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=1e-8, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
    return opt, sched


def bench_classify(args) -> None:
    from lmforge.training import Trainer

    mode, model, cfg, hf, batches, raw = build_classify(args)
    total = args.warmup + args.steps * args.repeats + 1
    trainer = Trainer(model, Prepared(mode), train_config(total, args.alloc))
    opt, sched = hf_optimizer(hf, total)

    def lm_train(batch, trainer=trainer):
        r = trainer.train_step([batch])
        trainer.step += 1
        return r.loss

    sides = {"lmforge": lm_train}

    def hf_train(batch):
        hf.train()
        loss = hf(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]

    @torch.no_grad()
    def lm_eval(batch):
        model.eval()
        return mode.logits(model, batch)

    @torch.no_grad()
    def hf_eval(batch):
        hf.eval()
        return hf(**batch).logits

    # sanity: same model, same batch -> same loss and logits (before any update)
    z_lm, z_hf = lm_eval(inputs[0]), hf_eval(inputs[0])
    logit_diff = float((z_lm - z_hf).abs().max())
    loss_lm, loss_hf = lm_train(batches[0]), hf_train(batches[0])
    for name, fn in list(sides.items())[1:]:
        say(f"first-step loss, {name}: {fn(batches[0]):.6f}")
    sides["transformers"] = hf_train
    ok = abs(loss_lm - loss_hf) <= TOL
    print(f"first-step loss, batch 0: lmforge {loss_lm:.6f}  transformers {loss_hf:.6f}  "
          f"|diff| {abs(loss_lm - loss_hf):.2e} ({'OK' if ok else 'MISMATCH'}, tolerance "
          f"{TOL:g}); eval logits max |diff| {logit_diff:.2e}")
    for i in range(1, args.warmup):
        b = batches[i % len(batches)]
        for fn in sides.values():
            fn(b)
        lm_eval(inputs[0]), hf_eval(inputs[0])

    if args.profile:
        profile_step(sides, batches[1])

    clock = Clock()
    alternate(sides, args.repeats, args.steps, clock, batches, "train ")
    last = {name: fn(batches[0]) for name, fn in sides.items()}
    alternate({"lmforge": lm_eval, "transformers": hf_eval}, args.repeats, args.steps,
              clock, inputs, "eval ")
    for b in raw:  # lmforge's prepare alone (tokenize + pad), one batch at a time
        clock.time("prepare lmforge", mode.prepare, b)

    tokens = statistics.mean(int(b["input_ids"].numel()) for b in batches)
    real = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    c = args.clock
    print(f"\nbatch {BATCH} rows, max_len {MAX_LEN}: {tokens:.0f} tokens per batch "
          f"({real:.0f} real), {len(batches)} distinct batches; rows/s by the "
          f"{'thread CPU-time' if c == 'cpu' else 'wall'} clock, median of "
          f"{args.steps * args.repeats}\n")
    print("| phase | side | ms / batch (CPU) | ms / batch (wall) | rows/s | vs transformers |")
    print("|---|---|---:|---:|---:|---:|")
    for phase in ("train", "eval"):
        base = clock.median(f"{phase} transformers", c)
        names = ["transformers"] + [n for n in sides if n != "transformers"]
        for side in names if phase == "train" else ("transformers", "lmforge"):
            key = f"{phase} {side}"
            t = clock.median(key, c)
            print(f"| {phase} | {side} | {1e3 * clock.median(key, 'cpu'):,.0f} | "
                  f"{1e3 * clock.median(key, 'wall'):,.0f} | {BATCH / t:,.1f} | "
                  f"{base / t:.2f}x |")
    key = "prepare lmforge"
    print(f"| prepare (tokenize + pad) | lmforge | {1e3 * clock.median(key, 'cpu'):,.1f} | "
          f"{1e3 * clock.median(key, 'wall'):,.1f} | {BATCH / clock.median(key, c):,.0f} | - |")
    print(f"\nloss on batch 0 after {trainer.step} updates: " + ", ".join(
        f"{name} {loss:.6f}" for name, loss in last.items()))


def profile_step(sides: dict, batch, top: int = 12) -> None:
    """The ops with the most self CPU time in one training step of each side."""
    from torch.profiler import ProfilerActivity, profile

    for name, fn in sides.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(batch)
        events = prof.key_averages()
        print(f"\n-- one training step, {name}: top {top} ops by self CPU time --")
        print(events.table(sort_by="self_cpu_time_total", row_limit=top))
        total = sum(e.self_cpu_time_total for e in events)
        for e in events:
            if e.key.startswith(("Optimizer.step", "Optimizer.zero_grad")):
                print(f"{e.key}: {e.cpu_time_total / 1e3:,.0f} ms of {total / 1e3:,.0f} ms")


# ---- part 2: chat SFT, packed vs padded ------------------------------------------------


def build_chat(args):
    from lmforge.finetune import FinetuneConfig
    from lmforge.models import build
    from lmforge.models.config import resolve_model_config
    from lmforge.tasks import get_task, load_task
    from lmforge.tasks.chat_tuning import ChatTuning
    from lmforge.tokenizer import Tokenizer

    task = get_task("chatterbot")
    rows = list(load_task("chatterbot", SEED)["train"])
    texts = [m["content"] for r in rows for m in r["messages"]]
    tok = Tokenizer.train(texts, 4096, special_tokens=["<|endoftext|>"], progress=False)
    mc = resolve_model_config({"preset": "gpt2", "n_layer": 4, "d_model": 256, "n_head": 4,
                               "max_seq_len": CHAT_LEN, "dropout": 0.0}, tok.vocab_size, tok)
    modes = {}
    for name, packing in (("padded", False), ("packed", True)):
        cfg = FinetuneConfig(task="chatterbot", mode="chat", max_len=CHAT_LEN,
                             options={"packing": packing})
        modes[name] = ChatTuning.from_config(cfg, task, tok, mc)  # 1st adds the chat tokens
    torch.manual_seed(SEED)
    model = modes["padded"].build_model(build(mc))
    models = {"padded": model, "packed": copy.deepcopy(model)}
    random.Random(SEED).shuffle(rows)
    raw = [rows[i * CHAT_BATCH:(i + 1) * CHAT_BATCH] for i in range(len(rows) // CHAT_BATCH)]
    say(f"chat: {tok.vocab_size} tokens (with the chat markers), {n_params(model):,} "
        f"parameters, {len(raw)} batches of {CHAT_BATCH} conversations")
    return modes, models, raw


def bench_chat(args) -> None:
    from lmforge.objectives.clm import IGNORE
    from lmforge.training import Trainer

    modes, models, raw = build_chat(args)
    total = args.warmup + args.chat_steps * args.repeats + 1
    trainers = {}
    for name in modes:
        cfg = train_config(total, args.alloc)
        cfg.seq_len, cfg.lr = CHAT_LEN, 1e-3
        trainers[name] = Trainer(models[name], modes[name], cfg)

    def stepper(name):
        def step(rows):
            r = trainers[name].train_step([rows])
            trainers[name].step += 1
            return r.loss
        return step

    sides = {name: stepper(name) for name in modes}
    first = {name: fn(raw[0]) for name, fn in sides.items()}
    ok = abs(first["padded"] - first["packed"]) <= TOL
    print(f"\nfirst-step loss, batch 0: padded {first['padded']:.6f}  packed "
          f"{first['packed']:.6f}  |diff| {abs(first['padded'] - first['packed']):.2e} "
          f"({'OK' if ok else 'MISMATCH'}, tolerance {TOL:g})")
    for i in range(1, args.warmup):
        for fn in sides.values():
            fn(raw[i % len(raw)])

    clock = Clock()
    alternate(sides, args.repeats, args.chat_steps, clock, raw, "")
    for name, mode in modes.items():
        for b in raw:
            clock.time(f"prepare {name}", mode.prepare, b)

    # per batch: assistant tokens (the targets), computed tokens, real tokens
    template = modes["padded"].template
    stats = {}
    for name, mode in modes.items():
        targets = computed = real = rows_ = 0
        for b in raw:
            batch = mode.prepare(b)
            targets += int((batch["targets"] != IGNORE).sum())
            computed += int(batch["input_ids"].numel())
            rows_ += int(batch["input_ids"].shape[0])
            real += sum(min(len(template.encode(r["messages"])["input_ids"]), CHAT_LEN)
                        for r in b)
        stats[name] = (targets / len(raw), computed / len(raw), real / len(raw),
                       rows_ / len(raw))
    c = args.clock
    print(f"\nbatch {CHAT_BATCH} conversations, max_len {CHAT_LEN}, {len(raw)} distinct "
          f"batches; rates by the {'thread CPU-time' if c == 'cpu' else 'wall'} clock, "
          f"median of {args.chat_steps * args.repeats} steps\n")
    print("| packing | rows x width (mean) | computed tokens per real token | ms / step "
          "(CPU) | ms / step (wall) | of which prepare (CPU) | assistant tokens/s "
          "| vs padded |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rate = {}
    for name in ("padded", "packed"):
        targets, computed, real, nrows = stats[name]
        rate[name] = targets / clock.median(name, c)
        print(f"| {'off' if name == 'padded' else 'on'} ({name}) | "
              f"{nrows:.1f} x {computed / nrows:.0f} | {computed / real:.2f} | "
              f"{1e3 * clock.median(name, 'cpu'):,.0f} | {1e3 * clock.median(name, 'wall'):,.0f}"
              f" | {1e3 * clock.median(f'prepare {name}', 'cpu'):.1f} | "
              f"{rate[name]:,.0f} | {rate[name] / rate['padded']:.2f}x |")
    print(f"\nassistant tokens per batch: {stats['padded'][0]:.0f}; real tokens per batch: "
          f"{stats['padded'][2]:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "classify", "chat"), default="all")
    ap.add_argument("--steps", type=int, default=1,
                    help="classify: steps of one side in a row per round")
    ap.add_argument("--chat-steps", type=int, default=4,
                    help="chat: steps of one side in a row per round")
    ap.add_argument("--repeats", type=int, default=8, help="rounds of alternation")
    ap.add_argument("--warmup", type=int, default=2, help="steps of each side first")
    ap.add_argument("--batches", type=int, default=8,
                    help="classify: distinct batches, cycled")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="rates and ratios by thread CPU time (needs --threads 1) or wall")
    ap.add_argument("--alloc", action="store_true",
                    help="cache large allocations (lmforge's train.malloc_cache) for the "
                         "whole process, so for both sides")
    ap.add_argument("--profile", action="store_true",
                    help="classify: print the top ops of one training step of each side")
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu times the main thread only: use --threads 1")
    torch.set_num_threads(args.threads)
    if args.alloc:
        from lmforge.training.trainer import cache_large_allocations

        cache_large_allocations()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} thread(s), {platform.machine()}, {os.cpu_count()} CPUs; "
          f"allocator cache {'on' if args.alloc else 'off'}; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    t0 = time.perf_counter()
    if args.part in ("all", "classify"):
        print("\n## sequence classification: all-MiniLM-L6-v2 on rotten-tomatoes\n")
        bench_classify(args)
    if args.part in ("all", "chat"):
        print("\n## chat SFT: gpt2-family 4L/256 on chatterbot, packing off vs on\n")
        bench_chat(args)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
