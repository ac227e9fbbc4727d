"""Raw rows -> clean events: validation, event-type mapping, de-duplication, k-core, per-user cap.

Money rides along without ever dropping a row: each event's value is float64, NaN when unknown (no
price column, an empty, unreadable, zero or negative price or quantity).

Every row read is either kept or counted under exactly one drop reason (the first that applies, in
`REASONS` order), so `rows_kept + sum(dropped) == rows_read` always holds. Row-level reasons (the first
six) mark malformed or unusable rows; under `strict` the earliest such row is an error instead.
The rest are dataset-level filters and never errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqjax.data.formats.base import PrepareError, RawTable
from seqjax.data.schema import EVENT_ALIASES, EVENT_ID, EVENT_TYPES
from seqjax.data.timestamps import parse_columns

ROW_REASONS = ("wrong_column_count", "empty_user_id", "empty_item_id", "bad_timestamp",
               "timestamp_out_of_range", "unknown_event_type")
REASONS = ROW_REASONS + ("duplicate", "k_core", "cap_recent")
_EXPLAIN = {
    "empty_user_id": "empty user id", "empty_item_id": "empty item id",
    "bad_timestamp": "timestamp is not a number or an ISO-8601 time",
    "timestamp_out_of_range": "timestamp outside the valid time range",
    "unknown_event_type": "unknown event type",
}


@dataclasses.dataclass
class Report:
    """What cleaning did: rows read, kept, and dropped per reason (every reason listed, zeros included)."""

    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in REASONS})
    first_seen: dict[str, str] = dataclasses.field(default_factory=dict)  # reason -> "file line n"
    unknown_event_values: dict[str, int] = dataclasses.field(default_factory=dict)  # 20 most frequent
    blank_lines: int = 0
    # Events (after dedup and k-core) read after a later-timestamped event of the same user in the same input file;
    # reordered by time, not dropped. Per file, because split inputs (yoochoose's clicks and buys) interleave in time.
    out_of_order: int = 0
    users: int = 0
    items: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Events:
    """Clean events, column-wise (N rows). Raw ids stay in Arrow arrays until `split` assigns final ids."""

    user: np.ndarray  # int64 [N], index into user_names
    item: np.ndarray  # int64 [N], index into item_names
    timestamp: np.ndarray  # int64 [N], unix seconds; zeros when the data has no times
    micros: np.ndarray  # int64 [N], sub-second part of the time in microseconds (orders events within a second)
    event: np.ndarray  # int8 [N], EVENT_ID values; 0 when not recorded
    category: np.ndarray  # int64 [N], 1 + index into category_names; 0 when absent
    price: np.ndarray  # float64 [N], the event's money value (see RowRules.unit_price); NaN when unknown
    order: np.ndarray  # int64 [N], read position (file by file, line by line): breaks timestamp ties
    source: np.ndarray  # int64 [N], index of the input file the event was read from
    user_names: pa.Array
    item_names: pa.Array
    category_names: pa.Array

    def __len__(self) -> int:
        return len(self.user)

    def time_key(self) -> np.ndarray:
        """int64 [N]: the time in microseconds, what events are ordered and deduplicated by."""
        return self.timestamp * 1_000_000 + self.micros

    def take(self, index: np.ndarray) -> Events:
        """The rows at `index` (int positions or a bool mask), same name tables."""
        return dataclasses.replace(self, user=self.user[index], item=self.item[index],
                                   timestamp=self.timestamp[index], micros=self.micros[index], event=self.event[index],
                                   category=self.category[index], price=self.price[index],
                                   order=self.order[index], source=self.source[index])


@dataclasses.dataclass(frozen=True)
class RowRules:
    """What makes a row valid."""

    time_range: tuple[int, int]  # [lower, upper) unix seconds
    timestamp_unit: str = "auto"  # auto | s | ms | iso
    event_map: Mapping[str, str] = dataclasses.field(default_factory=dict)  # raw -> canonical, before aliases
    unknown_events: str = "drop"  # drop | error
    strict: bool = False
    unit_price: bool = False  # the price column is a unit price: value = price x quantity (yoochoose buys);
    #                           otherwise it is the row's value as given (cdnow's dollar_value)


def validate(tables: Sequence[RawTable], rules: RowRules) -> tuple[Events, Report, str | None]:
    """Checks every row, drops (and counts) the bad ones, interns raw ids. Returns (events, report, unit)."""
    report = Report(rows_read=sum(t.rows_read for t in tables), blank_lines=sum(t.blank_lines for t in tables))
    files = [t.path for t in tables]
    file_of = np.concatenate([np.full(len(t.line), i, np.int64) for i, t in enumerate(tables)])
    line = np.concatenate([t.line for t in tables])
    user = _cat([t.user for t in tables])
    item = _cat([t.item for t in tables])
    reason = np.zeros(len(line), np.int8)  # 0 = keep, else 1 + index in ROW_REASONS

    def mark(name: str, bad: np.ndarray) -> None:
        reason[(reason == 0) & bad] = ROW_REASONS.index(name) + 1

    mark("empty_user_id", _empty(user))
    mark("empty_item_id", _empty(item))
    unit, seconds, micros = None, np.zeros(len(line), np.int64), np.zeros(len(line), np.int64)
    if all(t.timestamp is not None for t in tables):
        times = parse_columns([t.timestamp for t in tables], files, [t.line for t in tables], rules.timestamp_unit)
        unit, seconds, micros = times.unit, times.seconds, times.micros
        mark("bad_timestamp", ~times.ok)
        lower, upper = rules.time_range
        mark("timestamp_out_of_range", (seconds < lower) | (seconds >= upper))
    elif any(t.timestamp is not None for t in tables):
        raise PrepareError("some input files have timestamps and some do not: " + ", ".join(files))
    event, unknown = _event_ids(tables, rules.event_map, report)
    if rules.unknown_events == "error" and not rules.strict and unknown.any():  # strict: earliest bad row wins
        row = int(np.flatnonzero(unknown)[0])
        raw = _cat([t.event if t.event is not None else _blank(t) for t in tables])[row].as_py()
        raise PrepareError(f"{files[file_of[row]]}, line {line[row]}: unknown event type {raw!r} (known: "
                           f"{', '.join(EVENT_TYPES)}; map it with event_map or set unknown_events: drop)")
    mark("unknown_event_type", unknown)

    _count_row_drops(tables, files, file_of, line, reason, report, rules.strict)
    keep = reason == 0
    category = _cat([t.category if t.category is not None else _blank(t) for t in tables]).filter(pa.array(keep))
    cat_codes, cat_names = _intern(category, skip_empty=True)
    user_codes, user_names = _intern(user.filter(pa.array(keep)))
    item_codes, item_names = _intern(item.filter(pa.array(keep)))
    price = _prices(tables, rules.unit_price)
    events = Events(user=user_codes, item=item_codes, timestamp=seconds[keep], micros=micros[keep], event=event[keep],
                    category=cat_codes, price=price[keep], order=np.flatnonzero(keep).astype(np.int64), source=file_of[keep],
                    user_names=user_names, item_names=item_names, category_names=cat_names)
    report.rows_kept = len(events)
    return events, report, unit


def _count_row_drops(tables, files, file_of, line, reason, report: Report, strict: bool) -> None:
    """Counts row-level drops; under `strict` raises for the earliest bad row of the first bad file."""
    bad = []  # (file index, line, message) of the first bad row of each kind
    for i, t in enumerate(tables):
        if len(t.bad_lines):
            j = int(np.argmin(t.bad_lines))
            bad.append((i, int(t.bad_lines[j]), "wrong_column_count",
                        f"expected {t.expected_fields} fields, found {t.bad_fields[j]}"))
    report.dropped["wrong_column_count"] = int(sum(len(t.bad_lines) for t in tables))
    for k, name in enumerate(ROW_REASONS[1:], start=2):
        rows = np.flatnonzero(reason == k)
        report.dropped[name] = len(rows)
        if len(rows):
            # Rows are in file order, then line order: the first row is the earliest one.
            bad.append((int(file_of[rows[0]]), int(line[rows[0]]), name, _EXPLAIN[name]))
    for i, ln, name, _ in bad:
        report.first_seen[name] = f"{files[i]} line {ln}"
    if strict and bad:
        i, ln, name, why = min(bad)
        raise PrepareError(f"{files[i]}, line {ln}: {name}: {why} (--strict stops at the first bad row)")


def _event_ids(tables: Sequence[RawTable], event_map: Mapping[str, str],
               report: Report) -> tuple[np.ndarray, np.ndarray]:
    """(EVENT_ID int8 [R], unknown bool [R]); files without an event column give 0 and are never unknown."""
    lookup = {k.lower(): EVENT_ID[v] for k, v in EVENT_ALIASES.items()}
    lookup.update({str(k).strip().lower(): EVENT_ID[v] for k, v in event_map.items()})
    ids, unknown = [], []
    for t in tables:
        if t.event is None:
            ids.append(np.zeros(len(t.line), np.int8))
            unknown.append(np.zeros(len(t.line), bool))
            continue
        encoded = pc.dictionary_encode(pc.utf8_lower(t.event))
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()  # distinct raw types: a handful
        table = np.array([lookup.get(n, 0) for n in names] + [0], np.int8)
        row_ids = table[codes]
        ids.append(row_ids)
        unknown.append(row_ids == 0)
        counts = np.bincount(codes[row_ids == 0], minlength=len(names))
        for j in np.flatnonzero(counts):
            report.unknown_event_values[names[j]] = report.unknown_event_values.get(names[j], 0) + int(counts[j])
    top = sorted(report.unknown_event_values.items(), key=lambda kv: -kv[1])[:20]
    report.unknown_event_values = dict(top)
    return np.concatenate(ids), np.concatenate(unknown)


_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _positive_numbers(strings: pa.Array) -> np.ndarray:
    """float64 [R]: each string as a number; NaN unless it is a finite number > 0 (0 means unknown)."""
    strings = strings.cast(pa.large_string())
    ok = pc.match_substring_regex(strings, _NUMBER)
    values = pc.cast(pc.if_else(ok, strings, pa.scalar(None, pa.large_string())), pa.float64())
    out = values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def _prices(tables: Sequence[RawTable], unit_price: bool) -> np.ndarray:
    """float64 [R]: every parsed row's money value, NaN where unknown (see RowRules.unit_price)."""
    parts = []
    for t in tables:
        if t.price is None:
            parts.append(np.full(len(t.line), np.nan))
            continue
        value = _positive_numbers(t.price)
        if unit_price and t.quantity is not None:
            value = value * _positive_numbers(t.quantity)
        parts.append(value)
    return np.concatenate(parts) if parts else np.zeros(0)


def _cat(arrays: Sequence[pa.Array]) -> pa.Array:
    return pa.concat_arrays([a.cast(pa.large_string()) for a in arrays])


def _blank(t: RawTable) -> pa.Array:
    return pa.array([""] * len(t.line), pa.large_string())


def _empty(strings: pa.Array) -> np.ndarray:
    return pc.equal(pc.utf8_length(strings), 0).to_numpy(zero_copy_only=False)


def _intern(strings: pa.Array, skip_empty: bool = False) -> tuple[np.ndarray, pa.Array]:
    """(codes int64 [R], distinct values); with `skip_empty`, "" is code 0 and the others are 1-based."""
    encoded = pc.dictionary_encode(strings)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = encoded.dictionary
    if not skip_empty:
        return codes, names
    empty = _empty(names)
    new = np.cumsum(~empty)  # 1-based code for non-empty names
    new[empty] = 0
    return (new[codes] if len(codes) else codes), names.filter(pa.array(~empty))


def sort_by_user_time(events: Events, report: Report | None = None) -> Events:
    """Each user's events together, oldest first (to the microsecond); equal times keep read order (stable).
    With `report`, counts in `out_of_order` the events read after a later event of their user in the same file."""
    time = events.time_key()
    if report is not None:
        report.out_of_order = count_out_of_order(events.user, time, events.order, events.source)
    return events.take(np.lexsort((events.order, time, events.user)))


def count_out_of_order(user: np.ndarray, timestamp: np.ndarray, order: np.ndarray,
                       source: np.ndarray | None = None) -> int:
    """Events whose timestamp is below that of an event of the same user (and `source` file) read before them."""
    if not len(user):
        return 0
    if source is not None:  # one group per (user, file), densely coded so that the key below fits int64
        group = user.astype(np.int64) * (int(source.max()) + 1) + source
        user = np.unique(group, return_inverse=True)[1].ravel()
    by_read = np.lexsort((order, user))
    rank = np.unique(timestamp, return_inverse=True)[1].ravel()  # < N, so user * (N + 1) + rank fits int64
    key = user[by_read].astype(np.int64) * (len(user) + 1) + rank[by_read]
    before = np.maximum.accumulate(key)[:-1]  # users sort apart, so the running max never crosses a user
    return int((key[1:] < before).sum())


def drop_duplicates(events: Events, report: Report) -> Events:
    """Drops exact repeats of (user, item, time to the microsecond, event), keeping the first read.

    Only meaningful with timestamps: without them two equal rows are two interactions.
    """
    time = events.time_key()
    perm = np.lexsort((events.order, events.event, events.item, time, events.user))
    cols = [c[perm] for c in (events.user, events.item, time, events.event)]
    same = np.ones(len(perm) - 1 if len(perm) else 0, bool)
    for c in cols:
        same &= c[1:] == c[:-1]
    keep = np.ones(len(perm), bool)
    keep[perm[1:][same]] = False
    return _drop(events, keep, "duplicate", report)


def k_core(events: Events, min_user_count: int, min_item_count: int, one_pass: bool,
           report: Report) -> Events:
    """Keeps events whose user has >= min_user_count and item >= min_item_count events.

    Iterated to a fixed point (dropping rows can push others below a threshold), or, with `one_pass`,
    applied once with both counts taken on the input (as SASRec's preprocessing did).
    """
    if min_user_count <= 1 and min_item_count <= 1:
        return events
    keep = np.ones(len(events), bool)
    while True:
        users = np.bincount(events.user[keep], minlength=len(events.user_names))
        items = np.bincount(events.item[keep], minlength=len(events.item_names))
        drop = keep & ((users[events.user] < min_user_count) | (items[events.item] < min_item_count))
        if not drop.any():
            break
        keep &= ~drop
        if one_pass:
            break
    return _drop(events, keep, "k_core", report)


def cap_recent(events: Events, max_events_per_user: int, report: Report) -> Events:
    """Keeps each user's `max_events_per_user` most recent events; `events` must be sorted by user, time."""
    if max_events_per_user <= 0 or not len(events):
        return events
    starts = np.flatnonzero(np.r_[True, events.user[1:] != events.user[:-1]])
    ends = np.r_[starts[1:], len(events)]
    end_of_row = np.repeat(ends, ends - starts)
    keep = end_of_row - np.arange(len(events)) <= max_events_per_user
    return _drop(events, keep, "cap_recent", report)


def _drop(events: Events, keep: np.ndarray, reason: str, report: Report) -> Events:
    report.dropped[reason] += int(len(keep) - keep.sum())
    report.rows_kept -= int(len(keep) - keep.sum())
    return events.take(keep) if not keep.all() else events
