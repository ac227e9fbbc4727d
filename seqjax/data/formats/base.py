"""What every format reader returns, and the fast line/field splitter they share.

The fast paths never build a Python object per row: a file is read in large blocks, decoded once, and
split into lines and fields by Arrow compute kernels (the quote-aware CSV reader and OTTO's fallback parser,
for input the fast paths cannot take, do go row by row). Each row keeps its 1-based physical line number
(header and blank lines counted) so that errors can point into the file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BLOCK_BYTES = 64 << 20  # one read; large enough to amortise the kernels, small enough for memory
PROGRESS_AFTER_S = 3.0  # print a progress line only for reads slower than this


class PrepareError(ValueError):
    """Input that cannot be prepared (missing file, missing column, bad row under --strict, ...).

    The message is one line and names the file (and line) at fault.
    """


@dataclasses.dataclass
class RawTable:
    """One input file's data rows, column-wise, as read: trimmed strings, nothing validated yet.

    R rows parsed into the expected number of fields; rows with the wrong field count are only
    listed in `bad_lines`. `timestamp` may also be a numeric or timestamp Arrow array (Parquet, or
    diginetica's computed int64 milliseconds).
    """

    path: str
    user: pa.Array  # string [R]
    item: pa.Array  # string [R]
    timestamp: pa.Array | None  # [R]; None when the file has no times
    event: pa.Array | None  # string [R]; None when the file has no event types
    category: pa.Array | None  # string [R]; None when the file has no categories
    line: np.ndarray  # int64 [R], 1-based physical line (Parquet: 1-based row number)
    bad_lines: np.ndarray  # int64 [B], lines with the wrong number of fields
    bad_fields: np.ndarray  # int64 [B], how many fields each of those lines had
    expected_fields: int
    blank_lines: int = 0  # empty lines: no data, neither read nor dropped
    # Money and units, for formats that record them (YooChoose buys, CDNOW); prepare turns them into the
    # task histories' price_bucket (clean.py, task_prepare.py).
    price: pa.Array | None = None  # string [R] as written; the reader's docstring says unit price or row total
    quantity: pa.Array | None = None  # string [R] as written: units in the row

    @property
    def rows_read(self) -> int:
        return len(self.line) + len(self.bad_lines)


def check_readable(path: str | os.PathLike) -> Path:
    """The path, if it is a non-empty regular file; otherwise a one-line PrepareError."""
    p = Path(path)
    if not p.exists():
        raise PrepareError(f"input file not found: {p}")
    if not p.is_file():
        raise PrepareError(f"input is not a regular file: {p}")
    if p.stat().st_size == 0:
        raise PrepareError(f"input file is empty: {p}")
    return p


def iter_lines(path: Path) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """Yields (lines, line_numbers) blocks: large_string [L] without line endings, int64 [L].

    Blank lines are included (callers decide); the phantom line after a final newline is not.
    """
    total = path.stat().st_size
    start, last_print = time.monotonic(), 0.0
    next_line, done, carry = 1, 0, b""
    with path.open("rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            done += len(block)
            at_end = not block
            data = carry + block
            if not at_end:
                cut = data.rfind(b"\n") + 1  # keep a partial last line for the next block
                data, carry = data[:cut], data[cut:]
                if not data:
                    continue
            elif not data:
                return
            if next_line == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a UTF-8 byte-order mark is not part of the first field
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                line = next_line + data.count(b"\n", 0, e.start)
                raise PrepareError(f"{path}, line {line}: not valid UTF-8 text") from None
            lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten()
            if text.endswith("\n"):
                lines = lines.slice(0, len(lines) - 1)
            lines = pc.utf8_rtrim(lines, "\r")
            numbers = np.arange(next_line, next_line + len(lines), dtype=np.int64)
            next_line += len(lines)
            yield lines, numbers
            now = time.monotonic() - start
            if now > PROGRESS_AFTER_S and now - last_print > PROGRESS_AFTER_S:
                last_print = now
                print(f"  reading {path.name}: {done / 2**20:,.0f}/{total / 2**20:,.0f} MiB, "
                      f"{next_line - 1:,} lines", file=sys.stderr, flush=True)
            if at_end:
                return


def split_fields(lines: pa.Array, sep: str | None) -> pa.Array:
    """list<string> [L]: each line's fields; `sep=None` splits on runs of whitespace."""
    if sep is None:
        return pc.ascii_split_whitespace(pc.utf8_trim_whitespace(lines))
    return pc.split_pattern(lines, sep)


def read_delimited(path: Path, sep: str | None, columns: dict[str, int], expected_fields: int,
                   skip_lines: int = 0) -> dict:
    """Splits a delimited text file (no quoting) into the fields named by `columns` (name -> index).

    Returns RawTable keyword arguments: one trimmed string array per column name, plus line numbers,
    bad lines and blank-line count. The first `skip_lines` non-blank lines (a header) are skipped.
    """
    parts: dict[str, list[pa.Array]] = {name: [] for name in columns}
    line_parts, bad_parts, bad_field_parts, blank = [], [], [], 0
    for lines, numbers in iter_lines(path):
        nonblank = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(lines)), 0).to_numpy(zero_copy_only=False)
        blank += int(len(nonblank) - nonblank.sum())
        if skip_lines:
            first = np.flatnonzero(nonblank)[:skip_lines]
            nonblank[first] = False
            skip_lines -= len(first)
        lines, numbers = lines.filter(pa.array(nonblank)), numbers[nonblank]
        fields = split_fields(lines, sep)
        counts = pc.list_value_length(fields).to_numpy(zero_copy_only=False).astype(np.int64)
        good = counts == expected_fields
        bad_parts.append(numbers[~good])
        bad_field_parts.append(counts[~good])
        fields = fields.filter(pa.array(good))
        line_parts.append(numbers[good])
        for name, index in columns.items():
            parts[name].append(pc.utf8_trim_whitespace(pc.list_element(fields, index)))
    out = {name: _concat(chunks) for name, chunks in parts.items()}
    out.update(line=_cat_int(line_parts), bad_lines=_cat_int(bad_parts), bad_fields=_cat_int(bad_field_parts),
               expected_fields=expected_fields, blank_lines=blank)
    return out


def make_table(path: Path, fields: dict) -> RawTable:
    """A RawTable from `read_delimited` output keyed by RawTable field names; absent columns are None."""
    columns = {name: fields.pop(name, None) for name in ("timestamp", "event", "category", "price", "quantity")}
    return RawTable(path=str(path), user=fields.pop("user"), item=fields.pop("item"), **columns, **fields)


def column_positions(path: Path, header: list[str], wanted: dict[str, str]) -> dict[str, int]:
    """role -> index in `header` of the column named `wanted[role]`; a missing one is a PrepareError."""
    position = {name: i for i, name in enumerate(header)}
    for name in wanted.values():
        if name not in position:
            raise PrepareError(f"{path}: missing column '{name}' (has: {', '.join(header)})")
    return {role: position[name] for role, name in wanted.items()}


def looks_like_header(first_line: str) -> bool:
    """For formats whose header is optional: data rows always hold digits (ids, times), column names none."""
    return not any(c.isdigit() for c in first_line)


def constant(text: str, n: int) -> pa.Array:
    """large_string [n], every value `text` (a column the format implies, such as CDNOW's event type)."""
    return pa.repeat(pa.scalar(text, pa.large_string()), n)


def first_nonblank_line(path: Path) -> str:
    """The first non-blank line of a text file, without its line ending (headers, format detection)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for line in f:
                if line.strip():
                    return line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise PrepareError(f"{path}: not valid UTF-8 text") from None
    raise PrepareError(f"input file has no data lines: {path}")


def _concat(chunks: list[pa.Array]) -> pa.Array:
    chunks = [c.cast(pa.large_string()) for c in chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.large_string())


def _cat_int(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
