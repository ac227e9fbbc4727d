"""Taobao UserBehavior (Tianchi dataset 649): `user_id,item_id,category_id,behavior_type,timestamp`.

The official file has no header; copies that add one are read too (a first line without any digit is
a header). Times are unix seconds; behaviour is pv / cart / fav / buy, which schema.EVENT_ALIASES maps
to view / cart / favourite / purchase.
"""

from __future__ import annotations

from pathlib import Path

from seqjax.data.formats.base import (
    RawTable,
    check_readable,
    first_nonblank_line,
    looks_like_header,
    make_table,
    read_delimited,
)

FIELDS = {"user": 0, "item": 1, "category": 2, "event": 3, "timestamp": 4}


def read_taobao(path: str | Path) -> RawTable:
    """Reads UserBehavior.csv; rows without exactly 5 fields (such as a cut-off last line) are bad rows."""
    path = check_readable(path)
    header = looks_like_header(first_nonblank_line(path))
    return make_table(path, read_delimited(path, ",", FIELDS, expected_fields=5, skip_lines=int(header)))
