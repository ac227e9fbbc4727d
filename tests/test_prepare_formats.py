"""Format readers and timestamp parsing, on small generated files."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqjax.data.clean import RowRules, validate
from seqjax.data.formats import Columns, PrepareError, read_generic, read_movielens, read_sasrec
from seqjax.data.formats.base import read_delimited
from seqjax.data.formats.generic import _column_index, _read_quoted_csv
from seqjax.data.schema import EVENT_ID
from seqjax.data.timestamps import parse_columns, parse_time

RANGE = (parse_time("1990-01-01", "t"), parse_time("2030-01-01", "t"))


def unix(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def clean(table, **rules):
    return validate([table], RowRules(time_range=RANGE, **rules))


def strings(arr) -> list:
    return arr.to_pylist()


def test_generic_csv_fields_and_lines(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,event_type,category_id\n"
                    "u1,i1,1500000000,pv,c1\n"
                    "\n"  # a blank line: not a row, but it still counts for line numbers
                    "u2 , i2 ,1500000001,Buy,\n"
                    "ü,商品,1500000002,cart,c2\n")
    t = read_generic(path, Columns())
    assert strings(t.user) == ["u1", "u2", "ü"]  # fields trimmed; non-ASCII ids are ids
    assert strings(t.item) == ["i1", "i2", "商品"]
    assert t.line.tolist() == [2, 4, 5]
    assert t.blank_lines == 1 and t.rows_read == 3
    events, report, unit = clean(t)
    assert unit == "s"
    assert events.timestamp.tolist() == [1500000000, 1500000001, 1500000002]
    assert events.event.tolist() == [EVENT_ID["view"], EVENT_ID["purchase"], EVENT_ID["cart"]]
    assert events.category.tolist() == [1, 0, 2]  # empty category = none
    assert report.rows_kept == 3


def test_generic_optional_columns_missing_and_tab_delimiter(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("uid\tiid\tts\nA\tX\t2017-11-25T10:00:00Z\nB\tY\t2017-11-25 11:00:00\n")
    t = read_generic(path, Columns(user="uid", item="iid", timestamp="ts"), delimiter="\t")
    assert t.event is None and t.category is None
    events, _, unit = clean(t)
    assert unit == "iso"
    assert events.timestamp.tolist() == [unix("2017-11-25T10:00:00"), unix("2017-11-25T11:00:00")]
    assert events.event.tolist() == [0, 0]


def test_generic_missing_required_column_names_it(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,timestamp\nu,1500000000\n")
    with pytest.raises(PrepareError, match="missing column 'item_id'") as e:
        read_generic(path, Columns())
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_generic_headerless_with_column_names(tmp_path):
    path = tmp_path / "taobao.csv"
    path.write_text("1,10,100,pv,1511544070\n1,11,100,fav,1511544080\n")
    names = ("user_id", "item_id", "category_id", "event_type", "timestamp")
    t = read_generic(path, Columns(), column_names=names)
    assert t.line.tolist() == [1, 2]
    events, _, _ = clean(t)
    assert events.event.tolist() == [EVENT_ID["view"], EVENT_ID["favourite"]]


def test_quoted_csv_reader_matches_fast_reader(tmp_path):
    rows = "".join(f"u{i % 7},i{i % 11},{1500000000 + i},pv,c{i % 3}\n" for i in range(200))
    header = "user_id,item_id,timestamp,event_type,category_id\n"
    plain = tmp_path / "plain.csv"
    plain.write_text(header + rows + "\nbad,row\n")
    index = _column_index(plain, header.strip().split(","), Columns())
    fast = read_delimited(plain, ",", index, 5, skip_lines=1)
    slow = _read_quoted_csv(plain, ",", index, 5, skip=1)
    for role in ("user", "item", "timestamp", "event", "category"):
        assert strings(fast[role]) == strings(getattr(slow, role))
    assert fast["line"].tolist() == slow.line.tolist()
    assert fast["bad_lines"].tolist() == slow.bad_lines.tolist() == [203]
    assert fast["blank_lines"] == slow.blank_lines == 1


def test_quoted_csv_keeps_delimiters_inside_quotes(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('user_id,item_id,timestamp\n"a,1","x",1500000000\n"b","multi\nline",1500000001\nc,z,1500000002\n')
    t = read_generic(path, Columns())
    assert strings(t.user) == ["a,1", "b", "c"]
    assert strings(t.item) == ["x", "multi\nline", "z"]
    assert t.line.tolist() == [2, 3, 5]  # a row's line is where it starts


def test_parquet_input(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array([7, 8, 7], pa.int64()),
        "item_id": ["a", "b", None],
        "timestamp": pa.array([1_500_000_000_000, 1_500_000_001_500, 1_500_000_002_000], pa.int64()),
        "event_type": ["click", "order", "view"],
    }), path)
    t = read_generic(path, Columns())
    assert strings(t.user) == ["7", "8", "7"]
    events, report, unit = clean(t)
    assert unit == "ms"
    assert events.timestamp.tolist() == [1_500_000_000, 1_500_000_001]
    assert events.event.tolist() == [EVENT_ID["view"], EVENT_ID["purchase"]]
    assert report.dropped["empty_item_id"] == 1  # a null id is an empty id


def test_parquet_timestamp_type(tmp_path):
    path = tmp_path / "log.pq"
    when = [dt.datetime(2020, 1, 1, 12), dt.datetime(2020, 1, 2)]
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"],
                             "timestamp": pa.array(when, pa.timestamp("ms"))}), path)
    events, _, unit = clean(read_generic(path, Columns()))
    assert unit == "iso"
    assert events.timestamp.tolist() == [unix("2020-01-01T12:00:00"), unix("2020-01-02T00:00:00")]


def test_sasrec_keeps_file_order_without_times(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("1 5\n1 3\n2 5\n1  9 \n2 1 extra\n")
    t = read_sasrec(path)
    assert t.timestamp is None
    assert strings(t.user) == ["1", "1", "2", "1"] and strings(t.item) == ["5", "3", "5", "9"]
    assert t.bad_lines.tolist() == [5]
    events, report, unit = clean(t)
    assert unit is None and events.timestamp.tolist() == [0, 0, 0, 0]
    assert events.order.tolist() == [0, 1, 2, 3]
    assert report.dropped["wrong_column_count"] == 1


@pytest.mark.parametrize("sep", ["::", "\t"])
def test_movielens_variants(tmp_path, sep):
    path = tmp_path / "ratings"
    rows = [("1", "1193", "5", "978300760"), ("1", "661", "3", "978302109"), ("2", "1193", "4", "978298413")]
    path.write_text("".join(sep.join(r) + "\n" for r in rows))
    t = read_movielens(path)
    assert strings(t.user) == ["1", "1", "2"] and strings(t.item) == ["1193", "661", "1193"]
    events, _, unit = clean(t)
    assert unit == "s" and events.timestamp.tolist() == [978300760, 978302109, 978298413]


def test_movielens_csv_with_header(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n")
    t = read_movielens(path)
    assert strings(t.item) == ["2"] and t.line.tolist() == [2]


def times(values, unit="auto"):
    col = pa.array(values)
    return parse_columns([col], ["f.csv"], [np.arange(1, len(values) + 1)], unit)


def test_timestamp_units_detected():
    assert times(["1500000000", "1500000001"]).unit == "s"
    frac = times(["1500000000.75", "1500000001.2"])
    assert frac.unit == "s" and frac.seconds.tolist() == [1500000000, 1500000001]
    ms = times(["1500000000123", "1500000001999"])
    assert ms.unit == "ms" and ms.seconds.tolist() == [1500000000, 1500000001]
    iso = times(["2017-11-25", "2017-11-25T10:00:00+08:00", "2017-11-25 10:00:00.9", "2017-11-25T10:00Z"])
    assert iso.unit == "iso"
    assert iso.seconds.tolist() == [unix("2017-11-25T00:00:00"), unix("2017-11-25T02:00:00"),
                                    unix("2017-11-25T10:00:00"), unix("2017-11-25T10:00:00")]


def test_timestamp_bad_values_are_per_row():
    t = times(["1500000000", "abc", "", "2017-13-45", "12"])
    assert t.ok.tolist() == [True, False, False, False, True]  # 12 reads as seconds: out of range later
    iso = times(["2017-11-25", "2017-13-45"])  # Arrow rejects the batch; the per-value path sorts it out
    assert iso.ok.tolist() == [True, False] and iso.unit == "iso"


@pytest.mark.parametrize("values, kinds", [
    (["1500000000", "1500000000000"], ("unix seconds", "unix milliseconds")),
    (["1500000000", "2017-11-25"], ("unix seconds", "ISO-8601")),
])
def test_mixed_units_is_an_error_naming_lines(values, kinds):
    with pytest.raises(PrepareError) as e:
        times(values)
    msg = str(e.value)
    assert "mixes units" in msg and "f.csv line 1" in msg and "f.csv line 2" in msg
    assert all(k in msg for k in kinds)


def test_parse_time_forms():
    assert parse_time("1998-01-01", "x") == unix("1998-01-01T00:00:00")
    assert parse_time("1998-01-01T01:00:00+01:00", "x") == unix("1998-01-01T00:00:00")
    assert parse_time("883612800", "x") == 883612800
    with pytest.raises(PrepareError, match="valid_cut"):
        parse_time("yesterday", "valid_cut")
    for value in ("inf", "nan", "1e30", float("-inf"), 1e300):  # no traceback later in iso()
        with pytest.raises(PrepareError, match="max_timestamp: .* between the years 1 and 9999"):
            parse_time(value, "max_timestamp")


def test_parquet_nanosecond_times_and_a_corrupt_file(tmp_path):
    path = tmp_path / "ns.parquet"
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"],
                             "timestamp": pa.array([1_500_000_000_123_456_789, 1_500_000_001_999_999_999],
                                                   pa.timestamp("ns"))}), path)
    events, _, unit = clean(read_generic(path, Columns()))
    assert unit == "iso" and events.timestamp.tolist() == [1_500_000_000, 1_500_000_001]
    assert events.micros.tolist() == [123_456, 999_999]  # truncated to microseconds
    data = path.read_bytes()  # a good footer (schema) over a damaged first page header
    path.write_bytes(data[:4] + b"\xff" * 16 + data[20:])
    assert pq.read_schema(path).names == ["user_id", "item_id", "timestamp"]
    with pytest.raises(PrepareError, match=f"{path}: cannot read Parquet"):
        read_generic(path, Columns())


def test_small_blocks_read_the_same_as_one_block(tmp_path, monkeypatch):
    from seqjax.data.formats import base
    path = tmp_path / "s.txt"
    path.write_bytes("\ufeff".encode() + "".join(f"u{k} é{k}\r\n" if k % 5 else "\n" for k in range(50)).encode()
                     + b"last 1")  # BOM, CRLF, blank lines, no final newline
    whole = read_sasrec(path)
    monkeypatch.setattr(base, "BLOCK_BYTES", 7)  # shorter than some lines: blocks must carry partial lines
    pieces = read_sasrec(path)
    assert strings(pieces.user) == strings(whole.user) and strings(pieces.item) == strings(whole.item)
    assert pieces.line.tolist() == whole.line.tolist() and pieces.blank_lines == whole.blank_lines == 10
    assert strings(whole.user)[:2] == ["u1", "u2"] and strings(whole.item)[-1] == "1"
    assert whole.line[-1] == 51


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"1 a\n2 b\n3 caf\xe9\n")
    with pytest.raises(PrepareError, match=r"latin1.txt, line 3: not valid UTF-8"):
        read_sasrec(path)


def test_generic_without_timestamps_keeps_file_order(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("user_id,item_id\nb,2\na,1\nb,1\n")
    t = read_generic(path, Columns(timestamp=""))
    assert t.timestamp is None
    events, _, unit = clean(t)
    assert unit is None and events.order.tolist() == [0, 1, 2]


def test_sub_second_parts_survive_a_row_arrow_rejects_and_typed_times_out_of_range_name_the_file(tmp_path):
    # one invalid ISO string sends its group to the row-by-row parser, which must keep the fractions
    parsed = times(["2017-07-14T02:40:00.900", "2017-13-01T00:00:00", "2017-07-14T02:40:00.100"])
    assert parsed.ok.tolist() == [True, False, True] and parsed.micros.tolist() == [900_000, 0, 100_000]
    assert times(["1500000000.25", "1500000000.5"]).micros.tolist() == [250_000, 500_000]
    assert times(["1500000000900", "1500000001000"]).micros.tolist() == [900_000, 0]
    path = tmp_path / "far.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["a"],
                             "timestamp": pa.array([2**60], pa.timestamp("ms"))}), path)
    with pytest.raises(PrepareError, match=f"{path}: timestamp column: .*out of bounds"):
        clean(read_generic(path, Columns()))
