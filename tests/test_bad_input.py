"""Malformed input across the CLI, one table: each case is one line on stderr naming the
problem, exit code 2, no traceback, and no file created or changed anywhere.

The cases run in-process through `lmforge.cli.main` (a subprocess per case would take a
minute); a few run as real subprocesses for the no-traceback check. docs/errors.md lists
every case with its message; a test keeps the two in step.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.models import build, presets
from lmforge.runs import write_run
from lmforge.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the question. " * 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder of good and bad inputs, and a tiny run directory, made once."""
    w = tmp_path_factory.mktemp("bad")
    tok = Tokenizer.train([TEXT], vocab_size=300, special_tokens=["<|endoftext|>"],
                          progress=False)
    tok.save(w / "tok.json")
    Tokenizer.train([TEXT], vocab_size=300, special_tokens=["<|endoftext|>", "[PAD]", "[SEP]",
                    "[MASK]"], progress=False).save(w / "no_cls.json")  # an encoder's, no [CLS]
    Tokenizer.train([TEXT], vocab_size=300, special_tokens=["<|endoftext|>", "[PAD]", "[CLS]",
                    "[SEP]", "[MASK]"], progress=False).save(w / "enc.json")  # an encoder's
    write_run(build(presets.get("tiny-xlnet", vocab_size=300)), Tokenizer.load(w / "enc.json"),
              w / "run_xlnet")
    config = presets.get("tiny-gpt2")
    import dataclasses

    write_run(build(dataclasses.replace(config, vocab_size=300, max_seq_len=32)), tok, w / "run")
    cfg = w / "run" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("seq_len: 256", "seq_len: 16"))
    (w / "a.txt").write_text(TEXT)
    (w / "empty.txt").write_text("  \n")
    (w / "empty_dir").mkdir()
    (w / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    (w / "bin.csv").write_bytes(b"text\n\0\x01\x02\x03garbage\n")
    (w / "cols.csv").write_text("id,body\n1,one\n")
    (w / "broken.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    (w / "list.jsonl").write_text('["not", "an", "object"]\n')
    (w / "nofield.jsonl").write_text('{"body": "no text field"}\n')
    (w / "wordpiece.json").write_text('{"model": {"type": "WordPiece", "vocab": {}}}')
    (w / "garbage.json").write_text("{this is not json")
    (w / "notok.json").write_text(json.dumps({"hello": "world"}))
    recipe = (ROOT / "configs" / "tiny" / "gpt2.yaml").read_text()
    (w / "python_tag.yaml").write_text(recipe + "extra: !!python/object/apply:os.system ['true']\n")
    (w / "syntax.yaml").write_text("run_dir: [unclosed\n")
    (w / "list.yaml").write_text("- a\n- b\n")
    (w / "hf_pickle").mkdir()
    (w / "hf_pickle" / "config.json").write_text(json.dumps(
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 300,
         "n_positions": 32, "n_embd": 64, "n_layer": 2, "n_head": 4}))
    (w / "hf_pickle" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    from lmforge.interop.hf import save_hf  # DeBERTa-v2 folders: SentencePiece only, xlarge

    save_hf(build(presets.get("tiny-deberta", vocab_size=300)), w / "hf_deberta_spm")
    (w / "hf_deberta_spm" / "spm.model").write_bytes(b"\n\x0esentencepiece")
    (w / "hf_deberta_conv").mkdir()
    (w / "hf_deberta_conv" / "config.json").write_text(json.dumps(
        {"model_type": "deberta-v2", "relative_attention": True, "conv_kernel_size": 3}))
    # damaged copies of the run: truncated weights, a pickle as state, another
    # architecture's config, a tokenizer larger than the model's vocabulary
    _copy_run(w / "run", w / "run_truncated")
    weights = next((w / "run_truncated").rglob("model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    _copy_run(w / "run", w / "run_llama")
    cfg = (w / "run_llama" / "config.yaml").read_text()
    (w / "run_llama" / "config.yaml").write_text(cfg.replace("family: gpt2", "family: llama")
                                                 .replace("norm: layernorm", "norm: rmsnorm"))
    (w / "run_empty" / "checkpoints").mkdir(parents=True)  # a run that never saved
    (w / "run_empty" / "config.yaml").write_text(
        (w / "run" / "config.yaml").read_text().replace(str(w / "run"), str(w / "run_empty")))
    _copy_run(w / "run", w / "run_vocab")
    big = Tokenizer.train([TEXT + " ".join(map(str, range(2000)))], vocab_size=400,
                          special_tokens=["<|endoftext|>"], progress=False)
    big.save(w / "run_vocab" / "tokenizer.json")
    return w


def _copy_run(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)
    cfg = dst / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(src), str(dst)))


# (name, argv with {w} for the world folder, the fragment the one line must contain)
CASES = [
    # -- configs
    ("unknown key, did you mean", ["pretrain", "tiny/gpt2", "train.lrr=1"],
     "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ("wrong type", ["pretrain", "tiny/gpt2", "train.max_steps=many"], "train.max_steps"),
    ("negative size", ["pretrain", "tiny/gpt2", "model.n_layer=-2"], "model.n_layer"),
    ("zero size", ["pretrain", "tiny/gpt2", "train.batch_size=0"], "train.batch_size"),
    ("n_head does not divide d_model", ["pretrain", "tiny/gpt2", "model.d_model=100",
                                        "model.n_head=3"], "n_head"),
    ("seq_len beyond the context", ["pretrain", "tiny/gpt2", "train.seq_len=100000"],
     "seq_len"),
    ("!!python tag", ["pretrain", "{w}/python_tag.yaml"], "python_tag.yaml"),
    ("YAML syntax", ["pretrain", "{w}/syntax.yaml"], "syntax.yaml"),
    ("YAML not a mapping", ["pretrain", "{w}/list.yaml"], "list.yaml"),
    ("config is a folder", ["pretrain", "{w}/empty_dir"], "is a folder"),
    ("no such recipe", ["pretrain", "gpt-shakespear"], "did you mean 'gpt-shakespeare'?"),
    ("fine-tuning recipe to pretrain", ["pretrain", "finetune/wnut16-bert"], "unknown config key"),
    ("unknown task", ["finetune", "wnut16-bert", "task=nope"], "nope"),
    # -- data
    ("corpus missing", ["tokenizer", "train", "--corpus", "{w}/missing.txt", "--out",
                        "{w}/out.json"], "missing.txt"),
    ("empty file", ["tokenizer", "train", "--corpus", "{w}/empty.txt", "--out", "{w}/out.json"],
     "every document is empty"),
    ("empty folder", ["tokenizer", "train", "--corpus", "{w}/empty_dir", "--out",
                      "{w}/out.json"], "no text files under"),
    ("binary file", ["tokenizer", "train", "--corpus", "{w}/img.png", "--out", "{w}/out.json"],
     "img.png is not text: binary"),
    ("binary CSV", ["tokenize", "--corpus", "{w}/bin.csv", "--tokenizer", "{w}/tok.json",
                    "--out", "{w}/shards"], "bin.csv is not text: binary"),
    ("CSV without the column", ["tokenize", "--corpus", "{w}/cols.csv", "--tokenizer",
                                "{w}/tok.json", "--out", "{w}/shards"], "no column 'text'"),
    ("broken JSON line", ["tokenize", "--corpus", "{w}/broken.jsonl", "--tokenizer",
                          "{w}/tok.json", "--out", "{w}/shards"], "broken.jsonl:2: not valid JSON"),
    ("JSON line not an object", ["tokenize", "--corpus", "{w}/list.jsonl", "--tokenizer",
                                 "{w}/tok.json", "--out", "{w}/shards"], "list.jsonl:1"),
    ("JSON line without the field", ["tokenize", "--corpus", "{w}/nofield.jsonl", "--tokenizer",
                                     "{w}/tok.json", "--out", "{w}/shards"], "no field 'text'"),
    ("eval data missing", ["eval", "{w}/run", "--data", "{w}/missing.txt"], "missing.txt"),
    ("vocabulary smaller than the bytes", ["tokenizer", "train", "--corpus", "{w}/a.txt",
                                           "--vocab-size", "100", "--out", "{w}/out.json"],
     "vocab"),
    # -- files and folders swapped
    ("tokenizer is a folder", ["tokenize", "--corpus", "{w}/a.txt", "--tokenizer",
                               "{w}/empty_dir", "--out", "{w}/shards"], "empty_dir"),
    ("shards out is a file", ["tokenize", "--corpus", "{w}/a.txt", "--tokenizer", "{w}/tok.json",
                              "--out", "{w}/a.txt"], "a.txt"),
    ("tokenizer out under a file", ["tokenizer", "train", "--corpus", "{w}/a.txt",
                                    "--vocab-size", "280", "--out", "{w}/a.txt/tok.json"],
     "a.txt"),
    ("run dir is a file", ["generate", "{w}/a.txt", "--prompt", "x"], "not a run directory"),
    ("not a run directory", ["generate", "{w}/empty_dir", "--prompt", "x"],
     "not a run directory"),
    # -- checkpoints
    ("truncated weights", ["generate", "{w}/run_truncated", "--prompt", "To be"],
     "model.safetensors"),
    ("another architecture", ["generate", "{w}/run_llama", "--prompt", "To be"], "run_llama"),
    ("another vocabulary size", ["generate", "{w}/run_vocab", "--prompt", "To be"],
     "400 tokens but the model only 300"),
    ("no such step", ["generate", "{w}/run", "--prompt", "x", "--step", "999"], "step-999"),
    ("pickled HF checkpoint", ["convert", "--from-hf", "{w}/hf_pickle", "--out", "{w}/imported"],
     "only safetensors checkpoints are read"),
    ("HF folder without config.json", ["convert", "--from-hf", "{w}/empty_dir", "--out",
                                       "{w}/imported"], "no config.json"),
    ("DeBERTa-v2 with a convolution layer", ["convert", "--from-hf", "{w}/hf_deberta_conv",
                                             "--out", "{w}/imported"],
     "DeBERTa-v2 conv_kernel_size=3 is not supported"),
    ("SentencePiece-only DeBERTa checkpoint", ["convert", "--from-hf", "{w}/hf_deberta_spm",
                                               "--out", "{w}/imported"],
     "its tokenizer is SentencePiece only (spm.model, no tokenizer.json)"),
    ("convert into a full folder", ["convert", "--to-hf", "{w}/run", "--out", "{w}/run"],
     "not empty"),
    ("convert both ways at once", ["convert", "--from-hf", "{w}/run", "--to-hf", "{w}/run",
                                   "--out", "{w}/x"], "exactly one"),
    # -- tokenizers
    ("tokenizer of another format", ["tokenize", "--corpus", "{w}/a.txt", "--tokenizer",
                                     "{w}/wordpiece.json", "--out", "{w}/shards"], "wordpiece"),
    ("tokenizer not JSON", ["tokenize", "--corpus", "{w}/a.txt", "--tokenizer",
                            "{w}/garbage.json", "--out", "{w}/shards"], "garbage.json"),
    ("tokenizer JSON of something else", ["tokenize", "--corpus", "{w}/a.txt", "--tokenizer",
                                          "{w}/notok.json", "--out", "{w}/shards"], "notok.json"),
    ("empty special token", ["tokenizer", "train", "--corpus", "{w}/a.txt", "--vocab-size",
                             "280", "--special", "", "--out", "{w}/out.json"], "special"),
    ("tokenizer without [CLS] / [SEP]", ["finetune", "rotten-tomatoes-bert-scratch",
                                        "tokenizer={w}/tok.json"], "needs [CLS] and [SEP]"),
    ("COCO-LM without [CLS]", ["pretrain", "tiny/coco", "run_dir={w}/coco_run",
                               "tokenizer.path={w}/no_cls.json"], "objective 'coco' needs [CLS]"),
    ("XLNet sequence shorter than its prediction span",
     ["pretrain", "tiny/xlnet", "run_dir={w}/xlnet_run", "tokenizer.path={w}/enc.json",
      "train.seq_len=7"], "7 leaves 5 text tokens (after [SEP] [CLS]), shorter than the "
     "prediction span"),
    # -- generation
    ("negative temperature", ["generate", "{w}/run", "--prompt", "x", "--temperature", "-1"],
     "--temperature"),
    ("top-p above 1", ["generate", "{w}/run", "--prompt", "x", "--top-p", "2"], "--top-p"),
    ("negative top-k", ["generate", "{w}/run", "--prompt", "x", "--top-k", "-5"], "--top-k"),
    ("no new tokens", ["generate", "{w}/run", "--prompt", "x", "--max-new-tokens", "0"],
     "--max-new-tokens"),
    ("empty prompt", ["generate", "{w}/run", "--prompt", ""], "prompt is empty"),
    ("generate with an encoder", ["generate", "{w}/run_xlnet", "--prompt", "To be"],
     "is an encoder (xlnet): it scores text but does not generate it"),
    ("prompt longer than the context", ["generate", "{w}/run", "--prompt", "word " * 100],
     "longer than the model's context of 32 tokens"),
    # -- eval
    ("--split on a pretraining run", ["eval", "{w}/run", "--split", "val"], "--split"),
    ("--task on a pretraining run", ["eval", "{w}/run", "--task", "wnut16"],
     "not a fine-tuned run"),
    ("--seq-len beyond the context", ["eval", "{w}/run", "--data", "{w}/a.txt", "--seq-len",
                                      "64"], "--seq-len 64"),
    ("report of a pretraining run", ["report", "{w}/run"], "run"),
    ("resume with nothing to resume", ["pretrain", "{w}/run_empty/config.yaml", "--resume"],
     "nothing to resume"),
    # -- several processes
    ("fsdp without torchrun", ["pretrain", "tiny/gpt2", "distributed.strategy=fsdp"],
     "needs torchrun"),
    ("unknown strategy", ["pretrain", "tiny/gpt2", "distributed.strategy=zero3"],
     "expected one of auto, none, ddp, fsdp"),
    ("global batch that does not fit", ["pretrain", "tiny/gpt2",
                                        "distributed.global_batch_size=7"],
     "train.batch_size 8 x 1 processes x train.grad_accum 1 = 8"),
    # -- parameter-efficient fine-tuning (MiniLM, the built-in real weights)
    ("LoRA rank 0", ["finetune", "rotten-tomatoes-minilm-lora", "peft.r=0"],
     "config key 'peft.r': expected an integer >= 1, got 0"),
    ("LoRA rank larger than the layer", ["finetune", "rotten-tomatoes-minilm-lora",
                                         "peft.r=500"], "is larger than the layer it adapts"),
    ("LoRA target the model lacks", ["finetune", "rotten-tomatoes-minilm-lora",
                                     "peft.targets=[gate]"],
     "'gate' matches no layer of this model (it has: q, k, v, out, up, down)"),
    ("virtual tokens past the context", ["finetune", "rotten-tomatoes-minilm-prompt",
                                         "peft.num_virtual_tokens=600"],
     "600 virtual tokens leave no room in the model's context of 512 positions"),
    # -- experiments (lmforge experiment NAME)
    ("unknown experiment", ["experiment", "nope"],
     "unknown experiment 'nope' (experiments: dynamic-masking, electra-vs-mlm, "
     "encoder-vs-decoder, encoders, lora-vs-full, pretrain-helps, scaling)"),
    ("unknown experiment scale", ["experiment", "scaling", "scale=huge"],
     "scale=huge: experiment scaling has no such scale (scales: default, test)"),
    ("experiment jobs", ["experiment", "scaling", "jobs=0"],
     "jobs=0: expected an integer >= 1 (runs at a time)"),
    ("experiment task the architecture cannot do", ["experiment", "pretrain-helps",
                                                    "tasks=[debian-summaries]"],
     "row 'encoder pretrained' (encoder), task debian-summaries: task type 'seq2seq' is text "
     "generation, which an encoder cannot do"),
]


def _snapshot(root: Path) -> dict:
    """Every path under root, with size and mtime for files (what a failed command must
    not touch; a folder's own mtime may move: a writability probe comes and goes)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("name,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(name, argv, fragment, world, capsys, monkeypatch):
    monkeypatch.chdir(world)  # recipes write runs/...: nothing may appear here
    before = _snapshot(world)
    rc = main([a.replace("{w}", str(world)) for a in argv])
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert rc == 2, (rc, out.err)
    assert len(lines) == 1 and lines[0].startswith("lmforge: error: "), out.err
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert _snapshot(world) == before


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_docs_list_every_case_with_its_message():
    """docs/errors.md has a row per case: its name and the fragment of the message."""
    doc = (ROOT / "docs" / "errors.md").read_text()
    rows = {m[0].strip(): m[1] for m in re.findall(r"^\| ([^|]+) \| `[^`]*` \| (.*) \|$", doc,
                                                     re.M)}
    for name, _, fragment in CASES:
        assert name in rows, name
        assert fragment.lower() in rows[name].lower(), (name, rows[name])


@pytest.mark.parametrize("argv", [
    ["pretrain", "tiny/gpt2", "model.n_layer=-2"],
    ["tokenizer", "train", "--corpus", "{w}/img.png", "--out", "{w}/out.json"],
    ["generate", "{w}/run_truncated", "--prompt", "To be"],
    ["generate", "{w}/run", "--prompt", "x", "--temperature", "-1"],
])
def test_no_traceback_in_a_real_process(argv, world):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "lmforge",
                        *[a.replace("{w}", str(world)) for a in argv]],
                       capture_output=True, text=True, env=env, cwd=world, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "lmforge", "--debug",
                        *[a.replace("{w}", str(world)) for a in argv]],
                       capture_output=True, text=True, env=env, cwd=world, timeout=300)
    assert "Traceback" in r.stderr  # --debug shows where
