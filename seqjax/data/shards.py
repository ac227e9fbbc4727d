"""ArrayRecord shards, one folder per split: `SequenceRecord`s in DATA_DIR/<split>/part-XXXXX.array_record,
and the `ExampleRecord`s of a purchase/churn task in DATA_DIR/task/<split>/part-XXXXX.array_record."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter

from seqjax.data.schema import TASK_DIR, SequenceRecord, encode_record

RECORDS_PER_SHARD = 50_000


def write_split(data_dir: str | os.PathLike, split: str, records: Iterable[SequenceRecord],
                records_per_shard: int = RECORDS_PER_SHARD) -> int:
    """Writes `records` in order into shards of `split`; returns how many were written."""
    return write_shards(Path(data_dir) / split, (encode_record(r) for r in records), records_per_shard)


def write_shards(folder: str | os.PathLike, payloads: Iterable[bytes],
                 records_per_shard: int = RECORDS_PER_SHARD) -> int:
    """Writes encoded records in order into folder/part-XXXXX.array_record; returns how many were written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    count, shard, writer = 0, 0, None
    for payload in payloads:
        if writer is None:
            # group_size:1 keeps random access cheap: Grain reads single records by index.
            writer = ArrayRecordWriter(str(out / f"part-{shard:05d}.array_record"), "group_size:1")
        writer.write(payload)
        count += 1
        if count % records_per_shard == 0:
            writer.close()
            writer, shard = None, shard + 1
    if writer is not None:
        writer.close()
    return count


def split_paths(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Shard paths of `split` in write order; an empty list when the split has none."""
    return shard_paths(Path(data_dir) / split)


def shard_paths(folder: str | os.PathLike) -> list[str]:
    """The part-*.array_record files of a folder in write order; an empty list when there are none."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.glob("part-*.array_record")) if folder.is_dir() else []


def example_paths(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Task example shard paths of `split` in write order; an empty list when there are none."""
    return shard_paths(Path(data_dir) / TASK_DIR / split)
