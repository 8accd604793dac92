import json
import math
import os
import struct
import warnings

import numpy as np
import pytest
import torch

from lmforge.data import ChunkSampler, eval_batches
from lmforge.flops import model_flops_per_token
from lmforge.models import build, presets
from lmforge.objectives import CausalLM
from lmforge.training import LossEvaluator, NonFiniteLossError, TrainConfig, Trainer
from lmforge.training.checkpoint import latest_checkpoint, load_weights
from lmforge.training.logs import read_metrics
from lmforge.training.schedule import LRSchedule

V = 256


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build(presets.get("tiny-gpt2", **kw))


def stream(n=6000, seed=0):
    """A learnable token stream: a noisy repeating pattern."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(40, dtype=np.uint16) * 5, n // 40 + 1)[:n]
    noise = rng.integers(0, V, n, dtype=np.uint16)
    return np.where(rng.random(n) < 0.1, noise, base).astype(np.uint16)


def config(**kw):
    base = dict(batch_size=4, seq_len=16, max_steps=12, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                eval_every=6, eval_batches=2, save_every=6, log_every=3, progress=False,
                tensorboard=False, device="cpu", peak_flops=1e11)
    return TrainConfig(**{**base, **kw})


def test_grad_accumulation_equals_the_big_batch_with_uneven_padding():
    # 8 sequences padded to different lengths: the 4 micro-batches hold 17, 16, 7 and 30
    # target tokens, so averaging per micro-batch would weight tokens unequally
    torch.manual_seed(1)
    raw = torch.randint(1, V, (8, 17))
    for row, length in enumerate([17, 2, 5, 13, 1, 8, 17, 15]):
        raw[row, length:] = 0
    obj = CausalLM(pad_id=0)
    cfg = config()
    big = Trainer(tiny(), obj, cfg)
    loss_big, n_big, _ = big.accumulate([raw])
    small = Trainer(tiny(), obj, cfg)
    parts = [raw[i : i + 2] for i in range(0, 8, 2)]
    loss_acc, n_acc, _ = small.accumulate(parts)
    assert n_big == n_acc == sum(obj.num_targets(obj.prepare(p)) for p in parts) == 70
    assert loss_acc == pytest.approx(loss_big, rel=1e-6)
    for (name, a), (_, b) in zip(big.model.named_parameters(), small.model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name
    # the naive mean of per-micro-batch means is a different (wrong) loss here
    naive = np.mean([obj.loss(big.model, obj.prepare(p), "mean")[0].item() for p in parts])
    assert abs(naive - loss_big) > 1e-3


def test_activation_checkpointing_gives_the_same_loss_and_grads():
    raw = torch.randint(0, V, (4, 17), generator=torch.Generator().manual_seed(3))
    grads, losses = [], []
    for ac in (False, True):
        trainer = Trainer(tiny(dropout=0.1), CausalLM(), config(activation_checkpointing=ac))
        assert trainer.model.gradient_checkpointing is ac
        torch.manual_seed(5)  # the same dropout masks (checkpoint replays the RNG)
        loss, _, _ = trainer.accumulate([raw])
        losses.append(loss)
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7), name


@pytest.mark.learning
def test_fit_logs_metrics_eval_summary_and_plot(tmp_path):
    data = stream()
    cfg = config(tensorboard=True)
    model = tiny()
    trainer = Trainer(model, CausalLM(), cfg, tmp_path, model_config={"n_layer": 2})
    sampler = ChunkSampler([data[:5000]], 16, 4, seed=0)
    val = LossEvaluator(CausalLM(), lambda: eval_batches([data[5000:]], 16, 4, 2))
    summary = trainer.fit(sampler, val)

    records = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in train] == [3, 6, 9, 12]
    assert [r["step"] for r in evals] == [6, 12]
    assert records[-1]["event"] == "summary" and records[-1]["step"] == 12
    schedule = LRSchedule(3e-3, 12, 2, 3e-4, "cosine")
    for r in train:
        assert r["lr"] == pytest.approx(schedule(r["step"] - 1))  # lr of the step just run
        assert r["tokens"] == r["step"] * 4 * 16
        assert r["tok_per_s"] > 0 and 0 < r["mfu"] < 1
        assert r["mfu"] == pytest.approx(
            model_flops_per_token(model, 16) * r["tok_per_s"] / 1e11, rel=1e-6)
    for r in evals:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_tokens"] == 2 * 4 * 16
    assert train[-1]["loss"] < train[0]["loss"] - 0.5  # it learns
    fpt = model_flops_per_token(model, 16)
    assert summary["flops_per_token"] == fpt
    assert summary["train_flops"] == pytest.approx(fpt * 12 * 4 * 16)
    assert summary["val_loss"] == evals[-1]["val_loss"]
    assert summary["checkpoint"] == str(tmp_path / "checkpoints" / "step-12")
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step-12", "step-6"]

    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (700, 400)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [3, 6, 9, 12]
    assert [e.value for e in events.Scalars("eval/val_loss")] == pytest.approx(
        [r["val_loss"] for r in evals])


def test_a_non_finite_step_is_skipped_and_counted(tmp_path):
    model = tiny()
    state = {"step": 0}

    def poison(module, args, out):  # step 3 (0-based 2) produces inf activations
        return out * float("inf") if state["step"] == 2 else out

    model.norm_out.register_forward_hook(poison)  # the final hidden states
    trainer = Trainer(model, CausalLM(), config(max_steps=5, save_every=0), tmp_path)
    sampler = ChunkSampler([stream()], 16, 4, seed=0)
    before = None
    for _ in range(5):
        state["step"] = trainer.step
        if trainer.step == 2:
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = trainer.train_step([sampler.next_batch()])
        if trainer.step == 3:  # train_step counts the step, applied or skipped
            assert result.skipped and not math.isfinite(result.loss)
            for n, p in model.named_parameters():  # the update was not applied
                assert torch.equal(p, before[n]), n
    assert trainer.nonfinite_total == 1 and trainer.nonfinite_in_a_row == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_non_finite_losses_stop_the_run_without_a_checkpoint(tmp_path):
    model = tiny()
    model.norm_out.register_forward_hook(lambda m, a, out: out * float("nan"))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, CausalLM(), config(max_nonfinite=3, save_every=1), tmp_path)
    with pytest.raises(NonFiniteLossError, match="NaN/inf for 3 steps in a row"):
        trainer.fit(ChunkSampler([stream()], 16, 4, seed=0))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["event"], r["step"], r["in_a_row"]) for r in records] == [
        ("nonfinite", 1, 1), ("nonfinite", 2, 2), ("nonfinite", 3, 3)]
    assert records[0]["loss"] == "nan"  # JSON has no NaN: written as a string
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    for n, p in model.named_parameters():  # no update was applied
        assert torch.equal(p, initial[n]), n
    # checkpoints written during the streak hold the last good (finite) weights
    saved = tiny(seed=9)
    load_weights(latest_checkpoint(tmp_path / "checkpoints"), saved)
    assert torch.equal(saved.tok_embed.weight, initial["tok_embed.weight"])


def test_weights_gone_non_finite_are_never_checkpointed(tmp_path):
    trainer = Trainer(tiny(), CausalLM(), config(), tmp_path)
    with torch.no_grad():
        trainer.model.blocks[0].ffn.fc1.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="no checkpoint written"):
        trainer.save()
    assert not (tmp_path / "checkpoints").exists() or not any(
        (tmp_path / "checkpoints").iterdir())


@pytest.mark.learning
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train_close_to_fp32(precision):
    raw = torch.randint(0, V, (4, 17), generator=torch.Generator().manual_seed(2))
    ref = Trainer(tiny(), CausalLM(), config()).train_step([raw])
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else "avx512_bf16"
    slow = precision == "bf16" and "avx512_bf16" not in flags and "amx_bf16" not in flags
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(tiny(), CausalLM(), config(precision=precision))
    assert any("much slower than fp32" in str(w.message) for w in caught) == slow
    if precision == "fp16":
        assert trainer.scaler is not None
    low = trainer.train_step([raw])
    assert not low.skipped
    assert low.loss == pytest.approx(ref.loss, abs=0.02)
    assert trainer.train_step([raw]).loss < low.loss  # the update was applied


@pytest.mark.parametrize("backend", [
    "eager",  # dynamo's wrapper (the `_orig_mod.` keys) without code generation: fast
    pytest.param("inductor", marks=pytest.mark.slow),  # the real thing: ~20-90 s on 2 cores
])
def test_compiled_training_checkpoint_loads_into_an_uncompiled_model(tmp_path, backend):
    cfg = config(compile=True, compile_backend=backend, max_steps=3, eval_every=0, save_every=0)
    trainer = Trainer(tiny(), CausalLM(), cfg, tmp_path)
    assert trainer.forward_model is not trainer.model
    summary = trainer.fit(ChunkSampler([stream()], 16, 4, seed=0))
    assert summary["final_loss"] < math.log(V)
    plain = tiny(seed=9)
    load_weights(summary["checkpoint"], plain)
    for (n, a), (_, b) in zip(trainer.model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), n


def test_precision_auto_is_bf16_only_where_the_device_is_fast_at_it(monkeypatch):
    from lmforge.training import trainer as trainer_module

    cpu = torch.device("cpu")
    for native, want in ((True, "bf16"), (False, "fp32"), (None, "fp32")):
        monkeypatch.setattr(trainer_module, "_cpu_has_bf16", lambda native=native: native)
        assert trainer_module.resolve_precision("auto", cpu) == want
    for explicit in ("fp32", "bf16", "fp16"):
        assert trainer_module.resolve_precision(explicit, cpu) == explicit
    monkeypatch.setattr(trainer_module, "_cpu_has_bf16", lambda: True)
    model = build(presets.get("tiny-gpt2"))
    trainer = Trainer(model, CausalLM(), TrainConfig(precision="auto", device="cpu",
                                                      progress=False, tensorboard=False))
    assert trainer.precision == "bf16" and trainer.dtype == torch.bfloat16
