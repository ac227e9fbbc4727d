"""Sequence models for purchase / churn (seqjax.models.event_encoder, seqjax.train.binary_loop) on a generated log:
every encoder kind beats a constant predictor, the user_item head ranks a user's candidates, padding changes
nothing, a resumed run is bit-identical, and the multi-task model trains all its heads and predicts every
example once. Compiles dominate the run time: runs are shared through module fixtures."""

import csv
import dataclasses
import shutil
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx
from sklearn.metrics import roc_auc_score

from seqjax.cli import _is_sequence_task_config
from seqjax.config import ConfigError
from seqjax.data.prepare import PrepareConfig, prepare
from seqjax.data.synthetic import Behaviour, generate_log
from seqjax.data.task_pipeline import TaskBatchSpec, task_eval_batches
from seqjax.data.task_prepare import TaskOptions
from seqjax.evaluation.binary import binary_metrics
from seqjax.models.event_encoder import EventEncoder, EventEncoderConfig, MultiTaskModel
from seqjax.train.binary_loop import BinaryTrainer, checkpoint_store, train_sequence_task
from seqjax.train.checkpoint import CheckpointStore
from seqjax.train.config import OptimConfig
from seqjax.train.sampled_losses import LossConfig
from seqjax.train.task_config import BinaryHeadConfig, NextItemHeadConfig, SequenceTaskConfig
from seqjax.train.task_data import attach, head_labels, resolve_data, side_table
from seqjax.train.task_predict import predict, scored_examples

# More carts and later checkouts than the default shop: purchases follow from the history.
BEHAVIOUR = Behaviour(cart=0.3, cart_on_repeat=0.5, checkout=0.4, buy_after_cart=0.05, repeat=0.3, session_repeat=0.5)
# purchase and churn share every option but the task: the same examples, so the multi-task join matches all.
TASKS = {
    "purchase": TaskOptions(task="purchase", horizon="1d", num_train_cutoffs=3, max_len=16),
    "churn": TaskOptions(task="churn", horizon="1d", num_train_cutoffs=3, max_len=16),
    "pair": TaskOptions(task="purchase", level="user_item", horizon="1d", feature_window="1d", num_train_cutoffs=2,
                        max_len=16),
}
KINDS = ("gru", "lstm", "transformer")
MIN_AUC = 0.6  # chance (a constant predictor) is 0.5; ~90 validation positives put 0.6 about 3 SE above it
MIN_WITHIN_USER_AUC = 0.55  # a candidate-blind model ties all of a user's candidates: exactly 0.5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """task name -> prepared DATA_DIR, from one generated log."""
    root = tmp_path_factory.mktemp("binary")
    generate_log(root / "log.csv", num_users=600, num_items=150, num_categories=6, seed=3, days=8, mean_events=60,
                 behaviour=BEHAVIOUR)
    for name, task in TASKS.items():
        prepare(PrepareConfig(format="generic", inputs=(str(root / "log.csv"),), out=str(root / name),
                              max_timestamp="2100-01-01", task=task), echo=False)
    return {name: root / name for name in TASKS}


def tiny(data_dir, kind="gru", **kw) -> SequenceTaskConfig:
    enc = EventEncoderConfig(kind=kind, dim=16, blocks=1, heads=2, dropout=0.1)
    base = {"data_path": str(data_dir), "max_len": 16, "buckets": (16,), "batch_size": 64, "eval_batch_size": 256,
            "encoder": enc, "epochs": 2, "patience": 0, "log_every_steps": 4,
            "optim": OptimConfig(lr=0.01, warmup_steps=5)}
    return SequenceTaskConfig(**{**base, **kw})


# kind -> (prepared task, config overrides): one run per kind, each on another example level to cover both.
RUNS = {
    "gru": ("purchase", {}),
    "lstm": ("purchase", {}),
    # (user, item) examples: 5% positives, which pos_weight helps learn in few steps.
    "transformer": ("pair", {"batch_size": 128, "purchase": BinaryHeadConfig(pos_weight=10.0)}),
}


@pytest.fixture(scope="module")
def kind_runs(data, tmp_path_factory):
    """kind -> (config, workdir, summary) of its RUNS entry, trained on first use."""
    runs = {}

    def get(kind):
        if kind not in runs:
            task, overrides = RUNS[kind]
            cfg = tiny(data[task], kind, epochs=3, patience=1, **overrides)
            workdir = tmp_path_factory.mktemp(f"run_{kind}")
            runs[kind] = cfg, workdir, train_sequence_task(cfg, workdir)
        return runs[kind]
    return get


def _scalars(workdir, tag) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]


def _losses(workdir, tag):
    return np.array([v for _, v in _scalars(workdir, tag)])


def _state(workdir, step="latest"):
    step, state, meta = CheckpointStore(workdir / "checkpoints").restore(None, step=step)
    return step, jax.tree.map(np.asarray, state), meta


@pytest.mark.parametrize("kind", KINDS)
def test_each_encoder_beats_a_constant_predictor(kind, kind_runs):
    cfg, workdir, summary = kind_runs(kind)
    if summary["stopped"].startswith("early stop"):  # patience 1: the first evaluation without a gain stops
        assert summary["stopped"] == "early stop: no PR-AUC gain in 1 evaluations"
        assert summary["epochs"] == summary["best_epoch"] + 1 < 3
    else:
        assert summary["stopped"] == "reached epochs=3" and summary["epochs"] == 3
    assert summary["best_valid"]["purchase/ROC-AUC"] > MIN_AUC, summary["best_valid"]
    loss = _losses(workdir, "train/purchase_loss")
    assert loss[-3:].mean() < loss[:3].mean()
    scored, chosen = scored_examples(workdir, "valid")  # the best checkpoint reproduces its validation metric
    assert chosen["step"] == summary["best_step"]
    s = scored["purchase"]
    keys = pq.read_table(cfg.data_path + "/task/valid.parquet", columns=["user", "label"])
    np.testing.assert_array_equal(s["label"], keys.column("label").to_numpy()[s["example"]])
    np.testing.assert_array_equal(s["user"], keys.column("user").to_numpy()[s["example"]])
    assert binary_metrics(s["label"], s["prob"])["ROC-AUC"] == summary["best_valid"]["purchase/ROC-AUC"]


def test_resumed_run_is_bit_identical(kind_runs, tmp_path, capsys):
    cfg, clean, reference = kind_runs("gru")
    steps_per_epoch = BinaryTrainer(cfg, tmp_path).steps_per_epoch
    # inside the second epoch, after one validation, on a logged step (log_every_steps=4): its points must survive
    stop_at = 4 * (steps_per_epoch // 4 + 1)
    assert steps_per_epoch < stop_at < 2 * steps_per_epoch
    first = BinaryTrainer(dataclasses.replace(cfg, max_steps=stop_at), tmp_path, allow_config_change=True).run()
    assert first["stopped"] == f"reached max_steps={stop_at}"
    summary = BinaryTrainer(cfg, tmp_path, allow_config_change=True).run()
    assert f"resuming from checkpoint step {stop_at} (epoch 1, batch {stop_at - steps_per_epoch})" in \
        capsys.readouterr().out
    step_a, state_a, meta_a = _state(clean)
    step_b, state_b, meta_b = _state(tmp_path)
    assert step_a == step_b == reference["epochs"] * steps_per_epoch
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)  # params, optimizer state, RNG, step
    assert meta_a["progress"]["best_metric"] == meta_b["progress"]["best_metric"]
    assert summary["best_valid"] == reference["best_valid"] and summary["stopped"] == reference["stopped"]
    for tag in ("train/purchase_loss", "valid/PR-AUC"):  # the curves too, the checkpoint's own step included
        assert _scalars(tmp_path, tag) == _scalars(clean, tag), tag


def test_user_item_head_ranks_a_users_candidates(kind_runs):
    s = scored_examples(kind_runs("transformer")[1], "valid")[0]["purchase"]
    users, labels, prob = s["user"], s["label"], s["prob"]
    # Within one user, a model blind to the candidate gives every candidate the same score: AUC exactly 0.5.
    aucs = [binary_metrics(labels[users == u], prob[users == u])["ROC-AUC"] for u in np.unique(users)
            if 0 < labels[users == u].sum() < (users == u).sum()]
    assert len(aucs) >= 20
    assert np.mean(aucs) > MIN_WITHIN_USER_AUC, np.mean(aucs)


@pytest.mark.parametrize("kind,causal", [("gru", True), ("lstm", True), ("transformer", True),
                                         ("transformer", False)])
def test_padded_positions_change_nothing(kind, causal, data):
    cfg = EventEncoderConfig(kind=kind, dim=16, blocks=2, layers=2, heads=2, causal=causal)
    graphdef, params = nnx.split(EventEncoder(150, 6, 24, cfg, has_prices=True, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda p, batch: tuple(nnx.merge(graphdef, p)(batch)))
    table = side_table(resolve_data(tiny(data["purchase"])), "valid", str(data["purchase"]))
    batch = attach(next(task_eval_batches(data["purchase"], "valid", TaskBatchSpec(32, 24))), table)
    batch["lengths"][::2] = (batch["lengths"][::2] + 1) // 2  # rows of many lengths, all with padding
    assert 0 < batch["lengths"].min() and batch["lengths"].max() <= 16 and batch["items"].shape == (32, 24)
    rng = np.random.default_rng(0)
    noisy = dict(batch)
    pad = np.arange(24)[None, :] >= batch["lengths"][:, None]
    for name, high in (("items", 151), ("events", 6), ("categories", 7), ("hour", 24), ("weekday", 7),
                       ("gap_bucket", 32), ("session_position", 200), ("price_bucket", 32)):
        noisy[name] = np.where(pad, rng.integers(0, high, pad.shape), batch[name]).astype(np.int32)
    states, user, mask, _ = forward(params, batch)
    states2, user2, _, _ = forward(params, noisy)
    np.testing.assert_array_equal(np.asarray(user), np.asarray(user2))
    np.testing.assert_array_equal(np.where(mask[..., None], states, 0), np.where(mask[..., None], states2, 0))
    assert not np.array_equal(noisy["items"], batch["items"])


def test_encoder_without_item_ids_ignores_them(data):
    # features without "items" (user-level heads only): the item ids reach nothing, the other features do.
    cfg = EventEncoderConfig(kind="gru", dim=16, features=("events", "hour", "gap_bucket"))
    encoder = EventEncoder(150, 6, 24, cfg, rngs=nnx.Rngs(0))
    assert encoder.item_embed is None
    table = side_table(resolve_data(tiny(data["purchase"])), "valid", str(data["purchase"]))
    batch = attach(next(task_eval_batches(data["purchase"], "valid", TaskBatchSpec(32, 24))), table)
    other_items = {**batch, "items": np.where(batch["items"] > 0, 151 - batch["items"], 0).astype(np.int32)}
    other_hours = {**batch, "hour": ((batch["hour"] + 5) % 24).astype(np.int32)}
    user = np.asarray(encoder(batch).user)
    np.testing.assert_array_equal(np.asarray(encoder(other_items).user), user)
    assert not np.allclose(np.asarray(encoder(other_hours).user), user)


def test_price_buckets_reach_the_encoder_only_where_the_data_has_prices(data):
    table = side_table(resolve_data(tiny(data["purchase"])), "valid", str(data["purchase"]))
    batch = attach(next(task_eval_batches(data["purchase"], "valid", TaskBatchSpec(32, 24))), table)
    valid = np.arange(24)[None, :] < batch["lengths"][:, None]
    priced = {**batch, "price_bucket": np.where(valid, 1 + np.arange(24) % 31, 0).astype(np.int32)}
    cfg = EventEncoderConfig(kind="gru", dim=16)
    for has_prices in (False, True):
        encoder = EventEncoder(150, 6, 24, cfg, has_prices=has_prices, rngs=nnx.Rngs(0))
        assert ("price_bucket" in encoder.features) == has_prices
        same = np.allclose(np.asarray(encoder(priced).user), np.asarray(encoder(batch).user))
        assert same != has_prices


def test_aggregates_use_training_statistics_and_reach_the_head(data, tmp_path):
    from seqjax.train.binary_loop import build_model
    from seqjax.train.task_data import aggregate_inputs

    task = data["purchase"] / "task"
    train = pq.read_table(task / "train.parquet")
    valid = pq.read_table(task / "valid.parquet")
    cols = [c for c in train.column_names if c not in ("user", "item", "cutoff", "label")]
    # n_events has no nulls: signed log1p, then the training split's mean and standard deviation.
    j = cols.index("n_events")
    ref = np.log1p(train.column("n_events").to_numpy().astype(np.float64))
    want = (np.log1p(valid.column("n_events").to_numpy().astype(np.float64)) - ref.mean()) / ref.std()
    np.testing.assert_allclose(aggregate_inputs(str(data["purchase"]), "valid")[:, j], want, rtol=1e-5, atol=1e-6)

    cfg = tiny(data["purchase"], aggregates=True, epochs=3)
    summary = train_sequence_task(cfg, tmp_path)
    assert summary["best_valid"]["purchase/ROC-AUC"] > MIN_AUC
    resolved = resolve_data(cfg)
    assert resolved.num_aggregates >= len(cols)  # plus a missingness indicator per column with nulls
    model = build_model(cfg, resolved)
    table = side_table(resolved, "valid", cfg.data_path)
    batch = attach(next(task_eval_batches(cfg.data_path, "valid", TaskBatchSpec(64, cfg.max_len))), table)
    assert batch["aggregates"].shape == (64, resolved.num_aggregates)
    logits, _ = model(batch)
    shifted, _ = model({**batch, "aggregates": batch["aggregates"] + 1.0})
    assert not np.allclose(np.asarray(logits["purchase"]), np.asarray(shifted["purchase"]))


def test_multitask_heads_all_train_and_predict_every_example(data, tmp_path):
    # The next_item head trains with sampled negatives (the large-catalogue setting); full softmax is the
    # same dispatcher SASRec's tests cover.
    sampled = NextItemHeadConfig(loss=LossConfig(kind="sampled", num_negatives=32))
    cfg = tiny(data["purchase"], heads=("purchase", "churn", "next_item"), next_item=sampled,
               churn=dataclasses.replace(SequenceTaskConfig().churn, data=str(data["churn"])))
    summary = train_sequence_task(cfg, tmp_path)
    assert summary["heads"] == ["next_item", "purchase", "churn"]
    for head in ("purchase", "churn", "next_item"):
        loss = _losses(tmp_path, f"train/{head}_loss")
        assert loss[-3:].mean() < loss[:3].mean() - 0.01, (head, loss)
    assert {"purchase/ROC-AUC", "churn/ROC-AUC"} <= set(summary["best_valid"])
    predictions = predict(tmp_path, "valid")
    n = pq.read_metadata(data["purchase"] / "task" / "valid.parquet").num_rows
    assert set(predictions) == {"purchase", "churn"}
    for index, prob in predictions.values():
        np.testing.assert_array_equal(np.sort(index), np.arange(n))
        assert prob.shape == (n,) and ((prob >= 0) & (prob <= 1)).all()
    # The churn labels joined on (user, cutoff) are the churn directory's own, row for row.
    index, labels = head_labels(cfg, "valid")["churn"]
    own = pq.read_table(data["churn"] / "task" / "valid.parquet", columns=["label"]).column("label").to_numpy()
    np.testing.assert_array_equal(index, np.arange(n))
    np.testing.assert_array_equal(labels, own)
    _check_next_item_evaluation(cfg, tmp_path, data["purchase"])
    from seqjax.evaluation.sequence_task_eval import evaluate_sequence_task
    # The next_item head keeps its own best checkpoint: the step with the best validation NDCG@10, which
    # `evaluate --task next_item` loads and re-scores to the value logged during training.
    curve = _scalars(tmp_path, "valid/next_item/NDCG@10")
    best_step, best_value = max(curve, key=lambda sv: (sv[1], sv[0]))
    assert summary["next_item_best"]["step"] == best_step
    valid = evaluate_sequence_task(tmp_path, "valid", "best", tmp_path / "nv.json", task="next_item")
    assert valid["protocol"]["model"]["checkpoint"] == {"step": best_step,
                                                        "chosen": "best validation next_item/NDCG@10"}
    assert valid["metrics"]["NDCG@10"] == pytest.approx(best_value, rel=1e-5)
    churn = evaluate_sequence_task(tmp_path, "test", "best", tmp_path / "c.json", task="churn")
    assert churn["protocol"]["task"]["task"] == "churn"  # the card of the head's own label directory


def _check_next_item_evaluation(cfg, workdir, data_dir):
    """`evaluate --task next_item`: each example's target is its first label-window event, and its rank
    equals a dense recomputation (all [B, T, V+1] scores, pessimistic ties) at the last history event."""
    from seqjax import sharding
    from seqjax.evaluation.sequence_task_eval import evaluate_sequence_task
    from seqjax.train.binary_loop import model_graphdef
    from seqjax.train.task_predict import restore_params

    result = evaluate_sequence_task(workdir, "test", "best", workdir / "n.json", task="next_item")
    ranked = np.loadtxt(result["files"]["per_example"], delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    nxt = pq.read_table(data_dir / "task" / "test_next.parquet").column("next_item").to_numpy()
    assert len(ranked) == result["protocol"]["examples"]["ranked"] > 20
    np.testing.assert_array_equal(ranked[:, 2], nxt[ranked[:, 0]])
    data = resolve_data(cfg)
    mesh = sharding.make_mesh(1)
    _, params, chosen = restore_params(workdir, cfg, data, mesh, "best", head="next_item")
    assert chosen["step"] == result["protocol"]["model"]["checkpoint"]["step"]
    model = nnx.merge(model_graphdef(cfg, data), params)
    table = side_table(data, "test", cfg.data_path)
    want = {}
    for batch in task_eval_batches(cfg.data_path, "test", TaskBatchSpec(64, cfg.max_len)):
        feed = attach(batch, table)
        _, enc = model(feed)
        scores = np.asarray(model.next_item_scores(enc))
        if model.repeat is not None:
            scores = _slow_mixture(scores, *model.repeat_parts(feed, enc), batch["items"], batch["lengths"])
        for row, example in enumerate(batch["example"]):
            if example >= 0 and nxt[example] > 0:
                s = scores[row, batch["lengths"][row] - 1, 1:]
                target = s[nxt[example] - 1]
                want[int(example)] = 1 + int((s >= target).sum()) - 1
    np.testing.assert_array_equal(ranked[:, 3], [want[int(e)] for e in ranked[:, 0]])
    assert result["metrics"]["MRR"] == pytest.approx(np.mean(1.0 / ranked[:, 3]))


def _slow_mixture(explore, gate, log_a, visible, items, lengths):
    """log p of the repeat-explore mixture [B, T, V+1] at each row's last position (others left as they are),
    item by item: gate * (attention mass on the item's past events), else (1 - gate) * softmax over the
    items not in the history."""
    out = explore.astype(np.float64).copy()
    gate, a = np.asarray(gate, np.float64), np.exp(np.asarray(log_a, np.float64)) * np.asarray(visible)
    for b, n in enumerate(np.asarray(lengths)):
        if n == 0:
            continue
        t, seen = n - 1, np.asarray(items[b, :n])
        g = 1 / (1 + np.exp(-gate[b, t]))
        unseen = np.setdiff1d(np.arange(1, out.shape[-1]), seen)
        z = explore[b, t, unseen].astype(np.float64)
        out[b, t, unseen] = np.log1p(-g) + z - z.max() - np.log(np.exp(z - z.max()).sum())
        for v in np.unique(seen):
            out[b, t, v] = np.log(g) + np.log(a[b, t, :n][seen == v].sum())
    return out


def test_repeat_head_ranks_as_its_mixture_and_beats_the_plain_head(data, tmp_path):
    """On a log where a third of visits come back to an item, the repeat-explore head ranks the next event
    better than the plain next-item head of the same run, and `evaluate --task next_item` ranks by its
    mixture's log-probability (recomputed item by item)."""
    runs = {}
    for repeat in (False, True):
        cfg = tiny(data["purchase"], heads=("purchase", "next_item"),
                   next_item=NextItemHeadConfig(weight=1.0, repeat=repeat))
        runs[repeat] = cfg, train_sequence_task(cfg, tmp_path / str(repeat))
    plain, repeat = (runs[r][1]["next_item_best"]["next_item/NDCG@10"] for r in (False, True))
    assert repeat > plain + 0.05, (plain, repeat)
    _check_next_item_evaluation(runs[True][0], tmp_path / "True", data["purchase"])
    with pytest.raises(ConfigError, match=r"next_item\.repeat=true: next_item is not in"):
        tiny(data["purchase"], next_item=NextItemHeadConfig(repeat=True)).validate()


def test_tied_validation_keeps_the_later_step_as_the_checkpoint_store_does(data, tmp_path, monkeypatch):
    tied = {"PR-AUC": 0.3, "purchase/PR-AUC": 0.3, "purchase/ROC-AUC": 0.6}
    monkeypatch.setattr(BinaryTrainer, "validate", lambda self, params: dict(tied))
    cfg = tiny(data["purchase"], epochs=4, patience=2)
    summary = train_sequence_task(cfg, tmp_path)
    assert summary["best_step"] == checkpoint_store(tmp_path, cfg).best_step()
    assert summary["best_epoch"] == summary["epochs"] == 3 and summary["stopped"].startswith("early stop")


def test_config_errors_name_the_field(data):
    with pytest.raises(ValueError, match=r"sequence_task\.encoder\.dim=0"):
        EventEncoderConfig(dim=0).validate()
    without_items = EventEncoderConfig(features=("events", "hour"))
    with pytest.raises(ConfigError, match=r"sequence_task\.encoder\.features must include 'items' for the "
                                          r"next_item head"):
        SequenceTaskConfig(heads=("purchase", "next_item"), encoder=without_items).validate()
    with pytest.raises(ValueError, match=r"features must include 'items' for the \['purchase'\] head"):
        MultiTaskModel(150, 6, 16, without_items, ("purchase",), ("purchase",), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"sequence_task\.heads: \['next_item'\] has no binary head"):
        SequenceTaskConfig(heads=("next_item",)).validate()
    bidirectional = dataclasses.replace(EventEncoderConfig(), kind="transformer", causal=False)
    with pytest.raises(ConfigError, match=r"sequence_task\.next_item\.loss: sampled .* needs item popularity"):
        SequenceTaskConfig(heads=("purchase", "next_item"), next_item=NextItemHeadConfig(
            loss=LossConfig(kind="sampled", sampler="popularity"))).validate()
    with pytest.raises(ConfigError, match=r"sequence_task\.next_item\.loss\.exclude_own_items is for next-item"):
        SequenceTaskConfig(heads=("purchase", "next_item"), next_item=NextItemHeadConfig(
            loss=LossConfig(exclude_own_items=True))).validate()
    with pytest.raises(ConfigError, match="next_item needs a causal encoder"):
        SequenceTaskConfig(heads=("purchase", "next_item"), encoder=bidirectional).validate()
    with pytest.raises(ConfigError, match=r"sequence_task\.churn\.data: .* holds purchase labels"):
        resolve_data(tiny(data["purchase"], heads=("churn",)))
    same = dataclasses.replace(SequenceTaskConfig().churn, data=str(data["purchase"]))  # data_path, named again
    with pytest.raises(ConfigError, match=r"sequence_task\.churn\.data: .* holds purchase labels"):
        resolve_data(tiny(data["purchase"], heads=("purchase", "churn"), churn=same))
    with pytest.raises(ConfigError, match=r"sequence_task\.churn\.data: .* holds purchase labels at user_item level"):
        resolve_data(tiny(data["purchase"], heads=("purchase", "churn"),
                          churn=dataclasses.replace(SequenceTaskConfig().churn, data=str(data["pair"]))))


def test_other_heads_labels_join_on_user_and_cutoff(data, tmp_path):
    """A label directory in another row order, with examples missing: labels follow (user, cutoff), and the
    examples without a match are left out of that head."""
    churn = tmp_path / "churn"
    shutil.copytree(data["churn"], churn)
    own = pq.read_table(data["churn"] / "task" / "valid.parquet", columns=["user", "cutoff", "label"])
    n = own.num_rows
    kept = np.random.default_rng(0).permutation(n)[: n - 7]  # shuffled, 7 examples dropped
    pq.write_table(own.take(pa.array(kept)), churn / "task" / "valid.parquet")
    cfg = tiny(data["purchase"], heads=("purchase", "churn"),
               churn=dataclasses.replace(SequenceTaskConfig().churn, data=str(churn)))
    table = side_table(resolve_data(cfg), "valid", cfg.data_path)
    expected = np.zeros(n, bool)
    expected[kept] = True
    np.testing.assert_array_equal(table.labelled["churn"] > 0, expected)
    np.testing.assert_array_equal(table.labels["churn"][kept], own.column("label").to_numpy()[kept])
    np.testing.assert_array_equal(table.labelled["purchase"], np.ones(n, np.float32))


def test_evaluate_writes_the_binary_card_for_a_sequence_run(kind_runs, tmp_path):
    """`seqjax evaluate` on a sequence-model run: the nine metrics at the validation-chosen threshold,
    ci95 around each, and metrics that recompute exactly from the per-example CSV."""
    import csv

    from seqjax.evaluation.sequence_task_eval import evaluate_sequence_task
    _, workdir, _ = kind_runs("gru")
    result = evaluate_sequence_task(workdir, "test", "best", tmp_path / "t.json", task="purchase")
    assert list(result["metrics"]) == ["ROC-AUC", "PR-AUC", "log_loss", "Brier", "accuracy", "precision", "recall",
                                       "F1", "ECE"]
    for name, value in result["metrics"].items():
        lo, hi = result["ci95"][name]
        assert lo <= value <= hi or np.isclose(value, lo) or np.isclose(value, hi), name
    with open(result["files"]["per_example"]) as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["prob"]) for r in rows])
    again = binary_metrics(labels, probs, result["protocol"]["threshold"]["value"])
    assert again == result["metrics"]
    assert result["protocol"]["task"]["head"] == "purchase" and result["protocol"]["examples"] == len(rows)
    with pytest.raises(Exception, match="has binary heads"):
        evaluate_sequence_task(workdir, "test", "best", tmp_path / "c.json", task="churn")


def test_data_of_an_older_example_schema_is_refused_before_training(data, tmp_path):
    import json

    from seqjax.train.run_dir import RunDirError
    old = tmp_path / "old"
    shutil.copytree(data["purchase"], old)
    meta = json.loads((old / "metadata.json").read_text())
    meta["task"]["example_schema_version"] = 1
    (old / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match="schema version 1, this seqjax reads 2; prepare the data again"):
        resolve_data(tiny(old))


def test_cli_trains_and_evaluates_a_shipped_sequence_config(data, tmp_path, capsys):
    import json

    from seqjax import cli
    run, out = str(tmp_path / "run"), tmp_path / "test.json"
    sets = [f"sequence_task.data_path={data['purchase']}", "sequence_task.epochs=1", "sequence_task.max_len=16",
            "sequence_task.encoder.dim=16"]
    assert cli.main(["train", "--config", "configs/purchase_lstm_taobao.yaml", "--workdir", run,
                     *[a for s in sets for a in ("--set", s)]]) == 0
    assert cli.main(["evaluate", "--workdir", run, "--split", "test", "--task", "purchase", "--json", str(out)]) == 0
    assert "task=purchase" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["protocol"]["task"]["head"] == "purchase"
    with open(tmp_path / "test.per_example.csv") as f:  # the card's ROC-AUC is its saved scores' ROC-AUC
        rows = list(csv.DictReader(f))
    labels, probs = [int(r["label"]) for r in rows], [float(r["prob"]) for r in rows]
    assert result["metrics"]["ROC-AUC"] == pytest.approx(roc_auc_score(labels, probs), rel=1e-9)
    assert cli.main(["evaluate", "--workdir", run, "--split", "test", "--task", "churn"]) == 2


SEQUENCE_TASK_CONFIGS = [p for p in sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
                         if _is_sequence_task_config(str(p))]


def test_the_sequence_task_configs_are_found():
    assert {p.stem for p in SEQUENCE_TASK_CONFIGS} >= {"purchase_lstm_taobao", "churn_lstm_cdnow",
                                                        "multitask_lstm_taobao"}


@pytest.mark.parametrize("path", SEQUENCE_TASK_CONFIGS, ids=lambda p: p.name)
def test_shipped_sequence_task_configs_load(path):
    from seqjax import config as config_lib
    from seqjax.train.task_config import SequenceTaskRun
    cfg = config_lib.load(SequenceTaskRun, path, ["sequence_task.data_path=x"]).sequence_task
    assert cfg.encoder.kind in path.stem.split("_")


def test_max_steps_on_an_epoch_end_is_finished_on_rerun(data, tmp_path, capsys):
    cfg = tiny(data["purchase"], epochs=3)
    n = BinaryTrainer(cfg, tmp_path / "probe").steps_per_epoch
    cfg = dataclasses.replace(cfg, max_steps=n)
    assert BinaryTrainer(cfg, tmp_path / "run").run()["stopped"] == f"reached max_steps={n}"
    capsys.readouterr()
    assert BinaryTrainer(cfg, tmp_path / "run").run()["stopped"] == f"reached max_steps={n}"
    assert "already finished (reached max_steps=" in capsys.readouterr().out
