"""`seqjax evaluate`: full-catalogue ranking of a split at a chosen checkpoint, with its protocol card; for
purchase/churn runs, binary metrics with user-bootstrap intervals, a reliability PNG, per-example scores and
the binary protocol card (binary_card)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from seqjax import sharding
from seqjax.evaluation import binary_card
from seqjax.evaluation.binary import binary_metrics, bootstrap_ci
from seqjax.evaluation.ranking import ranking_metrics
from seqjax.evaluation.scoring import count_model_ranker, make_rank_fn, neural_ranker, rank_split
from seqjax.train import run_dir
from seqjax.train.config import BINARY_ONLY_KINDS, BINARY_TASKS, COUNT_KINDS, ExperimentConfig
from seqjax.train.loop import checkpoint_store
from seqjax.train.step import learning_rate, optimizer, state_factory, uses_timestamps

BOOTSTRAP_RESAMPLES = 1000  # user resamples behind every binary ci95
CI_LEVEL = 0.95


def _choose_step(store, checkpoint: str) -> tuple[int, str]:
    steps = store.all_steps()
    if not steps:
        raise run_dir.RunDirError(f"no checkpoints under {store.directory}: train first")
    if checkpoint == "best":
        best = store.best_step()
        if best is not None:
            return best, f"best validation {store.best_metric} over the run's checkpoints"
        return _latest_intact(store), "latest (the run has no validation metric, so no best checkpoint)"
    if checkpoint == "latest":
        return _latest_intact(store), "latest, as asked (--checkpoint latest)"
    step = int(checkpoint)
    if step not in steps:
        raise run_dir.RunDirError(f"checkpoint step {step} not kept; available: {sorted(steps)}")
    return step, f"step {step}, as asked"


def _latest_intact(store) -> int:
    """The newest checkpoint that verifies: a corrupted or truncated newer one is passed over, as resume does."""
    step = store.latest_intact_step()
    if step is None:
        raise run_dir.RunDirError(f"no intact checkpoint under {store.directory}: every one fails verification")
    return step


def evaluate(workdir: str | Path, split: str = "valid", checkpoint: str = "best",
             json_path: str | Path | None = None, task: str | None = None) -> dict[str, Any]:
    """Evaluates the run in `workdir` on `split`; `task` (None: the run's) must be the task it was trained for."""
    workdir = Path(workdir)
    cfg = run_dir.load_run_config(workdir)
    if task is not None and task != cfg.task:
        raise run_dir.RunDirError(f"--task {task}: {workdir} was trained for task={cfg.task} and has no "
                                  f"{task} head; evaluate it with --task {cfg.task} (or without --task)")
    metadata = run_dir.load_metadata(cfg.data.path)
    run_dir.check_data(workdir, metadata)
    if cfg.task in BINARY_TASKS:
        return evaluate_binary(workdir, cfg, metadata, split, json_path)
    filter_seen = run_dir.filter_seen(cfg, metadata)
    if cfg.model.kind in COUNT_KINDS:
        from seqjax.train.count_models import load_count_model
        rank_batch = count_model_ranker(load_count_model(workdir), filter_seen)
        chosen = {"step": None, "epoch": None, "chosen": "count-based model: one fitted artefact, no epochs"}
    else:
        rank_batch, chosen = _neural_ranker(workdir, cfg, metadata, checkpoint, filter_seen)
    ranked = rank_split(rank_batch, cfg.data.path, split, cfg.data.eval_batch_size, cfg.data.max_len,
                        tuple(cfg.data.buckets) or None)
    metrics = ranking_metrics(ranked["ranks"], metadata["num_items"], cfg.eval.ks)
    count = metrics.pop("count")
    n = len(ranked["ranks"])
    card = {
        "dataset": {"path": str(Path(cfg.data.path).resolve()), "format": metadata.get("format"),
                    "checksum": metadata["checksum"], "schema_version": metadata["schema_version"],
                    "num_items": metadata["num_items"], "num_users": metadata["num_users"]},
        "split": {"evaluated": split, "protocol": metadata.get("split")},
        "candidates": f"full catalogue: all {metadata['num_items']} items ranked for every user",
        "ties": "pessimistic: an item scoring equal to the target ranks above it",
        "filter_seen": {"setting": cfg.eval.filter_seen, "applied": filter_seen,
                        "repeat_target_share": float(ranked["history_has_target"].mean()) if n else 0.0,
                        "note": "history items removed; a target that repeats a history item counts as a miss"
                        if filter_seen else "no filtering; repeat targets are ranked like any item"},
        "checkpoint": chosen,
        "model": cfg.model.kind, "seed": cfg.train.seed, "users": int(count),
        "max_len": cfg.data.max_len,
    }
    result = {"metrics": metrics, "protocol": card}
    _print_table(metrics, card)
    tag = f"step{chosen['step']}" if chosen["step"] is not None else cfg.model.kind
    out = Path(json_path) if json_path else workdir / "eval" / f"{split}_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    per_user = out.with_suffix(".per_user.csv")
    with per_user.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "target", "rank", "score"])
        w.writerows(zip(ranked["users"].tolist(), ranked["targets"].tolist(), ranked["ranks"].tolist(),
                        np.round(ranked["scores"], 6).tolist()))
    print(f"wrote {out} and {per_user}")
    return result


def evaluate_binary(workdir: Path, cfg: ExperimentConfig, metadata: dict[str, Any], split: str,
                    json_path: str | Path | None = None) -> dict[str, Any]:
    """Metrics at the run's validation-chosen threshold, their ci95, the card; writes JSON, PNG and per-example CSV.

    Metrics and intervals are computed from the probabilities exactly as the CSV holds them (shortest
    round-trip float text), so they can be recomputed from it.
    """
    run_dir.check_task(metadata, cfg.task, cfg.data.path)
    if cfg.model.kind not in BINARY_ONLY_KINDS:
        raise run_dir.RunDirError(f"model.kind={cfg.model.kind}: a {cfg.task} run of this kind cannot exist (sequence "
                                  "models for purchase/churn are `sequence_task:` runs, evaluated with --task)")
    from seqjax.train import classical_tasks
    summary = classical_tasks.load_summary(workdir)
    scores = classical_tasks.score(workdir, cfg, metadata, split)
    if not len(scores["label"]):
        raise run_dir.RunDirError(f"split {split} of {cfg.data.path} has no {cfg.task} examples to evaluate")
    labels, probs, threshold = scores["label"], scores["prob"], summary["threshold"]
    metrics = binary_metrics(labels, probs, threshold)
    ci = {name: list(bounds) for name, bounds in bootstrap_ci(
        labels, probs, scores["user"], threshold, BOOTSTRAP_RESAMPLES, cfg.train.seed, CI_LEVEL).items()}
    card = binary_card.protocol_card(cfg, metadata, split, scores, summary, BOOTSTRAP_RESAMPLES, CI_LEVEL)
    result = {"metrics": metrics, "ci95": ci, "protocol": card}
    binary_card.print_table(metrics, ci, card)
    out = Path(json_path) if json_path else workdir / "eval" / f"{split}_{cfg.model.kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result["files"] = binary_card.write_outputs(out, {k: scores[k] for k in ("user", "item", "cutoff", "label", "prob")},
                                                labels, probs, f"{cfg.model.kind} | {cfg.task} | {split}")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}, {result['files']['per_example']} and {result['files']['reliability']}")
    return result


def _neural_ranker(workdir: Path, cfg: ExperimentConfig, metadata: dict[str, Any], checkpoint: str,
                   filter_seen: bool):
    mesh = sharding.make_mesh(cfg.train.num_devices)
    tx = optimizer(cfg, learning_rate(cfg, 1))  # only the state's structure matters here
    graphdef, _, abstract = state_factory(cfg, metadata["num_items"], tx, mesh)
    store = checkpoint_store(workdir, cfg)
    step, how = _choose_step(store, checkpoint)
    restored_step, state, meta = store.restore(abstract, step=step)
    rank_fn = make_rank_fn(graphdef, mesh, filter_seen, uses_timestamps(cfg, metadata))
    rank_batch = neural_ranker(rank_fn, state["params"])
    return rank_batch, {"step": restored_step, "epoch": meta["progress"]["epoch"], "chosen": how}


def _print_table(metrics: dict[str, float], card: dict[str, Any]) -> None:
    ck = card["checkpoint"]
    print(f"{card['model']} | split={card['split']['evaluated']} | {card['users']} users | "
          f"{card['candidates']} | filter_seen={card['filter_seen']['applied']} "
          f"(repeat targets {card['filter_seen']['repeat_target_share']:.1%}) | step {ck['step']} "
          f"epoch {ck['epoch']} ({ck['chosen']})")
    for name, value in metrics.items():
        print(f"  {name:<8} {value:.4f}")
