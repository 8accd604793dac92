"""Training on several processes: one per GPU (or CPU), launched by torchrun.

    torchrun --nproc_per_node N [--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT] \\
        -m lmforge pretrain CONFIG

torchrun starts N copies of the command and tells each who it is through the environment:

    RANK          this process's index among all processes, 0 .. WORLD_SIZE - 1
    WORLD_SIZE    the number of processes (N per node x M nodes)
    LOCAL_RANK    the index on this node: the GPU it drives (cuda:LOCAL_RANK)
    MASTER_ADDR, MASTER_PORT   where the processes meet to form the process group

The strategies (`distributed.strategy`), for a model of P parameters in fp32 trained with
AdamW on W processes (bytes per process; activations come on top):

    none   one process, no process group: the single-process path, unchanged.
           4P weights + 4P gradients + 8P AdamW moments = 16P.
    ddp    DistributedDataParallel: every rank holds the whole model and optimizer (16P,
           as `none`); after backward the gradients are averaged over the ranks by an
           all-reduce (each rank sends ~2 model sizes per step, overlapped with
           backward, bucket by bucket), so every rank takes the same optimizer step.
           Fast; memory does not shrink.
    fsdp   FSDP2 (`fully_shard` on each Transformer block, then on the root): each rank
           keeps 1/W of every parameter, gradient and optimizer moment (16P / W, plus
           the gathered block in use and the root's gathered weights). A block's weights
           are all-gathered just before its forward (and again before its backward when
           `reshard_after_forward`), and its gradients reduce-scattered after its
           backward: ~3 model sizes sent per step instead of 2, for a W-fold smaller
           state. The tensors are DTensors, so the optimizer must be built AFTER `wrap`.

Measured (a 4-layer, d=128 GPT-2 shape, 842,496 parameters, fp32 + AdamW, 2 ranks):
params + grads + optimizer = 13,480,144 bytes per rank under none and ddp, 6,740,176
under fsdp (the shards' local sizes, DTensor.to_local()).

Gradient accumulation: `grad_sync(model, dist, enabled=False)` around every micro-step but
the last skips the all-reduce (DDP `no_sync`) / reduce-scatter (FSDP), so a step costs one
round of communication whatever `train.grad_accum` is.

Sharded checkpoints (`save_sharded`): one `torch.distributed.checkpoint` (DCP) folder

    PATH/.metadata           which rank wrote which piece of which tensor
    PATH/__R_0.distcp        rank R's pieces
    keys "model.<name>"      the model's weights, under the single-process names
         "optim.<...>"       the optimizer states (AdamW moments, step), by parameter name

written into a hidden temporary folder next to PATH and renamed by rank 0 when every rank
has written its part: PATH is complete or absent. It loads back on any number of ranks
(`load_sharded`) or into one plain process (`load_sharded_single`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as td
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError

STRATEGIES = ("auto", "none", "ddp", "fsdp")
FORWARD_METHODS = ("encode", "decode", "hidden")  # the models' entry points besides forward
BACKENDS = ("nccl", "gloo")


@dataclass
class DistributedConfig:
    """The `distributed:` section of a run config.

    strategy: "auto" (ddp under torchrun with WORLD_SIZE > 1, else none) | "none" | "ddp" |
    "fsdp". backend: None picks nccl on GPUs, gloo on CPUs. global_batch_size: optional;
    when set it must equal train.batch_size x world_size x train.grad_accum (a check that
    the run is the one you sized). reshard_after_forward: FSDP2 frees a block's gathered
    weights after its forward (less memory, one more all-gather in backward).
    """

    strategy: str = "auto"
    backend: str | None = None
    global_batch_size: int | None = None
    reshard_after_forward: bool = True
    timeout_s: int = 1800

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"config key 'distributed.strategy': expected one of "
                              f"{', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"config key 'distributed.backend': expected one of "
                              f"{', '.join(BACKENDS)} or null, got {self.backend!r}")
        if self.global_batch_size is not None and not (
                isinstance(self.global_batch_size, int) and self.global_batch_size >= 1):
            raise ConfigError("config key 'distributed.global_batch_size': expected an "
                              f"integer >= 1 or null, got {self.global_batch_size!r}")
        if not (isinstance(self.timeout_s, int) and self.timeout_s >= 1):
            raise ConfigError("config key 'distributed.timeout_s': expected an integer >= 1, "
                              f"got {self.timeout_s!r}")

    def global_batch(self, batch_size: int, world_size: int, grad_accum: int) -> int:
        """batch_size x world_size x grad_accum: sequences per optimizer step; checked
        against `global_batch_size` when one is given."""
        g = batch_size * world_size * grad_accum
        if self.global_batch_size is not None and self.global_batch_size != g:
            raise ConfigError(
                f"config key 'distributed.global_batch_size': {self.global_batch_size}, but "
                f"train.batch_size {batch_size} x {world_size} processes x train.grad_accum "
                f"{grad_accum} = {g}")
        return g


@dataclass
class Dist:
    """Who this process is. Not distributed (`strategy == "none"`): rank 0 of 1, and every
    collective below is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reshard_after_forward: bool = True
    owns_group: bool = False  # we created the process group, so close() destroys it

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes run-dir files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.strategy != "none" and td.is_available() and td.is_initialized()

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """sum over ranks of x (in place, returned); x itself when not distributed."""
        if self.active:
            td.all_reduce(x, op=td.ReduceOp.SUM)
        return x

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (any picklable value: our own, never a file's)."""
        if not self.active:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def close(self, clean: bool = True) -> None:
        """Destroy the process group we created. `clean` (every rank got here without an
        error): first wait, through the rendezvous store, until every rank has finished
        its collectives (`_all_finished`). After an error the peers may never get here:
        no wait."""
        if self.owns_group and td.is_initialized():
            if clean and self.world_size > 1:
                self._all_finished()
            td.destroy_process_group()
        self.owns_group = False

    def __enter__(self) -> Dist:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """`with dist:` closes the group on the way out: after every rank's wait when the
        block ended normally, at once when it raised."""
        self.close(clean=exc_type is None)

    def _all_finished(self) -> None:
        """Return once every rank has finished its last collective. Through the store, not
        a collective: a gloo rank that tears its connections down while its last sends
        are still queued aborts ("terminate called without an active exception"; a
        barrier followed by teardown has that race too, pytorch/gloo#155). A rank writes
        its key after its last collective completed, and a collective completes only
        when the peers' data arrived, so once every key exists nothing is in flight.
        Then every rank but 0 says it has read them, and rank 0, which may host the
        store (mp.spawn; torchrun hosts it in its agent), leaves last."""
        store = td.distributed_c10d._get_default_store()
        ranks = range(self.world_size)
        store.set(f"lmforge/finished/{self.rank}", "1")
        store.wait([f"lmforge/finished/{r}" for r in ranks])
        if self.rank:
            store.set(f"lmforge/released/{self.rank}", "1")
        else:
            store.wait([f"lmforge/released/{r}" for r in ranks if r])


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun): usable
    before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def quiet_unless_main() -> dict:
    """`say=` for `latest_checkpoint` and the like: rank 0 speaks, the others do not."""
    return {} if launched_rank() == 0 else {"say": lambda message: None}


def _torchrun_env() -> dict[str, int] | None:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; None when not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return {k: int(os.environ.get(k, "0")) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun "
                          "sets them)") from None


def init(cfg: DistributedConfig, device_name: str) -> Dist:
    """This process's `Dist`; creates the process group only when training distributed.

    Without torchrun (and strategy auto / none) nothing happens: no process group, the
    device is `device_name` resolved as the trainer does.
    """
    from .trainer import resolve_device

    env = _torchrun_env()
    world = env["WORLD_SIZE"] if env else 1
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "ddp" if env and world > 1 else "none"
    if strategy not in ("none", "ddp", "fsdp"):  # DistributedConfig checked it already
        raise ConfigError(f"config key 'distributed.strategy': expected one of "
                          f"{', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "none" and env is None:
        raise ConfigError(f"distributed.strategy={strategy} needs torchrun: "
                          "torchrun --nproc_per_node N -m lmforge ...")
    if strategy == "none":
        if env and world > 1:
            raise ConfigError(
                f"distributed.strategy=none under torchrun with WORLD_SIZE={world}: every "
                "process would train a full copy into the same run dir; use ddp or fsdp")
        return Dist(device=resolve_device(device_name))
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"distributed.strategy={strategy}: {key} is not set "
                              "(torchrun sets it; launch with torchrun)")

    rank, local_rank = env["RANK"], env["LOCAL_RANK"]
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    backend = cfg.backend or ("nccl" if device.type == "cuda" else "gloo")
    owns = not td.is_initialized()
    if owns:
        bound = {"device_id": device} if device.type == "cuda" else {}  # NCCL: our GPU
        td.init_process_group(backend, rank=rank, world_size=world,
                              timeout=timedelta(seconds=cfg.timeout_s), **bound)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, strategy=strategy,
                device=device, reshard_after_forward=cfg.reshard_after_forward, owns_group=owns)


# ----------------------------------------------------------------------------------------
# The model


def blocks(model: nn.Module) -> list[nn.Module]:
    """Every Transformer block: the members of each ModuleList named `*blocks` (decoder
    and encoder `blocks`, seq2seq `encoder_blocks` / `decoder_blocks`; under a TaskModel's
    `backbone.` or ELECTRA's `generator.` / `discriminator.` alike). ALBERT's one shared
    block, run n_layer times per forward, stays in its parent's unit."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1].endswith("blocks"):
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            if not getattr(getattr(owner, "config", None), "share_layers", False):
                found.extend(module)
    return found


def _mp_policy(precision: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision not in dtypes:
        raise ConfigError(f"config key 'train.precision': expected one of fp32, bf16, fp16, "
                          f"got {precision!r}")
    if dtypes[precision] is None:
        return MixedPrecisionPolicy()
    # compute in the low precision, reduce gradients (and keep the sharded master
    # weights, the optimizer's) in fp32
    return MixedPrecisionPolicy(param_dtype=dtypes[precision], reduce_dtype=torch.float32)


def wrap(model: nn.Module, dist: Dist, precision: str = "fp32",
         find_unused_parameters: bool = False) -> nn.Module:
    """The model to train under `dist.strategy`, moved to `dist.device`.

    none: the model itself. ddp: DistributedDataParallel. fsdp: FSDP2 -- `fully_shard`
    on every Transformer block (its own unit: gathered for its forward / backward only),
    then on the root, which holds the rest: embeddings, final norm and the LM head --
    so a tied LM head and token embedding (GPT-2) stay one parameter in one unit; the
    root is not resharded between forward and backward.
    `precision` (train.precision) gives FSDP's mixed-precision policy.

    `find_unused_parameters` (DDP): pass True for a model holding parameters that get
    no gradient (a pooler or a head the loss does not read): plain DDP fails on those at
    its second step, and the flag makes it walk the autograd graph each step to mark
    them (a small cost, and a warning from torch when none are found). FSDP needs none.

    Build the optimizer AFTER wrap: FSDP replaces the parameters by sharded DTensors,
    and an optimizer built before would update tensors no longer in the model.
    """
    model = model.to(dist.device)
    if dist.strategy == "none":
        return model
    if dist.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.local_rank] if dist.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids,
                                       find_unused_parameters=find_unused_parameters)
    if dist.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        mp = _mp_policy(precision)
        for block in blocks(model):
            fully_shard(block, mp_policy=mp, reshard_after_forward=dist.reshard_after_forward)
        # The root stays gathered from forward to backward (torch's advice: backward needs
        # it first), so a loss that reads the LM head's weight after forward -- the fused
        # head + loss of objectives/clm.py -- sees the whole tensor, not a shard.
        fully_shard(model, mp_policy=mp, reshard_after_forward=False)
        # Objectives and generation call other entry points than forward (an encoder's
        # encode + its MLM head, a seq2seq's encode / decode, a task model's hidden): they
        # gather the root's weights as forward does
        from torch.distributed.fsdp import register_fsdp_forward_method

        for name in FORWARD_METHODS:
            if callable(getattr(model, name, None)):
                register_fsdp_forward_method(model, name)
        return model
    raise ConfigError(f"config key 'distributed.strategy': unknown strategy {dist.strategy!r}")


@contextlib.contextmanager
def grad_sync(model: nn.Module, dist: Dist, enabled: bool) -> Iterator[None]:
    """Around a micro-step's forward + backward: with `enabled=False` the gradients stay
    local (accumulated on this rank) instead of being reduced over the ranks; the last
    micro-step of an optimizer step runs with `enabled=True` and reduces the sum."""
    if dist.strategy == "ddp" and not enabled:
        with model.no_sync():
            yield
    elif dist.strategy == "fsdp" and not enabled:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Scale the gradients so that their global L2 norm is at most `max_norm`; return
    the norm before clipping, the same float on every rank.

    ||g|| = sqrt(sum_p ||g_p||^2) over all parameters; under FSDP each rank holds a shard
    of every g_p, and clip_grad_norm_ sums the shards' squares across ranks (DTensor)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP: the reduced global norm
        norm = norm.full_tensor()
    return float(norm)


# ----------------------------------------------------------------------------------------
# Weights and checkpoints


def _clean(key: str) -> str:
    """The single-process name: without DDP's leading `module.` and torch.compile's
    `_orig_mod.` (wherever a compiled submodule put it)."""
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    return ".".join(parts[1:] if parts[0] == "module" else parts)


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns that it 'assumes' one process even when told so (no_dist=True)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def plain(model: nn.Module) -> nn.Module:
    """The module behind DDP (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(model, nn.parallel.DistributedDataParallel) and inner is not None:
            model = inner
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def full_state_dict(model: nn.Module, dist: Dist) -> dict[str, Tensor] | None:
    """The whole (unsharded) model state on rank 0, on CPU, under the single-process
    names; None on the other ranks. Under FSDP every rank must call it (it gathers)."""
    if dist.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(plain(model), options=opts)  # gathers; rank 0 keeps it
    elif dist.is_main:
        state = {k: v.detach().cpu() for k, v in plain(model).state_dict().items()}
    else:
        state = None
    if not dist.is_main:
        return None
    return {_clean(k): v for k, v in state.items()}


def _metadata(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a sharded checkpoint (no .metadata)")
    try:
        return FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 -- a damaged file, whatever torch raises
        raise CheckpointError(f"{path}: cannot read the sharded checkpoint's metadata: "
                              f"{type(e).__name__}") from None


def _check_fits(path: Path, model_state: dict[str, Tensor]) -> None:
    """Refuse, in one line, a sharded checkpoint whose tensors differ from the model's."""
    stored = _metadata(path).state_dict_metadata
    for key, tensor in model_state.items():
        meta = stored.get(f"model.{key}")
        if meta is None:
            raise CheckpointError(f"checkpoint {path} is from another model: it has no "
                                  f"tensor {key}")
        shape = tuple(getattr(meta, "size", ()))
        if shape != tuple(tensor.shape):  # a DTensor's shape is the global one
            raise CheckpointError(f"checkpoint {path} is from another model: tensor {key} "
                                  f"has shape {list(shape)}, expected {list(tensor.shape)}")
    ours = {f"model.{k}" for k in model_state}
    extra = sorted(k for k in stored if k.startswith("model.") and k not in ours)
    if extra:
        raise CheckpointError(f"checkpoint {path} is from another model: tensor "
                              f"{extra[0][len('model.'):]} is not in this model")


def save_sharded(path: str | Path, model: nn.Module, optimizers: list, dist: Dist) -> Path:
    """Every rank writes its shard of the model and optimizer state (DCP) into a
    temporary folder next to `path`; rank 0 renames it into place when all are done."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    model_state, optim_state = get_state_dict(plain(model), optimizers)
    tmp = None
    if dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(dist.broadcast_object(tmp))
    try:
        with _quiet_single_process():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp),
                     no_dist=not dist.active)
        dist.barrier()  # every rank's part is on disk
        if dist.is_main:
            old = path.with_name(f".{path.name}.old")
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()  # nobody returns before PATH is in place
    finally:
        if dist.is_main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_sharded(path: str | Path, model: nn.Module, optimizers: list, dist: Dist) -> None:
    """Restore a `save_sharded` checkpoint's model and optimizer state, resharded to this
    run's ranks (any world size). Build the optimizers after `wrap`, before this."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    inner = plain(model)
    model_state, optim_state = get_state_dict(inner, optimizers)
    _check_fits(path, model_state)
    state = {"model": model_state, "optim": optim_state}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.active)
    set_state_dict(inner, optimizers, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def load_sharded_single(path: str | Path, model: nn.Module) -> nn.Module:
    """Load the weights of a sharded checkpoint (written by any number of ranks) into a
    plain model, in one process without a process group: for generation and export."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    state = plain(model).state_dict()
    _check_fits(path, state)
    box = {"model": state}
    with _quiet_single_process():
        dcp.load(box, checkpoint_id=str(path), no_dist=True)  # in place, into the tensors
    plain(model).load_state_dict(box["model"])
    return model
