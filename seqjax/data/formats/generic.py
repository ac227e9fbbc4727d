"""Generic event logs: CSV (any one-character or longer delimiter) or Parquet, with named columns.

CSV without quote characters takes the vectorised splitter; a file that contains `"` is read with
Python's `csv` module instead (quoted fields may hold delimiters or newlines), which is slower but
keeps the same line numbering: a row's line is the physical line where it starts.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqjax.data.formats.base import (
    BLOCK_BYTES,
    PrepareError,
    RawTable,
    check_readable,
    first_nonblank_line,
    read_delimited,
)

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclasses.dataclass(frozen=True)
class Columns:
    """Column names in the input; an empty `timestamp` means the data has no times (file order is time order)."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    event: str = "event_type"  # optional: absent -> no event types
    category: str = "category_id"  # optional: absent -> no categories

    def required(self) -> dict[str, str]:
        req = {"user": self.user, "item": self.item}
        if self.timestamp:
            req["timestamp"] = self.timestamp
        return req

    def optional(self) -> dict[str, str]:
        return {k: v for k, v in (("event", self.event), ("category", self.category)) if v}


def read_generic(path: str | Path, columns: Columns, delimiter: str = ",",
                 column_names: tuple[str, ...] = ()) -> RawTable:
    """Reads a CSV or Parquet event log. `column_names` names the fields of a CSV without a header row."""
    path = check_readable(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path, columns)
    if column_names:
        names, skip = list(column_names), 0
    else:
        header = first_nonblank_line(path)
        names = [n.strip().strip('"').strip() for n in header.split(delimiter)]
        skip = 1
    index = _column_index(path, names, columns)
    if _contains_quote(path):
        return _read_quoted_csv(path, delimiter, index, len(names), skip)
    fields = read_delimited(path, delimiter, index, len(names), skip_lines=skip)
    return _table(path, fields)


def _column_index(path: Path, names: list[str], columns: Columns) -> dict[str, int]:
    position = {name: i for i, name in enumerate(names)}
    index = {}
    for role, name in columns.required().items():
        if name not in position:
            raise PrepareError(f"{path}: missing column '{name}' (has: {', '.join(names)})")
        index[role] = position[name]
    for role, name in columns.optional().items():
        if name in position:
            index[role] = position[name]
    return index


def _table(path: Path, fields: dict) -> RawTable:
    return RawTable(path=str(path), user=fields.pop("user"), item=fields.pop("item"),
                    timestamp=fields.pop("timestamp", None), event=fields.pop("event", None),
                    category=fields.pop("category", None), **fields)


def _contains_quote(path: Path) -> bool:
    with path.open("rb") as f:
        while block := f.read(BLOCK_BYTES):
            if b'"' in block:
                return True
    return False


def _read_quoted_csv(path: Path, delimiter: str, index: dict[str, int], expected: int, skip: int) -> RawTable:
    """The slow, quote-aware reader; one Python list per column (used only when the file has quotes)."""
    if len(delimiter) != 1:
        raise PrepareError(f"{path}: quoted CSV needs a one-character delimiter, got {delimiter!r}")
    values: dict[str, list[str]] = {role: [] for role in index}
    lines, bad_lines, bad_fields, blank = [], [], [], 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            end = 0
            for row in reader:
                start, end = end + 1, reader.line_num
                if len(row) <= 1 and not "".join(row).strip():
                    blank += end - start + 1
                    continue
                if skip:
                    skip -= 1
                    continue
                if len(row) != expected:
                    bad_lines.append(start)
                    bad_fields.append(len(row))
                    continue
                lines.append(start)
                for role, i in index.items():
                    values[role].append(row[i].strip())
    except UnicodeDecodeError:
        raise PrepareError(f"{path}: not valid UTF-8 text") from None
    except csv.Error as e:
        raise PrepareError(f"{path}, line {reader.line_num}: {e}") from None
    fields = {role: pa.array(v, pa.large_string()) for role, v in values.items()}
    fields.update(line=np.asarray(lines, np.int64), bad_lines=np.asarray(bad_lines, np.int64),
                  bad_fields=np.asarray(bad_fields, np.int64), expected_fields=expected, blank_lines=blank)
    return _table(path, fields)


def _read_parquet(path: Path, columns: Columns) -> RawTable:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as e:
        raise PrepareError(f"{path}: cannot read Parquet: {e}") from None
    index = _column_index(path, names, columns)
    wanted = {role: names[i] for role, i in index.items()}
    try:
        table = pq.read_table(path, columns=list(dict.fromkeys(wanted.values())))
    except (pa.ArrowInvalid, OSError) as e:
        raise PrepareError(f"{path}: cannot read Parquet: {e}") from None
    fields = {}
    for role, name in wanted.items():
        col = table.column(name).combine_chunks()
        if role == "timestamp" and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                                    or pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)):
            fields[role] = col  # typed times stay typed; nulls become bad_timestamp later
        else:
            fields[role] = pc.utf8_trim_whitespace(pc.fill_null(col.cast(pa.large_string()), ""))
    n = table.num_rows
    fields.update(line=np.arange(1, n + 1, dtype=np.int64), bad_lines=np.zeros(0, np.int64),
                  bad_fields=np.zeros(0, np.int64), expected_fields=len(names))
    return _table(path, fields)
