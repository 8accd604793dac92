"""The configs of a training run: `TrainConfig` for the trainer and the `RunConfig` tree
that a YAML recipe fills (`lmforge pretrain CONFIG`).

    run_dir: runs/gpt-shakespeare
    seed: 1337
    data: {corpus: shakespeare, val_fraction: 0.05}
    tokenizer: {vocab_size: 4096}
    model: {preset: tiny-gpt2, n_layer: 4, d_model: 256}
    objective: {name: clm}
    train: {batch_size: 16, seq_len: 256, max_steps: 2000, lr: 1e-3}
    sample: {prompt: "ROMEO:", max_new_tokens: 100}

Every key is documented below and in docs/training.md. Values are checked when the
config is built; a bad one raises ConfigError naming the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from ..models.config import check_model_section
from ..objectives.config import ObjectiveConfig
from .distributed import DistributedConfig


def _check(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {what}, got {value!r}")


@dataclass
class TrainConfig:
    """How the trainer runs: batch, steps, optimizer, schedule, precision, eval, saving."""

    batch_size: int = 16  # sequences per micro-batch
    seq_len: int = 256  # tokens per sequence (<= model.max_seq_len)
    grad_accum: int = 1  # micro-batches per optimizer step (token-weighted mean)
    max_steps: int = 2000  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the decay
    warmup_steps: int = 100  # linear warmup from ~0 to lr
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    decay_frac: float = 0.2  # wsd: fraction of max_steps spent decaying
    optimizer: Literal["adamw", "muon"] = "adamw"
    weight_decay: float = 0.1  # on 2-D weights only (see training/optim.py)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global grad norm; null = no clipping
    # autocast dtype (fp16: grad scaler); auto = bf16 where the device is fast at it
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    compile: bool = False  # torch.compile the model
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager, eager: no codegen)
    activation_checkpointing: bool = False  # recompute block activations in backward
    eval_every: int = 200  # steps between evals (0 = only at the end)
    eval_batches: int = 20  # val batches per eval
    save_every: int = 500  # steps between checkpoints (0 = only at the end)
    keep_last: int | None = 2  # checkpoints kept (null = all)
    log_every: int = 10  # steps between metrics.jsonl / TensorBoard records
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # torch CPU threads (null = torch's default)
    malloc_cache: bool = True  # CPU: reuse freed large blocks (glibc mallopt, process-wide)
    peak_flops: float | None = None  # for MFU; null = GPU data sheet or measured CPU ceiling
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = True  # TensorBoard event files in the run dir

    def __post_init__(self):
        for key in ("batch_size", "seq_len", "grad_accum", "max_steps", "log_every",
                    "max_nonfinite", "eval_batches"):
            v = getattr(self, key)
            _check(v >= 1, f"train.{key}", "an integer >= 1", v)
        for key in ("warmup_steps", "eval_every", "save_every"):
            v = getattr(self, key)
            _check(v >= 0, f"train.{key}", "an integer >= 0", v)
        _check(self.lr > 0, "train.lr", "a number > 0", self.lr)
        _check(0 <= self.min_lr <= self.lr, "train.min_lr", "a number in [0, lr]", self.min_lr)
        _check(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        _check(0 < self.decay_frac <= 1, "train.decay_frac", "a number in (0, 1]", self.decay_frac)
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas", "two numbers in [0, 1)", self.betas,
        )
        _check(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip",
               "a number > 0 or null", self.grad_clip)
        _check(self.keep_last is None or self.keep_last >= 1, "train.keep_last",
               "an integer >= 1 or null", self.keep_last)
        _check(self.threads is None or self.threads >= 1, "train.threads",
               "an integer >= 1 or null", self.threads)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum


@dataclass
class DataConfig:
    """Where the training text comes from and where its token shards go."""

    corpus: str | list[str] = "shakespeare"  # built-in name, file or folder (or a list)
    text_field: str = "text"  # the text column of jsonl / csv / parquet files
    val_fraction: float = 0.05  # share of the characters held out for validation
    max_chars: int | None = None  # use only the first max_chars characters (quick runs)
    shards: str | None = None  # token shard folder; null = RUN_DIR/shards

    def __post_init__(self):
        _check(0 <= self.val_fraction < 1, "data.val_fraction", "a number in [0, 1)",
               self.val_fraction)
        _check(self.max_chars is None or self.max_chars > 0, "data.max_chars",
               "an integer > 0 or null", self.max_chars)


@dataclass
class TokenizerConfig:
    """A tokenizer file to use, or how to train one on the corpus."""

    path: str | None = None  # an lmforge tokenizer.json; null = train one
    vocab_size: int = 4096
    pattern: str = "gpt2"  # pre-tokenizer split pattern
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    train_chars: int | None = None  # train on the first train_chars characters (null = all)
    sentinels: int = 0  # T5: add <extra_id_0> ... <extra_id_{n-1}> (extra_id_0 the last id)

    def __post_init__(self):
        _check(self.vocab_size >= 257, "tokenizer.vocab_size", "an integer >= 257",
               self.vocab_size)
        _check(self.sentinels >= 0, "tokenizer.sentinels", "an integer >= 0", self.sentinels)


@dataclass
class SampleConfig:
    """A sample printed at the end of the run (empty prompt = none)."""

    prompt: str = ""
    max_new_tokens: int = 100
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 50  # null or 0 = no top-k cut

    def __post_init__(self):
        _check(self.max_new_tokens >= 1, "sample.max_new_tokens", "an integer >= 1",
               self.max_new_tokens)
        _check(self.temperature >= 0, "sample.temperature", "a number >= 0", self.temperature)


@dataclass
class RunConfig:
    run_dir: str = "runs/run"
    seed: int = 1337
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # A preset name plus ModelConfig fields: {preset: gpt2, n_layer: 4, ...}; resolved
    # against lmforge.models.ModelConfig by the recipe (vocab_size from the tokenizer).
    model: dict = field(default_factory=lambda: {"preset": "tiny-gpt2"})
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self):
        check_model_section(self.model)
