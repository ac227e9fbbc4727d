"""`seqjax prepare --task`: Parquet rows and example shards agree with each other and with a slow reference
over the raw file; nothing at or after a cutoff reaches an example (file-level leakage test); refusals;
format defaults; the real Taobao head and CDNOW files; the Grain task loaders."""

import argparse
import csv
import dataclasses
import datetime as dt
import json
import math
from collections import defaultdict
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import missing_shared_data

from seqjax.config import ConfigError
from seqjax.data import task_prepare
from seqjax.data.clean import RowRules, validate
from seqjax.data.formats import PrepareError, read_yoochoose
from seqjax.data.prepare import PrepareConfig, add_prepare_arguments, prepare, run_prepare
from seqjax.data.schema import (
    EVENT_ID,
    EXAMPLE_ARRAYS,
    SPLITS,
    ExampleRecord,
    decode_example,
    encode_example,
    encode_examples,
)
from seqjax.data.synthetic import generate_log
from seqjax.data.task_pipeline import SEQUENCE_FIELDS, TaskBatchSpec, TaskTrainBatches, examples, task_eval_batches
from seqjax.data.task_prepare import KEY_COLUMNS, TaskOptions, resolve_options

DAY = 86_400
CUTS = ("2024-01-08", "2024-01-10", "2024-01-12", "2024-01-14", "2024-01-16")  # 3 train, valid, test
TASKS = {
    "purchase_user": TaskOptions(task="purchase", horizon="2d", num_train_cutoffs=3),
    "purchase_pair": TaskOptions(task="purchase", level="user_item", horizon="2d", feature_window="4d",
                                 cutoffs=CUTS, max_len=16),
    "churn": TaskOptions(task="churn", horizon="5d", split_mode="customer_disjoint", cutoffs=("2024-01-12",),
                         valid_share=0.2, test_share=0.2, max_len=8),
}


def shared_file(shared_data_dir, relative):
    path = shared_data_dir / relative
    if not path.is_file():
        missing_shared_data(f"{path} not found: the shared data folder is incomplete")
    return path


def run(path, out, task, fmt="generic", **kw):
    return prepare(PrepareConfig(format=fmt, inputs=(str(path),), out=str(out), max_timestamp="2100-01-01",
                                 task=task, **kw), echo=False)


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "log.csv"
    generate_log(path, num_users=150, num_items=200, num_categories=8, seed=3, days=20, mean_events=30)
    return path


@pytest.fixture(scope="module")
def prepared(log, tmp_path_factory):
    """name -> (DATA_DIR, metadata) for every TASKS entry, prepared once."""
    root = tmp_path_factory.mktemp("prepared")
    out = {}
    for name, task in TASKS.items():
        with pytest.MonkeyPatch.context() as mp:
            if name == "purchase_pair":  # encode in chunks of 7 examples: chunk edges are checked too
                mp.setattr(task_prepare, "CHUNK_EXAMPLES", 7)
            out[name] = (root / name, run(log, root / name, task))
    return out


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def vocab(data_dir, name):
    lines = (data_dir / "vocab" / f"{name}.tsv").read_text().splitlines()[1:]
    return {raw: int(i) for i, raw in (ln.split("\t") for ln in lines)}


def records(data_dir, split):
    ds = examples(data_dir, split)
    return [ds[i] for i in range(len(ds))]


def gap_bucket(gap):
    return 1 if gap == 0 else min(1 + gap.bit_length(), 31)


def reference_history(rows, data_dir, task: TaskOptions):
    """(user id, cutoff) -> list of per-event dicts, the slow way: every event of the user strictly before
    the cutoff and inside the feature window, with context computed over the user's whole past."""
    users, items, cats = vocab(data_dir, "users"), vocab(data_dir, "items"), vocab(data_dir, "categories")
    by_user = defaultdict(list)
    for order, r in enumerate(rows):
        by_user[users[r["user_id"]]].append((int(r["timestamp"]), order, r))
    tz, gap_limit = ZoneInfo(task.timezone), task.session_gap_s
    context = {}
    for u, evs in by_user.items():
        evs.sort(key=lambda e: e[:2])
        out, prev, pos = [], None, 0
        for ts, _, r in evs:
            local = dt.datetime.fromtimestamp(ts, tz)
            pos = 0 if prev is None or ts - prev > gap_limit else pos + 1
            out.append({"timestamps": ts, "items": items[r["item_id"]], "events": EVENT_ID[r["event_type"]],
                        "categories": cats[r["category_id"]], "hour": local.hour, "weekday": local.weekday(),
                        "session_position": pos, "gap_bucket": 0 if prev is None else gap_bucket(ts - prev)})
            prev = ts
        context[u] = out

    def history(user, cutoff):
        lo = -10**18 if task.window_s is None else cutoff - task.window_s
        return [e for e in context[user] if lo <= e["timestamps"] < cutoff]

    def following(user, cutoff):
        """The first event in the label window [cutoff, cutoff + horizon), or None."""
        return next((e for e in context[user] if cutoff <= e["timestamps"] < cutoff + task.horizon_s), None)
    return history, following


@pytest.mark.parametrize("name", list(TASKS))
def test_parquet_and_shards_agree_with_a_slow_reference(prepared, log, name):
    data_dir, meta = prepared[name]
    task = resolve_options(TASKS[name], "generic")
    history, following = reference_history(read_rows(log), data_dir, task)
    section = meta["task"]
    assert section["config"]["max_len"] == task.max_len and section["config"]["task"] == task.task
    assert sum(section["counts"][s]["examples"] for s in SPLITS) > 100
    for split in SPLITS:
        table = pq.read_table(data_dir / "task" / f"{split}.parquet")
        assert table.column_names[:4] == list(KEY_COLUMNS) == ["user", "item", "cutoff", "label"]
        assert [table.schema.field(k).type for k in KEY_COLUMNS] == [pa.int64(), pa.int64(), pa.int64(), pa.int8()]
        assert table.column_names == section["columns"]
        assert set(table.column_names[4:]) == set(section["features"])
        recs = records(data_dir, split)
        rows = table.to_pylist()
        nexts = pq.read_table(data_dir / "task" / f"{split}_next.parquet").to_pylist()
        assert len(recs) == len(rows) == len(nexts) == section["counts"][split]["examples"] > 0
        assert section["counts"][split]["with_next_event"] == sum(n["next_item"] > 0 for n in nexts)
        assert section["class_balance"][split]["positives"] == sum(r["label"] for r in rows)
        for rec, row, nxt_row in zip(recs, rows, nexts):
            assert (rec.user, rec.candidate, rec.cutoff, rec.label) == (row["user"], row["item"], row["cutoff"],
                                                                         row["label"])
            nxt = following(rec.user, rec.cutoff)
            assert (nxt_row["next_item"], nxt_row["next_time"]) == ((nxt["items"], nxt["timestamps"]) if nxt else (0, -1))
            full = history(rec.user, rec.cutoff)
            assert row["n_events"] == len(full) and row["n_purchase"] == sum(e["events"] == 5 for e in full)
            want = full[-task.max_len:]
            for field in ("timestamps", "items", "events", "categories", "hour", "weekday", "session_position",
                          "gap_bucket"):
                assert getattr(rec, field).tolist() == [e[field] for e in want], field
            if task.level == "user_item":
                assert rec.candidate > 0 and row["pair_n_events"] == sum(e["items"] == rec.candidate for e in full)
            else:
                assert rec.candidate == 0 and row["item"] == 0
        cutoffs = [r["cutoff"] for r in rows]
        assert cutoffs == sorted(cutoffs)  # ordered by cutoff, then user, then item
    if task.max_len < 200:
        assert sum(section["counts"][s]["histories_truncated"] for s in SPLITS) > 0  # truncation was exercised
    with_next = sum(section["counts"][s]["with_next_event"] for s in SPLITS)
    assert 0 < with_next < sum(section["counts"][s]["examples"] for s in SPLITS)  # both cases were exercised


@pytest.mark.parametrize("name", list(TASKS))
def test_no_history_event_at_or_after_the_cutoff(prepared, name):
    data_dir, _ = prepared[name]
    window = TASKS[name].window_s
    for split in SPLITS:
        for rec in records(data_dir, split):
            assert len(rec.items) and (rec.timestamps < rec.cutoff).all()
            if window is not None:
                assert (rec.timestamps >= rec.cutoff - window).all()
            assert (np.diff(rec.timestamps) >= 0).all()


def perturb(rows, cutoff, seed=0):
    """The raw rows with everything at or after `cutoff` rewritten (types, items, categories; a third
    dropped; new events for known and new users, on known and new items); earlier rows untouched, in order."""
    rng = np.random.default_rng(seed)
    types = ["view", "search", "cart", "favourite", "purchase"]
    last = max(int(r["timestamp"]) for r in rows)
    out = []
    for r in rows:
        if int(r["timestamp"]) < cutoff:
            out.append(dict(r))
        elif rng.random() < 0.66 or int(r["timestamp"]) == last:
            out.append({**r, "event_type": types[rng.integers(5)], "item_id": f"i{rng.integers(0, 260):06d}",
                        "category_id": f"c{rng.integers(0, 9):03d}"})
    users = sorted({r["user_id"] for r in rows})
    for k in range(400):
        user = users[rng.integers(len(users))] if k % 4 else f"new{k}"
        out.append({"user_id": user, "item_id": f"i{rng.integers(0, 300):06d}",
                    "timestamp": str(int(rng.integers(cutoff, last + 1))), "event_type": types[rng.integers(5)],
                    "category_id": f"c{rng.integers(0, 12):03d}"})
    return out


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("name,split_at", [("purchase_pair", 3), ("churn", 0)])
def test_perturbing_the_future_of_the_raw_log_changes_no_feature_or_history(prepared, log, tmp_path, name,
                                                                             split_at):
    """Re-prepares with every event at or after cutoff c rewritten: for examples at cutoffs <= c, Parquet
    features and shard histories are identical (labels at cutoffs before c too: their windows end by c)."""
    data_dir, meta = prepared[name]
    cutoff = meta["task"]["protocol"]["cutoffs"][split_at]["unix"]
    path = tmp_path / "perturbed.csv"
    write_rows(path, perturb(read_rows(log), cutoff))
    meta2 = run(path, tmp_path / "o", TASKS[name])
    compared = labels_changed = 0
    for split in SPLITS:
        a = pq.read_table(data_dir / "task" / f"{split}.parquet").to_pylist()
        b = pq.read_table(tmp_path / "o" / "task" / f"{split}.parquet").to_pylist()
        ra, rb = records(data_dir, split), records(tmp_path / "o", split)
        keep = [i for i, r in enumerate(a) if r["cutoff"] <= cutoff]
        assert keep == [i for i, r in enumerate(b) if r["cutoff"] <= cutoff]
        for i in keep:
            same_label = a[i]["cutoff"] < cutoff
            labels_changed += a[i]["label"] != b[i]["label"]
            assert {k: v for k, v in a[i].items() if k != "label" or same_label} == \
                   {k: v for k, v in b[i].items() if k != "label" or same_label}
            for f, _ in EXAMPLE_ARRAYS:
                assert np.array_equal(getattr(ra[i], f), getattr(rb[i], f)), f
            assert (ra[i].user, ra[i].candidate, ra[i].cutoff) == (rb[i].user, rb[i].candidate, rb[i].cutoff)
            if same_label:
                assert ra[i].label == rb[i].label
            compared += 1
    assert compared > 50
    assert labels_changed > 0  # the perturbation did reach the label window
    assert meta2["report"]["rows_read"] != meta["report"]["rows_read"]


def test_example_record_round_trip():
    rng = np.random.default_rng(0)
    n = 7
    arrays = {name: rng.integers(0, 100, n).astype(dtype) for name, dtype in EXAMPLE_ARRAYS}
    rec = ExampleRecord(user=12, candidate=345, cutoff=1_700_000_000, label=1, **arrays)
    back = decode_example(encode_example(rec))
    assert (back.user, back.candidate, back.cutoff, back.label) == (12, 345, 1_700_000_000, 1)
    for name, dtype in EXAMPLE_ARRAYS:
        assert getattr(back, name).dtype == dtype and getattr(back, name).tolist() == arrays[name].tolist()
    # The fast batched encoder writes the same bytes as the one-record reference.
    recs = [dataclasses.replace(rec, user=u, candidate=3 * u, label=u % 2,
                                **{k: v[:u] for k, v in arrays.items()}) for u in (0, 3, 7, 1)]
    batched = list(encode_examples([r.user for r in recs], [r.candidate for r in recs], [r.cutoff for r in recs],
                                   [r.label for r in recs], [len(r.items) for r in recs],
                                   {k: np.concatenate([getattr(r, k) for r in recs]) for k in arrays}))
    assert batched == [encode_example(r) for r in recs]
    with pytest.raises(ValueError, match="hour has 6"):
        encode_example(dataclasses.replace(rec, hour=arrays["hour"][:-1]))
    buf = bytearray(encode_example(rec))
    buf[0] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        decode_example(bytes(buf))


# --- refusals, warnings, CLI ---------------------------------------------------------------------------------


def cli(*argv):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return run_prepare(parser.parse_args(list(argv)))


def one_line_error(capsys, rc, *fragments):
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err


def test_purchase_needs_event_types(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"u{k % 3},i{k % 4},{1700000000 + 3600 * k}\n"
                                                             for k in range(200)))
    rc = cli("--input", str(path), "--out", str(tmp_path / "o"), "--task", "purchase",
             "--set", "max_timestamp=2100-01-01")
    one_line_error(capsys, rc, "task purchase", "event types")


def test_purchase_needs_purchase_events(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,event_type\n"
                    + "".join(f"u{k % 3},i{k % 4},{1700000000 + 3600 * k},view\n" for k in range(200)))
    rc = cli("--input", str(path), "--out", str(tmp_path / "o"), "--task", "purchase",
             "--set", "max_timestamp=2100-01-01")
    one_line_error(capsys, rc, "no purchase events", "event types seen: view;")


def test_task_needs_timestamps(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n" + "".join(f"u{k % 3},i{k % 4}\n" for k in range(20)))
    with pytest.raises(PrepareError, match="needs timestamps"):
        run(path, tmp_path / "o", TaskOptions(task="churn"), timestamp_col="")


def test_cap_recent_and_temporal_split_are_refused_with_a_task(log, tmp_path, capsys):
    rc = cli("--input", str(log), "--out", str(tmp_path / "o"), "--task", "churn",
             "--set", "max_events_per_user=50")
    one_line_error(capsys, rc, "max_events_per_user", "leakage")
    with pytest.raises(ConfigError, match="split: 'temporal'"):
        run(log, tmp_path / "o", TaskOptions(task="churn"), split="temporal")
    with pytest.raises(ConfigError, match="task.max_len"):
        run(log, tmp_path / "o", TaskOptions(task="churn", max_len=0))
    assert not (tmp_path / "o").exists()


def test_kcore_with_a_task_warns_and_is_recorded(log, tmp_path, capsys):
    meta = run(log, tmp_path / "o", TASKS["purchase_user"], min_item_count=3)
    err = capsys.readouterr().err
    assert err.startswith("warning: k-core") and "whole log" in err
    assert meta["task"]["warnings"] == meta["task"]["protocol"]["warnings"] == [err[len("warning: "):].strip()]
    assert meta["report"]["dropped"]["k_core"] > 0


def test_cli_task_flag_set_overrides_and_printout(log, tmp_path, capsys):
    out = tmp_path / "o"
    rc = cli("--input", str(log), "--out", str(out), "--task", "churn", "--set", "task.horizon=3d",
             "--set", "task.num_train_cutoffs=2", "--set", "max_timestamp=2100-01-01")
    printed = capsys.readouterr().out
    assert rc == 0
    meta = json.loads((out / "metadata.json").read_text())
    cfg = meta["task"]["config"]
    assert (cfg["task"], cfg["horizon"], cfg["num_train_cutoffs"], cfg["timezone"]) == ("churn", "3d", 2, "UTC")
    assert meta["config"]["task"] == cfg and meta["config"]["drop_duplicates"] is True
    for key, value in cfg.items():  # every resolved option is printed
        assert f"{key}={value}" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["task_per_cutoff"] == meta["task"]["protocol"]["per_cutoff"]
    assert set(report["task_per_cutoff"][0]["excluded_users"]) == {"no_events_before_cutoff",
                                                                   "no_events_in_feature_window"}
    # Re-running without a task leaves no stale task output behind.
    assert cli("--input", str(log), "--out", str(out), "--set", "max_timestamp=2100-01-01") == 0
    assert not list((out / "task").rglob("*.parquet")) and not list((out / "task").rglob("*.array_record"))
    assert "task" not in json.loads((out / "metadata.json").read_text())


def test_task_section_in_a_config_file(log, tmp_path):
    config = tmp_path / "prep.yaml"
    config.write_text(f"inputs: [{log}]\nout: {tmp_path / 'o'}\nmax_timestamp: 2100-01-01\n"
                      "task:\n  task: purchase\n  level: user_item\n  horizon: 2d\n  timezone: Europe/Berlin\n"
                      "  cutoffs: [2024-01-10, 2024-01-12, 2024-01-14]\n  max_len: 5\n")
    assert cli("--config", str(config), "--set", "task.feature_window=3d") == 0
    cfg = json.loads((tmp_path / "o" / "metadata.json").read_text())["task"]["config"]
    assert {k: cfg[k] for k in ("task", "level", "horizon", "timezone", "cutoffs", "max_len", "feature_window")} == {
        "task": "purchase", "level": "user_item", "horizon": "2d", "timezone": "Europe/Berlin",
        "cutoffs": ["2024-01-10", "2024-01-12", "2024-01-14"], "max_len": 5, "feature_window": "3d"}
    assert max(len(r.items) for r in records(tmp_path / "o", "train")) == 5


def test_yoochoose_price_is_unit_price_times_quantity(tmp_path):
    buys = tmp_path / "buys.dat"
    buys.write_text("1,2014-04-06T18:44:58.314Z,214537888,12462,1\n"
                    "1,2014-04-06T18:44:58.325Z,214537850,10471,2\n"
                    "2,2014-04-06T09:59:52.422Z,214826955,0,0\n"
                    "3,2014-04-06T10:00:00.000Z,214826955,abc,1\n")
    events, report, _ = validate([read_yoochoose(buys, "buys")],
                                 RowRules(time_range=(0, 2**40), unit_price=True))
    assert report.rows_kept == 4 and sum(report.dropped.values()) == 0
    assert events.price[:2].tolist() == [12462.0, 20942.0] and np.isnan(events.price[2:]).all()


# --- real files ------------------------------------------------------------------------------------------------


def test_taobao_head_purchase_user_level(shared_data_dir, tmp_path):
    path = shared_file(shared_data_dir, "taobao_userbehavior_head/UserBehavior_head.csv")
    meta = prepare(PrepareConfig(format="taobao", inputs=(str(path),), out=str(tmp_path / "o"),
                                 max_timestamp="2030-01-01", task=TaskOptions(task="purchase", horizon="1d")),
                   echo=False)
    t = meta["task"]
    assert t["config"]["timezone"] == "Asia/Shanghai" and t["format_defaults_used"] == {"timezone": "Asia/Shanghai"}
    cutoffs = t["protocol"]["cutoffs"]
    assert [c["split"] for c in cutoffs] == ["train"] * 4 + ["valid", "test"]
    assert cutoffs[-1]["iso"] == "2017-12-03T00:00:00+08:00" and cutoffs[-2]["iso"] == "2017-12-02T00:00:00+08:00"
    # Test labels the slow way: users with an event before the test cutoff who buy within a day of it.
    test_cut = cutoffs[-1]["unix"]
    seen, bought = set(), set()
    for line in path.read_text().splitlines():
        f = line.split(",")
        if len(f) != 5:
            continue
        if int(f[4]) < test_cut:
            seen.add(f[0])
        elif int(f[4]) < test_cut + DAY and f[3] == "buy":
            bought.add(f[0])
    balance = t["class_balance"]["test"]
    assert (balance["examples"], balance["positives"]) == (len(seen), len(seen & bought))
    for s in SPLITS:
        assert t["class_balance"][s]["examples"] > 0 and 0 < t["class_balance"][s]["positive_rate"] < 1
    assert not t["has_prices"] and "purchase_value_sum" not in t["columns"]


def test_cdnow_churn_customer_disjoint_with_prices(shared_data_dir, tmp_path):
    path = shared_file(shared_data_dir, "cdnow/CDNOW_master.txt")
    meta = prepare(PrepareConfig(format="cdnow", inputs=(str(path),), out=str(tmp_path / "o"),
                                 max_timestamp="2030-01-01", task=TaskOptions(task="churn")), echo=False)
    t = meta["task"]
    assert (t["config"]["split_mode"], t["config"]["horizon"]) == ("customer_disjoint", "39w")
    assert t["format_defaults_used"] == {"split_mode": "customer_disjoint", "horizon": "39w", "drop_duplicates": False}
    assert meta["config"]["drop_duplicates"] is False and meta["report"]["dropped"]["duplicate"] == 0
    assert [c["iso"] for c in t["protocol"]["cutoffs"]] == ["1997-10-01T00:00:00+00:00"]
    cut = t["protocol"]["cutoffs"][0]["unix"]
    # Slow reference over the file: purchases and dollars before the cutoff, any purchase in the holdout.
    n, dollars, later, buckets = defaultdict(int), defaultdict(float), set(), defaultdict(list)
    for line in path.read_text().splitlines()[1:]:
        cust, date, _, value = line.split()
        ts = int(dt.datetime.strptime(date, "%Y%m%d").replace(tzinfo=dt.UTC).timestamp())
        if ts < cut:
            n[cust] += 1
            dollars[cust] += float(value) if float(value) > 0 else 0.0
            buckets[cust].append(min(max(math.floor(math.log2(float(value))) + 8, 1), 31) if float(value) > 0 else 0)
        elif ts < cut + 39 * 7 * DAY:
            later.add(cust)
    assert sum(t["counts"][s]["examples"] for s in SPLITS) == len(n) == 23_570
    assert sum(t["class_balance"][s]["positives"] for s in SPLITS) == len(set(n) - later)
    for s in SPLITS:
        assert 0 < t["class_balance"][s]["positive_rate"] < 1
    users = {i: raw for raw, i in vocab(tmp_path / "o", "users").items()}
    table = pq.read_table(tmp_path / "o" / "task" / "test.parquet").to_pylist()
    for row in table:
        raw = users[row["user"]]
        assert row["n_purchase"] == n[raw] and row["label"] == (raw not in later)
        assert row["purchase_value_sum"] == pytest.approx(dollars[raw], rel=1e-12, abs=1e-9)
    # The event sequences carry each purchase's dollars as a log2 bucket (the file is in time order per customer).
    recs = records(tmp_path / "o", "test")
    assert len(recs) == len(table) and any(len(set(r.price_bucket.tolist())) > 1 for r in recs)
    for rec in recs:
        assert rec.price_bucket.tolist() == buckets[users[rec.user]][-t["config"]["max_len"]:]


# --- loaders ----------------------------------------------------------------------------------------------------


def test_train_batches_are_deterministic_cover_the_epoch_and_resume(prepared):
    data_dir, meta = prepared["purchase_pair"]
    spec = TaskBatchSpec(batch_size=32, max_len=16, seed=7, buckets=(8, 16))
    loader = TaskTrainBatches(data_dir, spec)
    n = meta["task"]["counts"]["train"]["examples"]
    assert loader.num_examples == n and loader.batches_per_epoch == -(-n // 32)
    full = list(loader.epoch(1))
    again = list(TaskTrainBatches(data_dir, spec).epoch(1))
    assert len(full) == len(again) == loader.batches_per_epoch
    for a, b in zip(full, again):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    resumed = list(loader.epoch(1, start_batch=3))
    for a, b in zip(full[3:], resumed, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    order1 = np.concatenate([b["example"][b["weight"] > 0] for b in full])
    order2 = np.concatenate([b["example"][b["weight"] > 0] for b in loader.epoch(2)])
    assert sorted(order1.tolist()) == list(range(n)) and not np.array_equal(order1, order2)
    last = full[-1]
    pad = last["weight"] == 0
    assert pad.sum() == 32 * len(full) - n
    assert (last["example"][pad] == -1).all() and (last["lengths"][pad] == 0).all() and not last["items"][pad].any()
    table = pq.read_table(data_dir / "task" / "train.parquet").to_pylist()
    recs = records(data_dir, "train")
    for batch in full[:3]:
        assert batch["items"].shape[1] in (8, 16)
        for row, i in enumerate(batch["example"].tolist()):
            assert batch["label"][row] == table[i]["label"] and batch["candidate"][row] == table[i]["item"]
            k = batch["lengths"][row]
            for f in SEQUENCE_FIELDS:
                assert batch[f][row, :k].tolist() == getattr(recs[i], f)[-16:].tolist() and not batch[f][row, k:].any()


def test_eval_batches_keep_file_order(prepared):
    data_dir, _ = prepared["churn"]
    table = pq.read_table(data_dir / "task" / "valid.parquet").to_pylist()
    batches = list(task_eval_batches(data_dir, "valid", TaskBatchSpec(batch_size=16, max_len=8)))
    assert all(b["items"].shape == (16, 8) for b in batches)
    real = np.concatenate([b["weight"] for b in batches]) > 0
    assert np.concatenate([b["example"] for b in batches])[real].tolist() == list(range(len(table)))
    assert np.concatenate([b["label"] for b in batches])[real].tolist() == [r["label"] for r in table]
    assert np.concatenate([b["lengths"] for b in batches])[real].tolist() == [min(r["n_events"], 8) for r in table]
