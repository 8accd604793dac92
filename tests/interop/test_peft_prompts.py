"""Prompt / prefix / P-tuning adapters interchange with the `peft` library (random weights,
offline): lmforge -> peft gives the same logits and greedy tokens, peft -> lmforge too."""

import dataclasses
import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.generation import generate  # noqa: E402
from lmforge.interop.hf import load_hf, save_hf  # noqa: E402
from lmforge.interop.peft_prompts import export_prompt_adapter, import_prompt_adapter  # noqa: E402
from lmforge.models import build, presets  # noqa: E402
from lmforge.peft import prompts  # noqa: E402
from lmforge.peft.config import PeftConfig  # noqa: E402

N = 4
AUTO = {"tiny-gpt2": "AutoModelForCausalLM", "tiny-llama": "AutoModelForCausalLM",
        "tiny-gemma": "AutoModelForCausalLM",
        "tiny-bert": "AutoModel", "tiny-bart": "AutoModelForSeq2SeqLM",
        "tiny-t5": "AutoModelForSeq2SeqLM"}  # fmt: skip
CASES = [(p, m) for p in AUTO for m in ("prompt", "prefix", "ptuning")]


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "position ids are not supported", ...
        yield


def _ours(preset, method, tmp_path):
    """A random lmforge model (saved as HF in tmp/base) with random virtual tokens."""
    torch.manual_seed(0)
    model = build(presets.get(preset)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_hf(model, tmp_path / "base")
    cfg = PeftConfig(method=method, num_virtual_tokens=N, encoder_hidden=16,
                     prompt_encoder="lstm")  # fmt: skip
    prompts.apply(model, cfg)
    with torch.no_grad():
        for p in prompts.prompt_encoder(model).parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, cfg


def _hf(preset, tmp_path):
    auto = getattr(transformers, AUTO[preset])
    return auto.from_pretrained(tmp_path / "base", attn_implementation="eager").eval()


def _compare(ours, theirs, preset, method):
    """Logits (hidden states and pooler for BERT) of lmforge vs the PeftModel, max |diff|."""
    ids = torch.randint(5, 250, (2, 9), generator=torch.Generator().manual_seed(3))
    virtual = N if method != "prefix" else 0  # peft returns the virtual positions too
    with torch.no_grad():
        if preset == "tiny-bert":
            a, b = ours(ids), theirs(input_ids=ids)
            pooled = (a.pooler_output - b.pooler_output).abs().max().item()
            return max(pooled, (a.last_hidden_state - b.last_hidden_state[:, virtual:])
                       .abs().max().item())  # fmt: skip
        if AUTO[preset] == "AutoModelForSeq2SeqLM":
            tgt = torch.randint(5, 250, (2, 6), generator=torch.Generator().manual_seed(4))
            return (ours(ids, decoder_input_ids=tgt).logits
                    - theirs(input_ids=ids, decoder_input_ids=tgt).logits).abs().max().item()
        return (ours(ids).logits - theirs(input_ids=ids).logits[:, virtual:]).abs().max().item()


@pytest.mark.parametrize("preset,method", CASES)
def test_export_loads_in_peft_with_the_same_logits(preset, method, tmp_path):
    ours, cfg = _ours(preset, method, tmp_path)
    export_prompt_adapter(ours, cfg, None, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert saved["peft_type"] == {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING",
                                  "ptuning": "P_TUNING"}[method]  # fmt: skip
    theirs = peft.PeftModel.from_pretrained(_hf(preset, tmp_path), tmp_path / "adapter").eval()
    assert _compare(ours, theirs, preset, method) <= 1e-5
    if preset == "tiny-bert":
        return
    # greedy tokens: the argmax of peft's forward, token by token
    ids = torch.randint(5, 250, (2, 9), generator=torch.Generator().manual_seed(5))
    got = generate(ours, ids, max_new_tokens=6, eos_token_id=[])
    assert torch.equal(got, _peft_greedy(theirs, ids, 6, ours.config))
    if AUTO[preset] == "AutoModelForCausalLM" and method != "prefix":
        # and peft's generate (without its cache: peft 0.21.2 + transformers 5.25 cached
        # generation disagrees with its own forward; so does uncached prefix generation)
        with torch.no_grad():
            expected = theirs.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(got, expected)


def _peft_greedy(theirs, ids, n, config):
    """Greedy decoding by hand: append argmax of the PeftModel's last-position logits."""
    seq2seq = config.arch == "seq2seq"
    seq = torch.full((ids.shape[0], 1), config.decoder_start_token_id) if seq2seq else ids
    with torch.no_grad():
        for _ in range(n):
            if seq2seq:
                logits = theirs(input_ids=ids, decoder_input_ids=seq).logits
            else:
                logits = theirs(input_ids=seq).logits
            seq = torch.cat((seq, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return seq


@pytest.mark.parametrize("preset,method", [("tiny-llama", "prefix"), ("tiny-gpt2", "ptuning"),
                                           ("tiny-bert", "prompt"), ("tiny-t5", "prefix"),
                                           ("tiny-bart", "prompt")])  # fmt: skip
def test_round_trip_through_the_adapter_files(preset, method, tmp_path):
    ours, cfg = _ours(preset, method, tmp_path)
    export_prompt_adapter(ours, cfg, None, tmp_path / "adapter")
    again = import_prompt_adapter(load_hf(tmp_path / "base").eval(), tmp_path / "adapter")
    assert prompts.prompt_encoder(again).method == method
    ids = torch.randint(5, 250, (2, 9))
    kw = {"decoder_input_ids": ids[:, :5]} if AUTO[preset] == "AutoModelForSeq2SeqLM" else {}
    with torch.no_grad():
        a, b = ours(ids, **kw), again(ids, **kw)
    key = "last_hidden_state" if preset == "tiny-bert" else "logits"
    torch.testing.assert_close(getattr(a, key), getattr(b, key), atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset,method", [("tiny-gpt2", "prefix"), ("tiny-llama", "prompt"),
                                           ("tiny-llama", "ptuning"), ("tiny-bart", "prefix")])
def test_peft_trained_adapter_imports_with_the_same_logits(preset, method, tmp_path):
    """The other way: an adapter peft made (prefix with its MLP, P-tuning with an MLP
    encoder) read into lmforge."""
    torch.manual_seed(0)
    save_hf(build(presets.get(preset)).eval(), tmp_path / "base")
    task = "SEQ_2_SEQ_LM" if preset == "tiny-bart" else "CAUSAL_LM"
    make = {"prompt": lambda: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=N),
            "prefix": lambda: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=N,
                                                      prefix_projection=True,
                                                      encoder_hidden_size=16),
            "ptuning": lambda: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=N,
                                                        encoder_hidden_size=16)}  # fmt: skip
    theirs = peft.get_peft_model(_hf(preset, tmp_path), make[method]()).eval()
    theirs.save_pretrained(tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(_hf(preset, tmp_path), tmp_path / "adapter").eval()
    ours = import_prompt_adapter(load_hf(tmp_path / "base").eval(), tmp_path / "adapter")
    assert _compare(ours, theirs, preset, method) <= 1e-5


def test_adapters_lmforge_cannot_read_fail_with_one_line(tmp_path):
    torch.manual_seed(0)
    save_hf(build(presets.get("tiny-gpt2")).eval(), tmp_path / "base")
    lora = peft.get_peft_model(_hf("tiny-gpt2", tmp_path),
                               peft.IA3Config(task_type="CAUSAL_LM", target_modules=["c_attn"],
                                              feedforward_modules=[]))  # fmt: skip
    lora.save_pretrained(tmp_path / "ia3")
    base = load_hf(tmp_path / "base")
    with pytest.raises(CheckpointError, match="peft_type 'IA3'") as e:
        import_prompt_adapter(base, tmp_path / "ia3")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not a readable"):
        import_prompt_adapter(base, tmp_path / "nowhere")
    # an adapter for another shape of model
    ours, cfg = _ours("tiny-llama", "prompt", tmp_path / "llama")
    export_prompt_adapter(ours, cfg, None, tmp_path / "llama/adapter")
    deeper = dataclasses.replace(presets.get("tiny-llama"), n_layer=3)
    with pytest.raises(CheckpointError, match="made for"):
        import_prompt_adapter(build(deeper), tmp_path / "llama/adapter")
    (tmp_path / "llama/adapter/adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="prompt_embeddings"):
        import_prompt_adapter(build(presets.get("tiny-llama")), tmp_path / "llama/adapter")


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_bert_classification_matches_peft_sequence_classifier(method, tmp_path):
    """A TaskModel (BERT pooler + linear head) vs peft's PeftModelForSequenceClassification
    on BertForSequenceClassification: the pooler reads the first virtual token in both.
    (Prefix: peft 0.21.2 looks for a `past_key_values` parameter that transformers 5.25's
    BertModel renamed `cache` and refuses; the FEATURE_EXTRACTION test above compares
    BERT's prefix-tuned hidden states and pooler instead.)"""
    from lmforge.models.heads import ClassificationHead, TaskModel

    body, cfg = _ours("tiny-bert", method, tmp_path)
    torch.manual_seed(7)
    ours = TaskModel(body, ClassificationHead(64, 3, dropout=0.0), "pooler").eval()
    head = {"classifier.weight": ours.head.out.weight, "classifier.bias": ours.head.out.bias}
    export_prompt_adapter(ours, cfg, "SEQ_CLS", tmp_path / "adapter", head)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=3, attn_implementation="eager").eval()
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert type(theirs).__name__ == "PeftModelForSequenceClassification"
    ids = torch.randint(5, 250, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    with torch.no_grad():
        diff = ours(ids, mask) - theirs(input_ids=ids, attention_mask=mask).logits
    assert diff.abs().max().item() <= 1e-5
