"""Val curves of pretraining runs side by side, against the unigram loss, as one PNG.

Each run dir's metrics.jsonl holds the trainer's evals; a run is plotted by the metric
that says how far it is from token frequencies (MLM: val_loss; ELECTRA: the generator's;
BART: the whole-window loss; T5: span_loss, the hidden tokens alone).

    python bench/pretrain_curves.py --out docs/pretraining.png \
        runs/bert-shakespeare runs/roberta-shakespeare runs/albert-shakespeare \
        runs/electra-shakespeare runs/bart-shakespeare runs/t5-shakespeare
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

METRIC = {"electra": "val_gen_loss", "t5": "val_span_loss"}  # default: val_loss


def curve(run_dir: Path) -> tuple[str, str, list[int], list[float], float]:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    objective = cfg.get("objective", {}).get("name", "clm")
    if objective == "mlm" and cfg["objective"].get("pair") not in (None, "none"):
        objective = f"mlm+{cfg['objective']['pair']}"
    key = METRIC.get(objective, "val_loss")
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("event") == "eval" and key in e]
    return (f"{run_dir.name} ({objective}, {key[4:]})", objective,
            [e["step"] for e in evals], [e[key] for e in evals], evals[-1]["val_unigram_loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("pretraining.png"))
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(8, 5))
    unigram = []
    for run in args.runs:
        label, _, steps, losses, uni = curve(run)
        ax.plot(steps, losses, marker="o", markersize=3, label=label)
        unigram.append(uni)
        print(f"{label}: " + ", ".join(f"{s}: {v:.3f}" for s, v in zip(steps, losses))
              + f"  (unigram {uni:.3f})")
    ax.axhline(min(unigram), color="gray", linestyle="--",
               label=f"unigram loss ({min(unigram):.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats per predicted token)")
    ax.set_title("Pretraining on Shakespeare: val loss against token frequencies")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = args.out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
