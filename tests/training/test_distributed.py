"""Multi-process training pieces, on CPU with gloo: two real processes per test.

Each multi-process test spawns 2 ranks that train a tiny GPT-2 on their slices of the
global batches, and compares with one process training on the whole global batch here:
losses at every step, and the weights at the end, within 1e-5.
"""

import faulthandler
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lmforge.data.sampler import ChunkSampler
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models import build, presets
from lmforge.objectives.clm import CausalLM
from lmforge.training import distributed as D

SEQ, B, STEPS, ACCUM, LR = 16, 2, 3, 2, 3e-3


def data() -> list[np.ndarray]:
    return [np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint16)]


def tiny(name="tiny-gpt2", **shape):
    torch.manual_seed(0)
    return build(presets.get(name, dropout=0.0, **shape))


def train(model, dist, sampler, steps=STEPS, accum=ACCUM, opt=None):
    """The training step: token-weighted loss over the global batch, accumulated."""
    opt = opt or torch.optim.AdamW(model.parameters(), lr=LR)  # built after wrap
    obj, losses = CausalLM(), []
    for _ in range(steps):
        batches = [obj.prepare(sampler.next_batch()) for _ in range(accum)]
        # N_global: targets of every micro-batch on every rank
        n = dist.all_reduce_sum(torch.tensor(float(sum(map(obj.num_targets, batches)))))
        total = torch.zeros(())
        for i, batch in enumerate(batches):
            with D.grad_sync(model, dist, enabled=i == accum - 1):
                loss_sum, _ = obj.loss(model, batch)
                # DDP / FSDP average the ranks' gradients: x world_size makes it their sum,
                # so grad = sum over ranks of d(loss_sum) / N_global, as in one process
                (loss_sum * dist.world_size / n).backward()
            total += loss_sum.detach()
        losses.append(float(dist.all_reduce_sum(total) / n))
        D.clip_grad_norm(model, 0.5)
        opt.step()
        opt.zero_grad()
    return losses, opt


def single_run(steps=STEPS):
    """One process, batch B x 2 ranks per micro-step: the reference."""
    model = tiny()
    sampler = ChunkSampler(data(), SEQ, B * 2, seed=1)
    losses, _ = train(model, D.Dist(), sampler, steps)
    return losses, model.state_dict()


# -- two processes -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    faulthandler.enable(all_threads=True)  # a rank that aborts says where, on stderr
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    fn(rank, *args)


def spawn(fn, *args, world=2):
    mp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)


def _ranks_train(rank, strategy, recompute, out):
    dist = D.init(D.DistributedConfig(strategy=strategy), "cpu")
    assert (dist.rank, dist.world_size, dist.strategy) == (rank, 2, strategy)
    model = tiny(gradient_checkpointing=recompute)
    if strategy == "ddp":  # a parameter no loss reads (a pooler, a kept head): still fine
        model.unused = torch.nn.Linear(2, 2)
    model = D.wrap(model, dist, "fp32", find_unused_parameters=strategy == "ddp")
    result = {}
    if strategy == "fsdp":
        inner = D.plain(model)
        assert inner.lm_head.weight is inner.tok_embed.weight  # still tied, in the root
        local = sum(p.to_local().numel() for p in model.parameters())
        result["local_numel"] = dist.all_reduce_sum(torch.tensor(local))
    sampler = ChunkSampler(data(), SEQ, B, seed=1, rank=rank, world_size=2)
    result["losses"], _ = train(model, dist, sampler)
    result["state"] = D.full_state_dict(model, dist)
    if dist.is_main:
        result["state"] = {k: v for k, v in result["state"].items() if "unused" not in k}
        torch.save(result, out)
    dist.close()


@pytest.mark.parametrize("strategy,recompute", [("ddp", False), ("fsdp", False),
                                                ("fsdp", True)])
def test_two_ranks_train_as_one_process_with_the_global_batch(tmp_path, strategy, recompute):
    """recompute: activation checkpointing inside FSDP's units (recomputed blocks gather
    their weights again in backward)."""
    out = tmp_path / "rank0.pt"
    spawn(_ranks_train, strategy, recompute, out)
    got = torch.load(out, weights_only=True)
    losses, state = single_run()
    np.testing.assert_allclose(got["losses"], losses, rtol=0, atol=1e-5)
    moved = max(float((v - state[k]).abs().max()) for k, v in tiny().state_dict().items())
    assert moved > 1e-3  # the weights moved: the comparison is not of still weights
    assert set(got["state"]) == set(state)  # the single-process checkpoint's names
    for key, value in state.items():
        torch.testing.assert_close(got["state"][key], value, rtol=0, atol=1e-5, msg=key)
    if strategy == "fsdp":  # the ranks' shards partition the parameters
        assert int(got["local_numel"]) == tiny().num_parameters()


def _ranks_checkpoint(rank, tmp, fail_path):
    dist = D.init(D.DistributedConfig(strategy="fsdp"), "cpu")
    model = D.wrap(tiny(), dist, "fp32")
    sampler = ChunkSampler(data(), SEQ, B, seed=1, rank=rank, world_size=2)
    _, opt = train(model, dist, sampler, steps=2)
    D.save_sharded(tmp / "ckpt", model, [opt], dist)
    at_save = D.full_state_dict(model, dist)
    position = sampler.state_dict()
    train(model, dist, sampler, steps=2, opt=opt)
    straight = D.full_state_dict(model, dist)

    # a new run: other initial weights, fresh optimizer, then the checkpoint
    torch.manual_seed(5)
    model = D.wrap(build(presets.get("tiny-gpt2", dropout=0.0)), dist, "fp32")
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    D.load_sharded(tmp / "ckpt", model, [opt], dist)
    sampler.load_state_dict(position)
    train(model, dist, sampler, steps=2, opt=opt)
    resumed = D.full_state_dict(model, dist)

    other = D.wrap(tiny(d_model=32), dist, "fp32")  # another shape: refused, before loading
    try:
        D.load_sharded(tmp / "ckpt", other, [], dist)
    except CheckpointError as e:
        fail_path.with_suffix(f".{rank}").write_text(str(e))
    if dist.is_main:
        torch.save({"at_save": at_save, "straight": straight, "resumed": resumed,
                    "position": position}, tmp / "rank0.pt")
    dist.close()


def test_sharded_checkpoint_resumes_and_loads_into_one_process(tmp_path):
    spawn(_ranks_checkpoint, tmp_path, tmp_path / "refused")
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (tmp_path / "ckpt" / ".metadata").is_file()
    assert len(list((tmp_path / "ckpt").glob("*.distcp"))) == 2  # one part per rank

    # resume: model + optimizer restored, so 2 more steps land where not stopping did
    for key, value in got["straight"].items():
        torch.testing.assert_close(got["resumed"][key], value, rtol=0, atol=0, msg=key)
    for rank in range(2):
        msg = (tmp_path / f"refused.{rank}").read_text()
        assert msg.startswith(f"checkpoint {tmp_path / 'ckpt'} is from another model: tensor ")
        assert "expected [" in msg and "\n" not in msg

    # the same checkpoint resumed by ONE process (another world size, the same global
    # batch): model and AdamW state resharded, the windows re-derived from the position
    model = tiny(init_std=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    D.load_sharded(tmp_path / "ckpt", model, [opt], D.Dist())
    sampler = ChunkSampler(data(), SEQ, B * 2, seed=1)
    sampler.load_state_dict(got["position"])
    train(model, D.Dist(), sampler, steps=2, opt=opt)
    for key, value in got["straight"].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-5, msg=key)

    # one process, no process group: the weights the 2 ranks held, the same logits
    single = D.load_sharded_single(tmp_path / "ckpt", tiny("tiny-gpt2", init_std=0.5))
    assert single.lm_head.weight is single.tok_embed.weight
    reference = tiny()
    reference.load_state_dict(got["at_save"])
    ids = torch.from_numpy(data()[0][: 2 * SEQ].astype(np.int64)).view(2, SEQ)
    with torch.no_grad():
        torch.testing.assert_close(single(ids).logits, reference(ids).logits, rtol=0, atol=0)
    for key, value in got["at_save"].items():
        assert torch.equal(single.state_dict()[key], value), key


def test_sharded_checkpoint_from_another_shape_is_refused_in_one_line(tmp_path):
    model = tiny()
    D.save_sharded(tmp_path / "ckpt", model, [], D.Dist())  # one process, no group
    with pytest.raises(CheckpointError, match=r"tensor tok_embed.weight has shape \[256, 64\], "
                                              r"expected \[300, 64\]"):
        D.load_sharded_single(tmp_path / "ckpt", tiny(vocab_size=300))
    with pytest.raises(CheckpointError, match="from another model: it has no tensor blocks.2"):
        D.load_sharded_single(tmp_path / "ckpt", tiny(n_layer=3))
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        D.load_sharded_single(tmp_path, tiny())
    back = D.load_sharded_single(tmp_path / "ckpt", tiny(init_std=0.5))
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


# -- one process: no process group, and the bad inputs --------------------------------------


def _no_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    _no_torchrun(monkeypatch)
    dist = D.init(D.DistributedConfig(), "cpu")
    assert (dist.strategy, dist.rank, dist.world_size, dist.is_main) == ("none", 0, 1, True)
    assert not torch.distributed.is_initialized()
    model = tiny()
    assert D.wrap(model, dist) is model
    x = torch.tensor([3.0])
    assert dist.all_reduce_sum(x) is x and dist.broadcast_object({"a": 1}) == {"a": 1}
    assert D.full_state_dict(model, dist).keys() == model.state_dict().keys()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ddp_or_fsdp_without_torchrun_is_refused(monkeypatch, strategy):
    _no_torchrun(monkeypatch)
    with pytest.raises(ConfigError, match=f"^distributed.strategy={strategy} needs torchrun: "
                                          "torchrun --nproc_per_node N -m lmforge"):
        D.init(D.DistributedConfig(strategy=strategy), "cpu")


def test_strategy_none_on_several_torchrun_processes_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="strategy=none under torchrun with WORLD_SIZE=2"):
        D.init(D.DistributedConfig(strategy="none"), "cpu")
    assert not torch.distributed.is_initialized()


def test_bad_config_values_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^config key 'distributed.strategy': expected one "
                                          r"of auto, none, ddp, fsdp, got 'x'$"):
        D.DistributedConfig(strategy="x")
    cfg = D.DistributedConfig()
    cfg.strategy = "zero"  # set after validation
    with pytest.raises(ConfigError, match="distributed.strategy': expected one of"):
        D.init(cfg, "cpu")
    with pytest.raises(ConfigError, match="distributed.backend"):
        D.DistributedConfig(backend="mpi")
    with pytest.raises(ConfigError, match="distributed.global_batch_size"):
        D.DistributedConfig(global_batch_size=0)
    cfg = D.DistributedConfig(global_batch_size=64)
    assert cfg.global_batch(8, 4, 2) == 64
    with pytest.raises(ConfigError, match=r"global_batch_size': 64, but train.batch_size 8 x "
                                          r"3 processes x train.grad_accum 2 = 48"):
        cfg.global_batch(8, 3, 2)


def test_fsdp_units_are_the_transformer_blocks_of_every_architecture():
    from lmforge.models.heads import ClassificationHead, TaskModel
    from lmforge.objectives.electra import ElectraPair, generator_config

    def ids(model):
        return [id(b) for b in D.blocks(model)]

    gpt, bart = tiny(), tiny("tiny-bart")
    assert ids(gpt) == [id(b) for b in gpt.blocks]
    assert ids(bart) == [id(b) for b in [*bart.encoder_blocks, *bart.decoder_blocks]]
    assert ids(tiny("tiny-albert")) == []  # one block run n_layer times: left in the root
    disc = tiny("tiny-electra")
    pair = ElectraPair(build(generator_config(disc.config, 0.25)), disc)
    assert ids(pair) == [id(b) for b in [*pair.generator.blocks, *disc.blocks]]
    task = TaskModel(tiny("tiny-bert"), ClassificationHead(64, 2), "first")
    assert ids(task) == [id(b) for b in task.backbone.blocks]
