"""The fine-tuning recipe end to end: learning, early stopping, best checkpoint, eval,
report, recipes, bad input (exit 2, one line naming the file / row)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lmforge.bodies import body_config, load_body, read_source
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import CheckpointError, ConfigError
from lmforge.finetune import FinetuneConfig, finetune
from lmforge.models import build, presets
from lmforge.report import results_table
from lmforge.runs import write_run
from lmforge.tasks import get_task, load_task
from lmforge.tasks.modes import default_mode, get_mode
from lmforge.tokenizer import Tokenizer

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "finetune").glob("*.yaml"))
CLASSIFY = RECIPES[0].parent / "rotten-tomatoes-bert.yaml"  # the bad-input tests' recipe
SPECIAL = ["<|endoftext|>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
QUIET = ["train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def tok_file(work):
    rows = load_task("rotten-tomatoes")["train"][:1500]
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=400, special_tokens=SPECIAL,
                          progress=False)
    return tok.save(work / "tok.json")


@pytest.fixture(scope="module")
def pretrained(work, tok_file):
    """A "pretrained" lmforge run dir (random weights, step 0) per tiny preset."""
    tok = Tokenizer.load(tok_file)
    made = {}

    def get(preset):
        if preset not in made:
            cfg = dataclasses.replace(presets.get(preset), vocab_size=tok.vocab_size,
                                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
            torch.manual_seed(0)
            made[preset] = write_run(build(cfg), tok, work / f"pre-{preset}")
        return made[preset]
    return get


def _rows_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- learning, early stopping, the best checkpoint -------------------------------------------

@pytest.fixture(scope="module")
def overfit_run(work, tok_file):
    rows = load_task("rotten-tomatoes")["train"][:16]
    data = _rows_file(work / "tiny.jsonl", [{"text": r["text"],
                                             "label": ["neg", "pos"][r["label"]]}
                                            for r in rows])
    cfg = load_config(None, FinetuneConfig, [
        f"run_dir={work / 'overfit'}", "task=tiny-sentiment", "data.type=classification",
        f"data.train={data}", f"data.val={data}", f"data.test={data}",
        f"tokenizer={tok_file}", "model.preset=tiny-bert", "model.dropout=0.0",
        "options.classifier_dropout=0.0", "epochs=25", "patience=0", "warmup_frac=0.0",
        "train.batch_size=8", "train.lr=3e-3", *QUIET])
    return finetune(cfg)


@pytest.mark.learning
def test_a_handful_of_rows_is_learned_to_accuracy_one(overfit_run):
    assert overfit_run["test"]["accuracy"] == 1.0
    assert overfit_run["val"]["accuracy"] == 1.0
    assert overfit_run["model"] == "tiny-bert (scratch)"
    assert overfit_run["epochs_run"] == 25 and not overfit_run["stopped_early"]


def test_best_checkpoint_is_the_best_epoch_and_eval_reproduces_it(overfit_run, capsys):
    run_dir = Path(overfit_run["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["epoch"] for r in evals] == list(range(1, 26))
    best = max(evals, key=lambda r: r["accuracy"])  # the first epoch that reached the max
    assert overfit_run["best_epoch"] == best["epoch"]
    kept = list((run_dir / "best").iterdir())
    assert [c.name for c in kept] == [f"step-{best['step']}"]  # only the best is kept
    last = [c.name for c in (run_dir / "checkpoints").iterdir()]
    assert last == [f"step-{evals[-1]['step']}"]  # and the last epoch's state, to resume
    assert main(["eval", str(run_dir), "--split", "val", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores == {"accuracy": best["accuracy"], "f1": best["f1"]}
    assert (run_dir / "val_metric.png").stat().st_size > 0
    assert json.loads((run_dir / "results.json").read_text())["test"] == overfit_run["test"]


def test_early_stopping_stops_after_patience_epochs(work, tok_file):
    cfg = load_config(None, FinetuneConfig, [
        f"run_dir={work / 'early'}", f"tokenizer={tok_file}", "model.preset=tiny-bert",
        "max_train_examples=16", "max_eval_examples=16", "epochs=10", "patience=2",
        "train.batch_size=8", "train.lr=1e-9", *QUIET])  # too small to change a prediction
    summary = finetune(cfg)
    assert (summary["best_epoch"], summary["epochs_run"], summary["stopped_early"]) == (1, 3, True)
    assert summary["step"] == 3 * 2
    assert [c.name for c in (work / "early" / "best").iterdir()] == ["step-2"]
    assert [c.name for c in (work / "early" / "checkpoints").iterdir()] == ["step-6"]


# -- recipes ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path):
    cfg = load_config(path, FinetuneConfig)
    task = get_task(cfg.task)
    assert get_mode(cfg.mode or default_mode(task.type)).name
    assert cfg.init_from or (cfg.tokenizer and cfg.model.get("preset"))


def test_minilm_scratch_recipe_is_minilm_from_random_weights():
    """Issue 6's baseline: the same body config and tokenizer as `init_from: minilm`."""
    scratch = load_config(RECIPES[0].parent / "rotten-tomatoes-minilm-scratch.yaml",
                          FinetuneConfig)
    real = load_config(RECIPES[0].parent / "rotten-tomatoes-minilm.yaml", FinetuneConfig)
    s, r = read_source(scratch), read_source(real)
    assert s.state is None and r.state is not None
    assert body_config(s, scratch, False) == body_config(r, real, False)
    assert s.tokenizer.fingerprint == r.tokenizer.fingerprint
    assert Path(s.tokenizer_path) == Path(r.tokenizer_path)
    same = {k: v for k, v in dataclasses.asdict(scratch).items()
            if k not in ("run_dir", "name", "init_from", "tokenizer", "model")}
    assert same == {k: v for k, v in dataclasses.asdict(real).items() if k in same}


RUNNABLE = [p for p in RECIPES if "minilm" not in p.stem]  # real MiniLM: too slow for CI


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.stem)
def test_tiny_version_of_recipe_runs(path, work, pretrained, tok_file):
    cfg = load_config(path, FinetuneConfig)
    preset = next(p for p in ("tiny-bart", "tiny-gpt2", "tiny-deberta", "tiny-bert", "tiny-t5",
                              "tiny-llama", "tiny-xlnet")
                  if p.split("-")[1] in path.stem)
    source = [f"init_from={pretrained(preset)}"] if cfg.init_from else [f"tokenizer={tok_file}"]
    cfg = load_config(path, FinetuneConfig, [
        f"run_dir={work / ('recipe-' + path.stem)}", *source, "max_train_examples=16",
        "max_eval_examples=8", "epochs=1", "train.batch_size=8", *QUIET])
    summary = finetune(cfg)
    task = get_task(cfg.task)
    assert set(task.metrics) <= set(summary["test"]) <= {*task.metrics, "loss"}
    assert all(0.0 <= v <= 1.0 for k, v in summary["test"].items() if k != "loss")
    assert summary["mode"] == (cfg.mode or default_mode(task.type)) and summary["step"] == 2


def test_weights_load_by_name_from_a_hugging_face_dir(work, tok_file):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.load(tok_file)
    hf_dir = work / "hf-bert"
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(config)
    hf.save_pretrained(hf_dir)
    tok.save(hf_dir / "tokenizer.json")
    cfg = FinetuneConfig(init_from=str(hf_dir))
    source = read_source(cfg)
    mc = body_config(source, cfg, keeps_lm_head=False)
    assert mc.encoder_head == "none"  # the MLM head is left out of the body
    body = build(mc)
    load_body(body, source.state, source.what)
    assert torch.equal(body.tok_embed.weight, hf.bert.embeddings.word_embeddings.weight)
    assert not any(k.startswith("mlm_head.") for k in body.state_dict())


# -- bad input: exit 2, one line naming the file / row ---------------------------------------

def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_label_outside_the_label_set_names_file_and_line(work, tok_file, capsys):
    bad = _rows_file(work / "bad-label.jsonl", [{"text": "good", "label": "pos"},
                                                {"text": "bad", "label": "maybe"}])
    _fails(["finetune", str(CLASSIFY), f"run_dir={work / 'x1'}", "task=mine",
            "data.type=classification", f"data.train={bad}", "data.labels=[neg,pos]",
            f"tokenizer={tok_file}", "init_from=null", "model.preset=tiny-bert"],
           capsys, f"{bad}:2", "'maybe' is not in the label set")
    assert not (work / "x1").exists()  # nothing written


def test_empty_text_and_missing_pair_side_name_file_and_line(work, tok_file, capsys):
    rows = [{"text": "a b", "text_pair": "c", "label": "1"}] * 3
    empty = _rows_file(work / "empty.jsonl", rows + [{"text": " ", "text_pair": "c",
                                                      "label": "0"}])
    common = ["task=mine", "data.type=pair-classification", f"tokenizer={tok_file}",
              "init_from=null", "model.preset=tiny-bert"]
    _fails(["finetune", str(CLASSIFY), f"run_dir={work / 'x2'}", f"data.train={empty}",
            *common], capsys, f"{empty}:4", "empty 'text'")
    half = _rows_file(work / "half.jsonl", rows + [{"text": "a", "label": "0"}])
    _fails(["finetune", str(CLASSIFY), f"run_dir={work / 'x3'}", f"data.train={half}",
            *common], capsys, f"{half}:4", "text_pair")


def test_tokenizer_that_does_not_fit_the_checkpoint_is_refused(work, pretrained, capsys):
    texts = [r["text"] for r in load_task("rotten-tomatoes")["train"][:1500]]
    big = Tokenizer.train(texts, vocab_size=600, special_tokens=SPECIAL,
                          progress=False).save(work / "big.json")
    run = pretrained("tiny-bert")
    _fails(["finetune", str(CLASSIFY), f"run_dir={work / 'x4'}", f"init_from={run}",
            f"tokenizer={big}"], capsys, str(big), "do not match")
    small = Tokenizer.train(["x y z"] * 50, vocab_size=270, special_tokens=SPECIAL,
                            progress=False).save(work / "small.json")
    _fails(["finetune", str(CLASSIFY), f"run_dir={work / 'x5'}", f"init_from={run}",
            f"tokenizer={small}"], capsys, str(small), "not the one")


def test_pretrained_body_with_a_wrong_vocab_names_the_tensor(pretrained, tok_file):
    src = read_source(FinetuneConfig(init_from=str(pretrained("tiny-bert"))))
    body = build(dataclasses.replace(src.model_config, vocab_size=999))
    with pytest.raises(CheckpointError, match=r"tok_embed.weight' has shape .*vocabulary"):
        load_body(body, src.state, src.what)


def test_generation_task_on_an_encoder_is_refused(work, pretrained, capsys):
    recipe = RECIPES[0].parent / "debian-summaries-bart.yaml"
    err = _fails(["finetune", str(recipe), f"run_dir={work / 'x-enc'}",
                  f"init_from={pretrained('tiny-bert')}"],
                 capsys, "'seq2seq' is text generation, which an encoder cannot do")
    assert not (work / "x-enc").exists()
    assert err.startswith("lmforge: error:")


def test_eval_of_another_kind_of_task_is_refused(overfit_run, capsys):
    _fails(["eval", overfit_run["run_dir"], "--task", "wnut16"], capsys,
           "does not fit this run's 'tiny-sentiment'")


# -- the report -----------------------------------------------------------------------------

def _result(path: Path, model, task, metric, value, **extra):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(
        {"model": model, "task": task, "main_metric": metric, "test": {metric: value},
         **extra}))
    return path


def test_report_is_a_glue_style_table(work, overfit_run, capsys):
    runs = [_result(work / "r1", "bert", "rotten-tomatoes", "accuracy", 0.8123),
            _result(work / "r2", "bert", "wnut16", "entity_f1", 0.25),
            _result(work / "r3", "gpt2", "rotten-tomatoes", "accuracy", 0.7)]
    table = results_table(runs)
    assert table.splitlines() == [
        "| Model | rotten-tomatoes (accuracy) | wnut16 (entity_f1) | Average |",
        "|---|---|---|---|",
        "| bert | 81.2 | 25.0 | 53.1 |",
        "| gpt2 | 70.0 | - | - |",
    ]
    # a loss (chat) is printed as is and left out of the average; the body's arch shows
    runs = [_result(work / "r4", "gpt2", "rotten-tomatoes", "accuracy", 0.7, arch="decoder"),
            _result(work / "r5", "gpt2", "wnut16", "entity_f1", 0.2, arch="decoder"),
            _result(work / "r6", "gpt2", "chatterbot", "loss", 4.0987, arch="decoder"),
            _result(work / "r7", "bart", "chatterbot", "loss", 3.5, arch="seq2seq")]
    assert results_table(runs).splitlines() == [
        "| Model | arch | rotten-tomatoes (accuracy) | wnut16 (entity_f1) | "
        "chatterbot (loss, lower is better) | Average |",
        "|---|---|---|---|---|---|",
        "| gpt2 | decoder | 70.0 | 20.0 | 4.099 | 45.0 |",
        "| bart | seq2seq | - | - | 3.500 | - |",
    ]
    out = work / "results.md"
    assert main(["report", overfit_run["run_dir"], "--out", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out == (
        "| Model | arch | tiny-sentiment (accuracy) |\n|---|---|---|\n"
        "| tiny-bert (scratch) | encoder | 100.0 |\n")
    _fails(["report", str(work)], capsys, "no results.json")


def test_regression_pairs_train_with_mse_and_report_pearson(work, tok_file):
    texts = [r["text"] for r in load_task("rotten-tomatoes")["train"][:12]]
    rows = [{"text": t, "text_pair": t, "label": 5.0} for t in texts[:6]] + \
        [{"text": t, "text_pair": texts[-1 - i], "label": 0.0} for i, t in enumerate(texts[:6])]
    data = _rows_file(work / "sts.jsonl", rows)
    cfg = load_config(None, FinetuneConfig, [
        f"run_dir={work / 'sts'}", "task=sts", "data.type=regression", f"data.train={data}",
        f"data.val={data}", f"data.test={data}", f"tokenizer={tok_file}",
        "model.preset=tiny-bert", "epochs=2", "train.batch_size=6", "train.lr=1e-3", *QUIET])
    summary = finetune(cfg)
    assert set(summary["test"]) == {"pearson", "spearman"}
    from lmforge.finetune import load_finetuned

    run = load_finetuned(work / "sts")
    batch = run.mode.prepare(rows[:4])
    assert batch["labels"].dtype == torch.float32 and "token_type_ids" in batch
    with torch.no_grad():
        loss, n = run.mode.loss(run.model, batch)
        scores = run.model(batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"]).squeeze(-1)
    assert n == 4 and scores.shape == (4,)
    torch.testing.assert_close(loss, ((scores - batch["labels"]) ** 2).sum())
    assert run.mode.predict(run.model, rows[:4]) == pytest.approx(scores.tolist(), abs=1e-5)


def test_a_runs_config_yaml_reruns_it(work, overfit_run, pretrained):
    again = load_config(Path(overfit_run["run_dir"]) / "config.yaml", FinetuneConfig,
                        [f"run_dir={work / 'rerun'}", "epochs=1", *QUIET])
    assert finetune(again)["model"] == "tiny-bert (scratch)"
    first = work / "recipe-debian-match-bert" / "config.yaml"
    if not first.is_file():
        pytest.skip("needs the debian-match recipe run")
    cfg = load_config(first, FinetuneConfig, [f"run_dir={work / 'rerun2'}", "epochs=1"])
    assert cfg.model["encoder_head"] == "none" and cfg.init_from == str(pretrained("tiny-bert"))
    assert finetune(cfg)["step"] == 2
    with pytest.raises(ConfigError, match="'model.n_layer': a pretrained body keeps its shape"):
        finetune(load_config(first, FinetuneConfig, [f"run_dir={work / 'rerun3'}",
                                                     "model.n_layer=3"]))


@pytest.mark.learning
def test_a_handful_of_ner_sentences_is_learned_to_entity_f1_one(work, tok_file):
    rows = [r for r in load_task("wnut16")["train"] if any(t != "O" for t in r["tags"])][:8]
    rows = [{"tokens": r["tokens"][:12], "tags": r["tags"][:12]} for r in rows]
    for r in rows:  # a cut may leave an entity's I- tag first: keep it valid BIO
        if r["tags"][0].startswith("I-"):
            r["tags"][0] = "B-" + r["tags"][0][2:]
    data = _rows_file(work / "ner.jsonl", rows)
    labels = list(get_task("wnut16").labels)
    cfg = load_config(None, FinetuneConfig, [
        f"run_dir={work / 'ner'}", "task=tiny-ner", "data.type=tagging", f"data.train={data}",
        f"data.val={data}", f"data.test={data}", f"data.labels={json.dumps(labels)}",
        f"tokenizer={tok_file}", "model.preset=tiny-bert", "model.dropout=0.0",
        "options.classifier_dropout=0.0", "epochs=40", "patience=0", "warmup_frac=0.0",
        "train.batch_size=8", "train.lr=5e-3", *QUIET])
    summary = finetune(cfg)
    assert summary["test"]["entity_f1"] == 1.0
