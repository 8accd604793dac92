"""Label-word NLU for decoders: exact targets, label scores against a hand computation,
multi-token words, prediction by likelihood and by generation, and a tiny GPT that learns
8 real rotten-tomatoes rows."""

import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.models import build, presets
from lmforge.objectives.clm import IGNORE
from lmforge.tasks import get_task, load_task
from lmforge.tasks.evaluator import score
from lmforge.tasks.prompts import render_ids
from lmforge.tasks.verbalizer import Verbalizer
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


def gpt(tok, seed=0):
    torch.manual_seed(seed)
    cfg = presets.get("tiny-gpt2", vocab_size=tok.vocab_size)
    return cfg, build(cfg)


def test_exact_inputs_and_targets(tok, task):
    cfg, _ = gpt(tok)
    mode = Verbalizer(task, tok, cfg, max_len=128)
    batch = mode.prepare([{"text": "ok", "label": 1}, {"text": "bad movie", "label": 0}])
    prompt0 = [EOS, *b"Review: ok\nSentiment:"]  # one BOS (end-of-text, as GPT-2)
    prompt1 = [EOS, *b"Review: bad movie\nSentiment:"]
    answer0 = [*b" positive", EOS]  # the word and the EOS that ends it
    answer1 = [*b" negative", EOS]
    T = len(prompt1) + len(answer1) - 1
    assert batch["input_ids"].tolist() == [
        (prompt0 + answer0)[:-1] + [EOS] * (T - len(prompt0) - len(answer0) + 1),  # pad = EOS
        (prompt1 + answer1)[:-1],
    ]
    targets = batch["targets"].tolist()
    # row 0: 22 prompt tokens; position 21 (":") predicts " ", ... position 30 predicts EOS
    assert [t for t, y in enumerate(targets[0]) if y != X] == list(range(21, 31))
    assert [y for y in targets[0] if y != X] == answer0
    assert [y for y in targets[1] if y != X] == answer1
    assert mode.num_targets(batch) == 20


@torch.no_grad()
def hand_score(model, prompt, answer):
    """sum_j log p(answer_j | prompt, answer_<j) from the model's full logits, one row."""
    seq = torch.tensor([prompt + answer])
    logp = torch.log_softmax(model(seq).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, a]) for j, a in enumerate(answer))


def test_label_scores_equal_hand_sum_multi_token_words(tok, task):
    cfg, model = gpt(tok)
    model.eval()
    words = {"negative": " bad", "positive": " very good"}  # 4 and 10 tokens, + EOS
    mode = Verbalizer(task, tok, cfg, max_len=128, eval_batch_size=4,
                      options={"label_words": words})
    rows = [{"text": "A fine film.", "label": 1}, {"text": "Dull", "label": 0},
            {"text": "Not bad at all, really", "label": 1}]
    scores = mode.scores(model, rows)
    assert scores.shape == (3, 2)
    for i, r in enumerate(rows):
        prompt = [EOS, *f"Review: {r['text']}\nSentiment:".encode()]
        for k, w in enumerate((" bad", " very good")):
            expected = hand_score(model, prompt, [*w.encode(), EOS])
            assert scores[i, k].item() == pytest.approx(expected, abs=1e-4)
    # prediction = argmax of the scores; the loss = -(sum of the gold scores)
    assert mode.predict(model, rows) == scores.argmax(-1).tolist()
    batch = mode.prepare(rows)
    loss, n = mode.loss(model, batch)
    gold = torch.tensor([r["label"] for r in rows])
    assert n == (10 + 1) + (4 + 1) + (10 + 1)
    assert loss.item() == pytest.approx(-scores[torch.arange(3), gold].sum().item(), abs=1e-3)


def test_without_eos_scores_only_the_word(tok, task):
    cfg, model = gpt(tok)
    model.eval()
    mode = Verbalizer(task, tok, cfg, max_len=128, options={"eos": False})
    row = {"text": "Fine", "label": 1}
    prompt = [EOS, *b"Review: Fine\nSentiment:"]
    assert mode.scores(model, [row])[0, 1].item() == pytest.approx(
        hand_score(model, prompt, [*b" positive"]), abs=1e-4)


@pytest.mark.learning
def test_tiny_gpt_learns_eight_real_rows(tok, task):
    train = load_task("rotten-tomatoes")["train"]
    rows = [r for r in train if r["label"] == 1][:4] + [r for r in train if r["label"] == 0][:4]
    cfg, model = gpt(tok)
    mode = Verbalizer(task, tok, cfg, max_len=64)
    trainer = Trainer(model, mode, TrainConfig(
        device="cpu", lr=3e-3, warmup_steps=0, max_steps=80, schedule="constant",
        weight_decay=0.0, progress=False, tensorboard=False))
    first = trainer.train_step([rows]).loss
    for _ in range(79):
        last = trainer.train_step([rows]).loss
    assert last < first / 50
    assert score(mode, model, rows)["accuracy"] == 1.0  # by label-word likelihood
    by_generation = Verbalizer(task, tok, cfg, max_len=64, options={"predict_by": "generate"})
    assert by_generation.generate_text(model, rows[:2]) == [" positive", " positive"]
    assert by_generation.predict(model, rows) == [1, 1, 1, 1, 0, 0, 0, 0]
    assert by_generation.invalid == 0


def test_invalid_generation_is_scored_wrong(tok, task):
    cfg, model = gpt(tok)  # untrained: writes bytes that spell no label word
    mode = Verbalizer(task, tok, cfg, max_len=64, options={"predict_by": "generate"})
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    assert mode.predict(model, rows) == [0, 1]
    assert mode.invalid == 2


def test_label_not_in_the_mapping(tok, task):
    cfg, _ = gpt(tok)
    with pytest.raises(ConfigError, match="label 'positive' has no word"):
        Verbalizer(task, tok, cfg, options={"label_words": {"negative": " bad"}})
    with pytest.raises(ConfigError, match="'neutral' is not a label of this task"):
        Verbalizer(task, tok, cfg, options={"label_words": {
            "negative": " bad", "positive": " good", "neutral": " meh"}})
    with pytest.raises(ConfigError, match="share a word"):
        Verbalizer(task, tok, cfg, options={"label_words": {"negative": " ok", "positive": "ok"}})
    mode = Verbalizer(task, tok, cfg)
    rows = [{"text": "fine", "label": 1}, {"text": "meh", "label": "neutral"}]
    with pytest.raises(DataError, match=r"train, row 1: label 'neutral' is not in the "
                                        r"verbalizer's mapping \(labels: negative, positive\)"):
        mode.check(rows, "train")
    with pytest.raises(DataError, match="row 1: label 'neutral'"):
        mode.prepare(rows)
    with pytest.raises(DataError, match="row 0: label 2"):
        mode.prepare([{"text": "fine", "label": 2}])
    # a label given by name works as its index
    assert mode.prepare([{"text": "x", "label": "positive"}])["targets"].tolist() == \
        mode.prepare([{"text": "x", "label": 1}])["targets"].tolist()


def test_bad_config(tok, task):
    cfg, _ = gpt(tok)
    with pytest.raises(ConfigError, match=r"unknown field \{review\}"):
        Verbalizer(task, tok, cfg, options={"template": "Review: {review}\nSentiment:"})
    with pytest.raises(ConfigError, match="needs a decoder"):
        Verbalizer(task, tok, presets.get("tiny-t5", vocab_size=257))
    with pytest.raises(ConfigError, match="does not fit task type 'chat'"):
        Verbalizer(get_task("chatterbot"), tok, cfg)
    with pytest.raises(ConfigError, match="predict_by"):
        Verbalizer(task, tok, cfg, options={"predict_by": "vote"})
    with pytest.raises(ConfigError, match="predict_by"):  # summaries are generated
        Verbalizer(get_task("debian-summaries"), tok, cfg, options={"predict_by": "rank"})
    with pytest.raises(ConfigError, match="leaves no room for a prompt"):
        Verbalizer(get_task("debian-summaries"), tok, cfg, max_len=40,
                   options={"max_target_len": 40})
    with pytest.raises(DataError, match="val, row 0: empty 'target'"):
        Verbalizer(get_task("debian-summaries"), tok, cfg).check(
            [{"text": "a", "target": " "}], "val")


def test_summaries_the_target_is_the_answer(tok):
    """Seq2seq on a decoder: the prompt is context, " " + the target + EOS is learned."""
    cfg, _ = gpt(tok)
    mode = Verbalizer(get_task("debian-summaries"), tok, cfg, max_len=64,
                      options={"max_target_len": 5})
    batch = mode.prepare([{"text": "A web server.", "target": "fast httpd"}])
    prompt = [EOS, *b"Description: A web server.\nSynopsis:"]
    answer = [*b" fast", EOS]  # cut to max_target_len = 5 tokens, then EOS
    assert batch["input_ids"][0].tolist() == (prompt + answer)[:-1]
    assert batch["targets"][0].tolist() == [X] * (len(prompt) - 1) + answer
    assert mode.budget == 64 - 1 - 6 and mode.generation.max_new_tokens == 6


def test_generation_options_reach_the_decoder(tok):
    """no_repeat_ngram_size: no bigram twice in the tokens an untrained model writes
    (without it, greedy decoding of random weights loops); num_beams: beam search runs."""
    from lmforge.generation import generate, pad_left

    cfg, model = gpt(tok)
    rows = [{"text": "A web server.", "target": "x"}, {"text": "A mail reader.", "target": "y"}]
    task = get_task("debian-summaries")

    def written(mode):
        ids, mask = pad_left([mode.prompt(r) for r in rows], mode.pad_id)
        out = generate(model, ids, mask, mode.generation)[:, ids.shape[1]:].tolist()
        return [row[:row.index(EOS)] if EOS in row else row for row in out]

    def repeats(row):
        return len(row) - 1 - len(set(zip(row, row[1:])))

    free = Verbalizer(task, tok, cfg, max_len=96, options={"max_new_tokens": 40})
    assert any(repeats(r) > 0 for r in written(free))
    mode = Verbalizer(task, tok, cfg, max_len=96,
                      options={"max_new_tokens": 40, "no_repeat_ngram_size": 2})
    assert all(len(r) > 10 and repeats(r) == 0 for r in written(mode))
    beams = Verbalizer(task, tok, cfg, max_len=96, options={"max_new_tokens": 8,
                                                             "num_beams": 3})
    assert beams.generation.num_beams == 3 and len(beams.predict(model, rows)) == 2


@pytest.mark.learning
def test_tiny_gpt_learns_real_summaries(tok):
    """Four real Debian descriptions -> synopses: memorized, then generated word for word
    (ROUGE 1.0); an untrained model scores far lower."""
    task = get_task("debian-summaries")
    short = [r for r in load_task("debian-summaries")["train"] if len(r["target"]) < 40]
    rows = [dict(r, text=r["text"][:60]) for r in short[:4]]
    cfg, model = gpt(tok)
    mode = Verbalizer(task, tok, cfg, max_len=128, options={"max_target_len": 40})
    before = score(mode, model, rows)["rougeL"]
    trainer = Trainer(model, mode, TrainConfig(
        device="cpu", lr=3e-3, warmup_steps=0, max_steps=150, schedule="constant",
        weight_decay=0.0, progress=False, tensorboard=False))
    for _ in range(150):
        trainer.train_step([rows])
    assert mode.predict(model, rows) == [r["target"] for r in rows]
    scores = score(mode, model, rows)
    assert scores["rouge1"] == scores["rouge2"] == scores["rougeL"] == 1.0
    assert before < 0.2


def test_pair_template_and_longest_first_truncation(tok):
    cfg, _ = gpt(tok)
    mode = Verbalizer(get_task("debian-match"), tok, cfg, max_len=48)
    row = {"text": "d" * 100, "text_pair": "syn", "label": 1}
    prompt = mode.prompt(row)
    # 48 = BOS + prompt + the longest answer (" yes" + EOS: 5 tokens): the long side is cut
    assert len(prompt) == 48 - 5
    assert prompt == [EOS, *("Description: " + "d" * 8 + "\nSynopsis: syn\nMatch:").encode()]


def test_render_ids_equals_encoding_the_whole_text():
    text = ["Review: a fine film, quite good.\nSentiment: positive"] * 30
    bpe = Tokenizer.train(text, vocab_size=300, progress=False)
    for t in ("a fine film", "quite good. A fine film!", "  spaces "):
        rendered = render_ids("Review: {text}\nSentiment:", {"text": t}, bpe)
        assert rendered == bpe.encode_ordinary(f"Review: {t}\nSentiment:")
