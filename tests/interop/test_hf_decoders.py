"""Hugging Face parity for every decoder family, both directions, with padded batches."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.interop.hf import config_from_hf, config_to_hf, load_hf, save_hf  # noqa: E402
from lmforge.models import build, presets  # noqa: E402

V = 160
LLAMA_LIKE = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)


def _hf_config(family):
    t = transformers
    if family == "gpt2":
        return t.GPT2Config(vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                            bos_token_id=0, eos_token_id=0)  # fmt: skip
    if family == "gpt2-untied-relu":
        return t.GPT2Config(vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                            n_inner=80, activation_function="relu", tie_word_embeddings=False,
                            bos_token_id=0, eos_token_id=0)  # fmt: skip
    if family == "gpt2-relu2":  # ReLU^2 (the speedrun's activation)
        return t.GPT2Config(vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                            activation_function="relu2", bos_token_id=0, eos_token_id=0)
    if family == "llama":  # grouped-query attention
        return t.LlamaConfig(**LLAMA_LIKE, num_key_value_heads=2)
    if family == "llama3.2":  # tied, Llama-3 RoPE scaling
        return t.LlamaConfig(**LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=True,
                             rope_parameters=LLAMA3_ROPE)  # fmt: skip
    if family == "mistral":  # window 4 on 12-token sequences
        return t.MistralConfig(**LLAMA_LIKE, num_key_value_heads=2, sliding_window=4)
    if family == "qwen2":
        return t.Qwen2Config(**LLAMA_LIKE, num_key_value_heads=2)
    if family == "gemma":
        return t.GemmaConfig(**LLAMA_LIKE, num_key_value_heads=1, head_dim=32)
    raise AssertionError(family)


FAMILIES = ["gpt2", "gpt2-untied-relu", "gpt2-relu2", "llama", "llama3.2", "mistral", "qwen2",
            "gemma"]


def _hf_model(family):
    torch.manual_seed(0)
    config = _hf_config(family)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # random norms and biases too, so every tensor's mapping is tested
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :5] = 0  # left padding
    mask[2, 8:] = 0  # right padding
    return ids, mask


def _hf_logits(model, ids, mask):
    # transformers' forward counts positions 0..T-1 whatever the mask; pass the same
    # mask-derived positions lmforge uses (and transformers' generate passes).
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_load_hf_logits_match(family, tmp_path):
    hf = _hf_model(family)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        logits = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    diff = (logits - _hf_logits(hf, ids, mask))[real].abs().max().item()
    assert diff <= 1e-4
    # without a mask both use positions 0..T-1
    with torch.no_grad():
        assert (ours(ids).logits - hf(input_ids=ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_save_hf_loads_in_transformers_with_same_logits(family, tmp_path):
    ours = load_hf(_save(_hf_model(family), tmp_path / "src"))
    save_hf(ours, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).eval()
    assert type(hf).__name__ == json.loads((tmp_path / "out/config.json").read_text())[
        "architectures"
    ][0]
    ids, mask = _batch()
    with torch.no_grad():
        logits = ours(ids, attention_mask=mask).logits
    diff = (logits - _hf_logits(hf, ids, mask))[mask.bool()].abs().max().item()
    assert diff <= 1e-4


def _save(model, path):
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-mistral", "tiny-qwen2",
                                  "tiny-gemma"])  # fmt: skip
def test_lmforge_preset_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = build(presets.get(name)).eval()
    save_hf(model, tmp_path / "hf")
    assert config_from_hf(config_to_hf(model.config)) == model.config
    again = load_hf(tmp_path / "hf")
    assert again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - model(ids).logits).abs().max().item() <= 1e-4


def test_gpt2_conv1d_weights_are_transposed(tmp_path):
    hf = _hf_model("gpt2")
    ours = load_hf(_save(hf, tmp_path))
    c_attn = hf.transformer.h[0].attn.c_attn.weight  # Conv1D: (in, out)
    assert c_attn.shape == (64, 192)
    assert torch.equal(ours.blocks[0].attn.qkv.weight, c_attn.T)


def test_sharded_checkpoint(tmp_path):
    hf = _hf_model("llama")
    hf.save_pretrained(tmp_path / "one")
    tensors = load_file(tmp_path / "one/model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}  # fmt: skip
    out = tmp_path / "sharded"
    out.mkdir()
    (out / "config.json").write_text((tmp_path / "one/config.json").read_text())
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, out / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a, b = load_hf(tmp_path / "one"), load_hf(out)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_original_gpt2_key_names(tmp_path):
    """OpenAI's gpt2 files name tensors without the "transformer." prefix."""
    hf = _hf_model("gpt2")
    hf.save_pretrained(tmp_path / "a")
    tensors = load_file(tmp_path / "a/model.safetensors")
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    tensors["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)  # old causal-mask buffer: ignored
    (tmp_path / "b").mkdir()
    save_file(tensors, tmp_path / "b/model.safetensors", metadata={"format": "pt"})
    (tmp_path / "b/config.json").write_text((tmp_path / "a/config.json").read_text())
    a, b = load_hf(tmp_path / "a"), load_hf(tmp_path / "b")
    assert torch.equal(a.blocks[1].ffn.fc2.weight, b.blocks[1].ffn.fc2.weight)


def _edit(path, config=None, drop=None, reshape=None):
    if config is not None:
        c = json.loads((path / "config.json").read_text())
        c.update(config)
        (path / "config.json").write_text(json.dumps(c))
    if drop or reshape:
        tensors = load_file(path / "model.safetensors")
        if drop:
            del tensors[drop]
        if reshape:
            tensors[reshape] = tensors[reshape][:-1]
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_errors_are_one_line_checkpoint_errors(tmp_path):
    hf = _hf_model("llama")
    path = _save(hf, tmp_path / "m")
    cases = [
        (
            dict(config={"architectures": ["MarianMTModel"]}),
            "MarianMTModel is not supported",
        ),
        (dict(drop="model.layers.1.mlp.up_proj.weight"), "missing weight"),
        (dict(reshape="model.layers.0.self_attn.k_proj.weight"), "does not fit config.json"),
        (dict(config={"num_key_value_heads": 4}), "does not fit config.json"),
    ]
    for edit, message in cases:
        hf.save_pretrained(path)
        _edit(path, **edit)
        with pytest.raises(CheckpointError, match=message) as info:
            load_hf(path)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(tmp_path / "nowhere")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled/config.json").write_text((path / "config.json").read_text())
    (tmp_path / "pickled/pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        load_hf(tmp_path / "pickled")


def test_save_hf_refuses_what_hf_cannot_hold_and_writes_nothing(tmp_path):
    model = build(presets.get("tiny-gpt1"))  # post-LN
    with pytest.raises(CheckpointError, match="GPT-1"):
        save_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    model = build(presets.get("tiny-llama", norm="layernorm", family="llama"))
    with pytest.raises(CheckpointError, match="rmsnorm"):
        save_hf(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_save_hf_replaces_existing_folder(tmp_path):
    model = build(presets.get("tiny-qwen2"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out/stale.txt").write_text("old")
    save_hf(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
