"""How well does an ELECTRA run's discriminator rank replaced tokens above originals?

RTD accuracy at the 0.5 threshold sits at the prior ("all original") for a long time;
the ROC AUC of the discriminator's logits (scikit-learn) shows whether it has begun to
separate the two anyway. Val windows of the run's own shards, corrupted with draw=None
(the trainer's eval masks).

    python bench/electra_auc.py runs/electra-shakespeare [--batches 20]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from lmforge.data import eval_batches
from lmforge.objectives import build
from lmforge.runs import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run_dir)
    obj = build(run.config.objective, tokenizer=run.tokenizer, model_config=run.model.config,
                seed=run.config.seed)
    model = obj.eval_model(run).eval()
    shards = Path(run.config.data.shards or Path(args.run_dir) / "shards")
    meta = json.loads((shards / "meta.json").read_text())
    val = np.concatenate([np.fromfile(shards / f["file"], dtype=meta["dtype"])
                          for f in meta["splits"]["val"]["files"]]).astype(np.int64)
    step = obj.window_len(run.config.train.seq_len) - 1
    ys, logits = [], []
    with torch.no_grad():
        for raw in eval_batches([val], step, args.batch_size, args.batches):
            t = obj.losses(model, obj.prepare(raw))
            ys.append(t["replaced"].flatten().numpy())
            logits.append(t["rtd_logits"].flatten().numpy())
    y, z = np.concatenate(ys), np.concatenate(logits)
    print(f"tokens {len(y)}  replaced {y.mean():.1%}  RTD acc {((z > 0) == y).mean():.1%}  "
          f"ROC AUC {roc_auc_score(y, z):.3f}  mean logit replaced {z[y == 1].mean():.3f} "
          f"original {z[y == 0].mean():.3f}")


if __name__ == "__main__":
    main()
