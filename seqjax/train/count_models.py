"""`seqjax train` for count-based baselines (pop, markov, itemknn): one fitting pass over the
training records, an `.npz` artefact in the run directory, and the validation metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from seqjax.data.pipeline import records
from seqjax.evaluation.ranking import ranking_metrics
from seqjax.evaluation.scoring import count_model_ranker, rank_split
from seqjax.models import baselines
from seqjax.train import run_dir
from seqjax.train.config import ExperimentConfig

ARTEFACT = "count_model.npz"
CLASSES = {"pop": baselines.Popularity, "markov": baselines.Markov, "itemknn": baselines.ItemKNN}


def fit_count_model(cfg: ExperimentConfig, workdir: Path, allow_config_change: bool = False) -> dict[str, Any]:
    metadata = run_dir.load_metadata(cfg.data.path)
    run_dir.bind(workdir, cfg, metadata, allow_config_change)
    summary_path = workdir / "summary.json"
    if (workdir / ARTEFACT).exists() and summary_path.exists():
        print(f"run in {workdir} already finished (fitted {cfg.model.kind}); nothing to do", flush=True)
        return json.loads(summary_path.read_text())
    t0 = time.perf_counter()
    train = records(cfg.data.path, "train")
    model = CLASSES[cfg.model.kind](getattr(cfg.model, cfg.model.kind))
    model.fit([train[i].items for i in range(len(train))], metadata["num_items"])
    fit_seconds = time.perf_counter() - t0
    tmp = workdir / (ARTEFACT + ".tmp.npz")
    model.save(tmp)
    tmp.replace(workdir / ARTEFACT)
    best = None
    if metadata["counts"]["valid"]["records"]:
        ranked = rank_split(count_model_ranker(model, run_dir.filter_seen(cfg, metadata)), cfg.data.path, "valid",
                            cfg.data.eval_batch_size, cfg.data.max_len)
        best = ranking_metrics(ranked["ranks"], metadata["num_items"], cfg.eval.ks)[cfg.train.metric]
        print(f"{cfg.model.kind}: valid {cfg.train.metric}={best:.4f} (fit {fit_seconds:.1f}s)", flush=True)
    summary = {"stopped": f"fitted {cfg.model.kind}", "epochs": 0, "best_epoch": None, "best_step": None,
               "best_valid": {cfg.train.metric: best}, "fit_seconds": fit_seconds,
               "seconds_per_epoch_steady": None}
    run_dir.write_atomic(summary_path, json.dumps(summary, indent=1))
    return summary


def load_count_model(workdir: Path):
    path = workdir / ARTEFACT
    if not path.exists():
        raise run_dir.RunDirError(f"{path} not found: train this run first")
    return baselines.load(path)
