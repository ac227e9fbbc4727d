"""OTTO (Kaggle otto-recommender-system, otto-de/recsys-dataset) jsonl: one session per line,
`{"session": int, "events": [{"aid": int, "ts": int (unix ms), "type": "clicks"|"carts"|"orders"}]}`.

One row per event; its line is its session's line. A line is bad (listed in `bad_lines`, counted as
wrong_column_count with 0 fields found) when it is not a JSON object with a non-null scalar `session`
and an `events` list of objects whose aid/ts/type are strings, numbers or null. A missing aid/ts/type
is an empty field, which cleaning counts per event (empty item id, bad timestamp, unknown event type).

Parsing: pyarrow.json per 64 MiB block of lines, since the full train.jsonl (12.9M sessions, 216M
events, 11 GB) is far too slow for one `json.loads` per line. Arrow cannot say which line of a block is
malformed (and rejects string ids), so a block it refuses is parsed again with `json.loads` line by
line: slow only where the data is unusual.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from seqjax.data.formats.base import RawTable, check_readable, iter_lines

EVENT_FIELDS = ("aid", "ts", "type")
SCHEMA = pa.schema([("session", pa.int64()),
                    ("events", pa.list_(pa.struct([("aid", pa.int64()), ("ts", pa.int64()), ("type", pa.string())])))])
# A block's columns: session [S] and aid/ts/type [E] strings, events per session int64 [S], good bool [L].
Block = tuple[pa.Array, dict[str, pa.Array], np.ndarray, np.ndarray]


def read_otto(path: str | Path, fast: bool = True) -> RawTable:
    """Reads an OTTO jsonl file; `fast=False` parses every line with `json.loads` (the reference)."""
    path = check_readable(path)
    users, lines, bad, blank = [], [], [], 0
    columns: dict[str, list[pa.Array]] = {name: [] for name in EVENT_FIELDS}
    for text, numbers in iter_lines(path):
        nonblank = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0).to_numpy(zero_copy_only=False)
        blank += int(len(nonblank) - nonblank.sum())
        text, numbers = text.filter(pa.array(nonblank)), numbers[nonblank]
        block = (_parse_fast(text) if fast else None) or _parse_slow(text)
        session, events, per_session, good = block
        bad.append(numbers[~good])
        lines.append(np.repeat(numbers[good], per_session))
        users.append(pc.take(session, pa.array(np.repeat(np.arange(len(session)), per_session))))
        for name in EVENT_FIELDS:
            columns[name].append(events[name])
    bad_lines = _cat_int(bad)
    return RawTable(path=str(path), user=_cat(users), item=_cat(columns["aid"]), timestamp=_cat(columns["ts"]),
                    event=_cat(columns["type"]), category=None, line=_cat_int(lines), bad_lines=bad_lines,
                    bad_fields=np.zeros(len(bad_lines), np.int64), expected_fields=2, blank_lines=blank)


def _parse_fast(text: pa.Array) -> Block | None:
    """Arrow's JSON reader on the whole block; None when it refuses the block or the line count differs."""
    if not len(text):
        return None
    joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array([0, len(text)], pa.int64()), text),
                            pa.scalar("\n", pa.large_string()))[0].as_buffer()
    longest = pc.max(pc.binary_length(text)).as_py()
    try:
        table = pj.read_json(pa.BufferReader(joined),
                             read_options=pj.ReadOptions(block_size=max(1 << 20, 2 * longest + 2)),
                             parse_options=pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(text):  # e.g. two objects on one line: rows would no longer match lines
        return None
    session = table.column("session").combine_chunks()
    events = table.column("events").combine_chunks()
    good = pc.and_(pc.is_valid(session), pc.is_valid(events)).to_numpy(zero_copy_only=False)
    mask = pa.array(good)
    events = events.filter(mask)
    flat = pc.list_flatten(events)
    columns = {name: _strings(pc.struct_field(flat, [name])) for name in EVENT_FIELDS}
    per_session = pc.list_value_length(events).to_numpy(zero_copy_only=False).astype(np.int64)
    return _strings(session.filter(mask)), columns, per_session, good


def _parse_slow(text: pa.Array) -> Block:
    """One `json.loads` per line; applies the same rules as `_parse_fast`, and names bad lines exactly."""
    sessions, per_session, rows, good = [], [], [], np.zeros(len(text), bool)
    for i, line in enumerate(text.to_pylist()):
        parsed = _session_events(line)
        if parsed is not None:
            good[i] = True
            sessions.append(parsed[0])
            per_session.append(len(parsed[1]))
            rows.extend(parsed[1])
    columns = {name: _strings(pa.array([r[k] for r in rows], pa.large_string())) for k, name in enumerate(EVENT_FIELDS)}
    return _strings(pa.array(sessions, pa.large_string())), columns, np.asarray(per_session, np.int64), good


def _session_events(line: str) -> tuple[str, list[list[str]]] | None:
    """(session, [[aid, ts, type], ...]) as text ('' for null or missing), or None for a malformed line."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("events"), list):
        return None
    session = _scalar(obj.get("session"))
    if session is None:
        return None
    rows = []
    for event in obj["events"]:
        event = {} if event is None else event  # Arrow reads a null element as an event of null fields
        if not isinstance(event, dict):
            return None
        row = ["" if event.get(name) is None else _scalar(event[name]) for name in EVENT_FIELDS]
        if None in row:
            return None
        rows.append(row)
    return session, rows


def _scalar(value) -> str | None:
    """A JSON string or number as text; None for null, booleans, lists and objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _strings(values: pa.Array) -> pa.Array:
    """Trimmed large_string, null -> '' (an empty field, as the text readers give)."""
    return pc.utf8_trim_whitespace(pc.fill_null(values.cast(pa.large_string()), ""))


def _cat(chunks: list[pa.Array]) -> pa.Array:
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.large_string())


def _cat_int(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
