"""LoRA adapters in the `peft` library's format, in and out.

    export_lora(model, cfg, None, "hf_dir")   # adapter_config.json + adapter_model.safetensors
    import_lora(model, "hf_dir")              # the same files onto an lmforge model
    export_hf(model, "hf_dir", cfg, merge=False)   # convert --to-hf of a PEFT run: the base
                                              # (a task model: its task class) + adapter
    save_merged_hf(model, "hf_dir")           # W0 + (alpha / r) B A, a plain HF model

The adapter is written for the transformers class `save_hf` writes for the model (GPT-2,
Llama, BERT, BART, T5, ...), so that

    base = AutoModelForCausalLM.from_pretrained(dir)       # or AutoModel, ...Seq2SeqLM
    peft.PeftModel.from_pretrained(base, dir)              # = the lmforge model's logits

Keys are `base_model.model.<HF module>.lora_A.weight` (r, d_in) and `.lora_B.weight`
(d_out, r); peft scales B A by lora_alpha / r (or / sqrt(r), use_rslora).

Where HF keeps separate projections (Llama q_proj / k_proj / v_proj, BERT query / key /
value, BART, T5) each of our per-slice LoRAs is one peft LoRA. Where HF fuses them too
(GPT-2's c_attn Conv1D), the slices inside one HF module become a single LoRA of rank
sum(r): A = [A_q; A_v] stacked, B block-diagonal ([B_q 0; 0 0; 0 B_v], the k rows zero),
written with a `rank_pattern` / `alpha_pattern` entry so that peft's scale is the same.
The product B A is then exactly the per-slice update.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..atomic import atomic_path, write_text
from ..errors import CheckpointError
from ..peft import adapters as adapters_mod
from ..peft import lora as lora_mod
from ..peft.config import PeftConfig
from .hf import ARCHITECTURES, _expand, _split_sizes, hf_architecture, save_hf

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
# peft's task_type of a transformers task class (by its suffix after "For")
TASK_TYPES = {"SequenceClassification": "SEQ_CLS", "TokenClassification": "TOKEN_CLS",
              "QuestionAnswering": "QUESTION_ANS"}
_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")


def _hf_linears(model: nn.Module, task: bool = False
                ) -> tuple[str, dict[str, tuple[str, int, int]]]:  # fmt: skip
    """(HF class, {HF module path: (our Linear's path, first row, end row)}): which rows of
    which of our Linear layers each transformers projection is. `task`: named as in the
    task classes (hf_heads.py: `bert.encoder...` where a bare BertModel has `encoder...`)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "tie_weights") or hasattr(model, "backbone"):
        raise CheckpointError("peft format: export / import works on a bare lmforge model "
                              "(decoder, encoder, encoder-decoder), not a task model")
    arch = hf_architecture(config)
    table = ARCHITECTURES[arch][2]
    if task:
        from .hf_heads import BODIES, _family

        table = BODIES[_family(config)][2]
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    out = {}
    for rule in _expand(table, config.n_layer, config.decoder_layers):
        path = rule.ours.removesuffix(".weight")
        if path not in linears or not rule.ours.endswith(".weight"):
            continue  # biases, norms, embeddings
        if rule.ffn not in (None, config.ffn):
            continue  # T5 v1.0's wi vs v1.1's wi_0 / wi_1
        n_out = model.get_submodule(path).out_features
        sizes = [n_out] if len(rule.theirs) == 1 else \
            _split_sizes(config, rule.ours, len(rule.theirs))  # fmt: skip
        start = 0
        for name, size in zip(rule.theirs, sizes):
            out[name.removesuffix(".weight")] = (path, start, start + size)
            start += size
    return arch, out


def export_lora(model: nn.Module, cfg: PeftConfig | None, family: str | None,
                out_dir: str | Path, head: dict[str, Tensor] | None = None,
                task_class: str | None = None) -> None:  # fmt: skip
    """Write the model's LoRA as a peft adapter (adapter_config.json +
    adapter_model.safetensors) in `out_dir`, for the HF class `save_hf` writes.

    `cfg` (optional) gives the config's global r / alpha (modules that differ get a
    rank_pattern / alpha_pattern entry); `family` (optional) must be the model's.
    `head` / `task_class`: the model is the body of a task model exported as
    `task_class` (hf_heads.py, e.g. BertForSequenceClassification); `head` holds the
    head's tensors by their transformers names, saved as peft saves modules_to_save."""
    arch, hf_map = _hf_linears(model, task=task_class is not None)
    if family is not None and ARCHITECTURES[arch][0] != family:
        raise CheckpointError(f"peft export: the model is {ARCHITECTURES[arch][0]} "
                              f"({arch}), not {family}")
    by_path: dict[str, list[tuple[str, int, int]]] = {}
    for hf_name, (path, s, e) in hf_map.items():
        by_path.setdefault(path, []).append((hf_name, s, e))
    tensors: dict[str, Tensor] = {}
    modules: dict[str, tuple[int, float]] = {}  # HF module -> (rank, alpha)
    slices = []
    for path, layer in model.named_modules():
        if not isinstance(layer, lora_mod.LoRALinear):
            continue
        if path not in by_path:
            raise CheckpointError(f"peft export: {path} has no {arch} counterpart")
        loras = list(layer.lora.values())
        slices += loras
        for hf_name, s, e in by_path[path]:
            inside = [x for x in loras if s <= x.start and x.end <= e]
            if any(x.start < e and x.end > s and x not in inside for x in loras):
                raise CheckpointError(f"peft export: a LoRA on {path} spans several "
                                      f"{arch} projections, one of them {hf_name}")
            if not inside:
                continue
            # One LoRA of rank sum(r) with peft's scale c: A stacked, B block-diagonal,
            # each block times scale_i / c so that c B A = sum_i scale_i pad(B_i A_i).
            c, r = inside[0].scale, sum(x.r for x in inside)
            A = torch.cat([x.A.detach() for x in inside])  # (r, d_in)
            B = torch.zeros(e - s, r, dtype=A.dtype, device=A.device)  # (d_out, r)
            col = 0
            for x in inside:
                B[x.start - s : x.end - s, col : col + x.r] = x.B.detach() * (x.scale / c)
                col += x.r
            alpha = c * (math.sqrt(r) if inside[0].rslora else r)  # peft: c = alpha / r
            modules[hf_name] = (r, alpha)
            tensors[f"base_model.model.{hf_name}.lora_A.weight"] = A.contiguous().cpu()
            tensors[f"base_model.model.{hf_name}.lora_B.weight"] = B.contiguous().cpu()
    if not modules:
        raise CheckpointError("peft export: the model has no LoRA layers")
    if task_class == "LlamaForQuestionAnswering":  # its body is `transformer`, not `model`
        tensors = {k.replace("base_model.model.model.", "base_model.model.transformer.", 1): v
                   for k, v in tensors.items()}  # fmt: skip
        modules = {"transformer." + k.removeprefix("model."): v for k, v in modules.items()}
    for name, tensor in (head or {}).items():  # peft's modules_to_save, as peft saves them
        tensors[f"base_model.model.{name}"] = tensor.detach().contiguous().cpu()
    if len({x.rslora for x in slices}) > 1:
        raise CheckpointError("peft export: some LoRA layers use rsLoRA and some do not")
    drops = {x.drop.p if isinstance(x.drop, nn.Dropout) else 0.0 for x in slices}
    r0, alpha0 = (cfg.r, cfg.alpha) if cfg is not None else next(iter(modules.values()))
    hf_config = {
        "peft_type": "LORA",
        "task_type": TASK_TYPES.get((task_class or "").rpartition("For")[2]),
        "auto_mapping": {"base_model_class": task_class or arch,
                         "parent_library": f"transformers.models.{ARCHITECTURES[arch][1]}."
                                           f"modeling_{ARCHITECTURES[arch][1]}"},
        "base_model_name_or_path": None,
        "r": r0,
        "lora_alpha": alpha0,
        "lora_dropout": max(drops),
        "use_rslora": slices[0].rslora,
        "target_modules": sorted(modules),
        "rank_pattern": {n: r for n, (r, _) in sorted(modules.items()) if r != r0},
        "alpha_pattern": {n: a for n, (_, a) in sorted(modules.items()) if a != alpha0},
        "fan_in_fan_out": arch == "GPT2LMHeadModel",  # GPT-2's Conv1D stores (in, out)
        "bias": "none",
        "modules_to_save": sorted({k.split(".")[0] for k in head}) if head else None,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text(out_dir / CONFIG_FILE, json.dumps(hf_config, indent=2) + "\n")


def _pattern(patterns: dict, name: str, default):
    """peft's lookup: a key matches a module whose path ends with it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def import_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Put a peft LoRA adapter (a folder with adapter_config.json and
    adapter_model.safetensors) onto `model` (in place): LoRA trains, the rest is frozen."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE} + {WEIGHTS_FILE} (a peft adapter)")
    try:
        c = json.loads(config_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from e
    kind = c.get("peft_type")
    if kind != "LORA":
        raise CheckpointError(f"{config_file}: a peft {kind} adapter; lmforge imports LoRA "
                              "adapters only (its other methods are not peft's)")
    for key, plain in (("use_dora", False), ("lora_bias", False), ("bias", "none")):
        if c.get(key, plain) != plain:
            raise CheckpointError(f"{config_file}: {key}={c[key]!r} (DoRA / LoRA biases) "
                                  "is a LoRA variant lmforge does not have")
    arch, hf_map = _hf_linears(model)
    made_for = (c.get("auto_mapping") or {}).get("base_model_class")
    if made_for and made_for != arch:
        raise CheckpointError(f"{path}: the adapter is for {made_for}, this base is {arch}")
    pairs: dict[str, dict[str, Tensor]] = {}
    try:
        with safe_open(weights_file, framework="pt") as f:
            for key in f.keys():
                m = _KEY.fullmatch(key)
                if m is None:
                    raise CheckpointError(f"{weights_file}: tensor {key!r} is not a LoRA A / B "
                                          "weight (modules_to_save, embeddings: not imported)")
                pairs.setdefault(m.group(1), {})[m.group(2)] = f.get_tensor(key)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_file}: unreadable safetensors file ({e})") from e
    names = {(s.path, s.start, s.end): s.target for s in lora_mod.sites(model)}
    rslora = bool(c.get("use_rslora", False))
    for hf_name, ab in sorted(pairs.items()):
        if hf_name not in hf_map:
            raise CheckpointError(f"{path}: the adapter adapts {hf_name!r}, which the "
                                  f"{arch} base has not (an adapter of another family?)")
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{path}: {hf_name} has lora_{''.join(ab)} only")
        ours, s, e = hf_map[hf_name]
        linear = model.get_submodule(ours)
        A, B = ab["A"], ab["B"]
        r = A.shape[0]
        if A.shape != (r, linear.in_features) or B.shape != (e - s, r):
            raise CheckpointError(
                f"{path}: {hf_name} has lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)}; "
                f"this base needs ({r}, {linear.in_features}), ({e - s}, {r}) "
                "(a base of another shape?)"
            )
        alpha = _pattern(c.get("alpha_pattern") or {}, hf_name, c.get("lora_alpha", 8))
        name = names.get((ours, s, e), ours.rpartition(".")[2])  # GPT-2 c_attn: all of qkv
        lora = lora_mod.wrap(model, ours).add(name, s, e, r, alpha, rslora,
                                              float(c.get("lora_dropout", 0.0)))
        with torch.no_grad():
            lora.A.copy_(A)
            lora.B.copy_(B)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora." in name)
    return model


def _save_base(model: nn.Module, out_dir: str | Path, labels: list[str] | None) -> str:
    """The model's weights as transformers writes them (a task model: its task class with
    the head, hf_heads.py); the class's name."""
    if hasattr(model, "backbone"):
        from .hf_heads import save_hf_task

        return save_hf_task(model, out_dir, labels=labels)
    save_hf(model, out_dir)
    return hf_architecture(model.config)


def save_merged_hf(model: nn.Module, out_dir: str | Path,
                   labels: list[str] | None = None) -> str:  # fmt: skip
    """`save_hf` of the model with every LoRA folded in (W0 + (alpha / r) B A): a plain
    transformers checkpoint (a task model: its task class, hf_heads.py). The model is
    left as it was, bit for bit. Returns the transformers class."""
    layers = [m for m in lora_mod.lora_layers(model) if not m.merged]
    saved = [layer.weight.detach().clone() for layer in layers]
    for layer in layers:
        layer.merge()
    try:
        return _save_base(model, out_dir, labels)
    finally:
        with torch.no_grad():
            for layer, w0 in zip(layers, saved):
                layer.weight.copy_(w0)
                layer.merged = False


PROMPT_ADAPTER_DIR = "adapter"  # DIR/adapter: transformers' from_pretrained(DIR) refuses
# a prompt-learning adapter_config.json in DIR itself


def export_hf(model: nn.Module, out_dir: str | Path, cfg: PeftConfig | None = None,
              merge: bool = False, labels: list[str] | None = None) -> str:
    """`convert --to-hf` of a PEFT model; returns the transformers class written.

    The base in transformers format (a task model as its task class with the trained
    head, hf_heads.py; else the model's class) and the adapter in peft's format: a LoRA
    beside the weights in `out_dir`, so that `PeftModel.from_pretrained(Cls.from_pretrained(
    DIR), DIR)` computes the model; prompt / prefix / P-tuning in `out_dir`/adapter. A task
    model's head is in the adapter too, as peft's modules_to_save. With `merge` (LoRA
    only): the merged weights alone, a plain transformers model. Houlsby adapters have no
    peft format and are refused."""
    from ..peft import prompts
    from .hf_heads import _head_names
    from .peft_prompts import export_prompt_adapter

    body = model.backbone if hasattr(model, "backbone") else model
    if adapters_mod.adapter_layers(body):
        raise CheckpointError("Houlsby adapters have no peft format (peft has no Houlsby "
                              "adapter; AdapterHub's check: bench/adapters_check.py)")
    prompt = getattr(prompts._body(model), "prompt_encoder", None) is not None
    if merge and prompt:
        raise CheckpointError("--merge: prompt, prefix and P-tuning learn virtual tokens, not "
                              "weights, so there is nothing to merge; export without --merge")
    if merge:
        return save_merged_hf(model, out_dir, labels)
    cls = _save_base(model, out_dir, labels)
    head, task_class = None, None
    if body is not model:  # the trained head, by its transformers names
        task_class = cls
        state = model.head.state_dict()
        head = {theirs: state[ours] for ours, theirs in _head_names(cls, model.head).items()}
    if prompt:
        export_prompt_adapter(model, cfg or PeftConfig(method="prompt"),
                              TASK_TYPES.get(cls.rpartition("For")[2]),
                              Path(out_dir) / PROMPT_ADAPTER_DIR, head=head)
    elif lora_mod.lora_layers(body):
        export_lora(body, cfg, None, out_dir, head=head, task_class=task_class)
    return cls
