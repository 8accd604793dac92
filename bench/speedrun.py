"""The decoder speedrun: how much sooner does the modern recipe reach the baseline's quality?

    python bench/speedrun.py                       # 3 seeds, 2 threads, both recipes
    python bench/speedrun.py --seeds 1 --threads 1 --clock cpu
    python bench/speedrun.py --threads 1 --clock cpu --jobs 2   # two runs at a time

For each seed, configs/speedrun/baseline.yaml (the GPT-2 recipe as nanoGPT trains it) runs
to its fixed token budget; its final val loss is L*. configs/speedrun/modern.yaml runs to
its own budget, evaluating on the same val windows every few steps; its time to quality is
the training time at its first eval with val loss <= L*. Reported per seed and as medians
over seeds: time(modern) / time(baseline) and tokens(modern) / tokens(baseline).

Like with like: both recipes run in this one script, as fresh processes with the same
thread count, the same allocator and the same val windows; the order alternates between
seeds (the modern run needs no L* while it runs: the crossing is read from its evals
afterwards). "Time" is the trainer's time inside train steps (tokenizer training,
sharding and evals excluded): wall clock by default, or --clock cpu for the process's CPU
seconds (what load from other processes inflates least; with 1 thread, CPU ~ wall on an
idle machine). Writes RUN_DIR/speedrun.json and RUN_DIR/speedrun.png (val loss vs time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: Path, run_dir: Path, seed: int, threads: int) -> list[dict]:
    """Train `config` with `seed` into a fresh `run_dir`; its metrics.jsonl records."""
    if not (run_dir / "metrics.jsonl").exists() or not _finished(run_dir):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "lmforge", "pretrain", str(config), f"seed={seed}",
               f"run_dir={run_dir}", f"train.threads={threads}", "train.progress=false"]
        resume = ["--resume"] if (run_dir / "checkpoints").exists() else []
        print("  $", " ".join(cmd[1:] + resume), flush=True)
        subprocess.run(cmd + resume, env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _finished(run_dir: Path) -> bool:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return any(json.loads(line).get("event") == "summary" for line in lines)


def curve(records: list[dict], clock: str) -> list[tuple[int, int, float, float]]:
    """(step, tokens, time, val loss) at every eval; time and tokens from the train record
    of the same step (log_every must divide eval_every)."""
    key = "cpu_time_s" if clock == "cpu" else "time_s"
    train = {r["step"]: r for r in records if r.get("event") == "train"}
    points = []
    for r in records:
        if r.get("event") == "eval":
            if r["step"] not in train:
                raise SystemExit(f"no train record at eval step {r['step']}: set "
                                 "train.log_every to a divisor of train.eval_every")
            t = train[r["step"]]
            points.append((r["step"], t["tokens"], t[key], r["val_loss"]))
    return points


def crossing(points, target: float):
    """The first eval at or below `target`, or None."""
    return next((p for p in points if p[3] <= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, default=ROOT / "configs/speedrun/baseline.yaml")
    ap.add_argument("--modern", type=Path, default=ROOT / "configs/speedrun/modern.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once (> 1 only with --clock cpu and threads x jobs <= cores)")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs/speedrun")
    args = ap.parse_args()

    seeds = list(range(1337, 1337 + args.seeds))
    jobs = []  # (seed, name, config), the order alternating between seeds
    for i, seed in enumerate(seeds):
        sides = [("baseline", args.baseline), ("modern", args.modern)]
        jobs += [(seed, name, config) for name, config in (sides if i % 2 == 0 else sides[::-1])]
    with ThreadPoolExecutor(args.jobs) as pool:  # each job is its own process
        done = pool.map(lambda j: run(j[2], args.run_dir / f"{j[1]}-{j[0]}", j[0],
                                      args.threads), jobs)
        records = {(seed, name): recs for (seed, name, _), recs in zip(jobs, done)}
    rows = []
    for seed in seeds:
        curves = {name: curve(records[seed, name], args.clock)
                  for name in ("baseline", "modern")}
        base, modern = curves["baseline"], curves["modern"]
        _, base_tokens, base_time, target = base[-1]
        hit = crossing(modern, target)
        row = {"seed": seed, "target_val_loss": target, "baseline_time_s": base_time,
               "baseline_tokens": base_tokens, "baseline_steps": base[-1][0],
               "modern_final_val_loss": modern[-1][3], "curves": curves}
        if hit:
            row.update(modern_step=hit[0], modern_tokens=hit[1], modern_time_s=hit[2],
                       time_ratio=hit[2] / base_time, token_ratio=hit[1] / base_tokens)
        rows.append(row)
        print(_line(row), flush=True)

    hits = [r for r in rows if "time_ratio" in r]
    summary = {"clock": args.clock, "threads": args.threads, "seeds": len(rows),
               "crossed": len(hits), "rows": rows}
    if len(hits) == len(rows):
        summary["median_time_ratio"] = statistics.median(r["time_ratio"] for r in rows)
        summary["median_token_ratio"] = statistics.median(r["token_ratio"] for r in rows)
    print()
    print(f"| seed | baseline L* | baseline time ({args.clock}) | modern time to L* "
          "| time ratio | token ratio | modern final val |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['target_val_loss']:.3f} | {r['baseline_time_s']:.0f} s "
              + (f"| {r['modern_time_s']:.0f} s (step {r['modern_step']}) "
                 f"| {r['time_ratio']:.3f} | {r['token_ratio']:.3f} " if "time_ratio" in r
                 else "| not reached | - | - ")
              + f"| {r['modern_final_val_loss']:.3f} |")
    if "median_time_ratio" in summary:
        print(f"\nmedian time ratio {summary['median_time_ratio']:.3f}, median token ratio "
              f"{summary['median_token_ratio']:.3f} ({len(rows)} seeds, {args.threads} "
              f"threads, {args.clock} clock)")
    else:
        print(f"\nmodern reached L* in {len(hits)} of {len(rows)} seeds")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "speedrun.json").write_text(json.dumps(summary, indent=1))
    plot(rows, args.run_dir / "speedrun.png", args.clock)


def _line(row: dict) -> str:
    if "time_ratio" not in row:
        return f"  L* {row['target_val_loss']:.3f}: modern did not reach it"
    return (f"  L* {row['target_val_loss']:.3f} at {row['baseline_time_s']:.0f} s; modern "
            f"at step {row['modern_step']}, {row['modern_time_s']:.0f} s: time ratio "
            f"{row['time_ratio']:.3f}, token ratio {row['token_ratio']:.3f}")


def plot(rows: list[dict], path: Path, clock: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in (("baseline", "tab:gray"), ("modern", "tab:blue")):
        for i, r in enumerate(rows):
            pts = r["curves"][name]
            ax.plot([p[2] for p in pts], [p[3] for p in pts], color=color, alpha=0.8,
                    marker=".", label=f"{name}" if i == 0 else None)
    target = statistics.median(r["target_val_loss"] for r in rows)
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"baseline final (L*) {target:.3f}")
    ax.set_xlabel(f"training time, s ({clock} clock)")
    ax.set_ylabel("val loss")
    ax.set_title("Speedrun on Shakespeare: val loss vs time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
