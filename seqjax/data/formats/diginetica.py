"""Diginetica (CIKM Cup 2016 track 2) `train-item-views.csv`: `;`-separated with a header naming
session_id, user_id, item_id, timeframe, eventdate (the camelCase spelling `sessionId` ... is read too).

The sequence key is the session (`user_id` is mostly `NA` and not used); every row is a view.
Timestamp rule: eventdate (`YYYY-MM-DD`, taken as midnight UTC) plus timeframe (milliseconds, the
dataset's offset within the session), given to timestamps.py as an int64 column of unix milliseconds.
A row whose date is not a real `YYYY-MM-DD` date or whose timeframe is not a whole number gets a null
time and is later dropped as `bad_timestamp`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqjax.data.formats.base import (
    RawTable,
    check_readable,
    column_positions,
    constant,
    first_nonblank_line,
    make_table,
    read_delimited,
)

COLUMNS = {"user": "sessionid", "item": "itemid", "timeframe": "timeframe", "eventdate": "eventdate"}


def read_diginetica(path: str | Path) -> RawTable:
    """Reads train-item-views.csv; rows whose field count differs from the header's are bad rows."""
    path = check_readable(path)
    header = [name.strip().lower().replace("_", "") for name in first_nonblank_line(path).split(";")]
    index = column_positions(path, header, COLUMNS)
    fields = read_delimited(path, ";", index, expected_fields=len(header), skip_lines=1)
    fields["timestamp"] = date_plus_offset_ms(fields.pop("eventdate"), fields.pop("timeframe"))
    fields["event"] = constant("view", len(fields["line"]))
    return make_table(path, fields)


def date_plus_offset_ms(dates: pa.Array, offsets: pa.Array) -> pa.Array:
    """int64 [R] unix ms: date at 00:00 UTC + offset ms; null where either part is malformed."""
    day = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime rolls 2016-02-30 over to 03-01 and accepts 2016-5-9: a real date prints back as written.
    real = pc.fill_null(pc.equal(pc.strftime(day, format="%Y-%m-%d"), dates), False)
    whole = pc.match_substring_regex(offsets, r"^\d{1,12}$")  # 12 digits: 31 years of ms, no int64 overflow
    ok = pc.and_(real, whole).to_numpy(zero_copy_only=False)
    seconds = pc.fill_null(day.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    offset_ms = np.zeros(len(offsets), np.int64)
    if ok.any():
        offset_ms[ok] = offsets.filter(pa.array(ok)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return pa.array(seconds * 1000 + offset_ms, pa.int64(), mask=~ok)
