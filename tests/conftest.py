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
