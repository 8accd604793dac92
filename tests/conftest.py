"""Test-wide settings: one torch thread per pytest worker (`make test` runs two workers
on two cores; more threads would only fight over the cores). Shared fixtures below."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory):
    """Path of a run directory converted from the real all-MiniLM-L6-v2 (built-in
    `minilm`) by `lmforge convert --from-hf`: BERT weights (6 layers, 384 wide, no MLM
    head) and its WordPiece tokenizer; `lmforge.runs.load_run(path)` reads it. Made once
    per session (per worker); skips when the registry package is not installed."""
    from lmforge.cli import main
    from lmforge.data import registry
    from lmforge.errors import DataError

    try:
        files = registry.files("minilm")
    except DataError as e:
        pytest.skip(str(e))
    root = next(f for f in files if f.name == "config.json").parent
    out = tmp_path_factory.mktemp("minilm") / "run"
    assert main(["convert", "--from-hf", str(root), "--out", str(out)]) == 0
    return out


SPECIAL = ["<|endoftext|>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


@pytest.fixture(scope="session")
def tok_file(tmp_path_factory):
    """A tokenizer.json for the fine-tuning run tests: a 300-token BPE with BERT's special
    tokens, trained on 600 rotten-tomatoes reviews (a module may define its own)."""
    from lmforge.tasks import load_task
    from lmforge.tokenizer import Tokenizer

    rows = load_task("rotten-tomatoes")["train"][:600]
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=300, special_tokens=SPECIAL,
                          progress=False)
    return tok.save(tmp_path_factory.mktemp("tok") / "tok.json")


# `python DRIVER slow|fast ARGV...` runs `lmforge ARGV`; "slow" sleeps 3 ms after every
# module call in training (no value touched) so that a test can kill the run mid-way
DRIVER = """
import sys, time
if sys.argv[1] == "slow":
    from torch.nn.modules.module import register_module_forward_hook
    register_module_forward_hook(lambda m, a, o: time.sleep(0.003) if m.training else None)
from lmforge.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
    """launch(*argv, slow=False, ranks=1, kill_at=None): `lmforge ARGV` in a real process
    -- under `torchrun --standalone --nproc_per_node RANKS` when ranks > 1 -- from the repo
    root. Waits and returns its stderr (asserting exit 0); with kill_at=(RUN_DIR, STEP) it
    SIGKILLs the whole process group (torchrun and every rank) once RUN_DIR/metrics.jsonl
    records STEP (the run should be slow=True to be caught mid-way)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    driver = tmp_path_factory.mktemp("driver") / "driver.py"
    driver.write_text(DRIVER)
    repo = Path(__file__).resolve().parents[1]

    def run(*argv: str, slow: bool = False, ranks: int = 1, kill_at=None):
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(ranks)] if ranks > 1 else []
        cmd = [sys.executable, *launcher, str(driver), "slow" if slow else "fast", *argv]
        proc = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        if kill_at is not None:
            return _kill_at(proc, *kill_at)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        return err.decode()

    return run


def _kill_at(proc, run_dir, step: int, timeout: float = 240) -> None:
    import os
    import signal
    import time

    from lmforge.training.logs import read_metrics

    deadline = time.monotonic() + timeout
    while not any(r.get("step", 0) >= step for r in read_metrics(run_dir / "metrics.jsonl")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"the run never reached step {step}"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
