"""Every experiment end to end at scale=test (a few steps of tiny models on a few rows):
report.md holds a well-formed markdown table of finite numbers with one row per model,
the PNG plots exist, results.json agrees; a killed experiment, run again, redoes no
finished run; equal-FLOPs runs spend the budget to within one step."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.experiments import load_spec, names

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?(e[+-]?\d+)?[KM%]?$")


def tables(md: str) -> list[list[list[str]]]:
    """The markdown tables of `md`: lists of rows of cells (separator rows dropped)."""
    out, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            out.append(cur)
            cur = []
    return out


def check_table(table: list[list[str]]) -> list[list[str]]:
    """Well-formed (same width on every row, a ---: separator), every number finite;
    returns the body rows."""
    head, sep, *body = table
    assert all(re.fullmatch(r":?-+:?", c) for c in sep), sep
    assert all(len(r) == len(head) for r in [sep, *body]), table
    for row in body:
        for c in row[1:]:
            for part in re.split(r" ± | \(|\)| ", c):
                if part and part not in ("-", "random", "init", "0") and "x" not in part:
                    assert NUMBER.match(part), (c, row)
                    assert math.isfinite(float(part.rstrip("KM%").replace(",", ""))), c
    return body


def finite_numbers(obj) -> bool:
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite_numbers(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


@pytest.mark.parametrize("name", names())
def test_experiment_runs_end_to_end_at_scale_test(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["experiment", name, "scale=test", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert printed.endswith(md)  # after the runs' own log lines
    spec = load_spec(name, ["scale=test", f"out={out}"])
    results = json.loads((out / "results.json").read_text())
    assert finite_numbers(results)
    body = check_table(tables(md)[0])
    if spec.table == "pretrain":
        assert [r[0] for r in body] == [p.name for p in spec.pretrain]
        fit = re.findall(r"val loss = \S+ x N\^-(\S+) \(exponent", md)
        assert len(fit) == 1 and math.isfinite(float(fit[0]))
        for p in results["pretrain"]:  # the runner's accounting is the trainer's
            assert p["train_flops"] == pytest.approx(p["flops_per_token"] * p["tokens"])
            assert p["tokens"] == p["steps"] * 4 * 32
    else:
        assert [r[0] for r in body] == list(dict.fromkeys(r.name for r in spec.rows))
        runs = {(r["row"], r["task"]) for r in results["finetune"]}
        assert runs == {(r.name, t) for r in spec.rows for t in r.tasks}
        assert all(0 <= r["value"] <= 100 for r in results["finetune"])
    for png in results["plots"]:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, png
        assert f"![{png}]({png})" in md
    if name == "lora-vs-full":
        pct = {r["row"]: r["trainable_pct"] for r in results["finetune"]}
        assert pct["full"] == 100 and all(0 < v < 5 for k, v in pct.items() if k != "full")
        assert all(r["peak_rss_mb"] > 50 and r["ms_per_step"] > 0 for r in results["finetune"])
    if name == "electra-vs-mlm":  # equal FLOPs: each run within half a step of its budget
        for p in results["pretrain"]:
            step = p["flops_per_token"] * p["tokens"] / p["steps"]
            assert abs(p["train_flops"] - p["fraction"] * results["budget"]) <= step / 2 + 1
    if name == "pretrain-helps":
        flops = {r["row"]: r["pretrain_flops"] for r in results["finetune"]}
        assert flops["encoder random init"] == 0 < flops["encoder pretrained"]


def test_killed_experiment_redoes_no_finished_run(tmp_path, capsys):
    """SIGKILL `lmforge experiment scaling` once its first run has finished, run it again:
    the finished run is read back, not redone (its files untouched); a third call redoes
    nothing at all."""
    out = tmp_path / "scaling"
    first = out / "L2-d32-s0"
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "experiment", "scaling",
                             "scale=test", f"out={out}"], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (first / "experiment.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "the first run never finished"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "report.md").exists()  # killed before the end

    def files(run: Path) -> dict:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*")
                if p.is_file()}

    before = files(first)
    assert main(["experiment", "scaling", "scale=test", f"out={out}"]) == 0
    err = capsys.readouterr().err
    assert "[scaling] L2-d32-s0: finished earlier, not redone" in err
    assert "pretraining L2-d32-s0" not in err and "pretraining L4-d192-s0" in err
    assert files(first) == before
    results = json.loads((out / "results.json").read_text())
    assert [p["run"] for p in results["pretrain"]] == \
        ["L2-d32-s0", "L2-d64-s0", "L2-d128-s0", "L4-d192-s0"]

    every = {run: files(out / run) for run in ("L2-d64-s0", "L4-d192-s0")}
    assert main(["experiment", "scaling", "scale=test", f"out={out}"]) == 0
    err = capsys.readouterr().err
    assert "pretraining" not in err and err.count("not redone") == 4
    assert {run: files(out / run) for run in every} == every


def test_a_changed_config_is_run_again(tmp_path, capsys):
    """A run whose recipe or overrides changed since it finished is trained again, the
    others are kept (here: one size of the scaling experiment with another lr)."""
    out = tmp_path / "scaling"
    assert main(["experiment", "scaling", "scale=test", f"out={out}"]) == 0
    recipe = out / "configs" / "L2-d64-s0.yaml"
    text = recipe.read_text()
    assert re.search(r"^  lr: ", text, re.M), text
    recipe.write_text(re.sub(r"^  lr: .*$", "  lr: 1.234e-4", text, flags=re.M))
    capsys.readouterr()
    assert main(["experiment", "scaling", "scale=test", f"out={out}"]) == 0
    err = capsys.readouterr().err
    assert "L2-d64-s0: its config changed; training it again" in err
    assert err.count("not redone") == 3


def test_a_run_killed_after_its_checkpoint_resumes_from_it(tmp_path, capsys):
    """The states of a run dir on the next call: finished -> read back; a checkpoint but
    no summary (killed after saving) -> resumed from the checkpoint, not retrained;
    nothing saved yet -> started afresh."""
    from lmforge.experiments.runner import pretrain_run

    spec = load_spec("scaling", ["scale=test", f"out={tmp_path}"])
    p = spec.pretrain[0]
    first = pretrain_run(spec, p, 0)()  # runs it, then reads its numbers
    run = tmp_path / "L2-d32-s0"
    ckpt = {f: f.stat().st_mtime_ns for f in (run / "checkpoints").rglob("*") if f.is_file()}
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:-1]) + "\n")  # the summary line never written
    capsys.readouterr()
    again = pretrain_run(spec, p, 0)()
    err = capsys.readouterr().err
    assert "pretraining L2-d32-s0: 3 steps (resume)" in err
    assert {f: f.stat().st_mtime_ns for f in (run / "checkpoints").rglob("*")
            if f.is_file()} == ckpt  # no step trained again, nothing re-saved
    assert again["val_loss"] == first["val_loss"] and again["steps"] == 3
    import shutil

    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint
    pretrain_run(spec, p, 0)
    assert "pretraining L2-d32-s0: 3 steps (fresh)" in capsys.readouterr().err


def test_jobs_run_side_by_side_with_the_same_numbers(tmp_path, capsys):
    """jobs=2: the runs go to child processes two at a time (logs in OUT/logs, wall time
    and peak memory in each run's record) and give the numbers of the same runs made one
    after another in this process."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["experiment", "scaling", "scale=test", f"out={one}"]) == 0
    assert main(["experiment", "scaling", "scale=test", f"out={two}", "jobs=2"]) == 0
    err = capsys.readouterr().err
    a, b = (json.loads((d / "results.json").read_text())["pretrain"] for d in (one, two))
    assert [p["run"] for p in b] == [p["run"] for p in a]
    for p, q in zip(a, b):
        assert q["val_loss"] == pytest.approx(p["val_loss"], abs=1e-5)
        assert q["train_flops"] == p["train_flops"] and q["steps"] == p["steps"]
        record = json.loads((two / p["run"] / "experiment.json").read_text())
        assert record["wall_s"] > 0 and record["peak_rss_mb"] > 50
        assert "training to step 3" in (two / "logs" / f"{p['run']}.log").read_text()
        assert f"[scaling] {p['run']}: done in" in err
    assert main(["experiment", "scaling", "scale=test", f"out={two}", "jobs=2"]) == 0
    assert capsys.readouterr().err.count("not redone") == 4  # resumable as ever
