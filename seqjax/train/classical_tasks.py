"""`seqjax train` / `seqjax evaluate` scores for purchase and churn with classical models (logreg, tree, knn,
gbdt: seqjax.models.classical) and BG/NBD (seqjax.models.btyd).

Reads DATA_DIR/task/{train,valid,test}.parquet, which `seqjax prepare --task <cfg.task>` wrote. One fitting
pass on train (gbdt early-stops on valid's log-loss), then the F1 threshold is chosen on valid
(`binary.best_f1_threshold`) and kept for every later split. The run directory holds, besides config.yaml
and data.json (run_dir.bind):

* the artefact: ARTEFACTS[kind], a checksummed classical model (classical.save) or BG/NBD's parameters (JSON);
* summary.json: fit seconds, threshold and how it was chosen, validation metrics at it, iterations used,
  the artefact's sha256 (checked on load, so a replaced file is refused).

A run whose artefact and summary exist is not fitted again, as count models are not.

BG/NBD fits the train split's RFM (btyd.rfm_from_features: purchase-only logs, every example a customer)
and predicts P(any purchase in the label window) = btyd.prob_any_purchase with t = the task's horizon in
periods; churn = 1 - that (on a purchase-only log, no event in the window means no purchase in it).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from seqjax.config import ConfigError, to_dict
from seqjax.data.schema import TASK_DIR
from seqjax.evaluation.binary import best_f1_threshold, binary_metrics
from seqjax.models import btyd, classical
from seqjax.train import run_dir
from seqjax.train.config import CLASSICAL_KINDS, ExperimentConfig

ARTEFACTS = {**{kind: "classical_model.bin" for kind in CLASSICAL_KINDS}, "bgnbd": "bgnbd.json"}
SUMMARY = "summary.json"
KEYS = ("user", "item", "cutoff", "label")  # the id columns carried to per-example scores
DAY = 86_400
# BLAS and OpenMP threads while fitting and predicting. Measured on the 2-core shared CPU host (busy with other
# jobs): HistGradientBoosting with 2 OpenMP threads took 1.1-18 s where 1 took 0.2 s (Taobao head, 3,185 rows)
# and 3.7-9.8 s against 0.6-0.8 s (CDNOW, 18,847 rows); L-BFGS logreg 0.6-1.0 s against 0.1-0.3 s. On
# tables this small the threads' synchronisation costs more than the work they share, and far more when a core
# is taken. Larger machines and tables may want more; this is the one place to change it.
FIT_THREADS = 1


def limited_threads():
    return threadpool_limits(limits=FIT_THREADS)


def read_split(data_path: str | Path, split: str) -> pa.Table:
    path = Path(data_path) / TASK_DIR / f"{split}.parquet"
    if not path.is_file():
        raise run_dir.RunDirError(f"{path} not found: prepare the data with --task")
    return pq.read_table(path)


def train(cfg: ExperimentConfig, workdir: str | Path, allow_config_change: bool = False) -> dict[str, Any]:
    """Fits cfg.model.kind on the task data of cfg.data.path into `workdir`; returns summary.json's content."""
    workdir, kind = Path(workdir), cfg.model.kind
    if kind not in ARTEFACTS:
        raise ConfigError(f"model.kind={kind}: not a classical or BG/NBD kind ({', '.join(ARTEFACTS)})")
    metadata = run_dir.load_metadata(cfg.data.path)
    section = run_dir.check_task(metadata, cfg.task, cfg.data.path)
    train_table, valid_table = read_split(cfg.data.path, "train"), read_split(cfg.data.path, "valid")
    if kind == "bgnbd":
        check_bgnbd_data(section, {"train": train_table, "valid": valid_table}, cfg.data.path)
    run_dir.bind(workdir, cfg, metadata, allow_config_change)
    summary_path, artefact = workdir / SUMMARY, workdir / ARTEFACTS[kind]
    if artefact.exists() and summary_path.exists():
        print(f"run in {workdir} already finished (fitted {kind}); nothing to do", flush=True)
        return json.loads(summary_path.read_text())
    if kind == "gbdt" and not valid_table.num_rows:
        raise run_dir.RunDirError(f"model.kind=gbdt early-stops on the validation split, and "
                                  f"{cfg.data.path}/{TASK_DIR}/valid.parquet has no examples")

    with limited_threads():
        t0 = time.perf_counter()
        if kind == "bgnbd":
            fitted, facts = _fit_bgnbd(cfg, train_table)
            fit_seconds = time.perf_counter() - t0
            digest = _write_json_artefact(artefact, fitted)
        else:
            model = classical.fit(kind, getattr(cfg.model, kind), train_table,
                                  valid_table if valid_table.num_rows else None, cfg.train.seed)
            fit_seconds = time.perf_counter() - t0
            digest = classical.save(model, artefact)
            facts = {k: model.info[k] for k in ("iterations_run", "iterations_used") if k in model.info}
            facts.update(model_inputs=model.info["model_inputs"], ignored_columns=model.info["ignored_columns"])
        valid_probs = predict(cfg, section, artefact, digest, valid_table)

    labels = classical.labels(valid_table)
    threshold, how = choose_threshold(labels, valid_probs)
    valid_metrics = binary_metrics(labels, valid_probs, threshold) if len(labels) else None
    best = valid_metrics[cfg.train.metric] if valid_metrics else None
    summary = {"stopped": f"fitted {kind}", "epochs": 0, "best_epoch": None, "best_step": None,
               "best_valid": {cfg.train.metric: best}, "fit_seconds": fit_seconds,
               "seconds_per_epoch_steady": None, "task": cfg.task, "threshold": threshold, "threshold_chosen": how,
               "valid_metrics": valid_metrics, "train_examples": train_table.num_rows,
               "valid_examples": valid_table.num_rows, "artefact": artefact.name, "artefact_sha256": digest,
               "threads": FIT_THREADS, **facts}
    run_dir.write_atomic(summary_path, json.dumps(summary, indent=1))
    shown = "no validation examples" if best is None else f"{cfg.train.metric}={best:.4f}"
    print(f"{kind}: valid {shown}, F1 threshold {threshold:.4g} (fit {fit_seconds:.1f}s)", flush=True)
    return summary


def choose_threshold(labels: np.ndarray, probs: np.ndarray) -> tuple[float, str]:
    """(threshold, how it was chosen): the F1-maximising score on validation, or 0.5 without validation positives."""
    if labels.sum() > 0:
        return best_f1_threshold(labels, probs), ("the score maximising F1 on the validation split "
                                                  "(best_f1_threshold; ties: the highest), kept for every split")
    return 0.5, "0.5: the validation split has no positive example to choose a threshold on"


def load_summary(workdir: Path) -> dict[str, Any]:
    path = workdir / SUMMARY
    if not path.exists():
        raise run_dir.RunDirError(f"{path} not found: train this run first")
    return json.loads(path.read_text())


def score(workdir: Path, cfg: ExperimentConfig, metadata: dict[str, Any], split: str) -> dict[str, np.ndarray]:
    """{user, item, cutoff, label, prob}: [N] arrays, one per example of `split`, in the Parquet's order."""
    section = run_dir.check_task(metadata, cfg.task, cfg.data.path)
    summary = load_summary(workdir)
    artefact = workdir / summary["artefact"]
    if not artefact.exists():
        raise run_dir.RunDirError(f"{artefact} not found: train this run first")
    table = read_split(cfg.data.path, split)
    if cfg.model.kind == "bgnbd":
        check_bgnbd_data(section, {split: table}, cfg.data.path)
    with limited_threads():
        probs = predict(cfg, section, artefact, summary["artefact_sha256"], table)
    out = {k: table.column(k).to_numpy(zero_copy_only=False) for k in KEYS}
    out["prob"] = probs
    return out


def predict(cfg: ExperimentConfig, section: dict[str, Any], artefact: Path, digest: str,
            table: pa.Table) -> np.ndarray:
    """float64 [N]: P(label = 1) for every row of `table`, from the artefact (refused if its sha256 is not `digest`)."""
    if cfg.model.kind != "bgnbd":
        return classical.predict_proba(classical.load(artefact, expected_sha256=digest), table)
    text = artefact.read_bytes()
    if hashlib.sha256(text).hexdigest() != digest:
        raise run_dir.RunDirError(f"{artefact}: sha256 differs from the one summary.json recorded at fit time")
    saved = json.loads(text)
    params = btyd.BGNBDParams(**saved["params"])
    period_days = saved["period_days"]
    x, t_x, T = btyd.rfm_from_features(table, period_days)
    horizon = section["protocol"]["horizon_seconds"] / (period_days * DAY)
    buys = btyd.prob_any_purchase(params, horizon, x, t_x, T)
    return buys if cfg.task == "purchase" else 1.0 - buys


def check_bgnbd_data(section: dict[str, Any], tables: dict[str, pa.Table], data_path) -> None:
    """ConfigError naming why BG/NBD cannot be fitted to or score this task data."""
    proto = section["protocol"]
    if proto["level"] != "user":
        raise ConfigError(f"model.kind=bgnbd models a customer's purchases: {data_path} holds level={proto['level']} "
                          "examples; prepare with task.level=user or use a classical kind")
    if proto.get("feature_window_seconds") is not None:
        raise ConfigError(f"model.kind=bgnbd needs each customer's whole purchase history before the cutoff, and "
                          f"{data_path} was prepared with feature_window={proto['feature_window']}")
    for split, table in tables.items():
        if not table.num_rows:
            continue
        events, buys = (pc.cast(table.column(c), pa.float64()).to_numpy(zero_copy_only=False)
                        for c in ("n_events", "n_purchase"))
        other = int(np.sum(events != buys))
        if other:
            raise ConfigError(f"model.kind=bgnbd needs a purchase-only log (BG/NBD reads a customer's first event "
                              f"as their first purchase): in {data_path}/{TASK_DIR}/{split}.parquet {other:,} of "
                              f"{table.num_rows:,} examples have events other than purchases; use "
                              f"{', '.join(CLASSICAL_KINDS)} on this data")


def _fit_bgnbd(cfg: ExperimentConfig, table: pa.Table) -> tuple[dict[str, Any], dict[str, Any]]:
    period_days = cfg.model.bgnbd.period_days
    fit = btyd.fit_bgnbd(*btyd.rfm_from_features(table, period_days))
    saved = {"kind": "bgnbd", "period_days": period_days, "params": _params_dict(fit.params),
             "se": _params_dict(fit.se), "log_likelihood": fit.log_likelihood, "customers": fit.customers,
             "converged": fit.converged, "message": fit.message, "iterations": fit.iterations,
             "config": to_dict(cfg.model.bgnbd)}
    if not fit.converged:
        print(f"warning: BG/NBD optimiser did not converge: {fit.message}", flush=True)
    facts = {"iterations_used": fit.iterations, "converged": fit.converged, "params": saved["params"],
             "se": saved["se"], "log_likelihood": fit.log_likelihood}
    return saved, facts


def _params_dict(params: btyd.BGNBDParams) -> dict[str, float]:
    return {k: float(v) for k, v in zip(("r", "alpha", "a", "b"), params.as_array())}


def _write_json_artefact(path: Path, content: dict[str, Any]) -> str:
    text = json.dumps(content, indent=1).encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text)
    tmp.replace(path)
    return hashlib.sha256(text).hexdigest()
