"""The single-process training step before and after a change, side by side: does the
engine (DDP / FSDP support, keep-best, ...) cost anything when no process group exists?

    python bench/engine_overhead.py --rev 714f1e0          # that commit vs the work tree

Each side runs in its own fresh process (PYTHONPATH = a `git archive` of --rev, or this
tree), alternating, ROUNDS times: a small GPT (4 x 256, vocab 4096, context 256, batch 16)
takes WARMUP + STEPS steps of `Trainer.train_step` on one thread; the time of a step is
CPU time of that thread (time.thread_time: what machine load does not inflate) and wall
time. Prints medians and the ratio after / before.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from lmforge.models import build, presets
from lmforge.objectives import CausalLM
from lmforge.training import TrainConfig, Trainer
torch.manual_seed(0)
model = build(presets.get("gpt2", n_layer=4, d_model=256, n_head=4, vocab_size=4096,
                          max_seq_len=256, dropout=0.0))
cfg = TrainConfig(batch_size=16, seq_len=256, warmup_steps=0, schedule="constant",
                  device="cpu", threads=1, progress=False, tensorboard=False)
trainer = Trainer(model, CausalLM(), cfg)
raw = torch.randint(0, 4096, (16, 257), generator=torch.Generator().manual_seed(0))
warmup, steps = int(sys.argv[1]), int(sys.argv[2])
for _ in range(warmup):
    trainer.train_step([raw])
cpu, wall, losses = [], [], []
for _ in range(steps):
    c, w = time.thread_time(), time.perf_counter()
    losses.append(trainer.train_step([raw]).loss)
    cpu.append(time.thread_time() - c)
    wall.append(time.perf_counter() - w)
print(json.dumps({"cpu": cpu, "wall": wall, "loss": losses[-1]}))
"""


def run(path: Path, warmup: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(warmup), str(steps)], env=env,
                         cwd=path, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="the commit to compare with (before)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", args.rev], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(before, filter="data")
        so = next((ROOT / "lmforge").glob("_bpe*.so"), None)  # the built C core, if any
        if so is not None:
            (before / "lmforge" / so.name).write_bytes(so.read_bytes())
        sides = {"before": before, "after": ROOT}
        times = {k: {"cpu": [], "wall": []} for k in sides}
        loss = {}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # alternate
            for name in order:
                res = run(sides[name], args.warmup, args.steps)
                times[name]["cpu"] += res["cpu"]
                times[name]["wall"] += res["wall"]
                loss[name] = res["loss"]
    print("| side | ms / step (CPU time, median) | ms / step (wall, median) | last loss |")
    print("|---|---:|---:|---:|")
    for name in sides:
        c = 1000 * statistics.median(times[name]["cpu"])
        w = 1000 * statistics.median(times[name]["wall"])
        print(f"| {name} ({args.rev if name == 'before' else 'work tree'}) | {c:.1f} | "
              f"{w:.1f} | {loss[name]:.6f} |")
    ratio = statistics.median(times["after"]["cpu"]) / statistics.median(times["before"]["cpu"])
    print(f"after / before (CPU time): {ratio:.3f}; same loss: {loss['before'] == loss['after']}")


if __name__ == "__main__":
    main()
