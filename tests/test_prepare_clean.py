"""Cleaning: every dropped row counted under its reason, --strict line numbers, k-core, cap, duplicates."""

import numpy as np
import pytest

from seqjax.data.clean import (
    REASONS,
    RowRules,
    cap_recent,
    count_out_of_order,
    drop_duplicates,
    k_core,
    sort_by_user_time,
    validate,
)
from seqjax.data.formats import Columns, PrepareError, read_generic
from seqjax.data.prepare import PrepareConfig, prepare
from seqjax.data.schema import EVENT_ID
from seqjax.data.timestamps import parse_time

RANGE = (parse_time("1990-01-01", "t"), parse_time("2030-01-01", "t"))
HEADER = "user_id,item_id,timestamp,event_type\n"
# One row per problem; the comment is the reason it must be counted under.
BAD_ROWS = [
    "u1,i1,1500000000,view",  # ok
    "u1,i2,1500000001",  # wrong_column_count (3 fields)
    "u1,i3,1500000002,view,extra",  # wrong_column_count (5 fields)
    ",i1,1500000003,view",  # empty_user_id
    "u2,,1500000004,view",  # empty_item_id
    "u2,i1,yesterday,view",  # bad_timestamp: text in a numeric field
    "u2,i1,400000000,view",  # timestamp_out_of_range: 1982
    "u2,i1,2000000000,view",  # timestamp_out_of_range: 2033, after the upper bound
    "u2,i1,1500000005,teleport",  # unknown_event_type
    "u1,i1,1500000000,view",  # duplicate of the first row
    "ünïcødé,物品,1500000006,PV",  # ok: non-ASCII ids are valid
    "u1,i1,1500000000,cart",  # ok: same time, other event: not a duplicate
]
EXPECTED = {"wrong_column_count": 2, "empty_user_id": 1, "empty_item_id": 1, "bad_timestamp": 1,
            "timestamp_out_of_range": 2, "unknown_event_type": 1, "duplicate": 1}


def write(tmp_path, rows, name="bad.csv", header=HEADER):
    path = tmp_path / name
    path.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def cfg(path, out, **kw):
    return PrepareConfig(format="generic", inputs=(str(path),), out=str(out), max_timestamp="2030-01-01", **kw)


def test_every_bad_row_is_counted_under_its_reason(tmp_path):
    path = write(tmp_path, BAD_ROWS)
    meta = prepare(cfg(path, tmp_path / "out"), echo=False)
    report = meta["report"]
    assert report["rows_read"] == len(BAD_ROWS)
    assert {r: n for r, n in report["dropped"].items() if n} == EXPECTED
    assert report["rows_kept"] == 3
    assert report["rows_kept"] + sum(report["dropped"].values()) == report["rows_read"]
    assert report["unknown_event_values"] == {"teleport": 1}
    assert report["first_seen"]["bad_timestamp"] == f"{path} line 7"  # header is line 1
    users = (tmp_path / "out/vocab/users.tsv").read_text(encoding="utf-8").splitlines()
    assert "ünïcødé" in {line.split("\t")[1] for line in users[1:]}


@pytest.mark.parametrize("cut, line, reason", [
    (1, 3, "wrong_column_count"),  # rows[1] is physical line 3 (header + first row before it)
    (3, 5, "empty_user_id"),
    (5, 7, "bad_timestamp"),
    (6, 8, "timestamp_out_of_range"),
    (8, 10, "unknown_event_type"),
])
def test_strict_names_file_and_physical_line(tmp_path, cut, line, reason):
    good = [r for r in BAD_ROWS[:1]]
    path = write(tmp_path, good + BAD_ROWS[cut:])
    shift = cut - 1  # rows removed between the first row and the bad one
    with pytest.raises(PrepareError) as e:
        prepare(cfg(path, tmp_path / "out", strict=True), echo=False)
    assert str(e.value).startswith(f"{path}, line {line - shift}: {reason}")


def test_strict_counts_blank_lines_and_reports_the_earliest_bad_row(tmp_path):
    path = tmp_path / "gaps.csv"
    # line 1 header, 2 ok, 3 blank, 4 ok, 5 bad timestamp, 6 wrong columns
    path.write_text(HEADER + "a,x,1500000000,view\n\nb,y,1500000001,view\nc,z,nope,view\nd,w\n")
    with pytest.raises(PrepareError, match=r", line 5: bad_timestamp"):
        prepare(cfg(path, tmp_path / "out", strict=True), echo=False)


def test_strict_on_a_clean_file_succeeds(tmp_path):
    path = write(tmp_path, ["a,x,1500000000,view", "a,y,1500000001,view"])
    assert prepare(cfg(path, tmp_path / "out", strict=True), echo=False)["report"]["rows_kept"] == 2


def test_event_map_and_unknown_events_error(tmp_path):
    path = write(tmp_path, ["a,x,1500000000,Clicked", "a,y,1500000001,ADD_TO_CART", "a,z,1500000002,wish"])
    table = read_generic(path, Columns())
    events, _, _ = validate([table], RowRules(RANGE, event_map={"clicked": "view", "Wish": "favourite"}))
    assert events.event.tolist() == [EVENT_ID["view"], EVENT_ID["cart"], EVENT_ID["favourite"]]
    with pytest.raises(PrepareError, match=r"line 2: unknown event type 'Clicked'"):
        validate([table], RowRules(RANGE, unknown_events="error"))


def events_from(tmp_path, pairs, times=None):
    """Events from (user, item) pairs; times default to the row index (so file order = time order)."""
    times = times if times is not None else range(len(pairs))
    rows = [f"{u},{i},{1500000000 + t},view" for (u, i), t in zip(pairs, times)]
    events, report, _ = validate([read_generic(write(tmp_path, rows, "e.csv"), Columns())], RowRules(RANGE))
    return events, report


def kept_pairs(events):
    users, items = events.user_names.to_pylist(), events.item_names.to_pylist()
    return sorted((users[u], items[i]) for u, i in zip(events.user, events.item))


def test_k_core_fixed_point_differs_from_one_pass(tmp_path):
    # Item y has 2 events, but one is by user c, who has a single event: c goes (min_user 2), then y
    # has 1 event left and goes in the second round, which then leaves user b with 1 event.
    pairs = [("a", "x"), ("a", "x"), ("b", "x"), ("b", "y"), ("c", "y"), ("a", "z"), ("a", "z")]
    events, report = events_from(tmp_path, pairs)
    one = k_core(events, 2, 2, one_pass=True, report=report)
    assert kept_pairs(one) == [("a", "x"), ("a", "x"), ("a", "z"), ("a", "z"), ("b", "x"), ("b", "y")]
    events, report = events_from(tmp_path, pairs)
    fixed = k_core(events, 2, 2, one_pass=False, report=report)
    assert kept_pairs(fixed) == [("a", "x"), ("a", "x"), ("a", "z"), ("a", "z")]
    assert report.dropped["k_core"] == 3 and report.rows_kept == 4
    # The fixed point really is one: every kept user and item meets its threshold.
    assert np.bincount(fixed.user).max(initial=0) >= 2 and (np.bincount(fixed.item)[np.unique(fixed.item)] >= 2).all()


def test_cap_keeps_most_recent_events(tmp_path):
    # User a's events come out of time order in the file; the cap must keep the latest by time.
    pairs = [("a", "i5"), ("a", "i1"), ("b", "j1"), ("a", "i3"), ("a", "i4"), ("a", "i2")]
    events, report = events_from(tmp_path, pairs, times=[5, 1, 0, 3, 4, 2])
    capped = cap_recent(sort_by_user_time(events), 3, report)
    items = capped.item_names.to_pylist()
    a = capped.user_names.to_pylist().index("a")
    assert [items[i] for i in capped.item[capped.user == a]] == ["i3", "i4", "i5"]
    assert report.dropped["cap_recent"] == 2


def test_duplicates_keep_the_first_and_equal_times_keep_file_order(tmp_path):
    pairs = [("a", "x"), ("a", "y"), ("a", "x"), ("a", "z")]
    events, report = events_from(tmp_path, pairs, times=[0, 0, 0, 0])
    deduped = sort_by_user_time(drop_duplicates(events, report))
    items = deduped.item_names.to_pylist()
    assert [items[i] for i in deduped.item] == ["x", "y", "z"]
    assert deduped.order.tolist() == [0, 1, 3]
    assert report.dropped["duplicate"] == 1


def test_reasons_are_stable():
    assert REASONS == ("wrong_column_count", "empty_user_id", "empty_item_id", "bad_timestamp",
                       "timestamp_out_of_range", "unknown_event_type", "duplicate", "k_core", "cap_recent")


def test_out_of_order_events_are_counted_and_sorted(tmp_path):
    # u1 is read 10, 30, 20, 20, 5: the 20s and the 5 follow a later time. u2 is in order; a tie is in order.
    rows = ["u1,a,1500000010,view", "u2,a,1500000001,view", "u1,b,1500000030,view", "u2,b,1500000001,cart",
            "u1,c,1500000020,view", "u1,d,1500000020,view", "u1,e,1500000005,view"]
    meta = prepare(cfg(write(tmp_path, rows), tmp_path / "out"), echo=False)
    assert meta["report"]["out_of_order"] == 3
    assert sum(meta["report"]["dropped"].values()) == 0

    rng = np.random.default_rng(0)
    user, ts, source = rng.integers(0, 20, 500), rng.integers(0, 50, 500), np.sort(rng.integers(0, 3, 500))
    slow = sum(any(user[j] == user[i] and ts[j] > ts[i] for j in range(i)) for i in range(500))
    assert count_out_of_order(user, ts, np.arange(500)) == slow > 0
    per_file = sum(any(user[j] == user[i] and source[j] == source[i] and ts[j] > ts[i] for j in range(i))
                   for i in range(500))
    assert count_out_of_order(user, ts, np.arange(500), source) == per_file < slow


def test_out_of_order_is_counted_within_each_input_file(tmp_path):
    # buys' 20 comes before clicks' 30 (files interleave in time: not counted); buys' 5 after its own 20 counts.
    first = write(tmp_path, ["u1,a,1500000010,view", "u1,b,1500000030,view"], name="clicks.csv")
    second = write(tmp_path, ["u1,c,1500000020,purchase", "u1,d,1500000005,purchase"], name="buys.csv")
    out = tmp_path / "out"
    conf = PrepareConfig(format="generic", inputs=(str(first), str(second)), out=str(out), max_timestamp="2030-01-01")
    assert prepare(conf, echo=False)["report"]["out_of_order"] == 1  # only buys' 5 after its own 20
