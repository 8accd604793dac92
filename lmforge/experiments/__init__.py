"""`lmforge experiment NAME`: the lecture's claims rerun as equal-compute comparisons with
seeds, in tables and plots of the lecture's form (configs/experiments/NAME.yaml).

    spec.py     an experiment's YAML, its scale= applied, every check before any run
    runner.py   the runs (pretraining, fine-tuning) as ordinary run dirs; resume; the
                FLOPs budget -> max_steps
    tables.py   report.md (mean ± spread tables, power-law fit, comparisons), PNG plots
"""

from .runner import run_experiment
from .spec import load_spec, names

__all__ = ["load_spec", "names", "run_experiment"]
