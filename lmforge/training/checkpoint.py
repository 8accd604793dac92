"""Checkpoints: atomic, verified on load, the last K kept.

    RUN_DIR/checkpoints/step-N/
      model.safetensors    the weights (tied tensors stored once; clean keys, no
                           torch.compile `_orig_mod.` prefix)
      state.pt             training state: optimizer, schedule, RNG states (python,
                           numpy, torch), sampler position, step, tokens seen --
                           tensors and plain Python values only, read back with
                           torch.load(weights_only=True)
      meta.json            step, tokens, the model config (to refuse a mismatch), and
                           "files": each file's size and sha256, written last

A checkpoint is written into a hidden temporary folder next to its final place and
renamed when complete, so a kill mid-write leaves only a `.step-N.PID.*.tmp` folder, which
is ignored and cleaned up at the next start (`clean_partial`). Old checkpoints are pruned
by renaming them to a hidden `.deleting` name first, so a half-deleted folder is never
taken for a checkpoint.

Files change after they are written (a disk error, a copy cut short, a hand edit): each
load checks the sizes and checksums of meta.json, and a file that differs raises one
line, "checkpoint FILE is damaged (...)". `latest_checkpoint` (what a resume starts
from) returns the newest checkpoint that verifies and says which newer ones it skipped.
Checkpoints of earlier versions (no "files" record) must at least parse.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from ..atomic import atomic_dir, clean_temps, remove_dir
from ..errors import CheckpointError

WEIGHTS, STATE, META = "model.safetensors", "state.pt", "meta.json"
SHARDED = "sharded"  # FSDP: a torch.distributed.checkpoint folder in place of WEIGHTS
FILES = "files"  # meta.json: {name: {"bytes": size, "sha256": hex digest}}
_STEP_DIR = re.compile(r"^step-(\d+)$")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile (whose state-dict keys get `_orig_mod.`)."""
    return getattr(model, "_orig_mod", model)


# ---------------------------------------------------------------- finding checkpoints


def step_dirs(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-N folder under `ckpt_dir`, complete or not, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def _has_files(path: Path) -> bool:
    weights = (path / WEIGHTS).is_file() or (path / SHARDED).is_dir()
    return weights and all((path / f).is_file() for f in (STATE, META))


def is_complete(path: str | Path) -> bool:
    """All files of checkpoint `path` are there, at the sizes they were written with
    (cheap: nothing is read but meta.json; `verify` also checks the contents)."""
    path = Path(path)
    if not _has_files(path):
        return False
    try:
        records = read_meta(path).get(FILES) or {}
        return all((path / name).stat().st_size == r["bytes"] for name, r in records.items())
    except (CheckpointError, OSError):  # OSError: being pruned while we look
        return False


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under `ckpt_dir`, oldest first."""
    return [(s, p) for s, p in step_dirs(ckpt_dir) if is_complete(p)]


def print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_said: set[str] = set()  # a resume looks twice (the recipe, then the trainer): say it once


def latest_checkpoint(ckpt_dir: str | Path,
                      say: Callable[[str], None] = print_stderr) -> Path | None:
    """The newest checkpoint under `ckpt_dir` whose files verify (what a resume starts
    from); None if there is none at all.

    Newer ones that are damaged are skipped, and `say` is told so in one line; if every
    checkpoint is damaged, CheckpointError names the newest one's damaged file.
    """
    skipped: list[str] = []
    for _, path in reversed(step_dirs(ckpt_dir)):
        problem = damage(path)
        if problem is None:
            if skipped:
                message = (f"lmforge: {'; '.join(skipped)}: skipped; using {path.name}, the "
                           "newest intact checkpoint")
                if message not in _said:
                    _said.add(message)
                    say(message)
            return path
        skipped.append(problem)
    if skipped:
        more = f" (and {len(skipped) - 1} older checkpoints are damaged too)" if skipped[1:] else ""
        raise CheckpointError(f"{skipped[0]}{more}: no intact checkpoint in {ckpt_dir}")
    return None


def clean_partial(ckpt_dir: str | Path) -> None:
    """Remove what a writer killed mid-way left behind: its `.step-N.*.tmp` folders (and
    `.deleting` ones of a prune), and step-N folders that lost files in a prune by an
    earlier version (incomplete, and older than a complete checkpoint). The run dir
    above gets the same for its files (`.config.yaml.PID.*.tmp`, `.tokenizer.json...`)."""
    ckpt_dir = Path(ckpt_dir)
    clean_temps(ckpt_dir)
    clean_temps(ckpt_dir.parent)
    steps = step_dirs(ckpt_dir)
    whole = [s for s, p in steps if _has_files(p)]
    for step, path in steps:
        if whole and step < whole[-1] and not _has_files(path):
            remove_dir(path)


# ---------------------------------------------------------------- verifying


def _digest(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_digests: dict[tuple, str] = {}  # (path, size, mtime, inode) -> sha256: a file hashed once


def _cached_digest(file: Path) -> str:
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _digests:
        _digests[key] = _digest(file)
    return _digests[key]


def _record(file: Path) -> dict:
    return {"bytes": file.stat().st_size, "sha256": _digest(file)}


def _not_a_state(file: Path) -> str | None:
    """torch.save writes a zip archive; anything else is refused before torch sees it
    (torch would try it as a pickle)."""
    with open(file, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return None
    if head[:1] == b"\x80":  # pickle protocol 2+
        return (f"checkpoint {file} is a Python pickle, not a training state written by "
                "lmforge: refusing to unpickle it")
    return f"checkpoint {file} is damaged (not a training state written by lmforge)"


def _file_damage(file: Path, record: dict | None) -> str | None:
    if not file.is_file():
        return f"checkpoint {file} is missing"
    size = file.stat().st_size
    if size == 0:
        return f"checkpoint {file} is damaged (empty)"
    if file.name == STATE and (why := _not_a_state(file)):
        return why
    if record is not None:
        if size != record["bytes"]:
            return f"checkpoint {file} is damaged ({size:,} bytes, {record['bytes']:,} written)"
        if _cached_digest(file) != record["sha256"]:
            return f"checkpoint {file} is damaged (its sha256 differs from the one written)"
        return None
    # written by an earlier version, without a record: the file must at least parse
    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        elif file.name == STATE and (bad := zipfile.ZipFile(file).testzip()) is not None:
            return f"checkpoint {file} is damaged (CRC error in {bad})"
    except Exception as e:  # noqa: BLE001 -- SafetensorError, BadZipFile, OSError ...
        return f"checkpoint {file} is damaged ({_first_line(e)})"
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def damage(path: str | Path, names: list[str] | None = None) -> str | None:
    """What is wrong with checkpoint folder `path` (its files `names`, default all), in
    one line naming the file; None if it verifies: sizes and sha256 as written."""
    path = Path(path)
    try:
        records = read_meta(path).get(FILES)
    except CheckpointError as e:
        return str(e)
    if names is None:
        sharded = (path / SHARDED).is_dir() and not (path / WEIGHTS).exists()
        names = sorted({STATE, *(records or {})} | (set() if sharded else {WEIGHTS}))
    for name in names:
        problem = _file_damage(path / name, records.get(name) if records else None)
        if problem:
            return problem
    return None


def verify(path: str | Path, names: list[str] | None = None) -> None:
    """Raise CheckpointError if checkpoint `path` (or its files `names`) is damaged."""
    problem = damage(path, names)
    if problem:
        raise CheckpointError(problem)


# ---------------------------------------------------------------- writing


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model: nn.Module,
    state: dict,
    meta: dict | None = None,
    keep_last: int | None = None,
    extra: dict[str, nn.Module] | None = None,
) -> Path:
    """Write checkpoints/step-`step` atomically; then keep only the newest `keep_last`.

    `extra`: other trained modules saved beside the model as NAME.safetensors (ELECTRA's
    generator), so that model.safetensors holds exactly the run's model. A full disk
    raises DiskFullError, and the checkpoints already written stay as they were.
    """
    model = unwrap(model)
    if not all_finite(model):
        raise CheckpointError(
            f"refusing to write checkpoint step-{step}: the weights hold NaN or inf"
        )
    weights = {WEIGHTS: model, **{f"{n}.safetensors": unwrap(m) for n, m in (extra or {}).items()}}
    return _save(ckpt_dir, step, weights, state, meta, keep_last)


def save_state_dict_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict,
    meta: dict | None = None,
    keep_last: int | None = None,
) -> Path:
    """`save_checkpoint` from a plain state dict of the model (e.g. FSDP's gathered full
    weights) instead of a module."""
    if not all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point()):
        raise CheckpointError(
            f"refusing to write checkpoint step-{step}: the weights hold NaN or inf"
        )
    return _save(ckpt_dir, step, {WEIGHTS: weights}, state, meta, keep_last)


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, nn.Module):  # tied weights once
        return sum(_tensor_bytes(t) for t in {t.data_ptr(): t for t in
                                              obj.state_dict().values()}.values())
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _save(ckpt_dir, step, weights: dict, state: dict, meta: dict | None,
          keep_last: int | None) -> Path:
    path = Path(ckpt_dir) / f"step-{step}"
    state = to_safe(state)
    with atomic_dir(path, needed=_tensor_bytes(weights) + _tensor_bytes(state)) as tmp:
        for name, part in weights.items():  # the step lives in meta.json: same run, same bytes
            _write_weights(part, tmp / name)
        files = {name: _record(tmp / name) for name in weights}  # read back once
        files[STATE] = _write_state(state, tmp / STATE)  # (hashed as it is written)
        _write_json({"step": step, **(meta or {}), FILES: files}, tmp / META)  # last
    if keep_last is not None:
        prune(ckpt_dir, step, keep_last)
    return path


def finish_sharded_checkpoint(tmp: Path, ckpt_dir: str | Path, step: int, state: dict,
                              meta: dict | None = None, keep_last: int | None = None) -> Path:
    """Complete an FSDP checkpoint whose shards every rank wrote into `tmp`/sharded
    (rank 0 calls this): the training state and meta.json (with every shard file's size
    and sha256), then the rename into step-`step` and the pruning."""
    tmp, path = Path(tmp), Path(ckpt_dir) / f"step-{step}"
    _write_state(to_safe(state), tmp / STATE)
    names = [STATE, *sorted(str(f.relative_to(tmp)) for f in (tmp / SHARDED).rglob("*")
                            if f.is_file())]
    _write_json({"step": step, **(meta or {}), FILES: {n: _record(tmp / n) for n in names}},
                tmp / META)  # last
    if path.exists():
        remove_dir(path)
    tmp.rename(path)
    if keep_last is not None:
        prune(ckpt_dir, step, keep_last)
    return path


def prune(ckpt_dir: str | Path, step: int, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints up to `step`, the one just written.

    Folders of later steps are stale (a resume went back past them, because they were
    damaged): they are removed too, as the run rewrites them."""
    kept = [p for s, p in list_checkpoints(ckpt_dir) if s <= step][-keep_last:]
    for s, p in step_dirs(ckpt_dir):
        if p not in kept and (s > step or is_complete(p)):
            remove_dir(p)


def _write_weights(part: nn.Module | dict, file: Path) -> None:
    if isinstance(part, nn.Module):
        save_model(part, str(file))
        return
    # a plain state dict: tensors that share memory (tied weights) are stored apart
    seen: set[tuple] = set()
    tensors = {}
    for k, t in part.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        tensors[k] = t.detach().clone().contiguous() if key in seen else t.detach().contiguous()
        seen.add(key)
    save_file(tensors, str(file))


class _Writer(io.RawIOBase):
    """A file for torch.save that hashes what it writes and keeps the OSError it met:
    torch reports a failed write (ENOSPC) only as "unexpected pos N vs M"."""

    def __init__(self, f):
        super().__init__()
        self.f, self.error = f, None
        self.sha256, self.bytes = hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        try:
            n = self.f.write(b)
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(memoryview(b)[:n])
        self.bytes += n
        return n

    def flush(self) -> None:
        self.f.flush()


def _write_state(state: dict, file: Path) -> dict:
    """torch.save `state` to `file`; returns its record (bytes, sha256)."""
    with open(file, "wb") as f:
        w = _Writer(f)
        try:
            torch.save(state, w)
        except RuntimeError:
            if w.error is not None:
                raise w.error from None
            raise
    return {"bytes": w.bytes, "sha256": w.sha256.hexdigest()}


def _write_json(obj: dict, file: Path) -> None:
    file.write_text(json.dumps(obj, indent=2))


# ---------------------------------------------------------------- reading


def read_meta(path: str | Path) -> dict:
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {file} is missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {file} is damaged ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {file} is damaged (not a JSON object)")
    return meta


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load `path`/model.safetensors (or a .safetensors file) into `model`, strictly.

    The file is verified against its checkpoint's record first (a damaged file raises
    CheckpointError naming it). A checkpoint from another architecture or vocabulary
    raises CheckpointError naming the first tensor that does not fit.
    """
    path = Path(path)
    if path.is_dir() and not (path / WEIGHTS).exists() and (path / SHARDED).is_dir():
        from .distributed import load_sharded_single  # an FSDP checkpoint, into one process

        verify(path)
        load_sharded_single(path / SHARDED, model)
        return
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no weights at {file}")
    if (file.parent / META).is_file():  # a file of a checkpoint folder: check it
        verify(file.parent, [file.name])
    model = unwrap(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(file), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 -- SafetensorError: not a safetensors file
        raise CheckpointError(f"checkpoint {file} is damaged ({_first_line(e)})") from None
    for key, shape in stored.items():
        if key not in expected:
            raise CheckpointError(
                f"checkpoint {file} has tensor '{key}' that this model lacks: it was "
                "saved from another architecture"
            )
        if expected[key] != shape:
            raise CheckpointError(
                f"checkpoint {file}: tensor '{key}' has shape {list(shape)} but this model "
                f"expects {list(expected[key])} (another architecture or vocab size)"
            )
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {file} does not fit the model: {e}") from None
    except Exception as e:  # noqa: BLE001 -- SafetensorError: the data is cut short
        raise CheckpointError(f"checkpoint {file} is damaged ({_first_line(e)})") from None
    # Tied tensors are stored once; the other name is "missing" but shares its storage.
    if missing:
        raise CheckpointError(
            f"checkpoint {file} lacks tensors this model needs: {', '.join(sorted(missing)[:5])}"
        )


def load_state(path: str | Path) -> dict:
    """The training state of checkpoint `path` (our own file; weights_only=True), verified
    first; a pickle posing as one is refused before torch sees it."""
    file = Path(path) / STATE
    if not file.is_file():
        raise CheckpointError(f"no training state at {file}")
    if (file.parent / META).is_file():
        verify(file.parent, [STATE])
    elif why := _not_a_state(file):
        raise CheckpointError(why)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never
        raise CheckpointError(
            f"checkpoint {file} holds Python objects other than tensors and plain values: "
            "refusing to unpickle it"
        ) from None
    except Exception as e:  # noqa: BLE001 -- a corrupt file
        raise CheckpointError(f"checkpoint {file} is damaged ({_first_line(e)})") from None
    return from_safe(state)


# numpy values are not allowed by torch.load(weights_only=True): store them as tensors
# under a marker and turn them back on load.
_NP = "__numpy__"


def to_safe(obj):
    if isinstance(obj, np.ndarray):
        return {_NP: torch.from_numpy(obj.copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def from_safe(obj):
    if isinstance(obj, dict):
        if set(obj) == {_NP}:
            return obj[_NP].numpy()
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_safe(v) for v in obj)
    return obj
