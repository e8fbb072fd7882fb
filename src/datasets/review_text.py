"""Review text as token ids: tokenisers, a corpus held as one id array with offsets, a frequency vocabulary, and a
cache of the tokenisation (problem 4 of docs/problems.md, IMDB and the snownlp product reviews).

Tokenisers (`TOKENIZERS`):
- `words`: what Keras's `Tokenizer` does by default, which the original (seed) used: lower case, the characters
  `!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~` and tabs/newlines become spaces, then split on whitespace; the apostrophe
  stays inside words ("don't"). IMDB's `<br />` line breaks are removed first (Keras would have made "br" the
  commonest word after "the").
- `words_punct`: the same words, and `!` and `?` kept as tokens of their own.
- `chars`: Chinese text: every non-space character is a token, except runs of ASCII letters and digits, which are
  one token each ("iphone", "2011").
- `snownlp_words`: Chinese words from snownlp's segmenter (a character-based generative model trained on People's
  Daily; pure Python, about 10x slower than `chars` on first use, then cached).

Tokenising 100k IMDB reviews takes ~20 s; it is done once per text and settings and cached under
`paths.cache_dir/reviews/` (key: a SHA-256 over the tokeniser, its version and every text), as ids over the
corpus's full word list in order of first appearance. A vocabulary (the `size` most frequent words of chosen
documents, ties broken by first appearance, as Keras breaks them) is then one bincount and one lookup table.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer.errors import UserError

log = logging.getLogger("trainer")

PAD, UNK = 0, 1  # ids 2.. are the vocabulary's words, most frequent first
TOKENIZER_VERSION = 1  # bump when a tokeniser changes, to invalidate caches

_KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
_TO_SPACE = str.maketrans({c: " " for c in _KERAS_FILTERS})
_TO_SPACE_KEEP_MARKS = str.maketrans({c: " " for c in _KERAS_FILTERS if c not in "!?"} | {"!": " ! ", "?": " ? "})
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_CHARS = re.compile(r"[a-z0-9]+|\S")


def words(text: str) -> list[str]:
    return _BR.sub(" ", text).lower().translate(_TO_SPACE).split()


def words_punct(text: str) -> list[str]:
    return _BR.sub(" ", text).lower().translate(_TO_SPACE_KEEP_MARKS).split()


def chars(text: str) -> list[str]:
    return _CHARS.findall(text.lower())


def snownlp_words(text: str) -> list[str]:
    from snownlp import seg

    return [w for w in seg.seg(text.lower()) if w.strip()]


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "words": words, "words_punct": words_punct, "chars": chars, "snownlp_words": snownlp_words}


def tokenizer(name: str) -> Callable[[str], list[str]]:
    if name not in TOKENIZERS:
        raise UserError(f"dataset.tokenizer={name} is not one of {', '.join(TOKENIZERS)}")
    if name == "snownlp_words":
        import importlib.util

        if importlib.util.find_spec("snownlp") is None:
            raise UserError("dataset.tokenizer=snownlp_words needs the snownlp package: pip install snownlp")
    return TOKENIZERS[name]


@dataclass
class Corpus:
    """Documents as token ids over `words` (every distinct token, in order of first appearance), end to end."""

    ids: np.ndarray  # int32, all documents' tokens
    offsets: np.ndarray  # int64, n_docs + 1
    words: list[str]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def tokenize(texts: Sequence[str], name: str) -> Corpus:
    split = tokenizer(name)
    index: dict[str, int] = {}
    get = index.setdefault
    lengths = np.zeros(len(texts), dtype=np.int64)
    parts = []
    for i, text in enumerate(texts):
        toks = split(text)
        lengths[i] = len(toks)
        parts.append(np.fromiter((get(t, len(index)) for t in toks), dtype=np.int32, count=len(toks)))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return Corpus(ids, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), list(index))


def text_digest(texts: Sequence[str], name: str) -> str:
    h = hashlib.sha256(f"{name}:{TOKENIZER_VERSION}:{len(texts)}\0".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def cached_tokenize(texts: Sequence[str], name: str, cache_dir: str | Path | None, label: str) -> Corpus:
    """`tokenize`, read from or written to `cache_dir/reviews/<label>-<key>.npz` (no cache when cache_dir is None)."""
    if cache_dir is None:
        return tokenize(texts, name)
    folder = Path(cache_dir) / "reviews"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the tokenisation cache {folder}: {e.strerror}; set paths.cache_dir to a "
                        "writable folder, or dataset.cache_dir=null to tokenise without a cache") from None
    path = folder / f"{label}-{name}-{text_digest(texts, name)[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return Corpus(z["ids"], z["offsets"], bytes(z["words"]).decode("utf-8").split("\n"))
        except (OSError, ValueError, KeyError) as e:
            log.warning(f"tokenisation cache {path} is unreadable ({type(e).__name__}); tokenising again")
    log.info(f"tokenising {len(texts):,} {label} texts ({name}); cached in {path}")
    corpus = tokenize(texts, name)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    packed = np.frombuffer("\n".join(corpus.words).encode("utf-8"), dtype=np.uint8)
    try:
        np.savez(tmp, ids=corpus.ids, offsets=corpus.offsets, words=packed)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.warning(f"could not write the tokenisation cache {path}: {e.strerror}")
    return corpus


class Vocabulary:
    """Words -> ids: 0 pads, 1 is a word outside the vocabulary, 2.. the words, most frequent first."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)

    @classmethod
    def build(cls, corpus: Corpus, docs: np.ndarray, size: int) -> Vocabulary:
        """The `size` most frequent words of the documents `docs` (ties: first appearance in the corpus)."""
        starts, ends = corpus.offsets[docs], corpus.offsets[docs + 1]
        mask = np.zeros(len(corpus.ids), dtype=np.int8)
        np.add.at(mask, starts, 1)
        np.add.at(mask, ends[ends < len(mask)], -1)
        chosen = np.cumsum(mask).astype(bool)
        counts = np.bincount(corpus.ids[chosen], minlength=len(corpus.words))
        order = np.lexsort((np.arange(len(counts)), -counts))
        order = order[counts[order] > 0][:size]
        return cls([corpus.words[i] for i in order])

    def __len__(self) -> int:
        return len(self.words) + 2

    def table(self, corpus_words: Sequence[str]) -> np.ndarray:
        """The vocabulary id of each of a corpus's words (UNK for the others)."""
        index = {w: i + 2 for i, w in enumerate(self.words)}
        return np.fromiter((index.get(w, UNK) for w in corpus_words), dtype=np.int32, count=len(corpus_words))

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = {w: i + 2 for i, w in enumerate(self.words)}
        return np.fromiter((index.get(t, UNK) for t in tokens), dtype=np.int32, count=len(tokens))


@dataclass
class Encoded:
    """Documents as vocabulary ids, end to end (OOV words dropped or kept as UNK)."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, n_docs + 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def encode(corpus: Corpus, table: np.ndarray, oov: str) -> Encoded:
    """Map a corpus through a vocabulary table; `oov`: 'drop' (as Keras's texts_to_sequences) or 'unk'."""
    mapped = table[corpus.ids] if len(corpus.ids) else np.zeros(0, dtype=np.int32)
    if oov == "unk":
        return Encoded(mapped, corpus.offsets.copy())
    keep = mapped != UNK
    kept_before = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    return Encoded(mapped[keep], kept_before[corpus.offsets])


def window(enc: Encoded, docs: np.ndarray, max_len: int | None, keep: str) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and lengths of the documents `docs`, cut to their first or last `max_len` tokens."""
    starts, ends = enc.offsets[docs], enc.offsets[docs + 1]
    lengths = ends - starts
    if max_len:
        cut = np.minimum(lengths, max_len)
        if keep == "last":
            starts = ends - cut
        lengths = cut
    return starts.astype(np.int64), lengths.astype(np.int64)
