"""Checkpoints under faults (issue 12 §3-§5): damaged files, leftovers of killed writers,
a full disk at each write (injected, and a real 3 MB tmpfs), a read-only disk.

The tmpfs tests mount real file systems (`mount -t tmpfs`), which needs privileges: they
skip when mounting is not permitted, except the read-only test, which then simulates
EROFS at file creation instead (the `read_only` fixture)."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import lmforge.atomic as atomic
import lmforge.training.checkpoint as ck
from lmforge.config import dump_yaml, from_dict
from lmforge.data.shards import read_meta as read_shard_meta
from lmforge.errors import CheckpointError, DiskError, DiskFullError
from lmforge.models import build, presets
from lmforge.training import RunConfig
from lmforge.training.checkpoint import (
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    load_weights,
    save_checkpoint,
    verify,
)


def tiny(seed=0):
    torch.manual_seed(seed)
    return build(presets.get("tiny-gpt2"))


def adam_like(model) -> dict:
    """A training state the size of Adam's (two moments per weight)."""
    return {"step": 1, "optim": {n: [torch.randn_like(p), torch.rand_like(p)]
                                 for n, p in model.named_parameters()}}


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize("name", ["model.safetensors", "state.pt", "generator.safetensors"])
@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "one byte flipped"])
def test_a_damaged_file_is_named_and_the_newest_intact_checkpoint_is_used(tmp_path, name, how):
    model, gen = tiny(0), tiny(1)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, {"step": step}, extra={"generator": gen})
    file = tmp_path / "step-2" / name
    data = file.read_bytes()
    file.write_bytes({"truncated": data[:-100], "empty": b"", "garbage": os.urandom(len(data)),
                      "one byte flipped": data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]}[how])
    with pytest.raises(CheckpointError, match=f"checkpoint {file} is damaged"):
        verify(tmp_path / "step-2")
    said = []
    assert latest_checkpoint(tmp_path, say=said.append) == tmp_path / "step-1"
    assert len(said) == 1 and f"checkpoint {file} is damaged" in said[0]
    assert said[0].endswith("skipped; using step-1, the newest intact checkpoint")
    loader = load_state if name == "state.pt" else (
        lambda p: load_weights(p if name == "model.safetensors" else p / name, tiny(3)))
    with pytest.raises(CheckpointError, match=f"checkpoint {file} is damaged"):
        loader(tmp_path / "step-2")


def test_every_checkpoint_damaged_is_an_error_naming_the_newest(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, tiny(), {"step": step})
        (tmp_path / f"step-{step}" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"step-2/model.safetensors is damaged \(empty\) "
                                              r"\(and 1 older checkpoints are damaged too\)"):
        latest_checkpoint(tmp_path)


def test_checkpoints_of_earlier_versions_load_and_their_damage_is_still_found(tmp_path):
    model = tiny(0)
    for step in (1, 2):
        path = save_checkpoint(tmp_path, step, model, {"step": step, "x": torch.arange(9)})
        meta = json.loads((path / "meta.json").read_text())
        del meta["files"]  # as written before the record existed
        (path / "meta.json").write_text(json.dumps(meta))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2"
    other = tiny(1)
    load_weights(tmp_path / "step-2", other)
    assert same_weights(model, other)
    assert torch.equal(load_state(tmp_path / "step-2")["x"], torch.arange(9))
    weights = tmp_path / "step-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # no record: the parse finds it
    assert latest_checkpoint(tmp_path, say=lambda m: None) == tmp_path / "step-1"
    state = tmp_path / "step-1" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the zip's CRC finds it
    state.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint {state} is damaged"):
        load_state(tmp_path / "step-1")


# ---------------------------------------------------------------- leftovers


def test_what_killed_writers_left_is_cleaned_and_what_live_ones_write_is_not(tmp_path):
    run, tmp_path = tmp_path, tmp_path / "checkpoints"
    model = tiny()
    for step in (2, 3):
        save_checkpoint(tmp_path, step, model, {"step": step})
    half_pruned = tmp_path / "step-1"  # an earlier version's prune, killed: state.pt left
    half_pruned.mkdir()
    (half_pruned / "state.pt").write_bytes(b"PK\x03\x04left")
    newer_incomplete = tmp_path / "step-9"  # not older than a complete one: kept (reported)
    newer_incomplete.mkdir()
    (newer_incomplete / "model.safetensors").write_bytes(b"x")
    dead, live = dead_pid(), subprocess.Popen(["sleep", "60"])
    try:
        leftovers = [tmp_path / f".step-4.{dead}.k2j4x.tmp",
                     tmp_path / f".step-1.{dead}.ab12.deleting",
                     tmp_path / ".step-4.abc.tmp"]  # (no pid: an earlier version's name)
        in_flight = tmp_path / f".step-4.{live.pid}.zz9.tmp"
        for p in [*leftovers, in_flight]:
            p.mkdir()
            (p / "model.safetensors").write_bytes(b"half")
        (run / f".config.yaml.{dead}.x7.tmp").write_text("half")  # in the run dir above
        (run / f".metrics.jsonl.{live.pid}.y8.tmp").write_text("being written")
        clean_partial(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["step-2", "step-3", "step-9", in_flight.name])
        assert sorted(p.name for p in run.iterdir()) == [
            f".metrics.jsonl.{live.pid}.y8.tmp", "checkpoints"]
    finally:
        live.kill()
        live.wait()
    clean_partial(tmp_path)  # its writer has gone now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-3", "step-9"]
    said = []
    assert latest_checkpoint(tmp_path, say=said.append) == tmp_path / "step-3"
    assert "step-9/meta.json is missing" in said[0]


def test_shard_leftovers_are_cleaned_and_a_replace_cut_in_half_is_undone(tmp_path):
    shards = tmp_path / "shards"
    dead = dead_pid()
    half = tmp_path / f".shards.{dead}.q1w2e3.tmp"  # a write killed mid-way
    half.mkdir()
    (half / "train-00000.bin").write_bytes(b"\0" * 10)
    aside = tmp_path / f".shards.{dead}.0a1b2c3d.old"  # killed between atomic_dir's renames
    aside.mkdir()
    (aside / "meta.json").write_text(json.dumps({"format": 1}))
    other = tmp_path / f".tokenizer.json.{dead}.x1.tmp"  # not the shards': left alone here
    other.write_text("{}")
    assert read_shard_meta(shards) == {"format": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shards", other.name])


def test_prune_renames_first_and_drops_stale_later_steps(tmp_path, monkeypatch):
    model = tiny()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=2)
    stale = tmp_path / "step-5"  # damaged; the run went back to step-3 and is at 4 now
    shutil.copytree(tmp_path / "step-3", stale)
    (stale / "state.pt").write_bytes(b"")
    removed = []
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(atomic.shutil, "rmtree",
                        lambda p, **kw: (removed.append(Path(p).name), real_rmtree(p, **kw)))
    save_checkpoint(tmp_path, 4, model, {"step": 4}, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3", "step-4"]
    # the folders were renamed to hidden .deleting names before anything was deleted
    assert sorted(n.split(".")[1] for n in removed) == ["step-2", "step-5"]
    assert all(n.startswith(".") and n.endswith(".deleting") for n in removed)


# ---------------------------------------------------------------- a full disk


WRITES = ["temp folder", "model.safetensors", "generator.safetensors", "state.pt",
          "meta.json", "rename"]


def fill_at(monkeypatch, k: int) -> list[str]:
    """Make the k-th write of a checkpoint fail as a full disk does (after writing part
    of the file where there is one); returns the writes made so far."""
    done: list[str] = []

    def hit(what: str) -> bool:
        done.append(what)
        return len(done) == k

    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_mkdtemp, real_save_model = atomic.tempfile.mkdtemp, ck.save_model
    real_replace, real_json = atomic.os.replace, ck._write_json

    def mkdtemp(*a, **kw):
        if hit("temp folder"):
            raise enospc
        return real_mkdtemp(*a, **kw)

    def save_model(model, filename, **kw):
        if hit(Path(filename).name):
            Path(filename).write_bytes(b"\0" * 1000)
            raise SafetensorError("Error while serializing: I/O error: No space left on "
                                  "device (os error 28)")  # safetensors' words for it
        return real_save_model(model, filename, **kw)

    class Fills:  # state.pt: the disk fills after 4 KB, mid-way through torch.save
        def __init__(self, f):
            self.f, self.left = f, 4096

        def write(self, b):
            if len(b) > self.left:
                raise enospc
            self.left -= len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open

    def open_(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        return Fills(f) if mode == "wb" and hit(Path(file).name) else f

    def write_json(obj, file):
        if hit("meta.json"):
            file.write_text("{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_json(obj, file)

    def replace(src, dst):
        if str(src).endswith(".tmp") and hit("rename"):
            raise enospc
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(ck, "save_model", save_model)
    monkeypatch.setattr(ck, "open", open_, raising=False)
    monkeypatch.setattr(ck, "_write_json", write_json)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return done


@pytest.mark.parametrize("k", range(1, len(WRITES) + 2))
def test_enospc_at_each_write_is_one_clear_error_and_the_last_checkpoint_survives(
        tmp_path, monkeypatch, k):
    model, gen = tiny(0), tiny(1)
    state = adam_like(model)
    save_checkpoint(tmp_path, 1, model, state, extra={"generator": gen}, keep_last=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step-1").iterdir()}
    newer, newer_gen = tiny(2), tiny(3)
    done = fill_at(monkeypatch, k)
    if k > len(WRITES):  # past the last write: the checkpoint is written
        save_checkpoint(tmp_path, 2, newer, adam_like(newer), extra={"generator": newer_gen})
        assert done == WRITES
        monkeypatch.undo()
        verify(tmp_path / "step-2")
        return
    with pytest.raises(DiskFullError) as e:
        save_checkpoint(tmp_path, 2, newer, adam_like(newer), extra={"generator": newer_gen})
    assert done[-1] == WRITES[k - 1]
    message = str(e.value)
    assert message.startswith(f"the disk is full: cannot write {tmp_path / 'step-2'} "
                              "(needs about 2.0 MB, ")  # 2 x 0.5 MB weights, 1 MB state
    assert "\n" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # no temp left over
    assert {p.name: p.read_bytes() for p in (tmp_path / "step-1").iterdir()} == before
    assert latest_checkpoint(tmp_path) == tmp_path / "step-1"
    back = tiny(5)
    load_weights(tmp_path / "step-1", back)
    assert same_weights(back, model)
    assert torch.equal(load_state(tmp_path / "step-1")["optim"]["tok_embed.weight"][0],
                       state["optim"]["tok_embed.weight"][0])


def mounts(*args) -> bool:
    """`mount -t tmpfs ARGS`: True if it worked (it needs privileges)."""
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", *args[:-1], "tmpfs", args[-1]],
                           capture_output=True)
    except OSError:  # no mount command
        return False
    return r.returncode == 0


@pytest.fixture
def mount(tmp_path):
    """mount(size, read_only) -> a fresh tmpfs under tmp_path (unmounted afterwards);
    skips the test when mounting is not permitted."""
    mounted = []

    def make(size: str = "3m", read_only: bool = False) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        if not mounts("-o", opts, str(point)):
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.parametrize("free,during", [(200_000, "model.safetensors"), (700_000, "state.pt")])
def test_a_real_full_disk_during_a_checkpoint(mount, monkeypatch, free, during):
    disk = mount("3m")
    model = tiny(0)
    save_checkpoint(disk / "ckpt", 1, model, {"step": 1}, keep_last=2)
    before = {p.name: p.read_bytes() for p in (disk / "ckpt" / "step-1").iterdir()}
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - free))
    seen = []
    real = ck._write_state
    monkeypatch.setattr(ck, "_write_state", lambda s, f: (seen.append("state.pt"), real(s, f)))
    with pytest.raises(DiskFullError, match=r"^the disk is full: cannot write .*step-2 "
                                            r"\(needs about 1.5 MB, 0\.[0-9] MB free\)"):
        save_checkpoint(disk / "ckpt", 2, tiny(1), adam_like(model), keep_last=2)
    monkeypatch.undo()
    # 200 KB free: the weights (0.5 MB) fail first; 700 KB: they fit, the state does not
    assert seen == ([] if during == "model.safetensors" else ["state.pt"])
    assert sorted(p.name for p in (disk / "ckpt").iterdir()) == ["step-1"]
    assert {p.name: p.read_bytes() for p in (disk / "ckpt" / "step-1").iterdir()} == before
    verify(disk / "ckpt" / "step-1")


def test_a_real_full_disk_through_the_cli_is_one_line_and_keeps_the_last_checkpoint(mount):
    """A tiny GPT-2 run on a 3 MB disk: checkpoints of 1.5 MB (with Adam's moments) every
    2 steps, two kept: the disk fills during the third."""
    disk = mount("3m")
    root = Path(__file__).resolve().parents[2]
    run = disk / "run"
    cfg = from_dict(RunConfig, {
        "run_dir": str(run), "seed": 1,
        "data": {"corpus": "shakespeare", "max_chars": 30_000, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny-gpt2", "max_seq_len": 32},
        "train": {"batch_size": 4, "seq_len": 32, "max_steps": 6, "save_every": 2,
                  "keep_last": 2, "eval_every": 0, "log_every": 2, "threads": 1,
                  "progress": False, "tensorboard": False, "peak_flops": 1e11},
        "sample": {"prompt": ""},
    })
    dump_yaml(cfg, disk.parent / "cfg.yaml")
    r = subprocess.run([sys.executable, "-m", "lmforge", "pretrain",
                        str(disk.parent / "cfg.yaml")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lmforge: error: the disk is full: cannot write {run}/checkpoints/"
                           "step-6 (needs about 1.5 MB, "), r.stderr
    assert "Traceback" not in r.stderr and "unexpected pos" not in r.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]
    for step in (2, 4):
        verify(run / "checkpoints" / f"step-{step}")


# ---------------------------------------------------------------- a read-only disk


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A read-only folder: a real read-only tmpfs where mounting is permitted, else a
    folder whose file creation raises EROFS (root ignores chmod, so chmod cannot stand
    in for it)."""
    point = tmp_path / "ro"
    point.mkdir()
    if mounts("-o", "size=1m,ro", str(point)):
        yield point
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
        return
    erofs = OSError(errno.EROFS, os.strerror(errno.EROFS))

    def refuse(real):
        def make(*a, dir=None, **kw):
            if dir is not None and Path(dir).resolve().is_relative_to(point.resolve()):
                raise erofs
            return real(*a, dir=dir, **kw)
        return make

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse(atomic.tempfile.mkstemp))
    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse(atomic.tempfile.mkdtemp))
    yield point


def test_a_read_only_run_dir_is_refused_before_any_work(read_only, tmp_path, capsys):
    from lmforge.atomic import check_run_dir
    from lmforge.cli import main

    with pytest.raises(DiskError, match=f"run_dir {read_only / 'run'} is not writable: "
                                        "read-only file system"):
        check_run_dir(read_only / "run")
    with pytest.raises(DiskError, match="read-only file system"):
        save_checkpoint(read_only, 1, tiny(), {"step": 1})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"run_dir: {read_only / 'run'}\n")
    capsys.readouterr()
    assert main(["pretrain", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err == (f"lmforge: error: run_dir {read_only / 'run'} is not writable: read-only "
                   f"file system ({read_only})\n")
