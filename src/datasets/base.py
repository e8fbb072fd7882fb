"""The data side of the trainer: a DataModule owns reading, splitting, batching and collating one dataset.

The loop asks a DataModule for a DataLoader per split and never looks inside a batch beyond moving its tensors to
the device. Batches are dicts: "x" (model input), "y" (targets) and whatever the head needs ("weight", "mask",
ids as plain lists, ...).

Batch order is a pure function of (seed, epoch), produced by a `BatchPlan`. That is what makes three things exact
without special cases: resuming mid-epoch (skip the batches already done), DistributedDataParallel (every rank
builds the same global batch and takes its own slice of it, so N ranks see what one process would), and per-sample
augmentation seeds (see `sample_seed`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.errors import UserError


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample RNG seed, independent of worker count, rank and resume point."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class BatchPlan:
    """Decides which dataset indices form each batch of an epoch. Subclasses implement `batches`."""

    def batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError


class RandomBatches(BatchPlan):
    """A fresh permutation each epoch (seeded by seed and epoch), cut into batches."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last

    def batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return _chunk(torch.randperm(self.n, generator=g).tolist(), self.batch_size, self.drop_last)


class SequentialBatches(BatchPlan):
    """Indices in order (validation, test, prediction), optionally shifted by `epoch * n` for endless datasets."""

    def __init__(self, n: int, batch_size: int, drop_last: bool = False, fresh_each_epoch: bool = False):
        self.n, self.batch_size, self.drop_last, self.fresh = n, batch_size, drop_last, fresh_each_epoch

    def batches(self, epoch: int) -> list[list[int]]:
        offset = epoch * self.n if self.fresh else 0
        return _chunk(list(range(offset, offset + self.n)), self.batch_size, self.drop_last)


class BucketBatches(BatchPlan):
    """Batches of samples of equal or near-equal length (clauses, sentences), so that padding is small.

    Each epoch: a permutation seeded by (seed, epoch) breaks ties, a stable sort by length makes neighbours equally
    long, the sorted list is cut into batches of at most `batch_size` samples and, when `max_tokens` is set, at most
    `max_tokens` padded positions (batch count x longest length), so that short samples come in larger batches.
    With `shuffle` the order of the batches is then permuted; without it (evaluation) the plan is the same every
    epoch. `drop_last` drops a last batch of fewer than `batch_size` samples (count-cut batches only: with
    `max_tokens`, batches of long samples are small by design).
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int = 0, shuffle: bool = True,
                 max_tokens: int | None = None, drop_last: bool = False):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.max_tokens, self.drop_last = max_tokens, drop_last

    def batches(self, epoch: int) -> list[list[int]]:
        n = len(self.lengths)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(n, generator=g).numpy()
        else:
            g, perm = None, np.arange(n)
        order = perm[np.argsort(self.lengths[perm], kind="stable")]
        if self.max_tokens is None:
            out = _chunk(order.tolist(), self.batch_size, self.drop_last)
        else:
            out, start, sizes = [], 0, self.lengths[order]
            while start < n:
                # sorted ascending, so the last sample of a batch is its longest
                stop = start + 1
                while (stop < n and stop - start < self.batch_size
                       and (stop - start + 1) * max(int(sizes[stop]), 1) <= self.max_tokens):
                    stop += 1
                out.append(order[start:stop].tolist())
                start = stop
        if self.shuffle and out:
            out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
        return out


def _chunk(indices: Sequence[int], size: int, drop_last: bool) -> list[list[int]]:
    out = [list(indices[i : i + size]) for i in range(0, len(indices), size)]
    if drop_last and out and len(out[-1]) < size:
        out.pop()
    return out


class ClassBalancedBatches(BatchPlan):
    """Batches of `classes` classes x `per_class` samples each (the "P x K" sampling of metric learning, e.g. the
    16 x 2 batches of the dog fine-tuning original).

    Each batch draws its classes without replacement with probability proportional to class size, so over an epoch
    every sample is about equally likely to be seen; within a class, samples come from a per-epoch permutation
    (a fresh one when a class runs out). An epoch has ceil(n / batch size) batches, about one pass over the data.
    Everything is drawn from (seed, epoch). With fewer classes than `classes`, every class is in every batch.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, classes: int, per_class: int, seed: int = 0):
        self.labels = np.asarray(labels, dtype=np.int64)
        if classes < 1 or per_class < 1:
            raise ValueError(f"classes={classes} and per_class={per_class} must be >= 1")
        self.members = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        self.classes, self.per_class, self.seed = min(classes, len(self.members)), per_class, seed

    @property
    def batch_size(self) -> int:
        return self.classes * self.per_class

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        sizes = np.array([len(m) for m in self.members], dtype=np.float64)
        queues = [rng.permutation(m) for m in self.members]
        used = [0] * len(self.members)
        out = []
        for _ in range(math.ceil(len(self.labels) / self.batch_size)):
            batch = []
            for c in rng.choice(len(self.members), size=self.classes, replace=False, p=sizes / sizes.sum()):
                take = []
                while len(take) < self.per_class:
                    if used[c] == len(queues[c]):
                        queues[c], used[c] = rng.permutation(self.members[c]), 0
                    n = min(self.per_class - len(take), len(queues[c]) - used[c])
                    take += queues[c][used[c] : used[c] + n].tolist()
                    used[c] += n
                batch += take
            out.append(batch)
        return out


class ClassShareBatches(BatchPlan):
    """Batches with fixed class proportions, e.g. the LAMOST contest original's 80% star, 10% unknown, 5% galaxy and
    5% QSO in every batch of 160, against the data's 92 / 7 / 1.1 / 0.3%.

    Each batch holds round(share x batch_size) samples of each class (largest remainders, so that they sum to
    `batch_size`), taken in order from a per-epoch permutation of the class (a fresh permutation when the class runs
    out, so rare classes repeat within an epoch), then shuffled within the batch. An epoch has `batches_per_epoch`
    batches (default: n // batch_size, one pass in sample count). Everything is drawn from (seed, epoch).

    `shares` maps class names (with `class_names`, which DataModule.plan passes) or class indices to shares; every
    class present in `labels` must be named (a share of 0 leaves it out) and shares are normalised to sum to 1.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, shares: Any, seed: int = 0,
                 class_names: Sequence[str] | None = None, batches_per_epoch: int | None = None):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size, self.seed = int(batch_size), seed
        present = [int(c) for c in np.unique(self.labels)]
        by_index = self._by_index(shares, class_names)
        missing = [c for c in present if c not in by_index]
        if missing:
            names = [class_names[c] if class_names else str(c) for c in missing]
            raise UserError(f"dataset.train_plan.shares does not name class(es) {', '.join(names)} of the training "
                            "split; give each a share (0 to leave it out)")
        empty = [c for c, v in by_index.items() if v > 0 and c not in present]
        if empty:
            names = [class_names[c] if class_names else str(c) for c in empty]
            raise UserError(f"dataset.train_plan.shares gives class(es) {', '.join(names)} a share, but the training "
                            "split has no sample of them")
        raw = np.array([by_index.get(c, 0.0) for c in present], dtype=np.float64)
        if (raw < 0).any() or raw.sum() <= 0:
            raise UserError(f"dataset.train_plan.shares must be >= 0 with a positive sum; got {shares}")
        want = raw / raw.sum() * self.batch_size
        counts = np.floor(want).astype(np.int64)
        counts[np.argsort(-(want - counts), kind="stable")[: self.batch_size - counts.sum()]] += 1
        self.classes = present
        self.counts = counts  # samples of each class (in `classes` order) per batch
        self.members = [np.flatnonzero(self.labels == c) for c in present]
        default = max(len(self.labels) // max(self.batch_size, 1), 1)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else default

    @staticmethod
    def _by_index(shares: Any, class_names: Sequence[str] | None) -> dict[int, float]:
        if isinstance(shares, (list, tuple)) or (hasattr(shares, "__len__") and not hasattr(shares, "keys")):
            return {i: float(v) for i, v in enumerate(shares)}
        out = {}
        for key, value in dict(shares).items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                out[int(key)] = float(value)
            elif class_names is not None and str(key) in list(class_names):
                out[list(class_names).index(str(key))] = float(value)
            else:
                known = ", ".join(class_names) if class_names is not None else "class indices"
                raise UserError(f"dataset.train_plan.shares: '{key}' is not a class ({known})")
        return out

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        queues = [rng.permutation(m) for m in self.members]
        used = [0] * len(self.members)
        out = []
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            for c, k in enumerate(self.counts.tolist()):
                while k > 0:
                    if used[c] == len(queues[c]):
                        queues[c], used[c] = rng.permutation(self.members[c]), 0
                    n = min(k, len(queues[c]) - used[c])
                    batch += queues[c][used[c] : used[c] + n].tolist()
                    used[c] += n
                    k -= n
            out.append([batch[i] for i in rng.permutation(len(batch))])
        return out


class EpochBatchSampler(Sampler[list[int]]):
    """Iterates one epoch of a BatchPlan: this rank's slice of each global batch, from `start`, at most `limit`.

    Global batches smaller than `min_size` are skipped: training under DDP passes the world size, since a rank with
    an empty slice would have no loss to back-propagate and the gradient all-reduce would wait for it forever.
    """

    def __init__(self, plan: BatchPlan, rank: int = 0, world_size: int = 1, limit: int | None = None,
                 min_size: int = 1):
        self.plan, self.rank, self.world_size, self.limit = plan, rank, world_size, limit
        self.min_size = min_size
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batch_index: int) -> None:
        """Skip the first `batch_index` batches of the current epoch (mid-epoch resume)."""
        self.start = batch_index

    def _global(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self.plan.batches(self.epoch)
            if self.min_size > 1:
                batches = [b for b in batches if len(b) >= self.min_size]
            self._cache = (self.epoch, batches)
        batches = self._cache[1]
        return batches[: self.limit] if self.limit is not None else batches

    def __len__(self) -> int:
        return max(len(self._global()) - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global()[self.start :]:
            yield batch[self.rank :: self.world_size]


def resolve_limit(limit: float | None, n_batches: int) -> int | None:
    """Lightning's convention: an int is a batch count, a float in (0, 1] a fraction of the epoch."""
    if limit is None:
        return None
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, math.floor(limit * n_batches))
    return min(int(limit), n_batches)


def default_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors and numbers; keep anything else as a list."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if torch.is_tensor(first):
            out[key] = torch.stack(values)
        elif isinstance(first, np.ndarray):
            out[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, (int, float, bool, np.integer, np.floating)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class DataModule:
    """Base class: subclasses fill `self.splits` in `setup()` and may override the plan, collate and info.

    Order of calls: constructor, then `load_state_dict` when there is state (a resume, a checkpoint for eval/predict,
    a previous stage's state under `init.data`), then `setup(stage)`, which reuses what was loaded (a vocabulary,
    class names, pseudo-labels) instead of rebuilding it.
    """

    #: Constructor keys that say how this machine reads the data, not what the data is (eval/predict take them from
    #: the command line, the rest from the checkpoint). Subclasses add theirs (a render pool, a cache, a download).
    machine_keys: frozenset[str] = frozenset({"num_workers", "pin_memory"})

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        train_plan: Any = None,
    ):
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or batch_size)):
            if not (isinstance(value, int) and value >= 1):
                raise UserError(f"dataset.{key}={value} must be a whole number >= 1")
        if not (isinstance(num_workers, int) and num_workers >= 0):
            raise UserError(f"dataset.num_workers={num_workers} must be 0 (load in the main process) or more")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        if train_plan is not None and not callable(train_plan):
            raise UserError(f"dataset.train_plan must build a BatchPlan: give its _target_ with _partial_: true "
                            f"(got {train_plan!r})")
        #: a BatchPlan factory named in the config (`dataset.train_plan`, `_partial_: true`); `plan` calls it
        self.train_plan = train_plan
        self.splits: dict[str, Dataset] = {}

    # --- what subclasses provide -------------------------------------------------------------------------------
    def setup(self, stage: str = "fit") -> None:
        """Read the data and build `self.splits` ("train", "val", "test", ...). Raise UserError on bad input.

        `stage` is Lightning's: "fit" (training), "eval" (mode=eval), or "predict" (mode=predict: new inputs only; a
        module that can read them from the checkpoint's state alone reads nothing here). Called after
        `load_state_dict`, if there was state to load.
        """
        raise NotImplementedError

    @property
    def info(self) -> dict[str, Any]:
        """Facts the model and head configs may need at build time, reachable as `${data_info.KEY}`."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What must travel with a checkpoint to read new inputs the same way (a vocabulary, class names)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def set_pseudo_labels(self, split: str, indices: list[int], labels: list[Any]) -> None:
        """Self-training (the `pseudo_label` stage option): add the items `indices` of `split`, labelled `labels`
        (as the head's `pseudo_label` gives them), to the training split, replacing earlier pseudo-labels. Called
        after `setup`, before the training batch plan is built; the labels belong in `state_dict`, so that a resumed
        stage restores them rather than labelling again."""
        raise UserError(f"{type(self).__name__} does not take pseudo-labels; drop the stage's pseudo_label option")

    def plan(self, split: str, train: bool) -> BatchPlan:
        n = len(self.splits[split])
        if train and self.train_plan is not None:
            return self.configured_plan(split)
        if train:
            return RandomBatches(n, self.batch_size, seed=self.seed, drop_last=True)
        return SequentialBatches(n, self.eval_batch_size)

    def configured_plan(self, split: str) -> BatchPlan:
        """`dataset.train_plan` called with what it asks for of: the split's `labels` (its dataset's `labels`, or
        its "y" array), `n`, `batch_size`, `seed` and `class_names`."""
        import inspect

        params = inspect.signature(self.train_plan).parameters
        offered = {"n": lambda: len(self.splits[split]), "batch_size": lambda: self.batch_size,
                   "seed": lambda: self.seed, "class_names": lambda: getattr(self, "class_names", None),
                   "labels": lambda: self.split_labels(split)}
        return self.train_plan(**{k: get() for k, get in offered.items() if k in params})

    def split_labels(self, split: str) -> np.ndarray:
        ds = self.splits[split]
        labels = getattr(ds, "labels", None)
        if labels is None and isinstance(getattr(ds, "arrays", None), dict):
            labels = ds.arrays.get("y")
        if labels is None:
            raise UserError(f"dataset.train_plan needs class labels; the {split} split of {type(self).__name__} has "
                            "none")
        return np.asarray(labels)

    def collate(self, samples: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
        if isinstance(samples, dict):  # already a batch (a dataset with __getitems__)
            return samples
        return default_collate(samples)

    # --- prediction on new inputs (mode=predict) ---------------------------------------------------------------
    reads_stdin = False  # whether predict_dataset takes "-" as standard input (text); files and folders otherwise

    def predict_dataset(self, source: str) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__} does not read new inputs for mode=predict")

    def write_predictions(self, dataset: Dataset, predictions: list[Any], out) -> None:
        """Write decoded predictions, one line per input, to the open text stream `out`."""
        for p in predictions:
            out.write(f"{p}\n")

    # --- what the loop calls -----------------------------------------------------------------------------------
    def has_split(self, split: str) -> bool:
        return split in self.splits

    def loader(
        self,
        split: str,
        *,
        train: bool = False,
        rank: int = 0,
        world_size: int = 1,
        limit: float | None = None,
        dataset: Dataset | None = None,
    ) -> DataLoader:
        given = dataset
        dataset = dataset if dataset is not None else self.splits[split]
        # a dataset passed in (new inputs for mode=predict) is read in order, whatever the split's own plan
        plan = self.plan(split, train) if given is None else SequentialBatches(len(dataset), self.eval_batch_size)
        sampler = EpochBatchSampler(plan, rank=rank, world_size=world_size, min_size=world_size if train else 1)
        sampler.limit = resolve_limit(limit, len(sampler))
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Workers are rebuilt each epoch so that a dataset's set_epoch() reaches them.
            persistent_workers=False,
            # A private generator: starting an epoch's iterator must not consume the global torch RNG (resume).
            generator=torch.Generator().manual_seed(self.seed),
        )


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def images_in(folder: Path) -> list[Path]:
    """The image files under `folder`, recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_inputs(path: Path, missing: str) -> list[Path]:
    """A file as given, or the images under a folder; a one-line error (`missing`) when the path does not exist,
    or when the folder holds no image."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(missing)
    files = images_in(path)
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
    return files


class LazyDataModule(DataModule):
    """A DataModule whose splits are built by `_build_splits` when first read after a `setup` that left them at None
    (before any setup they are {}). Such a setup reads no files: with a checkpoint's state loaded (a vocabulary),
    mode=predict needs nothing but the checkpoint."""

    def _build_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError

    @property
    def splits(self) -> dict[str, Dataset]:
        if self._splits is None:
            self._splits = self._build_splits()
        return self._splits

    @splits.setter
    def splits(self, value: dict[str, Dataset] | None) -> None:
        self._splits = value


class BatchedRows(Dataset):
    """A training split fetched a batch at a time: `fetch(indices)` builds the whole batch dict in one vectorised
    gather (no per-item collate); `lengths` (one per item) feed length-bucketed batch plans; `source` is what the
    rows come from (an encoded table), kept for inspection."""

    def __init__(self, fetch: Callable[[np.ndarray], dict[str, Any]], lengths: np.ndarray, source: Any = None):
        self.fetch, self._lengths, self.source = fetch, lengths, source

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        return self.fetch(np.asarray(indices, dtype=np.int64))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])

    def lengths(self) -> np.ndarray:
        return self._lengths


class ClassifiedData(DataModule):
    """A DataModule of single-label samples with named classes; the names travel with checkpoints, so that
    `mode=predict` can name its predictions without reading the training data."""

    class_names: list[str] = []

    def state_dict(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("class_names"):
            self.class_names = list(state["class_names"])


def per_sample_uniform(seed: int, epoch: int, indices: np.ndarray, draws: int) -> np.ndarray:
    """Uniform [0, 1) numbers, `draws` per sample, from a hash of (seed, epoch, index): vectorised augmentation
    decisions that do not depend on batch composition, rank or worker (splitmix64 finaliser)."""
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        base = (np.asarray(indices, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                + np.uint64((seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFF) * np.uint64(0xBF58476D1CE4E5B9)) & mask
        z = base[:, None] + np.arange(1, draws + 1, dtype=np.uint64)[None, :] * np.uint64(0x94D049BB133111EB)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class ArrayDataset(Dataset):
    """Samples held as equal-length arrays in memory (or memory-mapped); fetched a whole batch at a time.

    DataLoader calls `__getitems__` with a batch's indices, so a batch is one fancy-indexing operation per array
    rather than a Python loop over samples.
    """

    def __init__(self, arrays: dict[str, np.ndarray], transform=None):
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays differ in length: { {k: len(a) for k, a in arrays.items()} }")
        self.arrays = arrays
        self.transform = transform  # batch dict, indices, epoch -> batch dict
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # sorted reads are much faster on a memory map
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        batch = {k: torch.from_numpy(np.asarray(a[idx[order]])[inverse]) for k, a in self.arrays.items()}
        if self.transform is not None:
            batch = self.transform(batch, idx, self.epoch)
        return batch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}
