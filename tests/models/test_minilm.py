"""Real weights: sentence-transformers/all-MiniLM-L6-v2 (a BertModel, 6 layers, 384 wide).

The run directory comes from `lmforge convert --from-hf` (the `minilm_run` fixture in
tests/conftest.py) and is read back with `load_run`: the model, and lmforge's own
WordPiece tokenizer (lmforge/wordpiece.py) reading the checkpoint's tokenizer.json.
Reference: `transformers.BertModel` and the HF `tokenizers` library on the same files.
"""

import pytest
import torch

from lmforge.data import registry
from lmforge.runs import load_run
from lmforge.wordpiece import WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers")

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply after the announcement.",
    "Share prices dropped quickly when the news came out.",
    "Photosynthesis turns sunlight into chemical energy in plants.",
]
RELATED = [(0, 1), (2, 3)]
UNRELATED = [(0, 2), (0, 4), (1, 3), (2, 4), (3, 4), (1, 4)]


@pytest.fixture(scope="module")
def minilm(minilm_run):
    """(HF checkpoint folder, model, padded batch made by our tokenizer, tokenizer)."""
    root = next(f for f in registry.files("minilm") if f.name == "config.json").parent
    run = load_run(minilm_run)
    tok = run.tokenizer
    rows = [[tok.cls_id, *tok.encode(s), tok.sep_id] for s in SENTENCES]
    width = max(map(len, rows))
    batch = dict(
        input_ids=torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows]),
        attention_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        token_type_ids=torch.zeros(len(rows), width, dtype=torch.long),
    )
    return root, run.model, batch, tok


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' vectors (sentence-transformers' pooling), L2-normalized."""
    m = mask[..., None].to(h.dtype)  # (B, T, 1)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_tokenizer_is_uncased_wordpiece_with_bert_specials(minilm):
    root, _, batch, tok = minilm
    assert isinstance(tok, WordPieceTokenizer) and tok.lowercase
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert ids[0] == 101 and ids[-1] == 102  # BERT's [CLS], [SEP] ids
    assert [tok.id_to_token(i) for i in ids[1:-1]] == [
        "a", "man", "is", "playing", "a", "guitar", "on", "stage", "."]
    assert batch["attention_mask"].min() == 0  # sentences of different lengths: padding
    # The same padded batch as HF `tokenizers` makes from the checkpoint's own file.
    hf = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    hf.enable_padding(pad_id=0, pad_token="[PAD]")
    hf.no_truncation()
    enc = hf.encode_batch(SENTENCES)
    assert batch["input_ids"].tolist() == [e.ids for e in enc]
    assert batch["attention_mask"].tolist() == [e.attention_mask for e in enc]


def test_hidden_states_match_transformers(minilm):
    transformers = pytest.importorskip("transformers")
    root, model, batch, _ = minilm
    assert model.config.n_layer == 6 and model.config.d_model == 384
    assert not model.training  # load_run gives eval mode
    ref = transformers.BertModel.from_pretrained(root).eval()
    with torch.no_grad():
        ours, theirs = model(**batch), ref(**batch)
    real = batch["attention_mask"].bool()
    diff = (ours.last_hidden_state - theirs.last_hidden_state)[real].abs().max().item()
    assert diff <= 1e-4
    assert (ours.pooler_output - theirs.pooler_output).abs().max().item() <= 1e-4


def test_related_sentences_are_closer_than_unrelated(minilm):
    _, model, batch, _ = minilm
    with torch.no_grad():
        emb = _mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
    cos = emb @ emb.T
    related = min(cos[i, j].item() for i, j in RELATED)
    unrelated = max(cos[i, j].item() for i, j in UNRELATED)
    assert related > 0.5
    assert related - unrelated > 0.4, (related, unrelated)  # measured: 0.64 vs 0.03


def test_padding_does_not_change_embeddings(minilm):
    _, model, batch, _ = minilm
    n = int(batch["attention_mask"][4].sum())  # the shortest sentence is padded in the batch
    with torch.no_grad():
        alone = model(input_ids=batch["input_ids"][4:5, :n]).last_hidden_state
        padded = model(**batch).last_hidden_state[4:5, :n]
    assert (alone - padded).abs().max().item() < 1e-4
