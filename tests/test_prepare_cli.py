"""The `seqjax prepare` entry point: errors as one line, config precedence, metadata, real data."""

import argparse
import json
import time

from conftest import missing_shared_data

from seqjax.data.prepare import add_prepare_arguments, run_prepare
from seqjax.data.schema import SCHEMA_VERSION

META_KEYS = {"schema_version", "format", "num_items", "num_users", "num_categories", "counts", "split",
             "has_timestamps", "has_event_types", "timestamp_unit", "valid_time_range", "train_has_repeats",
             "repeat_target_share", "oov_target_share", "inputs", "checksum", "command", "config", "report",
             "created_at"}


def cli(*argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return run_prepare(parser.parse_args(list(argv)))


def small_log(tmp_path, name="log.csv"):
    path = tmp_path / name
    path.write_text("user_id,item_id,timestamp,event_type,category_id\n"
                    + "".join(f"u{k % 3},i{k % 5},{1500000000 + k},view,c{k % 2}\n" for k in range(30)))
    return path


def assert_one_line_error(capsys, rc, *fragments):
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for f in fragments:
        assert f in err, err


def test_missing_file(tmp_path, capsys):
    rc = cli("--format", "generic", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"))
    assert_one_line_error(capsys, rc, "not found", "nope.csv")


def test_empty_file(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    rc = cli("--input", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "o"))
    assert_one_line_error(capsys, rc, "empty", "empty.csv")


def test_header_only_file(tmp_path, capsys):
    (tmp_path / "h.csv").write_text("user_id,item_id,timestamp\n")
    rc = cli("--input", str(tmp_path / "h.csv"), "--out", str(tmp_path / "o"))
    assert_one_line_error(capsys, rc, "no data rows", "h.csv")


def test_missing_column(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("user_id,item,timestamp\na,b,1500000000\n")
    rc = cli("--input", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"))
    assert_one_line_error(capsys, rc, "missing column 'item_id'", "m.csv")


def test_strict_error_through_cli(tmp_path, capsys):
    path = small_log(tmp_path)
    with path.open("a") as f:
        f.write("u1,i1\n")  # line 32: header + 30 rows before it
    rc = cli("--input", str(path), "--out", str(tmp_path / "o"), "--strict")
    assert_one_line_error(capsys, rc, f"{path}, line 32: wrong_column_count")


def test_unknown_config_key(tmp_path, capsys):
    rc = cli("--input", str(small_log(tmp_path)), "--out", str(tmp_path / "o"), "--set", "min_itme_count=5")
    assert_one_line_error(capsys, rc, "min_itme_count")


def test_config_file_flags_and_set_precedence(tmp_path, capsys):
    path = small_log(tmp_path)
    config = tmp_path / "prep.yaml"
    config.write_text(f"format: sasrec\ninputs: [{tmp_path / 'other.csv'}]\nout: {tmp_path / 'wrong'}\n"
                      "min_user_count: 100\nmax_timestamp: 2030-01-01\nevent_map: {clicked: view}\n")
    rc = cli("--config", str(config), "--format", "generic", "--input", str(path), "--out", str(tmp_path / "o"),
             "--set", "min_user_count=2", "--set", "event_map.wish=fav")
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "o/metadata.json").read_text())
    cfg = meta["config"]
    assert cfg["format"] == "generic" and cfg["inputs"] == [str(path)] and cfg["out"] == str(tmp_path / "o")
    assert cfg["min_user_count"] == 2 and cfg["max_timestamp"] == "2030-01-01T00:00:00Z"
    assert cfg["event_map"] == {"clicked": "view", "wish": "fav"}
    assert "users 3" in capsys.readouterr().out  # the human summary


def test_metadata_and_report(tmp_path):
    path = small_log(tmp_path)
    args = ["--input", str(path), "--out", str(tmp_path / "o"), "--set", "max_timestamp=2030-01-01"]
    assert cli(*args) == 0
    meta = json.loads((tmp_path / "o/metadata.json").read_text())
    assert set(meta) == META_KEYS
    assert meta["schema_version"] == SCHEMA_VERSION
    assert (meta["num_users"], meta["num_items"], meta["num_categories"]) == (3, 5, 2)
    assert meta["has_timestamps"] and meta["has_event_types"] and meta["timestamp_unit"] == "s"
    assert meta["valid_time_range"]["iso"] == ["1990-01-01T00:00:00Z", "2030-01-01T00:00:00Z"]
    assert meta["counts"]["test"]["records"] == 3 and meta["counts"]["train"]["events"] == 30 - 6
    assert meta["inputs"][0]["bytes"] == path.stat().st_size and len(meta["inputs"][0]["sha256"]) == 64
    report = json.loads((tmp_path / "o/report.json").read_text())
    assert report == meta["report"] and report["rows_read"] == 30
    # Same inputs and config elsewhere: same checksum. Another option: another checksum.
    assert cli("--input", str(path), "--out", str(tmp_path / "o2"), "--set", "max_timestamp=2030-01-01") == 0
    assert json.loads((tmp_path / "o2/metadata.json").read_text())["checksum"] == meta["checksum"]
    assert cli(*args, "--set", "max_events_per_user=5") == 0
    assert json.loads((tmp_path / "o/metadata.json").read_text())["checksum"] != meta["checksum"]
    assert sorted(p.name for p in (tmp_path / "o/vocab").iterdir()) == ["categories.tsv", "items.tsv", "users.tsv"]


def shared_file(shared_data_dir, relative):
    path = shared_data_dir / relative
    if not path.is_file():
        missing_shared_data(f"{path} not found: the shared data folder is incomplete")
    return path


def test_ml100k(tmp_path, shared_data_dir):
    path = shared_file(shared_data_dir, "ml100k/u.data")
    assert cli("--format", "movielens", "--input", str(path), "--out", str(tmp_path / "o")) == 0
    meta = json.loads((tmp_path / "o/metadata.json").read_text())
    assert (meta["num_users"], meta["num_items"]) == (943, 1682)
    assert meta["report"]["rows_kept"] == meta["report"]["rows_read"] == 100_000
    assert meta["counts"]["test"]["records"] == meta["counts"]["valid"]["records"] == 943
    assert meta["counts"]["train"]["events"] + 2 * 943 == 100_000
    assert meta["timestamp_unit"] == "s" and meta["train_has_repeats"] is False


def test_ml1m_sasrec_format_is_fast(tmp_path, shared_data_dir):
    path = shared_file(shared_data_dir, "ml1m/ml-1m_sasrec_format.txt")
    start = time.monotonic()
    assert cli("--format", "sasrec", "--input", str(path), "--out", str(tmp_path / "o")) == 0
    seconds = time.monotonic() - start
    meta = json.loads((tmp_path / "o/metadata.json").read_text())
    assert (meta["num_users"], meta["num_items"], meta["report"]["rows_kept"]) == (6040, 3416, 999_611)
    assert meta["has_timestamps"] is False and meta["valid_time_range"] is None
    assert seconds < 20, f"prepare of ML-1M took {seconds:.1f}s"


def test_unparsable_config_file(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("min_user_count: [1,\n")
    rc = cli("--config", str(tmp_path / "bad.yaml"), "--input", str(small_log(tmp_path)), "--out", str(tmp_path / "o"))
    assert_one_line_error(capsys, rc, "bad.yaml")
