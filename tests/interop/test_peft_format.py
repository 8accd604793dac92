"""LoRA adapters in peft's format: lmforge's per-slice LoRA on fused q/k/v equals peft's
LoRA on transformers' separate projections (and on GPT-2's fused c_attn), both ways."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft_lib = pytest.importorskip("peft")

from lmforge import peft  # noqa: E402
from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.interop.hf import load_hf, save_hf  # noqa: E402
from lmforge.interop.peft_format import export_lora, import_lora, save_merged_hf  # noqa: E402
from lmforge.models import build, presets  # noqa: E402

# preset -> the targets exported (every kind of slice: fused q/v, GQA k/v, gated gate/up,
# cross-attention, Conv1D)
CASES = {
    "tiny-gpt2": ["q", "v", "out", "up", "down"],
    "tiny-llama": ["q", "v", "gate", "down"],
    "tiny-bert": ["q", "k", "v", "out", "up", "down"],
    "tiny-bart": ["q", "v", "cross_q", "cross_k", "cross_v", "cross_out"],
    "tiny-t5-v1.1": ["all-linear"],
}
IDS = torch.randint(4, 200, (2, 9), generator=torch.Generator().manual_seed(1))


def _ours(model):
    with torch.no_grad():
        if model.config.arch == "seq2seq":
            return model(IDS, decoder_input_ids=IDS).logits
        if model.config.arch == "encoder":
            return model(IDS).prediction_logits
        return model(IDS).logits


def _theirs(model):
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=IDS, decoder_input_ids=IDS).logits
        out = model(input_ids=IDS)
        return out.prediction_logits if hasattr(out, "prediction_logits") else out.logits


def _close(a, b):
    """Equal to 1e-5 on the logits' scale (T5's untied logits reach ~20)."""
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def _hf_class(path):
    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch)


def _lora_model(name, targets, rslora=False):
    torch.manual_seed(0)
    model = build(presets.get(name)).eval()
    cfg = peft.PeftConfig(method="lora", r=4, alpha=8, targets=targets, rslora=rslora)
    peft.apply(model, cfg)
    with torch.no_grad():  # B = 0 at the start; give every update a value to compare
        for layer in peft.lora.lora_layers(model):
            for lora in layer.lora.values():
                lora.B.normal_(0.0, 0.05)
    return model, cfg


@pytest.mark.parametrize("name", list(CASES))
def test_export_loads_in_peft_with_same_logits(name, tmp_path):
    model, cfg = _lora_model(name, CASES[name], rslora=name == "tiny-llama")
    save_hf(model, tmp_path / "base")  # the base: W0 only, LoRA tensors are not HF weights
    export_lora(model, cfg, None, tmp_path / "adapter")
    base = _hf_class(tmp_path / "base").from_pretrained(tmp_path / "base").eval()
    plain = _theirs(base)
    hf = peft_lib.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ours = _ours(model)
    assert (ours - plain).abs().max() > 1e-3  # the adapter changes the model
    assert _close(ours, _theirs(hf))
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["peft_type"] == "LORA" and written["r"] == 4 and written["lora_alpha"] == 8


def test_gpt2_fused_c_attn_is_one_lora_of_summed_rank(tmp_path):
    model, cfg = _lora_model("tiny-gpt2", ["q", "v"])
    save_hf(model, tmp_path)  # base and adapter in one folder, as `convert --to-hf` writes
    export_lora(model, cfg, "gpt2", tmp_path)
    # transformers attaches an adapter it finds beside the weights; PeftModel reloads it
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    hf = peft_lib.PeftModel.from_pretrained(base, tmp_path).eval()
    assert _close(_ours(model), _theirs(hf))
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["target_modules"] == ["transformer.h.0.attn.c_attn",
                                         "transformer.h.1.attn.c_attn"]
    assert written["rank_pattern"] == {m: 8 for m in written["target_modules"]}
    assert written["alpha_pattern"] == {m: 16 for m in written["target_modules"]}
    assert written["fan_in_fan_out"] is True
    from safetensors.torch import load_file

    t = load_file(tmp_path / "adapter_model.safetensors")
    B = t["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]  # (3d, 2r)
    assert B.shape == (192, 8)
    assert torch.equal(B[64:128], torch.zeros(64, 8))  # k rows: no update
    assert torch.equal(B[:64, 4:], torch.zeros(64, 4))  # q rows see A_q only
    assert torch.equal(B[128:, :4], torch.zeros(64, 4))  # v rows see A_v only


# preset -> peft target_modules on the transformers model (separate q / v projections)
HF_TARGETS = {
    "tiny-gpt2": ["c_attn", "mlp.c_proj"],  # GPT-2: one LoRA over the fused q/k/v
    "tiny-llama": ["q_proj", "v_proj", "gate_proj", "up_proj"],
    "tiny-bert": ["query", "value", "intermediate.dense"],
    "tiny-bart": ["q_proj", "v_proj", "fc1"],
    "tiny-t5-v1.1": ["q", "v", "wi_0", "wo"],
}


@pytest.mark.parametrize("name", list(HF_TARGETS))
def test_peft_lora_on_transformers_equals_fused_lora_in_lmforge(name, tmp_path):
    """peft on the HF model (q_proj and v_proj apart) = our LoRA on slices of fused qkv."""
    torch.manual_seed(0)
    save_hf(build(presets.get(name)), tmp_path / "base")
    base = _hf_class(tmp_path / "base").from_pretrained(tmp_path / "base").eval()
    lora_cfg = peft_lib.LoraConfig(r=4, lora_alpha=16, target_modules=HF_TARGETS[name],
                                   rank_pattern={HF_TARGETS[name][0]: 2})
    hf = peft_lib.get_peft_model(base, lora_cfg)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    hf.eval().save_pretrained(tmp_path / "adapter")
    ours = import_lora(load_hf(tmp_path / "base"), tmp_path / "adapter")
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, _ in ours.named_parameters() if ".lora." in n
    }
    assert _close(_ours(ours), _theirs(hf))
    # and back out again: peft reads what we write
    export_lora(ours, None, None, tmp_path / "adapter2")
    again = peft_lib.PeftModel.from_pretrained(
        _hf_class(tmp_path / "base").from_pretrained(tmp_path / "base").eval(),
        tmp_path / "adapter2",
    ).eval()
    assert _close(_theirs(again), _theirs(hf))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bart"])
def test_merged_export_is_a_plain_hf_model_with_the_lora_logits(name, tmp_path):
    model, _ = _lora_model(name, ["all-linear"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_merged_hf(model, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    hf = _hf_class(tmp_path).from_pretrained(tmp_path).eval()
    assert _close(_ours(model), _theirs(hf))
    for k, v in model.state_dict().items():  # the model itself is left unmerged
        assert torch.equal(v, before[k]), k


# ---- bad input: one line, CheckpointError


def _peft_adapter(name, tmp_path, config):
    torch.manual_seed(0)
    save_hf(build(presets.get(name)), tmp_path / name)
    base = _hf_class(tmp_path / name).from_pretrained(tmp_path / name)
    peft_lib.get_peft_model(base, config).save_pretrained(tmp_path / f"{name}-adapter")
    return tmp_path / f"{name}-adapter"


def _one_line_error(fn, *args, match):
    with pytest.raises(CheckpointError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)


def test_adapter_of_another_family_is_refused(tmp_path):
    adapter = _peft_adapter("tiny-llama", tmp_path, peft_lib.LoraConfig(
        r=2, target_modules=["q_proj"]))  # fmt: skip
    gpt2 = build(presets.get("tiny-gpt2"))
    _one_line_error(import_lora, gpt2, adapter,
                    match="for LlamaForCausalLM, this base is GPT2LMHeadModel")
    config = json.loads((adapter / "adapter_config.json").read_text())
    del config["auto_mapping"]  # without the class name: the module names do not fit
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    _one_line_error(import_lora, gpt2, adapter, match="which the GPT2LMHeadModel base has not")


def test_adapter_for_a_base_of_another_shape_is_refused(tmp_path):
    adapter = _peft_adapter("tiny-llama", tmp_path, peft_lib.LoraConfig(
        r=2, target_modules=["q_proj"]))  # fmt: skip
    wider = presets.get("tiny-llama")
    import dataclasses

    wider = build(dataclasses.replace(wider, d_model=wider.d_model * 2))
    _one_line_error(import_lora, wider, adapter, match="a base of another shape")


def test_peft_method_lmforge_lacks_is_refused(tmp_path):
    adapter = _peft_adapter("tiny-llama", tmp_path, peft_lib.IA3Config(
        target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))  # fmt: skip
    _one_line_error(import_lora, build(presets.get("tiny-llama")), adapter,
                    match="a peft IA3 adapter; lmforge imports LoRA")
    dora = _peft_adapter("tiny-llama", tmp_path / "d", peft_lib.LoraConfig(
        r=2, target_modules=["q_proj"], use_dora=True))  # fmt: skip
    _one_line_error(import_lora, build(presets.get("tiny-llama")), dora, match="use_dora")


def test_task_model_and_missing_files_are_refused(tmp_path):
    _one_line_error(import_lora, build(presets.get("tiny-gpt2")), tmp_path,
                    match="no adapter_config.json")
    from lmforge.models.heads import ClassificationHead, TaskModel

    task = TaskModel(build(presets.get("tiny-bert")), ClassificationHead(64, 2), "first")
    peft.apply(task, peft.PeftConfig(method="lora"))
    _one_line_error(export_lora, task, None, None, tmp_path, match="not a task model")


def _minilm_root():
    from lmforge.data import registry
    from lmforge.errors import DataError

    try:
        files = registry.files("minilm")
    except DataError as e:
        pytest.skip(str(e))
    return next(f for f in files if f.name == "config.json").parent


def test_convert_from_hf_merges_a_peft_adapter(tmp_path, capsys):
    """lmforge convert --from-hf BASE --adapter DIR: the run holds W0 + (alpha / r) B A."""
    from lmforge.cli import main
    from lmforge.runs import load_run

    root = _minilm_root()
    hf = peft_lib.get_peft_model(transformers.BertModel.from_pretrained(root).eval(),
                                 peft_lib.LoraConfig(r=4, lora_alpha=8,
                                                     target_modules=["query", "value"]))
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    hf.eval().save_pretrained(tmp_path / "adapter")
    out = tmp_path / "run"
    assert main(["convert", "--from-hf", str(root), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(out)]) == 0
    run = load_run(out)
    with torch.no_grad():
        ours = run.model(IDS).last_hidden_state
        theirs = hf(input_ids=IDS).last_hidden_state
        plain = hf.get_base_model()
        with hf.disable_adapter():
            base = plain(input_ids=IDS).last_hidden_state
    assert (ours - base).abs().max() > 1e-3
    assert _close(ours, theirs)
    # an adapter of a method lmforge lacks: one line, exit 2, no run written
    ia3 = _peft_adapter("tiny-bert", tmp_path, peft_lib.IA3Config(
        target_modules=["key", "value"], feedforward_modules=[]))  # fmt: skip
    capsys.readouterr()
    assert main(["convert", "--from-hf", str(root), "--adapter", str(ia3),
                 "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a peft IA3 adapter; lmforge imports LoRA" in err
    assert not (tmp_path / "run2").exists()


def test_export_hf_of_a_task_model_writes_its_task_class_and_adapter(tmp_path):
    from lmforge.interop.peft_format import export_hf
    from lmforge.models.heads import ClassificationHead, TaskModel

    body, cfg = _lora_model("tiny-bert", ["q", "v"])
    task = TaskModel(body, ClassificationHead(64, 2), "pooler").eval()
    with torch.no_grad():
        ours = task(IDS)
    assert export_hf(task, tmp_path, cfg) == "BertForSequenceClassification"
    assert {p.name for p in tmp_path.iterdir()} >= {
        "config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors"}
    hf = peft_lib.PeftModel.from_pretrained(
        transformers.BertForSequenceClassification.from_pretrained(tmp_path), tmp_path).eval()
    assert _close(ours, _theirs(hf))
    export_hf(task, tmp_path / "merged", cfg, merge=True)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert _close(ours, _theirs(merged.eval()))
    houlsby = peft.apply(build(presets.get("tiny-bert")), peft.PeftConfig(method="adapters"))
    _one_line_error(export_hf, houlsby, tmp_path / "h", match="Houlsby adapters have no peft")
