"""Byte-level BPE: train, encode, decode, special tokens, HF and GPT-2 file formats.

The lecture's algorithm (Sennrich et al. 2016, byte-level as in GPT-2):

    start from the 256 single bytes;
    repeat: count adjacent symbol pairs in the training text, merge the most frequent
            pair into a new symbol, record the merge;
    encode: apply the recorded merges in the order they were learned.

Text is first split into pre-tokens ("words") by a regex (GPT-2's or GPT-4's), so
merges never cross word boundaries. Token strings use GPT-2's byte -> printable
character map (`bytes_to_unicode`), so the vocabulary and merges are exactly those of
GPT-2's files and of HF `tokenizers`' ByteLevel BPE: `save` writes a `tokenizer.json`
that `tokenizers.Tokenizer.from_file` loads and encodes identically.

Training counts each distinct word once and then updates pair counts incrementally
per merge (only the words that hold the merged pair are touched), with a max-heap to
find the best pair. The hot loop runs in C (`lmforge/_bpe.c`) when the extension is
built and in `_train_python` otherwise; both give the same merges.

Everything works on UTF-8 bytes, so any string round-trips: `decode(encode(s)) == s`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import multiprocessing
import os
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import chain
from pathlib import Path

import regex

from .atomic import write_text
from .errors import TokenizerError

try:  # the C core of the trainer; optional, the pure-Python trainer gives the same merges
    from . import _bpe
except ImportError:  # pragma: no cover - depends on the build
    _bpe = None

__all__ = [
    "CHAT_TOKENS",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PATTERNS",
    "Tokenizer",
    "bytes_to_unicode",
    "sentinel_tokens",
]

# Pre-tokenizer regexes. GPT-2's is also the one built into HF's ByteLevel pre-tokenizer.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4 (tiktoken cl100k_base): case-insensitive contractions, digits in groups of <= 3,
# newlines kept apart from other whitespace.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# Chat role markers; `sentinel_tokens(n)` gives T5's `<extra_id_N>`.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# Conventional names per role, looked up by `eos_id`, `pad_id`, ... (first match wins).
_ROLE_NAMES = {
    "eos": ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"),
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "cls": ("[CLS]", "<cls>", "<|cls|>"),
    "sep": ("[SEP]", "<sep>", "<|sep|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
}

_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")
_CACHE_LIMIT = 500_000  # words kept in the encode cache before it is cleared
_PARALLEL_MIN_CHARS = 8_000_000  # encode_batch(num_workers=None) uses processes above this


def sentinel_tokens(n: int) -> list[str]:
    """T5's span-corruption sentinels: `<extra_id_0>` ... `<extra_id_{n-1}>`."""
    return [f"<extra_id_{i}>" for i in range(n)]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, ...) map to
    chr(256 + k) in byte order, so the space byte 0x20 becomes 'Ġ' and '\\n' becomes 'Ċ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(chars.items()))


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
_TO_VISIBLE = {b: c for b, c in _BYTE_TO_CHAR.items()}  # str.translate over latin-1 text
_FROM_VISIBLE = {ord(c): b for b, c in _BYTE_TO_CHAR.items()}


def _visible(data: bytes) -> str:
    """Token bytes -> token string in GPT-2's alphabet (b' the' -> 'Ġthe')."""
    return data.decode("latin-1").translate(_TO_VISIBLE)


def _from_visible(token: str) -> bytes | None:
    """Token string in GPT-2's alphabet -> bytes; None if it is not in that alphabet."""
    try:
        return token.translate(_FROM_VISIBLE).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of text. Lone surrogates: U+DC80..U+DCFF (Python's `surrogateescape`
    for undecodable bytes) become their original byte; any other lone surrogate is kept
    as its 3-byte form (`surrogatepass`). Nothing is lost; see `decode(errors=...)`."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------------------- training


def _train_python(
    words: Sequence[bytes],
    counts: Sequence[int],
    max_tokens: int,
    min_frequency: int,
    callback: Callable[[int], object] | None = None,
) -> list[tuple[int, int, int]]:
    """Learn merges until there are `max_tokens` tokens (bytes included).

    `words` are the distinct pre-tokens, `counts` how often each occurs. Returns
    (left id, right id, new id) per merge, in order; ids 0..255 are the bytes.

    Each step merges the most frequent pair. Ties go to the pair whose token byte
    strings are smallest (left token first, then right), e.g. (b'a', b'b') before
    (b'a', b'c') before (b'b', b'a'). A merge whose bytes already exist as a token reuses
    that token's id. Stops early when no pair occurs `min_frequency` times.
    Same algorithm, same results as `_bpe.train` in lmforge/_bpe.c.
    """
    min_frequency = max(1, min_frequency)
    token_bytes = [bytes([b]) for b in range(256)]
    id_of = {t: i for i, t in enumerate(token_bytes)}
    symbols = [list(w) for w in words]

    # Count every adjacent pair once per distinct word, weighted by its frequency,
    # and index which words hold each pair.
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (w, n) in enumerate(zip(symbols, counts)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += n
            where[pair].add(i)

    # Max-heap via negated counts; entries may be stale (checked when popped).
    def entry(pair: tuple[int, int]) -> tuple:
        return (-pair_count[pair], token_bytes[pair[0]], token_bytes[pair[1]], pair)

    heap = [entry(p) for p in pair_count]
    heapq.heapify(heap)

    grown: set[tuple[int, int]] = set()  # pairs whose count grew in the current merge

    def add(p: tuple[int, int], delta: int, i: int) -> None:  # count[p] += delta in word i
        pair_count[p] += delta
        if delta > 0:
            where[p].add(i)
            grown.add(p)

    merges: list[tuple[int, int, int]] = []
    while len(token_bytes) < max_tokens and heap:
        neg, _, _, pair = heapq.heappop(heap)
        count = pair_count.get(pair, 0)
        if -neg != count:  # stale: the count dropped since this entry was pushed
            if count > 0:
                heapq.heappush(heap, entry(pair))
            continue
        if count < min_frequency:
            break

        a, b = pair
        new_bytes = token_bytes[a] + token_bytes[b]
        c = id_of.get(new_bytes)
        if c is None:
            c = id_of[new_bytes] = len(token_bytes)
            token_bytes.append(new_bytes)
        merges.append((a, b, c))

        # Rewrite the words that hold (a, b); move neighbour counts to the new symbol.
        grown.clear()
        for i in where.pop(pair):
            w, n = symbols[i], counts[i]
            out: list[int] = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    if out:  # left neighbour (already rewritten): (p, a) -> (p, c)
                        add((out[-1], a), -n, i)
                        add((out[-1], c), n, i)
                    if j + 2 < len(w):  # right neighbour: (b, q) -> (c, q)
                        add((b, w[j + 2]), -n, i)
                        add((c, w[j + 2]), n, i)
                    out.append(c)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            symbols[i] = out
        pair_count[pair] = 0  # every occurrence is gone

        for p in grown:  # pairs whose count grew get a fresh heap entry
            if pair_count[p] > 0:
                heapq.heappush(heap, entry(p))
        if callback is not None and len(merges) % 256 == 0:
            callback(len(token_bytes) - 256)
    if callback is not None:
        callback(len(token_bytes) - 256)
    return merges


# ----------------------------------------------------------------------------- encoding


class _WordCache(dict):
    """word -> token ids; a miss runs BPE on the word. Cleared when it grows too big."""

    def __init__(self, bpe: Callable[[str], tuple[int, ...]]):
        super().__init__()
        self._bpe = bpe

    def __missing__(self, word: str) -> tuple[int, ...]:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        ids = self[word] = self._bpe(word)
        return ids


# Worker-process state for encode_batch.
_worker_tokenizer: Tokenizer | None = None
_worker_kwargs: dict = {}


def _init_worker(tokenizer: Tokenizer, kwargs: dict) -> None:
    global _worker_tokenizer, _worker_kwargs
    _worker_tokenizer, _worker_kwargs = tokenizer, kwargs


def _encode_chunk(texts: list[str]) -> list[list[int]]:
    return [_worker_tokenizer.encode(t, **_worker_kwargs) for t in texts]


def _mp_context():
    # fork on Linux: workers inherit the tokenizer and its warm word cache (no pickling),
    # and the caller's script needs no `if __name__ == "__main__"` guard (spawn and
    # forkserver re-import it). The workers run only this module's pure-Python code, so
    # threads in the parent (torch, tqdm) hold no lock they need. Elsewhere: spawn.
    linux = sys.platform.startswith("linux")
    return multiprocessing.get_context("fork" if linux else "spawn")


# ---------------------------------------------------------------------------- tokenizer


class SpecialTokensMixin:
    """What every lmforge tokenizer does the same way: special tokens and their roles
    (eos, bos, pad, mask, cls, sep: the first of `role_names[role]` present), the
    allowed / disallowed special-token policy of `encode`, the vocabulary lookups, the
    fingerprint and `save`. A tokenizer class sets `role_names` and keeps `_special`
    (token -> id), `_vocab`, `_id_to_token`-style tables and `to_hf_dict`."""

    role_names: dict[str, tuple[str, ...]] = {}

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token text -> id."""
        return dict(self._special)

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id, special and added tokens included (like HF's get_vocab)."""
        return {**self._vocab, **self._added, **self._special}

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string ('Ġthe', '<|endoftext|>'), or None."""
        for table in (self._special, self._added, self._vocab):
            if token in table:
                return table[token]
        return None

    def id_to_token(self, i: int) -> str | None:
        """Token string of an id (GPT-2's byte alphabet for BPE, '##' pieces for
        WordPiece), or None."""
        return self._id_to_token[i] if 0 <= i < len(self._id_to_token) else None

    def add_special_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Add special tokens (after training, or to an imported vocabulary); returns
        their ids (existing ones keep theirs). A token already in the vocabulary as a
        string keeps that id, as in HF; new ones get the next free ids."""
        if isinstance(tokens, str):
            tokens = [tokens]
        ids = []
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise TokenizerError(f"special tokens must be non-empty strings, got {token!r}")
            if token not in self._special:
                known = self._added.pop(token, self._vocab.get(token))
                self._special[token] = known if known is not None else self.vocab_size
                self._build()  # new id tables, empty caches, fresh fingerprint
            ids.append(self._special[token])
        return ids

    def _role(self, role: str) -> int | None:
        for name in self.role_names[role]:
            if name in self._special:
                return self._special[name]
        return None

    @property
    def eos_id(self) -> int | None:
        """Id of the first of `role_names["eos"]` present, or None."""
        return self._role("eos")

    @property
    def bos_id(self) -> int | None:
        """Id of the first of `role_names["bos"]` present, or None."""
        return self._role("bos")

    @property
    def pad_id(self) -> int | None:
        """Id of the first of `role_names["pad"]` present, or None."""
        return self._role("pad")

    @property
    def mask_id(self) -> int | None:
        """Id of the first of `role_names["mask"]` present, or None."""
        return self._role("mask")

    @property
    def cls_id(self) -> int | None:
        """Id of the first of `role_names["cls"]` present, or None."""
        return self._role("cls")

    @property
    def sep_id(self) -> int | None:
        """Id of the first of `role_names["sep"]` present, or None."""
        return self._role("sep")

    def _special_policy(self, allowed, disallowed) -> tuple[set[str], frozenset[str]]:
        allowed = self._special_set(allowed, "allowed_special")
        if disallowed == "all":
            disallowed = set(self._special) - allowed
        else:
            disallowed = self._special_set(disallowed, "disallowed_special")
            both = allowed & disallowed
            if both:
                raise TokenizerError(
                    f"special token {sorted(both)[0]!r} is both allowed and disallowed"
                )
        return allowed, frozenset(disallowed)

    def _special_set(self, tokens, name: str) -> set[str]:
        if tokens == "all":
            return set(self._special)
        if isinstance(tokens, str):
            raise TokenizerError(f"{name} must be 'all' or a collection of special tokens")
        tokens = set(tokens)
        unknown = tokens - self._special.keys()
        if unknown:
            raise TokenizerError(f"{name}: {sorted(unknown)[0]!r} is not a special token")
        return tokens

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the canonical tokenizer.json: equal iff the tokenizers encode
        and decode alike. Token shards record it to refuse a different tokenizer."""
        if self._fingerprint is None:
            canon = json.dumps(self.to_hf_dict(), sort_keys=True, ensure_ascii=False,
                               separators=(",", ":"))
            self._fingerprint = hashlib.sha256(canon.encode("utf-8")).hexdigest()
        return self._fingerprint

    def save(self, path: str | os.PathLike) -> Path:
        """Write HF `tokenizer.json` (a folder gets `tokenizer.json` inside). Atomic: the
        file appears complete or not at all. Returns the file's path."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        write_text(path, json.dumps(self.to_hf_dict(), ensure_ascii=False, indent=1) + "\n")
        return path

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class Tokenizer(SpecialTokensMixin):
    """A byte-level BPE tokenizer (GPT-2 style), compatible with HF `tokenizers`.

    Ids: a trained tokenizer has ids 0..255 for the bytes 0..255, then one id per new
    merged token in the order learned, then the special tokens. Imported tokenizers keep
    their files' ids.

    Special tokens (e.g. `<|endoftext|>`, `[MASK]`, `<extra_id_0>`, `<|user|>`) are never
    produced from ordinary text unless asked: see `encode(allowed_special=...)`.

    Build one with `Tokenizer.train`, `Tokenizer.load` / `from_hf_json`, or
    `from_gpt2_files`. The constructor takes the raw parts: `vocab` maps token strings
    (GPT-2's byte alphabet, e.g. 'Ġthe') to ids; `merges` lists token-string pairs in
    rank order; `special_tokens` maps text to id.
    """

    role_names = _ROLE_NAMES

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = "gpt2",
        *,
        added_tokens: dict[str, int] | None = None,
        ignore_merges: bool = False,
        normalizer: str | None = None,
    ):
        self._vocab = dict(vocab)
        self._merges = [(str(a), str(b)) for a, b in merges]
        self._special = dict(special_tokens or {})
        self._added = dict(added_tokens or {})  # non-special added tokens (HF imports)
        self.pattern = PATTERNS.get(pattern, pattern)
        self.ignore_merges = ignore_merges
        if normalizer is not None and normalizer not in _NORMALIZERS:
            raise TokenizerError(f"normalizer {normalizer!r} is not one of {_NORMALIZERS}")
        self.normalizer = normalizer
        self._build()

    # -- derived tables ---------------------------------------------------------------

    def _build(self) -> None:
        vocab = self._vocab
        missing = [b for b, c in _BYTE_TO_CHAR.items() if c not in vocab]
        if missing:
            raise TokenizerError(
                f"not a byte-level BPE vocabulary: {len(missing)} of the 256 byte tokens are "
                f"missing (first: byte 0x{missing[0]:02x} = {_BYTE_TO_CHAR[missing[0]]!r})"
            )
        self._byte_ids = [vocab[_BYTE_TO_CHAR[b]] for b in range(256)]

        # (left id, right id) -> (rank, merged id); a later duplicate wins, as in HF.
        ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self._merges):
            try:
                ranks[vocab[a], vocab[b]] = (rank, vocab[a + b])
            except KeyError as e:
                raise TokenizerError(
                    f"merge {rank} ({a!r} {b!r}) uses token {e.args[0]!r}, "
                    "which is not in the vocabulary"
                ) from None
        self._ranks = ranks

        # id -> bytes, for decode. Tokens outside GPT-2's alphabet decode as their UTF-8.
        size = 1 + max(chain(vocab.values(), self._special.values(), self._added.values()))
        id_to_bytes: list[bytes | None] = [None] * size
        id_to_token: list[str | None] = [None] * size
        for token, i in vocab.items():
            raw = _from_visible(token)
            id_to_bytes[i] = raw if raw is not None else token.encode("utf-8")
            id_to_token[i] = token
        for token, i in chain(self._added.items(), self._special.items()):
            id_to_bytes[i] = token.encode("utf-8")
            id_to_token[i] = token
        self._id_to_bytes = id_to_bytes
        self._id_to_token = id_to_token

        self._pat = _compile(self.pattern)
        self._full_cover = self.pattern in (GPT2_PATTERN, GPT4_PATTERN)
        self._cache = _WordCache(self._bpe)
        self._special_ids = frozenset(self._special.values())
        self._fingerprint: str | None = None
        self._regexes: dict[frozenset[str], regex.Pattern] = {}

    # -- training -----------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Iterable[str] = (),
        pattern: str = "gpt2",
        progress: bool = True,
        min_frequency: int = 1,
        *,
        use_c: bool | None = None,
    ) -> Tokenizer:
        """Learn a byte-level BPE of `vocab_size` tokens (bytes + merges + specials).

        texts: documents (a single string is one document). Special tokens that appear
            in them are cut out first and never take part in merges.
        pattern: "gpt2", "gpt4" or a regex of your own (pre-tokenization).
        min_frequency: stop early when the best pair occurs fewer times than this, so
            `vocab_size` is an upper bound; check `tok.vocab_size`.
        progress: tqdm bars for counting words and for merges.
        use_c: force (True) or forbid (False) the C trainer; None uses it if built.

        Each step merges the most frequent adjacent pair; ties go to the pair whose token
        byte strings are smallest, left token first (so (b"a", b"b") wins over
        (b"a", b"c") and over (b"b", b"a")). The result is deterministic and does not
        depend on the order of the texts.
        """
        from tqdm.auto import tqdm

        specials = list(dict.fromkeys(special_tokens))  # unique, in order
        for s in specials:
            if not isinstance(s, str) or not s:
                raise TokenizerError(f"special tokens must be non-empty strings, got {s!r}")
        if vocab_size < 256 + len(specials):
            raise TokenizerError(
                f"vocab_size={vocab_size} is below the 256 byte tokens + {len(specials)} "
                f"special tokens = {256 + len(specials)}"
            )
        if use_c and _bpe is None:
            raise TokenizerError("the C trainer lmforge._bpe is not built (pip install -e .)")
        if isinstance(texts, str):
            texts = [texts]
        pat = _compile(PATTERNS.get(pattern, pattern))
        full_cover = pat.pattern in (GPT2_PATTERN, GPT4_PATTERN)
        cut = _alternation(specials)

        # 1. Count each distinct pre-token ("word") once.
        word_counts: Counter[str] = Counter()
        for text in tqdm(texts, desc="counting words", unit="doc", disable=not progress):
            for segment in cut.split(text) if cut else (text,):
                word_counts.update(_pretokenize(pat, segment, full_cover))
        if not word_counts:
            raise TokenizerError("the training texts are empty: nothing to learn from")
        words = [_utf8(w) for w in word_counts]
        counts = list(word_counts.values())

        # 2. Learn merges (C core or the identical Python loop).
        max_tokens = vocab_size - len(specials)
        bar = tqdm(total=max_tokens - 256, desc="BPE merges", unit="tok", disable=not progress)

        def report(done: int) -> None:
            bar.update(done - bar.n)

        trainer = _bpe.train if (_bpe is not None and use_c is not False) else _train_python
        with bar:
            merges = trainer(words, counts, max_tokens, min_frequency, report)

        # 3. Token strings in GPT-2's alphabet; specials get the ids after the merges.
        token_bytes = [bytes([b]) for b in range(256)]
        for a, b, c in merges:
            if c == len(token_bytes):
                token_bytes.append(token_bytes[a] + token_bytes[b])
        vocab = {_visible(t): i for i, t in enumerate(token_bytes)}
        merge_strs = [(_visible(token_bytes[a]), _visible(token_bytes[b])) for a, b, _ in merges]
        special_ids = {s: len(token_bytes) + k for k, s in enumerate(specials)}
        return cls(vocab, merge_strs, special_ids, pattern)

    # -- encoding -----------------------------------------------------------------------

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-token: apply the lowest-ranked merge first, everywhere
        in the word (left to right), until no merge applies (GPT-2 / minbpe / HF)."""
        data = _utf8(word)
        if self.ignore_merges:  # HF option (Llama-3): a word that is a token stays whole
            whole = self._vocab.get(_visible(data))
            if whole is not None:
                return (whole,)
        ids = [self._byte_ids[b] for b in data]
        ranks = self._ranks
        while len(ids) > 1:
            best, best_rank = None, None
            for pair in zip(ids, ids[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r[0] < best_rank):
                    best, best_rank = pair, r[0]
            if best is None:
                break
            a, b = best
            c = ranks[best][1]
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
                    out.append(c)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return tuple(ids)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text, every character taken as ordinary text (no special tokens)."""
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        words = _pretokenize(self._pat, text, self._full_cover)
        return list(chain.from_iterable(map(self._cache.__getitem__, words)))

    def encode(
        self,
        text: str,
        *,
        allowed_special: str | Collection[str] = (),
        disallowed_special: str | Collection[str] = (),
    ) -> list[int]:
        """Token ids of `text`.

        Special-token policy (as in tiktoken, with a safer default for data):
        - by default special-looking text such as "<|endoftext|>" in the input is encoded
          as ordinary text, so user data cannot inject control tokens;
        - `allowed_special="all"` (or a set of special tokens) turns those substrings into
          their special ids (this is what HF `tokenizers` does by default);
        - `disallowed_special="all"` (or a set) raises TokenizerError if one appears;
          "all" there means every special token not in `allowed_special`.
        """
        recognise, forbid = self._special_policy(allowed_special, disallowed_special)
        if forbid:
            found = self._split_regex(forbid).search(text)
            if found:
                raise TokenizerError(
                    f"text contains the special token {found.group()!r} at character "
                    f"{found.start()}; allow it with allowed_special=... to encode it as a "
                    "special token, or leave it out of disallowed_special to encode it as text"
                )
        recognise |= self._added.keys()
        if not recognise:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in self._split_regex(frozenset(recognise)).finditer(text):
            ids += self.encode_ordinary(text[start:m.start()])
            token = m.group()
            ids.append(self._special[token] if token in self._special else self._added[token])
            start = m.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        allowed_special: str | Collection[str] = (),
        disallowed_special: str | Collection[str] = (),
        num_workers: int | None = None,
    ) -> list[list[int]]:
        """`[encode(t) for t in texts]`, over worker processes for large inputs.

        num_workers: None uses all CPUs when the texts hold more than 8M characters and
        one process otherwise; 0 or 1 encodes in this process; n > 1 uses n processes.
        Results equal sequential `encode` exactly (texts are encoded whole, in order).
        """
        texts = list(texts)
        kwargs = {"allowed_special": allowed_special, "disallowed_special": disallowed_special}
        self._special_policy(allowed_special, disallowed_special)  # bad arguments fail here
        if num_workers is None:
            big = sum(map(len, texts)) >= _PARALLEL_MIN_CHARS
            num_workers = _cpu_count() if big else 1
        num_workers = min(num_workers, len(texts))
        if num_workers <= 1:
            return [self.encode(t, **kwargs) for t in texts]

        # Contiguous chunks of about equal size (in characters), a few per worker.
        n_chunks = num_workers * 4
        target = max(1, sum(map(len, texts)) // n_chunks)
        chunks: list[list[str]] = [[]]
        size = 0
        for t in texts:
            if size >= target:
                chunks.append([])
                size = 0
            chunks[-1].append(t)
            size += len(t)
        with _mp_context().Pool(num_workers, _init_worker, (self, kwargs)) as pool:
            parts = pool.map(_encode_chunk, chunks, chunksize=1)
        return [ids for part in parts for ids in part]

    # -- decoding -----------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        """The bytes that `ids` stand for (special tokens as their text, unless skipped)."""
        if hasattr(ids, "tolist"):  # numpy arrays, torch tensors
            ids = ids.tolist()
        ids = list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        table = self._id_to_bytes
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (0 <= i < len(table)) or table[i] is None)
            raise TokenizerError(f"token id {bad} is not in the vocabulary") from None

    def decode(
        self, ids: Iterable[int], errors: str = "replace", skip_special_tokens: bool = False
    ) -> str:
        """Text of `ids`: their bytes decoded as UTF-8.

        errors="replace" turns byte sequences that are not valid UTF-8 (a cut through a
        multi-byte character) into U+FFFD. errors="surrogateescape" instead restores
        exactly the string that was encoded, even one read with surrogateescape.
        """
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors)

    # -- vocabulary and special tokens ----------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1): the size an embedding table needs."""
        return len(self._id_to_bytes)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """Merges in rank order, as token strings in GPT-2's alphabet."""
        return list(self._merges)

    def id_to_bytes(self, i: int) -> bytes | None:
        """The bytes an id stands for, or None."""
        return self._id_to_bytes[i] if 0 <= i < len(self._id_to_bytes) else None

    @property
    def unk_id(self) -> int | None:
        """Id of `<unk>`, `[UNK]` or `<|unk|>` (byte-level BPE itself never needs one)."""
        return self._role("unk")

    def sentinel_ids(self, n: int) -> list[int]:
        """Ids of T5's `<extra_id_0>` ... `<extra_id_{n-1}>`."""
        missing = [t for t in sentinel_tokens(n) if t not in self._special]
        if missing:
            raise TokenizerError(
                f"{len(missing)} of {n} sentinel tokens are not special tokens (first: "
                f"{missing[0]}); add them with add_special_tokens(sentinel_tokens({n}))"
            )
        return [self._special[t] for t in sentinel_tokens(n)]

    def _split_regex(self, tokens: frozenset[str]) -> regex.Pattern:
        """The compiled alternation of `tokens`, cached per token set."""
        pat = self._regexes.get(tokens)
        if pat is None:
            pat = self._regexes[tokens] = _alternation(tokens)
        return pat

    # -- formats ------------------------------------------------------------------------

    def to_hf_dict(self) -> dict:
        """This tokenizer as the dict of an HF `tokenizer.json`."""
        if self.pattern == GPT2_PATTERN:  # HF's ByteLevel regex is exactly GPT-2's
            pre = _hf_byte_level(use_regex=True)
        else:
            pre = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pattern},
                 "behavior": "Isolated", "invert": False},
                _hf_byte_level(use_regex=False),
            ]}
        added = [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special}
            for t, i, special in sorted(
                [(t, i, False) for t, i in self._added.items()]
                + [(t, i, True) for t, i in self._special.items()],
                key=lambda x: x[1],
            )
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": self.normalizer} if self.normalizer else None,
            "pre_tokenizer": pre,
            "post_processor": None,
            "decoder": _hf_byte_level(use_regex=True),
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": self.ignore_merges,
                "vocab": dict(sorted(self._vocab.items(), key=lambda x: x[1])),
                # "a b" strings: readable by every tokenizers version (no token has a space)
                "merges": [f"{a} {b}" for a, b in self._merges],
            },
        }

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a `tokenizer.json` written by `save` (or any byte-level BPE one). A
        WordPiece file (BERT) gives a `lmforge.wordpiece.WordPieceTokenizer`."""
        return cls.from_hf_json(path)

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike) -> Tokenizer:
        """Import an HF `tokenizer.json` of a byte-level BPE (GPT-2, RoBERTa, Llama-3,
        ... style). A WordPiece one (BERT) gives a `WordPieceTokenizer`. Other models,
        or options lmforge cannot reproduce exactly, raise TokenizerError.
        Post-processors (BOS/EOS templates) are not applied by encode."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        data = _read_json(path)
        where = f"{path}"
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise TokenizerError(f"{where}: not a tokenizer.json (no 'model' object)")
        model = data["model"]
        kind = model.get("type", "BPE" if "merges" in model else None)
        if kind == "WordPiece":  # BERT's tokenizer: its own class, the same interface
            from .wordpiece import WordPieceTokenizer

            return WordPieceTokenizer.from_hf_dict(data, where)
        if kind == "Unigram":  # SentencePiece's unigram LM (ALBERT, T5, DeBERTa-v2 / v3)
            raise TokenizerError(f"{where}: a Unigram (SentencePiece) tokenizer, which lmforge "
                                 "cannot run (it runs byte-level BPE and WordPiece)")
        if kind != "BPE":
            raise TokenizerError(f"{where}: model type {kind!r} is not BPE")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise TokenizerError(f"{where}: BPE option {key}={model[key]!r} is not supported")
        if model.get("dropout"):
            raise TokenizerError(f"{where}: BPE dropout is not supported")
        if model.get("byte_fallback"):
            raise TokenizerError(f"{where}: byte_fallback BPE (SentencePiece style) is not "
                                 "byte-level BPE")
        pattern = _pattern_from_hf(data.get("pre_tokenizer"), where)
        normalizer = _normalizer_from_hf(data.get("normalizer"), where)
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                  for m in model.get("merges", [])]
        if any(len(m) != 2 for m in merges):
            raise TokenizerError(f"{where}: a merge is not a pair of tokens")
        special, added = {}, {}
        for t in data.get("added_tokens") or []:
            (special if t.get("special") else added)[t["content"]] = t["id"]
        return cls._checked(where, model.get("vocab"), merges, special, pattern,
                            added_tokens=added, ignore_merges=bool(model.get("ignore_merges")),
                            normalizer=normalizer)

    @classmethod
    def from_gpt2_files(
        cls,
        vocab_json: str | os.PathLike,
        merges_txt: str | os.PathLike,
        special_tokens: Iterable[str] = ("<|endoftext|>",),
    ) -> Tokenizer:
        """Import GPT-2's `vocab.json` (a.k.a. encoder.json) + `merges.txt` (vocab.bpe).
        Entries named in `special_tokens` that are in the vocabulary become special."""
        vocab = _read_json(Path(vocab_json))
        merges_path = Path(merges_txt)
        if not merges_path.is_file():
            raise TokenizerError(f"merges file not found: {merges_path}")
        merges = []
        lines = merges_path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            if (n == 1 and line.startswith("#version")) or not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TokenizerError(f"{merges_path}:{n}: expected two tokens, got {line!r}")
            merges.append((parts[0], parts[1]))
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_json}: not a JSON object of token -> id")
        special = {t: vocab[t] for t in special_tokens if t in vocab}
        return cls._checked(str(vocab_json), vocab, merges, special, "gpt2")

    @classmethod
    def _checked(cls, where: str, vocab, merges, special, pattern, **kw) -> Tokenizer:
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise TokenizerError(f"{where}: vocab is not a map of token -> integer id")
        try:
            return cls(vocab, merges, special, pattern, **kw)
        except TokenizerError as e:
            raise TokenizerError(f"{where}: {e}") from None

    # -- pickling (encode_batch workers) and display ---------------------------------

    def __getstate__(self) -> dict:
        return {"vocab": self._vocab, "merges": self._merges, "special_tokens": self._special,
                "pattern": self.pattern, "added_tokens": self._added,
                "ignore_merges": self.ignore_merges, "normalizer": self.normalizer}

    def __repr__(self) -> str:
        name = next((k for k, v in PATTERNS.items() if v == self.pattern), "custom")
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
                f"special_tokens={len(self._special)}, pattern={name!r})")


# ------------------------------------------------------------------------------ helpers


def _pretokenize(pat: regex.Pattern, text: str, full_cover: bool) -> list[str]:
    """Split text into words. GPT-2/4 patterns match every character, so `findall` is
    enough; for other patterns the text between matches is kept as words too (HF's
    Split "Isolated"), so nothing is dropped."""
    if full_cover:
        return pat.findall(text)
    words, end = [], 0
    for m in pat.finditer(text):
        if m.start() > end:
            words.append(text[end:m.start()])
        if m.end() > m.start():
            words.append(m.group())
        end = max(end, m.end())
    if end < len(text):
        words.append(text[end:])
    return words


def _compile(pattern: str) -> regex.Pattern:
    try:
        return regex.compile(pattern)
    except (regex.error, TypeError) as e:
        msg = f"pre-tokenizer pattern {pattern!r} is not a valid regex ({e})"
        raise TokenizerError(msg) from None


def _alternation(tokens: Iterable[str]) -> regex.Pattern | None:
    """A regex matching any of `tokens`, longest first (HF matches leftmost-longest)."""
    tokens = sorted(tokens, key=lambda t: (-len(t), t))
    return regex.compile("|".join(map(regex.escape, tokens))) if tokens else None


def _hf_byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": use_regex}


def _pattern_from_hf(pre: dict | None, where: str) -> str:
    """The split regex of an HF pre_tokenizer that lmforge reproduces exactly."""
    def byte_level(p: dict) -> bool:
        if p.get("type") != "ByteLevel":
            return False
        if p.get("add_prefix_space"):
            raise TokenizerError(f"{where}: ByteLevel add_prefix_space=true is not supported "
                                 "(it changes the text; lmforge round-trips it exactly)")
        return True

    if isinstance(pre, dict) and byte_level(pre) and pre.get("use_regex", True):
        return GPT2_PATTERN
    steps = pre.get("pretokenizers") if isinstance(pre, dict) else None
    if (pre or {}).get("type") == "Sequence" and isinstance(steps, list) and len(steps) == 2:
        split, last = steps
        if (split.get("type") == "Split" and "Regex" in (split.get("pattern") or {})
                and split.get("behavior") == "Isolated" and not split.get("invert")
                and byte_level(last) and not last.get("use_regex", True)):
            return split["pattern"]["Regex"]
    kind = (pre or {}).get("type")
    raise TokenizerError(
        f"{where}: pre_tokenizer {kind!r} is not byte-level BPE's (expected ByteLevel, or "
        "Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)])"
    )


def _normalizer_from_hf(norm: dict | None, where: str) -> str | None:
    if norm is None:
        return None
    if norm.get("type") == "Sequence" and len(norm.get("normalizers") or []) == 1:
        norm = norm["normalizers"][0]
    if norm.get("type") in _NORMALIZERS:
        return norm["type"]
    raise TokenizerError(f"{where}: normalizer {norm.get('type')!r} is not supported "
                         f"(only none or {', '.join(_NORMALIZERS)})")


def _read_json(path: Path):
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
