"""Token shards: a corpus tokenized once into flat binary files read with np.memmap.

    out_dir/
      meta.json          tokenizer fingerprint, dtype, token and document counts
      train-00000.bin    token ids, uint16 when the vocab fits (<= 65,536) else uint32
      val-00000.bin

Documents are joined with the tokenizer's end-of-text token after each one, so a model
trained on the stream learns where documents end (GPT-2 style packing). The train / val
split is deterministic from the seed (see `split_documents`). Shards built with another
tokenizer are refused: ids from one vocab mean nothing to another.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, clean_temps
from ..errors import DataError

META = "meta.json"
FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB as uint16) per file


def fingerprint(tokenizer) -> str:
    """The tokenizer's content hash (the same vocab and merges give the same string)."""
    return tokenizer.fingerprint


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _tail_split(doc: str, fraction: float) -> tuple[str, str]:
    """Cut a document at the line boundary nearest to (1 - fraction) of its length."""
    cut = int(len(doc) * (1 - fraction))
    nl = doc.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    return doc[:cut], doc[cut:]


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train / val split holding out about `val_fraction` of the characters.

    Whole documents go to val (in a seeded random order) when that lands within a factor
    of two of the target fraction: a held-out play or article is the honest test. When
    documents are too few or too large for that (one big file, say), the last
    `val_fraction` of every document, cut at a line boundary, is held out instead.
    """
    if val_fraction <= 0:
        return list(docs), []
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    total = sum(len(d) for d in docs)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_ids, val_chars = set(), 0
    for i in order[:-1]:  # always keep at least one document for training
        if val_chars >= val_fraction * total:
            break
        val_ids.add(i)
        val_chars += len(docs[i])
    if val_ids and 0.5 * val_fraction <= val_chars / total <= 2 * val_fraction:
        train = [d for i, d in enumerate(docs) if i not in val_ids]
        val = [d for i, d in enumerate(docs) if i in val_ids]
        return train, val
    pairs = [_tail_split(d, val_fraction) for d in docs]
    return [a for a, _ in pairs if a], [b for _, b in pairs if b]


def _encode_all(tokenizer, docs: list[str], num_workers: int | None) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch(docs, num_workers=num_workers)
    return [tokenizer.encode(d) for d in docs]


def _write_split(folder: Path, split: str, docs_ids, eos: int, dtype) -> list[dict]:
    """Write `split-NNNNN.bin` files of at most ~SHARD_TOKENS tokens; EOS after each doc."""
    files, buf, buffered = [], [], 0
    for k, ids in enumerate(docs_ids):
        buf.append(np.asarray(list(ids) + [eos], dtype=np.int64))
        buffered += len(buf[-1])
        if buffered >= SHARD_TOKENS or (k == len(docs_ids) - 1):
            name = f"{split}-{len(files):05d}.bin"
            # a plain write: a full disk raises ENOSPC (ndarray.tofile says only
            # "N requested and M written")
            (folder / name).write_bytes(np.concatenate(buf).astype(dtype).tobytes())
            files.append({"file": name, "tokens": buffered})
            buf, buffered = [], 0
    return files


def write_shards(
    docs: list[str],
    tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.05,
    seed: int = 0,
    num_workers: int | None = None,
    source: str = "",
) -> dict:
    """Tokenize `docs` into shards under `out_dir` (replaced atomically); return the meta."""
    if not docs:
        raise DataError("no documents to tokenize")
    eos = tokenizer.eos_id
    if eos is None:
        raise DataError("the tokenizer has no end-of-text token to separate documents")
    dtype = dtype_for(tokenizer.vocab_size)
    train_docs, val_docs = split_documents(list(docs), val_fraction, seed)
    meta = {
        "format": FORMAT_VERSION,
        "tokenizer_hash": fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "eos_id": eos,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        "seed": seed,
        "source": source,
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            ids = _encode_all(tokenizer, split_docs, num_workers)
            files = _write_split(tmp, split, ids, eos, dtype)
            meta["splits"][split] = {
                "files": files, "tokens": sum(f["tokens"] for f in files), "docs": len(ids)
            }
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return meta


@dataclass
class Shards:
    meta: dict
    train: list[np.ndarray]
    val: list[np.ndarray]

    def tokens(self, split: str) -> int:
        return self.meta["splits"][split]["tokens"]

    def unigram_loss(self, vocab_size: int, exclude: Sequence[int] = ()) -> float | None:
        """The val loss of a model that ignores context: cross-entropy (nats per token)
        of the val tokens under the train split's token frequencies, add-one smoothed,

            L_unigram = -1/N sum_i log p(x_i),   p(v) = (count_train(v) + 1) / (N_train + V)

        `exclude`: ids left out of both sides (special tokens an objective never predicts).
        The plateau a pretraining run must leave: a model that learned only p(v) sits
        here. None without val tokens."""
        train = np.zeros(vocab_size, dtype=np.float64)
        val = np.zeros(vocab_size, dtype=np.float64)
        for counts, arrays in ((train, self.train), (val, self.val)):
            for a in arrays:
                counts += np.bincount(np.asarray(a, dtype=np.int64), minlength=vocab_size)[
                    :vocab_size]
        keep = np.ones(vocab_size, dtype=bool)
        keep[list(exclude)] = False
        p = (train + 1.0) * keep
        p /= p.sum()
        n = val[keep].sum()
        if n == 0:
            return None
        return float(-(val[keep] * np.log(p[keep])).sum() / n)


def read_meta(out_dir: str | Path) -> dict | None:
    """The shards' meta.json, or None when there are none yet. What a killed writer left
    beside them (`.NAME.PID.*.tmp`) is removed first: this is where a run starts."""
    clean_temps(Path(out_dir).parent, Path(out_dir).name)
    path = Path(out_dir) / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path}: corrupt shard metadata") from None


def open_shards(out_dir: str | Path, tokenizer_hash: str | None = None) -> Shards:
    """Memory-map the shards in `out_dir`, checking they were made by `tokenizer_hash`."""
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    if meta is None:
        raise DataError(f"no token shards in {out_dir} (missing {META})")
    if tokenizer_hash is not None and meta["tokenizer_hash"] != tokenizer_hash:
        raise DataError(
            f"token shards in {out_dir} were made with another tokenizer "
            f"({meta['tokenizer_hash'][:12]} != {tokenizer_hash[:12]}); delete them or "
            "choose another folder"
        )
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for split in ("train", "val"):
        arrays[split] = []
        for entry in meta["splits"].get(split, {}).get("files", []):
            path = out_dir / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["tokens"] * dtype.itemsize:
                raise DataError(f"token shard {path} is missing or truncated")
            arrays[split].append(np.memmap(path, dtype=dtype, mode="r"))
    return Shards(meta=meta, train=arrays["train"], val=arrays["val"])
