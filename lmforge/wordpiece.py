"""WordPiece: BERT's tokenizer, read from `vocab.txt` or an HF `tokenizer.json`.

The lecture's algorithm (Schuster & Nakajima 2012; Devlin et al. 2019, BERT):

    normalize:    drop control characters, map whitespace to ' ', put spaces around CJK
                  ideographs, and for an uncased vocab strip accents (NFD, drop marks)
                  and lowercase;
    pre-tokenize: split on whitespace, and cut every punctuation character out as its
                  own word;
    WordPiece:    per word, greedily take the longest vocabulary entry that is a prefix
                  of what is left; pieces after the first carry the "##" continuation
                  prefix. A word with no segmentation, or longer than
                  `max_input_chars_per_word` (100) characters, becomes [UNK].

The vocabulary is BERT's as it stands: this module encodes with a given vocab and does
not learn one. It is the same interface as lmforge's byte-level BPE `Tokenizer` where
other code uses one (`encode`, `encode_batch`, `decode`, `save`, the role ids ...), and
`Tokenizer.load` / `Tokenizer.from_hf_json` return a `WordPieceTokenizer` for a WordPiece
`tokenizer.json`, so run directories converted from BERT checkpoints load unchanged.

Parity: the ids equal HF `tokenizers`' (`BertNormalizer` + `BertPreTokenizer` +
`WordPiece`). Character classes (punctuation, control, non-spacing marks) come from the
`regex` module's Unicode tables; HF's date from about Unicode 8, so a few characters of
scripts encoded since then are classed differently (see docs/tokenizer.md).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from itertools import chain
from pathlib import Path

import regex

from .errors import TokenizerError
from .tokenizer import SpecialTokensMixin

__all__ = ["WordPieceTokenizer"]

# Characters BERT's normalizer deletes: NUL, U+FFFD and the "other" categories
# (Cc control, Cf format, Co private use) except \t \n \r, which count as whitespace.
_CONTROL = regex.compile(r"[\x00\ufffd\p{Cc}\p{Cf}\p{Co}--[\t\n\r]]+", regex.V1)
# Whitespace that splits words: Unicode White_Space (Rust's char::is_whitespace, which
# HF uses). Not \s: Python's includes U+001C..U+001F.
_WS = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# BERT's punctuation: every ASCII non-alphanumeric printable, plus Unicode category P.
_PUNCT = r"!-/:-@\[-`{-~\p{P}"
_WORDS = regex.compile(rf"[^{_WS}{_PUNCT}]+|[{_PUNCT}]")
# CJK Unified Ideographs and their extensions and compatibility blocks (BERT's list).
# Hangul and kana are not among them: they are split like any other letters.
_CJK = regex.compile(
    "([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b81f"
    "\U0002b920-\U0002ceaf\U0002f800-\U0002fa1f])"
)
_MARKS = regex.compile(r"\p{Mn}+")  # non-spacing marks: the accents NFD splits off

# Role name -> the tokens looked for, first present wins. BERT has no BOS / EOS: [CLS]
# starts and [SEP] ends a sequence, so they stand in for them.
_ROLE_NAMES = {
    "eos": ("<|endoftext|>", "</s>", "<eos>", "[SEP]"),
    "bos": ("<s>", "<bos>", "[CLS]"),
    "pad": ("[PAD]", "<pad>"),
    "mask": ("[MASK]", "<mask>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "unk": ("[UNK]", "<unk>"),
}
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CACHE_LIMIT = 500_000  # words kept in the encode cache before it is cleared


class WordPieceTokenizer(SpecialTokensMixin):
    """BERT's WordPiece tokenizer over a fixed vocabulary.

    vocab: token -> id; continuation pieces carry `prefix` ("##ing").
    special_tokens: text -> id ([CLS], [SEP], [PAD], [MASK], [UNK]); never produced
        from ordinary text unless asked (`encode(allowed_special=...)`).
    lowercase, strip_accents (None: same as lowercase), clean_text,
    handle_chinese_chars: the flags of BERT's normalizer (HF `BertNormalizer`).

    Build one with `from_vocab_txt` or `load` / `from_hf_json`.
    """

    role_names = _ROLE_NAMES  # eos falls back to [SEP], bos to [CLS]

    def __init__(
        self,
        vocab: dict[str, int],
        special_tokens: dict[str, int] | None = None,
        *,
        unk_token: str = "[UNK]",
        prefix: str = "##",
        max_input_chars_per_word: int = 100,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        added_tokens: dict[str, int] | None = None,
    ):
        if not isinstance(vocab, dict) or not all(
            isinstance(t, str) and isinstance(i, int) and i >= 0 for t, i in vocab.items()
        ):
            raise TokenizerError("vocab is not a map of token -> non-negative integer id")
        if unk_token not in vocab:
            raise TokenizerError(f"the unknown token {unk_token!r} is not in the vocabulary")
        self._vocab = dict(vocab)
        self._special = dict(special_tokens or {})
        self._added = dict(added_tokens or {})  # non-special added tokens (HF imports)
        self.unk_token = unk_token
        self.prefix = prefix
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.lowercase = bool(lowercase)
        self.strip_accents = strip_accents
        self.clean_text = bool(clean_text)
        self.handle_chinese_chars = bool(handle_chinese_chars)
        self._build()

    def _build(self) -> None:
        size = 1 + max([*self._vocab.values(), *self._special.values(), *self._added.values()])
        id_to_token: list[str | None] = [None] * size
        for table in (self._vocab, self._added, self._special):
            for token, i in table.items():
                id_to_token[i] = token
        self._id_to_token = id_to_token
        self._unk_id = self._vocab[self.unk_token]
        # The longest match can never be longer than the longest token: start there.
        p = len(self.prefix)
        self._max_first = max(len(t) for t in self._vocab)
        self._max_next = max([len(t) - p for t in self._vocab if t.startswith(self.prefix)],
                             default=0)
        self._strip = self.lowercase if self.strip_accents is None else bool(self.strip_accents)
        self._cache = _WordCache(self._wordpiece)
        self._special_ids = frozenset(self._special.values())
        self._regexes: dict[frozenset[str], regex.Pattern] = {}
        self._policies: dict[tuple, tuple] = {}  # (allowed, disallowed) -> split, forbid
        self._fingerprint: str | None = None

    # -- encoding -----------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """BERT's normalizer, in HF's order: clean, space out CJK, strip accents, lower."""
        if self.clean_text:
            text = _CONTROL.sub("", text)
        if self.handle_chinese_chars and not text.isascii():
            text = _CJK.sub(r" \1 ", text)
        if self._strip and not text.isascii():
            text = _MARKS.sub("", unicodedata.normalize("NFD", text))
        if self.lowercase:
            # Character by character, as HF does: Python's str.lower alone would give a
            # word-final 'ς' for 'Σ'.
            text = text.lower() if "Σ" not in text else "".join(map(str.lower, text))
        return text

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Ids of one word: greedy longest-match-first, "##" on pieces after the first."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return (self._unk_id,)
        vocab, prefix = self._vocab, self.prefix
        ids = []
        start = 0
        while start < n:
            end = min(n, start + (self._max_next if start else self._max_first))
            while end > start:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                i = vocab.get(piece)
                if i is not None:
                    break
                end -= 1
            else:  # no vocabulary entry starts here: the whole word is unknown
                return (self._unk_id,)
            ids.append(i)
            start = end
        return tuple(ids)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text, every character taken as ordinary text (no special tokens)."""
        words = _WORDS.findall(self.normalize(text))
        return list(chain.from_iterable(map(self._cache.__getitem__, words)))

    def encode(
        self,
        text: str,
        *,
        allowed_special: str | Collection[str] = (),
        disallowed_special: str | Collection[str] = (),
    ) -> list[int]:
        """Token ids of `text`, without [CLS] / [SEP] around it (add `cls_id`, `sep_id`).

        Special tokens follow the BPE `Tokenizer`'s policy: by default "[MASK]" in the
        text is ordinary text ('[', 'mask', ']'); `allowed_special="all"` (or a set)
        makes it its special id, as HF does; `disallowed_special="all"` (or a set)
        raises TokenizerError if one appears. Special tokens match the raw text, before
        lowercasing, as in HF.
        """
        split = self._special_split(text, allowed_special, disallowed_special)
        if split is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in split.finditer(text):
            ids += self.encode_ordinary(text[start:m.start()])
            ids.append(self._special_or_added(m.group()))
            start = m.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def encode_with_offsets(
        self,
        text: str,
        *,
        allowed_special: str | Collection[str] = (),
        disallowed_special: str | Collection[str] = (),
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, offsets): `text[start:end]` is the span of `text` each token came from
        (HF's `Encoding.offsets`, in characters). For span extraction (QA) and tagging.
        A character that normalization splits in several (NFD) gives all of its pieces
        its span; a word that became [UNK] spans the whole word."""
        split = self._special_split(text, allowed_special, disallowed_special)
        pairs: list[tuple[int, tuple[int, int]]] = []
        start = 0
        for m in split.finditer(text) if split is not None else ():
            pairs += self._segment_offsets(text[start:m.start()], start)
            pairs.append((self._special_or_added(m.group()), (m.start(), m.end())))
            start = m.end()
        pairs += self._segment_offsets(text[start:], start)
        return [i for i, _ in pairs], [span for _, span in pairs]

    def _special_split(self, text, allowed_special, disallowed_special):
        """The regex of the special (and added) tokens to recognise in `text`, or None;
        raises TokenizerError if `text` holds a disallowed one."""
        key = (allowed_special, disallowed_special)
        try:
            split, forbid = self._policies[key]
        except (KeyError, TypeError):  # new, or unhashable (a set): work it out
            recognise, forbid = self._special_policy(allowed_special, disallowed_special)
            recognise |= self._added.keys()
            split = self._split_regex(frozenset(recognise)) if recognise else None
            forbid = self._split_regex(forbid) if forbid else None
            immutable = (str, tuple, frozenset)
            if isinstance(allowed_special, immutable) and isinstance(disallowed_special,
                                                                      immutable):
                self._policies[key] = split, forbid
        if forbid is not None:
            found = forbid.search(text)
            if found:
                raise TokenizerError(
                    f"text contains the special token {found.group()!r} at character "
                    f"{found.start()}; allow it with allowed_special=... to encode it as a "
                    "special token, or leave it out of disallowed_special to encode it as text"
                )
        return split

    def _special_or_added(self, token: str) -> int:
        return self._special[token] if token in self._special else self._added[token]

    def _segment_offsets(self, text: str, base: int) -> list[tuple[int, tuple[int, int]]]:
        """Normalize character by character, remembering where each output char came
        from; then pre-tokenize and WordPiece the normalized text."""
        chars: list[str] = []
        origin: list[int] = []
        for k, c in enumerate(text):
            piece = self.normalize(c)
            chars.append(piece)
            origin += [base + k] * len(piece)
        norm = "".join(chars)
        out = []
        for m in _WORDS.finditer(norm):
            word, pos = m.group(), m.start()
            ids = self._cache[word]
            if len(ids) == 1 and ids[0] == self._unk_id:
                out.append((ids[0], (origin[pos], origin[m.end() - 1] + 1)))
                continue
            for i in ids:
                token = self._id_to_token[i]
                n = len(token) - (len(self.prefix) if pos > m.start() else 0)
                out.append((i, (origin[pos], origin[pos + n - 1] + 1)))
                pos += n
        return out

    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        allowed_special: str | Collection[str] = (),
        disallowed_special: str | Collection[str] = (),
        num_workers: int | None = None,
    ) -> list[list[int]]:
        """`[encode(t) for t in texts]`, over worker processes for large inputs (same
        rule and same results as the BPE `Tokenizer.encode_batch`)."""
        from . import tokenizer as bpe  # its worker-pool helpers work for any tokenizer

        texts = list(texts)
        kwargs = {"allowed_special": allowed_special, "disallowed_special": disallowed_special}
        self._special_policy(allowed_special, disallowed_special)  # bad arguments fail here
        if num_workers is None:
            big = sum(map(len, texts)) >= bpe._PARALLEL_MIN_CHARS
            num_workers = bpe._cpu_count() if big else 1
        num_workers = min(num_workers, len(texts))
        if num_workers <= 1:
            return [self.encode(t, **kwargs) for t in texts]
        step = -(-len(texts) // (num_workers * 4))
        chunks = [texts[i:i + step] for i in range(0, len(texts), step)]
        with bpe._mp_context().Pool(num_workers, bpe._init_worker, (self, kwargs)) as pool:
            parts = pool.map(bpe._encode_chunk, chunks, chunksize=1)
        return [ids for part in parts for ids in part]

    # -- decoding -----------------------------------------------------------------------

    def decode(self, ids: Iterable[int], errors: str = "replace",
               skip_special_tokens: bool = False) -> str:
        """Text of `ids`: tokens joined by spaces, "##" pieces glued to the one before,
        and no space before . , ? ! (HF's WordPiece decoder with cleanup). Lowercasing and
        accent stripping are not undone. `errors` is accepted for the BPE interface."""
        if hasattr(ids, "tolist"):  # numpy arrays, torch tensors
            ids = ids.tolist()
        ids = list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        table, prefix = self._id_to_token, self.prefix
        parts = []
        for k, i in enumerate(ids):
            token = table[i] if isinstance(i, int) and 0 <= i < len(table) else None
            if token is None:
                raise TokenizerError(f"token id {i} is not in the vocabulary")
            if k:
                token = token[len(prefix):] if token.startswith(prefix) else " " + token
            # Every cleanup pattern is a space then one of _CLEANUP_FIRST: test cheaply.
            if " " in token and (token[1:2] in _CLEANUP_FIRST or " " in token[1:]):
                token = _cleanup(token)
            parts.append(token)
        return "".join(parts)

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        """`decode(ids)` as UTF-8."""
        return self.decode(ids, skip_special_tokens=skip_special_tokens).encode("utf-8")

    # -- vocabulary and special tokens ----------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1): the size an embedding table needs."""
        return len(self._id_to_token)

    def id_to_bytes(self, i: int) -> bytes | None:
        """UTF-8 of the text an id stands for: the token without its "##", or None."""
        token = self.id_to_token(i)
        if token is None:
            return None
        if token.startswith(self.prefix) and i not in self._special_ids:
            token = token[len(self.prefix):]
        return token.encode("utf-8")

    def is_continuation(self, i: int) -> bool:
        """Whether id `i` continues the word before it (a "##" piece): whole-word
        masking groups a word's first piece with the continuations that follow."""
        token = self.id_to_token(i)
        return token is not None and i not in self._special_ids and token.startswith(self.prefix)

    @property
    def unk_id(self) -> int:
        """Id of the unknown token ([UNK]): WordPiece always has one."""
        return self._unk_id

    def sentinel_ids(self, n: int) -> list[int]:
        """Ids of T5's `<extra_id_0>` ... `<extra_id_{n-1}>` (added as special tokens)."""
        names = [f"<extra_id_{i}>" for i in range(n)]
        missing = [t for t in names if t not in self._special]
        if missing:
            raise TokenizerError(
                f"{len(missing)} of {n} sentinel tokens are not special tokens (first: "
                f"{missing[0]}); add them with add_special_tokens(sentinel_tokens({n}))"
            )
        return [self._special[t] for t in names]

    def _split_regex(self, tokens: frozenset[str]) -> regex.Pattern:
        pat = self._regexes.get(tokens)
        if pat is None:  # longest first: HF matches leftmost-longest
            ordered = sorted(tokens, key=lambda t: (-len(t), t))
            pat = self._regexes[tokens] = regex.compile("|".join(map(regex.escape, ordered)))
        return pat

    # -- formats ------------------------------------------------------------------------

    def to_hf_dict(self) -> dict:
        """This tokenizer as the dict of an HF `tokenizer.json` (BertNormalizer,
        BertPreTokenizer, WordPiece model and decoder; BERT's [CLS] A [SEP] template
        when [CLS] and [SEP] are special, which `encode` here does not apply)."""
        added = [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special}
            for t, i, special in sorted(
                [(t, i, False) for t, i in self._added.items()]
                + [(t, i, True) for t, i in self._special.items()],
                key=lambda x: x[1],
            )
        ]
        post = None
        if "[CLS]" in self._special and "[SEP]" in self._special:
            def spec(t, type_id):
                return {"SpecialToken": {"id": t, "type_id": type_id}}

            def seq(s, type_id):
                return {"Sequence": {"id": s, "type_id": type_id}}

            post = {
                "type": "TemplateProcessing",
                "single": [spec("[CLS]", 0), seq("A", 0), spec("[SEP]", 0)],
                "pair": [spec("[CLS]", 0), seq("A", 0), spec("[SEP]", 0),
                         seq("B", 1), spec("[SEP]", 1)],
                "special_tokens": {t: {"id": t, "ids": [self._special[t]], "tokens": [t]}
                                   for t in ("[CLS]", "[SEP]")},
            }
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": self.clean_text,
                           "handle_chinese_chars": self.handle_chinese_chars,
                           "strip_accents": self.strip_accents, "lowercase": self.lowercase},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": post,
            "decoder": {"type": "WordPiece", "prefix": self.prefix, "cleanup": True},
            "model": {
                "type": "WordPiece",
                "unk_token": self.unk_token,
                "continuing_subword_prefix": self.prefix,
                "max_input_chars_per_word": self.max_input_chars_per_word,
                "vocab": dict(sorted(self._vocab.items(), key=lambda x: x[1])),
            },
        }

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordPieceTokenizer:
        """Read a WordPiece `tokenizer.json` (a folder: its `tokenizer.json`)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(data, str(path))

    from_hf_json = load

    @classmethod
    def from_hf_dict(cls, data: dict, where: str = "tokenizer.json") -> WordPieceTokenizer:
        """Build from a parsed HF `tokenizer.json` whose model is WordPiece. Normalizer:
        none or BertNormalizer; pre-tokenizer: BertPreTokenizer. Anything else raises
        TokenizerError (lmforge would not reproduce it exactly)."""
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "WordPiece":
            raise TokenizerError(f"{where}: model type is not WordPiece")
        norm = data.get("normalizer")
        if norm is None:
            flags = dict(clean_text=False, handle_chinese_chars=False, strip_accents=False,
                         lowercase=False)
        elif norm.get("type") == "BertNormalizer":
            flags = {k: norm.get(k, d) for k, d in (("clean_text", True),
                                                     ("handle_chinese_chars", True),
                                                     ("strip_accents", None),
                                                     ("lowercase", True))}
        else:
            raise TokenizerError(f"{where}: normalizer {norm.get('type')!r} is not supported "
                                 "for WordPiece (only BertNormalizer or none)")
        pre = data.get("pre_tokenizer")
        if (pre or {}).get("type") != "BertPreTokenizer":
            raise TokenizerError(f"{where}: pre_tokenizer {(pre or {}).get('type')!r} is not "
                                 "supported for WordPiece (only BertPreTokenizer)")
        special, added = {}, {}
        for t in data.get("added_tokens") or []:
            (special if t.get("special") else added)[t["content"]] = t["id"]
        try:
            return cls(model.get("vocab"), special, added_tokens=added,
                       unk_token=model.get("unk_token", "[UNK]"),
                       prefix=model.get("continuing_subword_prefix") or "##",
                       max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
                       **flags)
        except TokenizerError as e:
            raise TokenizerError(f"{where}: {e}") from None

    @classmethod
    def from_vocab_txt(
        cls,
        path: str | os.PathLike,
        lowercase: bool | None = None,
        strip_accents: bool | None = None,
        special_tokens: Sequence[str] = _BERT_SPECIALS,
    ) -> WordPieceTokenizer:
        """Read BERT's `vocab.txt` (one token per line; the line number is the id).

        lowercase: None reads `do_lower_case` from a `tokenizer_config.json` beside the
            file, else True (BERT's uncased default).
        special_tokens: those present in the vocab become special.
        """
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"vocab file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{path}: not UTF-8 ({e})") from None
        if lines and lines[-1] == "":
            lines.pop()
        vocab: dict[str, int] = {}
        for i, line in enumerate(lines):
            vocab.setdefault(line.rstrip("\r"), i)  # a repeated line keeps its first id
        if lowercase is None:
            config = path.parent / "tokenizer_config.json"
            lowercase = True
            if config.is_file():
                try:
                    cfg = json.loads(config.read_text(encoding="utf-8"))
                    lowercase = bool(cfg.get("do_lower_case", True))
                    if strip_accents is None:
                        strip_accents = cfg.get("strip_accents")
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise TokenizerError(f"{config}: not valid JSON") from None
        special = {t: vocab[t] for t in special_tokens if t in vocab}
        try:
            return cls(vocab, special, lowercase=lowercase, strip_accents=strip_accents)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None

    # -- pickling (encode_batch workers) and display ---------------------------------

    def __getstate__(self) -> dict:
        return {"vocab": self._vocab, "special_tokens": self._special,
                "added_tokens": self._added, "unk_token": self.unk_token,
                "prefix": self.prefix, "max_input_chars_per_word": self.max_input_chars_per_word,
                "lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "clean_text": self.clean_text, "handle_chinese_chars": self.handle_chinese_chars}

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, "
                f"special_tokens={len(self._special)}, lowercase={self.lowercase})")


_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
             (" n't", "n't"), (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"),
             (" 've", "'ve"), (" 're", "'re"))
_CLEANUP_FIRST = frozenset(".?!,'nd")  # the character after the space in each pattern


class _WordCache(dict):
    """word -> token ids; a miss runs WordPiece on the word. Cleared when it grows too big."""

    def __init__(self, wordpiece):
        super().__init__()
        self._wordpiece = wordpiece

    def __missing__(self, word: str) -> tuple[int, ...]:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        ids = self[word] = self._wordpiece(word)
        return ids


def _cleanup(token: str) -> str:
    """HF's WordPiece decoder cleanup, applied to each token with its leading space."""
    for dirty, clean in _CLEANUPS:
        token = token.replace(dirty, clean)
    return token
