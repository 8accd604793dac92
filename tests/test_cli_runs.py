"""pretrain -> generate / eval / convert through the real CLI, on one tiny run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.runs import load_run, perplexity

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.max_chars=60000", "tokenizer.vocab_size=320", "model.preset=tiny-gpt2",
    "model.max_seq_len=64", "train.seq_len=32", "train.batch_size=8", "train.max_steps=12",
    "train.warmup_steps=2", "train.eval_every=6", "train.eval_batches=2", "train.save_every=6",
    "train.log_every=3", "train.progress=false", "train.tensorboard=false",
    "sample.prompt=ROMEO:", "sample.max_new_tokens=8",
]


def lmforge(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def one_line_error(r, fragment):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    r = lmforge("pretrain", ROOT / "configs" / "gpt-shakespeare.yaml", f"run_dir={d}", *TINY)
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout and "sample:" in r.stdout
    return d


def test_generate_greedy_matches_the_python_api(run_dir):
    from lmforge.generation import generate

    r = lmforge("generate", run_dir, "--prompt", "KING:", "--temperature", "0",
                "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    run = load_run(run_dir)
    ids = torch.tensor([run.tokenizer.encode("KING:")])
    out = generate(run.model, ids, max_new_tokens=10)[0, ids.shape[1] :].tolist()
    new = out[: out.index(run.tokenizer.eos_id)] if run.tokenizer.eos_id in out else out
    assert r.stdout.rstrip("\n") == "KING:" + run.tokenizer.decode(new)


def test_generate_slides_past_the_context(run_dir):
    """A 64-token model asked for 100 new tokens: the window slides, one note on stderr."""
    from lmforge.generation import generate

    r = lmforge("generate", run_dir, "--prompt", "ROMEO:", "--temperature", "0",
                "--max-new-tokens", "100")
    assert r.returncode == 0, r.stderr
    run = load_run(run_dir)
    ids = torch.tensor([run.tokenizer.encode("ROMEO:")])
    out = generate(run.model, ids, max_new_tokens=100)[0, ids.shape[1] :].tolist()
    new = out[: out.index(run.tokenizer.eos_id)] if run.tokenizer.eos_id in out else out
    assert ids.shape[1] + len(new) > 64
    assert r.stdout.rstrip("\n") == "ROMEO:" + run.tokenizer.decode(new)
    assert r.stderr.splitlines() == ["generation passed the model's context of 64 tokens: "
                                     "from here each step sees the last 64 (sliding window)"]


def test_generate_batched_prompts_and_beams(run_dir):
    r = lmforge("generate", run_dir, "--prompt", "A", "Longer prompt here", "--num-beams", "3",
                "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    blocks = r.stdout.split("-" * 40 + "\n")
    assert blocks[0].startswith("A") and blocks[1].startswith("Longer prompt here")


def test_eval_perplexity_is_exp_of_mean_nll(run_dir, tmp_path):
    text = "O Romeo, Romeo, wherefore art thou Romeo?\n" * 20
    (tmp_path / "eval.txt").write_text(text)
    r = lmforge("eval", run_dir, "--data", tmp_path / "eval.txt", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    run = load_run(run_dir)
    ids = run.tokenizer.encode(text) + [run.tokenizer.eos_id]
    # independent computation: one window at a time, plain cross-entropy
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 32):
            x = torch.tensor([ids[s : s + 32]])
            y = torch.tensor(ids[s + 1 : s + 33])
            x = x[:, : len(y)]
            logits = run.model(input_ids=x).logits[0]
            nll += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            n += len(y)
    assert res["tokens"] == n == len(ids) - 1
    assert math.isclose(res["nll"], nll / n, rel_tol=1e-5)
    assert math.isclose(res["ppl"], math.exp(nll / n), rel_tol=1e-5)
    r = lmforge("eval", run_dir)  # the run's own val split
    assert r.returncode == 0 and "perplexity" in r.stdout, r.stderr


def test_sliding_window_perplexity_scores_each_token_once(run_dir):
    run = load_run(run_dir)
    ids = list(range(5, 105))
    seq_len, stride = 32, 8
    slide = perplexity(run.model, ids, seq_len=seq_len, stride=stride)
    # reference, token by token: target t is predicted from ids[s:t], where s is the start
    # of the first window (starts 0, 8, 16, ...; each ends at min(s + 32, 99)) reaching t
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            s = next(s for s in range(0, len(ids) - 1, stride) if min(s + seq_len, 99) >= t)
            logits = run.model(input_ids=torch.tensor([ids[s:t]])).logits[0, -1]
            nll -= torch.log_softmax(logits, -1)[ids[t]].item()
    assert slide["tokens"] == 99
    assert math.isclose(slide["nll"], nll / 99, rel_tol=1e-5)
    full = perplexity(run.model, ids, seq_len=seq_len)
    assert full["tokens"] == 99 and not math.isclose(full["nll"], slide["nll"], rel_tol=1e-6)


@pytest.fixture(scope="module")
def gpt2_run_dir(tmp_path_factory):
    """The speedrun's GPT-2 baseline: a recipe transformers has a class for."""
    d = tmp_path_factory.mktemp("cli-gpt2") / "run"
    r = lmforge("pretrain", ROOT / "configs" / "speedrun" / "baseline.yaml", f"run_dir={d}",
                *TINY)
    assert r.returncode == 0, r.stderr
    return d


def test_convert_round_trip_through_transformers(gpt2_run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    run_dir, hf_dir, back = gpt2_run_dir, tmp_path / "hf", tmp_path / "back"
    r = lmforge("convert", "--to-hf", run_dir, "--out", hf_dir)
    assert r.returncode == 0, r.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    run = load_run(run_dir)
    x = torch.randint(0, run.tokenizer.vocab_size, (2, 20))
    with torch.no_grad():
        diff = (hf(input_ids=x).logits - run.model(input_ids=x).logits).abs().max().item()
    assert diff < 1e-4
    r = lmforge("convert", "--from-hf", hf_dir, "--out", back)
    assert r.returncode == 0, r.stderr
    again = load_run(back)
    for (k, a), (_, b) in zip(run.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.tokenizer.encode("Romeo and Juliet") == run.tokenizer.encode("Romeo and Juliet")


def test_bad_input(run_dir, tmp_path):
    one_line_error(lmforge("generate", tmp_path, "--prompt", "x"), "not a run directory")
    one_line_error(lmforge("generate", run_dir, "--prompt", ""), "prompt is empty")
    one_line_error(lmforge("generate", run_dir, "--prompt", "word " * 80), "context")
    one_line_error(lmforge("generate", run_dir, "--prompt", "x", "--step", "999"),
                   "no complete checkpoint step-999")
    one_line_error(lmforge("pretrain", ROOT / "configs" / "gpt-shakespeare.yaml",
                           f"run_dir={run_dir}", *TINY), "already holds a run")
    one_line_error(lmforge("pretrain", ROOT / "configs" / "gpt-shakespeare.yaml",
                           "train.lrr=1"), "unknown config key 'train.lrr'")
    one_line_error(lmforge("pretrain", ROOT / "configs" / "gpt-shakespeare.yaml",
                           "train.max_steps=many"), "train.max_steps")
    one_line_error(lmforge("convert", "--to-hf", run_dir, "--out", run_dir), "not empty")
    # make run's recipe (QK-norm, ReLU^2) has no transformers class: refused, nothing written
    one_line_error(lmforge("convert", "--to-hf", run_dir, "--out", tmp_path / "hf"), "qk_norm")
    assert not (tmp_path / "hf").exists()
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    one_line_error(lmforge("pretrain", empty / "config.yaml", f"run_dir={empty}", "--resume"),
                   "nothing to resume")
