"""E-commerce format readers (taobao, retailrocket, yoochoose, diginetica, otto, cdnow).

Real files from ../shared/data are checked against published figures and against a slow pure-Python
count made here; formats without a real file are checked on small files written in the official schema.
"""

import collections
import datetime as dt
import json

import numpy as np
import pytest
from conftest import missing_shared_data

from seqjax.data.clean import RowRules, validate
from seqjax.data.formats import (
    PrepareError,
    read_cdnow,
    read_diginetica,
    read_otto,
    read_retailrocket,
    read_taobao,
    read_yoochoose,
)
from seqjax.data.prepare import PrepareConfig, prepare
from seqjax.data.schema import EVENT_ID
from seqjax.data.timestamps import parse_time

RANGE = (parse_time("1990-01-01", "t"), parse_time("2030-01-01", "t"))


def shared_file(shared_data_dir, relative):
    path = shared_data_dir / relative
    if not path.is_file():
        missing_shared_data(f"{path} not found: the shared data folder is incomplete")
    return path


def physical_lines(path):
    """[(1-based line number, text)] of non-blank lines, the slow way."""
    text = path.read_text(encoding="utf-8-sig")
    return [(i, ln.rstrip("\r")) for i, ln in enumerate(text.split("\n"), start=1) if ln.strip()]


def clean(*tables):
    return validate(list(tables), RowRules(time_range=RANGE))


def run_prepare(fmt, inputs, out, **kw):
    return prepare(PrepareConfig(format=fmt, inputs=tuple(str(p) for p in inputs), out=str(out),
                                 max_timestamp="2030-01-01", **kw), echo=False)


def unix(text):
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


# --- taobao -------------------------------------------------------------------------------------------------


def test_taobao_real_head(shared_data_dir):
    path = shared_file(shared_data_dir, "taobao_userbehavior_head/UserBehavior_head.csv")
    t = read_taobao(path)
    rows = [(n, ln.split(",")) for n, ln in physical_lines(path)]
    good = [f for _, f in rows if len(f) == 5]
    assert len(t.line) == len(good) == 84_475
    assert t.bad_lines.tolist() == [n for n, f in rows if len(f) != 5] == [84_476]  # the cut-off last line
    assert t.bad_fields.tolist() == [4] and t.rows_read == 84_476
    assert len(set(t.user.to_pylist())) == len({f[0] for f in good}) == 815
    assert len(set(t.item.to_pylist())) == len({f[1] for f in good}) == 55_368
    assert len(set(t.category.to_pylist())) == len({f[2] for f in good}) == 2_914
    events = collections.Counter(t.event.to_pylist())
    assert events == collections.Counter(f[3] for f in good)
    assert events == {"pv": 75_872, "cart": 4_497, "fav": 2_356, "buy": 1_750}  # README's pv count has the cut row
    assert t.timestamp.to_pylist() == [f[4] for f in good]


def test_taobao_prepare_end_to_end(shared_data_dir, tmp_path):
    path = shared_file(shared_data_dir, "taobao_userbehavior_head/UserBehavior_head.csv")
    meta = run_prepare("taobao", [path], tmp_path / "o")
    good = [f for _, ln in physical_lines(path) if len(f := ln.split(",")) == 5]
    keys = [(f[0], f[1], int(f[4]), f[3]) for f in good]
    report = meta["report"]
    assert report["rows_read"] == 84_476
    assert report["dropped"]["wrong_column_count"] == 1
    assert report["dropped"]["duplicate"] == len(keys) - len(set(keys))
    assert sum(report["dropped"].values()) == 1 + len(keys) - len(set(keys))
    assert report["rows_kept"] == len(set(keys))
    assert report["first_seen"]["wrong_column_count"].endswith("line 84476")
    assert (meta["num_users"], meta["num_items"], meta["num_categories"]) == (815, 55_368, 2_914)
    assert meta["timestamp_unit"] == "s" and meta["has_event_types"] is True
    with pytest.raises(PrepareError, match=r"UserBehavior_head.csv, line 84476: wrong_column_count: expected 5"):
        run_prepare("taobao", [path], tmp_path / "strict", strict=True)


def test_taobao_header_line_is_skipped_and_ids_may_be_non_ascii(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    path.write_text("user_id,item_id,category_id,behavior_type,timestamp\n"
                    "用户,商品,类目,pv,1511544070\nü,é,c,buy,1511544071,extra\n")
    t = read_taobao(path)
    assert t.user.to_pylist() == ["用户"] and t.item.to_pylist() == ["商品"] and t.line.tolist() == [2]
    assert t.bad_lines.tolist() == [3] and t.bad_fields.tolist() == [6]


# --- retailrocket (no real file: the official schema) --------------------------------------------------------


RETAILROCKET = ("timestamp,visitorid,event,itemid,transactionid\n"
                "1433221332117,257597,view,355908,\n"
                "1433224214164,992329,addtocart,248676,\n"
                "\n"
                "1433221999827,111016,transaction,7943,4000\n"
                "1433223236124,访客,view,商品,\n"
                "1433221955914,483717,view\n")


def test_retailrocket_official_schema(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(RETAILROCKET)
    t = read_retailrocket(path)
    assert t.user.to_pylist() == ["257597", "992329", "111016", "访客"]
    assert t.item.to_pylist() == ["355908", "248676", "7943", "商品"]
    assert t.line.tolist() == [2, 3, 5, 6] and t.blank_lines == 1
    assert t.bad_lines.tolist() == [7] and t.bad_fields.tolist() == [3] and t.expected_fields == 5
    events, report, unit = clean(t)
    assert unit == "ms"
    assert events.timestamp.tolist() == [1433221332, 1433224214, 1433221999, 1433223236]
    assert events.event.tolist() == [EVENT_ID["view"], EVENT_ID["cart"], EVENT_ID["purchase"], EVENT_ID["view"]]
    assert report.dropped["wrong_column_count"] == 1 and report.rows_kept == 4


def test_retailrocket_columns_found_by_name(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("itemid,event,visitorid,timestamp\n7,view,u,1433221332117\n")
    t = read_retailrocket(path)
    assert (t.user.to_pylist(), t.item.to_pylist(), t.timestamp.to_pylist()) == (["u"], ["7"], ["1433221332117"])


# --- yoochoose -------------------------------------------------------------------------------------------------


YC_DIR = "yoochoose_clicks_100k"
YC_FILES = ("yoochoose-clicks-100k_train_full.txt", "yoochoose-clicks-100k_test.txt")


def test_yoochoose_preprocessed_real(shared_data_dir):
    expected = {YC_FILES[0]: (70_278, 17_794), YC_FILES[1]: (13_568, 3_416)}
    for name in YC_FILES:
        path = shared_file(shared_data_dir, f"{YC_DIR}/{name}")
        t = read_yoochoose(path)
        lines = physical_lines(path)
        assert lines[0][1] == "SessionId\tItemId\tTime"
        rows = [ln.split("\t") for _, ln in lines[1:]]
        assert all(len(r) == 3 for r in rows) and len(t.bad_lines) == 0
        assert (len(t.line), len(set(t.user.to_pylist()))) == (len(rows), len({r[0] for r in rows})) == expected[name]
        assert t.item.to_pylist() == [r[1] for r in rows] and t.timestamp.to_pylist() == [r[2] for r in rows]
        assert set(t.event.to_pylist()) == {"view"} and t.line[0] == 2


def test_yoochoose_prepare_end_to_end(shared_data_dir, tmp_path):
    paths = [shared_file(shared_data_dir, f"{YC_DIR}/{name}") for name in YC_FILES]
    meta = run_prepare("yoochoose", paths, tmp_path / "o")
    rows = [ln.split("\t") for p in paths for _, ln in physical_lines(p)[1:]]
    # exact duplicates: same time to the millisecond (190 more repeats share a second at different milliseconds)
    keys = [(r[0], r[1], round(float(r[2]) * 1000)) for r in rows]
    report = meta["report"]
    assert report["rows_read"] == len(rows) == 83_846
    assert report["dropped"]["duplicate"] == len(keys) - len(set(keys))
    assert report["rows_kept"] == len(set(keys)) and sum(report["dropped"].values()) == len(keys) - len(set(keys))
    assert (meta["num_users"], meta["num_items"]) == (21_210, 2_933)  # sessions are the users
    assert meta["timestamp_unit"] == "s"


def write_official_yoochoose(tmp_path):
    clicks = tmp_path / "yoochoose-clicks.dat"
    clicks.write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n"
                      "1,2014-04-07T10:54:09.868Z,214536500,S\n"
                      "会话,2014-04-07T10:55:00.000Z,214536506,2053186823\n"
                      "2,2014-04-06T18:44:58.314Z,214537888,3\n"
                      "2,2014-04-06T18:45:00.000Z,214537888\n")  # a cut-off line
    buys = tmp_path / "yoochoose-buys.dat"
    buys.write_text("2,2014-04-06T18:46:12.000Z,214537888,12462,1\n"
                    "1,2014-04-07T10:56:00.000Z,214536500,0,0\n")
    return clicks, buys


def test_yoochoose_official_files_by_role(tmp_path):
    clicks, buys = write_official_yoochoose(tmp_path)
    c = read_yoochoose(clicks, "clicks")
    assert c.user.to_pylist() == ["1", "1", "会话", "2"]
    assert c.category.to_pylist() == ["", "S", "2053186823", "3"]  # 0 = missing
    assert c.bad_lines.tolist() == [5] and c.bad_fields.tolist() == [3] and c.price is None
    b = read_yoochoose(buys, "buys")
    assert b.price.to_pylist() == ["12462", "0"] and b.quantity.to_pylist() == ["1", "0"]
    assert b.category is None and b.line.tolist() == [1, 2]
    events, report, unit = clean(c, b)
    assert unit == "iso"
    assert events.timestamp.tolist()[:2] == [unix("2014-04-07T10:51:09"), unix("2014-04-07T10:54:09")]
    assert events.event.tolist() == [EVENT_ID["view"]] * 4 + [EVENT_ID["purchase"]] * 2
    assert report.dropped["wrong_column_count"] == 1


def test_yoochoose_prepare_with_roles(tmp_path):
    clicks, buys = write_official_yoochoose(tmp_path)
    meta = run_prepare("yoochoose", [f"clicks={clicks}", f"buys={buys}"], tmp_path / "o")
    assert [f["role"] for f in meta["inputs"]] == ["clicks", "buys"]
    assert meta["report"]["rows_read"] == 7 and meta["report"]["rows_kept"] == 6
    assert meta["report"]["dropped"]["wrong_column_count"] == 1
    assert meta["num_users"] == 3 and meta["num_categories"] == 3


def test_yoochoose_official_file_without_role_says_how(tmp_path):
    clicks, _ = write_official_yoochoose(tmp_path)
    with pytest.raises(PrepareError, match="--input clicks=") as e:
        read_yoochoose(clicks)
    assert str(clicks) in str(e.value) and "\n" not in str(e.value)


def test_role_of_another_format_is_an_error(tmp_path):
    clicks, _ = write_official_yoochoose(tmp_path)
    with pytest.raises(PrepareError, match="'clicks' is for --format yoochoose"):
        run_prepare("taobao", [f"clicks={clicks}"], tmp_path / "o")


# --- diginetica ------------------------------------------------------------------------------------------------


def test_diginetica_real_sample(shared_data_dir):
    path = shared_file(shared_data_dir, "diginetica_sample/sample_train-item-views.csv")
    t = read_diginetica(path)
    lines = physical_lines(path)
    assert lines[0][1] == "session_id;user_id;item_id;timeframe;eventdate"
    rows = [ln.split(";") for _, ln in lines[1:]]
    # README says 12,390 rows; the file has 12,391 data lines (7,681 with user_id NA, as README says).
    assert len(t.line) == len(rows) == 12_391 and sum(r[1] == "NA" for r in rows) == 7_681
    assert len(t.bad_lines) == 0 and t.line[0] == 2
    assert len(set(t.user.to_pylist())) == len({r[0] for r in rows}) == 2_986
    assert len(set(t.item.to_pylist())) == len({r[2] for r in rows}) == 7_139
    expected_ms = [unix(r[4]) * 1000 + int(r[3]) for r in rows]
    assert t.timestamp.to_pylist() == expected_ms
    events, report, unit = clean(t)
    assert unit == "ms" and report.rows_kept == len(rows)
    assert events.timestamp.tolist() == [ms // 1000 for ms in expected_ms]


def test_diginetica_camel_case_header_and_bad_times(tmp_path):
    path = tmp_path / "train-item-views.csv"
    path.write_text("sessionId;userId;itemId;timeframe;eventdate\n"
                    "1;NA;81766;526309;2016-05-09\n"
                    "1;NA;31331;x;2016-05-09\n"        # timeframe not a number
                    "2;5;32118;10;2016-02-30\n"        # no such day
                    "2;5;32119;10;2016-5-9\n"          # not YYYY-MM-DD
                    "3;NA;1;2\n")                       # 4 fields
    t = read_diginetica(path)
    assert t.timestamp.to_pylist() == [unix("2016-05-09") * 1000 + 526309, None, None, None]
    assert t.bad_lines.tolist() == [6]
    _, report, _ = clean(t)
    assert report.dropped["bad_timestamp"] == 3 and report.rows_kept == 1


# --- otto ------------------------------------------------------------------------------------------------------


def test_otto_real_first_sessions(shared_data_dir):
    path = shared_file(shared_data_dir, "otto_first20_sessions/train_first20.jsonl")
    t = read_otto(path)
    sessions = [(n, json.loads(ln)) for n, ln in physical_lines(path)]
    events = [(n, str(s["session"]), e) for n, s in sessions for e in s["events"]]
    assert len(t.line) == len(events) == 862 and len(sessions) == 20 and len(t.bad_lines) == 0
    assert t.line.tolist() == [n for n, _, _ in events]
    assert t.user.to_pylist() == [s for _, s, _ in events]
    assert t.item.to_pylist() == [str(e["aid"]) for _, _, e in events]
    assert t.timestamp.to_pylist() == [str(e["ts"]) for _, _, e in events]
    assert collections.Counter(t.event.to_pylist()) == collections.Counter(e["type"] for _, _, e in events)
    slow = read_otto(path, fast=False)
    for name in ("user", "item", "timestamp", "event"):
        assert getattr(slow, name).to_pylist() == getattr(t, name).to_pylist()
    assert slow.line.tolist() == t.line.tolist()


def test_otto_prepare_end_to_end(shared_data_dir, tmp_path):
    path = shared_file(shared_data_dir, "otto_first20_sessions/train_first20.jsonl")
    meta = run_prepare("otto", [path], tmp_path / "o")
    events = [(s["session"], e) for _, ln in physical_lines(path) for s in [json.loads(ln)] for e in s["events"]]
    keys = [(s, e["aid"], e["ts"] // 1000, e["type"]) for s, e in events]
    report = meta["report"]
    assert report["rows_read"] == 862
    assert report["dropped"]["duplicate"] == len(keys) - len(set(keys))
    assert report["rows_kept"] == len(set(keys)) and sum(report["dropped"].values()) == len(keys) - len(set(keys))
    assert (meta["num_users"], meta["num_items"]) == (20, len({e["aid"] for _, e in events}))
    assert meta["timestamp_unit"] == "ms"


OTTO_LINES = [
    ('{"session": 1, "events": [{"aid": 10, "ts": 1659304800025, "type": "clicks"}, '
     '{"aid": 11, "ts": 1659304900000, "type": "carts"}]}'),
    '',
    '{"session": 2, "events": [{"aid": 12, "ts": 1659304800025, "type": "orders"}',  # cut off: bad JSON
    '{"session": "会话", "events": [{"aid": "商品", "ts": 1659304800025, "type": "clicks"}]}',  # string ids
    '{"session": 4, "events": [{"aid": 13, "type": "clicks"}, null]}',  # no ts; a null event
    '{"session": 5}',  # no events list
    '[1, 2]',  # not an object
    '{"session": 6, "events": [{"aid": true, "ts": 1, "type": "clicks"}]}',  # a boolean id
    '{"session": 7, "events": []}',  # an empty session: no rows, nothing lost
    '{"session": 8, "events": [{"aid": 14, "ts": 1659304800025, "type": "clicks"}]} {"session": 9, "events": []}',
]


def test_otto_malformed_lines_are_listed(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(OTTO_LINES) + "\n")
    t = read_otto(path)
    assert t.bad_lines.tolist() == [3, 6, 7, 8, 10] and t.blank_lines == 1
    assert t.line.tolist() == [1, 1, 4, 5, 5]
    assert t.user.to_pylist() == ["1", "1", "会话", "4", "4"]
    assert t.item.to_pylist() == ["10", "11", "商品", "13", ""]
    assert t.timestamp.to_pylist() == ["1659304800025", "1659304900000", "1659304800025", "", ""]
    _, report, _ = clean(t)
    assert report.dropped["wrong_column_count"] == 5 and report.dropped["empty_item_id"] == 1
    assert report.dropped["bad_timestamp"] == 1 and report.rows_kept == 3


def test_otto_fast_and_slow_paths_agree_block_by_block(tmp_path, monkeypatch):
    from seqjax.data.formats import base
    lines = OTTO_LINES[:2] + OTTO_LINES[3:5] + OTTO_LINES[8:9] + [
        json.dumps({"session": k, "events": [{"aid": k * 7 % 5, "ts": 1659304800000 + k, "type": "carts"}] * (k % 3)})
        for k in range(41)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    whole = read_otto(path)
    monkeypatch.setattr(base, "BLOCK_BYTES", 50)  # many blocks: some parse fast, the one with string ids slowly
    pieces = read_otto(path)
    slow = read_otto(path, fast=False)
    for t in (pieces, slow):
        for name in ("user", "item", "timestamp", "event"):
            assert getattr(t, name).to_pylist() == getattr(whole, name).to_pylist()
        assert t.line.tolist() == whole.line.tolist() and t.blank_lines == whole.blank_lines == 1
    assert len(whole.line) == 2 + 1 + 2 + sum(k % 3 for k in range(41)) and whole.line[-1] == len(lines)


def test_otto_bad_json_under_strict_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(OTTO_LINES[:3]) + "\n")
    with pytest.raises(PrepareError, match=r"train.jsonl, line 3: wrong_column_count") as e:
        run_prepare("otto", [path], tmp_path / "o", strict=True)
    assert "\n" not in str(e.value)
    meta = run_prepare("otto", [path], tmp_path / "o")
    assert meta["report"]["dropped"]["wrong_column_count"] == 1 and meta["report"]["rows_kept"] == 2


# --- cdnow -----------------------------------------------------------------------------------------------------


def test_cdnow_real_master(shared_data_dir):
    path = shared_file(shared_data_dir, "cdnow/CDNOW_master.txt")
    t = read_cdnow(path)
    lines = physical_lines(path)
    assert lines[0][1].split() == ["customer_id", "date", "number_of_cds", "dollar_value"]
    rows = [ln.split() for _, ln in lines[1:]]
    assert len(t.line) == len(rows) == 69_659 and len(t.bad_lines) == 0 and t.line[0] == 2
    assert len(set(t.user.to_pylist())) == len({r[0] for r in rows}) == 23_570
    assert set(t.item.to_pylist()) == {"cd"} and set(t.event.to_pylist()) == {"purchase"}
    assert t.quantity.to_pylist() == [r[2] for r in rows] and t.price.to_pylist() == [r[3] for r in rows]
    assert t.timestamp.to_pylist() == [f"{r[1][:4]}-{r[1][4:6]}-{r[1][6:]}" for r in rows]
    events, report, unit = clean(t)
    assert unit == "iso" and report.rows_kept == 69_659
    assert events.timestamp.min() == unix("1997-01-01") and events.timestamp.max() == unix("1998-06-30")


def test_cdnow_without_header(tmp_path):
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(" 00001 19970101  1   11.77\r\n 00002 19970112  1   12.00\r\n 00002 1997011  5\r\n"
                    " 00003 19971301  2   20.00\r\n")
    t = read_cdnow(path)
    assert t.user.to_pylist() == ["00001", "00002", "00003"] and t.line.tolist() == [1, 2, 4]
    assert t.bad_lines.tolist() == [3] and t.bad_fields.tolist() == [3]
    _, report, _ = clean(t)
    assert report.dropped["bad_timestamp"] == 1  # month 13


# --- errors every reader shares -----------------------------------------------------------------------------------


READERS = {"taobao": read_taobao, "retailrocket": read_retailrocket, "yoochoose": read_yoochoose,
           "diginetica": read_diginetica, "otto": read_otto, "cdnow": read_cdnow}


@pytest.mark.parametrize("name", sorted(READERS))
def test_missing_and_empty_files_are_one_line_errors(tmp_path, name):
    with pytest.raises(PrepareError, match="not found") as e:
        READERS[name](tmp_path / "nope.csv")
    assert "nope.csv" in str(e.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PrepareError, match="empty") as e:
        READERS[name](tmp_path / "empty.csv")
    assert "empty.csv" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name, header, column", [
    ("retailrocket", "timestamp,visitorid,event,transactionid", "itemid"),
    ("diginetica", "session_id;user_id;item_id;eventdate", "timeframe"),
    ("yoochoose", "SessionId\tTime", "itemid"),
])
def test_missing_header_column_names_file_and_column(tmp_path, name, header, column):
    path = tmp_path / "in.csv"
    path.write_text(header + "\n1,2,3,4\n")
    with pytest.raises(PrepareError, match=f"missing column '{column}'") as e:
        READERS[name](path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_rows_read_equals_kept_plus_dropped_for_every_reader(tmp_path):
    """The accounting identity on the generated files: nothing is silently lost."""
    rr = tmp_path / "events.csv"
    rr.write_text(RETAILROCKET)
    clicks, buys = write_official_yoochoose(tmp_path)
    otto = tmp_path / "train.jsonl"
    otto.write_text("\n".join(OTTO_LINES) + "\n")
    for table in (read_retailrocket(rr), read_yoochoose(clicks, "clicks"), read_yoochoose(buys, "buys"),
                  read_otto(otto)):
        _, report, _ = clean(table)
        assert report.rows_kept + sum(report.dropped.values()) == report.rows_read == table.rows_read
        assert np.all(np.diff(table.line) >= 0)
