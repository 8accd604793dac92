import hashlib
import json

import numpy as np
import pytest
import torch

from lmforge.errors import CheckpointError
from lmforge.models import build, presets
from lmforge.training.checkpoint import (
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    load_weights,
    save_checkpoint,
)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build(presets.get("tiny-gpt2", **kw))


def state():
    return {"step": 3, "rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            "sampler": {"epoch": np.int64(2), "position": 5}, "betas": (0.9, 0.95)}


def test_roundtrip_is_bitwise_and_keeps_tied_weights_tied(tmp_path):
    src, dst = tiny(0), tiny(1)
    path = save_checkpoint(tmp_path, 3, src, state(), {"note": "x"})
    assert path == tmp_path / "step-3"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    meta = json.loads((path / "meta.json").read_text())
    files = meta.pop("files")
    assert meta == {"step": 3, "note": "x"}
    for name in ("model.safetensors", "state.pt"):  # the record a load checks
        data = (path / name).read_bytes()
        assert files[name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    load_weights(path, dst)
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), n
    assert dst.lm_head.weight is dst.tok_embed.weight


def test_training_state_loads_with_weights_only_and_numpy_comes_back(tmp_path):
    s = state()
    path = save_checkpoint(tmp_path, 3, tiny(), s)
    back = load_state(path)
    assert back["step"] == 3 and back["betas"] == (0.9, 0.95)
    assert back["sampler"] == {"epoch": 2, "position": 5}
    assert isinstance(back["rng"]["numpy"][1], np.ndarray)
    assert np.array_equal(back["rng"]["numpy"][1], s["rng"]["numpy"][1])
    assert torch.equal(back["rng"]["torch"], s["rng"]["torch"])


class Foreign:  # a pickled class: torch.load(weights_only=True) must refuse it
    pass


def test_a_state_file_with_arbitrary_objects_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, tiny(), {"step": 1})
    torch.save({"step": 1, "evil": Foreign()}, path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt is damaged \([\d,]+ bytes, "):
        load_state(path)
    meta = json.loads((path / "meta.json").read_text())  # as an earlier version wrote it
    del meta["files"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="holds Python objects .* refusing to unpickle"):
        load_state(path)


def test_keep_last_and_latest(tmp_path):
    model = tiny()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step * 10, model, {"step": step}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [40, 50]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-50"


def test_incomplete_and_temporary_folders_are_not_checkpoints(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path, 5, model, {"step": 5})
    partial = tmp_path / ".step-9.abc.tmp"  # what a kill during a write leaves
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    broken = tmp_path / "step-8"  # copied by hand, state missing
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-5"
    clean_partial(tmp_path)
    assert not partial.exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 -- lambdas cannot be pickled
        save_checkpoint(tmp_path, 7, tiny(), {"step": 7, "bad": lambda: 0})
    assert list(tmp_path.iterdir()) == []


def test_non_finite_weights_are_never_saved(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save_checkpoint(tmp_path, 1, model, {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_another_vocab_or_architecture_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, tiny(), {"step": 1})
    with pytest.raises(CheckpointError, match=r"weight.*\[256, 64\].*\[300, 64\]"):
        load_weights(path, tiny(vocab_size=300))
    with pytest.raises(CheckpointError, match="blocks.1.*another architecture"):
        load_weights(path, tiny(n_layer=1))
    with pytest.raises(CheckpointError, match="lacks tensors"):
        load_weights(path, tiny(n_layer=3))
