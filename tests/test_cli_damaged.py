"""Damaged checkpoints and copied runs, as the CLI meets them (issue 12 §3, §4): a
truncated, empty or garbage weights / state file is one line naming it (exit 2) for
generate, eval, convert --to-hf and --resume; a resume falls back to the newest intact
checkpoint and ends bitwise where a straight run ends; a copied run resumes itself."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import dump_yaml, from_dict
from lmforge.pretrain import pretrain
from lmforge.training import RunConfig

STEPS = 6


def run_config(run_dir) -> RunConfig:
    return from_dict(RunConfig, {
        "run_dir": str(run_dir),
        "seed": 5,
        "data": {"corpus": "shakespeare", "max_chars": 30_000, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny-gpt2", "max_seq_len": 32, "dropout": 0.1},
        "train": {"batch_size": 4, "seq_len": 32, "max_steps": STEPS, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 0, "save_every": 3, "keep_last": 2,
                  "log_every": 3, "threads": 1, "progress": False, "tensorboard": False,
                  "peak_flops": 1e11},
        "sample": {"prompt": ""},
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run with checkpoints step-3 and step-6."""
    cfg = run_config(tmp_path_factory.mktemp("straight") / "run")
    pretrain(cfg)
    return Path(cfg.run_dir)


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of the run whose config names the copy (the copied-run test below leaves
    it naming the original)."""
    shutil.copytree(run, dest)
    cfg = dest / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(run), str(dest)))
    return dest


def damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    file.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "garbage": b"\x17not a checkpoint\x00" * 64}[how])


def one_line(capsys, rc, *fragments) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


COMMANDS = {
    "generate": lambda d, out: ["generate", str(d), "--prompt", "KING:", "--max-new-tokens", "2"],
    "eval": lambda d, out: ["eval", str(d), "--max-tokens", "200"],
    "convert": lambda d, out: ["convert", "--to-hf", str(d), "--out", str(out)],
}


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_damaged_weights_are_one_line_naming_the_file(run, tmp_path, capsys, command, how):
    d = copy_run(run, tmp_path / "run")
    file = d / "checkpoints" / "step-6" / "model.safetensors"
    damage(file, how)
    capsys.readouterr()
    rc = main(COMMANDS[command](d, tmp_path / "hf"))
    one_line(capsys, rc, str(file), "is damaged")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("file,how", [("model.safetensors", "truncated"),
                                      ("model.safetensors", "garbage"),
                                      ("state.pt", "truncated"), ("state.pt", "empty"),
                                      ("state.pt", "garbage"), ("meta.json", "garbage")])
def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_so(run, tmp_path, capsys,
                                                                       file, how):
    d = copy_run(run, tmp_path / "run")
    bad = d / "checkpoints" / "step-6" / file
    damage(bad, how)
    capsys.readouterr()
    assert main(["pretrain", str(d / "config.yaml"), "--resume"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    said = [line for line in err if "is damaged" in line]
    assert len(said) == 1, err  # said once, though the recipe and the trainer both look
    assert str(bad) in said[0] and "using step-3, the newest intact checkpoint" in said[0]
    # steps 4..6 trained again from step-3: bitwise the straight run's weights
    ours = (d / "checkpoints" / "step-6" / "model.safetensors").read_bytes()
    assert ours == (run / "checkpoints" / "step-6" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_resume_with_only_damaged_checkpoints_is_one_line(run, tmp_path, capsys, how):
    d = copy_run(run, tmp_path / "run")
    shutil.rmtree(d / "checkpoints" / "step-3")
    bad = d / "checkpoints" / "step-6" / "state.pt"
    damage(bad, how)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    capsys.readouterr()
    rc = main(["pretrain", str(d / "config.yaml"), "train.max_steps=9", "--resume"])
    one_line(capsys, rc, str(bad), "is damaged", "no intact checkpoint")
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_a_pickle_posing_as_the_state_is_refused_in_our_own_words(run, tmp_path, capsys):
    d = copy_run(run, tmp_path / "run")
    shutil.rmtree(d / "checkpoints" / "step-3")
    bad = d / "checkpoints" / "step-6" / "state.pt"
    bad.write_bytes(pickle.dumps({"step": 6, "note": "os.system could be here"}))
    capsys.readouterr()
    rc = main(["pretrain", str(d / "config.yaml"), "train.max_steps=9", "--resume"])
    line = one_line(capsys, rc, str(bad), "is a Python pickle", "refusing to unpickle it")
    assert "weights_only" not in line


def test_a_copied_run_resumes_itself_and_leaves_the_original_alone(run, tmp_path, capsys):
    original = run
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in original.rglob("*")
              if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)  # config.yaml still names the original
    capsys.readouterr()
    assert main(["pretrain", str(copy / "config.yaml"), "train.max_steps=9", "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"names run_dir {original}, another folder: using the run dir it is in, {copy}" \
        in err, err
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in original.rglob("*")
             if p.is_file()}
    assert after == before
    assert (copy / "checkpoints" / "step-9" / "model.safetensors").is_file()
    saved = (copy / "config.yaml").read_text()  # the copy's config names the copy now
    assert f"run_dir: {copy}\n" in saved and str(original) not in saved


def test_run_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    file = tmp_path / "run"
    file.write_text("not a folder")
    dump_yaml(run_config(file), tmp_path / "cfg.yaml")
    rc = main(["pretrain", str(tmp_path / "cfg.yaml")])
    one_line(capsys, rc, f"run_dir {file} is a file, not a folder")
    rc = main(["tokenize", "--tokenizer", str(tmp_path / "none.json"), "--out", str(file)])
    one_line(capsys, rc, f"--out {file} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "run"]


def test_in_a_real_process_there_is_no_traceback_and_no_torch_warning(run, tmp_path):
    """In-process tests cannot see what torch prints through `warnings` (pytest records
    it): the pickle and a truncated weights file, through `python -m lmforge`."""
    root = Path(__file__).resolve().parents[1]
    d = copy_run(run, tmp_path / "run")
    shutil.rmtree(d / "checkpoints" / "step-3")
    state = d / "checkpoints" / "step-6" / "state.pt"
    state.write_bytes(pickle.dumps({"step": 6}, protocol=4))
    weights = d / "checkpoints" / "step-6" / "model.safetensors"
    env = {**os.environ, "PYTHONPATH": str(root)}
    for args, file in [(["pretrain", d / "config.yaml", "train.max_steps=9", "--resume"], state),
                       (["generate", d, "--prompt", "KING:"], weights)]:
        if file == weights:
            damage(weights, "truncated")
        r = subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and str(file) in r.stderr, r.stderr
