"""Purchase and churn through `seqjax train` / `seqjax evaluate`: every classical kind and BG/NBD end to end on a
generated log, metrics recomputed from the saved per-example scores, the card's fields, refusals (kind/task at
config load, data without or with another task, BG/NBD on a log with non-purchase events, --task mismatch),
and re-runs that fit nothing."""

import csv
import json

import numpy as np
import pytest

from seqjax import cli
from seqjax import config as config_lib
from seqjax.config import ConfigError
from seqjax.data.prepare import PrepareConfig, prepare
from seqjax.data.synthetic import Behaviour, generate_log
from seqjax.data.task_prepare import TaskOptions
from seqjax.evaluation.binary import METRICS, binary_metrics, bootstrap_ci
from seqjax.evaluation.evaluate import evaluate
from seqjax.models import btyd
from seqjax.train import classical_tasks
from seqjax.train.config import ExperimentConfig
from seqjax.train.run_dir import RunDirError

pytestmark = pytest.mark.filterwarnings("ignore:.*resamples hold one class only:RuntimeWarning")
DISJOINT = {"split_mode": "customer_disjoint", "cutoffs": ("2024-01-12",), "valid_share": 0.2, "test_share": 0.2}
DATA = {  # name -> (log, task options); None = a next-item dataset without a task section
    "purchase": ("log", TaskOptions(task="purchase", horizon="2d",
                                    cutoffs=("2024-01-04", "2024-01-06", "2024-01-08", "2024-01-10", "2024-01-12"))),
    "purchase_pair": ("log", TaskOptions(task="purchase", level="user_item", horizon="2d", feature_window="4d",
                                         cutoffs=("2024-01-06", "2024-01-08", "2024-01-10", "2024-01-12"))),
    "churn": ("log", TaskOptions(task="churn", horizon="5d", **DISJOINT)),
    "buys_churn": ("buys", TaskOptions(task="churn", horizon="7d", **DISJOINT)),
    "buys_purchase": ("buys", TaskOptions(task="purchase", horizon="7d", **DISJOINT)),
    "next_item": ("log", None),
}
CARD_KEYS = {"dataset", "task", "split", "model", "threshold", "metrics", "model_kind", "seed", "examples", "users",
             "schema_version"}
PROTOCOL_KEYS = {"task", "level", "horizon", "feature_window", "timezone", "split_mode", "cutoffs"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """name -> DATA_DIR of every DATA entry; `buys` is the generated log's purchase events only."""
    root = tmp_path_factory.mktemp("binary")
    generate_log(root / "log.csv", num_users=300, num_items=200, num_categories=8, seed=3, days=20, mean_events=30,
                 behaviour=Behaviour(buy_after_cart=0.6, buy_direct=0.03, checkout=0.1))
    lines = (root / "log.csv").read_text().splitlines()
    (root / "buys.csv").write_text("\n".join([lines[0], *(ln for ln in lines[1:] if ",purchase," in ln)]) + "\n")
    out = {}
    for name, (log, task) in DATA.items():
        out[name] = root / name
        prepare(PrepareConfig(format="generic", inputs=(str(root / f"{log}.csv"),), out=str(out[name]),
                              max_timestamp="2100-01-01", task=task), echo=False)
    return out


def config(data_dir, task, kind, *overrides):
    return config_lib.load(ExperimentConfig, None, [f"task={task}", f"model.kind={kind}", f"data.path={data_dir}",
                                                    "model.gbdt.max_iter=60", *overrides])


def read_scores(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {"user": np.array([int(r["user"]) for r in rows]), "item": np.array([int(r["item"]) for r in rows]),
            "cutoff": np.array([int(r["cutoff"]) for r in rows]), "label": np.array([int(r["label"]) for r in rows]),
            "prob": np.array([float(r["prob"]) for r in rows])}


@pytest.mark.parametrize("name, task, kind", [
    ("purchase", "purchase", "logreg"), ("purchase", "purchase", "tree"), ("purchase", "purchase", "knn"),
    ("purchase", "purchase", "gbdt"), ("purchase_pair", "purchase", "gbdt"), ("churn", "churn", "logreg"),
    ("buys_churn", "churn", "bgnbd"), ("buys_purchase", "purchase", "bgnbd"),
])
def test_train_then_evaluate_test(name, task, kind, data, tmp_path, capsys):
    cfg = config(data[name], task, kind)
    summary = classical_tasks.train(cfg, tmp_path)
    assert summary["task"] == task and cfg.train.metric == "PR-AUC" and 0.0 < summary["threshold"] < 1.0
    # the summary's validation figures are what the saved artefact scores on valid when loaded again
    valid = evaluate(tmp_path, "valid", json_path=tmp_path / "v.json")["metrics"]
    assert valid["PR-AUC"] == summary["valid_metrics"]["PR-AUC"] == summary["best_valid"]["PR-AUC"]
    result = evaluate(tmp_path, "test", json_path=tmp_path / "t.json")
    metrics, ci, card = result["metrics"], result["ci95"], result["protocol"]
    assert list(metrics) == list(METRICS) == list(ci)  # exactly these keys
    for name_, value in metrics.items():
        lo, hi = ci[name_]
        assert lo <= value <= hi, (name_, lo, value, hi)

    meta = json.loads((data[name] / "metadata.json").read_text())["task"]
    scores = read_scores(tmp_path / "t.per_example.csv")
    assert len(scores["label"]) == meta["counts"]["test"]["examples"] == card["examples"]
    assert card["users"] == len(np.unique(scores["user"])) == meta["counts"]["test"]["users"]
    # the card's numbers are the saved scores' numbers
    assert metrics == binary_metrics(scores["label"], scores["prob"], summary["threshold"])
    recomputed = bootstrap_ci(scores["label"], scores["prob"], scores["user"], summary["threshold"], 1000, cfg.train.seed)
    assert ci == {k: list(v) for k, v in recomputed.items()}
    assert card["split"]["class_balance"] == {k: meta["class_balance"]["test"][k]
                                              for k in ("examples", "positives", "positive_rate")}

    assert set(card) >= CARD_KEYS and set(card["task"]) >= PROTOCOL_KEYS
    assert card["task"]["task"] == task and card["model_kind"] == kind and card["seed"] == cfg.train.seed
    disjoint = DATA[name][1].split_mode == "customer_disjoint"
    assert card["task"]["split_mode"] == ("customer_disjoint" if disjoint else "rolling")
    assert ("customer_split" in card["task"]) == disjoint
    if disjoint:  # the card says how customers were assigned, so the split can be redrawn
        assert card["task"]["customer_split"].startswith(f"customers hashed with seed {DATA[name][1].seed}: 0.6 ")
    assert card["dataset"]["checksum"] == json.loads((data[name] / "metadata.json").read_text())["checksum"]
    assert card["threshold"]["value"] == summary["threshold"] and "validation" in card["threshold"]["chosen"]
    assert (tmp_path / "t.reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PR-AUC" in capsys.readouterr().out

    artefact = tmp_path / summary["artefact"]
    stamp = artefact.stat().st_mtime_ns
    assert classical_tasks.train(cfg, tmp_path) == summary  # a fitted run is not fitted again
    assert artefact.stat().st_mtime_ns == stamp and "nothing to do" in capsys.readouterr().out


def test_bgnbd_scores_are_the_closed_form_and_do_not_depend_on_the_period(data, tmp_path):
    """churn = 1 - P(any purchase in the horizon) from the saved parameters; weeks and days give one model."""
    weeks, days = tmp_path / "weeks", tmp_path / "days"
    classical_tasks.train(config(data["buys_churn"], "churn", "bgnbd"), weeks)
    classical_tasks.train(config(data["buys_churn"], "churn", "bgnbd", "model.bgnbd.period_days=1"), days)
    by_week = evaluate(weeks, "test", json_path=weeks / "t.json")
    saved = json.loads((weeks / "bgnbd.json").read_text())
    table = classical_tasks.read_split(data["buys_churn"], "test")
    x, t_x, T = btyd.rfm_from_features(table, 7.0)
    expected = 1.0 - btyd.prob_any_purchase(btyd.BGNBDParams(**saved["params"]), 1.0, x, t_x, T)  # 7d = 1 week
    np.testing.assert_allclose(read_scores(weeks / "t.per_example.csv")["prob"], expected, rtol=1e-12)
    by_day = evaluate(days, "test", json_path=days / "t.json")
    np.testing.assert_allclose(read_scores(days / "t.per_example.csv")["prob"], expected, rtol=1e-4)
    assert by_day["metrics"]["ROC-AUC"] == pytest.approx(by_week["metrics"]["ROC-AUC"], abs=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (("model.kind=gbdt",), "model.kind=gbdt predicts a purchase/churn label and ranks no items: set task="),
    (("task=purchase", "model.kind=pop"), "model.kind=pop scores next items and has no binary head"),
    (("task=churn", "model.kind=hstu"), "model.kind=hstu scores next items"),
    (("task=purchase", "model.kind=logreg", "train.metric=HR@10"), "task=purchase uses PR-AUC, ROC-AUC, log_loss"),
    (("task=churn", "model.kind=logreg", "model.logreg.C=0"), "model.logreg.C: must be > 0"),
])
def test_config_load_refuses_kind_task_mismatches(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load(ExperimentConfig, None, list(overrides))


def test_binary_metric_defaults_and_next_item_unchanged():
    def load(*overrides):
        return config_lib.load(ExperimentConfig, None, list(overrides))
    assert load().task == "next_item" and load().train.metric == "NDCG@10"
    assert load("task=purchase", "model.kind=gbdt").train.metric == "PR-AUC"
    assert load("task=churn", "model.kind=gbdt", "train.metric=log_loss").train.metric == "log_loss"
    with pytest.raises(ConfigError, match="use MRR, or HR@K or NDCG@K with K in eval.ks"):
        load("train.metric=PR-AUC")


def test_train_refuses_data_without_or_with_another_task(data, tmp_path):
    with pytest.raises(RunDirError, match="has no task section.*--task purchase"):
        classical_tasks.train(config(data["next_item"], "purchase", "gbdt"), tmp_path / "a")
    with pytest.raises(RunDirError, match=r"task=churn, but .*purchase was prepared for task=purchase"):
        classical_tasks.train(config(data["purchase"], "churn", "gbdt"), tmp_path / "b")
    with pytest.raises(ConfigError, match="bgnbd needs a purchase-only log.*have events other than purchases"):
        classical_tasks.train(config(data["churn"], "churn", "bgnbd"), tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="bgnbd models a customer's purchases.*level=user_item"):
        classical_tasks.train(config(data["purchase_pair"], "purchase", "bgnbd"), tmp_path / "d")


def test_cli_train_evaluate_and_task_mismatch(data, tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["--set", "task=churn", "--set", "model.kind=tree", "--set", f"data.path={data['churn']}"]
    assert cli.main(["train", "--config", "configs/churn_gbdt_cdnow.yaml", "--workdir", run, *args]) == 0
    assert "fitted tree; valid PR-AUC=" in capsys.readouterr().out
    assert cli.main(["evaluate", "--workdir", run, "--split", "valid", "--task", "churn"]) == 0
    out = capsys.readouterr().out
    assert "tree | task=churn" in out and "split=valid" in out and (tmp_path / "run/eval/valid_tree.json").exists()
    assert cli.main(["evaluate", "--workdir", run, "--task", "purchase"]) == 2
    err = capsys.readouterr().err
    assert "--task purchase: " in err and "trained for task=churn" in err
    with pytest.raises(RunDirError, match="trained for task=churn and has no purchase head"):
        evaluate(run, "test", task="purchase")
    assert cli.main(["train", "--config", "configs/churn_gbdt_cdnow.yaml", "--workdir", str(tmp_path / "n"),
                     "--set", "model.kind=sasrec", "--set", f"data.path={data['churn']}"]) == 2
    assert "are configured under `sequence_task:`" in capsys.readouterr().err
