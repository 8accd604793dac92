"""A fine-tuned model (body + task head) out as its transformers class.

    save_hf_task(task_model, "out_dir", labels=["negative", "positive"])

The body is written under the base-model prefix its family's task classes use (`bert.`,
`roberta.`, `transformer.`, `model.` ...), with the weight tables of hf.py; the head is
renamed to that class's head. A head is exported only where the transformers class
computes exactly what ours does, so that the logits agree:

    our head                          transformers class                head tensors
    classify, pooler (BERT, ALBERT)   ...ForSequenceClassification      classifier
    classify, h_first + dense/tanh    RobertaForSequenceClassification  classifier.dense/out_proj
    classify, h_eos + dense/tanh      BartForSequenceClassification     classification_head.*
    classify, h_last + dense/tanh     XLNetForSequenceClassification    sequence_summary.summary,
                                                                        logits_proj
    classify, h_first + dense/gelu    DebertaV2ForSequenceClassification pooler.dense, classifier
    tag (encoders, decoders)          ...ForTokenClassification         classifier (Llama: score)
    span QA (all three)               ...ForQuestionAnswering           qa_outputs
                                      (XLNet: ...ForQuestionAnsweringSimple)

XLNetForSequenceClassification reads the last *position*: feed it left-padded batches (as
XLNet's tokenizer pads), where that is the last token ours reads.

Refused, with the reason: a decoder's classifier (transformers' `score` has no bias, ours
has one), ELECTRA's classifier (transformers uses gelu where ours uses tanh), BERT
classification without the pooler, tagging with an encoder-decoder (no such class).
Generative fine-tunes (chat, text2text, verbalizer) are plain LMs: `save_hf` writes them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

from ..atomic import atomic_dir
from ..errors import CheckpointError
from ..models.config import ModelConfig
from ..models.heads import ClassificationHead, SpanHead, TaskModel, TokenClassificationHead
from . import hf

# family -> (class-name prefix, base-model prefix, the weight table holding the body,
#            the (encoder_head, pooler) whose config.json keys describe the body)
BODIES = {
    "bert": ("Bert", "bert.", hf.BERT_PRETRAINING_TABLE, ("mlm_nsp", True)),
    "roberta": ("Roberta", "roberta.", hf.ROBERTA_MLM_TABLE, ("mlm", False)),
    "electra": ("Electra", "electra.", hf.ELECTRA_PRETRAINING_TABLE, ("rtd", False)),
    "albert": ("Albert", "albert.", hf.ALBERT_PRETRAINING_TABLE, ("mlm_sop", True)),
    "gpt2": ("GPT2", "transformer.", hf.GPT2_TABLE, None),
    "llama": ("Llama", "model.", hf.LLAMA_TABLE, None),
    "mistral": ("Mistral", "model.", hf.LLAMA_TABLE, None),
    "qwen2": ("Qwen2", "model.", hf.LLAMA_TABLE, None),
    "gemma": ("Gemma", "model.", hf.LLAMA_TABLE, None),
    "bart": ("Bart", "model.", hf.BART_TABLE, None),
    "xlnet": ("XLNet", "transformer.", hf.ARCHITECTURES["XLNetLMHeadModel"][2], None),
    "deberta": ("DebertaV2", "deberta.", hf.ARCHITECTURES["DebertaV2ForMaskedLM"][2],
                ("mlm", False)),
}
KINDS = {ClassificationHead: "SequenceClassification", TokenClassificationHead:
         "TokenClassification", SpanHead: "QuestionAnswering"}  # fmt: skip


def _family(config: ModelConfig) -> str:
    if config.arch == "encoder":
        return hf.encoder_family(config)
    return hf.ARCHITECTURES[hf.hf_architecture(config)][0]


def task_architecture(model: TaskModel) -> str:
    """The transformers class that computes what `model` computes (CheckpointError if none)."""
    config, head = model.config, model.head
    family = _family(config)  # gpt3 is GPT2LMHeadModel: "gpt2" already
    kind = KINDS.get(type(head))
    if family not in BODIES or kind is None:
        raise CheckpointError(f"no transformers class for a {type(head).__name__} on a "
                              f"{family} body")
    cls = f"{BODIES[family][0]}For{kind}"
    if cls == "XLNetForQuestionAnswering":  # that one predicts top-k spans with extra heads
        cls += "Simple"

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"cannot export as {cls}: {why}")

    if kind == "SequenceClassification":
        if config.arch == "decoder":
            raise refuse("its score layer has no bias and this head has one")
        if family == "electra":
            raise refuse("its head uses gelu where this one uses tanh")
        wanted = {"bert": ("pooler", False), "albert": ("pooler", False),
                  "roberta": ("first", True), "bart": ("eos", True),
                  "xlnet": ("last", True), "deberta": ("first", True)}[family]  # fmt: skip
        if (model.pooling, head.dense is not None) != wanted:
            raise refuse(f"it pools with {wanted[0]}{' + dense/tanh' if wanted[1] else ''}, "
                         f"this head with {model.pooling}")
    if kind == "TokenClassification" and config.arch == "seq2seq":
        raise refuse("transformers has no such class")
    return cls


def _head_names(cls: str, head: nn.Module) -> dict[str, str]:
    """Our head's tensor names -> the class's."""
    if isinstance(head, SpanHead):
        return {"out.weight": "qa_outputs.weight", "out.bias": "qa_outputs.bias"}
    if isinstance(head, TokenClassificationHead):
        name = "classifier" if cls.split("For")[0] in ("Bert", "Roberta", "Electra", "Albert",
                                                        "GPT2", "XLNet", "DebertaV2") else "score"
        return {"out.weight": f"{name}.weight", "out.bias": f"{name}.bias"}
    if head.dense is None:  # BERT, ALBERT: a linear layer on the pooler output
        return {"out.weight": "classifier.weight", "out.bias": "classifier.bias"}
    if cls.startswith("DebertaV2"):  # ContextPooler (dense + the body's act), classifier
        return {"dense.weight": "pooler.dense.weight", "dense.bias": "pooler.dense.bias",
                "out.weight": "classifier.weight", "out.bias": "classifier.bias"}
    if cls.startswith("XLNet"):  # sequence_summary (dense + tanh), then logits_proj
        return {"dense.weight": "sequence_summary.summary.weight",
                "dense.bias": "sequence_summary.summary.bias",
                "out.weight": "logits_proj.weight", "out.bias": "logits_proj.bias"}
    name = "classification_head" if cls.startswith("Bart") else "classifier"
    return {"dense.weight": f"{name}.dense.weight", "dense.bias": f"{name}.dense.bias",
            "out.weight": f"{name}.out_proj.weight", "out.bias": f"{name}.out_proj.bias"}


def task_state_dict(model: TaskModel) -> dict[str, Tensor]:
    """The body under the class's base prefix plus the renamed head (fresh tensors)."""
    cls = task_architecture(model)
    _, prefix, table, _ = BODIES[_family(model.config)]
    body = hf.table_state_dict(model.backbone, table)
    keep_pooler = cls in ("BertForSequenceClassification", "AlbertForSequenceClassification")
    out = {k: v for k, v in body.items() if k.startswith(prefix)
           and (keep_pooler or ".pooler" not in k)}  # heads of the pretraining class: out
    if cls == "LlamaForQuestionAnswering":  # its body is `transformer`, not `model`
        out = {"transformer." + k.removeprefix("model."): v for k, v in out.items()}
    for ours, theirs in _head_names(cls, model.head).items():
        out[theirs] = model.head.state_dict()[ours].detach().clone().cpu()
    return out


def task_config(model: TaskModel, labels: list[str] | None = None) -> dict:
    """config.json: the body's keys, the class, and the labels (id2label / label2id)."""
    config, head = model.config, model.head
    cls = task_architecture(model)
    family = _family(config)
    body_as = BODIES[family][3]
    if body_as is not None:  # an encoder body: described by its pretraining class's keys
        head_kind, pooler = body_as
        config = dataclasses.replace(config, encoder_head=head_kind, pooler=pooler,
                                     tie_embeddings=True)
    out = hf.config_to_hf(config)
    out["architectures"] = [cls]
    if isinstance(head, SpanHead):
        return out
    n = head.out.out_features
    labels = list(labels) if labels else [f"LABEL_{i}" for i in range(n)]
    if len(labels) != n:
        raise CheckpointError(f"{len(labels)} label names for a head of {n} outputs")
    out["id2label"] = {str(i): name for i, name in enumerate(labels)}
    out["label2id"] = {name: i for i, name in enumerate(labels)}
    if isinstance(head, ClassificationHead) and n == 1:
        out["problem_type"] = "regression"
    if model.pooling == "eos":  # BART pools at the last EOS of the input
        out["eos_token_id"] = model.eos_token_id
    return out


def save_hf_task(model: TaskModel, path: str | Path, labels: list[str] | None = None) -> str:
    """Write `model` as a transformers folder of its task class; return the class name."""
    hf_config = task_config(model, labels)
    tensors = task_state_dict(model)
    hf_config["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return hf_config["architectures"][0]


__all__ = ["save_hf_task", "task_architecture", "task_config", "task_state_dict"]
