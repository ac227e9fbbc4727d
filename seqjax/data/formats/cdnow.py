"""CDNOW master (Fader & Hardie): `customer_id date number_of_cds dollar_value`, whitespace-separated,
with or without a header line (a first line without any digit is a header), dates as YYYYMMDD.

CDNOW records purchases, not items: every row gets the one placeholder item id `cd` (ITEM) and the event
`purchase`. Dates become ISO `YYYY-MM-DD` (midnight UTC) for timestamps.py; a date not made of 8 digits is
kept as written, and fails there as a bad timestamp. `quantity` is number_of_cds and `price` is
dollar_value, the row's total (CDNOW gives no unit price).

With one item and day-resolution times, two purchases by a customer on one day are identical rows, which
prepare's `drop_duplicates` would drop. It is off by default for cdnow with a task; without `--task`, set
`drop_duplicates: false` to count every purchase.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from seqjax.data.formats.base import (
    RawTable,
    check_readable,
    constant,
    first_nonblank_line,
    looks_like_header,
    make_table,
    read_delimited,
)

ITEM = "cd"  # the placeholder item id of every row
FIELDS = {"user": 0, "timestamp": 1, "quantity": 2, "price": 3}


def yyyymmdd_to_iso(dates: pa.Array) -> pa.Array:
    """'19970101' -> '1997-01-01'; any other text is returned as written."""
    parts = (pc.utf8_slice_codeunits(dates, a, b) for a, b in ((0, 4), (4, 6), (6, 8)))
    iso = pc.binary_join_element_wise(*parts, pa.scalar("-", dates.type))
    return pc.if_else(pc.match_substring_regex(dates, r"^\d{8}$"), iso, dates)


def read_cdnow(path: str | Path) -> RawTable:
    """Reads CDNOW_master.txt; rows without exactly 4 fields are bad rows."""
    path = check_readable(path)
    header = looks_like_header(first_nonblank_line(path))
    fields = read_delimited(path, None, FIELDS, expected_fields=4, skip_lines=int(header))
    n = len(fields["line"])
    fields.update(item=constant(ITEM, n), event=constant("purchase", n),
                  timestamp=yyyymmdd_to_iso(fields["timestamp"]))
    return make_table(path, fields)
