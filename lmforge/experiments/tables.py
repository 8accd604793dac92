"""An experiment's report: markdown tables in the lecture's form, PNG plots, a power-law
fit, and which differences exceed the spread over seeds.

    OUT/report.md     the claim, the table(s), the comparisons, the plots, the time
    OUT/results.json  every number the tables are made of
    OUT/*.png         scores.png (fine-tuning scores, error bars = spread),
                      sample_efficiency.png (score vs pretraining FLOPs, when fractions),
                      scaling.png (val loss vs parameters and vs FLOPs, with the fit),
                      peft.png (score vs trainable %)

A cell is "mean ± spread": the mean over seeds and the sample standard deviation
(n - 1); one seed prints the value alone (no spread to compare against). A difference
between two rows is called real only when it exceeds the sum of their spreads.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..atomic import atomic_path, write_text


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation; None for a single value)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else None)


def cell(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    m, s = mean_spread(values)
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def power_law(x: list[float], y: list[float]) -> tuple[float, float]:
    """(a, alpha) of y = a * x^-alpha, least squares on log y = log a - alpha log x
    (Kaplan et al.'s form, without an irreducible term)."""
    import numpy as np

    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(math.exp(intercept)), float(-slope)


def _group(items: list[dict], key: str) -> dict:
    out: dict = {}
    for it in items:
        out.setdefault(it[key], []).append(it)
    return out


# ---- tables ---------------------------------------------------------------------------

def finetune_table(results: dict, columns: list[str]) -> tuple[str, list[str]]:
    """Model rows; Params, Train FLOPs (pretraining, x the budget), pretraining summary
    columns, one column per task (main metric on test x 100, mean ± spread), Avg."""
    ft = results["finetune"]
    tasks = list(dict.fromkeys(r["task"] for r in ft))
    metric = {r["task"]: r["metric"] for r in ft}
    pre = {p["run"]: p for p in results["pretrain"]}
    ref = results.get("budget") or max((r["pretrain_flops"] or 0 for r in ft), default=0)
    head = ["Model", "Params", "Train FLOPs", *columns,
            *[f"{t} ({metric[t]})" for t in tasks]]
    scored = [t for t in tasks if metric[t] != "loss"]
    if len(scored) > 1:
        head.append("Avg.")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row, runs in _group(ft, "row").items():
        by_task = _group(runs, "task")
        flops = [r["pretrain_flops"] for r in runs if r["pretrain_flops"] is not None]
        f = statistics.fmean(flops) if flops else None
        shown = "-" if f is None else "0 (random init)" if f == 0 else \
            f"{f:.2g}" + (f" ({f / ref:.2f}x)" if ref else "")
        bodies = {r["body"] for r in runs if r["body"]}
        extra = [cell([pre[b][c] for b in bodies if c in pre[b]], 3) for c in columns]
        cells = [cell([r["value"] for r in by_task.get(t, [])],
                      3 if metric[t] == "loss" else 1) for t in tasks]
        line = [row, params(runs[0]["params"]), shown, *extra, *cells]
        if len(scored) > 1:
            seeds = _group(runs, "seed")  # the average per seed, then mean ± spread
            avgs = [statistics.fmean(r["value"] for r in rs if r["task"] in scored)
                    for rs in seeds.values() if {r["task"] for r in rs} >= set(scored)]
            line.append(cell(avgs))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines) + "\n", tasks


def pretrain_table(results: dict) -> str:
    """Model rows; Params, Train FLOPs, tokens, val loss (mean ± spread); the power law."""
    lines = ["| Model | Params | Non-embedding params | Train FLOPs | Tokens | Val loss |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, runs in _group(results["pretrain"], "name").items():
        lines.append(f"| {name} | {params(runs[0]['params'])} | "
                     f"{params(runs[0]['non_embedding_params'])} | "
                     f"{statistics.fmean(r['train_flops'] for r in runs):.2g} | "
                     f"{runs[0]['tokens']:,} | {cell([r['val_loss'] for r in runs], 3)} |")
    fits = scaling_fits(results)
    if fits:
        lines.append("")
        for what, (a, alpha) in fits.items():
            lines.append(f"Fitted power law: val loss = {a:.3g} x {what}^-{alpha:.4f} "
                         f"(exponent {alpha:.4f}; {what} = {FIT_AXES[what][1]})")
    return "\n".join(lines) + "\n"


# the fits' x axes: symbol -> (results key, what it is)
FIT_AXES = {"N": ("non_embedding_params", "non-embedding parameters, as Kaplan et al."),
            "C": ("train_flops", "train FLOPs")}


def scaling_fits(results: dict) -> dict[str, tuple[float, float]]:
    """{"N": (a, alpha), "C": (b, beta)}: the mean val loss per model against
    non-embedding parameters and against train FLOPs (2+ models with a finite loss)."""
    pts: dict[str, list] = {k: [] for k in FIT_AXES}
    for runs in _group(results["pretrain"], "name").values():
        losses = [r.get("val_loss") for r in runs]
        if all(v is not None and math.isfinite(v) and v > 0 for v in losses):
            for k, (key, _) in FIT_AXES.items():
                pts[k].append((statistics.fmean(r[key] for r in runs),
                               statistics.fmean(losses)))
    if len({x for x, _ in pts["N"]}) < 2:
        return {}
    return {k: power_law([x for x, _ in p], [y for _, y in p]) for k, p in pts.items()}


def peft_table(results: dict) -> str:
    """Method rows; trainable %, the task's score (mean ± spread), vs full, peak memory,
    time per step."""
    ft = results["finetune"]
    rows = _group(ft, "row")
    full = rows.get("full")
    lines = []
    for task, runs in _group(ft, "task").items():
        metric = runs[0]["metric"]
        ref = statistics.fmean(r["value"] for r in full if r["task"] == task) if full else None
        lines += [f"| Method | Params | Trainable | {task} ({metric}) | vs full | "
                  "Peak memory (MB) | ms / step |", "|---|---:|---:|---:|---:|---:|---:|"]
        for row, rs in _group(runs, "row").items():
            v = [r["value"] for r in rs]
            vs = "-" if ref is None or row == "full" else f"{statistics.fmean(v) - ref:+.1f}"
            mem = [r["peak_rss_mb"] for r in rs if r["peak_rss_mb"] is not None]
            lines.append(f"| {row} | {params(rs[0]['params'])} | "
                         f"{statistics.fmean(r['trainable_pct'] for r in rs):.2f}% | {cell(v)} | "
                         f"{vs} | {cell(mem, 0)} | {cell([r['ms_per_step'] for r in rs], 0)} |")
        lines.append("")
    return "\n".join(lines)


def comparisons(results: dict, pairs: list[list[str]]) -> list[str]:
    """One line per (pair, task): the difference of means, and whether it exceeds the
    spread (the sum of the two rows' standard deviations over seeds)."""
    ft = results["finetune"]
    out = []
    for a, b in pairs:
        for task in dict.fromkeys(r["task"] for r in ft):
            va = [r["value"] for r in ft if r["row"] == a and r["task"] == task]
            vb = [r["value"] for r in ft if r["row"] == b and r["task"] == task]
            if not va or not vb:
                continue
            (ma, sa), (mb, sb) = mean_spread(va), mean_spread(vb)
            diff = ma - mb
            if sa is None or sb is None:
                verdict = "one seed: no spread to judge it by"
            elif abs(diff) > sa + sb:
                verdict = f"real (exceeds the spread {sa + sb:.1f})"
            else:
                verdict = f"within the spread ({sa + sb:.1f}): not a real difference"
            out.append(f"- {task}: {a} - {b} = {diff:+.1f} ({verdict})")
    return out


# ---- plots ----------------------------------------------------------------------------

def _figure(ncols: int):
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(4.2 * ncols, 3.6))
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_scores(results: dict, tasks: list[str], path: Path) -> None:
    ft = results["finetune"]
    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks):
        rows = _group([r for r in ft if r["task"] == task], "row")
        means = [mean_spread([r["value"] for r in rs]) for rs in rows.values()]
        ax.bar(range(len(rows)), [m for m, _ in means], yerr=[s or 0 for _, s in means],
               capsize=4, color="tab:blue")
        ax.set_xticks(range(len(rows)), list(rows), rotation=30, ha="right", fontsize=8)
        metric = next(iter(rows.values()))[0]["metric"]
        ax.set_title(f"{task} ({metric}, test)", fontsize=9)
    _save(fig, path)


def plot_sample_efficiency(results: dict, tasks: list[str], path: Path) -> None:
    """Downstream score vs pretraining FLOPs, one line per pretraining recipe."""
    pre = {p["run"]: p for p in results["pretrain"]}
    ft = [r for r in results["finetune"] if r["body"] and r["pretrain_flops"]]
    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks):
        by_base = _group([r for r in ft if r["task"] == task],
                         "row")  # one row per (recipe, fraction)
        lines: dict[str, list] = {}
        for rs in by_base.values():
            base = pre[rs[0]["body"]]["base"]
            m, s = mean_spread([r["value"] for r in rs])
            lines.setdefault(base, []).append((statistics.fmean(r["pretrain_flops"]
                                                                for r in rs), m, s or 0))
        for base, pts in lines.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=base)
        ax.set_xscale("log")
        ax.set_xlabel("pretraining train FLOPs")
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_scaling(results: dict, path: Path) -> None:
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fits = scaling_fits(results)
    groups = _group(results["pretrain"], "name")
    fig, axes = _figure(2)
    for ax, (what, (key, label)) in zip(axes, FIT_AXES.items()):
        xs = [statistics.fmean(r[key] for r in rs) for rs in groups.values()]
        ys = [mean_spread([r["val_loss"] for r in rs]) for rs in groups.values()]
        ax.errorbar(xs, [m for m, _ in ys], yerr=[s or 0 for _, s in ys], fmt="o", capsize=3)
        for x, y, name in zip(xs, ys, groups):
            ax.annotate(name, (x, y[0]), fontsize=7)
        if what in fits:
            a, alpha = fits[what]
            grid = np.geomspace(min(xs), max(xs), 50)
            ax.plot(grid, a * grid ** -alpha, "--", label=f"{a:.3g} x {what}^-{alpha:.3f}")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")  # a power law is a straight line
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("final val loss")
    _save(fig, path)


def plot_peft(results: dict, path: Path) -> None:
    ft = results["finetune"]
    fig, (ax,) = _figure(1)
    for row, rs in _group(ft, "row").items():
        m, s = mean_spread([r["value"] for r in rs])
        pct = statistics.fmean(r["trainable_pct"] for r in rs)
        ax.errorbar([pct], [m], yerr=[s or 0], fmt="o", capsize=3)
        ax.annotate(row, (pct, m), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (%)")
    ax.set_ylabel(f"{ft[0]['task']} {ft[0]['metric']} (test)")
    _save(fig, path)


# ---- the report -----------------------------------------------------------------------

def write_report(spec, results: dict) -> str:
    """OUT/report.md, OUT/results.json and the plots; returns the markdown."""
    out = Path(spec.out)
    md = [f"# Experiment {spec.name} (scale={spec.scale})", ""]
    if spec.claim:
        md += [f"Claim: {spec.claim}", ""]
    seeds = (f"{spec.seeds} seed{'s' if spec.seeds > 1 else ''}"
             + (f" (bodies pretrained with {spec.pretrain_seeds})"
                if spec.pretrain and spec.table != "pretrain" else ""))
    md += [f"Cells: mean ± sample standard deviation over {seeds}.", ""]
    if results.get("budget"):
        md += [f"Pretraining budget: {results['budget']:.3g} train FLOPs per run (x the "
               "fraction in the row name), max_steps from lmforge's FLOPs accounting.", ""]
    plots = []
    if spec.table == "pretrain":
        md.append(pretrain_table(results))
        plot_scaling(results, out / "scaling.png")
        plots.append("scaling.png")
    elif spec.table == "peft":
        md.append(peft_table(results))
        plot_peft(results, out / "peft.png")
        plots.append("peft.png")
    else:
        table, tasks = finetune_table(results, spec.columns)
        md.append(table)
        plot_scores(results, tasks, out / "scores.png")
        plots.append("scores.png")
        if len(spec.fractions) > 1:
            plot_sample_efficiency(results, tasks, out / "sample_efficiency.png")
            plots.append("sample_efficiency.png")
    lines = comparisons(results, spec.compare)
    if lines:
        md += ["Differences (row A - row B):", "", *lines, ""]
    md += [f"![{p}]({p})" for p in plots]
    spent = sum(r.get("wall_s") or 0 for r in results["pretrain"] + results["finetune"])
    md += ["", f"Runs: {out}; time in runs {spent / 60:.1f} min (every call that ran "
           f"them), this call {results['wall_s'] / 60:.1f} min."]
    text = "\n".join(md) + "\n"
    write_text(out / "report.md", text)
    write_text(out / "results.json", json.dumps({**results, "plots": plots}, indent=1) + "\n")
    return text
