"""`lmforge report`: fine-tuned runs' results.json as one GLUE-style markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError

RESULTS = "results.json"


def read_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {RESULTS} (not a finished fine-tuning run)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def results_table(run_dirs: list[str | Path], split: str = "test") -> str:
    """Markdown: one row per model, one column per task, the task's main metric on
    `split` x 100 (as the GLUE tables of the papers print it), and the row average.

    A loss (chat's main metric: lower is better) is printed as is, not x 100, and stays
    out of the average. An "arch" column appears when the runs record their body's
    architecture. Runs are grouped by their `name` (the model) and `task`; when one model
    has several runs of a task, the one listed last counts."""
    cells: dict[str, dict[str, float]] = {}
    arch_of: dict[str, str] = {}
    metric_of: dict[str, str] = {}
    for d in run_dirs:
        r = read_results(d)
        if split not in r:
            raise CheckpointError(f"{d}/{RESULTS}: no {split} metrics")
        metric_of[r["task"]] = r["main_metric"]
        value = r[split][r["main_metric"]]
        cells.setdefault(r["model"], {})[r["task"]] = \
            value if r["main_metric"] == "loss" else 100 * value
        if r.get("arch"):
            arch_of[r["model"]] = r["arch"]
    tasks = list(metric_of)
    scored = [t for t in tasks if metric_of[t] != "loss"]  # higher is better: averaged
    head = ["Model"] + (["arch"] if arch_of else [])
    head += [f"{t} ({'loss, lower is better' if metric_of[t] == 'loss' else metric_of[t]})"
             for t in tasks]
    if len(scored) > 1:
        head.append("Average")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, row in cells.items():
        values = [("-" if t not in row else
                   f"{row[t]:.3f}" if metric_of[t] == "loss" else f"{row[t]:.1f}")
                  for t in tasks]
        if len(scored) > 1:
            full = all(t in row for t in scored)
            values.append(f"{sum(row[t] for t in scored) / len(scored):.1f}" if full else "-")
        first = [model] + ([arch_of.get(model, "-")] if arch_of else [])
        lines.append("| " + " | ".join(first + values) + " |")
    return "\n".join(lines) + "\n"
