"""Text-to-text fine-tuning (T5 / BART): exact source / target / decoder-input ids, the loss
against F.cross_entropy by hand, a tiny T5 that learns 8 real rotten-tomatoes rows, and
ROUGE on a tiny summarization run equal to rouge-score on the same strings."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, DataError
from lmforge.models import build
from lmforge.models.config import resolve_model_config
from lmforge.objectives.clm import IGNORE
from lmforge.tasks import get_task, load_task
from lmforge.tasks.evaluator import score
from lmforge.tasks.text2text import Text2Text
from lmforge.tokenizer import Tokenizer
from lmforge.training.config import TrainConfig
from lmforge.training.trainer import Trainer

X = IGNORE
EOS = 256


@pytest.fixture(scope="module")
def tok():
    """No merges: every character is its byte value; <|endoftext|> = 256."""
    return Tokenizer.train(["x"], vocab_size=257, special_tokens=["<|endoftext|>"],
                           progress=False)


@pytest.fixture(scope="module")
def task():
    return get_task("rotten-tomatoes")


def seq2seq(preset, tok, seed=0, **overrides):
    """A model config as the pretraining recipe resolves it (vocab and ids from `tok`)."""
    torch.manual_seed(seed)
    cfg = resolve_model_config({"preset": preset, **overrides}, tok.vocab_size, tok)
    return cfg, build(cfg)


def train(mode, model, rows, steps, lr):
    trainer = Trainer(model, mode, TrainConfig(
        device="cpu", lr=lr, warmup_steps=0, max_steps=steps, schedule="constant",
        weight_decay=0.0, progress=False, tensorboard=False))
    return [trainer.train_step([rows]).loss for _ in range(steps)]


def test_exact_batch(tok, task):
    cfg, _ = seq2seq("tiny-t5", tok)
    mode = Text2Text(task, tok, cfg, max_len=64,
                     options={"label_words": {"negative": "no", "positive": "yes"}})
    batch = mode.prepare([{"text": "ok", "label": 1}, {"text": "bad", "label": 0}])
    PAD, START = EOS, cfg.decoder_start_token_id  # the tokenizer has no pad: EOS pads
    assert batch["input_ids"].tolist() == [
        [*b"sentiment: ok", EOS, PAD],
        [*b"sentiment: bad", EOS],
    ]
    assert batch["attention_mask"].sum(-1).tolist() == [14, 15]
    assert batch["labels"].tolist() == [[*b"yes", EOS], [*b"no", EOS, X]]
    # teacher forcing: the decoder reads the target shifted right behind the start token
    assert batch["decoder_input_ids"].tolist() == [[START, *b"yes"], [START, *b"no", EOS]]
    assert mode.num_targets(batch) == 7


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-bart"])
def test_loss_is_cross_entropy_over_decoder_logits(tok, task, preset):
    cfg, model = seq2seq(preset, tok)
    model.eval()
    mode = Text2Text(task, tok, cfg, max_len=64)
    rows = [{"text": "A fine film.", "label": 1}, {"text": "Dull.", "label": 0}]
    batch = mode.prepare(rows)
    loss, n = mode.loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=batch["decoder_input_ids"]).logits
    by_hand = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                              ignore_index=-100, reduction="sum")
    assert n == 2 * (len("positive") + 1)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # the model's own loss (mean; it shifts the labels right itself) agrees
    own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"]).loss
    assert loss.item() / n == pytest.approx(own.item(), rel=1e-5)
    # padding changes nothing: the batch loss is the sum of the rows' losses alone
    alone = sum(mode.loss(model, mode.prepare([r]))[0].item() for r in rows)
    assert loss.item() == pytest.approx(alone, rel=1e-4)


@pytest.mark.learning
def test_tiny_t5_learns_eight_real_rows(tok, task):
    rows_all = load_task("rotten-tomatoes")["train"]
    rows = [r for r in rows_all if r["label"] == 1][:4] + \
        [r for r in rows_all if r["label"] == 0][:4]
    cfg, model = seq2seq("tiny-t5", tok)  # T5's own init (tests/models/test_seq2seq_init.py)
    mode = Text2Text(task, tok, cfg, max_len=48)
    losses = train(mode, model, rows, 60, 3e-3)
    assert losses[-1] < losses[0] / 10
    scores = score(mode, model, rows)  # generate, then exact match with the label words
    assert scores["accuracy"] == 1.0 and mode.invalid == 0
    assert mode.generate_text(model, rows[:1]) == ["positive"]
    ranked = Text2Text(task, tok, cfg, max_len=48, options={"predict_by": "rank"})
    assert ranked.predict(model, rows) == [1, 1, 1, 1, 0, 0, 0, 0]


def test_invalid_generation_is_scored_wrong(tok, task):
    cfg, model = seq2seq("tiny-t5", tok)  # untrained: its bytes spell no label
    mode = Text2Text(task, tok, cfg, max_len=32, options={"max_new_tokens": 4})
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    assert mode.predict(model, rows) == [0, 1]
    assert mode.invalid == 2


@pytest.mark.learning
def test_rouge_on_a_tiny_summarization_run(task):
    from rouge_score import rouge_scorer

    summaries = get_task("debian-summaries")
    rows = load_task("debian-summaries")["train"][:4]
    bpe = Tokenizer.train([r["text"] + "\n" + r["target"] for r in rows], vocab_size=600,
                          special_tokens=["<s>", "<pad>", "</s>"], progress=False)
    cfg, model = seq2seq("tiny-bart", bpe)
    mode = Text2Text(summaries, bpe, cfg, max_len=96, options={"max_new_tokens": 24})
    batch = mode.prepare(rows[:1])  # BART: <s> ... </s> on both sides
    assert bpe.decode(batch["input_ids"][0].tolist()).startswith("<s>summarize: ")
    assert bpe.decode(batch["labels"][0].tolist()) == f"<s>{rows[0]['target']}</s>"
    train(mode, model, rows, 60, 3e-3)
    scores = score(mode, model, rows)
    assert set(scores) == {"rouge1", "rouge2", "rougeL"}
    predictions = mode.predict(model, rows)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score(r["target"], p)[name].fmeasure
                       for r, p in zip(rows, predictions)) / len(rows)
        assert scores[name] == pytest.approx(expected, abs=1e-12)
    assert scores["rougeL"] > 0.3  # it has learned something of the synopses
    beams = Text2Text(summaries, bpe, cfg, max_len=96, options={
        "max_new_tokens": 24, "num_beams": 2, "no_repeat_ngram_size": 3})
    assert (beams.generation.num_beams, beams.generation.no_repeat_ngram_size) == (2, 3)
    assert len(beams.predict(model, rows)) == 4


CONV = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "Ok?"}, {"role": "assistant", "content": "No."}]


def test_chat_each_assistant_turn_is_an_example(tok):
    """History in (one "Role: content" line per turn), the reply out; a long history
    keeps its end; only the last reply is generated and scored."""
    cfg, _ = seq2seq("tiny-t5", tok)
    mode = Text2Text(get_task("chatterbot"), tok, cfg, max_len=12)
    batch = mode.prepare([{"messages": CONV}])
    history = b"User: Hi\nAssistant: Yo\nUser: Ok?"
    assert batch["input_ids"].tolist() == [
        [*b"User: Hi", EOS, *[EOS] * 3],
        [*history[-11:], EOS],  # the last max_len - 1 tokens of the history
    ]
    assert batch["labels"].tolist() == [[*b"Yo", EOS, X], [*b"No.", EOS]]
    assert mode.references([{"messages": CONV}]) == ["No."]
    assert mode.reports_loss and mode.task.main_metric == "loss"
    with pytest.raises(DataError, match="row 0: no assistant turn"):
        mode.prepare([{"messages": CONV[:1]}])
    with pytest.raises(DataError, match="val, row 0"):
        mode.check([{"messages": []}], "val")


@pytest.mark.learning
def test_tiny_t5_learns_real_chatterbot_replies(tok):
    """Four real conversations: the model learns to write each last reply from its history
    (ROUGE-L 1.0), and evaluate reports the loss per reply token as chat tuning does."""
    task = get_task("chatterbot")
    convs = [r for r in load_task("chatterbot")["train"]
             if len(r["messages"]) == 2 and len(r["messages"][1]["content"]) < 30][:4]
    cfg, model = seq2seq("tiny-t5", tok)
    mode = Text2Text(task, tok, cfg, max_len=64, options={"max_new_tokens": 32})
    first = score(mode, model, convs)
    losses = train(mode, model, convs, 80, 3e-3)
    assert losses[-1] < losses[0] / 10
    scores = score(mode, model, convs)
    assert set(scores) == {"loss", "rougeL"}
    assert scores["loss"] < first["loss"] / 10
    assert mode.predict(model, convs) == [c["messages"][1]["content"] for c in convs]
    assert scores["rougeL"] == 1.0


def test_bad_input(tok, task):
    cfg, _ = seq2seq("tiny-t5", tok)
    gpt = resolve_model_config({"preset": "tiny-gpt2"}, tok.vocab_size, tok)
    with pytest.raises(ConfigError, match="needs an encoder-decoder"):
        Text2Text(task, tok, gpt)
    with pytest.raises(ConfigError, match="label 'negative' has no word"):
        Text2Text(task, tok, cfg, options={"label_words": {"positive": "good"}})
    with pytest.raises(ConfigError, match="predict_by"):
        Text2Text(get_task("debian-summaries"), tok, cfg, options={"predict_by": "rank"})
    with pytest.raises(ConfigError, match="not an option"):
        Text2Text(task, tok, cfg, options={"beams": 2})
    mode = Text2Text(get_task("debian-summaries"), tok, cfg)
    with pytest.raises(DataError, match="val, row 1: empty 'target'"):
        mode.check([{"text": "a", "target": "b"}, {"text": "a", "target": " "}], "val")
    with pytest.raises(DataError, match="row 0: label 5"):
        Text2Text(task, tok, cfg).prepare([{"text": "a", "label": 5}])


def test_finetune_recipe_runs_and_reloads(tmp_path, tok):
    from lmforge.config import load_config
    from lmforge.finetune import FinetuneConfig, evaluate_run, finetune

    tok_file = tok.save(tmp_path / "tok.json")
    run = tmp_path / "t5"
    cfg = load_config(None, FinetuneConfig, [
        f"run_dir={run}", "task=rotten-tomatoes", f"tokenizer={tok_file}",
        "model.preset=tiny-t5", "mode=text2text", "max_len=48", "max_train_examples=16",
        "max_eval_examples=8", "epochs=1", "train.batch_size=8", "train.progress=false"])
    summary = finetune(cfg)
    assert summary["mode"] == "text2text" and set(summary["test"]) == {"accuracy", "f1"}
    assert evaluate_run(run, split="test") == pytest.approx(summary["test"])
