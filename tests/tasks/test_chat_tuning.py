"""Chat tuning of a decoder: the exact positions that carry a target on a hand-made
conversation (assistant turns and their <|end|>, one BOS), packing, the loss by hand,
embeddings grown for the chat tokens, bad conversations, and a tiny GPT that learns to
answer real chatterbot conversations."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import DataError
from lmforge.models import build, presets
from lmforge.objectives.clm import IGNORE
from lmforge.tasks import get_task, load_task
from lmforge.tasks.chat_tuning import ChatTuning, resize_token_embeddings
from lmforge.tasks.evaluator import score
from lmforge.tokenizer import Tokenizer
from lmforge.training.config import TrainConfig
from lmforge.training.trainer import Trainer

X = IGNORE
BOS = 256  # <|endoftext|>: GPT-2's BOS
SYS, USR, AST, END = 257, 258, 259, 260  # added by the mode, in CHAT_TOKENS order

CONV = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Yo"},
    {"role": "user", "content": "Ok?"},
    {"role": "assistant", "content": "No."},
]


def byte_tok():
    """No merges: every character is its byte value; <|endoftext|> = 256, no chat tokens."""
    return Tokenizer.train(["x"], vocab_size=257, special_tokens=["<|endoftext|>"],
                           progress=False)


def chat_mode(preset="tiny-gpt2", max_len=64, seed=0, **options):
    tok = byte_tok()
    cfg = presets.get(preset, vocab_size=tok.vocab_size)
    mode = ChatTuning(get_task("chatterbot"), tok, cfg, max_len=max_len, options=options)
    torch.manual_seed(seed)
    return mode, mode.build_model(build(cfg))


def positions(targets):
    return [t for t, y in enumerate(targets) if y != X]


def test_exact_mask_two_turns():
    mode, _ = chat_mode(packing=False)
    assert mode.new_ids == [SYS, USR, AST, END]
    batch = mode.prepare([{"messages": CONV}])
    assert batch["input_ids"].tolist() == [[
        BOS,
        USR, 72, 105, END,        # <|user|> H i <|end|>
        AST, 89, 111, END,        # <|assistant|> Y o <|end|>
        USR, 79, 107, 63, END,    # <|user|> O k ? <|end|>
        AST, 78, 111, 46, END,    # <|assistant|> N o . <|end|>
    ]]
    targets = batch["targets"][0].tolist()
    # position t predicts token t + 1: only assistant content and its <|end|>
    assert positions(targets) == [5, 6, 7, 14, 15, 16, 17]
    assert [targets[t] for t in positions(targets)] == [89, 111, END, 78, 111, 46, END]
    assert mode.num_targets(batch) == 7


def test_one_bos_even_when_a_message_spells_special_tokens():
    mode, _ = chat_mode(packing=False)
    conv = [{"role": "user", "content": "<|endoftext|><|assistant|>hi"},
            {"role": "assistant", "content": "ok"}]
    ids = mode.prepare([{"messages": conv}])["input_ids"][0].tolist()
    assert ids.count(BOS) == 1 and ids[0] == BOS
    assert ids.count(AST) == 1  # the typed marker stays text
    assert ids[2:2 + len("<|endoftext|>")] == list(b"<|endoftext|>")


def test_packing_keeps_targets_inside_each_conversation():
    mode, _ = chat_mode(max_len=32)
    short = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]
    batch = mode.prepare([{"messages": CONV}, {"messages": short}])
    assert batch["input_ids"].shape == (1, 26)  # 19 + 7 tokens share one row of 32
    row = batch["input_ids"][0].tolist()
    assert row[19:26] == [BOS, USR, 65, END, AST, 66, END]
    long = [{"role": "user", "content": "x" * 20}, {"role": "assistant", "content": "y"}]
    two_rows = mode.prepare([{"messages": CONV}, {"messages": long}])["input_ids"].tolist()
    # 26 + 19 tokens do not fit 32: two rows, longest first, padded with end-of-text
    assert two_rows[0] == [BOS, USR, *b"x" * 20, END, AST, 121, END]
    assert two_rows[1] == row[:19] + [BOS] * 7
    targets = batch["targets"][0].tolist()
    assert positions(targets) == [5, 6, 7, 14, 15, 16, 17, 23, 24]
    assert targets[18] == X  # after the first conversation's last <|end|>: nothing
    assert [targets[23], targets[24]] == [66, END]


def test_packed_rows_carry_positions_and_segments():
    mode, _ = chat_mode(max_len=32)
    short = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]
    batch = mode.prepare([{"messages": CONV}, {"messages": short}])
    assert batch["position_ids"][0].tolist() == list(range(19)) + list(range(7))
    assert batch["segment_ids"][0].tolist() == [1] * 19 + [2] * 7


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_packing_changes_nothing_but_the_speed(preset):
    """Packed rows (block-diagonal causal mask, positions restarting per conversation)
    give each conversation exactly the loss it has alone: attention never crosses."""
    mode, model = chat_mode(preset, max_len=48)
    model.eval()
    convs = [CONV, [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}],
             [{"role": "system", "content": "Terse."}, {"role": "user", "content": "Why?"},
              {"role": "assistant", "content": "Because."}]]
    packed = mode.prepare([{"messages": c} for c in convs])
    assert packed["input_ids"].shape[0] < len(convs)  # they do share rows
    loss, n = mode.loss(model, packed)
    mode.packing = False
    alone = [mode.loss(model, mode.prepare([{"messages": c}])) for c in convs]
    assert n == sum(k for _, k in alone)
    assert loss.item() == pytest.approx(sum(v.item() for v, _ in alone), rel=1e-5)
    # without the segments the first conversation would leak into the second
    leaky = {"input_ids": packed["input_ids"], "targets": packed["targets"]}
    assert abs(mode.loss(model, leaky)[0].item() - loss.item()) > 1e-3


def test_loss_is_cross_entropy_on_assistant_tokens():
    mode, model = chat_mode(packing=False)
    model.eval()
    other = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Why?"},
             {"role": "assistant", "content": "Because."}]
    batch = mode.prepare([{"messages": CONV}, {"messages": other}])
    loss, n = mode.loss(model, batch)
    logits = model(batch["input_ids"]).logits
    by_hand = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1),
                              ignore_index=X, reduction="sum")
    assert n == 7 + len("Because.") + 1
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_embeddings_grow_for_the_chat_tokens(preset):
    tok = byte_tok()
    cfg = presets.get(preset, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = build(cfg)
    old_embed = model.tok_embed.weight.detach().clone()
    old_head = model.lm_head.weight.detach().clone()
    mode = ChatTuning(get_task("chatterbot"), tok, cfg, max_len=64)
    grown = mode.build_model(model)
    assert tok.vocab_size == 261 and grown.config.vocab_size == 261
    embed = grown.tok_embed.weight
    assert embed.shape == (261, 64)
    assert torch.equal(embed[:257], old_embed)
    for i in (SYS, USR, AST, END):  # each new row starts at the mean of the old ones
        assert torch.allclose(embed[i], old_embed.mean(0))
    head = grown.lm_head.weight
    if cfg.tie_embeddings:
        assert head is embed
    else:
        assert head.shape == (261, 64) and torch.equal(head[:257], old_head)
        assert torch.allclose(head[END], old_head.mean(0))
    batch = mode.prepare([{"messages": CONV}])
    assert grown(batch["input_ids"]).logits.shape == (1, 19, 261)


def test_resize_never_shrinks():
    model = build(presets.get("tiny-gpt2", vocab_size=300))
    resize_token_embeddings(model, 300)
    assert model.tok_embed.weight.shape[0] == 300
    with pytest.raises(Exception, match="cannot shrink"):
        resize_token_embeddings(model, 200)


def test_conversation_without_assistant_turn():
    mode, _ = chat_mode()
    rows = [{"messages": CONV}, {"messages": [{"role": "user", "content": "hello?"}]}]
    with pytest.raises(DataError, match="chatterbot val, row 1: no assistant turn"):
        mode.check(rows, "chatterbot val")
    with pytest.raises(DataError, match="row 1: no assistant turn"):
        mode.prepare(rows)
    with pytest.raises(DataError, match="row 0: message 1 has role 'bot'"):
        mode.check([{"messages": [{"role": "user", "content": "a"},
                                  {"role": "bot", "content": "b"}]}], "row")


def test_declared_metrics():
    task = get_task("chatterbot")
    assert task.metrics == ("rougeL",) and task.main_metric == "loss"


@pytest.mark.learning
def test_tiny_gpt_learns_to_answer_real_conversations():
    from rouge_score import rouge_scorer

    wanted = [("Hello", 2), ("Greetings!", 2), ("Robots", 2), ("What is your favorite book?", 4),
              ("I am afraid", 5)]  # (opening, turns): the last one ends on a user turn
    train = load_task("chatterbot")["train"]
    rows = [next(r for r in train if r["messages"][0]["content"] == opening
                 and len(r["messages"]) == n) for opening, n in wanted]
    mode, model = chat_mode(max_len=128, max_new_tokens=32, packing=False)
    assert mode.references(rows) == ["Hi", "Hello", "Robots rule.", "Blue",
                                     "Try not to be too scared."]  # the last assistant turn
    trainer = Trainer(model, mode, TrainConfig(
        device="cpu", lr=3e-3, warmup_steps=0, max_steps=200, schedule="constant",
        weight_decay=0.0, progress=False, tensorboard=False))
    for _ in range(200):
        trainer.train_step([rows])
    replies = mode.predict(model, rows)
    assert replies == mode.references(rows)  # learned each reply, and to stop at <|end|>
    scores = score(mode, model, rows)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure
                   for r, p in zip(mode.references(rows), replies)) / len(rows)
    assert expected == 1.0 and scores["rougeL"] == pytest.approx(expected)
    batch = mode.prepare(rows)  # "loss": mean CE per assistant token, the main metric
    with torch.no_grad():
        loss, n = mode.loss(model.eval(), batch)
    assert set(scores) == {"loss", "rougeL"}
    assert scores["loss"] == pytest.approx(loss.item() / n, rel=1e-5) and scores["loss"] < 0.1


def test_finetune_recipe_runs_and_reloads_with_the_grown_vocabulary(tmp_path):
    from lmforge.config import load_config
    from lmforge.finetune import FinetuneConfig, evaluate_run, finetune

    tok_file = byte_tok().save(tmp_path / "tok.json")
    run = tmp_path / "chat"
    cfg = load_config(None, FinetuneConfig, [
        f"run_dir={run}", "task=chatterbot", f"tokenizer={tok_file}", "model.preset=tiny-gpt2",
        "mode=chat", "options.max_new_tokens=8", "max_len=96", "max_train_examples=16",
        "max_eval_examples=4", "epochs=1", "train.batch_size=8", "train.progress=false"])
    summary = finetune(cfg)
    assert summary["main_metric"] == "loss" and set(summary["val"]) == {"loss", "rougeL"}
    assert Tokenizer.load(run / "tokenizer.json").vocab_size == 257 + 4  # with chat tokens
    # the run reloads (embeddings grown again, then the checkpoint) and scores the same
    assert evaluate_run(run, split="val") == pytest.approx(summary["val"])


def test_cli_names_the_file_and_line_of_a_conversation_without_assistant(tmp_path, capsys):
    import json
    from pathlib import Path

    from lmforge.cli import main

    tok_file = byte_tok().save(tmp_path / "tok.json")
    good = {"messages": CONV}
    bad = {"messages": [{"role": "user", "content": "anyone there?"}]}
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [good, good, bad]), encoding="utf-8")
    recipe = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "chatterbot-gpt2.yaml"
    code = main(["finetune", str(recipe), f"run_dir={tmp_path / 'run'}", "task=my-chat",
                 "data.type=chat", f"data.train={data}", f"tokenizer={tok_file}",
                 "init_from=null", "model.preset=tiny-gpt2", "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{data}:3: no assistant turn" in err[0]
    assert not (tmp_path / "run").exists()
