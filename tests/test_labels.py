"""Purchase and churn labels: a slow reference, the global time rule, the data's range, CDNOW and Taobao."""

import dataclasses
import datetime as dt
from collections import defaultdict
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from conftest import missing_shared_data

from seqjax.config import ConfigError, from_dict
from seqjax.data.formats.base import PrepareError
from seqjax.data.labels import (
    DAY,
    Cutoffs,
    TaskConfig,
    build_examples,
    check_time_rule,
    customer_split,
    data_range,
    resolve_cutoffs,
)
from seqjax.data.schema import EVENT_ID, SPLITS
from seqjax.data.synthetic import simulate

EPOCH = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp())
BUY = EVENT_ID["purchase"]


def shop_log(num_users=120, seed=0, days=20.0, mean_events=40.0):
    """The synthetic shop log as schema ids: items 1..V, EVENT_ID events, categories 1..C, unix seconds."""
    log = simulate(num_users=num_users, num_items=150, num_categories=8, seed=seed, days=days,
                   mean_events=mean_events)
    return {"user": log["user"], "item": log["item"] + 1, "ts": log["timestamp"] + EPOCH,
            "event": log["event"].astype(np.int64) + 1, "category": log["category"] + 1}


@pytest.fixture(scope="module")
def log():
    return shop_log()


def reference(log, cutoffs: Cutoffs, cfg: TaskConfig):
    """Loops over cutoffs and users: (rows of (cutoff, user, item, split, label), excluded counts per cutoff)."""
    h, window = cfg.horizon_s, cfg.window_s
    by_user = defaultdict(list)
    for u, i, t, e in zip(*(log[k].tolist() for k in ("user", "item", "ts", "event"))):
        by_user[u].append((t, i, e))
    rows, excluded = [], []
    for c, split in zip(cutoffs.times.tolist(), cutoffs.splits):
        lo = -10**18 if window is None else c - window
        none_before = none_in_window = 0
        for u in sorted(by_user):
            events = by_user[u]
            seen = [(t, i, e) for t, i, e in events if lo <= t < c]
            if not any(t < c for t, _, _ in events):
                none_before += 1
                continue
            if not seen:
                none_in_window += 1
                continue
            future = [(t, i, e) for t, i, e in events if c <= t < c + h]
            s = SPLITS.index(split) if split in SPLITS else int(customer_split(np.array([u]), cfg.seed,
                                                                              cfg.valid_share, cfg.test_share)[0])
            if cfg.task == "churn":
                rows.append((c, u, 0, s, int(not future)))
            elif cfg.level == "user":
                rows.append((c, u, 0, s, int(any(e == BUY for _, _, e in future))))
            else:
                for it in sorted({i for _, i, _ in seen}):
                    rows.append((c, u, it, s, int(any(e == BUY and i == it for _, i, e in future))))
        excluded.append({"no_events_before_cutoff": none_before, "no_events_in_feature_window": none_in_window})
    return rows, excluded


def rows_of(ex):
    return list(zip(ex.cutoff.tolist(), ex.user.tolist(), ex.item.tolist(), ex.split.tolist(), ex.label.tolist()))


@pytest.mark.parametrize("cfg", [
    TaskConfig(horizon="2d"),
    TaskConfig(horizon="2d", feature_window="3d", stride_days=2),
    TaskConfig(level="user_item", horizon="3d", feature_window="4d"),
    TaskConfig(level="user_item", horizon="12h"),
    TaskConfig(task="churn", horizon="2d", feature_window="2d"),
    TaskConfig(task="churn", horizon="1d", timezone="Asia/Shanghai", num_train_cutoffs=6),
    TaskConfig(horizon="5d", split_mode="customer_disjoint", seed=3, valid_share=0.2, test_share=0.3),
], ids=lambda c: f"{c.task}-{c.level}-{c.horizon}-{c.feature_window}-{c.split_mode}")
def test_labels_match_slow_reference(log, cfg):
    # Shuffled rows: the result must not depend on the input order.
    perm = np.random.default_rng(1).permutation(len(log["user"]))
    shuffled = {k: v[perm] for k, v in log.items()}
    ex = build_examples(shuffled["user"], shuffled["item"], shuffled["ts"], shuffled["event"], None, cfg)
    rows, excluded = reference(log, ex.cutoffs, cfg)
    assert rows_of(ex) == rows
    assert [c["excluded_users"] for c in ex.counts] == excluded
    assert sum(c["examples"] for c in ex.counts) == len(ex)
    assert 0 < ex.label.sum() < len(ex), "a reference test needs both classes"
    if cfg.level == "user":
        assert not ex.item.any()


def test_excluded_users_are_counted_by_reason():
    # Days: u0 acts on 0, 4, 6; u1 only on day 0; u2 on 5 and 7. Cutoffs days 4, 5, 6; 2-day window.
    ts = EPOCH + DAY * np.array([0, 4, 6, 0, 5, 7])
    user = np.array([0, 0, 0, 1, 2, 2])
    cfg = TaskConfig(horizon="1d", feature_window="2d", cutoffs=("2024-01-05", "2024-01-06", "2024-01-07"))
    ex = build_examples(user, np.ones(6, np.int64), ts, np.full(6, BUY), None, cfg)
    assert [c["excluded_users"] for c in ex.counts] == [
        {"no_events_before_cutoff": 1, "no_events_in_feature_window": 2},  # day 4: u2 unseen; u0, u1 only day 0
        {"no_events_before_cutoff": 1, "no_events_in_feature_window": 1},  # day 5: u2's day-5 event is not before
        {"no_events_before_cutoff": 0, "no_events_in_feature_window": 1}]  # day 6: only u1 is out
    assert rows_of(ex) == [(EPOCH + 5 * DAY, 0, 0, 1, 0),
                           (EPOCH + 6 * DAY, 0, 0, 2, 1), (EPOCH + 6 * DAY, 2, 0, 2, 0)]
    assert [c["examples"] for c in ex.counts] == [0, 1, 2]


def test_label_window_edges():
    """[cutoff, cutoff + horizon): a purchase at the cutoff counts, one at cutoff + horizon does not."""
    c, h = EPOCH + 5 * DAY + 12 * 3600, 3600
    cfg = TaskConfig(task="purchase", horizon="1h", cutoffs=(str(c - 2 * h), str(c), str(c + 2 * h)))
    user = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    ts = np.array([c - 1, c, c - 1, c + h, c - 1, c + h - 1, c - 1, c - 1])
    event = np.array([1, BUY, 1, BUY, 1, BUY, 1, BUY])
    ex = build_examples(user, np.ones(8, np.int64), ts, event, None, cfg)
    assert ex.label[ex.cutoff == c].tolist() == [1, 0, 1, 0]
    churn = build_examples(user, np.ones(8, np.int64), ts, event, None, dataclasses.replace(cfg, task="churn"))
    assert churn.label[churn.cutoff == c].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Shanghai", "America/New_York"])
@pytest.mark.parametrize("horizon,stride,n", [("1d", 1, 4), ("2d", 3, 3), ("36h", 1, 2), ("5d", 2, 1)])
def test_generated_cutoffs_keep_the_global_time_rule(log, timezone, horizon, stride, n):
    cfg = TaskConfig(horizon=horizon, stride_days=stride, num_train_cutoffs=n, timezone=timezone)
    cut = resolve_cutoffs(log["ts"], cfg)
    h, times = cfg.horizon_s, cut.times.tolist()
    start, end = data_range(log["ts"], timezone)
    assert cut.splits == ("train",) * n + ("valid", "test")
    valid, test = times[-2], times[-1]
    assert all(c + h <= valid for c in times[:-2])
    assert valid + h <= test and test + h <= end and times[0] > start
    # As late as the rule allows: one more day would break it.
    assert test + DAY + h > end and valid + DAY + h > test and times[-3] + DAY + h > valid
    assert np.all(np.diff(times[:-2]) == stride * DAY)  # no daylight-saving change in January
    for t in times:  # local midnights
        local = dt.datetime.fromtimestamp(t, ZoneInfo(timezone))
        assert (local.hour, local.minute, local.second) == (0, 0, 0)


def test_explicit_cutoffs_that_break_the_time_rule_are_refused(log):
    ok = TaskConfig(horizon="2d", cutoffs=("2024-01-08", "2024-01-10", "2024-01-12", "2024-01-14"))
    assert resolve_cutoffs(log["ts"], ok).splits == ("train", "train", "valid", "test")
    bad = TaskConfig(horizon="2d", cutoffs=("2024-01-08", "2024-01-11", "2024-01-12", "2024-01-13"))
    with pytest.raises(PrepareError) as err:
        resolve_cutoffs(log["ts"], bad)
    msg = str(err.value)
    assert "global time rule" in msg
    assert "training cutoff 2024-01-11T00:00:00+00:00" in msg and "validation cutoff 2024-01-12" in msg
    assert "validation cutoff 2024-01-12T00:00:00+00:00 (label window to 2024-01-14" in msg
    assert "2024-01-08T" not in msg  # the cutoff that keeps the rule is not named
    with pytest.raises(PrepareError, match="strictly increasing"):
        resolve_cutoffs(log["ts"], TaskConfig(cutoffs=("2024-01-09", "2024-01-08", "2024-01-12")))
    with pytest.raises(PrepareError, match="training cutoff .* ends after the validation cutoff"):
        check_time_rule([0, 10, 20], ["train", "valid", "test"], 11, "UTC")


def test_cutoffs_outside_the_data_and_too_long_horizons_are_clear_errors(log):
    start, end = data_range(log["ts"], "UTC")
    assert (start, end) == (EPOCH, EPOCH + 19 * DAY)  # whole days: the first event's to the last's
    span = r"the data covers 2024-01-01T00:00:00\+00:00 .. 2024-01-20T00:00:00\+00:00 \(19 days in UTC\)"
    for c in ("2023-12-31", "2024-01-01", "2030-01-01"):
        with pytest.raises(PrepareError, match="outside the data's time range: " + span):
            resolve_cutoffs(log["ts"], TaskConfig(cutoffs=("2024-01-05", "2024-01-07", c)))
    last_day = dt.datetime.fromtimestamp(end - DAY, dt.UTC).date().isoformat()
    with pytest.raises(PrepareError, match=f"task.horizon: 2d after cutoff {last_day}.*after the data ends: {span}"):
        resolve_cutoffs(log["ts"], TaskConfig(horizon="2d", cutoffs=("2024-01-05", "2024-01-07", last_day)))
    with pytest.raises(PrepareError, match="need more data .*" + span + ".*lower task.num_train_cutoffs"):
        resolve_cutoffs(log["ts"], TaskConfig(horizon="3d", num_train_cutoffs=5, stride_days=3))
    with pytest.raises(PrepareError, match="no history before the calibration/holdout cutoff"):
        resolve_cutoffs(log["ts"], TaskConfig(horizon="30d", split_mode="customer_disjoint"))


@pytest.mark.parametrize("change,field", [
    (dict(horizon="1 day"), "task.horizon"), (dict(horizon="0d"), "task.horizon"),
    (dict(feature_window="7"), "task.feature_window"), (dict(session_gap="-3m"), "task.session_gap"),
    (dict(task="churn", level="user_item"), "task.level"), (dict(level="item"), "task.level"),
    (dict(task="return"), "task.task"), (dict(split_mode="random"), "task.split_mode"),
    (dict(num_train_cutoffs=0), "task.num_train_cutoffs"), (dict(stride_days=0), "task.stride_days"),
    (dict(timezone="Mars/Olympus"), "task.timezone"), (dict(valid_share=1.2), "task.valid_share"),
    (dict(valid_share=0.5, test_share=0.5), "task.valid_share + task.test_share"),
    (dict(cutoffs=("2024-01-05", "2024-01-07")), "task.cutoffs"), (dict(cutoffs=("soon",)), "task.cutoffs"),
    (dict(split_mode="customer_disjoint", cutoffs=("2024-01-05", "2024-01-07")), "task.cutoffs"),
])
def test_validate_names_the_field(change, field):
    with pytest.raises(ValueError, match="^" + field.replace("+", r"\+") + ": "):
        TaskConfig(**change).validate()
    TaskConfig().validate()


def test_task_config_loads_from_a_mapping():
    cfg = from_dict(TaskConfig, {"task": "churn", "horizon": "7d",
                                 "cutoffs": [dt.date(2024, 1, 5), 1704844800, "2024-01-12"],  # YAML gives dates
                                 "feature_window": "14d"})
    assert cfg.cutoffs == ("2024-01-05", "1704844800", "2024-01-12") and cfg.window_s == 14 * DAY
    with pytest.raises(ConfigError, match="task.horizon"):
        from_dict(TaskConfig, {"horizon": "seven days"})


def test_explicit_cutoffs_are_local_times_in_the_timezone(log):
    cfg = TaskConfig(timezone="Asia/Shanghai", cutoffs=("2024-01-05", "2024-01-07T12:00", "1704844800"))
    times = resolve_cutoffs(log["ts"], cfg).times.tolist()
    assert times == [EPOCH + 4 * DAY - 8 * 3600, EPOCH + 6 * DAY + 4 * 3600, 1704844800]


def test_customer_disjoint_split_is_a_seeded_hash(log):
    cfg = TaskConfig(horizon="5d", split_mode="customer_disjoint", seed=7, valid_share=0.25, test_share=0.25)
    ex = build_examples(log["user"], log["item"], log["ts"], log["event"], None, cfg)
    assert len(ex.cutoffs.times) == 1 and ex.cutoffs.splits == ("by_customer",)
    users = np.arange(20_000)
    split = customer_split(users, 7, 0.25, 0.25)
    assert np.allclose(np.bincount(split) / len(users), [0.5, 0.25, 0.25], atol=0.015)
    assert np.array_equal(split, customer_split(users, 7, 0.25, 0.25))
    assert (split != customer_split(users, 8, 0.25, 0.25)).mean() > 0.4
    assert np.array_equal(ex.split, customer_split(ex.user, 7, 0.25, 0.25))
    proto = ex.protocol()
    assert proto["split_mode"] == "customer_disjoint" and "differ in customers" in proto["customer_split"]
    assert sum(b["examples"] for b in proto["class_balance"].values()) == len(ex)


def test_protocol_card(log):
    cfg = TaskConfig(horizon="2d", feature_window="7d", timezone="Asia/Shanghai")
    ex = build_examples(log["user"], log["item"], log["ts"], log["event"], None, cfg)
    p = ex.protocol()
    assert p["horizon_seconds"] == 2 * DAY and p["feature_window_seconds"] == 7 * DAY
    assert p["timezone"] == "Asia/Shanghai" and p["level"] == "user" and p["split_mode"] == "rolling"
    assert [c["split"] for c in p["cutoffs"]] == ["train"] * 4 + ["valid", "test"]
    assert all(c["iso"].endswith("T00:00:00+08:00") for c in p["cutoffs"])
    for name in SPLITS:
        b = p["class_balance"][name]
        assert b["examples"] == int((ex.split == SPLITS.index(name)).sum()) > 0
        assert b["positives"] == int(ex.label[ex.split == SPLITS.index(name)].sum())
    assert "time_rule" in p and p["seed"] == 0
    t = ex.table()
    assert t.column("split").to_pylist()[-1] == "test" and t.num_rows == len(ex)


def _read_cdnow(path):
    """CDNOW_master.txt -> (customer int64, unix seconds of the day int64, dollars float64)."""
    lines = path.read_text().split("\n")[1:]
    fields = np.array([ln.split() for ln in lines if ln.strip()])
    days = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in fields[:, 1]], "datetime64[D]")
    return fields[:, 0].astype(np.int64), days.astype("datetime64[s]").astype(np.int64), fields[:, 3].astype(float)


def test_cdnow_classic_calibration_holdout(shared_data_dir):
    path = shared_data_dir / "cdnow" / "CDNOW_master.txt"
    if not path.exists():
        missing_shared_data(f"{path} not found")
    user, ts, _ = _read_cdnow(path)
    cfg = TaskConfig(horizon="39w", split_mode="customer_disjoint", seed=0)
    ex = build_examples(user, np.zeros_like(user), ts, np.full(len(user), BUY), None, cfg)
    # 39 weeks of calibration from 1997-01-01, 39 weeks of holdout to the end of 1998-06-30.
    assert ex.cutoffs.data_range == (852076800, 899251200)
    assert ex.cutoffs.times.tolist() == [875664000]  # 1997-10-01
    cutoff = 875664000
    assert len(ex) == len(np.unique(user[ts < cutoff])) == 23_570  # every customer bought in the first quarter
    repeat = np.unique(user[(ts >= cutoff) & (ts < cutoff + 39 * 7 * DAY)])
    assert np.array_equal(ex.user[ex.label == 1], repeat)
    for k in range(3):  # customers in different splits differ by construction; all three are used
        assert 0.05 < np.mean(ex.split == k) < 0.85


def test_taobao_day_grid_in_china_time(shared_data_dir):
    path = shared_data_dir / "taobao_userbehavior_head" / "UserBehavior_head.csv"
    if not path.exists():
        missing_shared_data(f"{path} not found")
    table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=["u", "i", "c", "b", "t"]),
                          parse_options=pcsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
                          convert_options=pcsv.ConvertOptions(column_types={"t": pa.int64()}))
    table = table.filter(table.column("t").is_valid())
    ts = table.column("t").to_numpy()
    event = np.array([{"pv": 1, "cart": 3, "fav": 4, "buy": 5}[b] for b in table.column("b").to_pylist()])
    cfg = TaskConfig(horizon="1d", timezone="Asia/Shanghai")
    ex = build_examples(table.column("u").to_numpy(), table.column("i").to_numpy(), ts, event, None, cfg)
    p = ex.protocol()
    assert [c["iso"][:10] for c in p["cutoffs"]] == ["2017-11-28", "2017-11-29", "2017-11-30", "2017-12-01",
                                                     "2017-12-02", "2017-12-03"]
    assert p["cutoffs"][-1]["iso"] == "2017-12-03T00:00:00+08:00"
    assert p["data_range"]["iso"][1] == "2017-12-04T00:00:00+08:00"
    utc = resolve_cutoffs(ts, TaskConfig(horizon="1d"))
    assert utc.times[-1] - ex.cutoffs.times[-1] == 8 * 3600  # the same calendar day, 8 hours apart
    assert 0 < p["class_balance"]["test"]["positive_rate"] < 0.5
