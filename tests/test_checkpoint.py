"""CheckpointStore against real Orbax on tmp_path: round trip, retention, verification, fallback."""

import json
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seqjax.train.checkpoint import MANIFEST_NAME, CheckpointError, CheckpointStore

LOGGER = "seqjax.train.checkpoint"


def make_state(seed: int = 0) -> dict:
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {
        "params": params,
        "opt": optax.adam(1e-3).init(params),
        "emb_bf16": jax.random.normal(jax.random.key(seed), (5, 2), jnp.bfloat16),
        "counts": jnp.arange(4, dtype=jnp.int32) + seed,
        "rng": jax.random.key_data(jax.random.key(seed + 100)),
        "step": jnp.asarray(seed, jnp.int32),
    }


def abstract_of(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)


def assert_bit_identical(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.sharding == want.sharding
        np.testing.assert_array_equal(np.ravel(got).view(np.uint8), np.ravel(want).view(np.uint8))


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def save_steps(store, steps, metric_of=lambda s: None):
    for s in steps:
        metric = metric_of(s)
        metrics = None if metric is None else {"NDCG@10": metric}
        store.save(s, make_state(s), {"position": s * 10}, metrics)


def test_round_trip_is_bit_identical_and_rebuilds_the_prng_key(tmp_path):
    state = make_state(seed=3)
    meta = {"position": 1234, "early_stopping": {"best": 0.25, "best_step": 7, "patience": 2},
            "epoch": 1, "tensorboard_step": 77, "config": {"model": {"dim": 8}, "lr": 0.001}}
    with CheckpointStore(tmp_path) as store:
        store.save(7, state, meta, {"NDCG@10": 0.25, "HR@10": 0.5})

    with CheckpointStore(tmp_path) as reopened:  # a fresh process sees only what is on disk
        step, restored, restored_meta = reopened.restore(abstract_of(state))
        assert reopened.metrics_of(7) == {"NDCG@10": 0.25, "HR@10": 0.5}
    assert step == 7
    assert restored_meta == meta
    assert_bit_identical(restored, state)
    assert isinstance(restored["opt"][0], optax.ScaleByAdamState)
    key = jax.random.wrap_key_data(restored["rng"])
    expected_draw = jax.random.uniform(jax.random.key(103), (3,))
    np.testing.assert_array_equal(jax.random.uniform(key, (3,)), expected_draw)


def test_empty_directory_restores_none(tmp_path):
    store = CheckpointStore(tmp_path / "never_saved")
    assert store.restore(abstract_of(make_state())) is None
    assert store.all_steps() == []
    assert store.latest_intact_step() is None and store.best_step() is None


def test_retention_keeps_latest_and_best(tmp_path):
    metrics = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4, 6: 0.5}
    store = CheckpointStore(tmp_path, keep_latest=2, keep_best=1)
    save_steps(store, range(1, 7), metrics.get)
    assert store.all_steps() == [2, 5, 6]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "5", "6"]
    assert store.best_step() == 2
    store.close()

    # After a restart the policy still knows step 2's metric (Orbax persisted it).
    store = CheckpointStore(tmp_path, keep_latest=2, keep_best=1)
    save_steps(store, [7], {7: 0.6}.get)
    assert store.all_steps() == [2, 6, 7]
    assert store.best_step() == 2


def test_min_mode_keeps_lowest(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=1, keep_best=1, best_metric="loss",
                            best_mode="min")
    for s, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)]:
        store.save(s, make_state(s), {}, {"loss": loss})
    assert store.all_steps() == [2, 4]
    assert store.best_step() == 2


def test_extra_best_metrics_keep_and_restore_their_own_best(tmp_path):
    # One best per head of a multi-task run: each metric keeps its best step and restores it by name.
    metrics = {1: (0.5, 0.1), 2: (0.9, 0.2), 3: (0.6, 0.8), 4: (0.7, 0.3), 5: (0.4, 0.4)}
    store = CheckpointStore(tmp_path, keep_latest=1, keep_best=1, best_metric="PR-AUC",
                            extra_best={"next_item/NDCG@10": "max", "churn/log_loss": "min"})
    for s, (auc, ndcg) in metrics.items():
        store.save(s, make_state(s), {}, {"PR-AUC": auc, "next_item/NDCG@10": ndcg, "churn/log_loss": 1 / s})
    assert store.all_steps() == [2, 3, 5]  # latest 5 (also the lowest log loss), PR-AUC 2, NDCG 3
    assert store.best_step() == 2
    assert store.best_step("next_item/NDCG@10") == 3
    assert store.best_step("churn/log_loss") == 5
    assert store.restore(abstract_of(make_state(0)), step="best", metric="next_item/NDCG@10")[0] == 3
    with pytest.raises(ValueError, match="not a metric this store keeps best steps of"):
        store.best_step("HR@10")


def test_steps_without_metric_are_never_kept_as_best(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=2, keep_best=1)
    store.save(1, make_state(1), {}, {"NDCG@10": 0.2})
    store.save(2, make_state(2), {}, {"NDCG@10": math.nan})
    store.save(3, make_state(3), {}, None)
    store.save(4, make_state(4), {}, {"HR@10": 0.9})
    store.save(5, make_state(5), {}, None)
    assert store.all_steps() == [1, 4, 5]
    assert store.best_step() == 1
    assert store.metrics_of(5) is None


def test_flipped_bytes_fall_back_to_previous_step(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=0)
    save_steps(store, [1, 2, 3])
    victim = largest_file(tmp_path / "3" / "state")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        step, restored, meta = store.restore(abstract_of(make_state()))
    assert (step, meta) == (2, {"position": 20})
    assert_bit_identical(restored, make_state(2))
    rel = victim.relative_to(tmp_path / "3").as_posix()
    expected = f"checkpoint step 3 is corrupted ({rel}: sha256 mismatch); falling back to step 2"
    assert expected in caplog.text


def test_truncated_file_falls_back(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=0)
    save_steps(store, [1, 2, 3])
    victim = largest_file(tmp_path / "3" / "state")
    victim.write_bytes(victim.read_bytes()[:-7])

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.latest_intact_step() == 2
    assert "checkpoint step 3 is corrupted" in caplog.text and "truncated" in caplog.text
    assert store.restore(abstract_of(make_state()))[0] == 2


def test_missing_manifest_is_not_intact(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=0)
    save_steps(store, [1, 2])
    # As if killed between Orbax's commit and the manifest.
    (tmp_path / "2" / MANIFEST_NAME).unlink()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.restore(abstract_of(make_state()))[0] == 1
    assert f"checkpoint step 2 is corrupted (no {MANIFEST_NAME}" in caplog.text


def test_all_steps_corrupted_raises(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=0)
    save_steps(store, [1, 2])
    (tmp_path / "1" / MANIFEST_NAME).unlink()
    largest_file(tmp_path / "2" / "state").write_bytes(b"")
    expected = r"no intact checkpoint .*step 2: .*step 1: no seqjax_manifest"
    with pytest.raises(CheckpointError, match=expected):
        store.restore(abstract_of(make_state()))
    assert store.latest_intact_step() is None


def test_explicit_step_does_not_fall_back(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=0)
    save_steps(store, [1, 2])
    (tmp_path / "2" / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="step 2"):
        store.restore(abstract_of(make_state()), step=2)
    with pytest.raises(CheckpointError, match="no checkpoint step 9"):
        store.restore(abstract_of(make_state()), step=9)
    assert store.restore(abstract_of(make_state()), step=1)[0] == 1


def test_restore_best_and_its_fallback(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=1)
    save_steps(store, [1, 2, 3], {1: 0.3, 2: 0.8, 3: 0.5}.get)
    step, restored, meta = store.restore(abstract_of(make_state()), step="best")
    assert (step, meta) == (2, {"position": 20})
    assert_bit_identical(restored, make_state(2))

    (tmp_path / "2" / MANIFEST_NAME).unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.restore(abstract_of(make_state()), step="best")[0] == 3
    assert "checkpoint step 2 is corrupted" in caplog.text
    assert "falling back to step 3" in caplog.text
    assert store.best_step() == 3


def test_resaving_a_corrupted_step_replaces_it(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=0)
    save_steps(store, [1, 2])
    (tmp_path / "2" / MANIFEST_NAME).unlink()
    assert store.restore(abstract_of(make_state()))[0] == 1
    store.save(2, make_state(42), {"position": 42})  # the resumed run reaches step 2 again
    step, restored, meta = store.restore(abstract_of(make_state()))
    assert (step, meta) == (2, {"position": 42})
    assert_bit_identical(restored, make_state(42))
    with pytest.raises(CheckpointError, match="already exists"):
        store.save(2, make_state(2), {})


def test_unreadable_orbax_metrics_do_not_block_opening(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_latest=3, keep_best=1)
    save_steps(store, [1, 2], {1: 0.1, 2: 0.2}.get)
    store.close()
    (tmp_path / "2" / "metrics" / "metrics").write_text('{"NDCG@1')  # truncated JSON

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store = CheckpointStore(tmp_path, keep_latest=3, keep_best=1)
    assert "checkpoint step 2 is corrupted (metrics/metrics is not JSON)" in caplog.text
    assert store.all_steps() == [1]
    assert store.restore(abstract_of(make_state()))[0] == 1
    assert any(p.name.startswith("2.corrupt-") for p in tmp_path.iterdir())


def test_leftover_tmp_dir_of_a_killed_save_is_not_a_step(tmp_path):
    store = CheckpointStore(tmp_path)
    save_steps(store, [1])
    store.close()
    leftover = tmp_path / "2.orbax-checkpoint-tmp"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "half_written").write_bytes(b"\0" * 10)

    store = CheckpointStore(tmp_path)
    assert store.all_steps() == [1]
    save_steps(store, [2])  # waits for Orbax's cleanup of the leftover before saving
    assert store.all_steps() == [1, 2] and not leftover.exists()


def test_manifest_lists_every_file_of_the_step(tmp_path):
    store = CheckpointStore(tmp_path)
    save_steps(store, [5], {5: 0.5}.get)
    step_dir = tmp_path / "5"
    listed = set(json.loads((step_dir / MANIFEST_NAME).read_text())["files"])
    on_disk = {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file()}
    assert listed == on_disk - {MANIFEST_NAME}
    assert any(name.startswith("state/") for name in listed) and "meta/metadata" in listed
