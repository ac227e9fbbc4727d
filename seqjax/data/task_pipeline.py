"""Grain loaders over the purchase/churn example shards (DATA_DIR/task/<split>/, see task_prepare).

Training batches are a pure function of (seed, epoch, batch index): an epoch's order is the permutation
drawn from `np.random.default_rng((seed, epoch))`, cut into batches of `batch_size`, so the data
position a checkpoint needs is (epoch, batch index) and `epoch(e, start_batch=k)` replays exactly the
batches an uninterrupted run would see from batch k on. Evaluation batches keep file order (the order
of the split's Parquet rows).

Every batch is a dict of numpy arrays, B rows (a last partial batch is filled with weight-0 rows):

    items, events, categories, hour, weekday, session_position, gap_bucket, price_bucket
                int32 [B, T], right-padded with 0
    lengths     int32 [B]    real events per row (0 on padding rows)
    candidate   int32 [B]    user_item level: the item the label is about; 0 at user level
    label       int32 [B]    0/1
    weight      float32 [B]  1, or 0 on padding rows
    example     int64 [B]    row index in the split (Parquet row / record number); -1 on padding rows

Histories are the most recent T events before the cutoff; T is the smallest length bucket that fits the
batch's longest history (buckets default to (max_len,): one shape). hour, weekday, session_position and
gap_bucket use 0 as a real value, so a model masks padding with lengths (seqjax.models.event_encoder).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import grain
import numpy as np

from seqjax.data.schema import ExampleRecord, decode_example
from seqjax.data.shards import example_paths

SEQUENCE_FIELDS = ("items", "events", "categories", "hour", "weekday", "session_position", "gap_bucket",
                   "price_bucket")


def examples(data_dir: str | os.PathLike, split: str) -> grain.MapDataset:
    """Random-access dataset of decoded `ExampleRecord`s of one split, in file order."""
    paths = example_paths(data_dir, split)
    if not paths:
        raise FileNotFoundError(f"no task {split} shards under {data_dir}/task/{split}: "
                                "run `seqjax prepare --task purchase|churn` first")
    return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths)).map(decode_example)


@dataclasses.dataclass(frozen=True)
class TaskBatchSpec:
    batch_size: int
    max_len: int  # T at most: each row keeps its most recent max_len history events
    seed: int = 0
    buckets: tuple[int, ...] = ()  # padded lengths to choose from; () = (max_len,), one shape

    def padded_length(self, n: int) -> int:
        buckets = sorted(self.buckets or (self.max_len,))
        if buckets[-1] != self.max_len:
            raise ValueError(f"the largest length bucket {buckets[-1]} must equal max_len {self.max_len}")
        return next(b for b in buckets if b >= n)


def collate(recs: list[ExampleRecord], indices: list[int], spec: TaskBatchSpec) -> dict[str, np.ndarray]:
    """Right-padded arrays of `recs` (at most batch_size), filled to batch_size with weight-0 rows."""
    b = spec.batch_size
    seqs = [{k: getattr(r, k)[-spec.max_len:] for k in SEQUENCE_FIELDS} for r in recs]
    lengths = np.zeros(b, np.int32)
    lengths[:len(recs)] = [len(s["items"]) for s in seqs]
    t = spec.padded_length(int(lengths.max(initial=0)))
    out = {k: np.zeros((b, t), np.int32) for k in SEQUENCE_FIELDS}
    for row, s in enumerate(seqs):
        for k, v in s.items():
            out[k][row, :len(v)] = v
    n = len(recs)
    out.update(
        lengths=lengths,
        candidate=np.array([r.candidate for r in recs] + [0] * (b - n), np.int32),
        label=np.array([r.label for r in recs] + [0] * (b - n), np.int32),
        weight=(np.arange(b) < n).astype(np.float32),
        example=np.array(list(indices) + [-1] * (b - n), np.int64),
    )
    return out


class TaskTrainBatches:
    """Shuffled training batches of a task split; `batches_per_epoch` = ceil(examples / batch_size)."""

    def __init__(self, data_dir: str | os.PathLike, spec: TaskBatchSpec, split: str = "train"):
        if spec.batch_size < 1 or spec.max_len < 1:
            raise ValueError(f"batch_size and max_len must be >= 1, got {spec.batch_size}, {spec.max_len}")
        spec.padded_length(0)  # checks the buckets
        self.spec = spec
        self.records = examples(data_dir, split)
        self.num_examples = len(self.records)
        self.batches_per_epoch = -(-self.num_examples // spec.batch_size)

    def plan(self, epoch: int) -> list[np.ndarray]:
        """Example indices of every batch of `epoch`, in training order."""
        order = np.random.default_rng((self.spec.seed, epoch)).permutation(self.num_examples)
        return [order[i:i + self.spec.batch_size] for i in range(0, self.num_examples, self.spec.batch_size)]

    def make_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        ids = [int(i) for i in indices]
        return collate([self.records[i] for i in ids], ids, self.spec)

    def epoch(self, epoch: int, start_batch: int = 0, num_threads: int = 2) -> Iterator[dict[str, np.ndarray]]:
        """Batches of `epoch` from `start_batch` on, prefetched by Grain reader threads, in plan order."""
        plan = self.plan(epoch)[start_batch:]
        ds = grain.MapDataset.source(plan).map(self.make_batch)
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=8)))


def task_eval_batches(data_dir: str | os.PathLike, split: str, spec: TaskBatchSpec,
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `split` in file order (the seed is unused); the last one is filled with weight-0 rows."""
    ds = examples(data_dir, split)
    for start in range(0, len(ds), spec.batch_size):
        ids = list(range(start, min(start + spec.batch_size, len(ds))))
        yield collate([ds[i] for i in ids], ids, spec)
