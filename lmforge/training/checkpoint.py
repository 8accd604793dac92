"""Checkpoints: atomic, complete-or-absent, the last K kept.

    RUN_DIR/checkpoints/step-N/
      model.safetensors    the weights (tied tensors stored once; clean keys, no
                           torch.compile `_orig_mod.` prefix)
      state.pt             training state: optimizer, schedule, RNG states (python,
                           numpy, torch), sampler position, step, tokens seen --
                           tensors and plain Python values only, read back with
                           torch.load(weights_only=True)
      meta.json            step, tokens, the model config (to refuse a mismatch)

A checkpoint is written into a hidden temporary folder next to its final place and
renamed when complete, so a `step-N` folder always holds a whole checkpoint; a run
killed mid-write leaves only a `.step-N.*.tmp` folder, which is ignored and cleaned up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ..atomic import atomic_dir
from ..errors import CheckpointError

WEIGHTS, STATE, META = "model.safetensors", "state.pt", "meta.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile (whose state-dict keys get `_orig_mod.`)."""
    return getattr(model, "_orig_mod", model)


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (WEIGHTS, STATE, META))


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under `ckpt_dir`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def clean_partial(ckpt_dir: str | Path) -> None:
    """Remove temporary folders left by a writer that was killed."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".step-*"):
            shutil.rmtree(p, ignore_errors=True)


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
    generator), so that model.safetensors holds exactly the run's model.
    """
    model = unwrap(model)
    if not all_finite(model):
        raise CheckpointError(
            f"refusing to write checkpoint step-{step}: the weights hold NaN or inf"
        )
    path = Path(ckpt_dir) / f"step-{step}"
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS))  # step lives in meta.json: same run, same bytes
        for name, part in (extra or {}).items():
            save_model(unwrap(part), str(tmp / f"{name}.safetensors"))
        torch.save(to_safe(state), tmp / STATE)
        (tmp / META).write_text(json.dumps({"step": step, **(meta or {})}, indent=2))
    if keep_last is not None:
        for _, old in list_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META).read_text())


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load `path`/model.safetensors (or a .safetensors file) into `model`, strictly.

    A checkpoint from another architecture or vocabulary raises CheckpointError naming
    the first tensor that does not fit.
    """
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no weights at {file}")
    model = unwrap(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(file), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
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
    # Tied tensors are stored once; the other name is "missing" but shares its storage.
    if missing:
        raise CheckpointError(
            f"checkpoint {file} lacks tensors this model needs: {', '.join(sorted(missing)[:5])}"
        )


def load_state(path: str | Path) -> dict:
    """The training state of checkpoint `path` (our own file; weights_only=True)."""
    file = Path(path) / STATE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no training state at {file}") from None
    except Exception as e:  # a corrupt or foreign file
        raise CheckpointError(f"cannot read training state {file}: {e}") from None
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
