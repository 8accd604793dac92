"""Parameter-efficient fine-tuning against full fine-tuning, and lmforge's LoRA against
`peft`'s: one table from one command.

    .venv/bin/python bench/peft.py                  # everything (~20 min on 1 thread)
    .venv/bin/python bench/peft.py --part minilm    # one part: minilm | gpt | gen | peer
    .venv/bin/python bench/peft.py --train 200 --eval 100 --epochs 1   # a quick look

Part 1-3, each method (full, lora, adapters, prompt, prefix, ptuning) as
`lmforge finetune RECIPE peft.method=...` in a fresh subprocess (so peak memory is the
run's own: ru_maxrss, the process's resident-set high-water mark, includes Python, torch
and the task's data), one thread (train.threads=1):

1. MiniLM (`configs/finetune/rotten-tomatoes-minilm.yaml`: the real all-MiniLM-L6-v2
   weights) on rotten-tomatoes;
2. the GPT of `make run` (configs/gpt-shakespeare.yaml, 4 layers x 256; pretrained here
   for --gpt-steps steps into WORK/gpt-shakespeare if that run dir does not exist) on
   rotten-tomatoes (pooling: the last token);
3. the same GPT on debian-summaries (mode verbalizer: description -> synopsis, greedy
   generation, ROUGE-L), full vs LoRA.

Rows: the first --train shuffled train rows, the first --eval val / test rows, --epochs
epochs, the best epoch's test metric. ms / step = the engine's train time / steps (no
eval). Learning rates: PEFT methods train few parameters, starting from zero, and need a
larger lr than full fine-tuning, the more so in this short budget (64 steps): full 1e-4
on MiniLM (the recipe's) and 5e-4 on the GPT body (docs/results.md's for it), LoRA 5e-3
(1e-3 gave 0.608 on part 1, 18 points under full), adapters 3e-3, P-tuning and prefix
1e-2, prompt tuning 0.3 (Lester et al.'s; 3e-2 gave the majority class, 0.610, on part
1; not tuned further). LoRA r=8, alpha=16, q and v; adapters
m=64; 20 virtual tokens. A finished run is reused when the
same command runs again (WORK/NAME-METHOD.json holds its spec and result).

Part 4 (peer): `transformers.BertForSequenceClassification` on the same MiniLM weights
+ `peft` LoRA (r=8, alpha=16, query/value, classifier in modules_to_save) against
lmforge's LoRA on the same weights, A matrices and head (the two are the same function:
the first loss agrees), the same batches, the same loop (forward, loss, backward,
clip 1.0, torch AdamW fused, lr 1e-3) and one thread. Each side runs in its own fresh
process (peak RSS), in the order lmforge, peft, peft, lmforge; ms / step is the median
of the CPU time of the compute thread over --peer-steps steps after 3 warm-up steps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# this file is bench/peft.py: without its folder on sys.path, `import peft` is the library
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
LR = {"full": 1e-4, "lora": 5e-3, "adapters": 3e-3, "prompt": 0.3, "prefix": 1e-2,
      "ptuning": 1e-2}
PEFT = {"lora": ["peft.r=8", "peft.alpha=16", "peft.targets=[q,v]"],
        "adapters": ["peft.bottleneck=64"], "prompt": ["peft.num_virtual_tokens=20"],
        "prefix": ["peft.num_virtual_tokens=20"], "ptuning": ["peft.num_virtual_tokens=20"]}
METHODS = list(LR)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- one fine-tuning run, in its own process ------------------------------------------

def child_run(spec: dict) -> dict:
    from lmforge.config import load_config
    from lmforge.finetune import FinetuneConfig, finetune

    cfg = load_config(spec["recipe"], FinetuneConfig, spec["overrides"])
    summary = finetune(cfg)
    return {"test": summary["test"], "main_metric": summary["main_metric"],
            "steps": summary["step"], "train_time_s": summary["train_time_s"],
            "trainable": summary["trainable_params"], "total": summary["total_params"],
            "adapter_bytes": summary.get("peft", {}).get("adapter_bytes"),
            "peak_rss_mb": peak_rss_mb()}


def spawn(arg: str, payload) -> dict:
    out = subprocess.run([sys.executable, __file__, arg, json.dumps(payload)], cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"{arg} {payload} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def lr_of(name: str, method: str) -> float:
    """The GPT body fine-tunes in full at 5e-4 (docs/results.md's lr for these bodies)."""
    return 5e-4 if method == "full" and name != "minilm" else LR[method]


def run_method(args, name: str, recipe: str, method: str, extra: list[str]) -> dict:
    run_dir = Path(args.work) / f"{name}-{method}"
    overrides = [f"run_dir={run_dir}", f"max_train_examples={args.train}",
                 f"max_eval_examples={args.eval}", f"epochs={args.epochs}", "patience=0",
                 f"train.lr={lr_of(name, method)}", "train.threads=1", "train.progress=false",
                 "train.tensorboard=false", *extra]
    if method != "full":
        overrides += [f"peft.method={method}", *PEFT[method]]
    spec = {"recipe": recipe, "overrides": overrides}
    done = Path(args.work) / f"{name}-{method}.json"  # this exact run, finished earlier
    if done.is_file() and json.loads(done.read_text())["spec"] == spec:
        r = json.loads(done.read_text())["result"]
        say(f"  {name} {method}: reused {done}")
        return r
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    t = time.perf_counter()
    r = spawn("--run", spec)
    r["wall_s"] = time.perf_counter() - t
    r["lr"] = lr_of(name, method)
    done.write_text(json.dumps({"spec": spec, "result": r}))
    say(f"  {name} {method}: {r['test']} in {r['wall_s']:.0f} s, "
        f"peak RSS {r['peak_rss_mb']:.0f} MB")
    return r


def gpt_body(args) -> str:
    """The `make run` GPT (configs/gpt-shakespeare.yaml), pretrained for --gpt-steps."""
    run_dir = Path(args.gpt) if args.gpt else Path(args.work) / "gpt-shakespeare"
    if not (run_dir / "checkpoints").is_dir():
        say(f"pretraining {run_dir} (configs/gpt-shakespeare.yaml, "
            f"{args.gpt_steps} steps, 1 thread)")
        subprocess.run([sys.executable, "-m", "lmforge", "pretrain",
                        "configs/gpt-shakespeare.yaml", f"run_dir={run_dir}",
                        f"train.max_steps={args.gpt_steps}", "train.threads=1",
                        "train.progress=false", "train.eval_every=0",
                        f"train.save_every={args.gpt_steps}", "train.tensorboard=false",
                        "train.warmup_steps=10"], cwd=REPO, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return str(run_dir)


# ---- the peer: lmforge LoRA vs peft LoRA on the same MiniLM ------------------------------

def child_peer(spec: dict) -> dict:
    import random

    import torch

    torch.set_num_threads(1)
    from lmforge.bodies import builtin_weights
    from lmforge.config import load_config
    from lmforge.finetune import FinetuneConfig, build_model, setup

    cfg = load_config("configs/finetune/rotten-tomatoes-minilm.yaml", FinetuneConfig,
                      ["model.dropout=0.0", "options.classifier_dropout=0.0",
                       "peft.method=lora", "peft.r=8", "peft.alpha=16", "peft.targets=[q,v]"])
    s = setup(cfg)
    model = build_model(s, cfg.seed)
    rows = list(s.splits["train"])
    random.Random(cfg.seed).shuffle(rows)
    batches = [s.mode.prepare(rows[i * 32:(i + 1) * 32]) for i in range(8)]
    if spec["side"] == "peft":
        import peft
        from transformers import BertForSequenceClassification

        hf = BertForSequenceClassification.from_pretrained(
            str(builtin_weights("minilm")), num_labels=2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, classifier_dropout=0.0, local_files_only=True)
        hf = peft.get_peft_model(hf, peft.LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0,
            target_modules=["query", "value"]))
        with torch.no_grad():  # lmforge's A (B is 0 on both) and head: the same function
            for name, p in hf.named_parameters():
                if "lora_A" in name:
                    i = int(name.split("layer.")[1].split(".")[0])
                    which = "q" if ".query." in name else "v"
                    p.copy_(model.get_parameter(f"backbone.blocks.{i}.attn.qkv.lora.{which}.A"))
                elif "classifier.modules_to_save" in name:
                    p.copy_(model.get_parameter("head.out." + name.rsplit(".", 1)[1]))
        del model
        net = hf

        def loss_of(b):
            return net(**b).loss
    else:
        net = model

        def loss_of(b):
            total, n = s.mode.loss(model, b)  # summed over the batch's rows
            return total / n
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
    net.train()
    losses, times = [], []
    for i in range(3 + spec["steps"]):
        c = time.thread_time()
        loss = loss_of(batches[i % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.thread_time() - c)
        losses.append(float(loss.detach()))
    return {"ms": 1e3 * statistics.median(times[3:]), "first_loss": losses[0],
            "last_loss": losses[-1], "trainable": sum(p.numel() for p in params),
            "peak_rss_mb": peak_rss_mb()}


def bench_peer(args) -> None:
    res: dict[str, list[dict]] = {"lmforge": [], "peft": []}
    for side in ("lmforge", "peft", "peft", "lmforge"):
        res[side].append(spawn("--peer", {"side": side, "steps": args.peer_steps}))
        say(f"  peer {side}: {res[side][-1]}")
    a, b = res["lmforge"][0], res["peft"][0]
    ok = abs(a["first_loss"] - b["first_loss"]) <= 1e-4
    print(f"\n### lmforge LoRA vs peft LoRA (MiniLM, batch 32 x max_len 64, r=8, alpha=16, "
          f"q/v, 1 thread, {args.peer_steps} steps, 2 processes per side)\n")
    print(f"first-step loss: lmforge {a['first_loss']:.6f}, peft {b['first_loss']:.6f} "
          f"({'equal to 1e-4' if ok else 'MISMATCH'}); after {args.peer_steps + 3} steps: "
          f"lmforge {a['last_loss']:.6f}, peft {b['last_loss']:.6f}\n")
    print("| side | trainable | ms / step (CPU, median) | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for side, rs in res.items():
        print(f"| {side} | {rs[0]['trainable']:,} | "
              f"{statistics.median(r['ms'] for r in rs):,.0f} | "
              f"{statistics.median(r['peak_rss_mb'] for r in rs):,.0f} |")


# ---- the table -----------------------------------------------------------------------

def table(title: str, rows: dict[str, dict], metric: str) -> None:
    full = rows.get("full")
    print(f"\n### {title}\n")
    print(f"| method | lr | trainable | adapter file | peak RSS MB | ms / step | "
          f"test {metric} | vs full |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, r in rows.items():
        m = r["test"][metric]
        size = "-" if r["adapter_bytes"] is None else f"{r['adapter_bytes'] / 1024:,.0f} KiB"
        vs = "-" if full is None or method == "full" else \
            f"{100 * (m - full['test'][metric]):+.1f} pts"
        ms = 1e3 * r["train_time_s"] / max(r["steps"], 1)
        print(f"| {method} | {r.get('lr', LR[method]):g} | {r['trainable']:,} "
              f"({100 * r['trainable'] / r['total']:.2f}%) | {size} | "
              f"{r['peak_rss_mb']:,.0f} | {ms:,.0f} | {m:.4f} | {vs} |")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--run", "--peer"):
        spec = json.loads(sys.argv[2])
        print(json.dumps(child_run(spec) if sys.argv[1] == "--run" else child_peer(spec)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=["all", "minilm", "gpt", "gen", "peer"])
    p.add_argument("--work", default="/tmp/lmforge-bench-peft")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--gen-eval", type=int, default=100)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--gpt", default=None, help="a pretrained GPT run dir (default: pretrain)")
    p.add_argument("--gpt-steps", type=int, default=120)
    p.add_argument("--peer-steps", type=int, default=20)
    args = p.parse_args()
    methods = args.methods.split(",")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"bench/peft.py {' '.join(sys.argv[1:])} -- {datetime.date.today()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start; {args.train} train rows, "
          f"{args.epochs} epochs, test on the first {args.eval} rows, 1 thread")
    if args.part in ("all", "minilm"):
        rows = {m: run_method(args, "minilm", "configs/finetune/rotten-tomatoes-minilm.yaml",
                              m, []) for m in methods}
        table("MiniLM-L6 (all-MiniLM-L6-v2) on rotten-tomatoes", rows, "accuracy")
    if args.part in ("all", "gpt", "gen"):
        gpt = gpt_body(args)
    if args.part in ("all", "gpt"):
        rows = {m: run_method(args, "gpt", "configs/finetune/rotten-tomatoes-gpt2.yaml", m,
                              [f"init_from={gpt}", "max_len=64"]) for m in methods}
        table(f"GPT (configs/gpt-shakespeare.yaml, {args.gpt_steps} steps) on "
              "rotten-tomatoes", rows, "accuracy")
    if args.part in ("all", "gen"):
        rows = {m: run_method(args, "gen", "configs/finetune/debian-summaries-gpt2.yaml", m,
                              [f"init_from={gpt}", f"max_eval_examples={args.gen_eval}"])
                for m in ("full", "lora")}
        table("GPT on debian-summaries (verbalizer, greedy generation)", rows, "rougeL")
    if args.part in ("all", "peer"):
        bench_peer(args)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, load average "
          f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
