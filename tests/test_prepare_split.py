"""Splits: records against a brute-force reference, and no target leaking into training inputs."""

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from seqjax.config import ConfigError
from seqjax.data.formats import PrepareError
from seqjax.data.prepare import PrepareConfig, prepare
from seqjax.data.schema import decode_record
from seqjax.data.shards import split_paths
from seqjax.data.split import OOV_TARGET
from seqjax.data.timestamps import parse_time

T0 = 1_500_000_000
DAY = 86_400


def read_split(data_dir, split):
    records = []
    for path in split_paths(data_dir, split):
        reader = ArrayRecordReader(path)
        records += [decode_record(b) for b in reader.read_all()]
        reader.close()
    return records


def vocab(data_dir, name):
    lines = (data_dir / "vocab" / f"{name}.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id\traw_id"
    return {int(i): raw for i, raw in (line.split("\t") for line in lines[1:])}


@pytest.fixture
def log(tmp_path):
    """A shuffled log: 25 users with 1..30 events, repeated items, timestamp ties within users."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(25):
        n = 1 + (u * 7) % 30
        ts = np.sort(T0 + rng.integers(0, 60, n) * DAY // 2)  # half-day steps: many ties
        rows += [(f"user{u}", f"item{rng.integers(0, 40)}", int(t)) for t in ts]
    file_order = rng.permutation(len(rows))
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in
                                                            (rows[k] for k in file_order)))
    # Reference per-user sequences: time order, ties in file order.
    lines = [rows[k] + (line,) for line, k in enumerate(file_order)]
    timeline = [(u, i, t) for u, i, t, _ in sorted(lines, key=lambda r: (r[2], r[3]))]
    by_user = {}
    for u, i, t in timeline:
        by_user.setdefault(u, []).append((i, t))
    return path, by_user, timeline


def run(path, out, **kw):
    cfg = PrepareConfig(format="generic", inputs=(str(path),), out=str(out), max_timestamp="2030-01-01",
                        drop_duplicates=False, **kw)
    return prepare(cfg, echo=False)


def decoded(data_dir, split):
    """{raw user: (history [(raw item, ts)], (raw target, ts) or None)}."""
    users, items = vocab(data_dir, "users"), vocab(data_dir, "items")
    out = {}
    for r in read_split(data_dir, split):
        hist = [(items[int(i)], int(t)) for i, t in zip(r.items, r.timestamps)]
        target = None if split == "train" else (items.get(r.target, OOV_TARGET), r.target_timestamp)
        out[users[r.user]] = (hist, target)
    return out


def test_loo_matches_reference_and_never_trains_on_targets(tmp_path, log):
    path, ref, _ = log
    meta = run(path, tmp_path / "out")
    train, valid, test = (decoded(tmp_path / "out", s) for s in ("train", "valid", "test"))
    assert set(train) == set(ref)
    for user, seq in ref.items():
        if len(seq) < 3:
            assert train[user] == (seq, None) and user not in valid and user not in test
            continue
        assert train[user][0] == seq[:-2]  # by position: the two targets are not in training
        assert valid[user] == (seq[:-2], seq[-2])
        assert test[user] == (seq[:-1], seq[-1])  # the test history includes the valid target
        assert max(t for _, t in train[user][0]) <= seq[-2][1] <= seq[-1][1]
    n_eval = sum(len(s) >= 3 for s in ref.values())
    assert meta["counts"]["test"]["records"] == meta["counts"]["valid"]["records"] == n_eval
    assert meta["counts"]["train"]["events"] == sum(len(s) if len(s) < 3 else len(s) - 2 for s in ref.values())
    repeats = sum(seq[-1][0] in {i for i, _ in seq[:-1]} for seq in ref.values() if len(seq) >= 3) / n_eval
    assert meta["repeat_target_share"]["test"] == pytest.approx(repeats)
    assert meta["train_has_repeats"] is any(len({i for i, _ in h}) < len(h) for h, *_ in train.values())
    assert meta["train_has_repeats"] is True


def test_records_are_in_user_order_and_ids_by_first_appearance(tmp_path, log):
    path, _, timeline = log
    run(path, tmp_path / "out")
    records = read_split(tmp_path / "out", "train")
    assert [r.user for r in records] == list(range(len(records)))
    users, items = vocab(tmp_path / "out", "users"), vocab(tmp_path / "out", "items")
    assert list(users.values()) == list(dict.fromkeys(u for u, _, _ in timeline))
    assert list(items.values()) == list(dict.fromkeys(i for _, i, _ in timeline))
    assert list(items) == list(range(1, len(items) + 1))  # 0 is padding


@pytest.mark.parametrize("cuts", [("q0.6", "q0.8"), ("2017-08-01", "2017-08-10")])
def test_temporal_respects_cuts(tmp_path, log, cuts):
    path, ref, _ = log
    meta = run(path, tmp_path / "out", split="temporal", valid_cut=cuts[0], test_cut=cuts[1])
    v_cut, t_cut = meta["split"]["valid_cut"]["unix"], meta["split"]["test_cut"]["unix"]
    if not cuts[0].startswith("q"):
        assert v_cut == parse_time(cuts[0], "x") and t_cut == parse_time(cuts[1], "x")
    train, valid, test = (decoded(tmp_path / "out", s) for s in ("train", "valid", "test"))
    train_items = {i for hist, _ in train.values() for i, _ in hist}
    assert len(train_items) == meta["num_items"]
    for user, seq in ref.items():
        before_v = [e for e in seq if e[1] < v_cut]
        assert train.get(user, ([], None))[0] == before_v
        in_valid = [e for e in seq if v_cut <= e[1] < t_cut]
        if in_valid:
            assert valid[user] == (before_v, in_valid[0])
        else:
            assert user not in valid
        after_t = [e for e in seq if e[1] >= t_cut]
        if after_t:
            hist, target = test[user]
            assert hist == [e for e in seq if e[1] < t_cut and e[0] in train_items]
            expected = after_t[0] if after_t[0][0] in train_items else (OOV_TARGET, after_t[0][1])
            assert target == expected
        else:
            assert user not in test
    for hist, _ in train.values():
        assert all(t < v_cut for _, t in hist)
    oov = np.mean([test[u][1][0] == OOV_TARGET for u in test])
    assert meta["oov_target_share"]["test"] == pytest.approx(oov)


def test_temporal_oov_target_and_empty_history(tmp_path):
    path = tmp_path / "t.csv"
    day = lambda d: T0 + d * DAY
    path.write_text("user_id,item_id,timestamp\n"
                    f"a,x,{day(0)}\na,y,{day(1)}\na,new,{day(5)}\n"  # a: OOV test target
                    f"b,x,{day(2)}\nb,y,{day(3)}\nb,x,{day(6)}\n"
                    f"late,y,{day(4)}\nlate,x,{day(7)}\n")  # late: no training events
    meta = run(path, tmp_path / "out", split="temporal", valid_cut=str(day(4)), test_cut=str(day(5)))
    test = {r.user: r for r in read_split(tmp_path / "out", "test")}
    users = {raw: u for u, raw in vocab(tmp_path / "out", "users").items()}
    assert test[users["a"]].target == OOV_TARGET
    assert len(test[users["late"]].items) == 1  # history before test_cut: its valid-period event
    valid = {r.user: r for r in read_split(tmp_path / "out", "valid")}
    assert len(valid[users["late"]].items) == 0  # empty history: allowed for temporal
    assert users["late"] not in {r.user for r in read_split(tmp_path / "out", "train")}
    assert meta["oov_target_share"]["test"] == pytest.approx(1 / 3)
    assert meta["num_items"] == 2


def test_train_has_repeats_reads_only_the_training_records(tmp_path):
    # u: x y z x -> trains on x y; the repeated x is the test target only, so filter_seen=auto filters
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"u,{i},{T0 + k}\n" for k, i in enumerate("xyzx")))
    assert run(path, tmp_path / "out")["train_has_repeats"] is False
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"u,{i},{T0 + k}\n" for k, i in enumerate("xxyz")))
    assert run(path, tmp_path / "out2")["train_has_repeats"] is True


def test_temporal_errors(tmp_path):
    sasrec = tmp_path / "s.txt"
    sasrec.write_text("1 1\n1 2\n1 3\n")
    with pytest.raises(PrepareError, match="temporal.*needs timestamps"):
        prepare(PrepareConfig(format="sasrec", inputs=(str(sasrec),), out=str(tmp_path / "o"), split="temporal"),
                echo=False)
    log = tmp_path / "l.csv"
    log.write_text("user_id,item_id,timestamp\na,x,1500000000\na,y,1600000000\n")
    with pytest.raises(PrepareError, match="valid_cut .* must be before test_cut"):
        run(log, tmp_path / "o", split="temporal", valid_cut="2019-01-01", test_cut="2018-01-01")
    with pytest.raises(PrepareError, match="quantile"):
        run(log, tmp_path / "o", split="temporal", valid_cut="q1.5")


def test_temporal_category_vocabulary_is_the_training_periods(tmp_path):
    path = tmp_path / "c.csv"
    day = lambda d: T0 + d * DAY
    path.write_text("user_id,item_id,timestamp,category_id\n"
                    f"a,x,{day(0)},c1\na,y,{day(1)},c1\na,x,{day(5)},cLATE\n"  # x seen later under a new category
                    f"b,x,{day(2)},c1\nb,z,{day(4)},cNEW\nb,y,{day(6)},cNEW2\n")
    meta = run(path, tmp_path / "out", split="temporal", valid_cut=str(day(4)), test_cut=str(day(5)))
    assert vocab(tmp_path / "out", "categories") == {1: "c1"} and meta["num_categories"] == 1
    users = {raw: u for u, raw in vocab(tmp_path / "out", "users").items()}
    train = {r.user: r for r in read_split(tmp_path / "out", "train")}
    assert train[users["a"]].categories.tolist() == [1, 1]


def test_the_cap_is_refused_where_it_leaks_or_leaves_no_targets(tmp_path, log):
    path, _, _ = log
    with pytest.raises(ConfigError, match="max_events_per_user: cannot be used with split=temporal"):
        run(path, tmp_path / "o", split="temporal", max_events_per_user=10)
    with pytest.raises(ConfigError, match="max_events_per_user: 2 leaves no user the 3 events"):
        run(path, tmp_path / "o", max_events_per_user=2)


def test_k_core_holds_after_the_cap(tmp_path):
    # The cap runs first, then k-core to its fixed point: what is written meets both thresholds.
    # (k-core first, then the cap, would leave items seen fewer than 8 times.)
    rng = np.random.default_rng(3)
    rows = [(u, rng.integers(0, 6), T0 + 10 * k + u) for u in range(12) for k in range(6 + u % 4)]
    path = tmp_path / "k.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{i},{t}\n" for u, i, t in rows))
    meta = run(path, tmp_path / "o", min_user_count=5, min_item_count=8, max_events_per_user=6)
    events = {r.user: [*r.items.tolist(), r.target] for r in read_split(tmp_path / "o", "test")}
    assert len(events) == meta["num_users"] > 0  # test records: each user's whole history + target
    assert min(len(items) for items in events.values()) >= 5 and max(len(items) for items in events.values()) <= 6
    counts = np.bincount(np.concatenate(list(events.values())))
    assert counts[counts > 0].min() >= 8
    assert meta["report"]["dropped"]["cap_recent"] > 0 and meta["report"]["dropped"]["k_core"] > 0


def test_temporal_k_core_warns_that_it_counts_the_future(tmp_path, log, capsys):
    path, _, _ = log
    meta = run(path, tmp_path / "o", split="temporal", min_item_count=2)
    assert "k-core filtering" in meta["split"]["warnings"][0] and "after the cutoffs" in capsys.readouterr().err


@pytest.mark.parametrize("times", [
    ("1500000000900", "1500000000100", "1500000000500"),  # milliseconds
    ("1500000000.9", "1500000000.1", "1500000000.5"),  # fractional seconds
    ("2017-07-14T02:40:00.900Z", "2017-07-14T02:40:00.100Z", "2017-07-14T02:40:00.500Z"),  # ISO
])
def test_events_within_a_second_keep_their_order_and_are_not_duplicates(tmp_path, times):
    path = tmp_path / "ms.csv"  # read a@.9, b@.1, b@.5: all in one second, b twice 400 ms apart
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"u,{i},{t}\n" for i, t in zip("abb", times)))
    cfg = PrepareConfig(format="generic", inputs=(str(path),), out=str(tmp_path / "o"), max_timestamp="2030-01-01")
    meta = prepare(cfg, echo=False)  # duplicates dropped by default
    items = vocab(tmp_path / "o", "items")
    (test,) = read_split(tmp_path / "o", "test")
    assert [items[i] for i in (*test.items.tolist(), test.target)] == ["b", "b", "a"]
    assert meta["report"]["dropped"].get("duplicate", 0) == 0 and meta["report"]["out_of_order"] == 2
    path.write_text(path.read_text() + f"u,b,{times[2]}\n")  # an exact repeat is a duplicate
    assert prepare(cfg, echo=False)["report"]["dropped"]["duplicate"] == 1
