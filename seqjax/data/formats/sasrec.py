"""The SASRec/BERT4Rec text format: `user item` per line, each user's lines in time order, no times.

File order is the only clock: rows keep their line order, and no timestamps are invented.
"""

from __future__ import annotations

from pathlib import Path

from seqjax.data.formats.base import RawTable, check_readable, read_delimited


def read_sasrec(path: str | Path) -> RawTable:
    """Reads whitespace-separated `user item` lines; any other field count is a bad row."""
    path = check_readable(path)
    fields = read_delimited(path, None, {"user": 0, "item": 1}, expected_fields=2)
    return RawTable(path=str(path), user=fields.pop("user"), item=fields.pop("item"), timestamp=None,
                    event=None, category=None, **fields)
