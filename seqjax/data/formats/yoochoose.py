"""YooChoose (RecSys Challenge 2015) in its two common forms; the session id is the user id.

Official files, comma-separated, no header, ISO-8601 times (`2014-04-07T10:51:09.277Z`), given by role:
  --input clicks=yoochoose-clicks.dat   `session_id,timestamp,item_id,category`      -> event view
  --input buys=yoochoose-buys.dat       `session_id,timestamp,item_id,price,quantity` -> event purchase
A click's category is its context: `S` (special offer), 1-12 (a category) or a brand number; `0` means
missing and becomes no category. A buy's price is the unit price; 0 price or quantity means unknown there.

Preprocessed form (GRU4Rec / session-rec): tab-separated with a header naming `SessionId`, `ItemId` and
`Time` (fractional unix seconds), all clicks. It is recognised by its header, under any role.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from seqjax.data.formats.base import (
    PrepareError,
    RawTable,
    check_readable,
    column_positions,
    constant,
    first_nonblank_line,
    make_table,
    read_delimited,
)

ROLES = ("events", "clicks", "buys")  # events: the preprocessed form only
CLICK_FIELDS = {"user": 0, "timestamp": 1, "item": 2, "category": 3}
BUY_FIELDS = {"user": 0, "timestamp": 1, "item": 2, "price": 3, "quantity": 4}
PREPROCESSED_COLUMNS = {"user": "sessionid", "item": "itemid", "timestamp": "time"}


def read_yoochoose(path: str | Path, role: str = "events") -> RawTable:
    """Reads one YooChoose file: `role` says which official file it is (see the module docstring)."""
    if role not in ROLES:
        raise PrepareError(f"{path}: yoochoose input role must be one of {', '.join(ROLES)}, got {role!r}")
    path = check_readable(path)
    header = [name.strip().lower() for name in first_nonblank_line(path).split("\t")]
    if "sessionid" in header:
        return _read_preprocessed(path, header)
    if role == "events":
        raise PrepareError(f"{path}: no SessionId/ItemId/Time header; give the official files by role: "
                           "--input clicks=yoochoose-clicks.dat --input buys=yoochoose-buys.dat")
    if role == "clicks":
        fields = read_delimited(path, ",", CLICK_FIELDS, expected_fields=4)
        fields["category"] = pc.if_else(pc.equal(fields["category"], "0"), "", fields["category"])
        event = "view"
    else:
        fields = read_delimited(path, ",", BUY_FIELDS, expected_fields=5)
        event = "purchase"
    fields["event"] = constant(event, len(fields["line"]))
    return make_table(path, fields)


def _read_preprocessed(path: Path, header: list[str]) -> RawTable:
    index = column_positions(path, header, PREPROCESSED_COLUMNS)
    fields = read_delimited(path, "\t", index, expected_fields=len(header), skip_lines=1)
    fields["event"] = constant("view", len(fields["line"]))
    return make_table(path, fields)
