"""Classical binary models on the task tables: signal on held-out users, preprocessing fitted on train
only, deterministic fits, artefact round trip and refusal, gbdt early stopping on the given split."""

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_labels import shop_log
from threadpoolctl import threadpool_limits

from seqjax.config import ConfigError, from_dict
from seqjax.data.features import COLUMN_DOCS, aggregate_features
from seqjax.data.labels import TaskConfig, build_examples, customer_split
from seqjax.evaluation.binary import bootstrap_ci
from seqjax.models import classical
from seqjax.models.classical import (
    KINDS,
    LOG1P_PATTERN,
    MAGIC,
    ClassicalConfig,
    GBDTConfig,
    KNNConfig,
    LogRegConfig,
    TreeConfig,
    feature_columns,
    feature_matrix,
    fit,
    kind_config,
    load,
    predict_proba,
    read_header,
    save,
)

GBDT = GBDTConfig(max_iter=200, patience=10)  # the default, shortened for test time
CONFIGS = {"logreg": LogRegConfig(), "tree": TreeConfig(), "knn": KNNConfig(), "gbdt": GBDT}
SEED = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """OpenMP/BLAS on one thread: on 2 busy shared cores, HistGradientBoosting's 2 OpenMP threads ran ~15x
    slower than one (spinning at barriers)."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def tables() -> dict[str, pa.Table]:
    """Churn examples (rolling cutoffs) in the prepare task layout, split by user: the held-out splits' users
    are never seen in training. Nulls: secs_since_last_purchase of users without purchases."""
    log = shop_log(num_users=1500, seed=1, days=30.0, mean_events=30.0)
    cfg = TaskConfig(task="churn", horizon="3d", num_train_cutoffs=8, stride_days=2)
    ex = build_examples(log["user"], log["item"], log["ts"], log["event"], None, cfg)
    feats = aggregate_features(log["user"], log["item"], log["ts"], log["event"], log["category"], None, ex, cfg)
    table = pa.table({"user": ex.user, "item": ex.item, "cutoff": ex.cutoff, "label": ex.label})
    for name in feats.column_names:
        table = table.append_column(feats.schema.field(name), feats.column(name))
    split = customer_split(ex.user, seed=0, valid_share=0.2, test_share=0.2)
    return {name: table.filter(pa.array(split == k)) for k, name in enumerate(("train", "valid", "test"))}


@pytest.fixture(scope="module")
def models(tables) -> dict[str, classical.ClassicalModel]:
    return {kind: fit(kind, CONFIGS[kind], tables["train"], tables["valid"], SEED) for kind in KINDS}


def scrambled(table: pa.Table, seed: int) -> pa.Table:
    """Every feature column replaced by other values (nulls included) and labels flipped; ids kept."""
    rng = np.random.default_rng(seed)
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if name in ("user", "item", "cutoff"):
            cols[name] = col
        elif name == "label":
            cols[name] = pa.array(1 - col.to_numpy().astype(np.int8), pa.int8())
        else:
            x = np.round(feature_matrix(table, [name])[:, 0] * rng.uniform(0, 50, table.num_rows) + rng.normal(0, 1e3))
            x[rng.random(len(x)) < 0.3] = np.nan
            cols[name] = pa.array(x, from_pandas=True).cast(col.type)
    return pa.table(cols)


def test_tables_have_nulls_and_both_classes(tables):
    train = tables["train"]
    assert train.column("secs_since_last_purchase").null_count > 0
    for t in tables.values():
        assert 0 < pc.sum(t.column("label")).as_py() < t.num_rows


@pytest.mark.parametrize("kind", KINDS)
def test_beats_constant_on_held_out_users(models, tables, kind):
    """A constant predictor has ROC-AUC 0.5; the 95% user-bootstrap interval must lie above it."""
    test = tables["test"]
    probs = predict_proba(models[kind], test)
    assert probs.shape == (test.num_rows,) and probs.dtype == np.float64
    assert np.all((probs >= 0) & (probs <= 1))
    y = test.column("label").to_numpy()
    lo, _ = bootstrap_ci(y, probs, test.column("user").to_numpy(), n_resamples=300, seed=0)["ROC-AUC"]
    assert lo > 0.5, f"{kind}: ROC-AUC interval starts at {lo:.3f}"


def test_preprocessing_statistics_are_the_training_ones(models, tables):
    """Medians, indicators, mean and scale against a direct computation on the training table."""
    columns, _ = feature_columns(tables["train"].schema)
    x = feature_matrix(tables["train"], columns)
    heavy = np.array([bool(LOG1P_PATTERN.match(c)) for c in columns])
    logged = np.where(heavy, np.log1p(np.abs(x)) * np.sign(x), x)
    prep = models["logreg"].prep
    np.testing.assert_array_equal(prep.medians, np.nan_to_num(np.nanmedian(logged, axis=0)))
    np.testing.assert_array_equal(prep.indicators, np.flatnonzero(np.isnan(x).any(axis=0)))
    filled = np.concatenate([np.where(np.isnan(logged), prep.medians, logged),
                             np.isnan(x)[:, prep.indicators]], axis=1)
    np.testing.assert_allclose(prep.mean, filled.mean(axis=0), rtol=1e-12)
    std = filled.std(axis=0)
    np.testing.assert_allclose(prep.scale, np.where(std > 0, std, 1.0), rtol=1e-12)
    tree = models["tree"].prep
    assert not tree.log1p.any() and tree.mean is None
    gbdt = models["gbdt"].prep
    assert gbdt.medians is None and gbdt.mean is None and not gbdt.log1p.any()


@pytest.mark.parametrize("kind", ["logreg", "tree", "knn"])
def test_valid_and_test_values_do_not_change_the_model(models, tables, kind):
    """Scrambled validation features and labels give the same fitted model; a test row's probability
    does not depend on the other test rows."""
    other = fit(kind, CONFIGS[kind], tables["train"], scrambled(tables["valid"], 0), SEED)
    for field in ("medians", "indicators", "mean", "scale", "log1p"):
        np.testing.assert_array_equal(getattr(other.prep, field), getattr(models[kind].prep, field))
    test = tables["test"]
    probs = predict_proba(models[kind], test)
    np.testing.assert_array_equal(predict_proba(other, test), probs)
    head = 50
    mixed = pa.concat_tables([test.slice(0, head), scrambled(test.slice(head), 1).cast(test.schema)])
    np.testing.assert_array_equal(predict_proba(models[kind], mixed)[:head], probs[:head])


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_given_the_seed(models, tables, kind):
    again = fit(kind, CONFIGS[kind], tables["train"], tables["valid"], SEED)
    np.testing.assert_array_equal(predict_proba(again, tables["test"]), predict_proba(models[kind], tables["test"]))


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(models, tables, kind, tmp_path):
    path = tmp_path / f"{kind}.model"
    digest = save(models[kind], path)
    loaded = load(path, expected_sha256=digest)
    np.testing.assert_array_equal(predict_proba(loaded, tables["test"]), predict_proba(models[kind], tables["test"]))
    header = read_header(path)
    assert header["kind"] == kind and header["payload_sha256"] == digest
    assert header["config"] == dataclasses.asdict(CONFIGS[kind])
    assert header["feature_columns"] == list(models[kind].columns)
    assert header["versions"]["sklearn"]


def _rewrite(path, edit_header=None, edit_payload=None):
    raw = path.read_bytes()
    head_end = raw.index(b"\n", len(MAGIC)) + 1
    header, payload = json.loads(raw[len(MAGIC):head_end]), bytearray(raw[head_end:])
    if edit_header:
        edit_header(header)
    if edit_payload:
        edit_payload(payload)
    path.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + bytes(payload))


def test_tampered_artefacts_are_refused(models, tmp_path):
    path = tmp_path / "m.model"
    digest = save(models["logreg"], path)

    def flip(payload):
        payload[len(payload) // 2] ^= 0x01

    _rewrite(path, edit_payload=flip)
    with pytest.raises(ValueError, match="does not match the header"):
        load(path)

    save(models["logreg"], path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="does not match the header"):
        load(path)

    save(models["tree"], path)  # a whole, valid artefact, but not the one recorded
    with pytest.raises(ValueError, match="is not the expected"):
        load(path, expected_sha256=digest)

    save(models["logreg"], path)
    _rewrite(path, edit_header=lambda h: h.update(kind="gbdt"))
    with pytest.raises(ValueError, match="not the gbdt model"):
        load(path)

    save(models["logreg"], path)
    _rewrite(path, edit_header=lambda h: h["versions"].update(sklearn="0.24.2"))
    with pytest.raises(ValueError, match="scikit-learn 0.24.2"):
        load(path)
    assert load(path, allow_version_mismatch=True).kind == "logreg"

    path.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ValueError, match="not a seqjax classical model"):
        load(path)


def test_gbdt_early_stopping_reads_the_given_validation_split(models, tables):
    """The recorded curve is the log-loss on *our* validation table at every iteration; prediction uses the
    best prefix; another validation table (labels flipped) gives another curve and stopping point."""
    valid = tables["valid"]
    y = valid.column("label").to_numpy().astype(np.float64)

    def log_loss_curve(model, table, y):
        x = model.prep.transform(feature_matrix(table, model.columns))
        base = np.full(len(y), model.info["train_positive_rate"])  # 0 trees: the training positive rate
        stages = [base] + [p[:, 1] for p in model.estimator.staged_predict_proba(x)]
        return np.array([-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)) for p in stages])

    model = models["gbdt"]
    curve = np.array(model.info["valid_log_loss_curve"])
    np.testing.assert_allclose(curve, log_loss_curve(model, valid, y), rtol=1e-9)
    assert model.n_iter == max(1, int(np.argmin(curve))) == model.info["iterations_used"]
    assert model.info["iterations_run"] < GBDT.max_iter  # it stopped early
    assert model.info["iterations_run"] >= model.n_iter + GBDT.patience or model.n_iter == 1
    staged = list(model.estimator.staged_predict_proba(model.prep.transform(feature_matrix(valid, model.columns))))
    np.testing.assert_array_equal(predict_proba(model, valid), staged[model.n_iter - 1][:, 1])

    flipped = valid.set_column(valid.column_names.index("label"), "label",
                               pa.array(1 - valid.column("label").to_numpy().astype(np.int8)))
    other = fit("gbdt", GBDT, tables["train"], flipped, SEED)
    other_curve = np.array(other.info["valid_log_loss_curve"])
    np.testing.assert_allclose(other_curve, log_loss_curve(other, flipped, 1 - y), rtol=1e-9)
    assert other.n_iter < model.n_iter  # every tree makes flipped labels less likely: stops at once
    n = len(other_curve)
    assert not np.allclose(other_curve, curve[:n])
    xt = model.prep.transform(feature_matrix(tables["test"], model.columns))  # same trees: valid only stops them
    for a, b in zip(other.estimator.staged_predict_proba(xt), model.estimator.staged_predict_proba(xt)):
        np.testing.assert_array_equal(a, b)


def test_knn_predicts_in_blocks(models, tables, monkeypatch):
    """Blocked prediction equals one-shot prediction, and no call sees more than the block's query rows."""
    model, test = models["knn"], tables["test"]
    x = model.prep.transform(feature_matrix(test, model.columns))
    whole = model.estimator.predict_proba(x)[:, 1]
    n_train = model.estimator.n_samples_fit_
    monkeypatch.setattr(classical, "KNN_BLOCK_BYTES", 8 * n_train * 7)  # 7 query rows per block
    seen = []
    original = type(model.estimator).predict_proba

    def spy(self, q):
        seen.append(len(q))
        return original(self, q)

    monkeypatch.setattr(type(model.estimator), "predict_proba", spy)
    np.testing.assert_array_equal(predict_proba(model, test), whole)
    assert max(seen) == 7 and sum(seen) == test.num_rows


def test_feature_columns_and_inputs(tables):
    t = tables["train"].append_column("note", pa.array(["x"] * tables["train"].num_rows))
    used, ignored = feature_columns(t.schema)
    assert ignored == ["note"] and not {"user", "item", "cutoff", "label"} & set(used)
    assert used == [c for c in tables["train"].column_names if c not in ("user", "item", "cutoff", "label")]
    model = fit("logreg", LogRegConfig(), t, None, 0)
    assert model.info["ignored_columns"] == ["note"]
    with pytest.raises(ValueError, match=r"lacks feature column\(s\) \['n_cart'\]"):
        predict_proba(model, t.drop_columns(["n_cart"]))
    with pytest.raises(ValueError, match="one class only"):
        fit("tree", TreeConfig(), t.filter(pc.equal(t.column("label"), 1)), None, 0)
    with pytest.raises(ValueError, match="needs the validation table"):
        fit("gbdt", GBDT, t, None, 0)
    x = feature_matrix(t, ["secs_since_last_purchase"])[:, 0]  # nulls read as NaN
    assert np.array_equal(np.isnan(x), t.column("secs_since_last_purchase").is_null().to_numpy())
    bad = t.set_column(t.column_names.index("label"), "label", pa.array(np.full(t.num_rows, 2, np.int8)))
    with pytest.raises(ValueError, match="must be 0/1"):
        fit("logreg", LogRegConfig(), bad, None, 0)


def test_log1p_columns():
    """Every count, duration and money column of seqjax.data.features is log-transformed; others are not."""
    assert all(LOG1P_PATTERN.match(name) for name in COLUMN_DOCS)
    assert not any(LOG1P_PATTERN.match(name) for name in ("hour", "weekday", "price_ratio", "ann_events"))


@pytest.mark.parametrize("section, value, key", [
    ("logreg", {"C": 0.0}, "model.logreg.C"), ("logreg", {"max_iter": 0}, "model.logreg.max_iter"),
    ("tree", {"max_depth": -1}, "model.tree.max_depth"),
    ("tree", {"min_samples_leaf": 0}, "model.tree.min_samples_leaf"),
    ("knn", {"k": 0}, "model.knn.k"), ("gbdt", {"learning_rate": -0.1}, "model.gbdt.learning_rate"),
    ("gbdt", {"patience": 0}, "model.gbdt.patience"), ("gbdt", {"max_leaf_nodes": 1}, "model.gbdt.max_leaf_nodes"),
])
def test_config_errors_name_the_field(section, value, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(ClassicalConfig, {section: value})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        kind_config(section, dataclasses.replace(CONFIGS[section], **value))


def test_kind_config_checks_kind():
    assert kind_config("knn", ClassicalConfig()) == KNNConfig()
    with pytest.raises(TypeError, match="model.knn: expected a KNNConfig"):
        kind_config("knn", TreeConfig())
    with pytest.raises(ValueError, match="not a classical kind"):
        kind_config("svm", ClassicalConfig())
