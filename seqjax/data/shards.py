"""ArrayRecord shards of `SequenceRecord`s, one folder per split: DATA_DIR/<split>/part-XXXXX.array_record."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter

from seqjax.data.schema import SequenceRecord, encode_record

RECORDS_PER_SHARD = 50_000


def write_split(data_dir: str | os.PathLike, split: str, records: Iterable[SequenceRecord],
                records_per_shard: int = RECORDS_PER_SHARD) -> int:
    """Writes `records` in order into shards of `split`; returns how many were written."""
    out = Path(data_dir) / split
    out.mkdir(parents=True, exist_ok=True)
    count, shard, writer = 0, 0, None
    for rec in records:
        if writer is None:
            # group_size:1 keeps random access cheap: Grain reads single records by index.
            writer = ArrayRecordWriter(str(out / f"part-{shard:05d}.array_record"), "group_size:1")
        writer.write(encode_record(rec))
        count += 1
        if count % records_per_shard == 0:
            writer.close()
            writer, shard = None, shard + 1
    if writer is not None:
        writer.close()
    return count


def split_paths(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Shard paths of `split` in write order; an empty list when the split has none."""
    folder = Path(data_dir) / split
    return sorted(str(p) for p in folder.glob("part-*.array_record")) if folder.is_dir() else []
