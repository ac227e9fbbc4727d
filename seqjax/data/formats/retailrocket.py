"""RetailRocket `events.csv` (Kaggle retailrocket/ecommerce-dataset): header
`timestamp,visitorid,event,itemid,transactionid`, times in unix milliseconds, events view / addtocart /
transaction (mapped by schema.EVENT_ALIASES to view / cart / purchase).

Columns are found by name in the header, so their order does not matter; `transactionid` (empty except
on transactions) is not used.
"""

from __future__ import annotations

from pathlib import Path

from seqjax.data.formats.base import (
    RawTable,
    check_readable,
    column_positions,
    first_nonblank_line,
    make_table,
    read_delimited,
)

COLUMNS = {"timestamp": "timestamp", "user": "visitorid", "event": "event", "item": "itemid"}


def read_retailrocket(path: str | Path) -> RawTable:
    """Reads events.csv; rows whose field count differs from the header's are bad rows."""
    path = check_readable(path)
    header = [name.strip().lower() for name in first_nonblank_line(path).split(",")]
    index = column_positions(path, header, COLUMNS)
    return make_table(path, read_delimited(path, ",", index, expected_fields=len(header), skip_lines=1))
