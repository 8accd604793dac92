"""The CLI as a user meets it: real subprocesses, exit codes, one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lmforge(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )


def assert_one_line_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_datasets_lists_every_builtin():
    r = lmforge("datasets")
    assert r.returncode == 0, r.stderr
    for name in ("shakespeare", "wiki-sample", "rotten-tomatoes", "wnut16", "chatterbot",
                 "gpt2-bpe", "minilm"):
        assert name in r.stdout
    assert "not installed" not in r.stdout
    assert "public domain" in r.stdout


def test_help_on_every_command():
    for cmd in (["--help"], ["datasets", "--help"], ["tokenizer", "train", "--help"],
                ["tokenize", "--help"]):
        r = lmforge(*cmd)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr)


def test_usage_errors_are_one_line():
    assert_one_line_error(lmforge("no-such-command"), "invalid choice")
    assert_one_line_error(lmforge("tokenizer", "train", "--vocab-size", "many"), "invalid int")


def test_tokenizer_and_shards_end_to_end(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"{i:02d}.txt").write_text(f"Document {i}: the quick brown fox jumps. " * 20)
    tok = tmp_path / "tok.json"
    r = lmforge("tokenizer", "train", "--corpus", corpus, "--vocab-size", "300", "--out", tok,
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert tok.is_file() and "300-token" in r.stdout
    r = lmforge("tokenize", "--corpus", corpus, "--tokenizer", tok, "--out", tmp_path / "sh")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sh" / "meta.json").is_file()
    assert (tmp_path / "sh" / "train-00000.bin").is_file()


def test_bad_input_exits_2_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "tok.json"
    assert_one_line_error(
        lmforge("tokenizer", "train", "--corpus", empty, "--out", out), "no text files"
    )
    assert_one_line_error(
        lmforge("tokenizer", "train", "--corpus", tmp_path / "missing.txt", "--out", out),
        "neither a built-in corpus",
    )
    (tmp_path / "a.txt").write_text("some text here")
    assert_one_line_error(
        lmforge("tokenizer", "train", "--corpus", tmp_path / "a.txt", "--vocab-size", "100",
                "--out", out),
        "vocab",
    )
    assert not out.exists()
    (tmp_path / "not-a-tokenizer.json").write_text('{"model": {"type": "WordPiece"}}')
    assert_one_line_error(
        lmforge("tokenize", "--corpus", tmp_path / "a.txt", "--tokenizer",
                tmp_path / "not-a-tokenizer.json", "--out", tmp_path / "sh"),
    )
    assert_one_line_error(
        lmforge("tokenize", "--corpus", tmp_path / "a.txt", "--tokenizer",
                tmp_path / "nope.json", "--out", tmp_path / "sh"),
    )
    assert not (tmp_path / "sh").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_folders_are_read_whole_and_skipped_files_are_named(tmp_path):
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    for i in range(6):
        (src / "lib" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 30)
    (src / "Apache-2.0").write_text("Apache License, Version 2.0. " * 40)
    (src / "MPL-2.0").write_text("Mozilla Public License Version 2.0. " * 40)
    (src / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (src / ".hidden").write_text("never read")
    tok = tmp_path / "tok.json"
    r = lmforge("tokenizer", "train", "--corpus", src, "--vocab-size", "300", "--out", tok,
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert "on 8 documents" in r.stdout
    assert r.stderr.splitlines() == [
        f"{src}: read 8 files (8 documents); skipped 2: 1 binary (NUL bytes), 1 hidden "
        "(--verbose lists them)"
    ]
    r = lmforge("tokenize", "--corpus", src, "--tokenizer", tok, "--out", tmp_path / "sh",
                "--verbose")
    assert r.returncode == 0, r.stderr
    assert "tokenized 8 documents" in r.stdout
    assert r.stderr.splitlines()[1:] == ["  skipped .hidden: hidden",
                                         "  skipped logo.png: binary (NUL bytes)"]


def test_version():
    from lmforge import __version__

    r = lmforge("--version")
    assert r.returncode == 0 and r.stdout == f"lmforge {__version__}\n", r.stderr


def test_recipes_ship_in_the_package_and_resolve_by_name(tmp_path, monkeypatch, capsys):
    import re

    from lmforge import recipes
    from lmforge.cli import main

    shipped = sorted(p.relative_to(recipes.FOLDER) for p in recipes.FOLDER.rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(ROOT / "configs")
                             for p in (ROOT / "configs").rglob("*.yaml"))
    monkeypatch.chdir(tmp_path)  # outside a clone: no configs/ here
    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"configs/[\w/.-]+\.yaml", readme))
    assert len(paths) > 10
    for path in paths:  # every path the README writes works as it stands
        assert recipes.resolve(path) == recipes.FOLDER / path.removeprefix("configs/")
    assert recipes.resolve("gpt-shakespeare") == recipes.FOLDER / "gpt-shakespeare.yaml"
    assert recipes.resolve("wnut16-bert") == recipes.FOLDER / "finetune" / "wnut16-bert.yaml"
    assert recipes.resolve("tiny/gpt2") == recipes.FOLDER / "tiny" / "gpt2.yaml"
    (tmp_path / "gpt-shakespeare").write_text("a user's file wins over a recipe name")
    assert recipes.resolve("gpt-shakespeare") == Path("gpt-shakespeare")

    assert main(["recipes", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [
        p.with_suffix("").as_posix() for p in shipped]
    assert listed[0].split(maxsplit=1)[1].startswith("ALBERT pretraining")

    gpt2 = (ROOT / "configs" / "tiny" / "gpt2.yaml").read_text()
    assert main(["recipes", "cp", "tiny/gpt2", "mine"]) == 0  # no folder named mine: a file
    assert (tmp_path / "mine").read_text() == gpt2
    (tmp_path / "mine").unlink()
    (tmp_path / "mine").mkdir()
    capsys.readouterr()
    assert main(["recipes", "cp", "tiny/gpt2", "mine"]) == 0
    assert (tmp_path / "mine" / "gpt2.yaml").read_text() == gpt2
    assert main(["recipes", "cp", "tiny/gpt2", "mine"]) == 2
    assert main(["recipes", "cp", "wnut16-bertt", "x.yaml"]) == 2
    assert main(["pretrain", "gpt-shakespear"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "lmforge: error: mine/gpt2.yaml exists; choose another name",
        "lmforge: error: no recipe named 'wnut16-bertt'; did you mean 'finetune/wnut16-bert'?",
        "lmforge: error: gpt-shakespear: no such file, nor a recipe of that name; "
        "did you mean 'gpt-shakespeare'?",
    ]
    assert not (tmp_path / "x.yaml").exists()
