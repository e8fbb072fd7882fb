"""Aspect (entity) level sentiment data as character tags (problem 1 of docs/problems.md, CCF BDCI 2016).

One DataModule gives two views of the same sentences, picked by `view`, so that the two stages of the task share
one vocabulary (it travels in `state_dict()` from the first stage to the second through `init.data`):
- `lm`: next-character samples, the previous `lm_window` (7) characters predict the next (`NextTokenWindows`);
- `tag`: every character tagged 0 (not an entity) or 1/2/3 (inside a positive/neutral/negative entity), over every
  occurrence of each labelled View (longer Views first: a View inside a longer labelled one keeps the longer one's
  tag), or over the given spans of the JSON-lines format.

Texts longer than `window` (100) characters are covered by overlapping windows (`stride` apart, the last one ending
at the text's end), never cut off. Training items are windows; evaluation, prediction and pseudo-labelling items are
whole sentences, fetched as all of their windows plus a `stitch` index that takes each character's scores from the
window in which it lies furthest from an edge, so the head decodes and scores whole sentences.

Splits are by sentence, from `split_seed`: a held-out `test` share, a `val` share, the rest trains. With
`test_views=unseen` the test sentences are those whose Views all belong to a random `unseen_fraction` of the
distinct Views, and no training or validation sentence has one of those Views: a test of entities never seen.
The vocabulary keeps characters seen at least `min_count` (5) times in the training split (others share the
unknown id 1; 0 pads). The entity list used in decoding is the training split's Views, or `entities` (a file, one
entity a line); its longest non-overlapping matches in each sentence (Aho-Corasick, `pyahocorasick`) go into
evaluation batches as `matches`; with `compose_matches`, matches are joined into Views the list does not hold
(brand + model, model + code: `EntityMatcher`). A View that does not occur in its sentence is counted and reported,
and stays in the gold (an entity no tagger can find).

Self-training: `unlabelled` (a file of sentences, one a line or Train.csv format, or `test`: the held-out test
sentences' text, as the contest gave its test text unlabelled) is the `unlabelled` split; the core hands
pseudo-labels for some of its sentences to `set_pseudo_labels`, which adds them to the training split and to
`state_dict()`.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import ahocorasick
import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.errors import UserError

from .absa_formats import (POLARITIES, Aspect, Sentence, read_contest, read_entity_list, read_jsonl,
                           read_new_sentences, write_labels)
from .base import BatchedRows, BatchPlan, BucketBatches, LazyDataModule, SequentialBatches
from .lm_windows import NextTokenWindows
from .segmentation import Vocabulary

log = logging.getLogger("trainer")

PAD, UNK = 0, 1
IGNORE = -100
NUM_TAGS = 4  # 0 none, 1 pos, 2 neu, 3 neg
TAG_OF = {p: i + 1 for i, p in enumerate(POLARITIES)}


# A Latin/digit model code directly after a match (帝豪 + ec7); a dot inside one makes it a displacement (1.6l)
MODEL_CODE = re.compile(r"[A-Za-z0-9]+(?:[.\-][A-Za-z0-9]+)*")


class EntityMatcher:
    """Longest non-overlapping occurrences (leftmost first) of a list of entities in a text, by Aho-Corasick.

    With `compose`, the matches are then joined as the car-review labels join Views that the list does not hold:
    - a match that is a prefix of a longer entity (a brand: 大众, of 大众速腾) joins a match directly after it that
      is not one (大众 + 朗逸 -> 大众朗逸; 宝马 + 奥迪 stay two Views);
    - a match runs on over a model code directly after it (帝豪 + ec7 -> 帝豪ec7; 起亚k9 + 00 -> 起亚k900) when the
      code has a letter or continues one the match ends in (so a year after 标致308 runs on too, unless blocked),
      holds no dot, and is not in `blocked`: the codes that follow matches in the training text outside any
      labelled View (4s, suv, 2016, 20t), which `codes_after` collects.
    """

    def __init__(self, entities: list[str], compose: bool = False, blocked: frozenset[str] = frozenset()):
        self.automaton = None
        if entities:
            self.automaton = ahocorasick.Automaton()
            for e in entities:
                self.automaton.add_word(e, len(e))
            self.automaton.make_automaton()
        self.compose, self.blocked = compose, blocked
        ordered = sorted(set(entities))  # a prefix sorts directly before the first entity that extends it
        self.brands = {e for e, after in zip(ordered, ordered[1:]) if after.startswith(e)}

    def raw(self, text: str) -> list[tuple[int, int]]:
        if self.automaton is None:
            return []
        return [(last - n + 1, last + 1) for last, n in self.automaton.iter_long(text)]

    def __call__(self, text: str) -> list[tuple[int, int]]:
        spans = self.raw(text)
        return self._composed(text, spans) if self.compose else spans

    def codes_after(self, sentences: list[Sentence]) -> frozenset[str]:
        """The model codes that directly follow a match in labelled `sentences` and are no part of a View there."""
        codes = set()
        for s in sentences:
            tags = sentence_tags(s)[0]
            codes.update(m.group() for _, b in self.raw(s.text) if (m := MODEL_CODE.match(s.text, b)) and not tags[b])
        return frozenset(codes)

    def _composed(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        joined: list[tuple[int, int]] = []
        for a, b in spans:
            after_brand = joined and joined[-1][1] == a and text[joined[-1][0] : a] in self.brands
            if after_brand and text[a:b] not in self.brands:
                joined[-1] = (joined[-1][0], b)
            else:
                joined.append((a, b))
        out: list[tuple[int, int]] = []
        for a, b in joined:
            if out and a < out[-1][1]:  # inside the code the previous match ran on over
                out[-1] = (out[-1][0], max(b, out[-1][1]))
                continue
            code = MODEL_CODE.match(text, b)
            if code and "." not in code.group() and code.group() not in self.blocked and (
                    text[b - 1].isascii() and text[b - 1].isalnum() or any(c.isalpha() for c in code.group())):
                b = code.end()
            out.append((a, b))
        return out


def sentence_tags(s: Sentence) -> tuple[np.ndarray, int]:
    """The tag of each character of `s`, and how many of its aspects were not found in its text."""
    tags = np.zeros(len(s.text), dtype=np.int64)
    missing = 0
    # longer terms first: a View inside a longer labelled View (长安 in 长安逸动) keeps the longer one's tag
    for a in sorted(s.aspects or [], key=lambda a: -len(a.term)):
        tag = TAG_OF[a.polarity]
        if a.start is not None:
            tags[a.start : a.end] = tag
            continue
        at, found = s.text.find(a.term), False
        while at >= 0:
            found = True
            if not tags[at : at + len(a.term)].any():
                tags[at : at + len(a.term)] = tag
            at = s.text.find(a.term, at + len(a.term))
        missing += not found
    return tags, missing


def gold_pairs(s: Sentence) -> list[tuple[str, str]]:
    """The sentence's distinct (View, polarity) pairs, as the contest scores them."""
    return list(dict.fromkeys((a.term, a.polarity) for a in s.aspects or []))


def match_flags(n: int, matches: list[tuple[int, int]]) -> np.ndarray:
    flags = np.ones(n, dtype=np.int64)
    for a, b in matches:
        flags[a] = 2
        flags[a + 1 : b] = 3
    return flags


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Starts of the windows covering n characters: `stride` apart, the last one ending at the text's end."""
    if n <= window:
        return [0]
    return list(range(0, n - window, stride)) + [n - window]


class Encoded:
    """Sentences as id and tag arrays with their windows: what both item views read from."""

    def __init__(self, sentences: list[Sentence], vocab: Vocabulary, window: int, stride: int,
                 matches: list[list[tuple[int, int]]] | None = None):
        self.sentences = sentences
        self.ids = [vocab.encode(s.text).astype(np.int64) for s in sentences]
        # with `matches`: a second input channel, 1 outside the entity-list matches, 2 on a match's first character,
        # 3 inside (0 pads)
        self.flags = None if matches is None else [match_flags(len(s.text), m) for s, m in zip(sentences, matches)]
        self.labelled = all(s.aspects is not None for s in sentences)
        self.tags, self.missing = [], 0
        if self.labelled:
            for s in sentences:
                tags, missing = sentence_tags(s)
                self.tags.append(tags)
                self.missing += missing
        # windows: (sentence, start, length)
        rows = [(i, start, min(window, len(s.text) - start)) for i, s in enumerate(sentences)
                for start in window_starts(len(s.text), window, stride)]
        self.windows = np.array(rows, dtype=np.int64).reshape(-1, 3)
        self.first_window = np.searchsorted(self.windows[:, 0], np.arange(len(sentences)))
        self.window_count = np.bincount(self.windows[:, 0], minlength=len(sentences)) if len(rows) else \
            np.zeros(len(sentences), dtype=np.int64)

    def window_batch(self, rows: np.ndarray) -> dict[str, Any]:
        """x, lengths and (labelled) y of the given window rows, padded to the longest."""
        lengths = self.windows[rows, 2]
        width = max(int(lengths.max()) if len(rows) else 0, 1)
        x = np.zeros((len(rows), width) + (() if self.flags is None else (2,)), dtype=np.int64)
        y = np.full((len(rows), width), IGNORE, dtype=np.int64)
        for r, (i, start, n) in enumerate(self.windows[rows]):
            if self.flags is None:
                x[r, :n] = self.ids[i][start : start + n]
            else:
                x[r, :n, 0] = self.ids[i][start : start + n]
                x[r, :n, 1] = self.flags[i][start : start + n]
            if self.labelled:
                y[r, :n] = self.tags[i][start : start + n]
        out = {"x": torch.from_numpy(x), "lengths": torch.from_numpy(lengths.copy())}
        if self.labelled:
            out["y"] = torch.from_numpy(y)
        return out


class SentenceDataset(Dataset):
    """Evaluation, prediction and pseudo-labelling view: one item per sentence, fetched as all of its windows.

    Besides the windows' x, lengths (and y), a batch holds `stitch` (S, L): for each character of each sentence,
    the flat index into the windows' (W * T) outputs to read its scores from; `sentence_lengths`; `texts`; `ids`;
    `index` (positions in the split); `matches` (entity-list spans); and with labels `gold` ((View, polarity)
    pairs) and `gold_unseen` (whether each View is missing from the training Views).
    """

    def __init__(self, enc: Encoded, matches: list[list[tuple[int, int]]], train_views: frozenset[str]):
        self.enc, self.matches, self.train_views = enc, matches, train_views

    def __len__(self) -> int:
        return len(self.enc.sentences)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        enc = self.enc
        idx = np.asarray(indices, dtype=np.int64)
        counts = enc.window_count[idx]
        rows = np.concatenate([np.arange(f, f + c) for f, c in zip(enc.first_window[idx], counts)]) if len(idx) \
            else np.zeros(0, dtype=np.int64)
        out = enc.window_batch(rows.astype(np.int64))
        width = out["x"].shape[1]
        sentences = [enc.sentences[i] for i in idx.tolist()]
        lengths = np.array([len(s.text) for s in sentences], dtype=np.int64)
        stitch = np.zeros((len(idx), max(int(lengths.max()) if len(idx) else 0, 1)), dtype=np.int64)  # (S, L)
        row = 0
        for k, (n, c) in enumerate(zip(lengths, counts)):
            starts = enc.windows[rows[row : row + c], 1]
            sizes = enc.windows[rows[row : row + c], 2]
            p = np.arange(n)
            # each character from the window where it lies furthest from an edge
            margin = np.minimum(p[None, :] - starts[:, None], starts[:, None] + sizes[:, None] - 1 - p[None, :])
            margin = np.where((p[None, :] >= starts[:, None]) & (p[None, :] < (starts + sizes)[:, None]), margin, -1)
            best = margin.argmax(0)
            stitch[k, :n] = (row + best) * width + (p - starts[best])
            row += c
        out.update(stitch=torch.from_numpy(stitch), sentence_lengths=torch.from_numpy(lengths),
                   texts=[s.text for s in sentences], ids=[s.id for s in sentences], index=idx.tolist(),
                   matches=[self.matches[i] for i in idx.tolist()])
        if enc.labelled:
            gold = [gold_pairs(s) for s in sentences]
            out["gold"] = gold
            out["gold_unseen"] = [[view not in self.train_views for view, _ in pairs] for pairs in gold]
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])

    def lengths(self) -> np.ndarray:
        return np.array([len(s.text) for s in self.enc.sentences], dtype=np.int64)


def _shares(n: int, rng: np.random.Generator, *fractions: float) -> list[np.ndarray]:
    """A seeded permutation of range(n) cut into the rest and parts of the given fractions (in order)."""
    order = rng.permutation(n)
    sizes = [int(round(n * f)) for f in fractions]
    if sum(sizes) >= n:
        raise UserError(f"the held-out fractions {fractions} leave no training sentence out of {n}")
    parts, at = [], 0
    for size in sizes:
        parts.append(np.sort(order[at : at + size]))
        at += size
    return [np.sort(order[at:]), *parts]


class AbsaData(LazyDataModule):
    """Base of the aspect-sentiment DataModules; subclasses `read()` their sentences."""

    def __init__(self, view: str = "tag", window: int = 100, stride: int = 50, lm_window: int = 7,
                 min_count: int = 5, val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
                 test_views: str = "random", unseen_fraction: float = 0.2, entities: str | None = None,
                 unlabelled: str | None = None, lm_texts: list[str] | None = None, match_feature: bool = False,
                 match_folds: int = 5, compose_matches: bool = False, max_tokens: int | None = None, **loader: Any):
        super().__init__(**loader)
        if match_feature and match_folds < 2:
            raise UserError(f"dataset.match_folds={match_folds}: needs at least 2 folds")
        if view not in ("lm", "tag"):
            raise UserError(f"dataset.view={view}: must be lm (next-character samples) or tag (character tags)")
        if test_views not in ("random", "unseen"):
            raise UserError(f"dataset.test_views={test_views}: must be random or unseen")
        if not (isinstance(window, int) and window >= 1 and isinstance(stride, int) and 1 <= stride <= window):
            raise UserError(f"dataset.window={window}, dataset.stride={stride}: need 1 <= stride <= window")
        if min_count < 1:
            raise UserError(f"dataset.min_count={min_count}: must be >= 1")
        for key, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction),
                       ("unseen_fraction", unseen_fraction)):
            if not 0 <= f < 1:
                raise UserError(f"dataset.{key}={f}: must be in [0, 1)")
        self.view, self.window, self.stride, self.lm_window = view, window, stride, lm_window
        self.min_count, self.val_fraction, self.test_fraction = min_count, val_fraction, test_fraction
        self.split_seed, self.test_views, self.unseen_fraction = split_seed, test_views, unseen_fraction
        self.entities_file, self.unlabelled, self.max_tokens = entities, unlabelled, max_tokens
        self.lm_texts = list(lm_texts or [])
        self.match_feature, self.match_folds, self.compose_matches = match_feature, match_folds, compose_matches
        self.blocked_codes: frozenset[str] | None = None  # model codes seen after matches in the training text
        self.vocab: Vocabulary | None = None
        self.train_views: frozenset[str] | None = None
        self.entities: list[str] | None = None
        self.pseudo: dict[str, Any] | None = None
        self.parts: dict[str, list[Sentence]] | None = None
        self.splits = None  # built when first read (setup builds them unless a checkpoint's vocabulary makes it wait)

    # --- reading and splitting ----------------------------------------------------------------------------------
    def read(self) -> dict[str, list[Sentence]]:
        """{"all": labelled sentences to split} or explicit {"train": ..., "test": ...} lists."""
        raise NotImplementedError

    def _parts(self) -> dict[str, list[Sentence]]:
        if self.parts is not None:
            return self.parts
        read = self.read()
        rng = np.random.default_rng(self.split_seed)
        parts: dict[str, list[Sentence]] = {}
        pool = read.get("all", read.get("train", []))
        if "test" in read:
            parts["test"] = read["test"]
            train, val = _shares(len(pool), rng, self.val_fraction)
        elif self.test_views == "unseen":
            train, val, test = self._unseen_split(pool, rng)
            parts["test"] = [pool[i] for i in test]
        else:
            train, val, test = _shares(len(pool), rng, self.val_fraction, self.test_fraction)
            parts["test"] = [pool[i] for i in test]
        parts["train"], parts["val"] = [pool[i] for i in train], [pool[i] for i in val]
        if read.get("extra"):  # more labelled text, for training only
            extra = read["extra"]
            if self.test_views == "unseen":
                extra = [s for s in extra if not {a.term for a in s.aspects or []} & self._held]
            log.info(f"{len(extra)} more labelled sentences join the training split")
            parts["train"] = parts["train"] + extra
        if self.unlabelled == "test":
            parts["unlabelled"] = [Sentence(s.id, s.text) for s in parts["test"]]
        elif self.unlabelled:
            parts["unlabelled"] = read_new_sentences(self.unlabelled)
        for name in ("train", "val", "test"):
            if not parts.get(name):
                parts.pop(name, None)
        if "train" not in parts:
            raise UserError("no training sentences: check the dataset files and fractions")
        self.parts = parts
        return parts

    def _unseen_split(self, pool: list[Sentence], rng: np.random.Generator) -> list[np.ndarray]:
        views = sorted({a.term for s in pool for a in s.aspects or []})
        held = set(np.array(views, dtype=object)[rng.random(len(views)) < self.unseen_fraction].tolist())
        self._held = held
        test, rest, mixed = [], [], 0
        for i, s in enumerate(pool):
            terms = {a.term for a in s.aspects or []}
            if terms and terms <= held:
                test.append(i)
            elif terms & held:
                mixed += 1  # would leak a held-out View into training, or a seen one into the test
            else:
                rest.append(i)
        log.info(f"test_views=unseen: {len(held)} of {len(views)} Views held out; {len(test)} test sentences, "
                 f"{mixed} sentences mixing held-out and other Views left out")
        rest = np.array(rest, dtype=np.int64)
        train, val = _shares(len(rest), rng, self.val_fraction)
        return [rest[train], rest[val], np.array(test, dtype=np.int64)]

    # --- the DataModule contract --------------------------------------------------------------------------------
    def setup(self, stage: str = "fit") -> None:
        if self.entities_file:
            self.entities = read_entity_list(self.entities_file)
        if stage == "predict" and self.vocab is not None:
            self._splits = None  # built only if a split is asked for: predict needs nothing but the checkpoint
            return
        self._splits = self._build_splits()

    def _build_splits(self) -> dict[str, Dataset]:
        parts = self._parts()
        if self.vocab is None:  # else: from the previous stage or a checkpoint (load_state_dict)
            self.vocab = Vocabulary.build([s.text for s in parts["train"]], self.min_count)
        if self.train_views is None:
            self.train_views = frozenset(a.term for s in parts["train"] for a in s.aspects or [])
        if self.entities is None:
            self.entities = sorted(self.train_views)
        if self.blocked_codes is None:
            self.blocked_codes = EntityMatcher(self.entities).codes_after(parts["train"])
        splits: dict[str, Dataset] = {}
        if self.view == "lm":
            for name in ("train", "val", "test"):
                if name in parts:
                    texts = [s.text for s in parts[name]]
                    if name == "train":  # more unlabelled text for the LM only
                        texts += [s.text for path in self.lm_texts for s in read_new_sentences(path)]
                    splits[name] = NextTokenWindows([self.vocab.encode(t) for t in texts], self.lm_window, pad_id=PAD)
            return splits
        matcher = self._matcher(self.entities)
        splits["train"] = self._training_split(matcher)
        for name in ("val", "test", "unlabelled"):
            if name in parts:
                matches = [matcher(s.text) for s in parts[name]]
                splits[name] = SentenceDataset(self._encode(parts[name], name, matches), matches, self.train_views)
        return splits

    def _matcher(self, entities: list[str]) -> EntityMatcher:
        return EntityMatcher(entities, self.compose_matches, self.blocked_codes)

    def _training_split(self, matcher: EntityMatcher) -> BatchedRows:
        train, pseudo = self._parts()["train"], self._pseudo_sentences()
        matches = None
        if self.match_feature:
            # The entity list comes from the training labels, so on a training sentence its matches would find every
            # View: the model would learn to trust them blindly. Each training sentence sees the matches of a list
            # built from the other folds' Views instead (a list given as a file is outside knowledge: used as is).
            if self.entities_file:
                matches = [matcher(s.text) for s in train]
            else:
                fold = np.random.default_rng([self.split_seed, 1]).permutation(len(train)) % self.match_folds
                matches = [None] * len(train)
                for k in range(self.match_folds):
                    others = [s for s, f in zip(train, fold) if f != k]
                    views = sorted({a.term for s in others for a in s.aspects or []})
                    other = EntityMatcher(views, self.compose_matches)
                    if self.compose_matches:  # the codes these folds show, as the list is theirs
                        other.blocked = other.codes_after(others)
                    for i in np.flatnonzero(fold == k).tolist():
                        matches[i] = other(train[i].text)
            matches += [matcher(s.text) for s in pseudo]
        enc = self._encode(train + pseudo, "train", matches)
        return BatchedRows(enc.window_batch, enc.windows[:, 2], enc)  # one item per window

    def _encode(self, sentences: list[Sentence], name: str, matches: list | None = None) -> Encoded:
        enc = Encoded(sentences, self.vocab, self.window, self.stride, matches if self.match_feature else None)
        if enc.missing:
            total = sum(len(s.aspects or []) for s in sentences)
            log.warning(f"{name}: {enc.missing} of {total} labelled Views do not occur in their sentence's text; "
                        "they stay in the gold (no tagger can find them)")
        return enc

    def _pseudo_sentences(self) -> list[Sentence]:
        if not self.pseudo:
            return []
        source = self._parts().get(self.pseudo["split"])
        if source is None:
            raise UserError(f"pseudo-labels are for split '{self.pseudo['split']}', which this dataset config does "
                            "not have (set dataset.unlabelled)")
        out = []
        for i, spans in zip(self.pseudo["indices"], self.pseudo["labels"]):
            s = source[i]
            out.append(Sentence(f"pseudo:{s.id}", s.text, [Aspect(s.text[a:b], POLARITIES[p - 1], a, b)
                                                           for a, b, p in spans]))
        return out

    def set_pseudo_labels(self, split: str, indices: list[int], labels: list[Any]) -> None:
        """Add pseudo-labelled sentences of `split` (labels: [start, end, tag] spans) to the training split,
        replacing earlier ones."""
        self.pseudo = {"split": split, "indices": [int(i) for i in indices],
                       "labels": [[[int(a), int(b), int(p)] for a, b, p in spans] for spans in labels]}
        if self._splits is not None and self.view == "tag":
            self._splits["train"] = self._training_split(self._matcher(self.entities))
        log.info(f"self-training: {len(indices)} pseudo-labelled sentences of '{split}' added to the training split")

    @property
    def info(self) -> dict[str, Any]:
        if self.vocab is None:
            self._splits = self._build_splits()
        return {"vocab_size": len(self.vocab), "num_tags": NUM_TAGS, "match_flags": 4 if self.match_feature else 0}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"chars": list(self.vocab.chars), "train_views": sorted(self.train_views),
                                 "entities": list(self.entities), "blocked_codes": sorted(self.blocked_codes)}
        if self.pseudo:
            state["pseudo"] = self.pseudo
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.vocab = Vocabulary(state["chars"])
        self.train_views = frozenset(state["train_views"])
        if not self.entities_file:  # an entity list given in the config wins over the checkpoint's
            self.entities = list(state["entities"])
        self.blocked_codes = frozenset(state.get("blocked_codes", ()))
        if "blocked_codes" not in state and self.compose_matches:
            log.warning("the checkpoint predates dataset.compose_matches: its matches are not composed")
            self.compose_matches = False
        self.pseudo = state.get("pseudo")
        self._splits = None  # (re)built with this state when first asked for

    def plan(self, split: str, train: bool) -> BatchPlan:
        dataset = self.splits[split]
        if isinstance(dataset, NextTokenWindows):
            return super().plan(split, train)
        if train:
            return BucketBatches(dataset.lengths(), self.batch_size, seed=self.seed, shuffle=True,
                                 max_tokens=self.max_tokens)
        if split in ("val", "test"):  # scored as sums: any order, so sentences of like length batch together
            return BucketBatches(dataset.lengths(), self.eval_batch_size, shuffle=False)
        return SequentialBatches(len(dataset), self.eval_batch_size)  # pseudo-labels are matched by position

    # --- mode=predict -------------------------------------------------------------------------------------------
    reads_stdin = True

    def predict_dataset(self, source: str) -> SentenceDataset:
        sentences = read_new_sentences(source)
        if not sentences:
            raise UserError(f"{source}: no sentences to tag")
        matcher = self._matcher(self.entities)
        matches = [matcher(s.text) for s in sentences]
        return SentenceDataset(self._encode(sentences, source, matches), matches, self.train_views)

    def write_predictions(self, dataset: SentenceDataset, predictions: list[list[tuple[str, str]]], out) -> None:
        """Label.csv rows (SentenceId, View, Opinion); a sentence with no entity found has no row, as in the
        contest's files."""
        write_labels(((s.id, view, polarity) for s, pairs in zip(dataset.enc.sentences, predictions)
                      for view, polarity in pairs), out)


class BdciAbsa(AbsaData):
    """The CCF BDCI 2016 files: `round: final` (Train.csv + Label.csv) or `first` (Train_first.csv +
    Label_first.csv) in `root`, or any `texts` + `labels` pair in the same format. `extra_round` adds the other
    round's labelled sentences to the training split (never to validation or test)."""

    ROUNDS = {"final": ("Train.csv", "Label.csv"), "first": ("Train_first.csv", "Label_first.csv")}

    def __init__(self, root: str | None = None, round: str = "final", texts: str | None = None,
                 labels: str | None = None, unknown_ids: str = "error", extra_round: str | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if round not in self.ROUNDS:
            raise UserError(f"dataset.round={round}: must be final or first")
        if extra_round not in (None, *self.ROUNDS) or extra_round == round:
            raise UserError(f"dataset.extra_round={extra_round}: must be null or the other round's name")
        self.root, self.extra_round = root, extra_round
        names = self.ROUNDS[round]
        base = Path(root) if root else None
        self.texts = texts or (str(base / names[0]) if base else None)
        self.labels = labels or (str(base / names[1]) if base else None)
        self.unknown_ids = unknown_ids

    def read(self) -> dict[str, list[Sentence]]:
        if not self.texts or not self.labels:
            raise UserError("dataset=absa_bdci needs dataset.root (a folder with the contest files) or "
                            "dataset.texts and dataset.labels")
        sentences, notes = read_contest(self.texts, self.labels, self.unknown_ids)
        out = {"all": sentences}
        if self.extra_round:
            if not self.root:
                raise UserError("dataset.extra_round needs dataset.root, the folder with both rounds' files")
            names = self.ROUNDS[self.extra_round]
            out["extra"], more = read_contest(Path(self.root) / names[0], Path(self.root) / names[1], "skip")
            notes += more
        for note in notes:
            log.warning(note)
        return out


class JsonlAbsa(AbsaData):
    """JSON-lines files (see `absa_formats`): `train` (split into train/val, and test unless `test` is given)."""

    def __init__(self, train: str | None = None, test: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.train, self.test = train, test

    def read(self) -> dict[str, list[Sentence]]:
        if not self.train:
            raise UserError("dataset=absa_jsonl needs dataset.train=PATH (a JSON-lines file)")
        out = {"all": _labelled(read_jsonl(self.train), self.train)}
        if self.test:
            out["test"] = _labelled(read_jsonl(self.test), self.test)
        return out


def _labelled(sentences: list[Sentence], path: str) -> list[Sentence]:
    unlabelled = [s.id for s in sentences if s.aspects is None]
    if unlabelled:
        raise UserError(f"{path}: sentence {unlabelled[0]} has no \"aspects\" list; training and test sentences "
                        "need one (an empty list for none)")
    return sentences
