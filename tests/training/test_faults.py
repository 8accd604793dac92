"""Fault injection (issue 12 §5): a short real run, SIGKILLed at 20 seeded points --
random moments, and the exact moments a checkpoint is being written, renamed and pruned
-- and resumed after each kill, in ONE run dir (kill, resume, kill, resume ...), ends
with weights bitwise equal to the uninterrupted run's; no resume ever reads a partial
checkpoint (each resume verifies the sizes and sha256 of what it loads and would say
"is damaged"; none does).

The killed processes are forked from one driver process that has imported torch and
lmforge already, so that each restart costs a resume, not an interpreter start.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmforge.config import dump_yaml, from_dict
from lmforge.pretrain import pretrain
from lmforge.training import RunConfig
from lmforge.training.checkpoint import load_state

REPO = Path(__file__).resolve().parents[2]
STEPS = 30
KILLS = 20

DRIVER = r'''
import json, math, os, random, signal, sys, time
from pathlib import Path

from lmforge.config import load_config
from lmforge.pretrain import pretrain  # imported before forking: children start warm
from lmforge.training import RunConfig
from lmforge.training.checkpoint import list_checkpoints, step_dirs
import lmforge.atomic as atomic
import lmforge.training.checkpoint as ck

cfg_path, seed, kills, step_time = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    float(sys.argv[4])
cfg = load_config(cfg_path, RunConfig)
ckpts = Path(cfg.run_dir) / "checkpoints"
max_steps = cfg.train.max_steps


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(fault):
    """In the child: SIGKILL itself at an exact moment of its first checkpoint save."""
    if fault == "mid-state":  # state.pt half written, in the temporary folder
        real = ck._Writer.write
        def write(self, b):
            real(self, b[: len(b) // 2])
            self.flush()
            die()
        ck._Writer.write = write
    elif fault == "mid-meta":  # meta.json (the record, written last) half written
        def write_json(obj, file):
            file.write_text(json.dumps(obj)[:40])
            die()
        ck._write_json = write_json
    elif fault == "before-prune":  # the new step-N is in place, the old ones not pruned
        ck.prune = lambda *a, **k: die()
    elif fault == "mid-prune":  # an old checkpoint renamed to .deleting, half removed
        def remove_dir(path):
            doomed = atomic._aside(Path(path), "deleting")
            os.replace(path, doomed)
            next(doomed.iterdir()).unlink()
            die()
        ck.remove_dir = remove_dir


def start(fault=None):
    resume = bool(step_dirs(ckpts))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if fault:
                arm(fault)
            pretrain(load_config(cfg_path, RunConfig), resume=resume)
            code = 0
        except BaseException as e:
            print(f"child: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    return pid


def newest():
    while True:
        try:  # the child renames and removes folders while we look
            found = list_checkpoints(ckpts)
            return found[-1][0] if found else 0
        except OSError:
            time.sleep(0.001)


rng = random.Random(seed)
faults = ["mid-state", "mid-meta", "before-prune", "mid-prune"]
at = sorted(rng.uniform(0, max_steps - 3) for _ in range(kills - len(faults)))
plan = [(p, None) for p in at]
for f in faults:  # the exact moments, spread over the run
    plan.insert(rng.randrange(len(plan) + 1), (None, f))
rounds = []
for point, fault in plan:
    before = newest()
    pid = start(fault)
    if fault is None:  # a random moment: past checkpoint floor(point), then a fraction
        while newest() < math.floor(point):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                raise SystemExit(f"the child ended before its kill at {point:.2f}")
            time.sleep(0.001)
        time.sleep((point - math.floor(point)) * step_time)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    left = sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) \
        if ckpts.is_dir() else []
    rounds.append({"point": point, "fault": fault, "from": before, "to": newest(),
                   "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                   "left": left})
pid = start()  # the last resume, left to finish
_, status = os.waitpid(pid, 0)
print(json.dumps({"rounds": rounds, "final_exit": os.waitstatus_to_exitcode(status)}))
'''


def run_config(run_dir, **over) -> RunConfig:
    return from_dict(RunConfig, {
        "run_dir": str(run_dir),
        "seed": 3,
        "data": {"corpus": "shakespeare", "max_chars": 30_000, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny-gpt2", "max_seq_len": 32, "dropout": 0.1},
        "train": {"batch_size": 4, "seq_len": 32, "max_steps": STEPS, "lr": 3e-3,
                  "warmup_steps": 3, "eval_every": 0, "save_every": 1, "keep_last": 2,
                  "log_every": 5, "threads": 1, "progress": False, "tensorboard": False,
                  "peak_flops": 1e11},
        "sample": {"prompt": ""},
        **over,
    })


def test_sigkill_at_20_points_then_resume_ends_bitwise_equal_to_a_straight_run(tmp_path):
    straight = run_config(tmp_path / "straight")
    start = time.perf_counter()
    pretrain(straight)
    step_time = (time.perf_counter() - start) / STEPS
    a = Path(straight.run_dir)
    # the same run, reading the straight run's tokenizer and token shards
    cfg = run_config(tmp_path / "killed", tokenizer={"path": str(a / "tokenizer.json")},
                     data={"corpus": "shakespeare", "max_chars": 30_000, "val_fraction": 0.1,
                           "shards": str(a / "shards")})
    dump_yaml(cfg, tmp_path / "killed.yaml")
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "killed.yaml"), "12",
                        str(KILLS), str(step_time)],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    rounds = report["rounds"]
    assert report["final_exit"] == 0, r.stderr[-3000:]
    assert len(rounds) == KILLS and all(x["killed"] for x in rounds), rounds
    # no resume met a partial (or otherwise damaged) checkpoint, nor failed
    assert "is damaged" not in r.stderr and "child:" not in r.stderr, r.stderr[-3000:]
    # the exact moments left what they should, and the next start cleaned it
    left = {x["fault"]: x["left"] for x in rounds if x["fault"]}
    assert any(n.endswith(".tmp") for n in left["mid-state"]), left
    assert any(n.endswith(".tmp") for n in left["mid-meta"]), left
    assert any(n.endswith(".deleting") for n in left["mid-prune"]), left
    b = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in b.iterdir()) == [f"step-{STEPS - 1}", f"step-{STEPS}"]
    final_a = a / "checkpoints" / f"step-{STEPS}"
    final_b = b / f"step-{STEPS}"
    assert (final_a / "model.safetensors").read_bytes() == \
        (final_b / "model.safetensors").read_bytes()
    sa, sb = load_state(final_a), load_state(final_b)
    for ga, gb in zip(sa["optimizers"][0]["state"].values(), sb["optimizers"][0]["state"].values()):
        for k in ga:
            assert torch.equal(torch.as_tensor(ga[k]), torch.as_tensor(gb[k])), k
    assert sa["sampler"] == sb["sampler"] and sa["tokens"] == sb["tokens"]
    print(json.dumps(rounds))  # where the kills landed (pytest -s shows it)

