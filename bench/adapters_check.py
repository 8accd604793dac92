"""lmforge's Houlsby adapters vs AdapterHub's `adapters` library (`double_seq_bn`).

    .venv/bin/python bench/adapters_check.py [--venv /tmp/lmforge-adapters-venv]

`peft` has no Houlsby adapter; AdapterHub's `adapters` 1.3.0 has, but pins transformers
4.57.x, which cannot share `.venv` with our transformers 5. So this script builds its own
throwaway virtualenv once (torch 2.13.0 from /opt/wheels first, then transformers 4.57.6
and adapters 1.3.0 from PyPI) and runs the AdapterHub side there:

    lmforge side (this interpreter): a tiny model per family with random weights, Houlsby
        adapters with random weights (up-projections too, so they do something) ->
        save_hf (the base) + the adapters in AdapterHub's format (adapter_config.json +
        adapter.safetensors, written here by `export_adapterhub`) + our logits
    AdapterHub side (the venv): from_pretrained, adapters.init, load_adapter,
        set_active_adapters -> logits

It prints max |ours - theirs| per family and exits 1 if any is above 1e-5 on the
outputs' scale. `make test` does not run it (it needs PyPI once, for the venv).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FAMILIES = ["tiny-bert", "tiny-gpt2", "tiny-bart", "tiny-llama", "tiny-t5"]
ADAPTERHUB = ["transformers==4.57.6", "adapters==1.3.0"]


# ---------------------------------------------------------------- lmforge side


def _adapterhub_prefix(model_type: str, hf_linear: str, role: str) -> str:
    """Where AdapterHub keeps the adapter that follows the HF Linear `hf_linear`
    (role "attn": the attention output projection, "ffn": the FFN's second matrix)."""
    layer = re.match(r"(.*?\.(?:layer|layers|h|block)\.\d+)\.", hf_linear).group(1)
    if model_type == "bert":  # BertSelfOutput / BertOutput hold them
        return layer + (".attention.output" if role == "attn" else ".output")
    if model_type == "t5":  # the T5LayerSelfAttention / T5LayerFF module
        return hf_linear.rsplit(".", 2)[0]
    return layer + (".attention_adapters" if role == "attn" else ".output_adapters")


def export_adapterhub(model, out_dir: Path, name: str = "houlsby") -> None:
    """Write lmforge's Houlsby adapters as an AdapterHub `double_seq_bn` adapter."""
    from safetensors.torch import save_file

    from lmforge.interop.hf import ARCHITECTURES, _expand, hf_architecture
    from lmforge.peft.adapters import AdapterLinear

    config = model.config
    arch = hf_architecture(config)
    model_type = ARCHITECTURES[arch][1]
    hf_name = {
        r.ours.removesuffix(".weight"): r.theirs[0].removesuffix(".weight")
        for r in _expand(ARCHITECTURES[arch][2], config.n_layer, config.decoder_layers)
    }
    tensors, widths, acts = {}, set(), set()
    for path, m in model.named_modules():
        if not isinstance(m, AdapterLinear):
            continue
        role = "attn" if path.endswith("attn.out") else "ffn"
        prefix = f"{_adapterhub_prefix(model_type, hf_name[path], role)}.adapters.{name}"
        a = m.adapter
        tensors[f"{prefix}.adapter_down.0.weight"] = a.down.weight.detach().contiguous()
        tensors[f"{prefix}.adapter_down.0.bias"] = a.down.bias.detach().contiguous()
        tensors[f"{prefix}.adapter_up.weight"] = a.up.weight.detach().contiguous()
        tensors[f"{prefix}.adapter_up.bias"] = a.up.bias.detach().contiguous()
        widths.add(a.down.out_features)
        acts.add(a.activation)
    (bottleneck,), (activation,) = widths, acts
    adapter_config = {
        "config": {
            # Houlsby et al.: after each sublayer's projection, adapter residual, then the
            # model's own residual (and post-LN); mh_adapter = after attention,
            # output_adapter = after the FFN. Everything else AdapterHub's defaults.
            "mh_adapter": True, "output_adapter": True, "original_ln_before": False,
            "original_ln_after": True, "residual_before_ln": True,
            "adapter_residual_before_ln": False, "ln_before": False, "ln_after": False,
            "reduction_factor": config.d_model / bottleneck, "non_linearity": activation,
            "scaling": 1.0, "use_gating": False, "is_parallel": False, "dropout": 0.0,
            "init_weights": "bert", "cross_adapter": False, "phm_layer": False,
            "inv_adapter": None, "leave_out": [], "stochastic_depth": 0.0,
        },
        "hidden_size": config.d_model,
        "model_class": arch,
        "model_name": "",
        "model_type": model_type,
        "name": name,
        "version": "adapters.1.3.0",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))


def _ids():
    import torch

    return torch.randint(4, 200, (2, 11), generator=torch.Generator().manual_seed(1))


def prepare(work: Path) -> list[str]:
    """Models, adapters and our outputs under `work/<family>/`."""
    import torch
    from safetensors.torch import save_file

    from lmforge import peft
    from lmforge.interop.hf import save_hf
    from lmforge.models import build, presets

    ids = _ids()
    for family in FAMILIES:
        torch.manual_seed(0)
        config = presets.get(family)
        if config.arch == "encoder":
            config = dataclasses.replace(config, encoder_head="none")  # BertModel
        model = build(config).eval()
        peft.apply(model, peft.PeftConfig(method="adapters", bottleneck=8))
        with torch.no_grad():  # as if trained: adapters and norms moved from their init
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
            if config.arch == "seq2seq":
                out = model(ids, decoder_input_ids=ids).logits
            elif config.arch == "encoder":
                out = model(ids).last_hidden_state
            else:
                out = model(ids).logits
        save_hf(model, work / family / "base")
        export_adapterhub(model, work / family / "adapter")
        save_file({"out": out.contiguous(), "ids": ids}, str(work / family / "ours.safetensors"))
    return FAMILIES


# ---------------------------------------------------------------- AdapterHub side


def _forward(model, ids):
    import torch

    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids).logits
        if type(model).__name__ == "BertModel":
            return model(input_ids=ids).last_hidden_state
        return model(input_ids=ids).logits


def theirs(work: Path) -> None:
    """Runs in the throwaway venv: print {family: max |diff|, scale} as JSON."""
    import adapters
    import transformers
    from safetensors.torch import load_file

    result = {}
    for family in FAMILIES:
        d = work / family
        arch = json.loads((d / "base" / "config.json").read_text())["architectures"][0]
        try:
            model = getattr(transformers, arch).from_pretrained(d / "base").eval()
            adapters.init(model)
            name = model.load_adapter(str(d / "adapter"), use_safetensors=True)
            model.set_active_adapters(name)
        except Exception as e:  # a family AdapterHub (or 4.57) cannot load: say so
            result[family] = {"error": f"{type(e).__name__}: {e}"[:200]}
            continue
        ours = load_file(d / "ours.safetensors")
        diff = (_forward(model, ours["ids"]) - ours["out"]).abs().max().item()
        model.set_active_adapters(None)  # the base alone: how much the adapters change
        effect = (_forward(model, ours["ids"]) - ours["out"]).abs().max().item()
        n_adapters = sum(1 for n, _ in model.named_parameters()
                         if ".adapters." in n and n.endswith("adapter_up.weight"))  # fmt: skip
        result[family] = {"class": arch, "max_abs_diff": diff, "effect": effect,
                          "scale": ours["out"].abs().max().item(), "adapters": n_adapters}
    print(json.dumps(result))


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import adapters, transformers, torch"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--find-links", "/opt/wheels", "torch==2.13.0"], check=True)
    subprocess.run([*pip, *ADAPTERHUB], check=True)  # torch is there: none pulled
    return python


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=Path("/tmp/lmforge-adapters-venv"))
    p.add_argument("--theirs", type=Path, help=argparse.SUPPRESS)  # inside the venv
    args = p.parse_args()
    if args.theirs:
        theirs(args.theirs)
        return 0
    python = ensure_venv(args.venv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work)
        run = subprocess.run([str(python), __file__, "--theirs", str(work)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(run.stdout.strip().splitlines()[-1])
    versions = subprocess.run(
        [str(python), "-c", "import adapters, transformers, torch; print(torch.__version__, "
         "transformers.__version__, adapters.__version__)"],
        capture_output=True, text=True).stdout.split()  # fmt: skip
    print(f"AdapterHub side: torch {versions[0]}, transformers {versions[1]}, "
          f"adapters {versions[2]}; double_seq_bn, bottleneck 8 (d 64), relu")
    print("| model | HF class | adapters | max abs diff | without adapters | output scale "
          "| equal (1e-5) |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for family, r in result.items():
        if "error" in r:
            print(f"| {family} | - | - | not loaded: {r['error']} | - | - | - |")
            continue
        equal = r["max_abs_diff"] <= 1e-5 * max(1.0, r["scale"]) and r["effect"] > 1e-3
        ok &= equal
        print(f"| {family} | {r['class']} | {r['adapters']} | {r['max_abs_diff']:.2e} | "
              f"{r['effect']:.2e} | "
              f"{r['scale']:.2f} | {'yes' if equal else 'NO'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
