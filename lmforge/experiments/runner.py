"""`lmforge experiment NAME [scale=S] [seeds=N] ...`: an experiment's runs, resumed
where they stopped, then its table and plots (tables.py).

Every run is an ordinary lmforge run dir, OUT/<run>-s<seed> (OUT = runs/experiments/NAME):

    1. pretraining runs (`lmforge pretrain RECIPE overrides`), `pretrain_seeds` each; under
       a FLOPs `budget` their max_steps come from lmforge's FLOPs accounting:
           max_steps = budget / (F * tokens per step),  F = the objective's train FLOPs
           per input token (flops.py; ELECTRA's generator included)
    2. fine-tuning runs (`lmforge finetune RECIPE overrides`), one per row, task and seed,
       from the row's pretrained body (init_from the run dir) or the same architecture
       from random init (its resolved model config and tokenizer, no weights)
    3. OUT/report.md (+ the PNG plots, OUT/results.json)

Resume: the config a run is started with is written first to OUT/configs/<run>.yaml. On
the next call a run whose config is unchanged and that finished (fine-tuning: its
results.json; pretraining: a summary at max_steps and its final checkpoint intact) is
not redone; one that was killed continues from its latest checkpoint; one whose config
changed (a retuned recipe, another scale) is started again from scratch.

Runs share what is the same for all of them: one tokenizer per tokenizer recipe and
corpus, and token shards per (tokenizer, corpus, seed), under OUT/shared/.

`jobs=N` (N > 1) runs N at a time, each as `lmforge pretrain|finetune OUT/configs/<run>.yaml`
in its own process with the cores shared out (OMP_NUM_THREADS = cores // N unless set),
its output in OUT/logs/<run>.log: every pretraining run first (shards written ahead, by
this process), then every fine-tuning run. The numbers are the same runs' numbers; times
per step are then of runs that shared the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..config import apply_overrides, dump_yaml, from_dict, read_yaml, to_dict
from ..errors import LmforgeError
from .spec import TASK_RECIPES, PretrainRun, Row, Spec

RECORD = "experiment.json"  # OUT/<run>/experiment.json: what the runner measured around a run
QUIET = ["train.progress=false", "train.tensorboard=false"]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_experiment(spec: Spec) -> dict:
    """Every run of `spec` (finished ones read back), then the report; returns the
    results (rows of numbers) that tables.py renders."""
    from .tables import write_report

    out = spec.out
    (out / "configs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pool = Pool(spec) if spec.jobs > 1 else None
    # each *_run starts (or runs) its run and returns how to read its numbers afterwards
    started_runs = [((p.name, seed), pretrain_run(spec, p, seed, pool))
                    for seed in range(spec.pretrain_seeds) for p in spec.pretrain]
    if pool is not None:
        pool.wait()
    bodies = {key: result() for key, result in started_runs}
    started_runs = []
    for seed in range(spec.seeds):
        for row in spec.rows:
            body = bodies.get((row.body, seed % spec.pretrain_seeds)) if row.body else None
            for task in row.tasks:
                started_runs.append(finetune_run(spec, row, task, seed, body, pool))
    if pool is not None:
        pool.wait()
    finetuned = [result() for result in started_runs]
    results = {"experiment": spec.name, "scale": spec.scale, "claim": spec.claim,
               "seeds": spec.seeds, "pretrain_seeds": spec.pretrain_seeds,
               "budget": budget_flops(spec), "table": spec.table,
               "pretrain": list(bodies.values()), "finetune": finetuned,
               "wall_s": time.perf_counter() - started}
    write_report(spec, results)
    return results


# ---- pretraining ----------------------------------------------------------------------

def pretrain_config(spec: Spec, p: PretrainRun, seed: int):
    """The RunConfig of pretraining run `p` with `seed`: the recipe, the experiment's
    and the scale's overrides, the shared tokenizer and shards, max_steps from the budget."""
    from ..recipes import resolve
    from ..training.config import RunConfig

    run_dir = spec.out / f"{p.name}-s{seed}"
    data = apply_overrides(read_yaml(resolve(p.recipe)), [
        *p.overrides, *spec.pretrain_overrides, *QUIET, f"run_dir={run_dir}", f"seed={seed}",
        "sample.prompt="])
    cfg = from_dict(RunConfig, data)
    tok = shared_tokenizer(spec, cfg)
    shards = spec.out / "shared" / f"shards-{_key(str(tok), cfg.data)}-s{seed}"
    cfg = dataclasses.replace(
        cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=str(tok)),
        data=dataclasses.replace(cfg.data, shards=str(shards)))
    budget = budget_flops(spec)
    if budget is not None:
        steps = steps_for_budget(cfg, budget * p.fraction)
    else:
        steps = max(1, round(cfg.train.max_steps * p.steps))
    return dataclasses.replace(cfg, train=_with_steps(cfg.train, steps))


def steps_for_budget(cfg, budget: float) -> int:
    """Optimizer steps that spend `budget` train FLOPs: budget / (F x tokens per step)."""
    fpt, _ = flops_and_params(cfg)
    return max(1, round(budget / (fpt * tokens_per_step(cfg))))


def _with_steps(train, steps: int):
    """`train` with max_steps = steps; warmup, eval and save cadence scaled with it."""
    old = train.max_steps
    return dataclasses.replace(
        train, max_steps=steps,
        warmup_steps=min(round(train.warmup_steps * steps / old), max(steps - 1, 0)),
        eval_every=0, save_every=max(1, min(train.save_every or steps, steps)))


def tokens_per_step(cfg) -> int:
    """Input tokens per optimizer step (what the trainer counts: input_ids per batch)."""
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.train.seq_len


def flops_and_params(cfg) -> tuple[float, int]:
    """(train FLOPs per input token, parameters of the run's model) of a pretraining
    config, from its objective's accounting on a model built on the meta device."""
    import torch

    from ..models.config import resolve_model_config
    from ..objectives import build as build_objective
    from ..tokenizer import Tokenizer

    tok = Tokenizer.load(cfg.tokenizer.path)
    model_cfg = resolve_model_config(cfg.model, tok.vocab_size, tok)
    objective = build_objective(cfg.objective, tokenizer=tok, model_config=model_cfg,
                                seed=cfg.seed)
    with torch.device("meta"):
        model = objective.build_model(model_cfg)
    fpt = objective.flops_per_token(model, cfg.train.seq_len)
    params = sum(p.numel() for p in objective.export(model).parameters())
    return fpt, params


def non_embedding_params(cfg) -> int:
    """Parameters of the run's model outside its embedding tables (token, position,
    type): Kaplan et al.'s N, which the scaling law is fitted against."""
    import torch
    from torch import nn

    from ..models.config import resolve_model_config
    from ..objectives import build as build_objective
    from ..tokenizer import Tokenizer

    tok = Tokenizer.load(cfg.tokenizer.path)
    model_cfg = resolve_model_config(cfg.model, tok.vocab_size, tok)
    objective = build_objective(cfg.objective, tokenizer=tok, model_config=model_cfg,
                                seed=cfg.seed)
    with torch.device("meta"):
        model = objective.export(objective.build_model(model_cfg))
    tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
              for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in tables)


def budget_flops(spec: Spec) -> float | None:
    """The experiment's train FLOPs per pretraining run: a number, or the FLOPs of the
    named pretraining run's recipe as it stands (its max_steps)."""
    if spec.budget is None or isinstance(spec.budget, (int, float)):
        return spec.budget
    p = next(p for p in spec.pretrain if p.base == spec.budget)
    ref = dataclasses.replace(spec, budget=None)
    cfg = pretrain_config(ref, dataclasses.replace(p, steps=1.0), 0)
    fpt, _ = flops_and_params(cfg)
    return fpt * tokens_per_step(cfg) * cfg.train.max_steps


def shared_tokenizer(spec: Spec, cfg) -> Path:
    """OUT/shared/tokenizer-<key>.json: trained once for every run with this tokenizer
    recipe and corpus (the recipe's own tokenizer.path, when it has one)."""
    from ..atomic import atomic_path
    from ..pretrain import read_docs, train_tokenizer

    if cfg.tokenizer.path:
        return Path(cfg.tokenizer.path)
    d, t = cfg.data, cfg.tokenizer
    path = spec.out / "shared" / f"tokenizer-{_key(d.corpus, d.text_field, d.max_chars, t)}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tok = train_tokenizer(cfg, read_docs(cfg))
        with atomic_path(path) as tmp:
            tok.save(tmp)
    return path


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(to_dict(list(parts)), sort_keys=True,
                                     default=str).encode()).hexdigest()[:10]


def pretrain_run(spec: Spec, p: PretrainRun, seed: int, pool: Pool | None = None):
    """Run (or resume, or skip if finished) pretraining run `p` with `seed` -- in the
    `pool` when there is one -- and return a function that reads its numbers."""
    from ..pretrain import ensure_shards, pretrain

    cfg = pretrain_config(spec, p, seed)
    run_dir = Path(cfg.run_dir)
    name = run_dir.name
    fpt, params = flops_and_params(cfg)
    state = prepare_run_dir(spec, name, to_dict(cfg),
                            lambda: pretrain_finished(run_dir, cfg.train.max_steps))
    if state != "done":
        say(f"[{spec.name}] pretraining {name}: {cfg.train.max_steps} steps "
            f"({state}), {fpt * tokens_per_step(cfg) * cfg.train.max_steps:.3g} FLOPs")
        if pool is not None:
            ensure_shards(cfg)  # runs side by side must not write shared shards at once
            pool.start(name, "pretrain", state == "resume")
        else:
            t0 = time.perf_counter()
            pretrain(cfg, resume=state == "resume")
            _write_record(run_dir, {"wall_s": time.perf_counter() - t0})
    else:
        say(f"[{spec.name}] {name}: finished earlier, not redone")
    return lambda: pretrain_numbers(p, seed, cfg, fpt, params)


def pretrain_numbers(p: PretrainRun, seed: int, cfg, fpt: float, params: int) -> dict:
    from ..training.logs import read_metrics

    run_dir = Path(cfg.run_dir)
    name = run_dir.name
    summary = [r for r in read_metrics(run_dir / "metrics.jsonl")
               if r.get("event") == "summary"][-1]
    return {"run": name, "name": p.name, "base": p.base, "fraction": p.fraction,
            "seed": seed, "params": params, "flops_per_token": fpt,
            "non_embedding_params": non_embedding_params(cfg),
            "steps": summary["step"], "tokens": summary["tokens"],
            "train_flops": summary["train_flops"], "run_dir": str(run_dir),
            "train_time_s": summary.get("train_time_s"),
            **{k: v for k, v in summary.items() if k.startswith("val_")},
            "wall_s": _read_record(run_dir).get("wall_s")}


def pretrain_finished(run_dir: Path, max_steps: int) -> bool:
    from ..training.checkpoint import latest_checkpoint
    from ..training.logs import read_metrics

    done = any(r.get("event") == "summary" and r.get("step") == max_steps
               for r in read_metrics(run_dir / "metrics.jsonl"))
    latest = latest_checkpoint(run_dir / "checkpoints") if done else None
    return latest is not None and latest.name == f"step-{max_steps}"


# ---- fine-tuning ----------------------------------------------------------------------

def finetune_config(spec: Spec, row: Row, task: str, seed: int, body: dict | None):
    """The FinetuneConfig of `row` on `task` with `seed`: the task's recipe for the body's
    architecture, the overrides, and the body (pretrained run dir or random init)."""
    from ..finetune import FinetuneConfig
    from ..recipes import resolve

    run_dir = spec.out / f"ft-{_slug(row.name)}-{task}-s{seed}"
    recipe = row.recipes.get(task)
    body_cfg = read_yaml(Path(body["run_dir"]) / "config.yaml") if body else None
    if recipe is None:
        arch = body_cfg["model"]["arch"]
        recipe = TASK_RECIPES[task][arch]
    data = apply_overrides(read_yaml(resolve(recipe)), [
        *spec.finetune, *row.overrides, *spec.task_overrides.get(task, []), *QUIET])
    data.update(run_dir=str(run_dir), seed=seed, name=row.name)
    if body is not None and row.init == "pretrained":
        data["init_from"] = body["run_dir"]
    elif body is not None:  # the same architecture and tokenizer, random weights
        data.update(init_from=None, tokenizer=str(Path(body["run_dir"]) / "tokenizer.json"),
                    model={**body_cfg["model"], **{k: v for k, v in (data.get("model") or {})
                                                    .items() if k == "dropout"}})
    return from_dict(FinetuneConfig, data)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name.lower()).strip("-")


def finetune_run(spec: Spec, row: Row, task: str, seed: int, body: dict | None,
                 pool: Pool | None = None):
    """Run (or resume, or skip if finished) the fine-tuning of `row` on `task` with
    `seed` -- in the `pool` when there is one -- and return a function that reads its
    numbers."""
    from ..finetune import finetune
    from ..report import read_results

    cfg = finetune_config(spec, row, task, seed, body)
    run_dir = Path(cfg.run_dir)
    name = run_dir.name

    def finished():
        try:
            read_results(run_dir)
            return True
        except LmforgeError:
            return False

    state = prepare_run_dir(spec, name, to_dict(cfg), finished)
    if state == "done":
        say(f"[{spec.name}] {name}: finished earlier, not redone")
    elif pool is not None or spec.isolate:  # its own process: its peak memory is its own
        say(f"[{spec.name}] fine-tuning {name} ({state})")
        one = pool or Pool(spec)
        one.start(name, "finetune", state == "resume")
        if pool is None:
            one.wait()
    else:
        say(f"[{spec.name}] fine-tuning {name} ({state})")
        t0 = time.perf_counter()
        with PeakRSS() as peak:
            finetune(cfg, resume=state == "resume")
        _write_record(run_dir, {"peak_rss_mb": peak.mb, "wall_s": time.perf_counter() - t0})
    return lambda: finetune_numbers(row, task, seed, body, run_dir)


def finetune_numbers(row: Row, task: str, seed: int, body: dict | None, run_dir: Path):
    from ..report import RESULTS, read_results

    name = run_dir.name
    r = read_results(run_dir)
    metric = r["main_metric"]
    value = r["test"][metric]
    rec = _read_record(run_dir)
    return {"run": name, "row": row.name, "task": task, "seed": seed, "metric": metric,
            "value": value if metric == "loss" else 100 * value,
            "body": body["run"] if body else None, "init": row.init if body else "recipe",
            "params": r["total_params"], "trainable_pct": r["trainable_pct"],
            "ms_per_step": 1e3 * r["train_time_s"] / max(r["step"], 1),
            "pretrain_flops": body["train_flops"] if body and row.init == "pretrained" else
            (0.0 if body else None), "fraction": row.fraction,
            "peak_rss_mb": rec.get("peak_rss_mb"), "wall_s": rec.get("wall_s"),
            "results": str(run_dir / RESULTS)}


class Pool:
    """Runs side by side, at most `spec.jobs` at a time: each `lmforge pretrain|finetune
    OUT/configs/<run>.yaml` in a child process with its share of the cores, its output
    in OUT/logs/<run>.log, its wall time and peak memory (wait4) in its record."""

    def __init__(self, spec: Spec):
        self.spec, self.running, self.failed = spec, {}, []
        (spec.out / "logs").mkdir(parents=True, exist_ok=True)
        threads = str(max(1, (os.cpu_count() or 1) // spec.jobs))
        self.env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}

    def start(self, name: str, command: str, resume: bool) -> None:
        while len(self.running) >= self.spec.jobs:
            self._reap()
        if self.failed:  # start nothing more; wait() reports it
            return
        out = self.spec.out
        cmd = [sys.executable, "-m", "lmforge", command, str(out / "configs" / f"{name}.yaml")]
        log = out / "logs" / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=f,
                                    stderr=subprocess.STDOUT, env=self.env)
        self.running[proc.pid] = (proc, name, log, time.perf_counter())

    def _reap(self) -> None:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in self.running:
            return
        proc, name, log, t0 = self.running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            self.failed.append(f"{name} (exit {proc.returncode}; see {log})")
            return
        wall = time.perf_counter() - t0
        _write_record(self.spec.out / name,
                      {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024})  # KiB
        say(f"[{self.spec.name}] {name}: done in {wall:.0f} s")

    def wait(self) -> None:
        """Until every started run has ended; LmforgeError naming the ones that failed."""
        while self.running:
            self._reap()
        if self.failed:
            raise LmforgeError(f"experiment {self.spec.name}: run failed: "
                               + "; ".join(self.failed))


class PeakRSS:
    """The process's peak resident memory (MB) while the block runs, sampled every 10 ms
    from /proc/self/statm (in-process runs; an isolated run reads its own from wait4)."""

    def __init__(self, every: float = 0.01):
        self.every, self.mb = every, None

    def _rss(self) -> float | None:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.mb = max(filter(None, (self.mb, self._rss())), default=None)

    def __enter__(self):
        import threading

        self.mb = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mb = max(filter(None, (self.mb, self._rss())), default=None)


# ---- the run dirs ---------------------------------------------------------------------

def prepare_run_dir(spec: Spec, name: str, config: dict, finished) -> str:
    """"done" (finished with this config: skip), "resume" (killed with this config, a
    checkpoint to go on from) or "fresh" (the run dir cleared). OUT/configs/<name>.yaml
    records the config the run was started with."""
    from ..training.checkpoint import latest_checkpoint

    run_dir = spec.out / name
    config_file = spec.out / "configs" / f"{name}.yaml"
    same = config_file.is_file() and read_yaml(config_file) == \
        json.loads(json.dumps(config))  # YAML round trip: tuples as lists
    if same and finished():
        return "done"
    if same and latest_checkpoint(run_dir / "checkpoints") is not None:
        return "resume"
    if run_dir.exists():
        if not same:
            say(f"[{spec.name}] {name}: its config changed; training it again")
        shutil.rmtree(run_dir)
    dump_yaml(config, config_file)
    return "fresh"


def _write_record(run_dir: Path, record: dict) -> None:
    from ..atomic import write_text

    write_text(run_dir / RECORD, json.dumps(record) + "\n")


def _read_record(run_dir: Path) -> dict:
    path = run_dir / RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
