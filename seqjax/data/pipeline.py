"""Grain pipelines over the prepared shards: length-bucketed training batches and evaluation batches.

Training data is a pure function of (seed, epoch, batch index): the batch plan of an epoch is drawn
from `np.random.default_rng((seed, epoch))`, so the data position saved in a checkpoint is just
(epoch, batch index) and a resumed run replays exactly the batches an uninterrupted run would see.

Padding is the largest cost of a padded epoch (on ML-1M only ~54% of 6,040 x 200 positions are real),
so each epoch shuffles users, sorts them by length inside windows of `sort_window` batches, cuts
batches, shuffles the batch order, and pads each batch only to the smallest length bucket it fits.
A handful of buckets bounds the number of compiled shapes. With `pack`, a batch's users are packed
into full-width rows instead (seqjax/data/packing.py): almost no padding even for fully random batches.

An example is a user's most recent window of events (`history="recent"`, one per user), or with
`history="all"` each of the consecutive windows that cut a long history from its end (the targets of the
windows are disjoint and together every training event), so the ~1/3 of ML-1M's training targets that lie
before a long user's last 200 events are trained on too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from seqjax.data.masking import MaskSpec, cloze_rows, mask_batch, mask_rng
from seqjax.data.packing import packed_rows
from seqjax.data.schema import PAD_ID, SequenceRecord, decode_record
from seqjax.data.shards import split_paths


def records(data_dir: str | os.PathLike, split: str) -> grain.MapDataset:
    """Random-access dataset of decoded `SequenceRecord`s of one split."""
    paths = split_paths(data_dir, split)
    if not paths:
        raise FileNotFoundError(f"no {split} shards under {data_dir}/{split}: run `seqjax prepare` first")
    return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths)).map(decode_record)


def default_buckets(max_len: int) -> tuple[int, ...]:
    """16, 32, 64, then every 32 below max_len, and max_len itself: few compiled shapes, and on
    ML-1M (batch 128, sort_window 32) 85% of padded positions real (81% with powers of two, 53% unbucketed)."""
    sizes = [b for b in (16, 32) if b < max_len]
    b = 64
    while b < max_len - 16:  # a bucket just below max_len saves little
        sizes.append(b)
        b += 32
    return (*sizes, max_len)


@dataclasses.dataclass(frozen=True)
class TrainBatchSpec:
    batch_size: int
    max_len: int  # model input length T: each user's most recent max_len + 1 events make T targets
    seed: int
    buckets: tuple[int, ...] = ()  # padded lengths; () means default_buckets(max_len)
    sort_window: int = 32  # batches per length-sorting window (more: less padding, less randomness)
    mask: MaskSpec | None = None  # cloze (BERT4Rec) batches: each row's last max_len items, some masked
    pack: bool = False  # pack each batch's users into rows of max_len positions (next item only)
    row_multiple: int = 8  # packed batches have a multiple of this many rows
    history: str = "recent"  # "recent": each user's last window only; "all": every window (see module doc)


class TrainBatches:
    """Next-item training batches: items [B, T], targets [B, T] (inputs shifted by one), weights, lengths;
    or, with `spec.mask`, cloze batches: masked items, the original items as targets where masked."""

    def __init__(self, data_dir: str | os.PathLike, spec: TrainBatchSpec):
        self.spec = spec
        if spec.pack and spec.mask is not None:
            raise ValueError("packed batches are next-item batches; cloze (masked) batches cannot be packed")
        self.buckets = tuple(sorted(spec.buckets or default_buckets(spec.max_len)))
        if self.buckets[-1] != spec.max_len:
            raise ValueError(f"the largest length bucket {self.buckets[-1]} must equal max_len {spec.max_len}")
        if spec.history not in ("recent", "all"):
            raise ValueError(f"history must be 'recent' or 'all', got {spec.history!r}")
        self.records = records(data_dir, "train")
        # An example is (record, events cut from its end); its input positions are len - 1 (next item)
        # or len (cloze) of what remains, at most max_len. Windows with no position are left out.
        shift = 0 if spec.mask else 1
        lengths = np.array([len(r.items) for r in self._all_records()], np.int64)
        if spec.history == "recent":
            self.indices, self.cuts = np.arange(len(lengths)), np.zeros(len(lengths), np.int64)
        else:  # windows end at n, n - max_len, n - 2 max_len, ...: targets disjoint, none lost
            windows = -(-np.maximum(lengths - shift, 0) // spec.max_len)
            self.indices = np.repeat(np.arange(len(lengths)), windows)
            self.cuts = (np.arange(len(self.indices)) - np.repeat(np.cumsum(windows) - windows, windows)) * spec.max_len
        positions = np.minimum(lengths[self.indices] - self.cuts - shift, spec.max_len)
        keep = positions > 0
        self.indices, self.cuts, self.positions = self.indices[keep], self.cuts[keep], positions[keep]
        self.num_examples = len(self.indices)
        self.batches_per_epoch = -(-self.num_examples // spec.batch_size)
        self.positions_per_batch = float(self.positions.sum()) / self.batches_per_epoch  # the epoch's mean

    def _all_records(self) -> Iterator[SequenceRecord]:
        for i in range(len(self.records)):
            yield self.records[i]

    def plan(self, epoch: int) -> list[np.ndarray]:
        """Example indices (into `indices` and `cuts`) of every batch of `epoch`, in training order."""
        rng = np.random.default_rng((self.spec.seed, epoch))
        order = rng.permutation(self.num_examples)
        window = self.spec.batch_size * self.spec.sort_window
        batches = []
        for start in range(0, self.num_examples, window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(self.positions[chunk], kind="stable")]
            batches += [chunk[i:i + self.spec.batch_size] for i in range(0, len(chunk), self.spec.batch_size)]
        # A sorting window's tail can leave small batches; merging them keeps one batch per
        # batch_size examples so an epoch has exactly batches_per_epoch steps.
        full = [b for b in batches if len(b) == self.spec.batch_size]
        rest = np.concatenate([b for b in batches if len(b) < self.spec.batch_size] or [np.zeros(0, np.int64)])
        full += [rest[i:i + self.spec.batch_size] for i in range(0, len(rest), self.spec.batch_size)]
        return [full[i] for i in rng.permutation(len(full))]

    def example(self, e: int) -> SequenceRecord:
        """Example `e`: its record with `cuts[e]` events cut from the end."""
        rec, cut = self.records[int(self.indices[e])], int(self.cuts[e])
        if not cut:
            return rec
        n = len(rec.items) - cut
        return dataclasses.replace(rec, items=rec.items[:n], timestamps=rec.timestamps[:n], events=rec.events[:n],
                                   categories=rec.categories[:n])

    def target_counts(self, num_items: int) -> np.ndarray:
        """int64 [num_items + 1]: how often each item is a training target. A record's targets are its
        last `positions` items (next item: all but the first kept event; cloze: every kept event)."""
        kept = [self.example(e).items[-int(n):] for e, n in enumerate(self.positions)]
        return np.bincount(np.concatenate(kept), minlength=num_items + 1).astype(np.int64)

    def padded_length(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def make_batch(self, examples: np.ndarray, epoch: int = 0, batch_index: int = 0) -> dict[str, np.ndarray]:
        """Collates examples into right-padded arrays; missing rows (last batch) get weight 0.

        Cloze masks are drawn from (seed, epoch, batch_index), the batch's index in the epoch's plan.
        `timestamps` are the input events' times relative to each row's first event (int32 seconds)."""
        b, t_max = self.spec.batch_size, self.spec.max_len
        recs = [self.example(int(e)) for e in examples]
        if self.spec.mask is not None:
            rows = [cloze_rows(r.items, t_max) for r in recs]
            t = self.padded_length(max(len(r) for r in rows))
            batch = mask_batch(rows, self.spec.mask, mask_rng(self.spec.seed, epoch, batch_index), batch_size=b,
                               width=t)
            batch["timestamps"] = rebased_times([r.timestamps[-t_max:] for r in recs], b, t)
            return batch
        seqs = [r.items[-(t_max + 1):] for r in recs]
        if self.spec.pack:
            return packed_rows(seqs, t_max, self.spec.row_multiple)
        t = self.padded_length(max(len(s) - 1 for s in seqs))
        items = np.full((b, t), PAD_ID, np.int32)
        targets = np.full((b, t), PAD_ID, np.int32)
        lengths = np.zeros(b, np.int32)
        for row, s in enumerate(seqs):
            n = len(s) - 1
            items[row, :n] = s[:-1]
            targets[row, :n] = s[1:]
            lengths[row] = n
        weights = (targets != PAD_ID).astype(np.float32)
        times = rebased_times([r.timestamps[-(t_max + 1):-1] for r in recs], b, t)
        return {"items": items, "targets": targets, "weights": weights, "lengths": lengths, "timestamps": times}

    def epoch(self, epoch: int, start_batch: int = 0, num_threads: int = 2) -> Iterator[dict[str, np.ndarray]]:
        """Batches of `epoch` from `start_batch` on, prefetched by Grain reader threads, in plan order."""
        plan = self.plan(epoch)
        ds = grain.MapDataset.source(list(range(start_batch, len(plan)))).map(
            lambda i: self.make_batch(plan[i], epoch, i))
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=8)))


def rebased_times(rows: Sequence[np.ndarray], batch_size: int, width: int) -> np.ndarray:
    """int32 [batch_size, width]: each row's unix times minus its first, 0 on padding. Only differences
    matter to relative time biases, and rebasing keeps them exact in int32 (JAX's default)."""
    out = np.zeros((batch_size, width), np.int32)
    for r, ts in enumerate(rows):
        if len(ts):
            out[r, :len(ts)] = np.minimum(ts - ts[0], np.iinfo(np.int32).max)
    return out


def _pad_rows(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(rows), width), PAD_ID, np.int32)
    for r, s in enumerate(rows):
        out[r, :len(s)] = s
    return out


def _input_lengths(data_dir: str | os.PathLike, split: str, max_len: int) -> np.ndarray:
    """Each record's model-input length (read-only). Cached per shard files (path, size, mtime): every
    validation reads the same split again, and decoding it costs about as much as the batches themselves."""
    stamp = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in split_paths(data_dir, split))
    return _cached_lengths(stamp, str(data_dir), split, max_len)


@functools.lru_cache(maxsize=16)
def _cached_lengths(stamp: tuple, data_dir: str, split: str, max_len: int) -> np.ndarray:
    ds = records(data_dir, split)
    lengths = np.array([min(len(ds[i].items), max_len) for i in range(len(ds))], np.int64)
    lengths.setflags(write=False)
    return lengths


def eval_batches(data_dir: str | os.PathLike, split: str, batch_size: int, max_len: int,
                 buckets: Sequence[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches: model input (last max_len history items), the full history (for seen-item
    filtering) padded to a power of two, targets, user ids and `index`, each row's record number.

    Records go shortest input first and each batch is padded only to the smallest of `buckets` (default
    `default_buckets(max_len)`; `(max_len,)` pads every batch to max_len) that fits it: a model's output at
    a row's last position does not depend on padding, and evaluation runs on ~85% real positions instead
    of ~53% on ML-1M. The final batch is padded with empty rows marked `valid = False`.
    """
    buckets = tuple(sorted({b for b in (buckets or default_buckets(max_len)) if b < max_len} | {max_len}))
    ds = records(data_dir, split)
    lengths = _input_lengths(data_dir, split, max_len)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(ds), batch_size):
        index = order[start:start + batch_size]
        recs = [ds[int(i)] for i in index]
        n = len(recs)
        pad = batch_size - n
        width = next((b for b in buckets if b >= lengths[index].max()), max_len)
        inputs = [r.items[-max_len:] for r in recs] + [np.zeros(0, np.int32)] * pad
        hist = [r.items for r in recs] + [np.zeros(0, np.int32)] * pad
        hist_width = 1 << max(4, int(max(len(h) for h in hist) - 1).bit_length())
        yield {
            "index": np.concatenate([index, np.full(pad, -1)]).astype(np.int64),
            "items": _pad_rows(inputs, width),
            "lengths": np.array([len(s) for s in inputs], np.int32),
            "timestamps": rebased_times([r.timestamps[-max_len:] for r in recs], batch_size, width),
            "history": _pad_rows(hist, hist_width),
            "targets": np.array([r.target for r in recs] + [0] * pad, np.int32),
            "users": np.array([r.user for r in recs] + [-1] * pad, np.int64),
            "valid": np.arange(batch_size) < n,
        }
