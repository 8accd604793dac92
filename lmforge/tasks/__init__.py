"""Fine-tuning tasks: task sets with fixed splits, metrics, the chat template, NER alignment.

    from lmforge import tasks
    task = tasks.get_task("rotten-tomatoes")      # type, labels, metrics, main metric
    splits = tasks.load_task("rotten-tomatoes")   # {"train", "val", "test"}: lists of dicts
    tasks.compute(task.metrics, predictions, references)

Files: `datasets` (the task registry and built-in sets), `debian` (the Debian fixture
and its two task sets), `user` (your jsonl / csv files), `splits` (fixed seeded splits),
`metrics`, `chat` (template, loss mask, packing), `tagging` (word <-> subword labels).
"""

from .chat import ChatTemplate, check_messages, next_token_targets, pack
from .datasets import TASK_TYPES, TASKS, Task, default_metrics, get_task, load_task
from .metrics import METRICS, compute, greater_is_better
from .splits import split_groups
from .tagging import align, bio_labels, word_predictions
from .user import from_files

__all__ = [
    "METRICS",
    "TASKS",
    "TASK_TYPES",
    "ChatTemplate",
    "Task",
    "align",
    "bio_labels",
    "check_messages",
    "compute",
    "default_metrics",
    "from_files",
    "get_task",
    "greater_is_better",
    "load_task",
    "next_token_targets",
    "pack",
    "split_groups",
    "word_predictions",
]
