"""What a run reports: a progress bar, metrics.jsonl, TensorBoard events, a loss plot.

    RUN_DIR/metrics.jsonl   one JSON object per line, each with "event" and "step":
        {"event": "train", "step": 10, "loss": 5.91, "lr": 0.001, "tokens": 40960,
         "tok_per_s": 5123.0, "mfu": 0.41, "grad_norm": 1.3, "skipped": 0, ...}
        {"event": "eval", "step": 200, "val_loss": 4.1, "val_ppl": 60.3}
        {"event": "nonfinite", "step": 57, "loss": NaN, "in_a_row": 1}
        {"event": "summary", "step": 2000, "train_flops": 1.2e15, ...}
    RUN_DIR/events.out.tfevents.*   TensorBoard (`tensorboard --logdir runs/`)
    RUN_DIR/loss.png                train and val loss against step

On resume the records after the checkpoint's step are dropped from metrics.jsonl
(they belong to steps that will be run again) and TensorBoard purges them likewise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import atomic_path, write_text

METRICS, PLOT, METRIC_PLOT = "metrics.jsonl", "loss.png", "val_metric.png"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file (a missing file has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything before it is whole
    return records


def _json_safe(record: dict) -> dict:
    # JSON has no NaN/inf; write them as strings so every line stays standard JSON
    return {
        k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in record.items()
    }


class RunLogger:
    """Writes metrics.jsonl, TensorBoard events and the loss plot for one run dir."""

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        start_step: int = 0,
        progress: bool = True,
        tensorboard: bool = True,
        metric: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.metric = metric  # a keep-best metric: plotted in val_metric.png
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS
        # resuming: keep what happened up to the checkpoint (the summary is written anew)
        kept = [r for r in read_metrics(self.metrics_path)
                if r.get("step", 0) <= start_step and r.get("event") != "summary"]
        if start_step == 0:
            kept = []
        write_text(self.metrics_path, "".join(json.dumps(_json_safe(r)) + "\n" for r in kept))
        self.history = kept
        self._file = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            if start_step == 0:  # a fresh run: old event files would mix two runs' curves
                for old in self.run_dir.glob("events.out.tfevents.*"):
                    old.unlink()
            purge = start_step + 1 if start_step else None  # drop events past the checkpoint
            self.tb = SummaryWriter(str(self.run_dir), purge_step=purge)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, desc="train")

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl (flushed) and TensorBoard."""
        self.history.append(record)
        self._file.write(json.dumps(_json_safe(record)) + "\n")
        self._file.flush()
        if self.tb is not None:
            event, step = record.get("event", "train"), record.get("step", 0)
            for key, value in record.items():
                if key not in ("event", "step") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(f"{event}/{key}", value, step)

    def progress(self, steps: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def write(self, message: str) -> None:
        """A line of text above the progress bar (or on stdout without one)."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def plot(self) -> Path:
        """Write loss.png: train loss (and val loss where measured) against step; and
        val_metric.png, the keep-best metric at each evaluation, when the run has one."""
        plot_loss(self.history, self.run_dir / PLOT)
        if self.metric:
            plot_metric(self.history, self.metric, self.run_dir / METRIC_PLOT)
        return self.run_dir / PLOT

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self._file.close()


def plot_loss(records: list[dict], path: str | Path) -> None:
    """A PNG of train and val loss against step, written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    train = [(r["step"], r["loss"]) for r in records if r.get("event") == "train"
             and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("event") == "eval"
           and isinstance(r.get("val_loss"), (int, float))]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_metric(records: list[dict], metric: str, path: str | Path) -> None:
    """A PNG of the evaluation metric `metric` against step (epoch when recorded),
    written atomically."""
    from matplotlib.figure import Figure

    evals = [r for r in records
             if r.get("event") == "eval" and isinstance(r.get(metric), (int, float))]
    by = "epoch" if evals and all("epoch" in r for r in evals) else "step"
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    if evals:
        ax.plot([r[by] for r in evals], [r[metric] for r in evals], "o-", label=f"val {metric}")
        ax.legend()
    ax.set_xlabel(by)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
