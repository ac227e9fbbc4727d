"""MovieLens ratings: ML-1M/10M `ratings.dat` (`user::item::rating::ts`), ML-100K `u.data`
(tab-separated `user item rating ts`) and ML-20M/25M `ratings.csv` (`userId,movieId,rating,timestamp`
with a header). The variant is detected from the first line.

Every rating is kept as one implicit interaction at its time; the rating value is not used.
"""

from __future__ import annotations

from pathlib import Path

from seqjax.data.formats.base import RawTable, check_readable, first_nonblank_line, read_delimited

FIELDS = {"user": 0, "item": 1, "timestamp": 3}


def detect_variant(first_line: str) -> tuple[str | None, int]:
    """(separator, header lines) for a ratings file whose first non-blank line is `first_line`."""
    if "::" in first_line:
        return "::", 0
    if first_line.lower().startswith("userid,"):
        return ",", 1
    return None, 0  # u.data: tabs, but any whitespace run is accepted


def read_movielens(path: str | Path) -> RawTable:
    """Reads a MovieLens ratings file; rows without exactly 4 fields are bad rows."""
    path = check_readable(path)
    sep, header = detect_variant(first_nonblank_line(path))
    fields = read_delimited(path, sep, FIELDS, expected_fields=4, skip_lines=header)
    return RawTable(path=str(path), user=fields.pop("user"), item=fields.pop("item"),
                    timestamp=fields.pop("timestamp"), event=None, category=None, **fields)
