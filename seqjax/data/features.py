"""Time and context features: per-event inputs for sequence models, and per-example tabular aggregates.

Per event (`event_features`, over events sorted by user then time): local hour and day of week in a
time zone, the session each event falls in and its position there, and the gap since the user's
previous event in log2 buckets. All of them look only backwards in time.

Per example (`aggregate_features`): RFM-style aggregates of the events strictly before the example's
cutoff and inside the feature window [cutoff - feature_window, cutoff), so no feature can see the
label window. Events at or after a cutoff never change the features of an example at that cutoff;
tests/test_features.py checks this bit for bit. Counts are differences of running sums over the
events sorted by (user, time), found with one binary search per bound, for all cutoffs at once.

Sessions: a user's next event starts a new session when it comes more than `session_gap` seconds
after the previous one; a gap of exactly `session_gap` stays in the session.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from seqjax.data.labels import DAY, NO_TIME, PURCHASE, Examples, TaskConfig, TimeIndex, zone
from seqjax.data.schema import EVENT_ID, EVENT_TYPES

GAP_BUCKETS = 32  # gap_bucket values 0..31; 31 holds every gap of 2^29 s (17 years) or more
PRICE_BUCKETS = 32  # price_bucket values 0..31 (0: no price)
RECENT_DAYS = (1, 3, 7)  # frequency windows just before the cutoff


def utc_offsets(ts: np.ndarray, timezone: str) -> np.ndarray:
    """int64 [N]: seconds to add to each unix time to get local wall-clock time in `timezone`.

    The offset is read from zoneinfo once per UTC day spanned, and where it changes between two
    midnights the change is located to the second by bisection (one change per day at most, true of
    every zone in the tz database since 1900); then one binary search maps events to offsets.
    """
    ts = np.asarray(ts, np.int64)
    if not len(ts):
        return np.zeros(0, np.int64)
    tz = zone(timezone)

    def offset(t: int) -> int:
        return int(dt.datetime.fromtimestamp(t, tz).utcoffset().total_seconds())

    grid = (np.arange(int(ts.min()) // DAY, int(ts.max()) // DAY + 2) * DAY).tolist()
    at, value = [grid[0]], [offset(grid[0])]
    for t in grid[1:]:
        off = offset(t)
        if off != value[-1]:
            lo, hi = t - DAY, t  # offset(lo) == value[-1] != offset(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == value[-1] else (lo, mid)
            at.append(hi)
            value.append(off)
    return np.asarray(value, np.int64)[np.searchsorted(np.asarray(at, np.int64), ts, side="right") - 1]


def local_hour_weekday(ts: np.ndarray, timezone: str) -> tuple[np.ndarray, np.ndarray]:
    """(hour int8 [N] in 0..23, weekday int8 [N] in 0..6, Monday = 0) of each unix time in `timezone`."""
    local = np.asarray(ts, np.int64) + utc_offsets(ts, timezone)
    hour = (local // 3600) % 24
    weekday = (local // DAY + 3) % 7  # 1970-01-01 was a Thursday
    return hour.astype(np.int8), weekday.astype(np.int8)


def _check_sorted(user: np.ndarray, ts: np.ndarray) -> None:
    same = user[1:] == user[:-1]
    if np.any(user[1:] < user[:-1]) or np.any(same & (ts[1:] < ts[:-1])):
        raise ValueError("events must be sorted by user, then time (seqjax.data.clean.sort_by_user_time)")


def session_starts(user: np.ndarray, ts: np.ndarray, gap: int) -> np.ndarray:
    """bool [N]: the event opens a session (the user's first, or more than `gap` s after the previous).

    user, ts: [N] sorted by user, then time.
    """
    user, ts = np.asarray(user), np.asarray(ts, np.int64)
    new = np.ones(len(user), bool)
    new[1:] = (user[1:] != user[:-1]) | (ts[1:] - ts[:-1] > gap)
    return new


def gap_bucket(gap: np.ndarray, first: np.ndarray, num_buckets: int = GAP_BUCKETS) -> np.ndarray:
    """int8 [N] log2 bucket of the seconds since the user's previous event.

    0: the user's first event (no previous); 1: the same second; b >= 2: gaps in [2^(b-2), 2^(b-1)) s,
    capped at num_buckets - 1. So 2: 1 s, 3: 2-3 s, ..., 12: 1024-2047 s (17-34 min), 18: 18-36 h.
    """
    gap = np.asarray(gap, np.int64)
    _, exponent = np.frexp(np.maximum(gap, 1).astype(np.float64))  # bit length of the gap
    bucket = np.minimum(1 + exponent, num_buckets - 1)
    return np.where(first, 0, np.where(gap <= 0, 1, bucket)).astype(np.int8)


def price_bucket(price: np.ndarray, num_buckets: int = PRICE_BUCKETS) -> np.ndarray:
    """log2 bucket of each event's money value: 0 = unknown or not positive; b >= 1 holds [2^(b-8), 2^(b-7)),
    bucket 1 also everything below and the last one everything above. float [N] -> int8 [N]."""
    price = np.asarray(price, np.float64)
    known = np.isfinite(price) & (price > 0)
    _, exponent = np.frexp(np.where(known, price, 1.0))  # price in [2^(e-1), 2^e)
    return np.where(known, np.clip(exponent + 7, 1, num_buckets - 1), 0).astype(np.int8)


def event_features(user: np.ndarray, ts: np.ndarray, timezone: str = "UTC", session_gap: int = 1800,
                   num_gap_buckets: int = GAP_BUCKETS) -> dict[str, np.ndarray]:
    """Context features of every event; user, ts: [N] sorted by user, then time.

    Returns hour int8 [N] (0..23, local), weekday int8 [N] (0..6, Monday = 0, local),
    session int32 [N] (the user's session number, 0-based), session_position int32 [N] (0 = the
    session's first event) and gap_bucket int8 [N] (see `gap_bucket`). Values start at 0; a model
    that keeps 0 for padding adds 1.
    """
    user, ts = np.asarray(user, np.int64), np.asarray(ts, np.int64)
    _check_sorted(user, ts)
    n = len(user)
    first = np.ones(n, bool)
    first[1:] = user[1:] != user[:-1]
    new = session_starts(user, ts, session_gap)
    rows = np.arange(n)
    opened = np.cumsum(new)  # sessions opened so far, this one included
    user_start = np.maximum.accumulate(np.where(first, rows, 0))
    session_start = np.maximum.accumulate(np.where(new, rows, 0))
    gap = np.zeros(n, np.int64)
    gap[1:] = ts[1:] - ts[:-1]
    hour, weekday = local_hour_weekday(ts, timezone)
    return {
        "hour": hour,
        "weekday": weekday,
        "session": (opened - opened[user_start]).astype(np.int32) if n else np.zeros(0, np.int32),
        "session_position": (rows - session_start).astype(np.int32),
        "gap_bucket": gap_bucket(gap, first, num_gap_buckets),
    }


def _running(flags_sorted: np.ndarray) -> np.ndarray:
    """[N + 1] running sum of values already in sorted order (int64)."""
    return np.concatenate([[0], np.cumsum(flags_sorted, dtype=np.int64)])


def _range_sums(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [E]: sum of x[a:b] for each range, summed over exactly those values (no running-sum
    differences, whose rounding would depend on the events before the range)."""
    out = np.zeros(len(a))
    some = b > a
    if some.any():
        bounds = np.stack([a[some], b[some]], axis=1).ravel()
        out[some] = np.add.reduceat(np.append(x, 0.0), bounds)[::2]
    return out


def _masked(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values, mask=~np.asarray(valid, bool))


def _key_width(*arrays: np.ndarray) -> int:
    return max((int(a.max()) for a in arrays if len(a)), default=0) + 1


def _distinct_counts(user: np.ndarray, ts: np.ndarray, value: np.ndarray, examples: Examples,
                     window: int | None, idx: TimeIndex, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 [E]: distinct `value`s (> 0) among the example user's events in its feature window."""
    width = _key_width(value)
    if _key_width(user, examples.user) > (1 << 62) // width:
        raise ValueError("user x value ids do not fit a 64-bit key")
    if window is None:
        # All history: count first occurrences of (user, value); the k-th of them comes before the cutoff
        # exactly when the user has k distinct values there.
        key = idx.group * width + np.asarray(value, np.int64)[idx.order]
        _, first = np.unique(key, return_index=True)
        flags = np.zeros(len(key), np.int64)
        flags[first] = 1
        flags[np.asarray(value)[idx.order] <= 0] = 0
        c = _running(flags)
        return c[b] - c[a]
    # A bounded window: the window's events are one slice of the time-sorted log, per cutoff.
    out = np.zeros(len(examples), np.int64)
    by_time = np.argsort(ts, kind="stable")
    ts_sorted = ts[by_time]
    for c in np.unique(examples.cutoff).tolist():
        lo, hi = np.searchsorted(ts_sorted, [c - window, c], side="left")
        sel = by_time[lo:hi]
        sel = sel[value[sel] > 0]
        owners = np.unique(user[sel] * width + value[sel]) // width
        who, n = np.unique(owners, return_counts=True)
        rows = np.flatnonzero(examples.cutoff == c)
        pos = np.minimum(np.searchsorted(who, examples.user[rows]), max(len(who) - 1, 0))
        hit = (who[pos] == examples.user[rows]) if len(who) else np.zeros(len(rows), bool)
        out[rows] = np.where(hit, n[pos] if len(who) else 0, 0)
    return out


def aggregate_features(user: np.ndarray, item: np.ndarray, ts: np.ndarray, event: np.ndarray,
                       category: np.ndarray, price: np.ndarray | None, examples: Examples,
                       cfg: TaskConfig) -> pa.Table:
    """One row per example (same order as `examples`): aggregates of the events strictly before its cutoff.

    user, item: int [N] >= 0; ts: int64 [N]; event: int [N] EVENT_ID values; category: int [N], 0 = none;
    price: float [N] (NaN = unknown) or None, which leaves the monetary columns out. Events may come in
    any order. Columns and their meaning: `describe(table)` / COLUMN_DOCS; undefined values are null.
    """
    user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
    ts, event, category = np.asarray(ts, np.int64), np.asarray(event), np.asarray(category, np.int64)
    window = cfg.window_s
    eu, ec = examples.user, examples.cutoff
    start = np.full(len(ec), NO_TIME, np.int64) if window is None else ec - window

    idx = TimeIndex(user, ts)
    a, b = idx.find(eu, start), idx.find(eu, ec)
    cols: dict[str, pa.Array] = {}
    cols.update(_recency(idx, event, ec, a, b, prefix=""))
    bounds = {"": a}
    for days in RECENT_DAYS:
        bounds[f"_{days}d"] = idx.find(eu, np.maximum(start, ec - days * DAY))
    for suffix, lo in bounds.items():
        cols.update(_counts(idx, event, lo, b, prefix="", suffix=suffix))

    if price is not None:
        price = np.asarray(price, np.float64)
        priced = (event == PURCHASE) & np.isfinite(price)
        n = idx.prefix(priced)
        n = n[b] - n[a]
        total = _range_sums(np.where(priced, price, 0.0)[idx.order], a, b)
        cols["n_priced_purchases"] = pa.array(n)
        cols["purchase_value_sum"] = pa.array(total)
        cols["purchase_value_mean"] = _masked(total / np.maximum(n, 1), n > 0)

    cols["distinct_categories"] = pa.array(_distinct_counts(user, ts, category, examples, window, idx, a, b))
    cols["distinct_items"] = pa.array(_distinct_counts(user, ts, item + 1, examples, window, idx, a, b))

    new = session_starts(idx.group, idx.ts, cfg.session_gap_s)
    inside = np.zeros(len(idx), np.int64)
    inside[1:] = np.where(new[1:], 0, idx.ts[1:] - idx.ts[:-1])
    has = b > a
    second = np.minimum(a + 1, b)  # the window's first event always opens a (possibly cut) session
    opened, spent = _running(new), _running(inside)
    sessions = np.where(has, 1 + opened[b] - opened[second], 0)
    cols["n_sessions"] = pa.array(sessions)
    cols["mean_session_events"] = _masked((b - a) / np.maximum(sessions, 1), has)
    cols["mean_session_seconds"] = _masked((spent[b] - spent[second]) / np.maximum(sessions, 1), has)

    if cfg.level == "user_item":
        width = _key_width(item, examples.item)
        if _key_width(user, eu) > (1 << 62) // width:
            raise ValueError("user x item ids do not fit a 64-bit key")
        keys, pair = np.unique(user * width + item, return_inverse=True)
        want = eu * width + examples.item
        pos = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
        found = (keys[pos] == want) if len(keys) else np.zeros(len(want), bool)
        g = np.where(found, pos, len(keys))  # a pair never seen: an empty group past the last
        pidx = TimeIndex(pair.ravel(), ts)
        pa_, pb = pidx.find(g, start), pidx.find(g, ec)
        cols.update(_recency(pidx, event, ec, pa_, pb, prefix="pair_"))
        cols.update(_counts(pidx, event, pa_, pb, prefix="pair_", suffix=""))

    schema = pa.schema([pa.field(k, v.type, metadata={"description": COLUMN_DOCS[k]}) for k, v in cols.items()])
    return pa.Table.from_arrays(list(cols.values()), schema=schema)


def _recency(idx: TimeIndex, event: np.ndarray, cutoff: np.ndarray, a: np.ndarray, b: np.ndarray,
             prefix: str) -> dict[str, pa.Array]:
    has = b > a
    last = np.maximum(b - 1, 0)
    ts = idx.ts if len(idx) else np.zeros(1, np.int64)
    rows = np.arange(len(idx))
    bought = np.asarray(event)[idx.order] == PURCHASE
    last_buy = np.maximum.accumulate(np.where(bought, rows, -1)) if len(idx) else np.full(1, -1)
    lb = last_buy[last]
    buy_ok = has & (lb >= a)
    return {
        f"{prefix}secs_since_last_event": _masked(cutoff - ts[last], has),
        f"{prefix}secs_since_first_event": _masked(cutoff - ts[np.minimum(a, len(ts) - 1)], has),
        f"{prefix}secs_since_last_purchase": _masked(cutoff - ts[np.maximum(lb, 0)], buy_ok),
    }


def _counts(idx: TimeIndex, event: np.ndarray, a: np.ndarray, b: np.ndarray, prefix: str,
            suffix: str) -> dict[str, pa.Array]:
    out = {f"{prefix}n_events{suffix}": pa.array(b - a)}
    for name in EVENT_TYPES:
        c = idx.prefix(np.asarray(event) == EVENT_ID[name])
        out[f"{prefix}n_{name}{suffix}"] = pa.array(c[b] - c[a])
    return out


def _docs() -> dict[str, str]:
    window = "in the feature window (events strictly before the cutoff, within feature_window of it)"
    docs = {
        "secs_since_last_event": f"seconds from the user's last event {window} to the cutoff; null if none",
        "secs_since_first_event": f"seconds from the user's first event {window} to the cutoff; null if none",
        "secs_since_last_purchase": f"seconds from the user's last purchase {window} to the cutoff; null if none",
    }
    for suffix, where in [("", window)] + [(f"_{d}d", f"in the last {d} day(s) before the cutoff (and {window})")
                                           for d in RECENT_DAYS]:
        docs[f"n_events{suffix}"] = f"the user's events {where}"
        for name in EVENT_TYPES:
            docs[f"n_{name}{suffix}"] = f"the user's {name} events {where}"
    docs.update({
        "n_priced_purchases": f"the user's purchases with a known price {window}; only when the data has prices",
        "purchase_value_sum": "sum of the prices of those purchases (0 if none); only when the data has prices",
        "purchase_value_mean": "mean price of those purchases; null if none; only when the data has prices",
        "distinct_categories": f"distinct categories (category id > 0) among the user's events {window}",
        "distinct_items": f"distinct items among the user's events {window}",
        "n_sessions": (f"the user's sessions {window}, cut at the window's edges; a session ends when more than "
                       "session_gap passes without an event"),
        "mean_session_events": "n_events / n_sessions; null if no events",
        "mean_session_seconds": ("mean seconds from a session's first to its last event (cut at the window); "
                                 "null if none"),
    })
    pair = f"the user's events on the example's item {window}"
    docs.update({
        "pair_secs_since_last_event": f"user_item level: seconds from the last of {pair} to the cutoff; null if none",
        "pair_secs_since_first_event": f"user_item level: seconds from the first of {pair} to the cutoff; null if none",
        "pair_secs_since_last_purchase": f"user_item level: seconds from the last purchase among {pair}; null if none",
        "pair_n_events": f"user_item level: {pair}",
    })
    for name in EVENT_TYPES:
        docs[f"pair_n_{name}"] = f"user_item level: the user's {name} events on the example's item {window}"
    return docs


COLUMN_DOCS = _docs()  # column name -> one-line description, for metadata.json


def describe(table: pa.Table) -> dict[str, str]:
    """column -> description of the columns `aggregate_features` returned (what metadata.json records)."""
    return {name: COLUMN_DOCS[name] for name in table.column_names}
