"""The Grain training pipeline: deterministic, every user once per epoch, resumable at any batch."""

import numpy as np
import pytest

from seqjax.data.pipeline import TrainBatches, TrainBatchSpec, default_buckets, eval_batches, records


def _spec(seed=0):
    return TrainBatchSpec(batch_size=32, max_len=20, seed=seed, buckets=(8, 20), sort_window=4)


def test_same_seed_same_batches_and_resume_mid_epoch(tiny_data):
    a, b = TrainBatches(tiny_data, _spec()), TrainBatches(tiny_data, _spec())
    full = list(a.epoch(1))
    assert len(full) == a.batches_per_epoch
    for x, y in zip(full, b.epoch(1)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    resumed = list(b.epoch(1, start_batch=3))
    assert len(resumed) == len(full) - 3
    for x, y in zip(full[3:], resumed):
        np.testing.assert_array_equal(x["items"], y["items"])
    other = list(TrainBatches(tiny_data, _spec(seed=1)).epoch(1))
    assert any(not np.array_equal(x["targets"], y["targets"]) for x, y in zip(full, other) if x["targets"].shape == y["targets"].shape)


def test_epoch_covers_every_trainable_user_once_and_shifts_targets(tiny_data):
    tb = TrainBatches(tiny_data, _spec())
    plan = tb.plan(0)
    ids = tb.indices[np.concatenate(plan)]
    train = records(tiny_data, "train")
    assert sorted(ids.tolist()) == [i for i in range(len(train)) if len(train[i].items) > 1]
    for batch_ids, batch in zip(plan, tb.epoch(0)):
        assert batch["items"].shape[1] in (8, 20)
        for row, rid in enumerate(tb.indices[batch_ids]):
            seq = train[int(rid)].items[-21:]
            n = batch["lengths"][row]
            assert n == len(seq) - 1
            np.testing.assert_array_equal(batch["items"][row, :n], seq[:-1])
            np.testing.assert_array_equal(batch["targets"][row, :n], seq[1:])
            assert not batch["weights"][row, n:].any() and batch["weights"][row, :n].all()
        assert not batch["lengths"][len(batch_ids):].any()  # filler rows carry no weight


@pytest.mark.parametrize("buckets", [None, (20,), (4, 8, 20)])
def test_eval_batches_keep_full_history_and_targets(tiny_data, buckets):
    valid = records(tiny_data, "valid")
    seen = []
    for batch in eval_batches(tiny_data, "valid", 64, 20, buckets):
        width = batch["items"].shape[1]
        assert width in (buckets or default_buckets(20)) and batch["timestamps"].shape == batch["items"].shape
        for row in np.flatnonzero(batch["valid"]):
            rec = valid[int(batch["index"][row])]
            np.testing.assert_array_equal(batch["history"][row, :len(rec.items)], rec.items)
            np.testing.assert_array_equal(batch["items"][row, :batch["lengths"][row]], rec.items[-20:])
            assert not batch["items"][row, batch["lengths"][row]:].any()
            assert batch["targets"][row] == rec.target and batch["users"][row] == rec.user
            seen.append(int(batch["index"][row]))
        assert not batch["valid"][batch["index"] < 0].any()
    assert sorted(seen) == list(range(len(valid)))


@pytest.mark.parametrize("history", ["recent", "all"])
def test_target_counts_count_exactly_the_trained_targets(tiny_data, history):
    spec = TrainBatchSpec(batch_size=32, max_len=20, seed=0, buckets=(8, 20), sort_window=4, history=history)
    tb = TrainBatches(tiny_data, spec)
    num_items = int(max(int(tb.records[i].items.max()) for i in range(len(tb.records))))
    counts = np.zeros(num_items + 1, np.int64)
    for batch in tb.epoch(0):  # every training target of one epoch, as the loss sees it
        np.add.at(counts, batch["targets"][batch["weights"] > 0], 1)
    np.testing.assert_array_equal(tb.target_counts(num_items), counts)


@pytest.mark.parametrize("cloze", [False, True])
def test_all_history_trains_every_event_once_per_epoch(tiny_data, cloze):
    """history=all: per user, the epoch's targets are exactly its events (next item: all but the first),
    each once, in windows of contiguous events no longer than max_len inputs; recent keeps the last ones."""
    from seqjax.data.masking import MaskSpec
    mask = MaskSpec(10_000, 1.0, 0.0) if cloze else None  # every position masked: all are targets
    spec = {"batch_size": 32, "max_len": 20, "seed": 0, "buckets": (8, 20), "sort_window": 4, "mask": mask}
    recent = TrainBatches(tiny_data, TrainBatchSpec(**spec))
    every = TrainBatches(tiny_data, TrainBatchSpec(**spec, history="all"))
    train = records(tiny_data, "train")
    lengths = np.array([len(train[i].items) for i in range(len(train))])
    assert (lengths > 21).any(), "the fixture needs histories longer than one window"
    assert every.num_examples > recent.num_examples and every.batches_per_epoch > recent.batches_per_epoch
    for tb in (recent, every):
        trained: dict[int, list[int]] = {}
        for batch_ids, batch in zip(tb.plan(3), tb.epoch(3)):
            for row, e in enumerate(batch_ids):
                rec, n = train[int(tb.indices[e])], int(batch["lengths"][row])
                end = len(rec.items) - int(tb.cuts[e])
                got = batch["targets"][row, :n]
                want = rec.items[max(end - n, 0 if cloze else 1):end]
                np.testing.assert_array_equal(got, want)
                assert 0 < n <= 20
                trained.setdefault(int(tb.indices[e]), []).extend(range(end - n, end))
        shift = 0 if cloze else 1
        assert sorted(trained) == np.flatnonzero(lengths > shift).tolist()
        for i, pos in trained.items():
            kept = lengths[i] - shift if tb is every else min(lengths[i] - shift, 20)
            assert sorted(pos) == list(range(lengths[i] - kept, lengths[i]))
