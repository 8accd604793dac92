"""Real weights: sentence-transformers/all-MiniLM-L6-v2 (a BertModel, 6 layers, 384 wide).

lmforge reads the checkpoint with `load_hf`; its WordPiece vocab is read by the
`tokenizers` library from the shipped tokenizer.json (see docs/encoders.md).
"""

import pytest
import torch

from lmforge.data import registry
from lmforge.errors import DataError
from lmforge.interop.hf import load_hf

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
def minilm():
    try:
        files = registry.files("minilm")
    except DataError as e:
        pytest.skip(str(e))
    root = next(f for f in files if f.name == "config.json").parent
    tok = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    batch = dict(
        input_ids=torch.tensor([e.ids for e in enc]),
        attention_mask=torch.tensor([e.attention_mask for e in enc]),
        token_type_ids=torch.tensor([e.type_ids for e in enc]),
    )
    return root, load_hf(root), batch, enc


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' vectors (sentence-transformers' pooling), L2-normalized."""
    m = mask[..., None].to(h.dtype)  # (B, T, 1)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_tokenizer_is_uncased_wordpiece_with_bert_specials(minilm):
    _, _, batch, enc = minilm
    n = sum(enc[0].attention_mask)
    assert enc[0].tokens[0] == "[CLS]" and enc[0].tokens[n - 1] == "[SEP]"
    assert enc[0].ids[0] == 101 and enc[0].ids[n - 1] == 102  # BERT's [CLS], [SEP] ids
    assert "guitar" in enc[0].tokens and "man" in enc[0].tokens  # lowercased
    assert batch["attention_mask"].min() == 0  # sentences of different lengths: padding


def test_hidden_states_match_transformers(minilm):
    transformers = pytest.importorskip("transformers")
    root, model, batch, _ = minilm
    assert model.config.n_layer == 6 and model.config.d_model == 384
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
