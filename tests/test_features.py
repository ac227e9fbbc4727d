"""Features: no leakage from at/after the cutoff (bit for bit), aggregates against a slow reference,
local time, sessions and gap buckets."""

import datetime as dt
from collections import defaultdict
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from test_labels import shop_log

from seqjax.data.features import (
    COLUMN_DOCS,
    RECENT_DAYS,
    aggregate_features,
    describe,
    event_features,
    gap_bucket,
    local_hour_weekday,
    price_bucket,
    session_starts,
    utc_offsets,
)
from seqjax.data.labels import DAY, TaskConfig, build_examples
from seqjax.data.schema import EVENT_ID, EVENT_TYPES

BUY = EVENT_ID["purchase"]
RTOL = 1e-12  # float aggregates vs the reference: summation order only

CONFIGS = [
    TaskConfig(horizon="2d"),
    TaskConfig(horizon="2d", feature_window="3d", session_gap="10m"),
    TaskConfig(level="user_item", horizon="3d", feature_window="4d"),
    TaskConfig(level="user_item", horizon="1d", stride_days=2),
]
IDS = ["user-all", "user-3d", "pair-4d", "pair-all"]


def with_prices(log, seed=0):
    """Prices on purchases (a fifth unknown: NaN), NaN elsewhere."""
    rng = np.random.default_rng(seed)
    price = np.round(rng.uniform(1, 200, len(log["user"])), 2)
    price[(log["event"] != BUY) | (rng.random(len(price)) < 0.2)] = np.nan
    return {**log, "price": price}


@pytest.fixture(scope="module")
def log():
    return with_prices(shop_log(num_users=150, seed=2))


def build(log, cfg, cutoffs=None):
    ex = build_examples(log["user"], log["item"], log["ts"], log["event"], cutoffs, cfg)
    table = aggregate_features(log["user"], log["item"], log["ts"], log["event"], log["category"], log["price"],
                               ex, cfg)
    return ex, table


def perturb(log, cutoff, rng):
    """Rewrites everything at or after `cutoff`: types, items, categories and prices change, a third of those
    events go, new ones arrive (for known and new users, on known and new items); rows are shuffled."""
    after = log["ts"] >= cutoff
    n = int(after.sum())
    out = {k: v.copy() for k, v in log.items()}
    out["event"][after] = rng.integers(1, 6, n)
    out["item"][after] = rng.integers(1, 400, n)
    out["category"][after] = rng.integers(0, 12, n)
    out["price"][after] = np.where(rng.random(n) < 0.5, rng.uniform(0, 1e6, n), np.nan)
    keep = ~after | (rng.random(len(after)) < 0.66)
    out = {k: v[keep] for k, v in out.items()}
    m = 400  # half of them exactly at the cutoff, the rest later
    new = {"user": rng.integers(0, log["user"].max() + 30, m),
           "item": rng.integers(1, 400, m),
           "ts": np.where(np.arange(m) < m // 2, cutoff, rng.integers(cutoff, log["ts"].max() + 1, m)),
           "event": rng.integers(1, 6, m),
           "category": rng.integers(0, 12, m),
           "price": rng.uniform(0, 1e6, m)}
    out = {k: np.concatenate([out[k], new[k].astype(out[k].dtype)]) for k in out}
    perm = rng.permutation(len(out["user"]))
    return {k: v[perm] for k, v in out.items()}


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_no_feature_sees_events_at_or_after_the_cutoff(log, cfg):
    ex, table = build(log, cfg)
    rng = np.random.default_rng(5)
    labels_changed = later_changed = 0
    for c in ex.cutoffs.times.tolist():
        moved = perturb(log, c, rng)
        ex2, table2 = build(moved, cfg, ex.cutoffs)
        old, new = np.flatnonzero(ex.cutoff <= c), np.flatnonzero(ex2.cutoff <= c)
        # The same examples (eligibility reads only the past), and every feature bit-identical.
        for name in ("user", "item", "cutoff", "split"):
            assert np.array_equal(getattr(ex, name)[old], getattr(ex2, name)[new]), name
        for name in table.column_names:
            a, b = table.column(name).take(old), table2.column(name).take(new)
            assert a.equals(b), f"{name} changed at cutoff {c} when only later events changed"
            if a.type == "double":  # equals() on floats: also compare the bits
                assert np.array_equal(a.to_numpy(zero_copy_only=False).view(np.int64),
                                      b.to_numpy(zero_copy_only=False).view(np.int64)), name
        labels_changed += int((ex.label[old] != ex2.label[new]).sum())
        if c < ex.cutoffs.times[-1]:  # the perturbation is real: later examples do see it
            later = ex.cutoff > c
            later_changed += int(not table.filter(later).equals(table2.filter(ex2.cutoff > c)))
    assert labels_changed > 0
    assert later_changed == len(ex.cutoffs.times) - 1


def test_window_edges():
    """Events at cutoff - feature_window count, events at the cutoff do not (nor 1 s before the window)."""
    c, w = 10**9 + 10 * DAY, 3 * DAY
    ts = np.array([c - w - 1, c - w, c - DAY, c - 1, c, c + 5])
    event = np.array([BUY, 1, 3, 1, BUY, BUY])
    user, item = np.zeros(6, np.int64), np.array([1, 2, 3, 2, 4, 5])
    cfg = TaskConfig(horizon="1h", feature_window="3d", cutoffs=(str(c - DAY), str(c), str(c + 3600)))
    ex = build_examples(user, item, ts, event, None, cfg)
    table = aggregate_features(user, item, ts, event, item, np.full(6, 9.0), ex, cfg)
    row = table.to_pylist()[ex.cutoff.tolist().index(c)]
    assert (row["n_events"], row["n_view"], row["n_cart"], row["n_purchase"]) == (3, 2, 1, 0)
    assert (row["n_events_1d"], row["secs_since_last_event"], row["secs_since_first_event"]) == (2, 1, w)
    assert row["secs_since_last_purchase"] is None and row["purchase_value_mean"] is None
    assert (row["distinct_items"], row["distinct_categories"]) == (2, 2)
    assert ex.label[ex.cutoff == c].tolist() == [1]  # the purchase at the cutoff is in the label window


def test_event_features_look_only_backwards(log):
    order = np.lexsort((log["ts"], log["user"]))
    user, ts = log["user"][order], log["ts"][order]
    cut = int(np.quantile(ts, 0.6))
    before = ts < cut
    feats = event_features(user, ts, "Asia/Shanghai")
    # Later events moved around (still sorted): features of the earlier ones do not change.
    rng = np.random.default_rng(0)
    ts2 = np.where(before, ts, cut + rng.integers(0, 5 * DAY, len(ts)))
    extra_user = rng.integers(0, user.max() + 5, 300)
    user3 = np.concatenate([user, extra_user])
    ts3 = np.concatenate([ts2, cut + rng.integers(0, 5 * DAY, 300)])
    o3 = np.lexsort((ts3, user3))
    inv = np.argsort(o3)[: len(ts)]  # where each original event went
    feats2 = event_features(user3[o3], ts3[o3], "Asia/Shanghai")
    for name, values in feats.items():
        assert np.array_equal(values[before], feats2[name][inv][before]), name


def reference_features(log, u, item, c, cfg, columns):
    """The aggregates of one example by loops over the user's events."""
    lo = -10**18 if cfg.window_s is None else c - cfg.window_s
    rows = sorted((t, i, e, k, p) for uu, i, t, e, k, p in zip(*(log[x] for x in
                  ("user", "item", "ts", "event", "category", "price"))) if uu == u and lo <= t < c)
    out = {}

    def recency(events, prefix):
        times = [t for t, *_ in events]
        buys = [t for t, _, e, *_ in events if e == BUY]
        out[prefix + "secs_since_last_event"] = c - max(times) if times else None
        out[prefix + "secs_since_first_event"] = c - min(times) if times else None
        out[prefix + "secs_since_last_purchase"] = c - max(buys) if buys else None

    def counts(events, prefix, suffix=""):
        out[f"{prefix}n_events{suffix}"] = len(events)
        for name in EVENT_TYPES:
            out[f"{prefix}n_{name}{suffix}"] = sum(1 for _, _, e, *_ in events if e == EVENT_ID[name])

    recency(rows, "")
    counts(rows, "")
    for d in RECENT_DAYS:
        counts([r for r in rows if r[0] >= c - d * DAY], "", f"_{d}d")
    priced = [p for _, _, e, _, p in rows if e == BUY and np.isfinite(p)]
    out["n_priced_purchases"] = len(priced)
    out["purchase_value_sum"] = float(sum(priced))
    out["purchase_value_mean"] = sum(priced) / len(priced) if priced else None
    out["distinct_categories"] = len({k for _, _, _, k, _ in rows if k > 0})
    out["distinct_items"] = len({i for _, i, *_ in rows})
    sessions, inside = 0, 0
    for j, (t, *_) in enumerate(rows):
        if j == 0 or t - rows[j - 1][0] > cfg.session_gap_s:
            sessions += 1
        else:
            inside += t - rows[j - 1][0]
    out["n_sessions"] = sessions
    out["mean_session_events"] = len(rows) / sessions if sessions else None
    out["mean_session_seconds"] = inside / sessions if sessions else None
    if cfg.level == "user_item":
        pair = [r for r in rows if r[1] == item]
        recency(pair, "pair_")
        counts(pair, "pair_")
    assert set(out) == set(columns)
    return out


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_aggregates_match_slow_reference(log, cfg):
    ex, table = build(log, cfg)
    rows = table.to_pylist()
    rng = np.random.default_rng(3)
    picks = rng.choice(len(ex), 25, replace=False).tolist()
    picks += [int(np.flatnonzero(table.column("n_priced_purchases").to_numpy() > 1)[0])]
    for k in picks:
        want = reference_features(log, int(ex.user[k]), int(ex.item[k]), int(ex.cutoff[k]), cfg, table.column_names)
        got = rows[k]
        for name, value in want.items():
            if isinstance(value, float):
                assert got[name] == pytest.approx(value, rel=RTOL), name
            else:
                assert got[name] == value, name


def test_columns_are_documented_and_monetary_ones_need_prices(log):
    cfg = CONFIGS[2]
    ex, table = build(log, cfg)
    docs = describe(table)
    assert list(docs) == table.column_names and all(docs.values())
    assert table.schema.field("n_sessions").metadata[b"description"] == COLUMN_DOCS["n_sessions"].encode()
    assert {"purchase_value_sum", "pair_n_purchase"} <= set(table.column_names)
    no_price = aggregate_features(log["user"], log["item"], log["ts"], log["event"], log["category"], None, ex, cfg)
    assert set(table.column_names) - set(no_price.column_names) == {
        "n_priced_purchases", "purchase_value_sum", "purchase_value_mean"}
    user_level = build(log, CONFIGS[0])[1]
    assert not any(name.startswith("pair_") for name in user_level.column_names)
    assert table.num_rows == len(ex)


def test_same_instant_in_utc_and_china_time():
    t = int(dt.datetime(2017, 11, 25, 20, 30, tzinfo=dt.UTC).timestamp())  # a Saturday evening in UTC
    ts = np.array([t, t + 4 * 3600])
    hour, weekday = local_hour_weekday(ts, "UTC")
    assert hour.tolist() == [20, 0] and weekday.tolist() == [5, 6]
    hour, weekday = local_hour_weekday(ts, "Asia/Shanghai")  # UTC+8: already Sunday morning
    assert hour.tolist() == [4, 8] and weekday.tolist() == [6, 6]


@pytest.mark.parametrize("timezone", ["Europe/Berlin", "America/Sao_Paulo", "Asia/Kathmandu", "Australia/Lord_Howe"])
def test_local_time_matches_zoneinfo_across_offset_changes(timezone):
    rng = np.random.default_rng(0)
    ts = rng.integers(int(dt.datetime(1985, 1, 1, tzinfo=dt.UTC).timestamp()),
                      int(dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()), 3000)
    # Seconds around every offset change the data crosses, both sides of it.
    off = utc_offsets(ts, timezone)
    zone = ZoneInfo(timezone)
    want = [int(dt.datetime.fromtimestamp(int(t), zone).utcoffset().total_seconds()) for t in ts]
    assert off.tolist() == want
    edges = np.flatnonzero(np.diff(utc_offsets(np.arange(ts.min(), ts.max(), 1800), timezone)))
    near = (np.arange(ts.min(), ts.max(), 1800)[edges][:, None] + np.arange(-1, 1802, 1)[None, :]).ravel()
    want = [int(dt.datetime.fromtimestamp(int(t), zone).utcoffset().total_seconds()) for t in near[::7]]
    assert len(edges) > 10 or timezone == "Asia/Kathmandu"
    assert utc_offsets(near, timezone)[::7].tolist() == want
    hour, weekday = local_hour_weekday(ts[:200], timezone)
    local = [dt.datetime.fromtimestamp(int(t), zone) for t in ts[:200]]
    assert hour.tolist() == [x.hour for x in local] and weekday.tolist() == [x.weekday() for x in local]


def test_session_cut_at_the_gap_boundary():
    # Rule: a new session starts only when the gap is MORE than session_gap; exactly session_gap stays.
    gap = 1800
    user = np.array([0, 0, 0, 0, 0, 1, 1])
    ts = np.array([0, 1800, 3601, 3601, 5401, 5401, 7202])
    assert session_starts(user, ts, gap).tolist() == [True, False, True, False, False, True, True]
    f = event_features(user, ts, session_gap=gap)
    assert f["session"].tolist() == [0, 0, 1, 1, 1, 0, 1]
    assert f["session_position"].tolist() == [0, 1, 0, 1, 2, 0, 0]
    assert f["gap_bucket"].tolist() == gap_bucket(np.array([0, 1800, 1801, 0, 1800, 0, 1801]),
                                                  np.array([1, 0, 0, 0, 0, 1, 0], bool)).tolist()
    # The aggregates use the same rule.
    ex = build_examples(user, user + 1, ts + 10**9, np.ones(7, np.int64), None,
                        TaskConfig(horizon="1m", cutoffs=("1000005402", "1000007201", "1000007300")))
    cfg = TaskConfig()
    table = aggregate_features(user, user + 1, ts + 10**9, np.ones(7, np.int64), np.ones(7, np.int64), None, ex, cfg)
    sessions, seconds = table.column("n_sessions").to_pylist(), table.column("mean_session_seconds").to_pylist()
    got = {(int(u), int(c) - 10**9): v for u, c, v in zip(ex.user, ex.cutoff, zip(sessions, seconds))}
    assert got[(0, 5402)] == (2, (1800 + 0 + 1800) / 2)
    assert got[(1, 7300)] == (2, 0.0)
    with pytest.raises(ValueError, match="sorted by user, then time"):
        event_features(user[::-1], ts[::-1])


def test_gap_buckets():
    gaps = np.array([5, 0, 1, 2, 3, 4, 1023, 1024, 2047, 2 ** 29 - 1, 2 ** 29, 2 ** 40])
    first = np.array([True] + [False] * 11)
    assert gap_bucket(gaps, first).tolist() == [0, 1, 2, 3, 3, 4, 11, 12, 12, 30, 31, 31]
    assert gap_bucket(gaps, first, num_buckets=8).tolist() == [0, 1, 2, 3, 3, 4, 7, 7, 7, 7, 7, 7]
    # Every bucket b >= 2 holds gaps in [2^(b-2), 2^(b-1)).
    g = np.arange(1, 1 << 16)
    b = gap_bucket(g, np.zeros(len(g), bool))
    assert np.all(2.0 ** (b - 2) <= g) and np.all(g < 2.0 ** (b - 1))


def test_price_buckets():
    price = np.array([np.nan, -3.0, 0.0, 1.0, 1.99, 2.0, 12.5, 0.001, 1e-300, 2.0 ** 23, 1e12, np.inf])
    assert price_bucket(price).tolist() == [0, 0, 0, 8, 8, 9, 11, 1, 1, 31, 31, 0]
    # Every bucket b in 2..29 holds prices in [2^(b-8), 2^(b-7)); the draw covers exactly those.
    p = np.exp(np.random.default_rng(0).uniform(np.log(2.0 ** -6), np.log(2.0 ** 22), 10_000))
    b = price_bucket(p)
    assert np.all(2.0 ** (b - 8) <= p) and np.all(p < 2.0 ** (b - 7)) and np.unique(b).tolist() == list(range(2, 30))


def test_reference_log_has_what_the_tests_need(log):
    """Guards the fixtures: the tests above are only meaningful with purchases, priced and not."""
    buys = log["event"] == BUY
    assert buys.sum() > 50 and np.isnan(log["price"][buys]).any() and np.isfinite(log["price"][buys]).any()
    by_user = defaultdict(int)
    for u in log["user"][buys].tolist():
        by_user[u] += 1
    assert max(by_user.values()) > 2
