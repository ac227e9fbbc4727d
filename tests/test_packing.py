"""Packed training batches (data.pack): the same users per step, and the same loss as unpacked rows."""

import numpy as np
import pytest
from conftest import tiny_config

from seqjax import config as config_lib
from seqjax.data.packing import first_fit_decreasing, packed_rows
from seqjax.data.pipeline import TrainBatches, TrainBatchSpec, records
from seqjax.train.config import ExperimentConfig


def test_first_fit_decreasing_places_every_sequence_once_within_capacity():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 21, 300).tolist()
    bins = first_fit_decreasing(sizes, 20)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(sizes[i] for i in b) <= 20 for b in bins)
    assert len(bins) <= -(-sum(sizes) // 20) * 1.25  # FFD is within 11/9 OPT + 1 of the best packing
    assert bins == first_fit_decreasing(sizes, 20)
    with pytest.raises(ValueError, match=r"\[1, 20\]"):
        first_fit_decreasing([21], 20)


def test_packed_rows_hold_each_sequence_with_its_own_positions():
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 50, n) for n in rng.integers(2, 12, 40)]
    batch = packed_rows(seqs, 11, 8)
    assert batch["items"].shape[0] % 8 == 0
    found = []
    for row in range(batch["items"].shape[0]):
        for seg in range(1, batch["segments"][row].max() + 1):
            at = np.flatnonzero(batch["segments"][row] == seg)
            np.testing.assert_array_equal(batch["positions"][row, at], np.arange(len(at)))
            found.append(np.concatenate([batch["items"][row, at], batch["targets"][row, at[-1:]]]))
        n = batch["lengths"][row]
        assert batch["weights"][row, :n].all() and not batch["weights"][row, n:].any()
    assert sorted(map(tuple, found)) == sorted(map(tuple, seqs))


def test_packed_epoch_trains_the_same_targets_batch_by_batch(tiny_data):
    spec = dict(batch_size=32, max_len=20, seed=0, buckets=(8, 20), sort_window=1)
    plain = TrainBatches(tiny_data, TrainBatchSpec(**spec))
    packed = TrainBatches(tiny_data, TrainBatchSpec(**spec, pack=True))
    a, b = list(plain.epoch(2)), list(packed.epoch(2))
    assert len(a) == len(b) == plain.batches_per_epoch
    for x, y in zip(a, b):
        assert sorted(x["targets"][x["weights"] > 0]) == sorted(y["targets"][y["weights"] > 0])
        assert y["items"].shape[1] == 20 and y["weights"].mean() > x["weights"].mean()
    train = records(tiny_data, "train")
    assert sum(int(y["segments"].max(axis=1).sum()) for y in b) == sum(len(train[int(i)].items) > 1
                                                                        for i in range(len(train)))


@pytest.mark.parametrize("layout", ["sasrec", "pre_ln"])
def test_packed_steps_match_unpacked_steps(layout, tiny_data, tmp_path):
    """No dropout: packed rows give the same per-step losses and parameters as one user per row."""
    import jax

    from seqjax.train.loop import Trainer
    from seqjax.train.step import put_batch
    result = {}
    for pack in ("false", "true"):
        cfg = tiny_config(tiny_data, f"data.pack={pack}", "data.sort_window=1", "model.sasrec.dropout=0",
                          "model.sasrec.heads=2", f"model.sasrec.layout={layout}", "train.loss_norm=batch")
        trainer = Trainer(cfg, tmp_path / pack)
        state, losses = trainer._create(), []
        for batch, _ in zip(trainer.batches.epoch(0), range(4)):
            state, metrics = trainer.step_fn(state, put_batch(batch, trainer.mesh))
            losses.append(float(metrics["loss"]))
        result[pack] = losses, jax.tree.map(np.array, state["params"])
    np.testing.assert_allclose(result["true"][0], result["false"][0], rtol=1e-5)
    # The key bias shifts every score of a query alike, so softmax cancels it: its gradient is rounding noise,
    # which Adam scales up to full-size steps. It is left out; every other parameter must agree.
    for params in (result["true"][1], result["false"][1]):
        for block in params["blocks"].values():
            name, keys = ("qkv", slice(16, 32)) if layout == "pre_ln" else ("kv", slice(0, 16))
            block[name]["bias"][keys] = 0.0
    jax.tree.map(lambda p, u: np.testing.assert_allclose(p, u, atol=1e-5), result["true"][1], result["false"][1])


@pytest.mark.parametrize("override", ["model.kind=bert4rec", "model.attention=blockwise", "model.kind=gru4rec"])
def test_packing_is_refused_where_attention_cannot_mask_segments(override):
    with pytest.raises(config_lib.ConfigError, match="data.pack=true"):
        config_lib.load(ExperimentConfig, None, ["data.pack=true", override])


def test_progress_counts_users_of_packed_and_unpacked_batches():
    from seqjax.train.loop import sequences_in
    seqs = [np.arange(1, n + 2) for n in (5, 3, 9, 2)]  # 4 users
    assert sequences_in(packed_rows(seqs, 10, 8)) == 4
    assert sequences_in({"lengths": np.array([5, 3, 0, 9, 0])}) == 3
